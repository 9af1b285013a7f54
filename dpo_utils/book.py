"""What every chapter does right after its ``parameters`` cell: validate, go offline, set the look.

Kept free of heavy imports (no transformers at module level) so that the offline environment
variables are set *before* transformers or huggingface_hub read them.
"""

from __future__ import annotations

import logging
import os
import warnings
from typing import Any

from .config import ExperimentConfig, describe, require_device
from .plotting import set_theme

__all__ = ["start_chapter", "quiet_libraries"]

_OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")


def quiet_libraries() -> None:
    """Silence progress bars and advisory warnings of datasets/transformers/trl in executed pages.

    Used by: dpo_utils.book.
    """
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings(
        "ignore", category=UserWarning, module=r"(trl|transformers|peft|torch)\b.*"
    )
    for name in ("transformers", "trl", "datasets", "peft", "accelerate", "httpx"):
        logging.getLogger(name).setLevel(logging.ERROR)


def start_chapter(
    cfg: ExperimentConfig, show: bool = True, synthetic: bool = False, **provenance: Any
) -> str:
    """Prepare a chapter for ``cfg``; return its torch device ("cpu" or "cuda").

    * CPU profile: no network (``HF_HUB_OFFLINE=1`` etc. via ``setdefault``, so a caller may
      override them); telemetry is off for every profile;
    * a GPU profile without a GPU stops here with a clear message (:func:`config.require_device`);
    * torch is seeded with ``cfg.seed``, the plot theme is applied, library noise is silenced;
    * with ``show``, a provenance banner says which profile and model produced the page; with
      ``synthetic``, it says the page uses synthetic features and no language model.

    Used in: every chapter.
    """
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    if not cfg.requires_gpu:
        for var in _OFFLINE_VARS:
            os.environ.setdefault(var, "1")
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

        banner = describe(cfg, **provenance)
        if synthetic:
            settings = ", ".join(f"{k.replace('_', ' ')} **{v}**" for k, v in provenance.items())
            banner = (
                f"Outputs on this page were produced with profile **{cfg.profile}** on synthetic "
                f"features (no language model is used on this page){', ' if settings else ''}"
                f"{settings}."
            )
        display(Markdown(f"```{{note}}\n{banner}\n```"))
    return device
