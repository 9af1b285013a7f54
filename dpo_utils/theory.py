"""Experiments of the theory chapters on synthetic features, each returning a tidy table.

Every function builds synthetic behaviours (:mod:`dpo_utils.synthetic`), trains the exact last-layer
DPO trainer (:func:`dpo_utils.linear.train_last_layer`) on all of them as one batched computation, and
returns a long table with columns ``step, behavior, split, metric, value, seed`` plus descriptors
(``family``, ``mean_gap``, ``spread``, ``distinguishability``, ...). Small summary helpers turn those
tables into one row per run (early slope, time to an accuracy, priority agreement).

Each behaviour's data and batch order depend only on its own labels (family, gap, spread, seed), never
on its position in a sweep, so a sweep run in one batch equals the same runs made one by one.
"""

from __future__ import annotations

import functools
import math
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

import numpy as np
import pandas as pd
import torch
from scipy.stats import spearmanr

from . import linear, metrics, synthetic

__all__ = [
    "single_threaded",
    "run_seed",
    "random_direction",
    "sweep_behaviors",
    "early_slope",
    "time_to_accuracy",
    "rank_correlation",
    "priority_pairs",
    "priority_agreement",
    "joint_behaviors",
    "difference_vectors",
    "joint_training",
    "fixed_feature_flip",
]


_F = TypeVar("_F", bound=Callable)


def single_threaded(func: _F) -> _F:
    """Run ``func`` with one torch intra-op thread, then restore the previous setting.

    These experiments are many small tensor operations; on a shared two-core machine a second thread
    only adds contention (measured: 10x slower under load), never speed.

    Used in: notebooks/02_update_rate.ipynb to notebooks/05_misalignment.ipynb (through this module).
    """

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        previous = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return func(*args, **kwargs)
        finally:
            torch.set_num_threads(previous)

    return wrapper  # type: ignore[return-value]


def run_seed(*labels: object) -> int:
    """A stable 31-bit seed from a run's labels (the same labels always give the same seed).

    Used in: notebooks/02_update_rate.ipynb to notebooks/05_misalignment.ipynb (through this module).
    """
    return zlib.crc32(repr(labels).encode()) & 0x7FFFFFFF


