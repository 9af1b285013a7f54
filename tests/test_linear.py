import math

import numpy as np
import pytest
import torch

from dpo_utils import full_vocab, linear, synthetic
from dpo_utils.config import ConfigError


def _problem(n_per_class=60, dim=12, vocab=40, gap=2.0, seed=0, dtype=torch.float64):
    b = synthetic.sample_behavior(
        n_per_class, dim, gap, spread=1.0, seed=seed, center=torch.full((dim,), 0.5), dtype=dtype
    )
    weight = torch.randn(
        vocab, dim, generator=torch.Generator().manual_seed(seed + 1), dtype=dtype
    )
    return b.features, b.signs, weight


@pytest.mark.parametrize("batch_size", [None, 32])
def test_two_row_trainer_equals_full_vocabulary_head_over_100_steps(batch_size):
    feats, signs, weight = _problem()
    yes, no = 7, 3
    head, table = full_vocab.train_full_vocab(
        feats, signs, weight, yes, no, lr=0.5, beta=0.1, steps=100, batch_size=batch_size, seed=4
    )
    hist = linear.train_last_layer(
        feats,
        signs,
        weight[yes] - weight[no],
        lr=0.5,
        beta=0.1,
        steps=100,
        batch_size=batch_size,
        seed=4,
    )
    delta = hist.delta[0]
    assert torch.allclose(head[yes] - weight[yes], delta, atol=1e-6)
    assert torch.allclose(head[no] - weight[no], -delta, atol=1e-6)
    for metric in ("loss", "reward_accuracy", "output_accuracy"):
        assert np.allclose(table[metric], hist.metrics[("train", metric)][0], atol=1e-6), metric
    assert np.allclose(
        table["weight_change"], hist.metrics[("train", "weight_change")][0], atol=1e-6
    )
    assert table["loss"].iloc[-1] < table["loss"].iloc[0] - 1e-3  # it learned something


def test_only_the_two_answer_rows_move_and_their_changes_are_opposite():
    feats, signs, weight = _problem(dtype=torch.float32)
    yes, no = 5, 9
    head, _ = full_vocab.train_full_vocab(
        feats.float(), signs, weight, yes, no, lr=1.0, beta=0.05, steps=20, batch_size=16, seed=0
    )
    others = [v for v in range(weight.shape[0]) if v not in (yes, no)]
    assert torch.equal(head[others], weight[others])  # bit-identical under plain SGD
    assert torch.allclose(head[yes] - weight[yes], -(head[no] - weight[no]), atol=1e-6)
    assert (head[yes] - weight[yes]).norm() > 1e-3
    change = head - weight
    assert math.isclose(
        float(torch.linalg.matrix_norm(change, ord=2)),
        float(torch.linalg.norm(change)),
        rel_tol=1e-5,
    )  # rank one: operator norm == Frobenius norm


def test_first_step_has_the_predicted_size_on_the_drawn_batch():
    feats, signs, weight = _problem(n_per_class=100)
    lr, beta = 0.3, 0.02
    gen = torch.Generator().manual_seed(11)
    idx = linear.batch_indices(gen, signs[None], 64)[0]
    predicted = linear.first_step_change(feats[idx], signs[idx], lr, beta)
    hist = linear.train_last_layer(feats, signs, lr=lr, beta=beta, steps=1, batch_size=64, seed=11)
    measured = hist.metrics[("train", "weight_change")][0, 1]
    assert math.isclose(measured, float(predicted), rel_tol=1e-10)


def test_full_batch_first_step_is_set_by_distinguishability_on_balanced_data():
    feats, signs, _ = _problem(n_per_class=80, gap=3.0)
    lr, beta = 1.0, 0.01
    hist = linear.train_last_layer(feats, signs, lr=lr, beta=beta, steps=1)
    mu_yes, mu_no = feats[signs > 0].mean(0), feats[signs < 0].mean(0)
    expected = lr * beta / (2 * math.sqrt(2)) * float((mu_yes - mu_no).norm())
    assert math.isclose(hist.metrics[("train", "weight_change")][0, 1], expected, rel_tol=1e-10)


