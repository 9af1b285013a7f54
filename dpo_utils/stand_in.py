"""The tiny stand-in switch: a paper profile's code paths, run in seconds on a CPU.

``DPO_TINY_STAND_IN=1`` makes :func:`dpo_utils.config.get_config` return a paper profile
(``llama2-7b``, ``mistral-7b``) with only its *size* replaced, so that a chapter executes every
paper-profile branch (its dtype setting, batch sizes, chained split, behaviour numbers, the
authors' prompt cap, one pre-training seed, the profile's name in the results folders) on a
machine without a GPU, where the model itself runs in fp32 (:func:`dpo_utils.models.load_dtype`
on any CPU). Its rules, all here:

* the model becomes the tiny stand-in of the same architecture (``tiny-llama`` for Llama-2,
  ``tiny-mistral`` for Mistral); asking for another model as well (``$DPO_MODEL``, ``model_name``)
  is an error, so the model is replaced through the one ``model_name`` field that ``$DPO_MODEL``
  sets, never behind its back;
* the hub's persona data becomes the vendored real behaviours (``"persona"``; no network);
* three size knobs are capped at :data:`CAPS` (DPO steps, the stand-in's pre-training steps,
  ``max_length`` at the stand-in's positions);
* :func:`dpo_utils.config.require_device` returns ``"cpu"`` and the chapter stays offline;
* the profile's description says that the run is a stand-in check, so no page or figure made this
  way can pass for a paper-scale result; and ``$DPO_RESULTS_DIR`` must name a scratch folder (not
  the project's ``results/``), so that its runs and verdicts never land in ``results/<profile>/``,
  where the paper-scale chapters (chapter 13's claims table among them) would read them.

The CPU profile already runs the stand-ins: the switch leaves it unchanged. A profile whose
architecture has no stand-in (``colab-t4``'s Qwen2) is refused with a clear message. Nothing here
is a result: ``make test-paper`` uses it to prove that each chapter *runs* at a paper profile.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .config import HUB_PERSONA_SOURCE, PROFILES, ConfigError, ExperimentConfig
from .results import project_root

__all__ = ["STAND_IN_ENV_VAR", "CAPS", "STAND_INS", "active", "substitute"]

STAND_IN_ENV_VAR = "DPO_TINY_STAND_IN"
RESULTS_ENV_VAR = "DPO_RESULTS_DIR"  # dpo_utils.results.results_dir
#: architecture -> its tiny stand-in (dpo_utils.models.TINY_MODELS)
STAND_INS = {"llama": "tiny-llama", "mistral": "tiny-mistral"}
#: upper bounds on the size knobs under the switch (a smaller value given is kept)
CAPS: dict[str, int] = {
    "dpo_max_steps": 2,  # optimizer steps per DPO run (None, one epoch, becomes 2)
    "pretrain_steps": 20,  # the stand-in's causal-LM pre-training
    "max_length": 128,  # the stand-in's max_position_embeddings (models.TinyShape)
}
_ON, _OFF = ("1",), ("", "0")


def active() -> bool:
    """Whether ``$DPO_TINY_STAND_IN`` is on ("1"); off when unset, "" or "0"; else ConfigError.

    Used by: dpo_utils.stand_in.
    """
    value = os.environ.get(STAND_IN_ENV_VAR, "")
    if value not in _ON + _OFF:
        raise ConfigError(
            f"{STAND_IN_ENV_VAR}={value!r} is not allowed; set it to '1' (tiny stand-ins at a "
            "paper profile) or '0' / unset it."
        )
    return value in _ON


def _capped(name: str, value: Any) -> Any:
    cap = CAPS[name]
    return cap if value is None else min(value, cap)


def substitute(cfg: ExperimentConfig) -> ExperimentConfig:
    """``cfg`` with the switch's rules applied when :func:`active` (see the module text); else
    ``cfg`` itself. Fields keep the profile's values except the model, a hub persona source and
    the capped sizes.

    Used by: dpo_utils.config.
    """
    if not active() or not cfg.requires_gpu:
        return cfg
    stand_in = STAND_INS.get(cfg.model_arch)
    if stand_in is None:
        covered = [p for p, c in PROFILES.items() if c.requires_gpu and c.model_arch in STAND_INS]
        raise ConfigError(
            f"{STAND_IN_ENV_VAR}=1: profile {cfg.profile!r} is a {cfg.model_arch} model, which "
            f"has no tiny stand-in; the switch covers the profiles {covered}."
        )
    scratch = os.environ.get(RESULTS_ENV_VAR)
    if not scratch or Path(scratch).resolve() == (project_root() / "results").resolve():
        raise ConfigError(
            f"{STAND_IN_ENV_VAR}=1 needs {RESULTS_ENV_VAR} set to a scratch folder other than the "
            f"project's results/ (it is {scratch!r}): a stand-in check must not write into "
            f"results/{cfg.profile}/, which the paper-scale chapters read."
        )
    if cfg.model_name not in (PROFILES[cfg.profile].model_name, stand_in):
        raise ConfigError(
            f"{STAND_IN_ENV_VAR}=1 replaces the model with {stand_in!r}, but "
            f"model_name={cfg.model_name!r} was asked for ($DPO_MODEL or a parameter); unset "
            f"one of the two."
        )
    source = "persona" if cfg.persona_source == HUB_PERSONA_SOURCE else cfg.persona_source
    steps = _capped("dpo_max_steps", cfg.dpo_max_steps)
    return cfg.replace(
        model_name=stand_in,
        persona_source=source,
        dpo_max_steps=steps,
        pretrain_steps=_capped("pretrain_steps", cfg.pretrain_steps),
        max_length=_capped("max_length", cfg.max_length),
        description=(
            f"TINY STAND-IN CHECK ({STAND_IN_ENV_VAR}=1), not paper scale: the {cfg.profile} "
            f"profile's settings and code paths with {stand_in} in place of "
            f"{PROFILES[cfg.profile].model_name}, on the CPU, {steps} DPO steps per run, "
            f"persona data {source!r}. The numbers only show that the chapter runs."
        ),
    )
