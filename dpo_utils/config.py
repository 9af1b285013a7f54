"""Profiles and parameter validation: the one switch between CPU scale and paper scale.

A *profile* is a complete, named set of experiment parameters. ``cpu`` (the default) builds the
whole book on two CPU cores in minutes; ``llama2-7b`` and ``mistral-7b`` carry the hyperparameters
of the authors' released code (see ``book/setup.md`` and the paper notes), and need a GPU.

Every notebook resolves its parameters with :func:`get_config`, so a bad value is rejected with a
message that names the value and what is allowed, before any work starts.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any

from .data import AUTHORS_BEHAVIORS

__all__ = [
    "ConfigError",
    "ExperimentConfig",
    "PROFILES",
    "PAPER_PROFILES",
    "get_config",
    "profile_from_env",
    "require_device",
    "describe",
    "MODES",
    "check_mode",
    "network_environment",
]

PROFILE_ENV_VAR = "DPO_PROFILE"
#: any causal LM (hub id or local folder) in place of the profile's model, for every chapter
MODEL_ENV_VAR = "DPO_MODEL"
#: the two ways DPO trains a model (dpo_utils.training): every parameter, or a LoRA adapter
MODES = ("full", "lora")
#: the CPU profile's stand-ins (dpo_utils.models.TINY_MODELS); any other model_name is a hub id
#: ("owner/name") or an existing local folder
TINY_MODEL_NAMES = ("tiny-llama", "tiny-mistral")
HUB_PERSONA_SOURCE = "Anthropic/model-written-evals"
SEED_LIMIT = 2**32  # numpy's seeds are below 2**32
MIN_MAX_LENGTH = 16  # a persona prompt plus its answer is longer than a handful of tokens
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class ConfigError(ValueError):
    """A parameter value that no experiment accepts. The message says what is allowed.

    Used by: dpo_utils.config, dpo_utils.linear, dpo_utils.losses, dpo_utils.models,
    dpo_utils.training.
    """


@dataclass(frozen=True)
class ExperimentConfig:
    """All parameters of one profile. Fields are plain values so a config hashes and serialises.

    Used by: dpo_utils.book, dpo_utils.config, dpo_utils.llm_experiments, dpo_utils.models,
    dpo_utils.run_cache, dpo_utils.training.
    """

    profile: str
    description: str
    # --- model -------------------------------------------------------------------------------
    model_name: str  # hub id / local path, or "tiny-llama" / "tiny-mistral" built from config
    model_arch: str  # "llama" or "mistral"
    requires_gpu: bool
    dtype: str  # "float32" or "bfloat16"
    # --- shared --------------------------------------------------------------------------------
    seed: int = 1234
    n_seeds: int = 1
    beta: float = 0.01
    # --- last-layer (unembedding-only) DPO, experiment A -----------------------------------------
    last_layer_lr: float = 0.1
    last_layer_batch_size: int = 128
    last_layer_steps: int = 100
    # --- synthetic features (theory chapters) ----------------------------------------------------
    synthetic_dim: int = 64
    synthetic_n_per_class: int = 250
    # --- DPO through trl, experiments B-E -------------------------------------------------------
    dpo_beta: float = 0.01
    full_lr: float = 1e-6
    lora_lr: float = 1e-5
    lora_r: int = 8
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_target_modules: tuple[str, ...] = ("q_proj", "v_proj")
    dpo_batch_size: int = 128  # effective batch (per device x devices x accumulation)
    pair_batch_size: int = 128  # two behaviours trained together (ch. 09); the authors': 128
    per_device_batch_size: int = 32
    dpo_epochs: int = 1
    dpo_max_steps: int | None = None  # None: train for dpo_epochs
    max_length: int = 512
    behaviors: tuple[str | int, ...] = field(default_factory=tuple)
    split: str = "per-behavior"  # or "chained" as the authors did (data.split_behaviors)
    # --- persona data and CPU stand-in models (notebooks 06 onwards) ---------------------------
    # "persona": the 32 vendored real behaviours (data/anthropic-persona/); "corpus": the designed
    # corpus (data/persona/); else a local folder or "Anthropic/model-written-evals"
    persona_source: str = "persona"
    pretrain_steps: int = 300  # CPU profile: causal-LM pre-training steps of the tiny models
    pretrain_seed: int = 1234  # CPU profile: the tiny models' initialisation and pre-training

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict view (tuples become lists), suitable for JSON and for hashing."""
        return {
            k: (list(v) if isinstance(v, tuple) else v)
            for k, v in dataclasses.asdict(self).items()
        }

    def replace(self, **overrides: Any) -> ExperimentConfig:
        """A validated copy with some values changed; ``None`` values are ignored."""
        return _apply_overrides(self, overrides)


