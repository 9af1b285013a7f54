"""dpo_utils.tables: saturation summaries and small-sample intervals on hand-made tables."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from dpo_utils import tables


def test_mean_interval_uses_the_t_quantile():
    values = [1.0, 2.0, 3.0, 4.0, 5.0]
    mean, low, high = tables.mean_interval(values, level=0.95)
    half = 2.7764451051977987 * np.std(values, ddof=1) / math.sqrt(5)  # t_{0.975, 4}
    assert mean == 3.0 and math.isclose(high - mean, half, rel_tol=1e-9)
    assert math.isclose(mean - low, half, rel_tol=1e-9)
    assert math.isclose(
        stats.t.ppf(0.975, 4), 2.7764451051977987, rel_tol=1e-12
    )  # wider than 2 SE
    with pytest.raises(ValueError, match="2 values"):
        tables.mean_interval([1.0])


def _run(values_wc, values_loss, behavior="b"):
    steps = np.arange(len(values_wc))
    rows = [
        dict(step=s, behavior=behavior, split="train", metric=m, value=v, seed=0)
        for m, vals in (("weight_change", values_wc), ("loss", values_loss))
        for s, v in zip(steps, vals, strict=True)
    ]
    return pd.DataFrame(rows)


def test_saturation_measures_early_and_late_rates_and_the_time_to_a_fraction():
    wc = [0, 1, 2, 3, 4, 4.5, 4.75, 4.875, 4.9, 4.9, 4.9]
    loss = [0.7, 0.6, 0.5, 0.45, 0.42, 0.41, 0.405, 0.4, 0.4, 0.4, 0.4]
    row = tables.saturation(_run(wc, loss), early=2, late=4, fraction=0.9).iloc[0]
    assert row.early_slope == pytest.approx(1.0)
    assert row.late_slope == pytest.approx((4.9 - 4.75) / 4)
    assert row.loss_drop == pytest.approx(0.3) and row.final_loss == pytest.approx(0.4)
    assert row.steps_to_fraction == 4  # 0.7 - 0.42 = 0.28 >= 0.27 first at step 4
    with pytest.raises(ValueError, match="early=20"):
        tables.saturation(_run(wc, loss), early=20)
