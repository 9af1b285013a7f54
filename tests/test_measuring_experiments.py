"""Chapter 06's measurements: the length-matched distinguishability, direction cosines, rank
stability, the stand-in configs and the verdict table, on constructed data with known answers."""

from __future__ import annotations

import dataclasses

import pandas as pd
import pytest
import torch

from dpo_utils import config, data, embeddings
from dpo_utils import measuring_experiments as M
from dpo_utils import measuring_setup as S


def test_length_matching_removes_a_pure_length_effect():
    """Features that encode only length, with Yes-statements longer: raw distinguishability is
    large, the length-matched one is near zero (bar: < 0.15 of the raw value)."""
    g = torch.Generator().manual_seed(0)
    signs = torch.tensor([1.0] * 300 + [-1.0] * 300, dtype=torch.float64)
    lengths = torch.cat(
        [torch.randint(10, 30, (300,), generator=g), torch.randint(5, 25, (300,), generator=g)]
    )
    features = torch.zeros(600, 4, dtype=torch.float64)
    features[:, 0] = lengths.double()
    features[:, 1:] = torch.randn(600, 3, generator=g, dtype=torch.float64) * 0.01
    raw = float((features[:300].mean(0) - features[300:].mean(0)).norm())
    matched = M.length_matched_distinguishability(features, signs, lengths, n_bins=10)
    assert raw > 4 and matched < 0.15 * raw
    # a label effect orthogonal to length (class means +3 and -3, gap 6) survives matching
    # (bar: within 10 %)
    features[:, 2] += signs * 3
    assert abs(M.length_matched_distinguishability(features, signs, lengths, n_bins=10) - 6) < 0.6


def _feature_set(directions):
    names, feats, signs = [], [], []
    for k, d in enumerate(directions):
        d = torch.tensor(d, dtype=torch.float64)
        for s in (1.0, -1.0):
            for _ in range(5):
                names.append(f"b{k}")
                feats.append(s * d / 2)
                signs.append(s)
    f = torch.stack(feats)
    return embeddings.FeatureSet(names, torch.tensor(signs), {"final": f}, torch.zeros(len(names)))


def test_direction_cosines_and_summary():
    fs = _feature_set([[1, 0], [0, 2], [-1, 0]])
    cos = M.direction_cosines(fs).set_index(["behavior_i", "behavior_j"])["cosine"]
    assert abs(cos[("b0", "b1")]) < 1e-12 and abs(cos[("b0", "b2")] + 1) < 1e-12
    summary = M.direction_summary({("m", 1): fs})
    assert abs(summary["mean"].iloc[0] + 1 / 3) < 1e-12 and summary["min"].iloc[0] == -1


def test_rank_stability_is_spearman_between_seeds():
    rows = [
        dict(model="m", variant="final", pretrain_seed=s, behavior=b, distinguishability=v)
        for s, values in ((1, [1, 2, 3]), (2, [1, 2, 3]), (3, [3, 2, 1]))
        for b, v in zip("abc", values, strict=True)
    ]
    table = M.rank_stability(pd.DataFrame(rows)).set_index(["seed_a", "seed_b"])["rho"]
    assert table[(1, 2)] == 1 and table[(1, 3)] == -1


def test_standin_configs_and_measured_behaviours():
    cfg = config.get_config("cpu")
    configs = S.standin_configs(cfg, 3)
    assert [(c.model_arch, c.pretrain_seed) for c in configs] == [
        (a, cfg.pretrain_seed + i) for a in ("llama", "mistral") for i in range(3)
    ]
    assert S.standin_configs(config.get_config("llama2-7b"), 3) == [config.get_config("llama2-7b")]
    assert S.measured_behaviors(cfg) == list(data.EVALUATION_BEHAVIORS)
    assert not set(S.measured_behaviors(cfg)) & set(data.FORMAT_BEHAVIORS)
    assert len(S.measured_behaviors(cfg, "corpus")) == 8