@dataclass(frozen=True)
class _PaperSettings:
    """The authors' hyperparameters: the ExperimentConfig fields the paper profiles share."""

    requires_gpu: bool = True
    dtype: str = "bfloat16"
    seed: int = 1234
    n_seeds: int = 1
    beta: float = 0.01
    last_layer_lr: float = 0.1
    last_layer_batch_size: int = 128
    last_layer_steps: int = 100
    synthetic_dim: int = 4096
    synthetic_n_per_class: int = 500
    dpo_beta: float = 0.01
    full_lr: float = 1e-6
    lora_lr: float = 1e-5
    lora_r: int = 8
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_target_modules: tuple[str, ...] = ("q_proj", "v_proj")
    dpo_batch_size: int = 128
    pair_batch_size: int = 128
    per_device_batch_size: int = 32
    dpo_epochs: int = 1
    dpo_max_steps: int | None = None
    max_length: int = 512
    split: str = "chained"
    # the five behaviours of the authors' single-behaviour plots (their numbering)
    behaviors: tuple[str | int, ...] = (108, 84, 88, 54, 100)
    persona_source: str = "Anthropic/model-written-evals"


_PAPER_COMMON = _PaperSettings()

PROFILES: dict[str, ExperimentConfig] = {
    "cpu": ExperimentConfig(
        profile="cpu",
        description=(
            "CPU profile: tiny Llama/Mistral models built from config and pre-trained briefly on "
            "real persona text (never on an evaluated answer or test statement); synthetic "
            "features of width 64. Not Llama-2-7B."
        ),
        model_name="tiny-llama",
        model_arch="llama",
        requires_gpu=False,
        dtype="float32",
        seed=1234,
        n_seeds=3,
        beta=0.01,
        # tiny-model features are ~60x narrower than Llama-2's, so SGD needs a larger step to move
        # the loss visibly (speed scales with lr * beta^2 * distinguishability^2)
        last_layer_lr=1.0,
        last_layer_batch_size=128,
        last_layer_steps=100,
        synthetic_dim=64,
        synthetic_n_per_class=250,
        # AdamW on a 0.3M-parameter model: the paper's lr moves the loss by ~1e-4 only
        dpo_beta=0.1,
        full_lr=1e-4,
        lora_lr=3e-3,
        lora_r=8,
        lora_alpha=32,
        lora_dropout=0.05,
        lora_target_modules=("q_proj", "v_proj"),
        dpo_batch_size=32,
        # twice the solo batch, so each of the two behaviours sees as many pairs per step as alone
        pair_batch_size=64,
        per_device_batch_size=32,
        dpo_epochs=1,
        dpo_max_steps=16,
        # the longest real persona prompt plus its answer is 95 stand-in tokens (positions: 128)
        max_length=128,
        # the authors' eight, featured by name (dpo_utils.data.AUTHORS_BEHAVIORS)
        behaviors=AUTHORS_BEHAVIORS,
        persona_source="persona",
    ),
    "llama2-7b": ExperimentConfig(
        profile="llama2-7b",
        description="Paper scale: Llama-2-7B (base), the authors' hyperparameters.",
        model_name="meta-llama/Llama-2-7b-hf",
        model_arch="llama",
        **dataclasses.asdict(_PAPER_COMMON),
    ),
    "mistral-7b": ExperimentConfig(
        profile="mistral-7b",
        description="Paper scale: Mistral-7B-v0.1 (base), the authors' hyperparameters.",
        model_name="mistralai/Mistral-7B-v0.1",
        model_arch="mistral",
        **dataclasses.asdict(_PAPER_COMMON),
    ),
}
PROFILES["colab-t4"] = ExperimentConfig(
    profile="colab-t4",
    description="Free Colab T4 (16 GB, fp16): Qwen2.5-0.5B, the authors' beta and rates, short "
    "runs on the vendored real behaviours. Not the paper's models.",
    model_name="Qwen/Qwen2.5-0.5B",
    model_arch="qwen2",
    **dataclasses.asdict(  # a chapter in minutes; the vendored behaviours need no download
        dataclasses.replace(
            _PAPER_COMMON,
            dtype="float16",
            dpo_batch_size=32,
            pair_batch_size=64,
            per_device_batch_size=8,
            dpo_max_steps=8,
            max_length=256,
            persona_source="persona",
        )
    ),
)
PAPER_PROFILES = ("llama2-7b", "mistral-7b")  # the authors' models and settings

