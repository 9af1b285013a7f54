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
``save_trained`` / ``load_trained`` (:mod:`dpo_utils.saved_runs`) instead.
"""

from __future__ import annotations

import functools
import hashlib
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import torch

from . import losses, models, scale
from .config import MODES, ConfigError, ExperimentConfig, check_mode
from .probes import ProbeCallback, probe_table
from .results import config_hash, load_or_run
from .saved_runs import RUN_TABLES, DPORun, load_trained, run_tables, save_trained

if TYPE_CHECKING:  # for annotations only: importing these costs seconds
    from peft import PeftModel
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "MODES",
    "RUN_TABLES",
    "DPORun",
    "dpo_arguments",
    "score_completions_only",
    "train_dpo",
    "cached_full_run",
    "save_trained",
    "load_trained",
    "run_tables",
]

_world_size = scale.world_size


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
    scale.check_launch(use_cpu)
    per_step = cfg.per_device_batch_size * _world_size()
    if cfg.dpo_batch_size % per_step:
        fits = [b for n, b, _ in scale.batch_plans(cfg.dpo_batch_size, (_world_size(),))]
        raise ConfigError(
            f"dpo_batch_size={cfg.dpo_batch_size} is not a multiple of per_device_batch_size="
            f"{cfg.per_device_batch_size} x {_world_size()} processes; on {_world_size()} "
            f"process(es) choose per_device_batch_size from {fits}."
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
        optim=scale.optimizer_name(not use_cpu),
        weight_decay=0.0,
        # paper profiles: the authors' truncation is applied by train_dpo itself (see _truncate)
        max_length=None if scale.max_prompt_length(cfg) else cfg.max_length,
        seed=cfg.seed if seed is None else seed,
        # mixed precision on a GPU: bf16 autocast, or fp16 for a float16 profile (a T4 has no bf16)
        bf16=on_gpu and cfg.dtype != "float16" and torch.cuda.is_bf16_supported(),
        fp16=on_gpu and cfg.dtype == "float16",
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


def score_completions_only() -> bool:
    """Let trl score only the completion tokens on every device; return whether it now does.

    trl 1.16 computes a sequence's log-prob through a chunked log-softmax over the vocabulary. On
    CUDA (with Triton) it passes that kernel only the positions whose label is not -100, the
    completion tokens; elsewhere it passes every position and masks the prompt's out afterwards,
    so that a compiler (Neuron) sees the same tile shapes on every batch. On a CPU that mask
    throws away nearly all of a DPO step: a persona prompt has ~50 tokens, its answer (" Yes" or
    " No", then EOS) 2-3, and projecting every prompt token onto the vocabulary took two thirds
    of a stand-in's training (7.9 s for 16 steps instead of 2.5 s: bench_trl_compact.py).
    The kept positions' log-probs are the same rows of the same product either way, so the loss,
    the gradients and the run agree to float32 rounding (tests/test_training.py checks both
    ways). This swaps the compaction test trl's ``_fused_forward`` reads (its module's own name
    ``_use_triton``; the kernel's choice of Triton is a separate name and stays as it is).

    Used by: dpo_utils.training.
    """
    from trl.trainer import utils as trl_utils

    original = getattr(trl_utils, "_use_triton", None)
    if original is None:  # another trl: its own choice stands (correct, only slower on a CPU)
        return False
    if getattr(original, "compacts_on_cpu", False):
        return True

    def compact(device: torch.device) -> bool:
        return device.type == "cpu" or original(device)

    compact.compacts_on_cpu = True  # type: ignore[attr-defined]
    trl_utils._use_triton = compact
    return True


def _build_trainer(cfg, model, tokenizer, train_pairs, mode, ref_model, args, callbacks):
    from datasets import Dataset
    from transformers import PrinterCallback
    from trl import DPOTrainer

    score_completions_only()

    if hasattr(model, "get_base_model"):
        raise TypeError(
            "model is already a PeftModel; pass the plain (e.g. merged) model, see load_trained()."
        )
    rows = [{k: p[k] for k in ("prompt", "chosen", "rejected")} for p in train_pairs]
    extra = {"peft_config": models.lora_config(cfg)} if mode == "lora" else {}
    scale.prepare_policy(model, mode)
    if mode == "full" and ref_model is None:
        ref_model = scale.reference_copy(model, scale.reference_dtype(cfg))
    trainer = _trainer_class(DPOTrainer)(
        model=model,
        ref_model=ref_model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        callbacks=callbacks,
        **extra,
    )
    trainer.remove_callback(PrinterCallback)
    cap = scale.max_prompt_length(cfg)
    if cap is not None:
        trainer.train_dataset = trainer.train_dataset.map(
            _truncate, fn_kwargs=dict(max_length=cfg.max_length, cap=cap)
        )
    return trainer


#: datasets trl has prepared in this process (prompt, EOS and tokens added), by what decides them
_PREPARED: dict[str, object] = {}
_PREPARED_MAX = 64


def prepared_key(dataset, tokenizer, args) -> str | None:
    """What decides trl's preparation of a dataset of plain-text pairs: the rows, the tokenizer
    (its whole serialised definition and EOS), ``max_length`` and the truncation mode; None where
    it is not plain text with a fast tokenizer (then nothing is reused).

    Used by: dpo_utils.training.
    """
    from datasets import Dataset

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if (
        not isinstance(dataset, Dataset)
        or set(dataset.column_names) != {"prompt", "chosen", "rejected"}
        or backend is None
    ):
        return None
    columns = dataset.to_dict()
    if not all(isinstance(v, str) for values in columns.values() for v in values):
        return None  # conversational rows: trl applies a chat template, not reused
    return config_hash(
        dict(
            rows=columns,
            tokenizer=hashlib.sha256(backend.to_str().encode()).hexdigest(),
            eos=tokenizer.eos_token,
            max_length=args.max_length,
            truncation=args.truncation_mode,
        )
    )


@functools.cache
def _trainer_class(base):
    """``base`` (trl's DPOTrainer) that prepares a dataset once per process: a stand-in's runs
    (modes, seeds, chapters) train on the same pairs, and trl's add-EOS-and-tokenise pass over
    ~900 pairs cost about a tenth of a tiny run. The same rows, tokenizer and settings give the
    same prepared dataset, so a run reads exactly what trl would have made
    (tests/test_training.py compares the two)."""

    class ReusingDPOTrainer(base):
        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            key = prepared_key(dataset, processing_class, args)
            if key is None:
                return super()._prepare_dataset(dataset, processing_class, args, dataset_name)
            if key not in _PREPARED:
                if len(_PREPARED) >= _PREPARED_MAX:
                    _PREPARED.pop(next(iter(_PREPARED)))
                _PREPARED[key] = super()._prepare_dataset(
                    dataset, processing_class, args, dataset_name
                )
            return _PREPARED[key]

    return ReusingDPOTrainer


def _truncate(row: dict, max_length: int, cap: int) -> dict:
    """trl 0.7.3's truncation: prompt keeps its last ``cap`` tokens, then completions keep their
    start."""
    longest = max(len(row["chosen_ids"]), len(row["rejected_ids"]))
    prompt = scale.truncate_prompt(row["prompt_ids"], longest, max_length, cap)
    keep = max_length - len(prompt)
    return dict(
        prompt_ids=prompt,
        chosen_ids=row["chosen_ids"][:keep],
        rejected_ids=row["rejected_ids"][:keep],
    )


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

    Used by: dpo_utils.llm_evidence, dpo_utils.run_cache, dpo_utils.training.
    """
    check_mode(mode)
    _check_pairs(train_pairs, "train_pairs")
    scale.free_memory()  # what earlier runs in this kernel left once their references dropped
    checkpoint = None
    if resume_from is not None:
        checkpoint = Path(resume_from) / "checkpoint"
        if not checkpoint.is_dir():
            raise FileNotFoundError(
                f"resume_from={str(resume_from)!r} holds no checkpoint/; save it with "
                "save_trained(checkpoint=True)."
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
                max_prompt_length=scale.max_prompt_length(cfg),
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
        earlier = pd.read_csv(checkpoint.parent / "pairs.csv")  # resume_from's tables
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
        save_dtype=cfg.dtype,
    )


def cached_full_run(
    cfg: ExperimentConfig,
    pairs: list[dict],
    probe: list[dict],
    steps: int | None,
    device: str = "cpu",
    probe_every: int = 4,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One full-DPO run of the profile's model on ``pairs``, probed on ``probe``: trl's log and the
    per-pair probe table (``DPORun.log_history``, ``DPORun.pairs``), trained once and cached
    (``results.load_or_run``) by the profile, the pairs, the probe set, the steps and the package
    code.

    Used in: notebooks/12_faq_rewards_go_down.ipynb.
    """
    key = dict(
        cfg=cfg.to_dict(),
        pairs=config_hash({"pairs": pairs}),
        probe=config_hash({"probe": probe}),
        steps=steps,
        probe_every=probe_every,
        version=1,
    )
    trained: dict = {}

    def run():  # trains on the first table's miss only; the second table then reads it
        if "run" not in trained:
            model, tokenizer = models.load_model_and_tokenizer(cfg, device)
            trained["run"] = train_dpo(
                cfg,
                model,
                tokenizer,
                pairs,
                mode="full",
                max_steps=steps,
                probe_sets={"train": probe},
                probe_every=probe_every,
            )
        return trained["run"]

    log = load_or_run("full-run-log", key, lambda: run().log_history, profile=cfg.profile)
    table = load_or_run("full-run-pairs", key, lambda: run().pairs, profile=cfg.profile)
    return log, table
