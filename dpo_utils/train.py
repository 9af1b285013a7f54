"""Command-line entry point: DPO on persona behaviours, the same code path as the notebooks.

    python -m dpo_utils.train --profile cpu --behaviors 0 3 --mode lora --out results/cpu/run-a
    accelerate launch --config_file configs/accelerate/ddp.yaml -m dpo_utils.train --profile llama2-7b ...

It writes what :func:`dpo_utils.training.save_trained` writes: ``probes.csv`` (the tidy table: step,
behavior, split, metric, value, seed, mode), ``pairs.csv``, ``log_history.csv``, ``model/`` (and
``adapter/`` for LoRA), ``checkpoint/`` and ``meta.json``. A notebook calls
:func:`train_behaviors`, the function ``main`` calls, and gets the same table.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from . import config, data, models
from .training import MODES, DPORun, save_trained, train_dpo

__all__ = ["behavior_pairs", "train_behaviors", "main"]


def behavior_pairs(cfg: config.ExperimentConfig, behaviors, flip: bool = False) -> tuple[list[dict], dict]:
    """Training pairs and probe sets {"train", "test"} for behaviours, split as the authors split.

    Used in: notebooks/08_full_and_lora_dpo.ipynb, notebooks/09_prioritization.ipynb.
    """
    train, test = [], []
    source = data.corpus_dir() if cfg.persona_source == "corpus" else cfg.persona_source
    for name, rows in data.load_persona(source, behaviors).items():
        rows_train, rows_test = data.split_rows(rows, seed=cfg.seed)
        train += data.preference_pairs(rows_train, name, flip=flip)
        test += data.preference_pairs(rows_test, name, flip=flip)
    if not train:
        raise ValueError(f"behaviors={behaviors!r} gave no training pairs; name at least one behaviour.")
    return train, {"train": train, "test": test} if test else {"train": train}


def train_behaviors(cfg: config.ExperimentConfig, behaviors, *, mode: str = "lora", flip: bool = False,
                    max_steps: int | None = None, seed: int | None = None, model=None, tokenizer=None,
                    probe_every: int = 1, resume_from=None) -> DPORun:
    """Joint DPO on the named behaviours, probed on each behaviour's train and test split.

    ``model``/``tokenizer`` default to the profile's (``models.load_model_and_tokenizer``); pass a
    merged aligned model to start from it (chapter 10). Returns :class:`~dpo_utils.training.DPORun`.

    Used in: notebooks/08_full_and_lora_dpo.ipynb, notebooks/09_prioritization.ipynb,
    notebooks/10_misalignment.ipynb.
    """
    train_pairs, probe_sets = behavior_pairs(cfg, behaviors, flip)
    if model is None or tokenizer is None:
        model, tokenizer = _profile_model(cfg, mode)
    return train_dpo(cfg, model, tokenizer, train_pairs, mode=mode, probe_sets=probe_sets, max_steps=max_steps,
                     seed=seed, probe_every=probe_every, resume_from=resume_from)


def _profile_model(cfg: config.ExperimentConfig, mode: str):
    """The profile's model on this process's device. Full fine-tuning keeps fp32 master weights (bf16
    autocast on GPU, as the authors ran): a pure-bf16 AdamW step of lr 1e-6 would round to nothing."""
    import torch

    device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if torch.cuda.is_available() else "cpu"
    model, tokenizer = models.load_model_and_tokenizer(cfg.replace(dtype="float32") if mode == "full" else cfg, device)
    return model.train(), tokenizer


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m dpo_utils.train", description=__doc__.split("\n")[0])
    p.add_argument("--profile", default=None, help=f"one of {list(config.PROFILES)} (default: $DPO_PROFILE or cpu)")
    p.add_argument("--behaviors", nargs="+", required=True, help="behaviour names or numbers")
    p.add_argument("--mode", choices=MODES, default="lora")
    p.add_argument("--flip", action="store_true", help="swap chosen and rejected (misalignment)")
    p.add_argument("--max-steps", type=int, default=None, help="override the profile's dpo_max_steps")
    p.add_argument("--seed", type=int, default=None, help="override the profile's seed")
    p.add_argument("--probe-every", type=int, default=1)
    p.add_argument("--resume-from", default=None, help="a folder written by an earlier run (continue it)")
    p.add_argument("--no-checkpoint", action="store_true", help="skip checkpoint/ (optimizer state; large at 7B)")
    p.add_argument("--out", required=True, help="folder to write the run to")
    return p


def main(argv: list[str] | None = None) -> DPORun:
    """Parse arguments, train, and write the run to ``--out`` (main process only)."""
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_HUB_DISABLE_TELEMETRY"):
        os.environ.setdefault(name, "1")
    args = _parser().parse_args(argv)
    behaviors = [int(b) if b.isdigit() else b for b in args.behaviors]
    cfg = config.get_config(args.profile)
    run = train_behaviors(cfg, behaviors, mode=args.mode, flip=args.flip, max_steps=args.max_steps,
                          seed=args.seed, probe_every=args.probe_every, resume_from=args.resume_from)
    if run.trainer is None or run.trainer.accelerator.is_main_process:
        save_trained(run, Path(args.out), checkpoint=not args.no_checkpoint)
        print(f"wrote {args.out}: {run.probes['step'].max()} steps, {len(run.probes)} table rows")
    return run


if __name__ == "__main__":
    main()