def _verdict_inputs():
    """Constructed tables on which every claim of chapter 06 holds, each by a clear margin."""
    models, seeds = ("tiny-llama", "tiny-mistral"), (1, 2, 3)
    real = pd.DataFrame(
        dict(
            model=m,
            pretrain_seed=s,
            variant="final",
            behavior=b,
            distinguishability=d,
            length_matched=0.8 * d,  # kept 80 %, same ranking
            snr=3.0,
        )
        for m in models
        for s in seeds
        for b, d in zip("abc", (1.0, 2.0, 4.0), strict=True)  # max/min 4
    )
    stability = pd.DataFrame(dict(model=m, variant="final", rho=0.9) for m in models)
    knobs = pd.DataFrame(
        dict(
            pretrain_seed=s, knob=k, ambiguous_share=a, label_words=n, distinguishability=d, snr=r
        )
        for s in seeds
        for k, a, n, d, r in (
            ("reference", 0.0, 1, 1.0, 3.0),
            ("distinguishability", 0.0, 2, 2.0, 3.0),
            ("distinguishability", 0.0, 3, 3.0, 3.0),  # x3, monotone
            ("ambiguity", 0.5, 2, 1.2, 3.0),  # max/min 1.2 along the ambiguity knob
            ("null", 1.0, 1, 0.1, 0.5),
        )
    )
    directions, corpus_directions = pd.DataFrame(dict(mean=[0.2])), pd.DataFrame(dict(mean=[0.1]))
    return real, stability, directions, knobs, corpus_directions


