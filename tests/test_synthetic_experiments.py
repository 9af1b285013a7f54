"""dpo_utils.synthetic_experiments and dpo_utils.feature_models: identities, batched == one by one,
errors."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from dpo_utils import feature_models, linear, priority_experiments, synthetic_experiments, tables

SMALL = dict(n_per_class=40, dim=8, lr=1.0, beta=0.05, steps=6, batch_size=16)


def _values(table, **labels):
    part = table
    for k, v in labels.items():
        part = part[part[k] == v]
    return part.sort_values(["split", "metric", "step"]).value.to_numpy()


def test_batched_sweep_equals_runs_one_by_one():
    grid = dict(
        families=["gaussian", "weibull"], mean_gaps=[0.5, 2.0], spreads=[1.0, 2.0], seeds=[0, 3]
    )
    batched = synthetic_experiments.sweep_behaviors(
        **grid, base_margin=0.5, n_test_per_class=10, **SMALL
    )
    assert batched.groupby(["family", "mean_gap", "spread", "seed"]).ngroups == 16
    for family in grid["families"]:
        for gap in grid["mean_gaps"]:
            for spread in grid["spreads"]:
                for seed in grid["seeds"]:
                    single = synthetic_experiments.sweep_behaviors(
                        [family],
                        [gap],
                        [spread],
                        [seed],
                        base_margin=0.5,
                        n_test_per_class=10,
                        **SMALL,
                    )
                    labels = dict(family=family, mean_gap=gap, spread=spread, seed=seed)
                    np.testing.assert_allclose(
                        _values(batched, **labels),
                        _values(single, **labels),
                        rtol=1e-12,
                        atol=1e-15,
                    )


def test_full_batch_first_step_is_proportional_to_distinguishability():
    table = synthetic_experiments.sweep_behaviors(
        ["gaussian", "laplace"], [0.5, 1, 3], [1.0, 2.0], [0, 1], **dict(SMALL, batch_size=None)
    )
    slope = tables.early_slope(table, k=1)
    expected = SMALL["lr"] * SMALL["beta"] / (2 * math.sqrt(2)) * slope.distinguishability
    np.testing.assert_allclose(slope.slope, expected, rtol=1e-10)  # (D3), balanced full batch
    assert tables.rank_correlation(slope.distinguishability, slope.slope) == pytest.approx(1.0)


def test_sweep_tidy_columns_and_reward_accuracy_starts_at_zero():
    table = synthetic_experiments.sweep_behaviors(
        ["gaussian"], [2.0], seeds=[0], base_margin=1.0, **SMALL
    )
    for col in [
        "step",
        "behavior",
        "split",
        "metric",
        "value",
        "seed",
        "family",
        "mean_gap",
        "spread",
    ]:
        assert col in table.columns
    assert (table[(table.step == 0) & (table.metric == "reward_accuracy")].value == 0).all()
    wc = table[table.metric == "weight_change"]
    bound = linear.weight_change_bound(
        wc.step.to_numpy(), SMALL["lr"], SMALL["beta"], wc.max_feature_norm.to_numpy()
    )
    assert np.all(wc.value.to_numpy() <= bound + 1e-12)  # (D4)


def test_sweep_rejects_unknown_family_naming_the_allowed_ones():
    with pytest.raises(ValueError, match=r"\['cauchy'\].*gaussian"):
        synthetic_experiments.sweep_behaviors(["cauchy"], [1.0], **SMALL)


def test_early_slope_and_time_to_accuracy_on_a_hand_made_table():
    table = pd.DataFrame(
        {
            "step": [0, 1, 2, 3] * 2,
            "behavior": ["a"] * 4 + ["b"] * 4,
            "split": "train",
            "metric": "reward_accuracy",
            "value": [0, 0.5, 0.92, 0.95, 0, 0.3, 0.6, 0.8],
            "seed": 0,
        }
    )
    times = tables.time_to_accuracy(table, 0.9).set_index("behavior")
    assert times.loc["a", "steps_to_threshold"] == 2 and times.loc["a", "reached"]
    assert math.isnan(times.loc["b", "steps_to_threshold"]) and not times.loc["b", "reached"]
    with pytest.raises(ValueError, match="metric='loss'"):
        tables.time_to_accuracy(table, 0.9, metric="loss")
    wc = table.assign(metric="weight_change", value=[0, 1, 2, 6, 0, 2, 4, 6])
    slopes = tables.early_slope(wc, k=3).set_index("behavior").slope
    assert slopes.to_dict() == {"a": 2.0, "b": 2.0}
    with pytest.raises(ValueError, match="k=7"):
        tables.early_slope(wc, k=7)


def test_rank_correlation_known_values_and_errors():
    assert tables.rank_correlation([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert tables.rank_correlation([1, 2, 3, 4], [4, 1, 0, -3]) == pytest.approx(-1.0)
    assert tables.rank_correlation([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    with pytest.raises(ValueError, match="equal length"):
        tables.rank_correlation([1, 2, 3], [1, 2])


def test_priority_pairs_full_batch_step_one_is_exact():
    table = priority_experiments.priority_pairs(
        24, dim=8, n_per_class=30, lr=1.0, beta=0.1, steps=3, batch_size=16, seed=2
    )
    agree = priority_experiments.priority_agreement(table, 1, "full")
    assert agree.agree.all()  # (D6): the sign of the gap decides step 1, with no exception
    one = table[(table.batching == "full") & (table.step == 1) & (table.metric == "mean_margin")]
    wide = one.pivot_table(
        index=["pair", "priority_gap", "mean_direction_norm", "max_difference_norm"],
        columns="behavior",
        values="value",
    ).reset_index()
    predicted = (
        0.1**2 / 4 * wide.mean_direction_norm * wide.max_difference_norm * wide.priority_gap
    )
    np.testing.assert_allclose(
        wide["behavior 1"] - wide["behavior 2"], predicted, rtol=1e-9, atol=1e-15
    )
    assert set(table.batching) == {"full", "minibatch"}
    with pytest.raises(ValueError, match="batching='other'"):
        priority_experiments.priority_agreement(table, 1, "other")


def test_joint_training_weights_are_scale_free_and_validated():
    behaviors = priority_experiments.joint_behaviors(
        [3, 2, 1], [1, -0.5, 0.2], dim=8, n_per_class=30
    )
    d = priority_experiments.difference_vectors(behaviors)
    cos = torch.nn.functional.cosine_similarity(d[0], d[1], dim=0)
    assert float(cos) < 0  # the conflicting direction survives sampling
    table = priority_experiments.joint_training(
        behaviors,
        {"one": [1, 1, 1], "two": [2, 2, 2], "tilt": [1, 1, 3]},
        lr=1.0,
        beta=0.05,
        steps=5,
        batch_size=None,
    )
    one = table[table.weighting == "one"].value.to_numpy()
    np.testing.assert_allclose(table[table.weighting == "two"].value.to_numpy(), one, rtol=1e-12)
    margin = table[(table.metric == "mean_margin") & (table.step == 5)].pivot(
        index="weighting", columns="behavior", values="value"
    )
    assert margin.loc["tilt", "behavior 3"] > margin.loc["one", "behavior 3"]
    with pytest.raises(ValueError, match="3 positive weights"):
        priority_experiments.joint_training(behaviors, {"bad": [1, 1]}, steps=1)
    with pytest.raises(ValueError, match="cosines_to_first"):
        priority_experiments.joint_behaviors([1, 2], [0.5, 1])


def test_fixed_feature_flip_curves_coincide():
    table = synthetic_experiments.fixed_feature_flip(
        2.0, dim=8, n_per_class=30, lr=1.0, beta=0.1, align_steps=5, steps=5
    )
    wide = table.pivot_table(index=["split", "metric", "step"], columns="run", values="value")
    for metric in ["loss", "reward_accuracy", "mean_margin", "weight_change"]:
        block = wide.xs(metric, level="metric")
        np.testing.assert_allclose(
            block["misalign from base"], block["align"], rtol=1e-10, atol=1e-14
        )
        np.testing.assert_allclose(
            block["misalign from aligned"], block["align"], rtol=1e-10, atol=1e-14
        )
    out = wide.xs("output_accuracy", level="metric")
    assert not np.allclose(out["misalign from aligned"], out["misalign from base"])


def test_feature_model_gradient_step_matches_finite_differences():
    x = torch.randn(1, 20, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    s = torch.tensor([1.0, -1.0] * 10, dtype=torch.float64)[None]
    model = feature_models.init_feature_model(1, 3, 4, [5])
    moved = feature_models.init_feature_model(1, 3, 4, [6])
    ref = feature_models.FeatureModel(model.A, model.u)
    beta, eps = 0.5, 1e-6

    def loss(m):
        z = torch.einsum("snh,sh->sn", feature_models.features(m, x), m.u)
        z0 = torch.einsum("snh,sh->sn", feature_models.features(ref, x), ref.u)
        return float(torch.nn.functional.softplus(-beta * s * (z - z0)).mean())

    start = feature_models.FeatureModel(0.5 * (model.A + moved.A), 0.5 * (model.u + moved.u))
    lr = 1e-3
    trained, _ = feature_models.train_dpo(start, x, s, lr=lr, beta=beta, steps=1, ref=ref)
    # one step of gradient descent: trained = start - lr * grad; compare with central differences
    grad_u = (start.u - trained.u) / lr
    for j in range(4):
        plus, minus = start.u.clone(), start.u.clone()
        plus[0, j] += eps
        minus[0, j] -= eps
        fd = (
            loss(feature_models.FeatureModel(start.A, plus))
            - loss(feature_models.FeatureModel(start.A, minus))
        ) / (2 * eps)
        assert grad_u[0, j].item() == pytest.approx(fd, rel=1e-5, abs=1e-9)


def test_misalignment_experiment_batched_seeds_equal_single_seeds_and_helps_distinguishability():
    params = dict(
        d_in=6,
        hidden=8,
        n_per_class=40,
        mean_gap=2.0,
        lr=1.0,
        beta=0.2,
        align_steps=8,
        misalign_steps=4,
        n_test_per_class=20,
    )
    both = synthetic_experiments.misalignment_experiment([0, 1], **params)
    for seed in (0, 1):
        single = synthetic_experiments.misalignment_experiment([seed], **params)
        a = (
            both[both.seed == seed]
            .sort_values(["phase", "start", "split", "metric", "step"])
            .value.to_numpy()
        )
        b = single.sort_values(["phase", "start", "split", "metric", "step"]).value.to_numpy()
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
    mis = both[(both.phase == "misalign") & (both.metric == "loss") & (both.step == 0)]
    np.testing.assert_allclose(
        mis.value, math.log(2), rtol=1e-12
    )  # both starts: policy == reference
    dist = both[
        (both.phase == "align") & (both.metric == "distinguishability") & (both.split == "train")
    ]
    first = dist[dist.step == 0].set_index("seed").value
    last = dist[dist.step == dist.step.max()].set_index("seed").value
    assert (last > first).all()
    loss = both[(both.phase == "align") & (both.metric == "loss") & (both.split == "train")]
    assert (loss[loss.step == 8].value.to_numpy() < math.log(2)).all()


def test_feature_model_rejects_bad_arguments():
    with pytest.raises(ValueError, match="n_seeds=2"):
        feature_models.init_feature_model(2, 3, 4, [0])
    model = feature_models.init_feature_model(1, 3, 4, [0])
    x, s = (
        torch.zeros(1, 2, 3, dtype=torch.float64),
        torch.tensor([[1.0, -1.0]], dtype=torch.float64),
    )
    with pytest.raises(ValueError, match="lr=0"):
        feature_models.train_dpo(model, x, s, lr=0, beta=0.1, steps=1)


def test_update_rate_explorable_table_and_first_step_ordering():
    gaps = [0.5, 2.0, 8.0]
    table = synthetic_experiments.update_rate_explorable(gaps, seeds=[0, 1], **SMALL)
    assert list(table.columns) == [
        "mean_gap",
        "distinguishability",
        "seed",
        "step",
        "metric",
        "value",
    ]
    assert set(table.metric) == {"loss", "weight_change"}
    # one row per gap, seed, step 0..steps and metric
    assert len(table) == len(gaps) * 2 * (SMALL["steps"] + 1) * 2
    first = table[(table.metric == "weight_change") & (table.step == 1)]
    by_gap = first.groupby("mean_gap").value.mean()
    # (D3): the first step grows with the mean gap; gaps a factor 4 apart, so strictly ordered
    assert by_gap.is_monotonic_increasing and by_gap.is_unique
    # every run starts at ln 2 with no weight change
    start = table[table.step == 0]
    assert np.allclose(start[start.metric == "loss"].value, math.log(2))
    assert np.allclose(start[start.metric == "weight_change"].value, 0.0)


def test_update_rate_explorable_needs_two_distinct_gaps():
    with pytest.raises(ValueError, match="at least two distinct"):
        synthetic_experiments.update_rate_explorable([1.0, 1.0], **SMALL)
