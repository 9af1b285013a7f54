"""Many runs at once: the seed sweeps and run lists that chapters 07-11 hand to worker processes.

On a CPU box a chapter's independent runs go two at a time, one per core
(:func:`~dpo_utils.runtime.process_map`). A sweep first reads what is already cached, in the
notebook's own process (a ``cached_only`` call raises :class:`~dpo_utils.runtime.NotCached` for
the rest), so a warm build starts no workers; a run list is a list of
:func:`~dpo_utils.run_cache.prefill` jobs, the heaviest first, so that no core waits alone at the
end.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from .config import ExperimentConfig
from .llm_experiments import PROBE_TRAIN, _job, base_features, geometry_table, persona_rows
from .run_cache import prefill
from .runtime import NotCached, process_map, worker_processes

__all__ = [
    "pair_cfg",
    "pair_jobs",
    "joint_jobs",
    "prefill_prioritisation",
    "geometry_over_seeds",
]


def pair_cfg(cfg: ExperimentConfig, pair_batch_size: int | None) -> ExperimentConfig:
    """The config of a pair's joint runs: batch ``pair_batch_size`` (default the profile's
    ``pair_batch_size``), each behaviour split on its own.

    Used by: dpo_utils.llm_experiments, dpo_utils.sweeps.
    """
    return cfg.replace(dpo_batch_size=pair_batch_size or cfg.pair_batch_size, split="per-behavior")


def pair_jobs(
    cfg: ExperimentConfig,
    first: str,
    second: str,
    mode: str = "full",
    pair_batch_size: int | None = None,
    probe_train: int | None = PROBE_TRAIN,
    seed: int | None = None,
) -> list[dict]:
    """The runs :func:`pair_curves` reads, as :func:`~dpo_utils.run_cache.prefill` jobs: the two
    joint runs (compatible, conflicting) first, then the two solo runs (chapter 08's).

    Used by: dpo_utils.llm_experiments, dpo_utils.sweeps.
    """
    joint_cfg, pair = pair_cfg(cfg, pair_batch_size), [first, second]
    return [
        _job(joint_cfg, pair, mode=mode, flip=flip, probe_train=probe_train, seed=seed)
        for flip in (False, [second])
    ] + [_job(cfg, [b], mode=mode, probe_train=probe_train, seed=seed) for b in pair]


def joint_jobs(
    cfg: ExperimentConfig,
    behaviors: Sequence[str],
    *,
    seeds: Sequence[tuple[int, int]],
    mode: str = "full",
    batch_size: int | None = None,
    probe_train: int | None = PROBE_TRAIN,
) -> list[dict]:
    """The runs of :func:`joint_curves` as :func:`~dpo_utils.run_cache.prefill` jobs, one per
    seed pair.

    Used by: dpo_utils.llm_evidence, dpo_utils.sweeps.
    """
    batch = batch_size or min(128, cfg.dpo_batch_size * len(behaviors))
    joint_cfg = cfg.replace(dpo_batch_size=batch, per_device_batch_size=min(batch, 32))
    return [
        _job(
            joint_cfg.replace(pretrain_seed=int(p)),
            behaviors,
            mode=mode,
            probe_train=probe_train,
            seed=int(d),
        )
        for p, d in seeds
    ]


def prefill_prioritisation(
    cfg: ExperimentConfig,
    pair: Sequence[str],
    behaviors: Sequence[str],
    *,
    seeds: Sequence[tuple[int, int]],
    mode: str = "full",
    pair_batch_size: int | None = None,
) -> int:
    """Train chapter 09's runs that are not cached yet, in one dispatch and the heaviest first:
    the joint runs of all ``behaviors``, then the pair's joint, conflicting and solo runs, for
    every seed pair. Return how many were trained. Separately, the three joint runs would leave
    one of two workers idle for a third of their time.

    Used in: notebooks/09_prioritisation_llm.ipynb.
    """
    first, second = pair
    jobs = joint_jobs(cfg, behaviors, seeds=seeds, mode=mode)
    for p, d in seeds:
        seeded = cfg.replace(pretrain_seed=int(p))
        jobs += pair_jobs(seeded, first, second, mode, pair_batch_size, seed=int(d))
    return prefill(jobs)


def _geometry_job(job: dict) -> pd.DataFrame:
    job = dict(job)
    cfg, behaviors, device = job.pop("cfg"), job.pop("behaviors"), job.pop("device")
    persona = persona_rows(cfg, behaviors)
    return geometry_table(cfg, persona, base_features(cfg, persona, device), **job)


def geometry_over_seeds(
    cfg: ExperimentConfig,
    behaviors: Sequence[str],
    seeds: Sequence[tuple[int, int]],
    *,
    modes: Sequence[str] = ("full", "lora"),
    device: str = "cpu",
) -> pd.DataFrame:
    """:func:`geometry_table` of ``behaviors`` (before: the stand-in of that pre-training seed;
    after: its chapter 08 runs of that DPO seed) for every (pre-training seed, DPO seed) pair,
    stacked with columns ``pretrain_seed`` and ``dpo_seed``. Tables that are cached are read here;
    the others are measured ``worker_processes`` at a time on a CPU box.

    Used in: notebooks/10_misalignment_llm.ipynb, notebooks/11_embedding_geometry.ipynb.
    """
    jobs = [
        dict(
            cfg=cfg.replace(pretrain_seed=int(p)),
            behaviors=list(behaviors),
            modes=tuple(modes),
            seed=int(d),
            device=device,
        )
        for p, d in seeds
    ]
    if not jobs:
        raise ValueError("seeds is empty; give at least one (pretrain_seed, dpo_seed) pair.")
    tables: dict[int, pd.DataFrame] = {}
    for i, job in enumerate(jobs):
        try:
            tables[i] = _geometry_job({**job, "cached_only": True})
        except NotCached:
            continue
    missing = [i for i in range(len(jobs)) if i not in tables]
    processes = worker_processes(on_gpu=device != "cpu")
    measured = process_map(_geometry_job, [jobs[i] for i in missing], processes)
    tables.update(zip(missing, measured, strict=True))
    return pd.concat(
        [
            tables[i].assign(pretrain_seed=int(p), dpo_seed=int(d))
            for i, (p, d) in enumerate(seeds)
        ],
        ignore_index=True,
    )
