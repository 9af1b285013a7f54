"""Every chapter's papermill parameters, checked in the cell right after its ``parameters`` cell.

Each chapter's spec names its parameters, what each accepts and what ``None`` means. A chapter
calls :func:`check_parameters` (through ``book.check_parameters("09", globals())``) before any
expensive work: a bad value (a 0 where a count >= 1 is needed, an unknown behaviour or pair member,
a mode that does not exist, UMAP without umap-learn) and an unknown papermill parameter (``-p foo
1``) stop the chapter at once with a message naming the value and what is allowed. Values that go
into the profile are checked with the same rules as :func:`dpo_utils.config.get_config`.
"""

from __future__ import annotations

import ast
import importlib.util
from collections.abc import Callable, Mapping
from typing import Any

from . import config, data

__all__ = ["CHAPTER_PARAMETERS", "check_parameters", "injected_parameter_names"]

Check = Callable[[str, Any, dict], Any]


def _config_field(field: str) -> Check:
    """The chapter parameter goes into ``field`` of the profile: get_config's rule for it."""

    def check(name, value, ctx):
        try:
            return config._check_value(field, value)
        except config.ConfigError as error:
            raise config.ConfigError(f"{name} (the profile's {field}): {error}") from None

    return check


def _int_at_least(low: int) -> Check:
    def check(name, value, ctx):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise config.ConfigError(
                f"{name}={value!r} is not allowed; {name} must be an integer >= {low} or None."
            )
        return value

    return check


def _choice(*allowed: str) -> Check:
    def check(name, value, ctx):
        if not isinstance(value, str) or value not in allowed:
            raise config.ConfigError(
                f"{name}={value!r} is not allowed; choose one of {list(allowed)} or None."
            )
        return value

    return check


def _source(ctx) -> str:
    return ctx.get("persona_source") or config.get_config(ctx["profile"]).persona_source


def _behaviors(name, value, ctx):
    items = config.check_behavior_list(name, value)
    available = data.available_behaviors(_source(ctx))
    try:
        return data.resolve_behaviors(list(items), available)
    except data.PersonaDataError as error:
        raise config.ConfigError(f"{name}={value!r}: {error}") from None


def _one_behavior(name, value, ctx):
    if isinstance(value, (list, tuple)):
        raise config.ConfigError(
            f"{name}={value!r} is not allowed; give one behaviour's name (str) or number (int)."
        )
    return _behaviors(name, [value], ctx)[0]


def _pair(name, value, ctx):
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise config.ConfigError(
            f"{name}={value!r} is not allowed; give two different behaviours, e.g. [123, 45]."
        )
    names = _behaviors(name, value, ctx)
    if names[0] == names[1]:
        raise config.ConfigError(
            f"{name}={value!r} names {names[0]!r} twice; give two different behaviours."
        )
    return names


def _projection(name, value, ctx):
    _choice("pca", "umap")(name, value, ctx)
    if value == "umap" and importlib.util.find_spec("umap") is None:
        raise config.ConfigError(
            f"{name}='umap' needs umap-learn, which is not installed; choose 'pca', or install "
            "the [gpu] extra (pip install umap-learn)."
        )
    return value


def _stand_ins(name, value, ctx):
    allowed = list(config.TINY_MODEL_NAMES)
    if (
        not isinstance(value, (list, tuple))
        or not value
        or any(not isinstance(v, str) or v not in allowed for v in value)
        or len(set(value)) != len(value)
    ):
        raise config.ConfigError(
            f"{name}={value!r} is not allowed; give a list of different stand-ins from {allowed} "
            "or None."
        )
    return list(value)


def _vocab_size(name, value, ctx):
    if isinstance(value, bool) or not isinstance(value, int) or not 2 <= value <= 200_000:
        raise config.ConfigError(
            f"{name}={value!r} is not allowed; it must be an integer from 2 (the two answer "
            "tokens) to 200000."
        )
    return value


_LAST_LAYER = {
    "beta": _config_field("beta"),
    "learning_rate": _config_field("last_layer_lr"),
}
_SWEEP = {
    **_LAST_LAYER,
    "steps": _config_field("last_layer_steps"),
    "n_seeds": _config_field("n_seeds"),
}
_PERSONA = {
    "persona_source": _config_field("persona_source"),
    "behaviors": _behaviors,
    "pretrain_steps": _config_field("pretrain_steps"),
}

#: the seeds of chapters 08-11 (dpo_utils.verdicts.chapter_seeds) and their data source
_SEEDS = {
    "n_pretrain_seeds": _int_at_least(1),
    "n_dpo_seeds": _int_at_least(1),
    "persona_source": _config_field("persona_source"),
}

#: chapters 06-12 take any causal LM in place of the profile's model (get_config's model_name)
_MODEL = {"model_name": _config_field("model_name")}

