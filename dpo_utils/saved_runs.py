"""Saved DPO runs: what :func:`dpo_utils.training.train_dpo` returns, written and read back.

:func:`save_trained` writes a run atomically (the model in the profile's dtype, bf16 on the paper
profiles; a LoRA adapter; the tables as CSV; optionally trl's checkpoint for resuming) on one
process or, gathering through accelerate, under DDP and FSDP; :func:`load_trained` rebuilds it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch

from . import scale
from .results import atomic_directory

if TYPE_CHECKING:  # for annotations only: importing these costs seconds
    from accelerate import Accelerator
    from peft import PeftModel
    from transformers import PreTrainedModel, PreTrainedTokenizerBase
    from trl import DPOTrainer

__all__ = ["RUN_TABLES", "DPORun", "save_trained", "load_trained", "run_tables"]

RUN_TABLES = ("probes", "pairs", "log_history")  # the CSV tables save_trained writes


@dataclass
class DPORun:
    """What :func:`train_dpo` returns: the trained model and its tidy tables.

    ``model`` is the trained policy (a ``PeftModel`` for LoRA); ``probes`` the tidy long table
    (step, behavior, split, metric, value, seed, mode); ``pairs`` the per-pair log-probs behind it;
    ``log_history`` trl's own logs, one row per optimizer step; ``trainer`` the trl trainer, kept
    so that :func:`save_trained` can write a resumable checkpoint (``None`` after
    :func:`load_trained`).

    Used by: dpo_utils.saved_runs, dpo_utils.training.
    """

    # a PreTrainedModel, a PeftModel for LoRA, or None for a run read back as tables only: Any,
    # because the callers use whichever they know they hold
    model: Any
    probes: pd.DataFrame
    pairs: pd.DataFrame
    log_history: pd.DataFrame
    mode: str
    seed: int
    trainer: DPOTrainer | None = field(default=None, repr=False)
    tokenizer: PreTrainedTokenizerBase | None = field(default=None, repr=False)
    save_dtype: str = "float32"  # the dtype save_trained writes by default (the profile's dtype)

    def release(self) -> None:
        """Drop this run's model and trainer and free their memory (the tables stay)."""
        self.model = self.trainer = None
        scale.free_memory()


def _merged_copy(peft_model, adapter_dir: Path, state: dict | None = None):
    """The base model with the adapter merged, rebuilt cleanly (the trained PeftModel is left
    untouched).

    ``state`` is the PeftModel's full state dict (gathered under FSDP); default: its own."""
    from peft import PeftModel

    base = peft_model.get_base_model()
    full = peft_model.state_dict() if state is None else state
    state = {
        k.removeprefix("base_model.model.").replace(".base_layer", ""): v.detach().clone()
        for k, v in full.items()
        if "lora_" not in k
    }
    param = next(base.parameters())
    with torch.device(param.device):
        fresh = type(base)._from_config(base.config, dtype=param.dtype)
    fresh.load_state_dict(state)
    return PeftModel.from_pretrained(fresh, str(adapter_dir)).merge_and_unload()


def _save_checkpoint(trainer, target: Path) -> None:
    """trl/transformers checkpoint (weights, AdamW state, scheduler, RNG, trainer state) into
    ``target``."""
    scratch = tempfile.mkdtemp(prefix="dpo-ckpt-")
    old = trainer.args.output_dir
    try:
        trainer.args.output_dir = scratch
        trainer._save_checkpoint(trainer.model, trial=None)
        shutil.move(os.path.join(scratch, f"checkpoint-{trainer.state.global_step}"), target)
    finally:
        trainer.args.output_dir = old
        shutil.rmtree(scratch, ignore_errors=True)


def _cast(state: dict, dtype: torch.dtype) -> dict:
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}


