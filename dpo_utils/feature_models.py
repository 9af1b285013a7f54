"""A small model whose features move: a trainable feature map under a single-token unembedding.

The last-layer theory (chapters 2-4) keeps the features e(x) fixed. The paper's misalignment argument
needs features that DPO itself changes, so chapter 5 uses the smallest such model:

    e(x) = tanh(A x),    logits = W e(x),

with inputs x from a synthetic behaviour (:mod:`dpo_utils.synthetic`), A (hidden x d_in) and the
unembedding W both trained by DPO with plain full-batch gradient descent. As in (D1), the softmax
partition function cancels in the DPO argument, which depends only on u = w_Yes - w_No:

    h_i = beta * s_i * (u . e(x_i) - u_ref . e_ref(x_i)),

so the model stores (A, u); the other rows of W receive no gradient. All seeds train at once: every
parameter carries a leading seed dimension S, and autograd runs on the summed loss of independent runs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
import torch
import torch.nn.functional as F

from . import synthetic
from .losses import check_beta
from .metrics import distinguishability
from .theory import single_threaded

__all__ = [
    "FeatureModel",
    "init_feature_model",
    "features",
    "train_dpo",
    "misalignment_experiment",
]


@dataclass
class FeatureModel:
    """Parameters of S independent two-layer models: A (S, hidden, d_in) and u (S, hidden).

    Used in: notebooks/05_misalignment.ipynb.
    """

    A: torch.Tensor
    u: torch.Tensor

    def detach(self) -> FeatureModel:
        return FeatureModel(self.A.detach().clone(), self.u.detach().clone())


def init_feature_model(n_seeds: int, d_in: int, hidden: int, seeds: Sequence[int]) -> FeatureModel:
    """Random base models: A with entries N(0, 1/d_in), u with entries N(0, 1/hidden), one per seed.

    Used in: notebooks/05_misalignment.ipynb.
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

    Used in: notebooks/05_misalignment.ipynb.
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
    """Full-batch gradient descent on the DPO loss of every seed; ``ref`` defaults to the start model.

    ``x`` (S, n, d_in), ``signs`` (S, n) of +1/-1 (pass ``-signs`` to misalign). Returns the trained
    model and records {step, split, metric, seed_index, value} of every eval set at steps 0..steps.

    Used in: notebooks/05_misalignment.ipynb.
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


@single_threaded
def misalignment_experiment(
    seeds: Sequence[int] = (0, 1, 2, 3, 4),
    *,
    d_in: int = 32,
    hidden: int = 64,
    n_per_class: int = 250,
    mean_gap: float = 1.5,
    spread: float = 1.0,
    lr: float = 1.0,
    beta: float = 0.1,
    align_steps: int = 50,
    misalign_steps: int = 50,
    n_test_per_class: int = 500,
) -> pd.DataFrame:
    """Align a base model by DPO, then misalign (flipped labels) both the base and the aligned model.

    Phases, each a tidy block with column ``phase``: ``align`` (base model trained on the labels, ref =
    base); ``misalign`` with ``start`` = ``base`` (ref = base) and ``aligned`` (ref = aligned model), both
    trained on flipped labels for ``misalign_steps``. Metrics per step and split (train, test): loss,
    reward_accuracy, output_accuracy, mean_margin (all w.r.t. the labels being trained on) and
    distinguishability of the features e(x). Columns: step, behavior, split, metric, value, seed,
    phase, start.

    Used in: notebooks/05_misalignment.ipynb.
    """
    seeds = list(seeds)
    n = len(seeds)
    train = [
        synthetic.sample_behavior(n_per_class, d_in, mean_gap, spread=spread, seed=10_000 + s)
        for s in seeds
    ]
    test = [
        synthetic.sample_behavior(n_test_per_class, d_in, mean_gap, spread=spread, seed=20_000 + s)
        for s in seeds
    ]
    x, signs = synthetic.stack_behaviors(train)
    xt, st = synthetic.stack_behaviors(test)
    base = init_feature_model(n, d_in, hidden, seeds)
    common = dict(lr=lr, beta=beta)
    aligned, rows_align = train_dpo(
        base,
        x,
        signs,
        steps=align_steps,
        eval_sets={"train": (x, signs), "test": (xt, st)},
        **common,
    )
    flipped = {"train": (x, -signs), "test": (xt, -st)}
    _, rows_base = train_dpo(base, x, -signs, steps=misalign_steps, eval_sets=flipped, **common)
    _, rows_aligned = train_dpo(
        aligned, x, -signs, steps=misalign_steps, eval_sets=flipped, **common
    )
    frames = []
    for rows, phase, start in (
        (rows_align, "align", "base"),
        (rows_base, "misalign", "base"),
        (rows_aligned, "misalign", "aligned"),
    ):
        frame = pd.DataFrame(rows)
        frame["seed"] = [seeds[i] for i in frame.pop("seed_index")]
        frame["phase"], frame["start"], frame["behavior"] = phase, start, f"gap={mean_gap:g}"
        frames.append(frame)
    table = pd.concat(frames, ignore_index=True)
    return table[["step", "behavior", "split", "metric", "value", "seed", "phase", "start"]]