#: chapter -> {parameter: check}; ``profile`` is every chapter's first parameter
CHAPTER_PARAMETERS: dict[str, dict[str, Check]] = {
    "01": {**_LAST_LAYER, "dim": _config_field("synthetic_dim"), "vocab_size": _vocab_size},
    "02": dict(_SWEEP),
    "03": dict(_SWEEP),
    "04": {
        **_LAST_LAYER,
        "steps": _config_field("last_layer_steps"),
        "n_pairs": _int_at_least(1),
    },
    "05": {
        **_LAST_LAYER,
        "model_beta": _config_field("dpo_beta"),
        "n_model_seeds": _int_at_least(2),
    },
    "06": {
        **_MODEL,
        **_PERSONA,
        "n_pretrain_seeds": _int_at_least(1),
        "stand_ins": _stand_ins,
    },
    "07": {
        **_MODEL,
        "learning_rate": _config_field("last_layer_lr"),
        "comparison_lr": _config_field("last_layer_lr"),
        "beta": _config_field("beta"),
        "steps": _config_field("last_layer_steps"),
        "batch_size": _config_field("last_layer_batch_size"),
        "n_seeds": _config_field("n_seeds"),
        "n_pretrain_seeds": _int_at_least(1),
        **_PERSONA,
    },
    "08": {
        **_MODEL,
        "behaviors": _behaviors,
        "steps": _config_field("dpo_max_steps"),
        "beta": _config_field("dpo_beta"),
        "full_lr": _config_field("full_lr"),
        "lora_lr": _config_field("lora_lr"),
        **_SEEDS,
    },
    "09": {
        **_MODEL,
        "pair": _pair,
        "mode": _choice(*config.MODES),
        "pair_batch_size": _int_at_least(1),
        **_SEEDS,
    },
    "10": {
        **_MODEL,
        "behaviors": _behaviors,
        "n_behaviors": _int_at_least(1),
        "flip_steps": _int_at_least(1),
        "flip_batch_size": _int_at_least(1),
        "n_pretrain_seeds": _int_at_least(1),
        "n_dpo_seeds": _int_at_least(1),
        "hh_steps": _int_at_least(1),
        "persona_source": _config_field("persona_source"),
    },
    "11": {
        **_MODEL,
        "projection_mode": _choice(*config.MODES),
        "projection": _projection,
        **_SEEDS,
    },
    "12": {
        **_MODEL,
        "behavior": _one_behavior,
        "steps": _int_at_least(1),
        "learning_rate": _config_field("full_lr"),
    },
    "13": {},
}


def injected_parameter_names() -> list[str] | None:
    """Names papermill injected (its ``# Parameters`` cell, run just before this one); None if

    Used by: dpo_utils.chapter_parameters.
    this is not an IPython kernel. A notebook run by hand injects nothing: an empty list."""
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - IPython ships with the book's kernel
        return None
    shell = get_ipython()
    if shell is None:
        return None
    history = list(getattr(shell, "user_ns", {}).get("In", []))
    for source in reversed(history[-3:-1]):  # the cell(s) just before the current one
        if source.lstrip().startswith("# Parameters"):
            tree = ast.parse(source)
            return [
                t.id
                for n in tree.body
                if isinstance(n, ast.Assign)
                for t in n.targets
                if isinstance(t, ast.Name)
            ]
    return []


def check_parameters(
    chapter: str, namespace: Mapping[str, Any], injected: list[str] | None = None
) -> dict[str, Any]:
    """Check chapter ``chapter``'s parameters in ``namespace`` (its ``globals()``); return them.

    ``profile`` must name a profile; every other parameter is ``None`` (the profile's or the
    chapter's default) or a value its check accepts. ``injected`` (default: read from IPython's
    history) are the names papermill set; one that the chapter does not have is an error.

    Used by: dpo_utils.book.
    """
    if chapter not in CHAPTER_PARAMETERS:
        raise config.ConfigError(
            f"chapter={chapter!r} is not allowed; choose one of {list(CHAPTER_PARAMETERS)}."
        )
    spec = CHAPTER_PARAMETERS[chapter]
    allowed = ["profile", *spec]
    injected = injected_parameter_names() if injected is None else injected
    unknown = [name for name in injected or [] if name not in allowed]
    if unknown:
        raise config.ConfigError(
            f"chapter {chapter} has no parameter(s) {unknown}; its parameters are {allowed}."
        )
    profile = namespace.get("profile", config.profile_from_env())
    config.get_config(profile)  # an unknown profile is named with the allowed ones
    resolved: dict[str, Any] = {"profile": profile}
    ctx = {"profile": profile, "persona_source": namespace.get("persona_source")}
    for name, check in spec.items():
        value = namespace.get(name)
        resolved[name] = None if value is None else check(name, value, ctx)
    return resolved
