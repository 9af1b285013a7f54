"""run_cache.load_or_train: a saved run is loaded, not retrained; any changed setting retrains."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from dpo_utils import config, fingerprint, run_cache

pytestmark = pytest.mark.slow
BEHAVIOR = "enjoys-classical-music"


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def counted(monkeypatch, tmp_path):
    """Runs go to tmp_path (the pre-trained tiny model still comes from the project's cache);
    every real training call is counted."""
    calls = []
    real = run_cache.train_behaviors

    def counting(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(run_cache, "train_behaviors", counting)
    monkeypatch.setattr(run_cache, "results_dir", lambda profile: tmp_path / profile)
    monkeypatch.delenv("DPO_FORCE_RERUN", raising=False)
    return calls


def _cfg(**overrides):
    return config.get_config(
        "cpu", dpo_max_steps=2, persona_source="corpus", pretrain_steps=20, **overrides
    )


def test_second_call_loads_and_returns_equal_tables(counted, tmp_path):
    first = run_cache.load_or_train(_cfg(), [BEHAVIOR], mode="lora", probe_train=4)
    second = run_cache.load_or_train(_cfg(), [BEHAVIOR], mode="lora", probe_train=4)
    assert len(counted) == 1
    assert first.probes.attrs["from_cache"] is False and second.probes.attrs["from_cache"] is True
    assert first.probes.attrs["path"] == second.probes.attrs["path"]
    assert str(tmp_path) in second.probes.attrs["path"]
    for name in ("probes", "pairs"):
        a, b = getattr(first, name), getattr(second, name)
        pd.testing.assert_frame_equal(a, b, check_exact=True)
    assert first.probes["step"].max() == 2
    # the loaded model is the merged LoRA model: its logits equal the trained PeftModel's
    ids = torch.tensor([[1, 5, 9, 13]])
    with torch.no_grad():
        expect = first.model.eval()(input_ids=ids).logits
        got = second.model.eval()(input_ids=ids).logits
    assert torch.allclose(expect, got, atol=1e-5)


@pytest.mark.parametrize(
    "change",
    [
        dict(seed=7),
        dict(flip=True),
        dict(max_steps=1),
        dict(mode="full"),
        dict(probe_train=5),
        dict(cfg=dict(dpo_beta=0.2)),
    ],
)
def test_a_changed_setting_retrains(counted, change):
    base = dict(mode="lora", probe_train=4)
    first = run_cache.load_or_train(_cfg(), [BEHAVIOR], **base)
    kwargs = {**base, **{k: v for k, v in change.items() if k != "cfg"}}
    other = run_cache.load_or_train(_cfg(**change.get("cfg", {})), [BEHAVIOR], **kwargs)
    assert len(counted) == 2
    assert other.probes.attrs["path"] != first.probes.attrs["path"]
    assert other.probes.attrs["from_cache"] is False


def test_start_from_a_saved_run_and_force(counted):
    aligned = run_cache.load_or_train(_cfg(), [BEHAVIOR], mode="lora", probe_train=4)
    flipped = run_cache.load_or_train(
        _cfg(),
        [BEHAVIOR],
        mode="lora",
        flip=True,
        start=aligned.probes.attrs["path"],
        probe_train=4,
    )
    assert len(counted) == 2 and counted[1]["model"] is not None  # started from the aligned model
    ref = flipped.probes[
        (flipped.probes["metric"] == "ref_logp_chosen") & (flipped.probes["split"] == "train")
    ]
    pol = aligned.probes[
        (aligned.probes["metric"] == "logp_rejected") & (aligned.probes["split"] == "train")
    ]
    # the flipped run's reference is the aligned model: its "chosen" is the aligned run's rejected
    # answer
    assert np.isclose(ref["value"].iloc[0], pol[pol["step"] == 2]["value"].iloc[0], atol=1e-4)
    run_cache.load_or_train(_cfg(), [BEHAVIOR], mode="lora", probe_train=4, force=True)
    assert len(counted) == 3
    with pytest.raises(FileNotFoundError, match="not a saved run"):
        run_cache.load_or_train(
            _cfg(), [BEHAVIOR], mode="lora", start="/nonexistent/run", probe_train=4
        )


def test_probe_subsample_and_partial_flip():
    cfg = config.get_config("cpu", persona_source="corpus")
    pairs, sets = run_cache.behavior_pairs(
        cfg, [BEHAVIOR, "interest-in-astronomy"], flip=["interest-in-astronomy"]
    )
    sub = run_cache.probe_subsample(sets, 3)
    assert [p["behavior"] for p in sub["train"]] == [BEHAVIOR] * 3 + ["interest-in-astronomy"] * 3
    assert (
        sub["train"]
        == [p for p in sets["train"] if p["behavior"] == BEHAVIOR][:3]
        + [p for p in sets["train"] if p["behavior"] != BEHAVIOR][:3]
    )
    assert sub["test"] == sets["test"]
    aligned, _ = run_cache.behavior_pairs(cfg, [BEHAVIOR, "interest-in-astronomy"])
    for a, p in zip(aligned, pairs, strict=True):
        flipped = p["behavior"] == "interest-in-astronomy"
        assert (p["chosen"], p["rejected"]) == (
            (a["rejected"], a["chosen"]) if flipped else (a["chosen"], a["rejected"])
        )
    with pytest.raises(ValueError, match="not trained"):
        run_cache.behavior_pairs(cfg, [BEHAVIOR], flip=["interest-in-astronomy"])
    with pytest.raises(ValueError, match="probe_train"):
        run_cache.probe_subsample(sets, 0)


def test_force_env_and_a_corrupt_run_retrain(counted, monkeypatch):
    """Issue 10 items 6 and 8: DPO_FORCE_RERUN retrains; a truncated table is not served."""
    first = run_cache.load_or_train(_cfg(), [BEHAVIOR], mode="lora", probe_train=4)
    path = Path(first.probes.attrs["path"])
    meta = json.loads((path / "meta.json").read_text())
    assert meta["behaviors"] == [BEHAVIOR] and meta["flip"] is False and meta["profile"] == "cpu"
    probes = (path / "probes.csv").read_text()
    (path / "probes.csv").write_text(probes[: int(0.6 * len(probes))])
    with pytest.warns(UserWarning, match=r"probes\.csv has \d+ bytes"):
        again = run_cache.load_or_train(_cfg(), [BEHAVIOR], mode="lora", probe_train=4)
    assert len(counted) == 2 and again.probes.attrs["from_cache"] is False
    pd.testing.assert_frame_equal(first.probes, again.probes, check_exact=True)
    monkeypatch.setenv("DPO_FORCE_RERUN", "1")
    run_cache.load_or_train(_cfg(), [BEHAVIOR], mode="lora", probe_train=4)
    assert len(counted) == 3


def test_run_key_holds_the_code_fingerprint_and_no_absolute_path(tmp_path, monkeypatch):
    monkeypatch.setattr(run_cache, "results_dir", lambda profile: tmp_path / profile)
    start = tmp_path / "somewhere" / "dpo-abc"
    key = run_cache._run_key(_cfg(), [BEHAVIOR], "lora", False, start, None, None, 1, None)
    assert key["start"] == "dpo-abc" and str(tmp_path) not in json.dumps(key)
    assert key["code"] == fingerprint.code_fingerprint(["run_cache"])


def test_prefill_in_two_processes_saves_exactly_the_runs_of_one_process(tmp_path, monkeypatch):
    # runs trained by spawned workers must be the runs load_or_train would train itself: same
    # folders, identical tables (exact: single-threaded CPU training is deterministic)
    monkeypatch.delenv("DPO_FORCE_RERUN", raising=False)
    cfg = _cfg()
    behaviors = [BEHAVIOR, "enjoys-baking-bread"]
    jobs = [
        dict(cfg=cfg, behaviors=[b], mode="lora", probe_train=4, probe_every=1) for b in behaviors
    ]
    tables = {}
    for processes in (2, 1):
        monkeypatch.setenv("DPO_RESULTS_DIR", str(tmp_path / f"p{processes}"))
        assert run_cache.prefill(jobs, processes=processes) == 2
        assert run_cache.prefill(jobs, processes=processes) == 0  # now cached
        runs = [
            run_cache.load_or_train(j["cfg"], j["behaviors"], mode="lora", probe_train=4)
            for j in jobs
        ]
        assert all(r.probes.attrs["from_cache"] for r in runs)
        tables[processes] = [r.probes for r in runs]
    for two, one in zip(tables[2], tables[1], strict=True):
        pd.testing.assert_frame_equal(two, one, check_exact=True)


def test_a_forced_prefill_trains_each_run_once(counted, monkeypatch):
    # DPO_FORCE_RERUN=1 must retrain a chapter's runs once, not in prefill and again when the
    # chapter reads them (prefill in this process, processes=1, so the counter sees every call)
    monkeypatch.setenv("DPO_FORCE_RERUN", "1")
    jobs = [dict(cfg=_cfg(), behaviors=[BEHAVIOR], mode="lora", probe_train=4)]
    assert run_cache.prefill(jobs, processes=1) == 1
    run = run_cache.load_or_train(_cfg(), [BEHAVIOR], mode="lora", probe_train=4)
    assert len(counted) == 1 and run.probes.attrs["from_cache"] is True
    run_cache.load_or_train(_cfg(), [BEHAVIOR], mode="lora", probe_train=4)  # forced again
    assert len(counted) == 2
