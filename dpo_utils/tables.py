"""Summaries of tidy result tables: one row per run, or a correlation across runs.

Every experiment of the book returns a long table (step, behavior, split, metric, value, seed, plus
descriptors). These helpers read such tables; none of them trains anything.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

__all__ = ["early_slope", "time_to_accuracy", "rank_correlation", "metric_rows", "value_at_step"]


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


def metric_rows(table: pd.DataFrame, metric: str) -> pd.DataFrame:
    """The rows of a tidy table that record ``metric``."""
    return table[table["metric"] == metric]


def value_at_step(
    table: pd.DataFrame, keys: list[str], split: str, metric: str, step: int, name: str
) -> pd.DataFrame:
    """``keys`` plus one column ``name``: each run's ``metric`` on ``split`` at ``step``."""
    rows = table[(table.split == split) & (table.metric == metric) & (table.step == step)]
    if rows.empty:
        raise ValueError(
            f"no {split}/{metric} at step {step}; recorded steps run 0..{table.step.max()}."
        )
    return rows[keys + ["value"]].rename(columns={"value": name})
