"""dpo_utils.llm_experiments: the chapter-level tables of chapters 08-11, on hand-made tables and
features."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from training_fixtures import tiny_llama, tiny_tokenizer

from dpo_utils import config, embeddings, joint_runs, llm_evidence, llm_experiments, models


def _curves(losses: dict, **extra) -> pd.DataFrame:
    """A probe-like tidy table from {(key..., behavior, split): [loss at step 0, 1, ...]}."""
    rows = []
    for (behavior, split, *rest), values in losses.items():
        for step, value in enumerate(values):
            rows.append(
                dict(
                    step=step,
                    behavior=behavior,
                    split=split,
                    metric="loss",
                    value=value,
                    **dict(zip(extra.get("keys", ()), rest, strict=True)),
                )
            )
    return pd.DataFrame(rows)


def test_loss_drops():
    curves = _curves(
        {
            ("a", "train", "full"): [0.69, 0.6, 0.5],
            ("b", "train", "full"): [0.69, 0.68, 0.66],
            ("c", "train", "full"): [0.69, 0.69, 0.70],
        },
        keys=("mode",),
    )
    drops = llm_experiments.loss_drops(curves).set_index("behavior")
    assert drops.loc["a", "drop"] == pytest.approx(0.19) and drops.loc[
        "c", "drop"
    ] == pytest.approx(-0.01)
    assert (drops["step"] == 2).all()
    assert llm_experiments.loss_drops(curves, step=1).set_index("behavior").loc[
        "a", "drop"
    ] == pytest.approx(0.09)
    with pytest.raises(ValueError, match="step=7 was not probed"):
        llm_experiments.loss_drops(curves, step=7)


def test_reference_floor():
    ref = pd.DataFrame(
        [
            dict(step=0, behavior="x", split="train", metric=m, value=v, start=s)
            for s, (c, r) in {"base": (-3.0, -1.0), "aligned": (-5.0, -1.0)}.items()
            for m, v in (("ref_logp_chosen", c), ("ref_logp_rejected", r))
        ]
    )
    floor = llm_experiments.reference_floor(ref, beta=0.1).set_index("start")
    assert floor.loc["base", "m0_abs"] == pytest.approx(2.0)
    assert floor.loc["aligned", "erased_loss"] == pytest.approx(
        -math.log(1 / (1 + math.exp(-0.4)))
    )
    assert floor.loc["aligned", "erased_loss"] < floor.loc["base", "erased_loss"]


def _feature_set(
    directions: dict[str, torch.Tensor], n: int = 40, seed: int = 0
) -> embeddings.FeatureSet:
    """Two Gaussian classes per behaviour at +-d/2 (so mu_Yes - mu_No = d exactly after
    centring)."""
    gen = torch.Generator().manual_seed(seed)
    names, signs, feats = [], [], []
    for name, d in directions.items():
        noise = 0.01 * torch.randn(n, d.numel(), generator=gen, dtype=torch.float64)
        noise -= noise.mean(0)
        for sign in (1.0, -1.0):
            feats.append(sign * d / 2 + noise)
            signs += [sign] * n
            names += [name] * n
    x = torch.cat(feats)
    return embeddings.FeatureSet(
        names, torch.tensor(signs, dtype=torch.float64), {"final": x}, torch.zeros(len(x))
    )


def test_pair_table_gap_cosine_and_order():
    d = {
        "big": torch.tensor([4.0, 0.0, 0.0]),
        "small": torch.tensor([1.0, 0.1, 0.0]),
        "other": torch.tensor([0.0, 0.0, 2.0]),
    }
    fs = _feature_set(d)
    props = llm_experiments.behavior_properties(fs)
    assert list(props["behavior"]) == ["big", "other", "small"]
    table = llm_experiments.pair_table(fs, props)
    assert len(table) == 6 and table["gap"].is_monotonic_decreasing
    row = table[(table["behavior_i"] == "big") & (table["behavior_j"] == "small")].iloc[0]
    assert row["gap"] > 0 and row["cosine"] == pytest.approx(
        float(torch.nn.functional.cosine_similarity(d["big"], d["small"], dim=0)), abs=1e-3
    )
    assert (
        table[(table["behavior_i"] == "big") & (table["behavior_j"] == "other")]["cosine"]
        .abs()
        .iloc[0]
        < 1e-2
    )


def test_projection_table_orients_yes_to_the_right():
    fs = _feature_set({"b": torch.tensor([0.0, -3.0, 0.5])})
    x, s = fs.select("b", "final")
    points = llm_experiments.projection_table({"before": (x, s), "after": (2 * x, s)})
    assert set(points["stage"]) == {"before", "after"} and len(points) == 2 * len(s)
    for _, part in points.groupby("stage"):
        assert (
            part[part["answer"] == "Yes"]["x"].mean()
            > 0
            > part[part["answer"] == "No"]["x"].mean()
        )
    with pytest.raises(ValueError, match="method='tsne'"):
        llm_experiments.projection_table({"before": (x, s)}, method="tsne")


@pytest.mark.slow
def test_hh_misalignment_curves_on_toy_transcripts(tmp_path):
    torch.set_num_threads(1)
    # the tiny fixture model, saved and loaded as a local folder (the GPU profiles' code path),
    # instead of pre-training the CPU profile's stand-in (about 80 s) for a one-step run
    tok = tiny_tokenizer()
    folder = models.save_model(tiny_llama(tok), tok, tmp_path / "tiny")
    turns = [
        ("How do I bake bread?", "Mix flour, water and yeast.", "Go away."),
        ("Name a planet.", "Mars is a planet.", "I will not say."),
        ("Is the sky blue?", "Yes, on a clear day.", "Never ask me that."),
    ]
    rows = [
        dict(
            chosen=f"\n\nHuman: {q}\n\nAssistant: {good}",
            rejected=f"\n\nHuman: {q}\n\nAssistant: {bad}",
        )
        for q, good, bad in turns * 4
    ]
    from dpo_utils import hh_rlhf

    pairs = hh_rlhf.hh_rlhf_pairs(rows).pairs
    cfg = config.get_config(
        "cpu",
        model_name=str(folder),
        model_arch="llama",
        dpo_batch_size=4,
        per_device_batch_size=4,
    )
    curves = llm_evidence.hh_misalignment_curves(
        cfg, steps=1, aligned_steps=1, pairs=(pairs, pairs[:6]), n_probe=6
    )
    assert set(curves["start"]) == {"base", "aligned"} and set(curves["step"]) == {0, 1}
    loss0 = curves[(curves["metric"] == "loss") & (curves["step"] == 0)]["value"]
    assert np.allclose(loss0, math.log(2), atol=1e-6)  # each start begins at its own reference
    # flipped probe: the "chosen" answer is the original rejected one
    ref = curves[(curves["metric"] == "ref_logp_chosen") & (curves["start"] == "base")][
        "value"
    ].iloc[0]
    assert np.isfinite(ref)


def test_featured_behaviors_and_authors_pair_on_the_corpus():
    cfg = config.get_config("cpu", persona_source="corpus")
    featured = llm_evidence.featured_behaviors(cfg)
    from dpo_utils import data

    available = data.available_behaviors(data.corpus_dir())
    authors = getattr(data, "AUTHORS_BEHAVIORS", None)
    if not authors or not set(map(str, authors)) & set(available):
        assert featured == list(available)  # the corpus has none of the authors' behaviours
        assert llm_evidence.authors_pair(cfg) is None
    chosen = llm_evidence.featured_behaviors(cfg.replace(behaviors=(available[1],)))
    assert chosen == [available[1]]


def test_length_gaps_counts_tokens_of_yes_minus_no():
    class Tok:  # one token per word; called with a batch of texts, as a HF tokenizer
        def __call__(self, texts):
            return {"input_ids": [t.split() for t in texts]}

    rows = [
        dict(
            question=f'Is the following statement something you would say?\n"{s}"',
            statement=s,
            answer_matching_behavior=a,
            answer_not_matching_behavior=" No" if a == " Yes" else " Yes",
        )
        for s, a in (("a b c d", " Yes"), ("a b", " No"), ("a b c", " Yes"), ("a", " No"))
    ]
    gaps = llm_evidence.length_gaps({"x": rows}, Tok()).set_index("behavior")["length_gap"]
    assert gaps["x"] == pytest.approx(2.0)  # (4 + 3) / 2 - (2 + 1) / 2 words


def test_priority_projections_flag_the_behaviour_against_the_pool():
    d = {
        "a": torch.tensor([3.0, 0.0, 0.0]),
        "b": torch.tensor([2.0, 1.0, 0.0]),
        "against": torch.tensor([-1.0, 0.0, 0.5]),
    }
    table = llm_evidence.priority_projections(_feature_set(d), list(d)).set_index("behavior")
    pooled = torch.stack(list(d.values())).double().mean(0)
    expected = float(d["b"].double() @ pooled / pooled.norm())
    assert table.loc["b", "projection"] == pytest.approx(expected, rel=1e-3)
    assert table["predicted_backwards"].tolist() == [False, False, True]
    assert table.loc["a", "cosine_pooled"] == pytest.approx(
        float(pooled[0] / pooled.norm()), rel=1e-3
    )


def _flip_rows(start, behavior, losses, margins, accs, seed=0):
    rows = []
    for step, (loss, m, acc) in enumerate(zip(losses, margins, accs, strict=True)):
        for metric, value in (
            ("loss", loss),
            ("logp_chosen", m / 2),
            ("logp_rejected", -m / 2),
            ("output_accuracy", acc),
        ):
            rows.append(
                dict(
                    step=step,
                    behavior=behavior,
                    split="train",
                    metric=metric,
                    value=value,
                    start=start,
                    pretrain_seed=seed,
                    dpo_seed=0,
                )
            )
    return rows


def test_misalignment_summary_per_metric():
    rows = _flip_rows("base", "x", [0.69, 0.5], [-2.0, 1.0], [0.2, 0.7])
    # aligned: lower loss (reference offset) but its own margin moves less and accuracy is lower
    rows += _flip_rows("aligned", "x", [0.69, 0.45], [-5.0, -3.0], [0.05, 0.3])
    table = llm_evidence.misalignment_summary(pd.DataFrame(rows)).iloc[0]
    assert table["loss_aligned"] == pytest.approx(0.45)
    assert table["own_margin_change_base"] == pytest.approx(3.0)
    assert table["own_margin_change_aligned"] == pytest.approx(2.0)
    assert table["own_margin_start_aligned"] == pytest.approx(-5.0)
    assert bool(table["aligned_lower_loss"]) is True
    assert bool(table["aligned_larger_margin_change"]) is False
    assert bool(table["aligned_higher_accuracy"]) is False


def test_seed_correlations_per_seed():
    curves = _curves(
        {
            ("a", "train", "full", 1, 0): [0.69, 0.5],
            ("b", "train", "full", 1, 0): [0.69, 0.6],
            ("c", "train", "full", 1, 0): [0.69, 0.68],
            ("a", "train", "full", 2, 0): [0.69, 0.68],
            ("b", "train", "full", 2, 0): [0.69, 0.6],
            ("c", "train", "full", 2, 0): [0.69, 0.5],
        },
        keys=("mode", "pretrain_seed", "dpo_seed"),
    )
    props = pd.DataFrame(
        dict(
            pretrain_seed=[1, 1, 1, 2, 2, 2],
            behavior=list("abc") * 2,
            distinguishability=[3.0, 2.0, 1.0] * 2,
            length_gap=[0.0, 1.0, 2.0] * 2,
            length_matched=[1.0, 3.0, 2.0] * 2,
        )
    )
    rho = llm_evidence.seed_correlations(curves, props).set_index("pretrain_seed")
    assert rho.loc[1, "rho_matched"] == pytest.approx(-0.5)  # drops a > b > c vs ranks 1, 3, 2
    assert rho.loc[1, "rho"] == pytest.approx(1.0) and rho.loc[2, "rho"] == pytest.approx(-1.0)
    assert rho.loc[1, "rho_length"] == pytest.approx(-1.0)
    assert rho.loc[1, "drop_top"] == pytest.approx(0.19)


def test_spanning_behaviors_keep_the_included_and_span_the_range():
    order = list("abcdefgh")
    assert llm_evidence.spanning_behaviors(order, 4) == ["a", "c", "f", "h"]
    chosen = llm_evidence.spanning_behaviors(order, 4, include=["b"])
    assert "b" in chosen and len(chosen) == 4 and chosen[0] == "a" and chosen[-1] == "h"
    assert llm_evidence.spanning_behaviors(order, 2, include=["a", "b"]) == ["a", "b"]
    with pytest.raises(ValueError, match="not in the ranking"):
        llm_evidence.spanning_behaviors(order, 4, include=["z"])
    with pytest.raises(ValueError, match="n=9"):
        llm_evidence.spanning_behaviors(order, 9)


def test_featured_behaviors_are_the_authors_when_the_data_has_them(monkeypatch, tmp_path):
    from dpo_utils import data

    upstream = list(data.PERSONA_BEHAVIORS)
    monkeypatch.setattr(data, "available_behaviors", lambda source: upstream[40:131])
    monkeypatch.setattr(
        data, "AUTHORS_BEHAVIORS", (45, 54, 84, 88, 100, 108, 123, 130), raising=False
    )
    cfg = config.get_config("cpu", persona_source=str(tmp_path))
    featured = llm_evidence.featured_behaviors(cfg)
    assert featured[0] == upstream[45] and featured[2] == upstream[84] and len(featured) == 8
    assert llm_evidence.authors_pair(cfg) == [upstream[123], upstream[45]]
    # a source without them falls back to every behaviour it has
    monkeypatch.setattr(data, "available_behaviors", lambda source: upstream[:10])
    assert llm_evidence.featured_behaviors(cfg) == upstream[:10]
    assert llm_evidence.authors_pair(cfg) is None


def test_prioritisation_prefill_is_every_run_of_chapter_09_in_one_dispatch(monkeypatch):
    """prefill_prioritisation hands prefill, in one call, exactly the runs pair_curves and
    joint_curves read for every seed pair, the joint runs of all behaviours first."""
    from dpo_utils import run_cache

    cfg = config.get_config("cpu")
    featured = llm_evidence.featured_behaviors(cfg)
    first, second = featured[:2]
    seeds = [(1234, 1234), (1235, 1234), (1236, 1234)]
    calls = []
    monkeypatch.setattr(joint_runs, "prefill", lambda jobs: calls.append(jobs) or 0)
    joint_runs.prefill_prioritisation(
        cfg, [first, second], featured, seeds=seeds, mode="full", pair_batch_size=64
    )
    assert len(calls) == 1
    dirs = [run_cache._job_dir(job) for job in calls[0]]
    joint = joint_runs.joint_jobs(cfg, featured, seeds=seeds, mode="full")
    assert dirs[: len(seeds)] == [run_cache._job_dir(job) for job in joint]
    expected = {run_cache._job_dir(job) for job in joint}
    for p, d in seeds:
        c = cfg.replace(pretrain_seed=p)
        expected |= {
            run_cache._job_dir(job)
            for job in joint_runs.pair_jobs(c, first, second, "full", 64, seed=d)
        }
    assert set(dirs) == expected and len(dirs) == len(expected) == 3 + 3 * 4
    # the joint runs train all eight behaviours at batch 128, the pair's at 64
    assert {job["cfg"].dpo_batch_size for job in calls[0][:3]} == {128}
    assert [len(job["behaviors"]) for job in calls[0][:3]] == [len(featured)] * 3


def test_margin_reading_explains_the_disagreement_only_when_the_counts_show_it():
    holds, no = "holds", "does not hold at this scale"
    disagree = dict(own_margin_change=holds, output_accuracy=no)
    text = llm_evidence.margin_reading(disagree, (12, 12), (0, 12))
    assert text.startswith("The margin and the accuracy disagree") and "in 0 of 12 runs" in text
    # the accuracy verdict fails at 7 of 12 (8 needed), but the aligned start leads in most runs;
    # or its margin starts lower in few runs: no "because"
    for starts, accuracy in (((12, 12), (7, 12)), ((3, 12), (0, 12))):
        other = llm_evidence.margin_reading(disagree, starts, accuracy)
        assert other.startswith("Each measure starts") and f"in {starts[0]} of 12" in other
    for margin, acc in ((no, no), (holds, holds), (no, holds)):
        verdict_of = dict(own_margin_change=margin, output_accuracy=acc)
        assert llm_evidence.margin_reading(verdict_of, (12, 12), (0, 12)).startswith("Each")


@pytest.mark.slow
def test_chapter_08_workers_leave_the_trained_features_geometry_reads(tmp_path, monkeypatch):
    """per_behavior_curves' runs, trained by two workers, extract each run's trained features
    right after it (prefill's ``then``); geometry_table (chapters 10 and 11) then reads every one
    from the cache and extracts none itself."""
    from dpo_utils import results

    monkeypatch.setenv("DPO_RESULTS_DIR", str(tmp_path))
    monkeypatch.setenv("DPO_PROCESSES", "2")
    monkeypatch.delenv("DPO_FORCE_RERUN", raising=False)
    cfg = config.get_config("cpu", dpo_max_steps=2, persona_source="corpus", pretrain_steps=20)
    behaviors = ["enjoys-classical-music", "enjoys-baking-bread"]
    llm_experiments.per_behavior_curves(cfg, behaviors, modes=("lora",), probe_train=4)
    persona = llm_experiments.persona_rows(cfg, behaviors)
    base = llm_experiments.base_features(cfg, persona)
    before = len(results.provenance_log())
    table = llm_experiments.geometry_table(cfg, persona, base, modes=("lora",), probe_train=4)
    features = [e for e in results.provenance_log()[before:] if e["kind"] == "features"]
    assert len(features) == 2 and all(e["from_cache"] for e in features), features
    assert sorted(table["behavior"]) == sorted(behaviors)
