"""What every chapter does right after its ``parameters`` cell: validate, go offline, set the look.

Kept free of heavy imports (no transformers at module level) so that the offline environment
variables are set *before* transformers or huggingface_hub read them.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

from . import chapter_parameters
from .config import ExperimentConfig, describe, network_environment, require_device
from .plotting import set_theme
from .results import provenance_log

__all__ = ["start_chapter", "check_parameters", "quiet_libraries", "provenance_line"]


def quiet_libraries() -> None:
    """Silence progress bars and advisory warnings of datasets, transformers, trl in pages.

    Used by: dpo_utils.book.
    """
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings(
        "ignore", category=UserWarning, module=r"(trl|transformers|peft|torch)\b.*"
    )
    for name in ("transformers", "trl", "datasets", "peft", "accelerate", "httpx"):
        logging.getLogger(name).setLevel(logging.ERROR)


def check_parameters(chapter: str, namespace, injected: list[str] | None = None) -> dict:
    """Check a chapter's parameters before any work (:func:`dpo_utils.chapter_parameters.
    check_parameters`): a bad value or an unknown papermill parameter stops the chapter here.

    Used in: every chapter.
    """
    return chapter_parameters.check_parameters(chapter, namespace, injected)


#: how the banner names each kind of cached result (singular, plural)
_KINDS = {
    "run": ("DPO run", "DPO runs"),
    "features": ("feature set", "feature sets"),
    "model": ("stand-in model", "stand-in models"),
    "table": ("table", "tables"),
}
#: a group with more results than this is counted, not listed key by key
_LISTED = 2


def provenance_line(entries: list[dict]) -> str:
    """One line for the banner: which results were computed now and which came from the cache,
    grouped by kind (DPO runs, feature sets, stand-in models, tables). A group of up to two
    results names each with its key; a larger group is counted ("16 DPO runs"), so that a chapter
    of dozens of runs gets a line a reader can read.

    Used by: dpo_utils.book.
    """
    if not entries:
        return "Results: none yet."
    seen: dict[tuple, dict] = {}
    for entry in entries:  # computed once and read again later is still "computed now"
        key = (entry["kind"], entry["name"], entry["key"])
        if key not in seen or not entry["from_cache"]:
            seen[key] = entry
    parts = []
    for from_cache, label in ((False, "computed now"), (True, "loaded from cache (results/)")):
        groups: dict[str, list[dict]] = {}
        for e in seen.values():
            if e["from_cache"] == from_cache:
                groups.setdefault(e["kind"], []).append(e)
        described = []
        for kind, group in groups.items():
            one, many = _KINDS.get(kind, (kind, kind + "s"))
            if len(group) > _LISTED:
                described.append(f"{len(group)} {many}")
            else:
                described += [f"{one} {e['name']} ({e['key']})" for e in group]
        if described:
            parts.append(f"{label}: " + ", ".join(described))
    return "Results " + "; ".join(parts) + "."


def start_chapter(
    cfg: ExperimentConfig, show: bool = True, synthetic: bool = False, **provenance: Any
) -> str:
    """Prepare a chapter for ``cfg``; return its torch device ("cpu" or "cuda").

    * CPU profile: no network (``HF_HUB_OFFLINE=1`` etc. via ``setdefault``, so a caller may
      override them); telemetry is off for every profile (:func:`config.network_environment`);
    * a GPU profile without a GPU stops here with a clear message (:func:`config.require_device`);
    * torch is seeded with ``cfg.seed``, the plot theme is applied, library noise is silenced;
    * with ``show``, a provenance banner says which profile and model produced the page (with
      ``synthetic``, that the page uses synthetic features and no language model) and, kept
      current as the chapter runs, which of its results were computed now and which were loaded
      from cache, with their keys.

    Used in: every chapter.
    """
    network_environment(cfg)
    device = require_device(cfg)

    import numpy as np
    import torch

    # numpy 2 writes scalars as 'np.float64(0.5)'; myst-nb's {glue:text} formats the plain-text
    # repr, so keep numpy 1.x reprs ('0.5') for numbers glued into the prose
    np.set_printoptions(legacy="1.25")
    torch.manual_seed(cfg.seed)
    set_theme()
    quiet_libraries()
    if show:
        from IPython.display import Markdown, display

        start = len(provenance_log())
        head = describe(cfg, **provenance)
        if synthetic:
            settings = ", ".join(f"{k.replace('_', ' ')} **{v}**" for k, v in provenance.items())
            head = (
                f"Outputs on this page were produced with profile **{cfg.profile}** on synthetic "
                f"features (no language model is used on this page){', ' if settings else ''}"
                f"{settings}."
            )

        def banner() -> Markdown:
            line = provenance_line(provenance_log()[start:])
            return Markdown(f"```{{note}}\n{head}\n{line}\n```")

        handle = display(banner(), display_id=True)
        if handle is not None:
            provenance_log(listener=lambda entry: handle.update(banner()))
    return device
