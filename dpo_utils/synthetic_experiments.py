"""Experiments of the theory chapters on synthetic features, each returning a tidy table.

Chapters 01-03 and 05 (chapter 04's prioritisation runs are in
:mod:`dpo_utils.priority_experiments`). Every function builds synthetic behaviours
(:mod:`dpo_utils.synthetic`), trains the exact last-layer DPO trainer
(:func:`dpo_utils.linear.train_last_layer`) on all of them as one batched computation, and returns
a long table with columns ``step, behavior, split, metric, value, seed`` plus descriptors
(``family``, ``mean_gap``, ``spread``, ``distinguishability``, ...). Small summary helpers turn
those tables into one row per run (:mod:`dpo_utils.tables`).

Each behaviour's data and batch order depend only on its own labels (family, gap, spread, seed),
never on its position in a sweep, so a sweep run in one batch equals the same runs made one by one.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import torch

from . import linear, metrics, synthetic
from .feature_models import init_feature_model, train_dpo
from .runtime import run_seed, single_threaded
from .synthetic import random_direction

__all__ = [
    "sweep_behaviors",
    "update_rate_explorable",
    "fixed_feature_flip",
    "misalignment_experiment",
]


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
    accuracy starts at a base rate while reward accuracy starts at 0. ``n_test_per_class`` > 0 adds
    a held-out ``test`` split from the same distributions. Columns: step, behavior, split, metric,
    value, seed, family, mean_gap, spread, distinguishability (empirical, training set),
    max_feature_norm.

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


def update_rate_explorable(
    mean_gaps: Sequence[float],
    seeds: Sequence[int] = (0, 1, 2),
    *,
    family: str = "gaussian",
    lr: float,
    beta: float,
    steps: int,
    n_per_class: int = 250,
    dim: int = 64,
    batch_size: int | None = 128,
) -> pd.DataFrame:
    """The curves behind chapter 02's slider: for each mean gap (one slider position), the DPO
    loss and the weight change ``||W(t) - W(0)||`` at every step of every seed, from the exact
    two-row last-layer trainer on one tail family.

    Returns one row per (mean_gap, seed, step, metric) with metric in {"loss", "weight_change"}
    (train split), plus ``distinguishability`` (the run's empirical value); the weight change at
    step 1 is the first step's.

    Used in: notebooks/02_update_rate.ipynb.
    """
    if len(mean_gaps) < 2 or len(set(mean_gaps)) != len(mean_gaps):
        raise ValueError(
            f"mean_gaps={list(mean_gaps)!r}: a slider needs at least two distinct values."
        )
    table = sweep_behaviors(
        families=(family,),
        mean_gaps=mean_gaps,
        seeds=seeds,
        n_per_class=n_per_class,
        dim=dim,
        lr=lr,
        beta=beta,
        steps=steps,
        batch_size=batch_size,
    )
    keep = (table["split"] == "train") & table["metric"].isin(["loss", "weight_change"])
    columns = ["mean_gap", "distinguishability", "seed", "step", "metric", "value"]
    return table.loc[keep, columns].reset_index(drop=True)


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
    """(D7) with fixed features: align, misalign from the base head, misalign from the aligned
    head.

    One Gaussian behaviour, full-batch training. The aligned head is u_0 after ``align_steps``
    steps on the labels. Three runs are then trained for ``steps`` steps in one batch: ``align``
    (labels, from u_0), ``misalign from base`` (flipped labels, from u_0, reference u_0) and
    ``misalign from aligned`` (flipped labels, from and with reference the aligned head). Metrics
    are measured against the labels each run is trained on. Columns: step, behavior, split, metric,
    value, seed, run.

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


# --- a model whose features move (chapter 05) --------------------------------------------


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
    """Align a base model by DPO, then misalign (flipped labels) both the base and the aligned
    model.

    Phases, each a tidy block with column ``phase``: ``align`` (base model trained on the labels,
    ref = base); ``misalign`` with ``start`` = ``base`` (ref = base) and ``aligned`` (ref = aligned
    model), both trained on flipped labels for ``misalign_steps``. Metrics per step and split
    (train, test): loss, reward_accuracy, output_accuracy, mean_margin (all w.r.t. the labels being
    trained on) and distinguishability of the features e(x). Columns: step, behavior, split,
    metric, value, seed, phase, start.

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
    aligned, rows_align = train_dpo(
        base,
        x,
        signs,
        steps=align_steps,
        eval_sets={"train": (x, signs), "test": (xt, st)},
        lr=lr,
        beta=beta,
    )
    flipped = {"train": (x, -signs), "test": (xt, -st)}
    _, rows_base = train_dpo(
        base, x, -signs, steps=misalign_steps, eval_sets=flipped, lr=lr, beta=beta
    )
    _, rows_aligned = train_dpo(
        aligned, x, -signs, steps=misalign_steps, eval_sets=flipped, lr=lr, beta=beta
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