_POSITIVE_FLOATS = ("beta", "dpo_beta", "last_layer_lr", "full_lr", "lora_lr")
_POSITIVE_INTS = tuple(
    "n_seeds last_layer_batch_size last_layer_steps synthetic_dim synthetic_n_per_class lora_r "
    "lora_alpha dpo_batch_size pair_batch_size per_device_batch_size dpo_epochs "
    "pretrain_steps".split()
)
SPLITS = ("per-behavior", "chained")
_ARCHS = ("llama", "mistral", "qwen2")  # tiny stand-ins: llama, mistral; colab-t4: qwen2
_CHOICES = {"model_arch": _ARCHS, "dtype": ("float32", "bfloat16", "float16"), "split": SPLITS}


def _check_value(name: str, value: Any) -> Any:
    """Validate one field; return it normalised (lists become tuples)."""
    if name in _POSITIVE_FLOATS:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{name}={value!r} is not a number; {name} must be a float > 0.")
        if not math.isfinite(value) or value <= 0:
            raise ConfigError(
                f"{name}={value!r} is not allowed; {name} must be a finite float > 0."
            )
        return float(value)
    if name in _POSITIVE_INTS or name == "dpo_max_steps":
        if name == "dpo_max_steps" and value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name}={value!r} is not allowed; {name} must be an integer >= 1.")
        return value
    if name in ("seed", "pretrain_seed"):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < SEED_LIMIT:
            raise ConfigError(
                f"{name}={value!r} is not allowed; it must be an integer in [0, 2**32)."
            )
        return value
    if name == "max_length":
        if isinstance(value, bool) or not isinstance(value, int) or value < MIN_MAX_LENGTH:
            raise ConfigError(
                f"max_length={value!r} is not allowed; it must be an integer >= {MIN_MAX_LENGTH} "
                "(tokens of prompt plus answer)."
            )
        return value
    if name == "lora_dropout":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
            raise ConfigError(f"lora_dropout={value!r} is not allowed; it must be in [0, 1).")
        return float(value)
    if name in _CHOICES:
        if value not in _CHOICES[name]:
            raise ConfigError(
                f"{name}={value!r} is not allowed; choose one of {list(_CHOICES[name])}."
            )
        return value
    if name == "behaviors":
        return check_behavior_list(name, value)
    if name == "lora_target_modules":
        items = (value,) if isinstance(value, str) else value
        if (
            not isinstance(items, (list, tuple))
            or not items
            or not all(isinstance(m, str) and m for m in items)
        ):
            raise ConfigError(
                f"lora_target_modules={value!r} is not allowed; give a non-empty list of module "
                "names, e.g. ['q_proj', 'v_proj']."
            )
        return tuple(items)
    if name == "requires_gpu":
        if not isinstance(value, bool):
            raise ConfigError(f"requires_gpu={value!r} is not allowed; choose True or False.")
        return value
    if name in ("model_name", "description", "persona_source"):
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"{name}={value!r} is not allowed; it must be a non-empty string.")
        if name == "model_name":
            _check_model_name(value)
        if name == "persona_source":
            _check_persona_source(value)
        return value
    raise ConfigError(f"unknown parameter {name!r}")  # pragma: no cover - guarded by caller


def check_behavior_list(name: str, value: Any) -> tuple:
    """A behaviour selection as a tuple of names (str) and numbers (int >= 0); else ConfigError.

    Used by: dpo_utils.chapter_parameters, dpo_utils.config.
    """
    items = (value,) if isinstance(value, (str, int)) and not isinstance(value, bool) else value
    if not isinstance(items, (list, tuple)) or not all(
        (isinstance(b, str) and b.strip())
        or (isinstance(b, int) and not isinstance(b, bool) and b >= 0)
        for b in items
    ):
        raise ConfigError(
            f"{name}={value!r} is not allowed; give behaviour names (str) and/or the authors' "
            "numbers (int >= 0), e.g. [108, 84] or ['agreeableness']."
        )
    return tuple(items)


def _check_model_name(value: str) -> None:
    if value in TINY_MODEL_NAMES or _HUB_ID.match(value) or os.path.isdir(value):
        return
    raise ConfigError(
        f"model_name={value!r} is not allowed; choose one of {list(TINY_MODEL_NAMES)}, a hub id "
        "such as 'meta-llama/Llama-2-7b-hf', or an existing local model folder."
    )


def _check_persona_source(value: str) -> None:
    if value in ("persona", "corpus", HUB_PERSONA_SOURCE) or os.path.isdir(value):
        return
    raise ConfigError(
        f"persona_source={value!r} is not allowed; choose 'persona' (the 32 vendored real "
        f"behaviours), 'corpus' (the project's designed corpus), {HUB_PERSONA_SOURCE!r}, or an "
        "existing folder of persona .jsonl / .jsonl.gz files."
    )


