"""A small model whose features move: a trainable feature map under a single-token unembedding.

The last-layer theory (chapters 2-4) keeps the features e(x) fixed. The paper's misalignment
argument needs features that DPO itself changes, so chapter 5 uses the smallest such model:

    e(x) = tanh(A x),    logits = W e(x),

with inputs x from a synthetic behaviour (:mod:`dpo_utils.synthetic`), A (hidden x d_in) and the
unembedding W both trained by DPO with plain full-batch gradient descent. As in (D1), the softmax
partition function cancels in the DPO argument, which depends only on u = w_Yes - w_No:

    h_i = beta * s_i * (u . e(x_i) - u_ref . e_ref(x_i)),

so the model stores (A, u); the other rows of W receive no gradient. All seeds train at once: every
parameter carries a leading seed dimension S, and autograd runs on the summed loss of independent
runs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .losses import check_beta
from .metrics import distinguishability

__all__ = [
    "FeatureModel",
    "init_feature_model",
    "features",
    "train_dpo",
]


@dataclass
class FeatureModel:
    """Parameters of S independent two-layer models: A (S, hidden, d_in) and u (S, hidden).

    Used by: dpo_utils.feature_models.
    """

    A: torch.Tensor
    u: torch.Tensor

    def detach(self) -> FeatureModel:
        return FeatureModel(self.A.detach().clone(), self.u.detach().clone())


def init_feature_model(n_seeds: int, d_in: int, hidden: int, seeds: Sequence[int]) -> FeatureModel:
    """Random base models: A with entries N(0, 1/d_in), u with entries N(0, 1/hidden), one per
    seed.

    Used by: dpo_utils.synthetic_experiments.
    """
    if len(seeds) != n_seeds:
        raise ValueError(
            f"need one seed per model: n_seeds={n_seeds} but {len(seeds)} seeds given."
        )
    A, u = [], []
    for s in seeds:
        g = torch.Generator().manual_seed(int(s))
        A.append(torch.randn(hidden, d_in, generator=g, dtype=torch.float64) / math.sqrt(d_in))
        u.append(torch.randn(hidden, generator=g, dtype=torch.float64) / math.sqrt(hidden))
    return FeatureModel(torch.stack(A), torch.stack(u))


def features(model: FeatureModel, x: torch.Tensor) -> torch.Tensor:
    """e(x) = tanh(A x) for every seed: x (S, n, d_in) -> (S, n, hidden).

    Used by: dpo_utils.feature_models.
    """
    return torch.tanh(torch.einsum("snd,shd->snh", x, model.A))


def _measure(
    model: FeatureModel, ref: FeatureModel, x: torch.Tensor, signs: torch.Tensor, beta: float
) -> dict[str, torch.Tensor]:
    e = features(model, x)
    z = torch.einsum("snh,sh->sn", e, model.u)
    z_ref = torch.einsum("snh,sh->sn", features(ref, x), ref.u)
    margin = beta * signs * (z - z_ref)
    return {
        "loss": F.softplus(-margin).mean(1),
        "reward_accuracy": (margin > 0).to(e.dtype).mean(1),
        "output_accuracy": (signs * z > 0).to(e.dtype).mean(1),
        "mean_margin": margin.mean(1),
        "distinguishability": distinguishability(e, signs),
    }


def train_dpo(
    model: FeatureModel,
    x: torch.Tensor,
    signs: torch.Tensor,
    *,
    lr: float,
    beta: float,
    steps: int,
    ref: FeatureModel | None = None,
    eval_sets: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> tuple[FeatureModel, list[dict]]:
    """Full-batch gradient descent on the DPO loss of every seed; ``ref`` defaults to the start
    model.

    ``x`` (S, n, d_in), ``signs`` (S, n) of +1/-1 (pass ``-signs`` to misalign). Returns the
    trained model and records {step, split, metric, seed_index, value} of every eval set at steps
    0..steps.

    Used by: dpo_utils.synthetic_experiments.
    """
    beta = check_beta(beta)
    if steps < 0 or lr <= 0:
        raise ValueError(f"steps={steps} must be >= 0 and lr={lr} > 0.")
    ref = model.detach() if ref is None else ref.detach()
    eval_sets = {"train": (x, signs)} if eval_sets is None else eval_sets
    A = model.A.detach().clone().requires_grad_(True)
    u = model.u.detach().clone().requires_grad_(True)
    with torch.no_grad():
        z_ref = torch.einsum("snh,sh->sn", features(ref, x), ref.u)
    rows: list[dict] = []

    def record(step: int) -> None:
        with torch.no_grad():
            current = FeatureModel(A, u)
            for split, (xe, se) in eval_sets.items():
                for metric, values in _measure(current, ref, xe, se, beta).items():
                    rows.extend(
                        dict(step=step, split=split, metric=metric, seed_index=i, value=float(v))
                        for i, v in enumerate(values)
                    )

    record(0)
    for step in range(1, steps + 1):
        z = torch.einsum("snh,sh->sn", torch.tanh(torch.einsum("snd,shd->snh", x, A)), u)
        loss = (
            F.softplus(-beta * signs * (z - z_ref)).mean(1).sum()
        )  # independent runs: sum of means
        grad_A, grad_u = torch.autograd.grad(loss, (A, u))
        with torch.no_grad():
            A -= lr * grad_A
            u -= lr * grad_u
        record(step)
    return FeatureModel(A.detach(), u.detach()), rows
