"""Experiment A on model features: the split, u0 from the head, batched == one by one, flipped
labels, and the speed summary and rank correlations on synthetic behaviours of known
distinguishability."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from dpo_utils import data, linear, metrics, models, pretraining
from dpo_utils import feature_experiments as L

ARGS = dict(lr=1.0, beta=0.01, steps=30, batch_size=32)


def _behavior(
    n: int, dim: int, gap: float, seed: int, offset: float = 3.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """n rows (shuffled labels) with class means +-gap/2 along a random direction, around an
    uncentred mean."""
    g = torch.Generator().manual_seed(seed)
    signs = torch.where(torch.rand(n, generator=g) < 0.5, 1.0, -1.0).double()
    direction = torch.randn(dim, generator=g, dtype=torch.float64)
    direction /= direction.norm()
    centre = offset * torch.randn(dim, generator=g, dtype=torch.float64) / math.sqrt(dim)
    features = (
        centre
        + 0.5 * gap * signs[:, None] * direction
        + torch.randn(n, dim, generator=g, dtype=torch.float64)
    )
    return features, signs


@pytest.fixture(scope="module")
def groups():
    return {
        f"b{i}": _behavior(200, 16, gap, seed=i) for i, gap in enumerate([0.0, 1.0, 2.0, 4.0, 8.0])
    }


@pytest.fixture(scope="module")
def u0():
    return 0.3 * torch.randn(16, generator=torch.Generator().manual_seed(99), dtype=torch.float64)


def test_split_follows_the_authors_split_of_the_rows():
    rows = [
        dict(question=f"q{i}", answer_matching_behavior=" Yes" if i % 3 else " No")
        for i in range(50)
    ]
    features = torch.arange(50, dtype=torch.float64)[:, None].repeat(1, 2)
    signs = torch.tensor([1.0 if r["answer_matching_behavior"] == " Yes" else -1.0 for r in rows])
    split = L.split_groups({"b": (features, signs)})["b"]
    train_rows, test_rows = data.split_rows(rows)
    assert [f"q{int(x)}" for x in split["train"][0][:, 0]] == [r["question"] for r in train_rows]
    assert [f"q{int(x)}" for x in split["test"][0][:, 0]] == [r["question"] for r in test_rows]
    assert len(split["train"][1]) == 45 and len(split["test"][1]) == 5
    assert torch.equal(
        split["train"][1],
        torch.tensor(
            [1.0 if r["answer_matching_behavior"] == " Yes" else -1.0 for r in train_rows],
            dtype=torch.float64,
        ),
    )


def test_answer_direction_is_the_heads_yes_minus_no_row_and_gives_the_logit_gap():
    tokenizer = models.train_tokenizer(pretraining.pretraining_text().texts[:1500])
    model = models.tiny_model("llama", tokenizer, seed=3)
    u0 = L.answer_direction(model, tokenizer)
    yes, no = models.answer_token_ids(tokenizer)
    ids = torch.tensor([tokenizer("Is it?\n")["input_ids"]])
    with torch.no_grad():
        out = model(input_ids=ids, output_hidden_states=True)
    e = out.hidden_states[-1][0, -1].double()
    logits = out.logits[0, -1]
    assert u0.dtype == torch.float64 and u0.shape == (model.config.hidden_size,)
    assert abs(float(e @ u0) - float(logits[yes] - logits[no])) < 1e-4


def test_batched_runs_equal_one_by_one(groups, u0):
    table = L.last_layer_experiment(groups, u0, seeds=[0, 1], **ARGS)
    for name in ["b1", "b4"]:
        alone = L.last_layer_experiment({name: groups[name]}, u0, seeds=[1], **ARGS)
        part = table[(table.behavior == name) & (table.seed == 1)].reset_index(drop=True)
        assert len(part) == len(alone)
        np.testing.assert_allclose(part["value"], alone["value"], rtol=1e-12, atol=1e-14)
    # different seeds draw different batches
    b = table[(table.behavior == "b3") & (table.metric == "batch_loss") & (table.step == 5)]
    assert b["value"].nunique() == 2


def test_labels_and_the_growth_bound(groups, u0):
    table = L.last_layer_experiment(groups, u0, seeds=[0], **ARGS)
    split = L.split_groups(groups)
    for name, parts in split.items():
        row = table[table.behavior == name].iloc[0]
        assert row["distinguishability"] == pytest.approx(
            float(metrics.distinguishability(*parts["train"]))
        )
        assert row["max_feature_norm"] == pytest.approx(float(parts["train"][0].norm(dim=1).max()))
    assert set(table.split) == {"train", "test"}
    change = table[table.metric == "weight_change"]
    bound = linear.weight_change_bound(
        change["step"].to_numpy(), ARGS["lr"], ARGS["beta"], change["max_feature_norm"].to_numpy()
    )
    assert (change["value"].to_numpy() <= bound + 1e-12).all()
    start = table[(table.metric == "loss") & (table.step == 0)]
    np.testing.assert_allclose(start["value"], math.log(2.0))


def test_flipped_labels_give_the_same_loss_and_the_complementary_output_accuracy(groups, u0):
    aligned = L.last_layer_experiment(groups, u0, seeds=[0], **ARGS)
    flipped = L.last_layer_experiment(groups, u0, seeds=[0], flip=True, **ARGS)
    assert set(flipped.direction) == {"flipped"} and set(aligned.direction) == {"aligned"}
    for metric in ("loss", "weight_change"):
        a = aligned[aligned.metric == metric]["value"].to_numpy()
        f = flipped[flipped.metric == metric]["value"].to_numpy()
        np.testing.assert_allclose(a, f, rtol=1e-10, atol=1e-13)

    def acc0(t):
        return t[(t.metric == "output_accuracy") & (t.step == 0)]["value"].to_numpy()

    np.testing.assert_allclose(acc0(aligned) + acc0(flipped), 1.0)  # no ties: u0.e != 0 a.s.


def test_unequal_behaviour_sizes_are_trained_in_shape_groups(u0):
    groups = {"small": _behavior(100, 16, 4.0, seed=7), "large": _behavior(300, 16, 4.0, seed=8)}
    table = L.last_layer_experiment(groups, u0, seeds=[0], **ARGS)
    alone = L.last_layer_experiment({"small": groups["small"]}, u0, seeds=[0], **ARGS)
    part = table[table.behavior == "small"].reset_index(drop=True)
    np.testing.assert_allclose(part["value"], alone["value"], rtol=1e-12)
    assert set(table.behavior) == {"small", "large"}


def test_speed_summary_values_and_positive_rank_correlation(groups, u0):
    table = pd.concat(
        [
            L.last_layer_experiment(groups, u0, seeds=[0, 1, 2], flip=flip, **ARGS)
            for flip in (False, True)
        ],
        ignore_index=True,
    )
    summary = L.speed_summary(table, k=10)
    assert len(summary) == 2 * len(groups)
    one = table[(table.behavior == "b4") & (table.direction == "aligned")]
    loss10 = one[(one.split == "train") & (one.metric == "loss") & (one.step == 10)][
        "value"
    ].mean()
    change10 = one[(one.metric == "weight_change") & (one.step == 10)]["value"].mean()
    row = summary[(summary.behavior == "b4") & (summary.direction == "aligned")].iloc[0]
    assert row["drop_early"] == pytest.approx(math.log(2.0) - loss10)
    assert row["slope_early"] == pytest.approx(change10 / 10)
    assert row["output_accuracy_start"] > 0 and row["reached"] == 1.0
    rho = L.speed_correlations(summary)
    assert set(rho.metric) == set(L.SPEED_METRICS) and (rho.n_behaviors == len(groups)).all()
    assert (rho.rho > 0.8).all(), rho  # gaps 0..8: the more distinguishable, the faster


def test_flipped_output_accuracy_reaches_one_half_sooner_when_more_distinguishable():
    # every behaviour along one direction, and a reference head that already prefers the matching
    # answer
    direction = torch.zeros(16, dtype=torch.float64)
    direction[0] = 1.0
    g = torch.Generator().manual_seed(5)
    groups = {}
    for gap in [1.0, 2.0, 4.0, 8.0]:
        signs = torch.tensor([1.0, -1.0] * 100, dtype=torch.float64)
        noise = torch.randn(200, 16, generator=g, dtype=torch.float64)
        groups[f"g{gap:g}"] = (2.0 + 0.5 * gap * signs[:, None] * direction + noise, signs)
    table = L.last_layer_experiment(
        groups, 0.5 * direction, seeds=[0, 1], flip=True, **dict(ARGS, steps=200)
    )
    summary = L.speed_summary(table, k=10).sort_values("distinguishability")
    assert (summary["output_accuracy_start"] < 0.5).all()
    assert (summary["reached"] == 1.0).all()
    assert summary["steps_to_threshold"].is_monotonic_decreasing
    assert summary["steps_to_threshold"].iloc[0] > summary["steps_to_threshold"].iloc[-1]


def test_speed_summary_rejects_a_step_that_was_not_recorded(groups, u0):
    table = L.last_layer_experiment(groups, u0, seeds=[0], **dict(ARGS, steps=5))
    with pytest.raises(ValueError, match="k=10"):
        L.speed_summary(table, k=10)


def _tea_rows_and_tokenizer():
    """Twenty persona rows of one toy behaviour and a tokenizer trained on them."""
    rows = [
        dict(
            question=f'Is the following statement something you would say?\n"I like tea {i}"',
            statement=f"I like tea {i}",
            answer_matching_behavior=" Yes" if i % 2 else " No",
            answer_not_matching_behavior=" No" if i % 2 else " Yes",
        )
        for i in range(20)
    ]
    texts = [r["question"] + "\n" + r["answer_matching_behavior"] for r in rows] * 4
    tokenizer = models.train_tokenizer(texts + ["\n Yes", "\n No"] * 200, 512)
    return rows, tokenizer


def test_last_layer_runs_are_cached_by_model_and_random_init_is_labelled(tmp_path, monkeypatch):
    """Chapter 07's package call: one cached table per model; random init keeps the tokenizer."""
    from dpo_utils import config

    monkeypatch.setenv("DPO_RESULTS_DIR", str(tmp_path))
    monkeypatch.delenv("DPO_FORCE_RERUN", raising=False)
    rows, tokenizer = _tea_rows_and_tokenizer()
    model = models.tiny_model("llama", tokenizer, seed=1)
    model.name_or_path = "stand-in-folder"
    monkeypatch.setattr(L, "load_model_and_tokenizer", lambda cfg, device: (model, tokenizer))
    cfg = config.get_config("cpu", last_layer_steps=3)
    table = L.last_layer_runs(cfg, {"x": rows}, lrs=[1.0], n_seeds=2)
    assert set(table["model"]) == {"pre-trained"} and set(table["seed"]) == {0, 1}
    assert set(table["direction"]) == {"aligned", "flipped"}
    assert not table.attrs["from_cache"]
    again = L.last_layer_runs(cfg, {"x": rows}, lrs=[1.0], n_seeds=2)
    assert again.attrs["from_cache"] and np.allclose(again["value"], table["value"])
    random = L.last_layer_runs(cfg, {"x": rows}, lrs=[1.0], n_seeds=2, random_init=True)
    assert set(random["model"]) == {"random init"} and not random.attrs["from_cache"]
    with pytest.raises(ValueError, match="random_init=True needs a tiny stand-in"):
        L.last_layer_runs(
            cfg.replace(model_name="meta-llama/Llama-2-7b-hf"),
            {},
            lrs=[1.0],
            n_seeds=1,
            random_init=True,
        )