def random_direction(dim: int, seed: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """A unit vector drawn uniformly from the sphere in R^dim.

    Used in: notebooks/02_update_rate.ipynb to notebooks/05_misalignment.ipynb (through this module).
    """
    v = torch.randn(dim, generator=torch.Generator().manual_seed(int(seed)), dtype=dtype)
    return v / v.norm()


def _check_choice(name: str, values: Sequence[str], allowed: Sequence[str]) -> None:
    bad = [v for v in values if v not in allowed]
    if bad:
        raise ValueError(f"{name}={bad!r} is not allowed; choose from {list(allowed)}.")


def _sample(
    family: str, gap: float, spread: float, seed: int, n_per_class: int, dim: int, salt: str
) -> synthetic.Behavior:
    key = run_seed(family, float(gap), float(spread), int(seed), salt)
    return synthetic.sample_behavior(
        n_per_class,
        dim,
        gap,
        spread=spread,
        family=family,
        direction=random_direction(dim, run_seed(int(seed), "direction")),
        seed=key,
    )


@single_threaded
def sweep_behaviors(
    families: Sequence[str] = ("gaussian", "laplace", "weibull"),
    mean_gaps: Sequence[float] = (0.5, 1.0, 2.0, 4.0),
    spreads: Sequence[float] = (1.0,),
    seeds: Sequence[int] = (0,),
    *,
    n_per_class: int = 250,
    dim: int = 64,
    lr: float = 1.0,
    beta: float = 0.01,
    steps: int = 100,
    batch_size: int | None = 128,
    balanced: bool = True,
    base_margin: float = 0.0,
    n_test_per_class: int = 0,
) -> pd.DataFrame:
    """Train one single-behaviour run per (family, mean gap, spread, seed), all in one batch.

    Each run has its own behaviour (random direction per seed, centre 0) and batch stream.
    ``base_margin`` > 0 gives the "pretrained" head u_0 a random direction of that norm, so output
    accuracy starts at a base rate while reward accuracy starts at 0. ``n_test_per_class`` > 0 adds a
    held-out ``test`` split from the same distributions. Columns: step, behavior, split, metric, value,
    seed, family, mean_gap, spread, distinguishability (empirical, training set), max_feature_norm.

    Used in: notebooks/02_update_rate.ipynb, notebooks/03_training_accuracy.ipynb.
    """
    _check_choice("families", families, list(synthetic.TAIL_FAMILIES))
    runs, train, test, seeds_r = [], [], [], []
    for family in families:
        for gap in mean_gaps:
            for spread in spreads:
                for seed in seeds:
                    b = _sample(family, gap, spread, seed, n_per_class, dim, "train")
                    train.append(b)
                    if n_test_per_class:
                        test.append(
                            _sample(family, gap, spread, seed, n_test_per_class, dim, "test")
                        )
                    runs.append(
                        dict(
                            behavior=f"{family} gap={gap:g} spread={spread:g}",
                            seed=int(seed),
                            family=family,
                            mean_gap=float(gap),
                            spread=float(spread),
                            distinguishability=float(
                                metrics.distinguishability(b.features, b.signs)
                            ),
                            max_feature_norm=float(b.features.norm(dim=1).max()),
                        )
                    )
                    seeds_r.append(
                        run_seed(family, float(gap), float(spread), int(seed), "batches")
                    )
    features, signs = synthetic.stack_behaviors(train)
    u0 = torch.stack(
        [
            base_margin * random_direction(dim, run_seed(r["seed"], r["behavior"], "u0"))
            for r in runs
        ]
    )
    eval_sets = {"train": (features, signs)}
    if n_test_per_class:
        eval_sets["test"] = synthetic.stack_behaviors(test)
    history = linear.train_last_layer(
        features,
        signs,
        u0,
        lr=lr,
        beta=beta,
        steps=steps,
        batch_size=batch_size,
        seed=seeds_r,
        balanced=balanced,
        eval_sets=eval_sets,
    )
    return history.to_frame(runs)


def _per_run(table: pd.DataFrame) -> list[str]:
    keep = [c for c in table.columns if c not in ("step", "split", "metric", "value")]
    return keep


def early_slope(table: pd.DataFrame, k: int = 10) -> pd.DataFrame:
    """One row per run: ``slope`` = ||W(k) - W(0)|| / k, the mean update rate over the first k steps.

    Used in: notebooks/02_update_rate.ipynb.
    """
    rows = table[(table.metric == "weight_change") & (table.step == k)]
    if rows.empty:
        raise ValueError(
            f"k={k} is not a recorded step with weight_change; steps run 0..{table.step.max()}."
        )
    out = rows[_per_run(table) + ["value"]].rename(columns={"value": "slope"}).copy()
    out["slope"] = out["slope"] / k
    return out.reset_index(drop=True)


def time_to_accuracy(
    table: pd.DataFrame,
    threshold: float = 0.9,
    metric: str = "reward_accuracy",
    split: str = "train",
) -> pd.DataFrame:
    """One row per run: the first step at which ``metric`` on ``split`` reaches ``threshold``.

    Runs that never reach it get ``steps_to_threshold = NaN`` and ``reached = False``.

    Used in: notebooks/03_training_accuracy.ipynb.
    """
    rows = table[(table.metric == metric) & (table.split == split)]
    if rows.empty:
        raise ValueError(
            f"no rows with metric={metric!r} and split={split!r}; metrics are "
            f"{sorted(table.metric.unique())}, splits {sorted(table.split.unique())}."
        )
    keys = _per_run(table)
    hit = (
        rows[rows.value >= threshold]
        .groupby(keys, sort=False)
        .step.min()
        .rename("steps_to_threshold")
    )
    out = rows[keys].drop_duplicates().merge(hit.reset_index(), on=keys, how="left")
    out["reached"] = out.steps_to_threshold.notna()
    return out.reset_index(drop=True)


def rank_correlation(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation of two equal-length sequences (NaN if either is constant).

    Used in: notebooks/02_update_rate.ipynb, notebooks/03_training_accuracy.ipynb.
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.shape != y.shape or x.size < 3:
        raise ValueError(f"need two sequences of equal length >= 3; got {x.shape} and {y.shape}.")
    return float(spearmanr(x, y).statistic)


# --- prioritisation ---------------------------------------------------------------------------


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
    """Train ``n_pairs`` random two-behaviour mixtures, each twice: full batch and random mini-batches.

    Per pair, behaviour 1 and 2 (gaps drawn from ``gap_range``, cosine between their directions uniform
    on [-1, 1]) are concatenated into one training set. The table has the per-behaviour mean margin and
    loss at every step, the pair's priority gap (:func:`metrics.priority_gap_matrix` on the empirical
    d_1, d_2, so gap > 0 predicts behaviour 1 first) with ||b|| (``mean_direction_norm``) and
    max ||d_k|| (``max_difference_norm``), ``cosine`` and ``batching`` ("full" or
    "minibatch", random unbalanced batches of ``batch_size`` as in the authors' scripts).

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
    """K behaviours for one joint training set; behaviour k's direction has the given cosine with the first.

    ``cosines_to_first[0]`` must be 1. Other directions are cosine * v_1 + sin * (a random unit vector
    orthogonal to v_1), so behaviours k, l > 1 are nearly orthogonal to each other in high dimension.

    Used in: notebooks/04_prioritisation.ipynb.
    """
    if len(mean_gaps) != len(cosines_to_first) or not cosines_to_first or cosines_to_first[0] != 1:
        raise ValueError(
            f"mean_gaps {list(mean_gaps)} and cosines_to_first {list(cosines_to_first)} must "
            "have equal length >= 1, with cosines_to_first[0] == 1."
        )
    v1 = random_direction(dim, run_seed(seed, "joint", 0))
    out = []
    for k, (gap, cos) in enumerate(zip(mean_gaps, cosines_to_first)):
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
    """Train all ``behaviors`` together, once per weighting (one loss weight per behaviour), batched.

    ``weightings`` maps a name to K per-behaviour weights (default ``{"uniform": [1] * K}``); weight w_k
    multiplies the loss of every pair of behaviour k, which in expectation equals re-sampling behaviour
    k w_k times as often. Columns: step, behavior, split ("train"), metric (loss, reward_accuracy,
    output_accuracy, mean_margin), value, seed, weighting, mean_gap.

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
                    for b, x in zip(behaviors, w)
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


# --- misalignment with fixed features -----------------------------------------------------------


@single_threaded
def fixed_feature_flip(
    mean_gap: float = 3.0,
    *,
    dim: int = 64,
    n_per_class: int = 250,
    base_margin: float = 1.0,
    lr: float = 1.0,
    beta: float = 0.01,
    align_steps: int = 100,
    steps: int = 100,
    seed: int = 0,
) -> pd.DataFrame:
    """(D7) with fixed features: align, misalign from the base head, misalign from the aligned head.

    One Gaussian behaviour, full-batch training. The aligned head is u_0 after ``align_steps`` steps on
    the labels. Three runs are then trained for ``steps`` steps in one batch: ``align`` (labels, from
    u_0), ``misalign from base`` (flipped labels, from u_0, reference u_0) and ``misalign from aligned``
    (flipped labels, from and with reference the aligned head). Metrics are measured against the labels
    each run is trained on. Columns: step, behavior, split, metric, value, seed, run.

    Used in: notebooks/05_misalignment.ipynb.
    """
    b = _sample("gaussian", mean_gap, 1.0, seed, n_per_class, dim, "flip")
    u0 = base_margin * random_direction(dim, run_seed(seed, "flip-u0"))
    aligned = linear.train_last_layer(b.features, b.signs, u0, lr=lr, beta=beta, steps=align_steps)
    u_aligned = u0 + 2 * aligned.delta[0]  # u = w_Yes - w_No moves by 2 * Delta (D2)
    names = ["align", "misalign from base", "misalign from aligned"]
    features = b.features.expand(3, -1, -1)
    signs = torch.stack([b.signs, -b.signs, -b.signs])
    history = linear.train_last_layer(
        features, signs, torch.stack([u0, u0, u_aligned]), lr=lr, beta=beta, steps=steps, seed=seed
    )
    table = history.to_frame(
        [dict(run=name, seed=seed, behavior=f"gaussian gap={mean_gap:g}") for name in names]
    )
    return table