def test_verdicts_apply_the_thresholds_fixed_before_the_run():
    table = M.verdicts(*_verdict_inputs())
    assert len(table) == 9 and (table["verdict"] == "holds").all(), table
    # a stricter bar on the real behaviours' directions (mean cosine 0.2) fails that claim only;
    # the corpus's directions (0.1) still clear it
    strict = M.verdicts(*_verdict_inputs(), t=dataclasses.replace(M.THRESHOLDS, cosine=0.15))
    failed = strict[strict["verdict"] != "holds"]
    assert list(failed["claim"]) == ["real behaviours point in diverse directions"]
    assert list(failed["threshold"]) == ["< 0.15"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        M.THRESHOLDS.cosine = 0.9  # frozen: fixed before the run


def test_the_spread_claim_needs_five_sixths_of_the_models_rounded_up():
    """Written as "5 of 6 models"; with three stand-ins (the CPU build) all three must clear it."""
    real, stability, directions, knobs, corpus_directions = _verdict_inputs()
    llama = real[real["model"] == "tiny-llama"].copy()
    row = "real behaviours differ in distinguishability"
    table = M.verdicts(llama, stability.iloc[:1], directions, knobs, corpus_directions)
    spread = table.set_index("claim").loc[row]
    assert spread["verdict"] == "holds" and spread["threshold"] == ">= 2.0 in >= 3 of 3 models"
    flat = (llama["pretrain_seed"] == 2) & llama["behavior"].isin(["b", "c"])
    llama.loc[flat, "distinguishability"] = 1.5  # this model's max/min: 1.5
    table = M.verdicts(llama, stability.iloc[:1], directions, knobs, corpus_directions)
    assert table.set_index("claim").loc[row, "verdict"] == "does not hold"
    six = M.verdicts(*_verdict_inputs()).set_index("claim").loc[row, "threshold"]
    assert six == ">= 2.0 in >= 5 of 6 models"


@pytest.mark.slow
def test_standins_are_made_ready_in_one_dispatch_and_then_only_read(tmp_path, monkeypatch):
    """With two workers, prepare_standins sends every stand-in of every group to the workers in
    one dispatch (pre-training and features); measure_standins then finds them ready and starts
    no worker, and a second measurement returns the same table."""
    monkeypatch.setenv("DPO_RESULTS_DIR", str(tmp_path))
    monkeypatch.setenv("DPO_PROCESSES", "2")
    monkeypatch.delenv("DPO_FORCE_RERUN", raising=False)
    cfg = config.get_config("cpu", pretrain_steps=2)  # the measurement, not the model, is tested
    configs = S.standin_configs(cfg, 1)  # one tiny Llama, one tiny Mistral
    names = list(data.EVALUATION_BEHAVIORS)[:2]
    persona = {n: rows[:40] for n, rows in data.load_persona("persona", names).items()}
    dispatched = []
    real_map = S.process_map
    monkeypatch.setattr(
        S,
        "process_map",
        lambda f, jobs, n: dispatched.append((f, len(jobs))) or real_map(f, jobs, n),
    )
    groups = [(configs[:1], persona), (configs[1:], persona)]
    assert S.prepare_standins(groups) == 2
    assert dispatched == [(S._features_job, 2)]  # both groups' stand-ins, one dispatch
    dispatched.clear()
    assert S.prepare_standins(groups) == 0
    first, _ = M.measure_standins(configs, persona)
    assert dispatched == []  # nothing left to compute: no worker started
    second, _ = M.measure_standins(configs, persona)
    pd.testing.assert_frame_equal(first, second)


def _parameters_cell(chapter: str) -> dict:
    """The literal defaults of a chapter's papermill ``parameters`` cell."""
    import ast
    import json

    from chapter_index import ROOT

    path = next((ROOT / "notebooks").glob(f"{chapter}_*.ipynb"))
    for cell in json.loads(path.read_text())["cells"]:
        if "parameters" in cell.get("metadata", {}).get("tags", []):
            source = "".join(cell["source"])
            tree = ast.parse(source)
            return {
                t.id: ast.literal_eval(n.value)
                for n in tree.body
                if isinstance(n, ast.Assign) and not isinstance(n.value, ast.Call)
                for t in n.targets
                if isinstance(t, ast.Name)
            }
    raise AssertionError(f"{path.name} has no cell tagged parameters")


def test_the_background_setup_prepares_what_chapter_06_measures_by_default():
    """make book's background job (python -m dpo_utils.measuring_setup) takes chapter 06's defaults
    from the same constants the chapter's parameters cell holds: three tiny Llamas on the real
    behaviours and three on the corpus."""
    defaults = _parameters_cell("06")
    assert defaults["n_pretrain_seeds"] == S.N_PRETRAIN_SEEDS
    # every other setting of the chapter's stand-ins is the profile's, as the job takes it
    for name in ("stand_ins", "behaviors", "model_name", "persona_source", "pretrain_steps"):
        assert defaults[name] is None, name
    cfg = config.get_config("cpu")
    (real, persona), (corpus, corpus_persona) = S.chapter_groups(cfg)
    seeds = [cfg.pretrain_seed + i for i in range(S.N_PRETRAIN_SEEDS)]
    assert [(c.model_name, c.pretrain_seed, c.persona_source) for c in real] == [
        ("tiny-llama", s, data.PERSONA_SOURCE) for s in seeds
    ]
    assert [(c.model_name, c.pretrain_seed, c.persona_source) for c in corpus] == [
        ("tiny-llama", s, data.CORPUS_SOURCE) for s in seeds
    ]
    assert list(persona) == data.resolve_behaviors(
        S.measured_behaviors(cfg), data.available_behaviors(data.PERSONA_SOURCE)
    )
    assert len(corpus_persona) == 8
    gpu = config.get_config("llama2-7b", persona_source=data.PERSONA_SOURCE)  # offline here
    assert [configs for configs, _ in S.chapter_groups(gpu, behaviors=[45])] == [[gpu], [gpu]]


def test_the_background_setup_computes_in_its_own_process_from_the_back(
    tmp_path, monkeypatch, capsys
):
    """python -m dpo_utils.measuring_setup makes every stand-in ready in its own process, one torch
    thread, last stand-in first (chapter 06's workers start from the front), and starts no
    worker; run again, it finds nothing to do."""
    monkeypatch.setenv("DPO_RESULTS_DIR", str(tmp_path))
    for name in ("DPO_FORCE_RERUN", "DPO_MODEL", "DPO_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    cfg = config.get_config("cpu", pretrain_steps=2)
    configs = S.standin_configs(cfg, 2, archs=["llama"])
    name = list(data.EVALUATION_BEHAVIORS)[0]
    persona = {n: rows[:20] for n, rows in data.load_persona("persona", [name]).items()}
    monkeypatch.setattr(S, "chapter_groups", lambda c: [(configs, persona)])
    monkeypatch.setattr(S, "process_map", lambda *a: pytest.fail("no worker expected"))
    order, threads = [], []
    real_job = S._features_job

    def job(j):
        order.append(j[0].pretrain_seed)
        threads.append(torch.get_num_threads())
        real_job(j)

    monkeypatch.setattr(S, "_features_job", job)
    before = torch.get_num_threads()
    try:
        assert S.main([]) == 0
    finally:
        torch.set_num_threads(before)
    assert order == [c.pretrain_seed for c in reversed(configs)] and threads == [1, 1]
    assert "2 made ready" in capsys.readouterr().out
    assert S._pending([(configs, persona)]) == []


def test_the_background_setup_does_nothing_on_a_paper_profile(capsys, monkeypatch):
    monkeypatch.delenv("DPO_MODEL", raising=False)
    assert S.main(["--profile", "llama2-7b"]) == 0
    assert "nothing to do" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        S.main(["--profile", "llama-2"])
    assert "invalid choice: 'llama-2'" in capsys.readouterr().err
