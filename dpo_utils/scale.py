"""Paper scale on real hardware: dtypes and memory of full DPO, freeing it, and the device layout.

Full DPO of a 7B policy on one 141 GB GPU, as :func:`dpo_utils.training.train_dpo` prepares it:

- the **policy** keeps fp32 master weights (:func:`prepare_policy`): a pure-bf16 AdamW step of
  lr 1e-6 rounds to nothing; the forward and backward run under bf16 autocast (``bf16=True``);
- the **reference** is a frozen copy in the profile's dtype (bf16 for the paper profiles), built
  on the policy's device (:func:`reference_copy`): no fp32 copy, no detour through the CPU;
- **AdamW** is torch's fused kernel on CUDA (``adamw_torch_fused``), whose update needs no
  weight-sized temporary; its moments follow the parameters, fp32.

:func:`free_memory` releases what a finished run held (trl's patched ``forward`` makes a reference
cycle that only the garbage collector breaks). :func:`check_launch` stops a run that several
visible GPUs would send into ``nn.DataParallel``, which trl refuses; :func:`batch_plans` lists the
per-device batch sizes that reach an effective batch on a given number of processes.
"""

from __future__ import annotations

import copy
import gc
import os

import torch

from .config import ConfigError, ExperimentConfig

__all__ = [
    "AUTHORS_MAX_PROMPT_LENGTH",
    "reference_dtype",
    "prepare_policy",
    "reference_copy",
    "optimizer_name",
    "free_memory",
    "world_size",
    "check_launch",
    "batch_plans",
    "max_prompt_length",
    "truncate_prompt",
    "dtype_of",
    "theory_profile",
    "is_sharded",
    "forward_logps",
    "PAPER_MODEL_PARAMETERS",
    "full_dpo_state_bytes",
    "full_dpo_state_gib",
]

#: trl 0.7.3's default max_prompt_length, which the authors' runs used (truncation keeps the end)
AUTHORS_MAX_PROMPT_LENGTH = 128
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
#: parameter counts of the paper's models (LlamaConfig / MistralConfig at their published shapes)
PAPER_MODEL_PARAMETERS = {"Llama-2-7B": 6_738_415_616, "Mistral-7B": 7_241_732_096}


def reference_dtype(cfg: ExperimentConfig) -> torch.dtype:
    """The dtype the frozen reference (and a saved run) is kept in: the profile's ``dtype``.

    Used by: dpo_utils.training.
    """
    return _DTYPES[cfg.dtype]


def prepare_policy(model, mode: str):
    """Full fine-tuning: cast a lower-precision policy to fp32 master weights, in place; LoRA: as
    is.

    A bf16 weight has 8 significant bits: an AdamW step of lr 1e-6 (relative change ~1e-6 for a
    weight of size ~1) is below half a unit in the last place, so it rounds away.

    Used by: dpo_utils.training.
    """
    if mode == "full" and any(
        p.is_floating_point() and p.dtype != torch.float32 for p in model.parameters()
    ):
        model.float()
    return model


def reference_copy(model, dtype: torch.dtype):
    """A frozen copy of ``model`` in ``dtype``, built on the model's own device (eval mode).

    The copy is created from the config on the device and the weights are copied (and cast) from
    the policy's state dict tensor by tensor, so no second fp32 model ever exists, on the GPU or
    the CPU.

    Used by: dpo_utils.training.
    """
    param = next(model.parameters())
    with torch.device(param.device):
        ref = type(model)._from_config(copy.deepcopy(model.config), dtype=dtype)
    ref.load_state_dict(model.state_dict(), strict=True)
    return ref.eval().requires_grad_(False)


def optimizer_name(on_gpu: bool) -> str:
    """trl/transformers ``optim``: fused AdamW on CUDA (no weight-sized temporary), plain on CPU.

    Both are AdamW with the same hyperparameters (the authors' ``adamw_torch``); only the kernel
    differs.

    Used by: dpo_utils.training.
    """
    return "adamw_torch_fused" if on_gpu else "adamw_torch"