def _write_model(model, state: dict, folder: Path, dtype: torch.dtype) -> None:
    """``save_pretrained`` of ``state`` cast to ``dtype``; config.json then names that dtype (so
    ``from_pretrained(dtype="auto")`` loads it as saved, not as the live model was)."""
    model.save_pretrained(str(folder), state_dict=_cast(state, dtype))
    conf = json.loads((folder / "config.json").read_text())
    conf["dtype"] = str(dtype).removeprefix("torch.")
    (folder / "config.json").write_text(json.dumps(conf, indent=2, sort_keys=True) + "\n")


def _full_state(acc, wrapped) -> dict:
    """The whole state dict on the main process; every process must call it (FSDP gathers
    shards)."""
    from torch.distributed.fsdp import FullStateDictConfig, StateDictType
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    if isinstance(wrapped, FSDP):  # FSDP1, what accelerate's FSDP path does too
        full = FullStateDictConfig(offload_to_cpu=True, rank0_only=True)
        with FSDP.state_dict_type(wrapped, StateDictType.FULL_STATE_DICT, full):
            return {
                k.replace("_fsdp_wrapped_module.", ""): v for k, v in wrapped.state_dict().items()
            }
    if any(type(m).__name__.startswith("FSDP") for m in wrapped.modules()):  # FSDP2
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return get_model_state_dict(wrapped, options=options)
    return acc.get_state_dict(wrapped)  # DDP: the unwrapped model's own


def save_trained(
    run: DPORun,
    path: str | Path,
    *,
    checkpoint: bool = False,
    merged_model: bool = True,
    start: str | Path | None = None,
    dtype: str | None = None,
    settings: dict | None = None,
) -> Path:
    """Write a run to ``path`` atomically: ``model/`` (full model, or LoRA merged into the base),
    ``adapter/`` (LoRA only), the tables as CSV, ``meta.json`` and, if ``checkpoint`` and the run
    still has its trainer, ``checkpoint/`` (optimizer and RNG state) for
    ``train_dpo(resume_from=path)``.

    ``dtype`` (default: the profile's, bf16 on the paper profiles, so a 7B model takes 13.5 GB and
    not 27) is the dtype of ``model/``. ``checkpoint`` is off by default: AdamW's state of a 7B
    policy is ~54 GB; ask for it only to resume. ``merged_model=False`` (LoRA only) skips
    ``model/``: a merged 7B model is 13.5 GB, the adapter a few MB. :func:`load_trained` then
    rebuilds the merged model from the base, which is ``start`` (the folder of the run this one
    started from) or else the base model's hub id or path, kept in meta.json. Under several
    processes (DDP, FSDP) call it on
    *every* process: the full state dict is gathered through accelerate and the main process
    writes.

    Used by: the run cache, the command line and the LLM experiments, through training's re-export.
    """
    path = Path(path)
    lora = run.mode == "lora"
    save_dtype = scale.dtype_of(dtype or run.save_dtype)
    acc = _gathering_accelerator(run)
    if acc is not None and checkpoint:
        raise ValueError(
            "checkpoint=True is not supported under several processes; save without it "
            "(resuming a multi-GPU run is not implemented)."
        )
    if acc is not None and run.trainer is not None:  # acc is the trainer's
        model = acc.unwrap_model(run.trainer.model)
        state = _full_state(acc, run.trainer.model)
        if not acc.is_main_process:  # FSDP: every rank took part in the gather above
            acc.wait_for_everyone()
            return path
    else:
        model, state = run.model, run.model.state_dict()
    base = model.get_base_model() if lora else model
    meta = {
        "mode": run.mode,
        "seed": run.seed,
        "merged_model": bool(merged_model or not lora),
        "base": str(getattr(base.config, "_name_or_path", "") or ""),
        "start": None if start is None else str(start),
        "dtype": str(save_dtype).removeprefix("torch."),
        **(settings or {}),  # what made the run (behaviours, flip, profile...): resume checks it
    }
    with atomic_directory(path) as tmp:
        if lora:
            model.save_pretrained(str(tmp / "adapter"), state_dict=state)
            if merged_model:
                merged = _merged_copy(model, tmp / "adapter", state)
                _write_model(merged, merged.state_dict(), tmp / "model", save_dtype)
        else:
            _write_model(model, state, tmp / "model", save_dtype)
        if run.tokenizer is not None:
            run.tokenizer.save_pretrained(str(tmp / "model"))
        if checkpoint and run.trainer is not None:
            _save_checkpoint(run.trainer, tmp / "checkpoint")
        for name in RUN_TABLES:
            getattr(run, name).to_csv(tmp / f"{name}.csv", index=False)
        (tmp / "meta.json").write_text(json.dumps(meta))
    if acc is not None:
        acc.wait_for_everyone()
    return path


