"""DPO through trl's DPOTrainer, full fine-tuning or LoRA, with per-behaviour probe curves.

One function, :func:`train_dpo`, runs every LLM experiment of the book (chapters 08-11): the
profile's hyperparameters (``config.py``), trl's sigmoid loss on summed response log-probs, AdamW
at a constant learning rate without warmup or weight decay, and a
:class:`~dpo_utils.probes.ProbeCallback` that records per-pair log-probs before training and after
every optimizer step. The notebook and the command line (``python -m dpo_utils.train``, also under
``accelerate launch``) call the same code.

``train_dpo`` trains the model it is given *in place* (trl patches its ``forward``; LoRA injects
its layers into it). Never ``copy.deepcopy`` a model trl has trained: the copy keeps calling the
original's patched forward. Use ``models.clone_model`` (rebuilt from config + state dict) or
:func:`save_trained` / :func:`load_trained` instead.
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

from . import losses, models
from .config import MODES, ConfigError, ExperimentConfig, check_mode
from .probes import ProbeCallback, probe_table
from .results import atomic_directory

if TYPE_CHECKING:  # for annotations only: importing these costs seconds
    from peft import PeftModel
    from transformers import PreTrainedModel, PreTrainedTokenizerBase
    from trl import DPOTrainer

__all__ = ["MODES", "DPORun", "dpo_arguments", "train_dpo", "save_trained", "load_trained"]

RUN_TABLES = ("probes", "pairs", "log_history")  # the CSV tables save_trained writes


@dataclass
class DPORun:
    """What :func:`train_dpo` returns: the trained model and its tidy tables.

    ``model`` is the trained policy (a ``PeftModel`` for LoRA); ``probes`` the tidy long table
    (step, behavior, split, metric, value, seed, mode); ``pairs`` the per-pair log-probs behind it;
    ``log_history`` trl's own logs, one row per optimizer step; ``trainer`` the trl trainer, kept
    so that :func:`save_trained` can write a resumable checkpoint (``None`` after
    :func:`load_trained`).

    Used by: dpo_utils.run_cache, dpo_utils.train, dpo_utils.training.
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


def _world_size() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


def dpo_arguments(
    cfg: ExperimentConfig,
    mode: str,
    *,
    output_dir: str,
    max_steps: int | None = None,
    seed: int | None = None,
    use_cpu: bool | None = None,
):
    """trl ``DPOConfig`` for a profile: lr by mode, effective batch via gradient accumulation, bf16
    on GPU.

    Gradient accumulation = dpo_batch_size / (per_device_batch_size x world size), which must
    divide.

    Used by: dpo_utils.training.
    """
    from trl import DPOConfig

    check_mode(mode)
    losses.check_beta(cfg.dpo_beta)
    use_cpu = not torch.cuda.is_available() if use_cpu is None else use_cpu
    per_step = cfg.per_device_batch_size * _world_size()
    if cfg.dpo_batch_size % per_step:
        raise ConfigError(
            f"dpo_batch_size={cfg.dpo_batch_size} is not a multiple of per_device_batch_size="
            f"{cfg.per_device_batch_size} x {_world_size()} processes; choose sizes that divide."
        )
    steps = cfg.dpo_max_steps if max_steps is None else max_steps
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise ConfigError(
            f"max_steps={steps!r} is not allowed; it must be an integer >= 1 or None."
        )
    on_gpu = not use_cpu
    return DPOConfig(
        output_dir=output_dir,
        report_to="none",
        loss_type=["sigmoid"],
        beta=cfg.dpo_beta,
        learning_rate=cfg.full_lr if mode == "full" else cfg.lora_lr,
        per_device_train_batch_size=cfg.per_device_batch_size,
        gradient_accumulation_steps=cfg.dpo_batch_size // per_step,
        num_train_epochs=cfg.dpo_epochs,
        max_steps=-1 if steps is None else steps,
        lr_scheduler_type="constant",
        warmup_steps=0,
        optim="adamw_torch",
        weight_decay=0.0,
        max_length=cfg.max_length,
        seed=cfg.seed if seed is None else seed,
        bf16=on_gpu and torch.cuda.is_bf16_supported(),
        use_cpu=use_cpu,
        gradient_checkpointing=on_gpu,
        logging_steps=1,
        save_strategy="no",
        disable_tqdm=True,
    )