def free_memory() -> None:
    """Collect garbage (breaking trl's reference cycles) and return cached CUDA blocks to the
    driver.

    Call it after dropping the last reference to a run (``del run`` or ``run.release()``);
    ``train_dpo`` calls it before it starts, so a kernel that trains run after run keeps one run's
    models in memory, not all of them.

    Used by: dpo_utils.saved_runs, dpo_utils.training.
    """
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def world_size() -> int:
    """Number of training processes: the initialised process group's, else ``$WORLD_SIZE``, else

    Used by: dpo_utils.scale, dpo_utils.training.
    1."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


def check_launch(use_cpu: bool) -> None:
    """Stop early when several GPUs are visible to a process that was not started distributed.

    transformers would wrap the model in ``nn.DataParallel``, which trl's DPOTrainer refuses after
    the data and models are loaded. The message says the two ways out.

    Used by: dpo_utils.training.
    """
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if use_cpu or n <= 1 or world_size() > 1 or "LOCAL_RANK" in os.environ:
        return
    raise ConfigError(
        f"{n} GPUs are visible but this process was not started distributed; trl's DPOTrainer "
        "does not support nn.DataParallel. Either use one GPU (CUDA_VISIBLE_DEVICES=0, e.g. for a "
        "notebook), or launch every GPU: accelerate launch --config_file "
        "configs/accelerate/ddp.yaml "
        f"--num_processes {n} -m dpo_utils.train ... (fsdp.yaml for full fine-tuning)."
    )


def batch_plans(effective: int = 128, processes=(1, 2, 4, 8), max_per_device: int = 64):
    """Every (processes, per_device_batch_size, gradient_accumulation) whose product is
    ``effective``.

    E.g. 128 on 8 processes: per-device 16 with accumulation 1, 8 with 2, ... (32 does not divide).

    Used by: dpo_utils.training.
    """
    plans = []
    for n in processes:
        for per_device in range(1, max_per_device + 1):
            if effective % (per_device * n) == 0:
                plans.append((n, per_device, effective // (per_device * n)))
    return plans


def max_prompt_length(cfg: ExperimentConfig) -> int | None:
    """The authors' prompt cap on the paper profiles (128 tokens, keeping the end), none on CPU.

    Used by: dpo_utils.training.
    """
    return AUTHORS_MAX_PROMPT_LENGTH if cfg.requires_gpu else None


def truncate_prompt(
    prompt_ids: list[int], longest_completion: int, max_length: int | None, cap: int | None
) -> list[int]:
    """trl 0.7.3's rule: only when prompt + longest completion exceeds ``max_length``, keep the
    prompt's last ``cap`` tokens (the completion is then cut to fit by the ``keep_start``
    truncation).

    Used by: dpo_utils.probes, dpo_utils.training.
    """
    if cap is None or max_length is None or len(prompt_ids) + longest_completion <= max_length:
        return prompt_ids
    return prompt_ids[-cap:]


def dtype_of(name: str | torch.dtype) -> torch.dtype:
    """``"bfloat16"`` / ``"float32"`` / ``"float16"`` (or a torch dtype) as a torch dtype.

    Used by: dpo_utils.saved_runs.
    """
    if isinstance(name, torch.dtype):
        return name
    if name not in _DTYPES:
        raise ValueError(f"dtype={name!r} is not allowed; choose one of {list(_DTYPES)}.")
    return _DTYPES[name]


def theory_profile(profile: str) -> str:
    """The profile whose settings the theory chapters (01-05) run at: ``"cpu"``, on every profile.

    Those chapters use synthetic features and no language model, so a paper profile changes nothing
    they show; at its width 4096 chapter 04 alone needs more than 24 GB of host RAM. ``profile`` is
    still checked, so a typo stops the chapter with the list of profiles.

    Used in: notebooks/01_dpo_single_token.ipynb, notebooks/02_update_rate.ipynb,
    notebooks/03_training_accuracy.ipynb, notebooks/04_prioritisation.ipynb,
    notebooks/05_misalignment.ipynb.
    """
    from .config import PROFILES

    if profile not in PROFILES:
        raise ConfigError(f"unknown profile {profile!r}; choose one of {list(PROFILES)}.")
    return "cpu"


def is_sharded(model) -> bool:
    """Whether ``model`` is wrapped by FSDP (1 or 2): its weights exist whole only inside forward.

    Used by: dpo_utils.probes.
    """
    from torch.distributed.fsdp import FullyShardedDataParallel

    return isinstance(model, FullyShardedDataParallel) or any(
        type(m).__name__.startswith("FSDP") for m in model.modules()
    )


def forward_logps(model, prompts, completions, batch_size: int, device) -> torch.Tensor:
    """Summed completion log-probs (len(prompts), K) through the wrapped model's forward, which
    gathers FSDP's shards: one right-padded prompt + completion per row, no cache or shared prefix.

    Used by: dpo_utils.probes.
    """
    import torch.nn.functional as F

    k = len(completions[0])
    rows = [(p, c) for p, row in zip(prompts, completions, strict=True) for c in row]
    out = []
    for s in range(0, len(rows), batch_size):
        chunk = rows[s : s + batch_size]
        width = max(len(p) + len(c) for p, c in chunk)
        ids = torch.zeros(len(chunk), width, dtype=torch.long)
        mask = torch.zeros_like(ids)
        keep = torch.zeros(len(chunk), width - 1, dtype=torch.bool)
        for i, (p, c) in enumerate(chunk):
            ids[i, : len(p) + len(c)] = torch.tensor(p + c)
            mask[i, : len(p) + len(c)] = 1
            keep[i, len(p) - 1 : len(p) - 1 + len(c)] = True  # positions predicting a completion
        logits = model(
            input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False
        ).logits
        logp = F.log_softmax(logits[:, :-1].float(), dim=-1)
        token = logp.gather(-1, ids[:, 1:, None].to(device))[..., 0]
        out.append((token * keep.to(device)).sum(-1).cpu())
    return torch.cat(out).view(-1, k)


def full_dpo_state_bytes(cfg: ExperimentConfig) -> dict[str, int]:
    """Bytes per parameter of each state that full DPO keeps, as this code keeps it.

    The policy, its gradients and AdamW's two moments are fp32 (:func:`prepare_policy`); the
    frozen reference is in :func:`reference_dtype`. book/setup.md's memory table is this, times
    the parameter count (a test checks the page against :func:`full_dpo_state_gib`).

    Used by: dpo_utils.scale.
    """
    fp32 = torch.finfo(torch.float32).bits // 8
    return {
        "policy weights": fp32,
        "gradients": fp32,
        "AdamW moments": 2 * fp32,
        "reference model": torch.finfo(reference_dtype(cfg)).bits // 8,
    }


def full_dpo_state_gib(cfg: ExperimentConfig, n_parameters: int) -> dict[str, float]:
    """GiB (2**30 bytes) of each full-DPO state and their total, for ``n_parameters`` weights.

    Used by: tests (book/setup.md's table).
    """
    sizes = {k: b * n_parameters / 2**30 for k, b in full_dpo_state_bytes(cfg).items()}
    return {**sizes, "total": sum(sizes.values())}