def check_mode(mode: Any) -> str:
    """``mode`` if it is one of :data:`MODES`; else ConfigError naming it and the allowed ones.

    Used by: dpo_utils.run_cache, dpo_utils.train, dpo_utils.training.
    """
    if not isinstance(mode, str) or mode not in MODES:
        raise ConfigError(f"mode={mode!r} is not allowed; choose one of {list(MODES)}.")
    return mode


def _stand_in_model(cfg: ExperimentConfig) -> bool:
    """The CPU profile, or a tiny stand-in at any profile: on the CPU, and no hub needed."""
    return not cfg.requires_gpu or cfg.model_name in TINY_MODEL_NAMES


def network_environment(cfg: ExperimentConfig) -> None:
    """Telemetry off for every profile; the CPU profile and any tiny stand-in also offline
    (``HF_HUB_OFFLINE=1``...).

    ``setdefault``, so a caller's own setting wins. Call it before transformers is imported.

    Used by: dpo_utils.book, dpo_utils.train.
    """
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    if _stand_in_model(cfg):
        for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
            os.environ.setdefault(var, "1")


def _apply_overrides(base: ExperimentConfig, overrides: dict[str, Any]) -> ExperimentConfig:
    allowed = [f.name for f in dataclasses.fields(ExperimentConfig) if f.name != "profile"]
    unknown = sorted(set(overrides) - set(allowed))
    if unknown:
        raise ConfigError(
            f"unknown parameter(s) {unknown}; allowed parameters are: "
            f"{', '.join(sorted(allowed))}."
        )
    changes = {k: _check_value(k, v) for k, v in overrides.items() if v is not None}
    cfg = dataclasses.replace(base, **changes)
    if cfg.per_device_batch_size > cfg.dpo_batch_size:
        raise ConfigError(
            f"per_device_batch_size={cfg.per_device_batch_size} exceeds dpo_batch_size="
            f"{cfg.dpo_batch_size}; it must be at most the effective batch size."
        )
    return cfg


def get_config(profile: str | None = None, **overrides: Any) -> ExperimentConfig:
    """Resolve a profile name plus optional overrides into a validated :class:`ExperimentConfig`.

    ``profile=None`` reads ``$DPO_PROFILE`` (default ``"cpu"``). Overrides whose value is ``None``
    keep the profile's value, so a notebook's ``parameters`` cell can list every knob as ``None``.
    ``$DPO_MODEL`` (a hub id or local folder) replaces the profile's model unless ``model_name``
    is given; whether " Yes" and " No" are single tokens for it is checked when its tokenizer is
    loaded (``models.load_model_and_tokenizer``), before its weights. ``$DPO_TINY_STAND_IN=1``:
    tiny stand-ins at a paper profile (:mod:`dpo_utils.stand_in`).

    Used in: every chapter.
    """
    name = profile_from_env() if profile is None else profile
    if not isinstance(name, str) or name not in PROFILES:
        raise ConfigError(f"unknown profile {name!r}; choose one of {list(PROFILES)}.")
    if overrides.get("model_name") is None and os.environ.get(MODEL_ENV_VAR):
        overrides = {**overrides, "model_name": os.environ[MODEL_ENV_VAR]}
    from . import stand_in  # imports this module: the switch's rules live there

    return stand_in.substitute(_apply_overrides(PROFILES[name], overrides))


def profile_from_env() -> str:
    """The profile named by ``$DPO_PROFILE``, or ``"cpu"``.

    Used by: dpo_utils.config.
    """
    return os.environ.get(PROFILE_ENV_VAR, "cpu")


def require_device(cfg: ExperimentConfig) -> str:
    """Return the torch device a profile runs on; stop at once if a GPU profile has no GPU.

    Used by: dpo_utils.book.
    """
    import torch

    if _stand_in_model(cfg):
        return "cpu"
    if torch.cuda.is_available():
        return "cuda"
    raise ConfigError(
        f"profile {cfg.profile!r} needs a CUDA GPU and none is visible. Run it on a GPU box or "
        "Colab (see book/setup.md), or use the CPU profile: DPO_PROFILE=cpu (profiles: "
        f"{list(PROFILES)})."
    )


def describe(cfg: ExperimentConfig, **extra: Any) -> str:
    """One line of provenance for the top of an executed page: profile, model and key settings.

    Used by: dpo_utils.book.
    """
    parts = [f"profile **{cfg.profile}**", f"model **{cfg.model_name}**"]
    parts += [f"{k.replace('_', ' ')} **{v}**" for k, v in extra.items()]
    return "Outputs on this page were produced with " + ", ".join(parts) + f". {cfg.description}"
