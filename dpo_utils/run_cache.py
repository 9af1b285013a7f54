"""The notebooks' run cache: DPO on persona behaviours, trained once and loaded after.

:func:`load_or_train` keeps each run under ``results/<profile>/runs/<name>-<hash>/`` (the hash
covers every setting of the run and a fingerprint of the code) and rebuilds it from there on a
second call; :func:`train_behaviors` is the same training without the cache, which the command line
(:mod:`dpo_utils.train`) calls.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import torch

from . import config, data, models
from .config import check_mode
from .fingerprint import code_fingerprint
from .probes import CHAPTER_PROBE_TRAIN, chapter_probe_every
from .results import (
    cache_lock,
    config_hash,
    force_rerun,
    record_provenance,
    results_dir,
    trusted_cache,
)
from .runtime import process_map, worker_processes
from .training import DPORun, load_trained, run_tables, save_trained, train_dpo

__all__ = [
    "chapter_run_dir",
    "behavior_pairs",
    "probe_subsample",
    "train_behaviors",
    "run_settings",
    "run_dir",
    "load_or_train",
    "load_job",
    "prefill",
]

#: settings that change how a run is computed, not what it computes; left out of the run key
_HARDWARE_FIELDS = ("per_device_batch_size",)


def behavior_pairs(cfg: config.ExperimentConfig, behaviors, flip=False) -> tuple[list[dict], dict]:
    """Training pairs and probe sets {"train", "test"} for behaviours, split as the authors split
    (``cfg.split``: per behaviour, or chained in the order given as in their scripts).

    ``flip`` is a bool (swap chosen and rejected for every behaviour) or a collection of behaviour
    names/numbers to flip, the others kept aligned (a *conflicting* pair, chapter 09).

    Used by: dpo_utils.run_cache.
    """
    train, test = [], []
    source = cfg.persona_source  # data accepts "corpus" (the project's corpus) itself
    persona = data.load_persona(source, behaviors)
    flipped = _flipped_names(flip, list(persona), source)
    splits = data.split_behaviors(persona, cfg.seed, chained=cfg.split == "chained")
    for name, (rows_train, rows_test) in splits.items():
        train += data.preference_pairs(rows_train, name, flip=name in flipped)
        test += data.preference_pairs(rows_test, name, flip=name in flipped)
    if not train:
        raise ValueError(
            f"behaviors={behaviors!r} gave no training pairs; name at least one behaviour."
        )
    return train, {"train": train, "test": test} if test else {"train": train}


def _flipped_names(flip, names: list[str], source) -> set[str]:
    if isinstance(flip, bool):
        return set(names) if flip else set()
    if isinstance(flip, (str, int)):
        flip = [flip]
    chosen = set(data.resolve_behaviors(list(flip), data.available_behaviors(source)))
    if not chosen <= set(names):
        raise ValueError(
            f"flip={flip!r} names behaviours {sorted(chosen - set(names))} that are not trained "
            f"({names}); flip only behaviours you train."
        )
    return chosen


def probe_subsample(probe_sets: dict, train_per_behavior: int | None) -> dict:
    """Keep the first ``train_per_behavior`` pairs of each behaviour in the "train" probe set.

    The split is already a seeded shuffle, so the first pairs are a fixed random sample; the test
    split is kept whole. ``None`` keeps everything. Probing ~48 + 50 pairs per behaviour instead of
    500 keeps the probe callback under a fifth of a CPU-profile step
    (benchmarks/bench_callback.py).

    Used by: dpo_utils.run_cache.
    """
    if train_per_behavior is None:
        return probe_sets
    if (
        isinstance(train_per_behavior, bool)
        or not isinstance(train_per_behavior, int)
        or train_per_behavior < 1
    ):
        raise ValueError(
            f"probe_train={train_per_behavior!r} is not allowed; give an integer >= 1 or None."
        )
    seen: dict = {}
    kept = []
    for pair in probe_sets["train"]:
        seen[pair["behavior"]] = seen.get(pair["behavior"], 0) + 1
        if seen[pair["behavior"]] <= train_per_behavior:
            kept.append(pair)
    return {**probe_sets, "train": kept}


def train_behaviors(
    cfg: config.ExperimentConfig,
    behaviors,
    *,
    mode: str = "lora",
    flip=False,
    max_steps: int | None = None,
    seed: int | None = None,
    model=None,
    tokenizer=None,
    probe_every: int = 1,
    probe_train: int | None = None,
    resume_from=None,
) -> DPORun:
    """Joint DPO on the named behaviours, probed on each behaviour's train and test split.

    ``model``/``tokenizer`` default to the profile's (``models.load_model_and_tokenizer``); pass a
    merged aligned model to start from it (chapter 10). ``flip`` as in :func:`behavior_pairs`;
    ``probe_train`` probes only that many train pairs per behaviour (:func:`probe_subsample`).
    Returns :class:`~dpo_utils.training.DPORun`.

    Used by: dpo_utils.run_cache, dpo_utils.train.
    """
    train_pairs, probe_sets = behavior_pairs(cfg, behaviors, flip)
    probe_sets = probe_subsample(probe_sets, probe_train)
    if model is None or tokenizer is None:
        model, tokenizer = _profile_model(cfg, mode)
    return train_dpo(
        cfg,
        model,
        tokenizer,
        train_pairs,
        mode=mode,
        probe_sets=probe_sets,
        max_steps=max_steps,
        seed=seed,
        probe_every=probe_every,
        resume_from=resume_from,
    )


def _profile_model(cfg: config.ExperimentConfig, mode: str):
    """The profile's model on this process's device. Full fine-tuning keeps fp32 master weights
    (bf16 autocast on GPU, as the authors ran): a pure-bf16 AdamW step of lr 1e-6 would round to
    nothing."""
    device = (
        f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if torch.cuda.is_available() else "cpu"
    )
    model, tokenizer = models.load_model_and_tokenizer(
        cfg.replace(dtype="float32") if mode == "full" else cfg, device
    )
    return model.train(), tokenizer


def _flip_key(flip) -> bool | list[str]:
    if isinstance(flip, bool):
        return flip
    return sorted(str(f) for f in ([flip] if isinstance(flip, (str, int)) else flip))


def run_settings(cfg: config.ExperimentConfig, behaviors, *, mode: str, flip=False) -> dict:
    """What a saved run's ``meta.json`` records so that a resume can be checked against it.

    Used by: dpo_utils.run_cache, dpo_utils.train.
    """
    return dict(
        behaviors=[str(b) for b in behaviors],
        flip=_flip_key(flip),
        mode=mode,
        profile=cfg.profile,
        model=cfg.model_name,
        data_source=cfg.persona_source,
    )


def _run_key(cfg, behaviors, mode, flip, start, max_steps, seed, probe_every, probe_train) -> dict:
    flip_key = _flip_key(flip)
    settings = {k: v for k, v in cfg.to_dict().items() if k not in _HARDWARE_FIELDS}
    return dict(
        code=code_fingerprint(["run_cache"]),
        cfg=settings,
        behaviors=[str(b) for b in behaviors],
        mode=mode,
        flip=flip_key,
        start=None if start is None else Path(start).name,
        max_steps=max_steps,
        seed=seed,
        probe_every=probe_every,
        probe_train=probe_train,
    )


def run_dir(
    cfg: config.ExperimentConfig,
    behaviors,
    *,
    mode: str,
    flip=False,
    start=None,
    max_steps=None,
    seed=None,
    probe_every: int = 1,
    probe_train: int | None = None,
    name: str = "dpo",
) -> Path:
    """Where :func:`load_or_train` keeps this run: ``results/<profile>/runs/<name>-<hash>/``.

    The hash covers the whole config (but the per-device batch), the behaviours, mode, flip, the
    starting run (by its folder name, which carries its own hash), steps, seed and probe settings.

    Used by: dpo_utils.run_cache.
    """
    check_mode(mode)
    key = _run_key(cfg, behaviors, mode, flip, start, max_steps, seed, probe_every, probe_train)
    return results_dir(cfg.profile) / "runs" / f"{name}-{config_hash(key)}"


def chapter_run_dir(
    cfg: config.ExperimentConfig,
    behaviors,
    *,
    mode: str,
    flip=False,
    max_steps: int | None = None,
    seed: int | None = None,
) -> Path:
    """The folder in which a chapter (08-11) looks for this run: :func:`run_dir` with the chapters'
    probe settings and seed (default ``cfg.seed``, the chapters' first DPO seed). ``behaviors`` are
    names, in the order trained. The per-device batch is not part of the key (it changes how the
    effective batch is reached, not the run), so a run on 8 GPUs lands in the same folder.

    Used by: dpo_utils.train.
    """
    return run_dir(
        cfg,
        behaviors,
        mode=mode,
        flip=flip,
        max_steps=max_steps,
        seed=cfg.seed if seed is None else seed,
        probe_every=chapter_probe_every(cfg),
        probe_train=CHAPTER_PROBE_TRAIN,
    )


def load_or_train(
    cfg: config.ExperimentConfig,
    behaviors,
    *,
    mode: str,
    flip=False,
    start=None,
    max_steps: int | None = None,
    seed: int | None = None,
    probe_every: int = 1,
    probe_train: int | None = None,
    name: str = "dpo",
    force: bool | None = None,
    with_model: bool = True,
) -> DPORun:
    """The saved run for these settings if there is one (:func:`~dpo_utils.training.load_trained`),
    else :func:`train_behaviors` now, saved with ``save_trained`` (no optimizer checkpoint) and
    returned. Loading and training hold the run's lock; a saved run whose files do not match its
    manifest is trained again, with a warning.

    ``start`` is ``None`` (the profile's model) or the folder of an earlier run, whose merged model
    is then the starting point and, for LoRA, also the reference. A loaded run's ``model`` is the
    merged plain model; its ``probes.attrs`` hold ``path`` and ``from_cache``. ``force=None`` reads
    ``$DPO_FORCE_RERUN``. ``with_model=False`` reads only the tables of a saved run (``model`` is
    then None), which is what a chapter that only plots needs. A second book build retrains
    nothing.

    Used by: dpo_utils.run_cache.
    """
    how = dict(mode=mode, flip=flip, start=start, max_steps=max_steps, seed=seed)
    how.update(probe_every=probe_every, probe_train=probe_train)
    path = run_dir(cfg, behaviors, name=name, **how)
    if path in _PREFILLED:  # trained just now by prefill: read it, even when forcing
        _PREFILLED.discard(path)
        force = False
    with cache_lock(path):
        run, from_cache = _load_or_train_locked(
            path, cfg, behaviors, force=force, with_model=with_model, **how
        )
    run.probes.attrs.update(path=str(path), from_cache=from_cache)
    record_provenance("run", name, path.name, from_cache)
    return run


def _load_or_train_locked(
    path,
    cfg,
    behaviors,
    *,
    mode,
    flip,
    start,
    max_steps,
    seed,
    probe_every,
    probe_train,
    force,
    with_model,
):
    device = "cuda" if _cuda() else None
    if not force_rerun(force) and trusted_cache(
        path, "meta.json", "run", "training it again", stacklevel=5
    ):
        run = load_trained(path, device=device) if with_model else _tables_only(path)
        from_cache = True
    else:
        model = tokenizer = None
        if start is not None:
            if not (Path(start) / "meta.json").is_file():
                raise FileNotFoundError(
                    f"start={str(start)!r} is not a saved run; train it first with "
                    "load_or_train()."
                )
            begin = load_trained(start, device=device)
            model, tokenizer = begin.model.train(), begin.tokenizer
            if tokenizer is None:
                tokenizer = models.load_model_and_tokenizer(cfg, "cpu")[1]
        run = train_behaviors(
            cfg,
            behaviors,
            mode=mode,
            flip=flip,
            max_steps=max_steps,
            seed=seed,
            model=model,
            tokenizer=tokenizer,
            probe_every=probe_every,
            probe_train=probe_train,
        )
        # at 7B a merged copy per LoRA run would fill the disk: keep the adapter, rebuild on load
        save_trained(
            run,
            path,
            checkpoint=False,
            merged_model=not cfg.requires_gpu,
            start=start,
            settings=run_settings(cfg, behaviors, mode=mode, flip=flip),
        )
        for table, frame in run_tables(
            path
        ).items():  # the same values and dtypes as a cached run's
            setattr(run, table, frame)
        from_cache = False
    return run, from_cache


def _tables_only(path: Path) -> DPORun:
    meta = json.loads((path / "meta.json").read_text())
    return DPORun(model=None, mode=meta["mode"], seed=meta["seed"], **run_tables(path))


def _cuda() -> bool:
    return torch.cuda.is_available()


#: folders that prefill trained in this process: the next load_or_train of each reads it instead of
#: training it again when DPO_FORCE_RERUN (or force=True) is set
_PREFILLED: set[Path] = set()


def prefill(jobs: list[dict], processes: int | None = None, then=None) -> int:
    """Train the runs of ``jobs`` that are not cached yet, several at once, into the cache that
    :func:`load_or_train` reads; return how many were trained.

    ``then(job, folder)``, a module-level function, runs in the worker after each run is saved
    when there are workers: later work on the run, done in parallel (its return is dropped).

    Each job is the keyword arguments of one :func:`load_or_train` call (``cfg`` and
    ``behaviors`` included); a chapter calls this with all its runs first, then loads them one by
    one. ``processes`` defaults to :func:`~dpo_utils.runtime.worker_processes` (1 on a GPU, where
    the runs go one after another in this process as before). Jobs whose ``start`` run is among
    the jobs must come in a later call. The stand-in models are built here first, so workers
    never race to pre-train the same one; what the workers trained shows as "computed now" in
    this process's provenance log.

    Used by: dpo_utils.joint_runs, dpo_utils.llm_experiments.
    """
    todo, seen = [], set()
    for job in jobs:
        path = _job_dir(job)
        if path in seen or (not force_rerun(job.get("force")) and (path / "meta.json").is_file()):
            continue
        seen.add(path)
        todo.append({**job, "with_model": False})
    if not todo:
        return 0
    if processes is None:
        processes = worker_processes(on_gpu=_cuda() or todo[0]["cfg"].requires_gpu)
    if processes > 1 and len(todo) > 1:
        for cfg in {job["cfg"] for job in todo}:
            if cfg.model_name in models.TINY_MODELS:
                models.load_model_and_tokenizer(cfg, "cpu")  # pre-trains it here if missing
    if then is not None and processes > 1 and len(todo) > 1:
        todo = [{**job, "then": then} for job in todo]
    process_map(_prefill_job, todo, processes)
    _PREFILLED.update(_job_dir(job) for job in todo)
    return len(todo)


def _job_dir(job: dict) -> Path:
    keys = ("mode", "flip", "start", "max_steps", "seed", "probe_every", "probe_train", "name")
    return run_dir(job["cfg"], job["behaviors"], **{k: job[k] for k in keys if k in job})


def load_job(job: dict) -> DPORun:
    """:func:`load_or_train` of one :func:`prefill` job; the model only if it sets ``with_model``.

    Used by: dpo_utils.joint_runs, dpo_utils.llm_experiments, dpo_utils.run_cache.
    """
    job = {"with_model": False, **job}
    return load_or_train(job.pop("cfg"), job.pop("behaviors"), **job)


def _prefill_job(job: dict) -> None:
    """One run in a worker process (tables and model saved), then the job's ``then``."""
    then = job.pop("then", None)
    load_job(job)
    if then is not None:
        try:
            then(job, _job_dir(job))
        except Exception as error:  # the run is saved; whoever needs then's work redoes it
            name = getattr(then, "__name__", then)
            warnings.warn(f"{name} after {_job_dir(job).name} failed: {error!r}", stacklevel=2)