def test_runs_are_independent_batched_equals_one_by_one():
    gaps = [0.5, 1.0, 2.0]
    behaviours = [synthetic.sample_behavior(40, 8, g, seed=i) for i, g in enumerate(gaps)]
    feats, signs = synthetic.stack_behaviors(behaviours)
    seeds = [3, 4, 5]
    batched = linear.train_last_layer(
        feats, signs, lr=2.0, beta=0.1, steps=15, batch_size=16, seed=seeds
    )
    for r, b in enumerate(behaviours):
        alone = linear.train_last_layer(
            b.features, b.signs, lr=2.0, beta=0.1, steps=15, batch_size=16, seed=seeds[r]
        )
        assert torch.allclose(batched.delta[r], alone.delta[0], atol=1e-12)
        assert np.allclose(
            batched.metrics[("train", "loss")][r], alone.metrics[("train", "loss")][0]
        )


def test_reward_accuracy_starts_at_zero_and_output_accuracy_at_the_base_rate():
    feats, signs, weight = _problem()
    u0 = weight[1] - weight[2]
    hist = linear.train_last_layer(feats, signs, u0, lr=1.0, beta=0.1, steps=3)
    assert hist.metrics[("train", "reward_accuracy")][0, 0] == 0.0
    base_rate = float(((signs * (feats @ u0)) > 0).double().mean())
    assert hist.metrics[("train", "output_accuracy")][0, 0] == pytest.approx(base_rate)
    assert hist.metrics[("train", "loss")][0, 0] == pytest.approx(math.log(2))


def test_weight_change_stays_under_the_linear_bound():
    feats, signs, _ = _problem(gap=4.0)
    hist = linear.train_last_layer(feats, signs, lr=5.0, beta=0.1, steps=50, batch_size=32, seed=0)
    bound = linear.weight_change_bound(hist.steps, 5.0, 0.1, float(feats.norm(dim=1).max()))
    assert np.all(hist.metrics[("train", "weight_change")][0] <= bound + 1e-12)


def test_tidy_frame_has_one_row_per_run_step_split_metric():
    feats, signs = synthetic.stack_behaviors(
        [synthetic.sample_behavior(10, 4, 1.0, seed=s) for s in (0, 1)]
    )
    hist = linear.train_last_layer(feats, signs, lr=1.0, beta=0.1, steps=4)
    frame = hist.to_frame([{"behavior": "a", "seed": 0}, {"behavior": "b", "seed": 0}])
    assert set(frame.columns) == {"behavior", "seed", "step", "split", "metric", "value"}
    assert len(frame) == 2 * 5 * len(hist.metrics)
    assert frame.groupby(["behavior", "step", "split", "metric"]).size().max() == 1


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(lr=0.0), "lr=0.0"),
        (dict(beta=-1.0), "beta=-1.0"),
        (dict(steps=0), "steps=0"),
        (dict(batch_size=0), "batch_size=0"),
    ],
)
def test_bad_training_arguments_are_rejected(kwargs, match):
    feats, signs, _ = _problem(n_per_class=5, dim=3)
    args = dict(lr=1.0, beta=0.1, steps=2) | kwargs
    with pytest.raises(ConfigError, match=match):
        linear.train_last_layer(feats, signs, **args)


def test_bad_signs_are_rejected():
    feats, signs, _ = _problem(n_per_class=5, dim=3)
    with pytest.raises(ValueError, match=r"signs must be \+1"):
        linear.train_last_layer(feats, signs * 2, lr=1.0, beta=0.1, steps=1)


def test_training_in_cache_sized_groups_gives_the_same_runs():
    behaviours = [
        synthetic.sample_behavior(30, 6, g, seed=i)
        for i, g in enumerate([0.5, 1.0, 2.0, 3.0, 4.0])
    ]
    feats, signs = synthetic.stack_behaviors(behaviours)
    test_sets = {"train": (feats, signs), "test": (feats.flip(1), signs.flip(1))}
    common = dict(
        lr=2.0,
        beta=0.1,
        steps=8,
        batch_size=16,
        seed=[7, 8, 9, 10, 11],
        eval_sets=test_sets,
        keep_deltas=True,
    )
    whole = linear.train_last_layer(feats, signs, chunk_bytes=None, **common)
    per_run_bytes = feats[0].numel() * feats.element_size()
    grouped = linear.train_last_layer(
        feats, signs, chunk_bytes=2 * per_run_bytes, **common
    )  # groups of 2
    assert torch.equal(whole.delta, grouped.delta) and torch.equal(whole.deltas, grouped.deltas)
    assert whole.metrics.keys() == grouped.metrics.keys()
    for key in whole.metrics:
        assert np.array_equal(whole.metrics[key], grouped.metrics[key]), key
