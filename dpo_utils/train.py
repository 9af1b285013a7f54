"""Command-line entry point: DPO on persona behaviours, the same code path as the notebooks.

    python -m dpo_utils.train --profile cpu --behaviors 0 3 --mode lora --out results/cpu/run-a
    accelerate launch --config_file configs/accelerate/ddp.yaml -m dpo_utils.train \\
        --profile llama2-7b ...

It writes what :func:`dpo_utils.training.save_trained` writes: ``probes.csv`` (the tidy table:
step, behavior, split, metric, value, seed, mode), ``pairs.csv``, ``log_history.csv``, ``model/``
(and ``adapter/`` for LoRA), ``meta.json`` (with the run's settings, which ``--resume-from``
checks) and, with ``--checkpoint``, ``checkpoint/``. A notebook calls
:func:`dpo_utils.run_cache.train_behaviors`, the function ``main`` calls, and gets the same table.

Without ``--out`` the run goes to the run cache, into the very folder in which the chapters
(08-11) look for a run of these settings (:func:`dpo_utils.run_cache.chapter_run_dir`: the same
key, the chapters' probe settings and seed by default); the command prints that folder first.

Every flag is checked before any data or model is loaded; a user error prints one line ``error:
...`` and exits with status 2. ``--out`` must be new or empty, or an earlier run replaced with
``--overwrite``; a folder the project did not write is never touched.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from . import config, data, models
from .probes import CHAPTER_PROBE_EVERY, CHAPTER_PROBE_TRAIN, CPU_PROBE_EVERY, chapter_probe_every
from .results import ResultFolderError, check_output_folder
from .run_cache import (
    chapter_run_dir,
    run_dir,
    run_settings,
    train_behaviors,
)
from .training import DPORun, save_trained

__all__ = ["main", "check_resume", "RunFolderError"]

RunFolderError = ResultFolderError
USER_ERRORS = (config.ConfigError, data.PersonaDataError, ResultFolderError)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m dpo_utils.train", description=__doc__.split("\n")[0]
    )
    p.add_argument(
        "--profile",
        default=None,
        help=f"one of {list(config.PROFILES)} (default: $DPO_PROFILE or cpu)",
    )
    p.add_argument("--behaviors", nargs="+", required=True, help="behaviour names or numbers")
    p.add_argument(
        "--model",
        default=None,
        help="any causal LM, a hub id or a local folder, instead of the profile's (its ' Yes' "
        "and ' No' must be single tokens)",
    )
    p.add_argument("--mode", default="lora", help=f"one of {list(config.MODES)}")
    p.add_argument("--flip", action="store_true", help="swap chosen and rejected (misalignment)")
    p.add_argument("--max-steps", default=None, help="override the profile's dpo_max_steps")
    p.add_argument("--seed", default=None, help="override the profile's seed")
    p.add_argument(
        "--probe-every",
        default=None,
        help=f"probe every n-th step (default, as the chapters: {CHAPTER_PROBE_EVERY} on a GPU "
        f"profile, {CPU_PROBE_EVERY} on the CPU profile)",
    )
    p.add_argument(
        "--probe-train",
        default=str(CHAPTER_PROBE_TRAIN),
        help=f"train pairs probed per behaviour (default {CHAPTER_PROBE_TRAIN}, as the chapters)",
    )
    p.add_argument(
        "--resume-from", default=None, help="a folder written by an earlier run (continue it)"
    )
    p.add_argument(
        "--checkpoint",
        action="store_true",
        help="also write checkpoint/ (AdamW state, ~54 GB at 7B) for --resume-from",
    )
    p.add_argument(
        "--per-device-batch-size",
        default=None,
        help="pairs per process and micro-step; per-device x processes x accumulation must equal "
        "the effective batch (128 on the paper profiles: 8 GPUs need 16 or less)",
    )
    p.add_argument(
        "--out",
        default=None,
        help="a new or empty folder to write the run to (default: the run cache folder in "
        "which the chapters look for this run, results/<profile>/runs/dpo-<key>/)",
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace an earlier run at --out (never others)"
    )
    return p


def _int_flag(flag: str, text: str | None, low: int, high: int | None = None) -> int | None:
    if text is None:
        return None
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < low or (high is not None and value >= high):
        allowed = f"an integer >= {low}" if high is None else f"an integer in [{low}, {high})"
        raise config.ConfigError(f"{flag}={text!r} is not allowed; give {allowed}.")
    return value


def _saved_steps(folder: Path) -> int | None:
    state = folder / "checkpoint" / "trainer_state.json"
    if not state.is_file():
        return None
    return int(json.loads(state.read_text()).get("global_step", 0))


def check_resume(folder, settings: dict, max_steps: int | None) -> None:
    """Refuse to resume ``folder`` with other settings; name every field that differs.

    ``settings`` is :func:`dpo_utils.run_cache.run_settings` of the new invocation; ``max_steps``
    (after the profile default) may not be below the steps the saved run already took.

    Used by: dpo_utils.train.
    """
    folder = Path(folder)
    if not (folder / "meta.json").is_file():
        raise ResultFolderError(
            f"--resume-from {str(folder)!r} is not a saved run (no meta.json); give the --out "
            "folder of an earlier run."
        )
    if not (folder / "checkpoint").is_dir():
        raise ResultFolderError(
            f"--resume-from {str(folder)!r} holds no checkpoint/ (written without --checkpoint?); "
            "it cannot be continued."
        )
    meta = json.loads((folder / "meta.json").read_text())
    missing = [k for k in settings if k not in meta]
    if missing:
        raise ResultFolderError(
            f"--resume-from {str(folder)!r} records no {missing} (written by an older version); "
            "it cannot be checked, so it is not resumed."
        )
    differ = {k: (meta[k], v) for k, v in settings.items() if meta[k] != v}
    if differ:
        detail = "; ".join(f"{k}: saved {a!r}, now {b!r}" for k, (a, b) in differ.items())
        raise ResultFolderError(
            f"--resume-from {str(folder)!r} was trained with other settings ({detail}); "
            "resume with the same settings or start a new run."
        )
    done = _saved_steps(folder)
    if done is not None and max_steps is not None and max_steps < done:
        raise ResultFolderError(
            f"--max-steps={max_steps} is below the {done} steps {str(folder)!r} already took; "
            f"give --max-steps >= {done}."
        )


def _validate(args) -> tuple[config.ExperimentConfig, list, dict]:
    """Every flag checked, cheaply (no data read beyond a folder listing, no model, no network)."""
    per_device = _int_flag("--per-device-batch-size", args.per_device_batch_size, 1)
    cfg = config.get_config(args.profile, per_device_batch_size=per_device, model_name=args.model)
    if args.model is not None and Path(args.model).is_dir():  # a local tokenizer: check it now
        _check_answer_tokens(cfg.model_name)
    config.require_device(cfg)  # a GPU profile without a GPU stops here, before the hub
    config.check_mode(args.mode)
    max_steps = _int_flag("--max-steps", args.max_steps, 1)
    seed = _int_flag("--seed", args.seed, 0, config.SEED_LIMIT)
    seed = cfg.seed if seed is None else seed  # the chapters pass it explicitly: one run key
    probe_every = _int_flag("--probe-every", args.probe_every, 1) or chapter_probe_every(cfg)
    probe_train = _int_flag("--probe-train", args.probe_train, 1)
    raw = [int(b) if b.isdigit() else b for b in args.behaviors]
    behaviors = data.resolve_behaviors(raw, data.available_behaviors(cfg.persona_source))
    key = dict(mode=args.mode, flip=args.flip, max_steps=max_steps, seed=seed)
    cache = run_dir(cfg, behaviors, **key, probe_every=probe_every, probe_train=probe_train)
    chapters = chapter_run_dir(cfg, behaviors, **key)
    out = Path(args.out) if args.out is not None else cache
    check_output_folder(out, overwrite=args.overwrite)
    settings = run_settings(cfg, behaviors, mode=args.mode, flip=args.flip)
    if args.resume_from is not None:
        if Path(args.resume_from).resolve() == out.resolve():
            raise ResultFolderError(
                f"--out {args.out!r} is the --resume-from folder; write the continued run to a "
                "new folder."
            )
        check_resume(args.resume_from, settings, max_steps or cfg.dpo_max_steps)
    kwargs = dict(
        mode=args.mode,
        flip=args.flip,
        max_steps=max_steps,
        seed=seed,
        probe_every=probe_every,
        probe_train=probe_train,
        resume_from=args.resume_from,
    )
    where = (
        f"the chapters (08-11) will find this run in {chapters}"
        if out.resolve() == chapters.resolve()
        else f"the chapters look for a run of these settings in {chapters}; this one goes to "
        f"{out}" + ("" if cache == chapters else " (other probe settings: another key)")
    )
    return cfg, behaviors, dict(kwargs, settings=settings, out=out, where=where)


def main(argv: list[str] | None = None) -> DPORun:
    """Parse and check every argument, train, and write the run to ``--out`` (every process takes
    part in the save; the main process writes).

    A user error (bad flag, unknown behaviour, refused folder) prints ``error: ...`` and exits 2.

    Used by: ``python -m dpo_utils.train`` (``accelerate launch -m dpo_utils.train``).
    """
    args = _parser().parse_args(argv)
    try:
        cfg, behaviors, kwargs = _validate(args)
    except USER_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    settings, out, where = kwargs.pop("settings"), kwargs.pop("out"), kwargs.pop("where")
    config.network_environment(cfg)
    if _main_process():
        print(where, flush=True)
    try:
        run = train_behaviors(cfg, behaviors, **kwargs)
        # every process: under FSDP the weights are gathered collectively; the main process writes;
        # saved as the run cache saves (a paper-scale LoRA run keeps its adapter, not a merged 7B)
        save_trained(
            run,
            out,
            checkpoint=args.checkpoint,
            merged_model=not cfg.requires_gpu,
            settings=settings,
        )
        if run.trainer is None or run.trainer.accelerator.is_main_process:
            print(f"wrote {out}: {run.probes['step'].max()} steps, {len(run.probes)} table rows")
            print(where)
    except USER_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    return run


def _check_answer_tokens(folder: str) -> None:
    """A local model's tokenizer must make " Yes" and " No" single tokens (no weights loaded)."""
    from transformers import AutoTokenizer

    try:
        models.answer_token_ids(AutoTokenizer.from_pretrained(folder))
    except ValueError as error:
        raise config.ConfigError(f"model_name={folder!r}: {error}") from None


def _main_process() -> bool:
    return os.environ.get("RANK", "0") == "0"


if __name__ == "__main__":
    main()
