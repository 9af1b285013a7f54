"""Chapter 04's three-behaviour case: construction, exact first step, predicted end, saturation."""

import math

import numpy as np
import pytest
import torch

from dpo_utils import priority_experiments as pe

COSINES = [[1.0, -0.7, -0.7], [-0.7, 1.0, 0.8], [-0.7, 0.8, 1.0]]


def test_behaviors_with_cosines_have_the_requested_angles():
    behaviors = pe.behaviors_with_cosines([5.0, 4.0, 4.0], COSINES, dim=16, spread=1e-9, seed=3)
    d = pe.difference_vectors(behaviors)
    unit = d / d.norm(dim=1, keepdim=True)
    assert torch.allclose(unit @ unit.T, torch.tensor(COSINES, dtype=d.dtype), atol=1e-6)
    assert torch.allclose(d.norm(dim=1), torch.tensor([5.0, 4.0, 4.0], dtype=d.dtype))
    with pytest.raises(ValueError, match="positive definite"):
        pe.behaviors_with_cosines([1, 1], [[1, 1.5], [1.5, 1]], dim=4)
    with pytest.raises(ValueError, match="symmetric"):
        pe.behaviors_with_cosines([1, 1], [[1, 0.5], [0.2, 1]], dim=4)


def test_first_step_gains_are_the_full_batch_step_one_margins():
    behaviors = pe.behaviors_with_cosines([3.0, 2.0, 2.0], COSINES, dim=8, n_per_class=40)
    d = pe.difference_vectors(behaviors)
    table = pe.joint_training(behaviors, lr=2.0, beta=0.1, steps=1, batch_size=None)
    step1 = table[(table.step == 1) & (table.metric == "mean_margin")].set_index("behavior")
    measured = step1.value.loc[["behavior 1", "behavior 2", "behavior 3"]].to_numpy()
    np.testing.assert_allclose(measured, pe.first_step_gains(d, 2.0, 0.1).numpy(), rtol=1e-10)


def test_population_optimum_of_one_behaviour_is_its_bayes_accuracy():
    one = pe.population_optimum([2.0], [[1.0]], spread=1.5)
    assert math.isclose(one.joint_optimum_accuracy[0], one.ceiling[0], rel_tol=1e-9)
    two = pe.population_optimum([3.0, 3.0], [[1.0, 0.0], [0.0, 1.0]])
    assert math.isclose(two.joint_optimum_accuracy[0], two.joint_optimum_accuracy[1], rel_tol=1e-6)
    assert (two.joint_optimum_accuracy < two.ceiling).all()  # orthogonal behaviours share one u


def test_chapter_04_saturation_picture():
    """The chapter's three-behaviour run, with the thresholds the chapter fixed before running
    it."""
    behaviors = pe.behaviors_with_cosines([5.0, 4.0, 4.0], COSINES, dim=64, seed=1234)
    d = pe.difference_vectors(behaviors)
    gains = pe.first_step_gains(d, 100.0, 0.01)
    assert int(d.norm(dim=1).argmax()) == 0 and gains[0] < 0 < gains[1:].min()
    table = pe.joint_training(behaviors, lr=100.0, beta=0.01, steps=2000, batch_size=None)
    ceilings = pe.population_optimum([5.0, 4.0, 4.0], COSINES).set_index("behavior").ceiling
    s = pe.saturation_summary(table, ceilings.to_dict(), 0.6, 50, 500).set_index("behavior")
    b1, leaders = "behavior 1", ["behavior 2", "behavior 3"]
    margin_10 = table[
        (table.behavior == b1) & (table.metric == "mean_margin") & (table.step == 10)
    ].value.iloc[0]
    assert margin_10 < 0 and s.loc[b1, "reward_accuracy_step_1"] < 0.5  # goes backwards
    assert (s.loc[leaders, "late_loss_rate"] < 0.02 * s.loc[leaders, "early_loss_rate"]).all()
    assert s.loc[b1, "final_reward_accuracy"] >= s.loc[b1, "reward_accuracy_step_1"] + 0.2
    assert s.loc[b1, "final_margin"] > 0  # catches up
    leader_rows = s.loc[leaders]
    assert (
        leader_rows.final_reward_accuracy <= leader_rows.max_reward_accuracy - 0.03
    ).all()  # the leaders pay
    assert s.final_reward_accuracy.idxmin() == b1
    assert s.steps_to_fraction.notna().all()
    assert s.steps_to_fraction[b1] > s.steps_to_fraction[leaders].max()
