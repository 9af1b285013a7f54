"""Summaries of tidy result tables: one row per run, or a correlation across runs.

Every experiment of the book returns a long table (step, behavior, split, metric, value, seed, plus
descriptors). These helpers read such tables; none of them trains anything.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy.stats import spearmanr, t

__all__ = [
    "early_slope",
    "mean_interval",
    "saturation",
    "time_to_accuracy",
    "rank_correlation",
    "metric_rows",
    "value_at_step",
]


def _per_run(table: pd.DataFrame) -> list[str]:
    keep = [c for c in table.columns if c not in ("step", "split", "metric", "value")]
    return keep


def early_slope(table: pd.DataFrame, k: int = 10) -> pd.DataFrame:
    """One row per run: ``slope`` = ||W(k) - W(0)|| / k, the mean update rate over k steps.

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


def mean_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): the Student-t confidence interval for the mean of a few seeds.

    Uses the t quantile with n - 1 degrees of freedom (2.78 for n = 5 at 95 %), not 2 standard
    errors, which is too narrow for small n.

    Used in: notebooks/05_misalignment.ipynb.
    """
    x = np.asarray(values, dtype=float)
    if x.size < 2 or not 0 < level < 1:
        raise ValueError(
            f"need >= 2 values and 0 < level < 1; got {x.size} values, level={level}."
        )
    half = t.ppf(0.5 + level / 2, x.size - 1) * x.std(ddof=1) / np.sqrt(x.size)
    return float(x.mean()), float(x.mean() - half), float(x.mean() + half)


def saturation(
    table: pd.DataFrame, early: int = 10, late: int = 100, fraction: float = 0.9
) -> pd.DataFrame:
    """One row per run of a long single-behaviour run: has it left the near-linear regime?

    ``early_slope`` = ||W(early) - W(0)|| / early; ``late_slope`` = (||W(T) - W(0)|| -
    ||W(T - late) - W(0)||) / late, with T the last step; ``final_loss`` and ``loss_drop`` =
    L(0) - L(T) on the training set; ``steps_to_fraction``: first step at which the training loss
    has made ``fraction`` of its final drop.

    Used in: notebooks/02_update_rate.ipynb.
    """
    last = int(table.step.max())
    if not 0 < early <= last or not 0 < late <= last:
        raise ValueError(f"early={early} and late={late} must lie in 1..{last} (the run's steps).")
    keys = _per_run(table)
    rows = []
    for key, part in table[table.split == "train"].groupby(keys, sort=False):
        wc = part[part.metric == "weight_change"].set_index("step").value
        loss = part[part.metric == "loss"].set_index("step").value
        drop = loss[0] - loss[last]
        made = (loss[0] - loss) >= fraction * drop
        rows.append(
            dict(
                zip(keys, key, strict=True),
                early_slope=wc[early] / early,
                late_slope=(wc[last] - wc[last - late]) / late,
                final_loss=loss[last],
                loss_drop=drop,
                steps_to_fraction=int(made.index[made.values].min()),
            )
        )
    return pd.DataFrame(rows)


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

    Used in: notebooks/02_update_rate.ipynb, notebooks/03_training_accuracy.ipynb,
    notebooks/07_last_layer_dpo.ipynb, notebooks/09_prioritisation_llm.ipynb.
    """
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if a.shape != b.shape or a.size < 3:
        raise ValueError(f"need two sequences of equal length >= 3; got {a.shape} and {b.shape}.")
    return float(spearmanr(a, b).statistic)


def metric_rows(table: pd.DataFrame, metric: str) -> pd.DataFrame:
    """The rows of a tidy table that record ``metric``.

    Used by: dpo_utils.llm_experiments.
    """
    return table[table["metric"] == metric]


def value_at_step(
    table: pd.DataFrame, keys: list[str], split: str, metric: str, step: int, name: str
) -> pd.DataFrame:
    """``keys`` plus one column ``name``: each run's ``metric`` on ``split`` at ``step``.

    Used by: dpo_utils.feature_experiments.
    """
    rows = table[(table.split == split) & (table.metric == metric) & (table.step == step)]
    if rows.empty:
        raise ValueError(
            f"no {split}/{metric} at step {step}; recorded steps run 0..{table.step.max()}."
        )
    return rows[keys + ["value"]].rename(columns={"value": name})