def _check_pairs(pairs, name: str) -> None:
    if not isinstance(pairs, (list, tuple)) or not pairs:
        raise ValueError(f"{name} is empty or not a list; give a non-empty list of pair dicts.")
    for i, pair in enumerate(pairs):
        missing = (
            {"prompt", "chosen", "rejected"} - set(pair)
            if isinstance(pair, dict)
            else {"(not a dict)"}
        )
        if missing:
            raise ValueError(
                f"{name}[{i}] lacks {sorted(missing)}; each pair needs prompt, chosen, rejected."
            )


def _build_trainer(cfg, model, tokenizer, train_pairs, mode, ref_model, args, callbacks):
    from datasets import Dataset
    from transformers import PrinterCallback
    from trl import DPOTrainer

    if hasattr(model, "get_base_model"):
        raise TypeError(
            "model is already a PeftModel; pass the plain (e.g. merged) model, see load_trained()."
        )
    rows = [{k: p[k] for k in ("prompt", "chosen", "rejected")} for p in train_pairs]
    extra = {"peft_config": models.lora_config(cfg)} if mode == "lora" else {}
    if mode == "full" and ref_model is None:
        ref_model = models.clone_model(model)
    trainer = DPOTrainer(
        model=model,
        ref_model=ref_model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        callbacks=callbacks,
        **extra,
    )
    trainer.remove_callback(PrinterCallback)
    return trainer


def train_dpo(
    cfg: ExperimentConfig,
    model: PreTrainedModel | PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    train_pairs: list[dict],
    *,
    mode: str = "lora",
    probe_sets: dict[str, list[dict]] | None = None,
    ref_model: PreTrainedModel | None = None,
    output_dir: str | None = None,
    max_steps: int | None = None,
    seed: int | None = None,
    probe_every: int = 1,
    probe_batch_size: int = 64,
    resume_from: str | Path | None = None,
    callbacks: list | None = None,
) -> DPORun:
    """Train ``model`` with DPO on ``train_pairs`` (dicts: prompt, chosen, rejected[, behavior]).

    ``mode="full"`` trains every parameter against ``ref_model`` (default: a clone of the starting
    model); ``mode="lora"`` trains a fresh adapter (``models.lora_config(cfg)``) against the
    adapter-disabled model (trl sets every dropout, LoRA's included, to 0, as in the authors'
    runs). ``probe_sets`` ({split: pairs}) are probed at step 0 and after every ``probe_every``-th
    optimizer step. ``max_steps``/``seed`` override the profile. ``resume_from`` continues a run
    saved by :func:`save_trained` (pass the same starting model, data and settings); its tables
    then cover the whole run. ``callbacks`` are extra ``TrainerCallback`` objects (e.g. timers).
    The model is trained in place.

    Used in: notebooks/12_faq_rewards_go_down.ipynb.
    """
    check_mode(mode)
    _check_pairs(train_pairs, "train_pairs")
    checkpoint = None
    if resume_from is not None:
        checkpoint = Path(resume_from) / "checkpoint"
        if not checkpoint.is_dir():
            raise FileNotFoundError(
                f"resume_from={str(resume_from)!r} holds no checkpoint/; "
                "save it with save_trained()."
            )
    scratch = None
    try:  # the scratch folder is made inside the try: a failed check below cannot leak it
        scratch = None if output_dir else tempfile.mkdtemp(prefix="dpo-run-")
        run_dir = output_dir or scratch
        assert run_dir is not None  # one of the two is set
        args = dpo_arguments(cfg, mode, output_dir=run_dir, max_steps=max_steps, seed=seed)
        probe = None
        if probe_sets is not None:
            probe = ProbeCallback(
                tokenizer,
                probe_sets,
                cfg.dpo_beta,
                max_length=cfg.max_length,
                batch_size=probe_batch_size,
                every=probe_every,
            )
        extra = [probe] if probe else []
        trainer = _build_trainer(
            cfg,
            model,
            tokenizer,
            train_pairs,
            mode,
            ref_model,
            args,
            extra + list(callbacks or []),
        )
        if probe is not None:
            probe.ref_model = trainer.ref_model  # None for LoRA: reference = adapter disabled
        trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    finally:
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)
    pairs = probe.pair_table() if probe else pd.DataFrame()
    if checkpoint is not None and probe is not None:
        earlier = pd.read_csv(checkpoint.parent / "pairs.csv")
        pairs = pd.concat(
            [earlier[earlier["step"] < pairs["step"].min()], pairs], ignore_index=True
        )
    logs = pd.DataFrame([r for r in trainer.state.log_history if "loss" in r])
    constants = dict(seed=args.seed, mode=mode)
    probes = probe_table(pairs, cfg.dpo_beta, **constants) if probe is not None else pd.DataFrame()
    return DPORun(
        model=trainer.model,
        probes=probes,
        pairs=pairs,
        log_history=logs,
        mode=mode,
        seed=args.seed,
        trainer=trainer,
        tokenizer=tokenizer,
    )


