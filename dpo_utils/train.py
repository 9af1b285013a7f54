"""Command-line entry point: DPO on persona behaviours, the same code path as the notebooks.

    python -m dpo_utils.train --profile cpu --behaviors 0 3 --mode lora --out results/cpu/run-a
    accelerate launch --config_file configs/accelerate/ddp.yaml -m dpo_utils.train --profile llama2-7b ...

It writes what :func:`dpo_utils.training.save_trained` writes: ``probes.csv`` (the tidy table: step,
behavior, split, metric, value, seed, mode), ``pairs.csv``, ``log_history.csv``, ``model/`` (and
``adapter/`` for LoRA), ``checkpoint/`` and ``meta.json``. A notebook calls
:func:`dpo_utils.run_cache.train_behaviors`, the function ``main`` calls, and gets the same table.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from . import config
from .run_cache import train_behaviors
from .training import MODES, DPORun, save_trained

__all__ = ["main"]


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
    p.add_argument("--mode", choices=MODES, default="lora")
    p.add_argument("--flip", action="store_true", help="swap chosen and rejected (misalignment)")
    p.add_argument(
        "--max-steps", type=int, default=None, help="override the profile's dpo_max_steps"
    )
    p.add_argument("--seed", type=int, default=None, help="override the profile's seed")
    p.add_argument("--probe-every", type=int, default=1)
    p.add_argument(
        "--probe-train",
        type=int,
        default=None,
        help="train pairs probed per behaviour (default: all)",
    )
    p.add_argument(
        "--resume-from", default=None, help="a folder written by an earlier run (continue it)"
    )
    p.add_argument(
        "--no-checkpoint",
        action="store_true",
        help="skip checkpoint/ (optimizer state; large at 7B)",
    )
    p.add_argument("--out", required=True, help="folder to write the run to")
    return p


def main(argv: list[str] | None = None) -> DPORun:
    """Parse arguments, train, and write the run to ``--out`` (main process only).

    Used by: ``python -m dpo_utils.train`` (``accelerate launch -m dpo_utils.train``).
    """
    args = _parser().parse_args(argv)
    cfg = config.get_config(args.profile)
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    if (
        not cfg.requires_gpu
    ):  # the CPU profile never touches the network; GPU profiles load from the hub
        for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
            os.environ.setdefault(name, "1")
    behaviors = [int(b) if b.isdigit() else b for b in args.behaviors]
    run = train_behaviors(
        cfg,
        behaviors,
        mode=args.mode,
        flip=args.flip,
        max_steps=args.max_steps,
        seed=args.seed,
        probe_every=args.probe_every,
        probe_train=args.probe_train,
        resume_from=args.resume_from,
    )
    if run.trainer is None or run.trainer.accelerator.is_main_process:
        save_trained(run, Path(args.out), checkpoint=not args.no_checkpoint)
        print(f"wrote {args.out}: {run.probes['step'].max()} steps, {len(run.probes)} table rows")
    return run


if __name__ == "__main__":
    main()