def test_last_layer_sweep_stacks_the_runs_and_reads_cached_ones_without_workers(
    tmp_path, monkeypatch
):
    """Chapter 07's sweep: the tables of last_layer_runs for every stand-in and random_init flag,
    in order; a second sweep dispatches nothing (every table is read from the cache)."""
    from dpo_utils import config

    monkeypatch.setenv("DPO_RESULTS_DIR", str(tmp_path))
    monkeypatch.setenv("DPO_PROCESSES", "2")  # process_map is patched: nothing is spawned
    monkeypatch.delenv("DPO_FORCE_RERUN", raising=False)
    rows, tokenizer = _tea_rows_and_tokenizer()
    stand_ins = {}
    for seed in (1, 2):
        stand_ins[seed] = models.tiny_model("llama", tokenizer, seed=seed)
        stand_ins[seed].name_or_path = f"stand-in-{seed}"
    monkeypatch.setattr(
        L,
        "load_model_and_tokenizer",
        lambda cfg, device: (stand_ins[cfg.pretrain_seed], tokenizer),
    )
    dispatched = []
    real_map = L.process_map  # run here, in this process: workers would not see the patches
    monkeypatch.setattr(
        L, "process_map", lambda f, jobs, n: dispatched.append(len(jobs)) or real_map(f, jobs, 1)
    )
    cfg = config.get_config("cpu", last_layer_steps=3)
    grid = dict(pretrain_seeds=[1, 2], random_inits=(False, True), lrs=[1.0], n_seeds=1)
    table = L.last_layer_sweep(cfg, {"x": rows}, **grid)
    assert dispatched == [4]
    order = table[["pretrain_seed", "model"]].drop_duplicates().values.tolist()
    assert order == [
        [1, "pre-trained"],
        [1, "random init"],
        [2, "pre-trained"],
        [2, "random init"],
    ]
    alone = L.last_layer_runs(cfg.replace(pretrain_seed=2), {"x": rows}, lrs=[1.0], n_seeds=1)
    part = table[(table["pretrain_seed"] == 2) & (table["model"] == "pre-trained")]
    assert np.array_equal(part["value"].to_numpy(), alone["value"].to_numpy())
    again = L.last_layer_sweep(cfg, {"x": rows}, **grid)
    assert dispatched == [4, 0]
    pd.testing.assert_frame_equal(again, table)
    monkeypatch.setenv("DPO_PROCESSES", "1")  # one process: no cached-only pass, no dispatch
    once = L.last_layer_sweep(cfg, {"x": rows}, **grid)
    assert dispatched == [4, 0] and once.equals(table)
    with pytest.raises(ValueError, match="give no run"):
        L.last_layer_sweep(cfg, {"x": rows}, **dict(grid, pretrain_seeds=[]))