def _merged_copy(peft_model, adapter_dir: Path):
    """The base model with the adapter merged, rebuilt cleanly (the trained PeftModel is left
    untouched)."""
    from peft import PeftModel

    base = peft_model.get_base_model()
    state = {
        k.replace(".base_layer", ""): v.detach().clone()
        for k, v in base.state_dict().items()
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


def save_trained(
    run: DPORun,
    path: str | Path,
    *,
    checkpoint: bool = True,
    merged_model: bool = True,
    start: str | Path | None = None,
    settings: dict | None = None,
) -> Path:
    """Write a run to ``path`` atomically: ``model/`` (full model, or LoRA merged into the base),
    ``adapter/`` (LoRA only), the tables as CSV, ``meta.json`` and, if ``checkpoint`` and the run
    still has its trainer, ``checkpoint/`` (optimizer and RNG state) for
    ``train_dpo(resume_from=path)``.

    ``merged_model=False`` (LoRA only) skips ``model/``: a merged 7B model is 13-27 GB, the adapter
    a few MB. :func:`load_trained` then rebuilds the merged model from the base, which is ``start``
    (the folder of the run this one started from) or else the base model's hub id or path, kept in
    meta.json. Under several processes, call it on the main process only (not supported under
    FSDP).

    Used by: dpo_utils.llm_experiments, dpo_utils.run_cache, dpo_utils.train.
    """
    path = Path(path)
    lora = run.mode == "lora"
    base = run.model.get_base_model() if lora else run.model
    meta = {
        "mode": run.mode,
        "seed": run.seed,
        "merged_model": bool(merged_model or not lora),
        "base": str(getattr(base.config, "_name_or_path", "") or ""),
        "start": None if start is None else str(start),
        **(settings or {}),  # what made the run (behaviours, flip, profile...): resume checks it
    }
    with atomic_directory(path) as tmp:
        if lora:
            run.model.save_pretrained(str(tmp / "adapter"))
            if merged_model:
                _merged_copy(run.model, tmp / "adapter").save_pretrained(str(tmp / "model"))
        else:
            run.model.save_pretrained(str(tmp / "model"))
        if run.tokenizer is not None:
            run.tokenizer.save_pretrained(str(tmp / "model"))
        if checkpoint and run.trainer is not None:
            _save_checkpoint(run.trainer, tmp / "checkpoint")
        for name in RUN_TABLES:
            getattr(run, name).to_csv(tmp / f"{name}.csv", index=False)
        (tmp / "meta.json").write_text(json.dumps(meta))
    return path


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

    Used by: dpo_utils.llm_experiments, dpo_utils.run_cache, dpo_utils.training.
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
        # transformers 5.24 types PreTrainedModel.to through a wrapper that misstates its args
        model=model.to(device) if device else model,  # type: ignore[arg-type]
        mode=meta["mode"],
        seed=meta["seed"],
        tokenizer=tokenizer,
        **run_tables(path),
    )


def run_tables(path: str | Path) -> dict[str, pd.DataFrame]:
    """The tables of a run written by :func:`save_trained`, read back from CSV (empty file: empty
    table).

    Used by: dpo_utils.run_cache, dpo_utils.training.
    """
    path = Path(path)
    return {
        name: pd.read_csv(path / f"{name}.csv")
        if (path / f"{name}.csv").stat().st_size > 1
        else pd.DataFrame()
        for name in RUN_TABLES
    }
