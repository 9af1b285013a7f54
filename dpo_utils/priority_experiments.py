"""Prioritisation on synthetic features (chapter 04): which behaviour DPO learns first, and why.

Pairs and groups of synthetic behaviours (:mod:`dpo_utils.synthetic`) train jointly on one
last-layer head (:func:`dpo_utils.linear.train_last_layer`); the tables record each behaviour's
loss and margin per step with its distinguishability and priority gap, so the chapter can compare
the prediction made before training with what training did.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from scipy.optimize import minimize
from scipy.stats import norm

from . import linear, metrics, synthetic
from .runtime import run_seed, single_threaded
from .synthetic import random_direction

__all__ = [
    "priority_pairs",
    "priority_agreement",
    "joint_behaviors",
    "behaviors_with_cosines",
    "difference_vectors",
    "first_step_gains",
    "population_optimum",
    "saturation_summary",
    "joint_training",
]


def _pair_behaviors(
    pair: int, seed: int, dim: int, n_per_class: int, gap_range: tuple[float, float], spread: float
) -> tuple[synthetic.Behavior, synthetic.Behavior, float]:
    """Two behaviours with random gaps and a random angle (cosine uniform on [-1, 1])."""
    g = torch.Generator().manual_seed(run_seed(seed, pair, "pair"))
    lo, hi = gap_range
    gaps = lo + (hi - lo) * torch.rand(2, generator=g, dtype=torch.float64)
    cosine = float(2 * torch.rand(1, generator=g, dtype=torch.float64) - 1)
    v1 = random_direction(dim, run_seed(seed, pair, "v1"))
    w = random_direction(dim, run_seed(seed, pair, "w"))
    w = (w - (w @ v1) * v1) / (w - (w @ v1) * v1).norm()
    v2 = cosine * v1 + math.sqrt(max(0.0, 1 - cosine**2)) * w
    b1 = synthetic.sample_behavior(
        n_per_class, dim, float(gaps[0]), spread=spread, direction=v1, seed=run_seed(seed, pair, 1)
    )
    b2 = synthetic.sample_behavior(
        n_per_class, dim, float(gaps[1]), spread=spread, direction=v2, seed=run_seed(seed, pair, 2)
    )
    return b1, b2, cosine


@single_threaded
def priority_pairs(
    n_pairs: int = 200,
    *,
    dim: int = 64,
    n_per_class: int = 250,
    gap_range: tuple[float, float] = (0.5, 4.0),
    spread: float = 1.0,
    lr: float = 1.0,
    beta: float = 0.01,
    steps: int = 10,
    batch_size: int = 128,
    seed: int = 0,
) -> pd.DataFrame:
    """Train ``n_pairs`` random two-behaviour mixtures, with the full batch and with mini-batches.

    Per pair, behaviour 1 and 2 (gaps drawn from ``gap_range``, cosine between their directions
    uniform on [-1, 1]) are concatenated into one training set. The table has the per-behaviour
    mean margin and loss at every step, the pair's priority gap
    (:func:`metrics.priority_gap_matrix` on the empirical d_1, d_2, so gap > 0 predicts behaviour 1
    first) with ||b|| (``mean_direction_norm``) and max ||d_k|| (``max_difference_norm``),
    ``cosine`` and ``batching`` ("full" or "minibatch", random unbalanced batches of ``batch_size``
    as in the authors' scripts).

    Used in: notebooks/04_prioritisation.ipynb.
    """
    if n_pairs < 1:
        raise ValueError(f"n_pairs={n_pairs} must be >= 1.")
    feats, signs, evals1, evals2, runs = [], [], [], [], []
    for pair in range(n_pairs):
        b1, b2, cosine = _pair_behaviors(pair, seed, dim, n_per_class, gap_range, spread)
        d = difference_vectors([b1, b2])
        feats.append(torch.cat([b1.features, b2.features]))
        signs.append(torch.cat([b1.signs, b2.signs]))
        evals1.append((b1.features, b1.signs))
        evals2.append((b2.features, b2.signs))
        runs.append(
            dict(
                pair=pair,
                seed=seed,
                cosine=cosine,
                gap_1=b1.mean_gap,
                gap_2=b2.mean_gap,
                priority_gap=float(metrics.priority_gap_matrix(d)[0, 1]),
                difference_norm_1=float(d[0].norm()),
                difference_norm_2=float(d[1].norm()),
                mean_direction_norm=float(d.mean(0).norm()),
                max_difference_norm=float(d.norm(dim=1).max()),
            )
        )
    features, sgn = torch.stack(feats), torch.stack(signs)
    eval_sets = {
        "behavior 1": (torch.stack([f for f, _ in evals1]), torch.stack([s for _, s in evals1])),
        "behavior 2": (torch.stack([f for f, _ in evals2]), torch.stack([s for _, s in evals2])),
    }
    tables = []
    for batching, bs in (("full", None), ("minibatch", batch_size)):
        history = linear.train_last_layer(
            features,
            sgn,
            lr=lr,
            beta=beta,
            steps=steps,
            batch_size=bs,
            seed=[run_seed(seed, p, "batches") for p in range(n_pairs)],
            eval_sets=eval_sets,
        )
        t = history.to_frame([dict(r, batching=batching) for r in runs])
        t = t[t.split.isin(eval_sets)].rename(columns={"split": "behavior"})
        t["split"] = "train"
        tables.append(t[t.metric.isin(["mean_margin", "loss", "reward_accuracy"])])
    return pd.concat(tables, ignore_index=True)


def priority_agreement(table: pd.DataFrame, step: int, batching: str = "full") -> pd.DataFrame:
    """One row per pair: does sign(priority gap) match sign(margin_1 - margin_2) at ``step``?

    Used in: notebooks/04_prioritisation.ipynb.
    """
    rows = table[
        (table.metric == "mean_margin") & (table.step == step) & (table.batching == batching)
    ]
    if rows.empty:
        raise ValueError(f"no mean_margin rows at step={step} with batching={batching!r}.")
    wide = rows.pivot_table(
        index=["pair", "priority_gap", "cosine"], columns="behavior", values="value"
    )
    wide = wide.reset_index()
    wide["margin_difference"] = wide["behavior 1"] - wide["behavior 2"]
    wide["agree"] = np.sign(wide.priority_gap) == np.sign(wide.margin_difference)
    wide["step"] = step
    return wide


def joint_behaviors(
    mean_gaps: Sequence[float],
    cosines_to_first: Sequence[float],
    *,
    dim: int = 64,
    n_per_class: int = 250,
    spread: float = 1.0,
    seed: int = 0,
) -> list[synthetic.Behavior]:
    """K behaviours for one training set, each direction at the given cosine to the first one.

    ``cosines_to_first[0]`` must be 1. Other directions are cosine * v_1 + sin * (a random unit
    vector orthogonal to v_1), so behaviours k, l > 1 are nearly orthogonal to each other in high
    dimension.

    Used in: notebooks/04_prioritisation.ipynb.
    """
    if len(mean_gaps) != len(cosines_to_first) or not cosines_to_first or cosines_to_first[0] != 1:
        raise ValueError(
            f"mean_gaps {list(mean_gaps)} and cosines_to_first {list(cosines_to_first)} must "
            "have equal length >= 1, with cosines_to_first[0] == 1."
        )
    v1 = random_direction(dim, run_seed(seed, "joint", 0))
    out = []
    for k, (gap, cos) in enumerate(zip(mean_gaps, cosines_to_first, strict=True)):
        if not -1 <= cos <= 1:
            raise ValueError(f"cosines_to_first[{k}]={cos} must lie in [-1, 1].")
        w = random_direction(dim, run_seed(seed, "joint", k, "w"))
        w = w - (w @ v1) * v1
        v = cos * v1 + math.sqrt(1 - cos**2) * w / w.norm()
        out.append(
            synthetic.sample_behavior(
                n_per_class, dim, gap, spread=spread, direction=v, seed=run_seed(seed, "joint", k)
            )
        )
    return out


def behaviors_with_cosines(
    mean_gaps: Sequence[float],
    cosines: Sequence[Sequence[float]],
    *,
    dim: int = 64,
    n_per_class: int = 250,
    spread: float = 1.0,
    seed: int = 0,
) -> list[synthetic.Behavior]:
    """K behaviours whose directions have the given K x K matrix of cosines (every pair).

    The directions are the rows of the Cholesky factor of ``cosines``, placed in a random
    K-dimensional subspace of R^dim, so <v_k, v_l> = cosines[k][l] exactly. ``cosines`` must be
    symmetric, with ones on the diagonal, and positive definite.

    Used in: notebooks/04_prioritisation.ipynb.
    """
    c = torch.as_tensor(cosines, dtype=torch.float64)
    k = len(mean_gaps)
    if (
        c.shape != (k, k)
        or not torch.allclose(c, c.T)
        or not torch.allclose(c.diag(), torch.ones(k, dtype=c.dtype))
    ):
        raise ValueError(
            f"cosines {c.tolist()} must be a symmetric {k} x {k} matrix with ones on the diagonal."
        )
    chol, info = torch.linalg.cholesky_ex(c)
    if int(info) != 0 or k > dim:
        raise ValueError(
            f"cosines {c.tolist()} must be positive definite with K={k} <= dim={dim} behaviours."
        )
    basis = torch.stack([random_direction(dim, run_seed(seed, "cosines", j)) for j in range(k)])
    basis = torch.linalg.qr(basis.T).Q.T  # K orthonormal rows spanning a random subspace
    directions = chol @ basis
    return [
        synthetic.sample_behavior(
            n_per_class,
            dim,
            float(gap),
            spread=spread,
            direction=directions[j],
            seed=run_seed(seed, "cosines", j, "sample"),
        )
        for j, gap in enumerate(mean_gaps)
    ]


def first_step_gains(differences: torch.Tensor, lr: float, beta: float) -> torch.Tensor:
    """(D6) for K equal-size, class-balanced behaviours trained with the full batch.

    After one step the mean margin of behaviour k is (lr beta^2 / 4) <b, d_k>, with b the mean of
    all the d_k. Its sign says, before any training, whether behaviour k gains or goes backwards.

    Used in: notebooks/04_prioritisation.ipynb.
    """
    return lr * beta**2 / 4 * differences @ differences.mean(0)


def population_optimum(
    mean_gaps: Sequence[float], cosines: Sequence[Sequence[float]], spread: float = 1.0
) -> pd.DataFrame:
    """Where joint training should end: the minimiser of the population DPO loss of the mixture.

    Behaviour k has Gaussian classes at +-(g_k/2) v_k (isotropic, standard deviation ``spread``),
    equal weights, and the cosines between the v_k given. The loss is a logistic loss of s u.e, so
    its minimiser u* lies in the span of the v_k; per behaviour and class, u.e is Gaussian and each
    expectation is a 1-D Gauss-Hermite sum. Returns, per behaviour, ``ceiling`` = Phi(g_k / 2
    spread) (the best accuracy of a rule trained on that behaviour alone) and
    ``joint_optimum_accuracy`` = Phi(u*.d_k / (2 spread ||u*||)), the accuracy the mixture's
    minimiser gives it (any beta: beta only rescales u*).

    Used in: notebooks/04_prioritisation.ipynb.
    """
    c = np.asarray(cosines, dtype=float)
    d = np.linalg.cholesky(c) * np.asarray(mean_gaps, dtype=float)[:, None]  # rows d_k in R^K
    nodes, weights = np.polynomial.hermite_e.hermegauss(60)
    weights = weights / weights.sum()

    def loss(u: np.ndarray) -> tuple[float, np.ndarray]:
        m = d @ u / 2  # mean of s u.e for every behaviour (both classes alike, by symmetry)
        z = m[:, None] + spread * np.linalg.norm(u) * nodes[None, :]
        value = float((np.logaddexp(0, -z) @ weights).mean())
        sig = 1 / (1 + np.exp(z))  # -d softplus(-z)/dz
        unit = u / max(np.linalg.norm(u), 1e-300)
        grad_z_m = -(sig @ weights)  # per behaviour
        grad_z_r = -((sig * nodes[None, :]) @ weights) * spread
        grad = (grad_z_m[:, None] * d / 2).mean(0) + grad_z_r.mean() * unit
        return value, grad

    u = minimize(loss, d.mean(0), jac=True, method="BFGS").x
    accuracy = norm.cdf(d @ u / (2 * spread * np.linalg.norm(u)))
    return pd.DataFrame(
        {
            "behavior": [f"behavior {k + 1}" for k in range(len(d))],
            "ceiling": norm.cdf(np.asarray(mean_gaps, dtype=float) / (2 * spread)),
            "joint_optimum_accuracy": accuracy,
        }
    )


def saturation_summary(
    table: pd.DataFrame, ceilings: Mapping[str, float], fraction: float, early: int, late: int
) -> pd.DataFrame:
    """One row per behaviour of a long :func:`joint_training` run: start, saturation, end.

    Columns: ``margin_step_1``, ``reward_accuracy_step_1``, ``max_reward_accuracy``,
    ``final_reward_accuracy``, ``final_margin``, ``min_margin`` and ``min_margin_step``;
    ``early_loss_rate`` = (L(0) - L(early)) / early and ``late_loss_rate`` = |L(T) - L(T - late)| /
    late; ``steps_to_fraction``: first step with reward accuracy >= ``fraction`` *
    ceilings[behaviour] (NaN if never).

    Used in: notebooks/04_prioritisation.ipynb.
    """
    last = int(table.step.max())
    if not 0 < early <= last or not 0 < late <= last:
        raise ValueError(f"early={early} and late={late} must lie in 1..{last} (the run's steps).")
    rows = []
    for name, part in table.groupby("behavior"):
        series = {m: p.set_index("step").value for m, p in part.groupby("metric")}
        loss, acc, margin = series["loss"], series["reward_accuracy"], series["mean_margin"]
        hit = acc.index[acc.values >= fraction * ceilings[name]]
        rows.append(
            dict(
                behavior=name,
                margin_step_1=float(margin[1]),
                reward_accuracy_step_1=float(acc[1]),
                max_reward_accuracy=float(acc.max()),
                final_reward_accuracy=float(acc[last]),
                final_margin=float(margin[last]),
                min_margin=float(margin.min()),
                min_margin_step=int(margin.idxmin()),
                early_loss_rate=float((loss[0] - loss[early]) / early),
                late_loss_rate=float(abs(loss[last] - loss[last - late]) / late),
                steps_to_fraction=float(hit.min()) if len(hit) else math.nan,
            )
        )
    return pd.DataFrame(rows)


def difference_vectors(behaviors: Sequence[synthetic.Behavior]) -> torch.Tensor:
    """(K, d) empirical d_k = mu_Yes - mu_No of each behaviour.

    Used in: notebooks/04_prioritisation.ipynb.
    """
    return torch.stack(
        [torch.subtract(*metrics.class_means(b.features, b.signs)) for b in behaviors]
    )


@single_threaded
def joint_training(
    behaviors: Sequence[synthetic.Behavior],
    weightings: Mapping[str, Sequence[float]] | None = None,
    *,
    lr: float = 1.0,
    beta: float = 0.01,
    steps: int = 100,
    batch_size: int | None = 128,
    seed: int = 0,
) -> pd.DataFrame:
    """Train all ``behaviors`` together, once per weighting (one loss weight per behaviour).

    ``weightings`` maps a name to K per-behaviour weights (default ``{"uniform": [1] * K}``);
    weight w_k multiplies the loss of every pair of behaviour k, which in expectation equals
    re-sampling behaviour k w_k times as often. Columns: step, behavior, split ("train"), metric
    (loss, reward_accuracy, output_accuracy, mean_margin), value, seed, weighting, mean_gap.

    Used in: notebooks/04_prioritisation.ipynb.
    """
    k = len(behaviors)
    weightings = {"uniform": [1.0] * k} if weightings is None else dict(weightings)
    for name, w in weightings.items():
        if len(w) != k or min(w) <= 0:
            raise ValueError(
                f"weighting {name!r}={list(w)} must give {k} positive weights, one per behaviour."
            )
    features = torch.cat([b.features for b in behaviors])
    signs = torch.cat([b.signs for b in behaviors])
    n_runs = len(weightings)
    weights = torch.stack(
        [
            torch.cat(
                [
                    torch.full((len(b.signs),), float(x), dtype=features.dtype)
                    for b, x in zip(behaviors, w, strict=True)
                ]
            )
            for w in weightings.values()
        ]
    )
    eval_sets = {
        f"behavior {i + 1}": (b.features.expand(n_runs, -1, -1), b.signs.expand(n_runs, -1))
        for i, b in enumerate(behaviors)
    }
    history = linear.train_last_layer(
        features.expand(n_runs, -1, -1),
        signs.expand(n_runs, -1),
        lr=lr,
        beta=beta,
        steps=steps,
        batch_size=batch_size,
        seed=[seed] * n_runs,
        eval_sets=eval_sets,
        sample_weights=weights,
    )
    t = history.to_frame([dict(weighting=name, seed=seed) for name in weightings])
    t = t[t.split.isin(eval_sets)].rename(columns={"split": "behavior"})
    t["split"] = "train"
    gaps = {f"behavior {i + 1}": b.mean_gap for i, b in enumerate(behaviors)}
    t["mean_gap"] = t.behavior.map(gaps)
    return t.reset_index(drop=True)