def _gathering_accelerator(run: DPORun) -> Accelerator | None:
    """The accelerator of a run trained on several processes (DDP, FSDP), whose state dict must be
    gathered; None on one process."""
    acc = getattr(run.trainer, "accelerator", None)
    return acc if acc is not None and acc.num_processes > 1 else None


def _rebuild_merged(path: Path, meta: dict):
    """The merged model of an adapter-only LoRA run: its base (a start run, or a hub id / path) +
    adapter."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    if meta.get("start"):
        base = load_trained(meta["start"]).model
    elif meta.get("base"):
        base = AutoModelForCausalLM.from_pretrained(meta["base"], dtype="auto")
    else:
        raise FileNotFoundError(
            f"{str(path)!r} holds only a LoRA adapter and names no base model to merge it into."
        )
    return PeftModel.from_pretrained(base, str(path / "adapter")).merge_and_unload()


def load_trained(
    path: str | Path,
    *,
    merged: bool = True,
    base_model: PreTrainedModel | None = None,
    device: str | None = None,
) -> DPORun:
    """Load a run written by :func:`save_trained` (no trainer; tables from CSV).

    ``merged=True`` gives a plain model: the fully fine-tuned one, or the base with the LoRA
    adapter merged, ready to be the starting point (and reference) of a new DPO run.
    ``merged=False`` (LoRA only) attaches the saved adapter to ``base_model`` and returns the
    ``PeftModel``.

    Used by: dpo_utils.saved_runs.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    if not (path / "meta.json").is_file():
        raise FileNotFoundError(
            f"{str(path)!r} is not a saved run (no meta.json); write one with save_trained()."
        )
    meta = json.loads((path / "meta.json").read_text())
    model: PreTrainedModel | PeftModel
    if merged and (path / "model" / "config.json").is_file():
        model = AutoModelForCausalLM.from_pretrained(str(path / "model"), dtype="auto")
    elif merged and meta["mode"] == "lora":
        model = _rebuild_merged(path, meta)
    elif meta["mode"] != "lora" or base_model is None:
        raise ValueError(
            f"merged=False needs a LoRA run and base_model; this run is {meta['mode']!r}"
            f"{'' if base_model is not None else ' and base_model is None'}."
        )
    else:
        from peft import PeftModel

        model = PeftModel.from_pretrained(base_model, str(path / "adapter"))
    tokenizer = (
        AutoTokenizer.from_pretrained(str(path / "model"))
        if (path / "model" / "tokenizer.json").exists()
        else None
    )
    return DPORun(
        # PreTrainedModel.to under functools.wraps reads as unbound to mypy (models.py says more)
        model=model.to(device) if device else model,  # type: ignore[arg-type]
        mode=meta["mode"],
        seed=meta["seed"],
        tokenizer=tokenizer,
        **run_tables(path),
    )


def run_tables(path: str | Path) -> dict[str, pd.DataFrame]:
    """The tables of a run written by :func:`save_trained`, read back from CSV (empty file: empty
    table).

    Used by: dpo_utils.saved_runs.
    """
    path = Path(path)
    return {
        name: pd.read_csv(path / f"{name}.csv")
        if (path / f"{name}.csv").stat().st_size > 1
        else pd.DataFrame()
        for name in RUN_TABLES
    }
