"""dpo_utils.verdicts: seed grids, small-sample intervals, counts, verdicts and the claims
table."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from scipy import stats

from dpo_utils import config, verdicts


def test_seed_grid_and_over_seeds():
    cfg = config.get_config("cpu")
    grid = verdicts.seed_grid(cfg, 2, 3)
    assert len(grid) == 6 and len(set(grid)) == 6
    assert grid[0] == (cfg.pretrain_seed, cfg.seed) and grid[-1] == (
        cfg.pretrain_seed + 1,
        cfg.seed + 2,
    )
    with pytest.raises(ValueError, match="n_dpo=0"):
        verdicts.seed_grid(cfg, 1, 0)

    def run(c, dpo_seed):  # records which stand-in seed each call saw
        return pd.DataFrame({"value": [c.pretrain_seed * 10 + dpo_seed]})

    table = verdicts.over_seeds(run, cfg, [(1, 2), (3, 4)])
    assert table["value"].tolist() == [12, 34]
    assert table["pretrain_seed"].tolist() == [1, 3] and table["dpo_seed"].tolist() == [2, 4]
    with pytest.raises(ValueError, match="seeds is empty"):
        verdicts.over_seeds(run, cfg, [])


def test_t_interval_uses_the_small_sample_quantile():
    mean, low, high = verdicts.t_interval([1.0, 2.0, 3.0])
    assert mean == pytest.approx(2.0)
    # n = 3: t(0.975, 2) = 4.303, sd 1, so the half-width is 4.303 / sqrt(3), far wider than 2 SE
    assert high - mean == pytest.approx(stats.t.ppf(0.975, 2) / math.sqrt(3))
    assert high - mean > 2 / math.sqrt(3) * 2
    assert low == pytest.approx(2 * mean - high)
    with pytest.raises(ValueError, match="at least 2 finite"):
        verdicts.t_interval([1.0, float("nan")])
    with pytest.raises(ValueError, match="level=1.5"):
        verdicts.t_interval([1.0, 2.0], level=1.5)


def test_count_and_verdict():
    assert verdicts.count_holds([True, False, True, float("nan"), None]) == (2, 5)
    with pytest.raises(ValueError, match="no checks"):
        verdicts.count_holds([])
    assert verdicts.verdict(3, 3, 3) == "holds"
    assert verdicts.verdict(3, 3, 2, caveat="length confound") == "holds with a caveat"
    # fewer than the count fixed beforehand never holds, even when most checks pass
    assert verdicts.verdict(2, 3, 3) == "does not hold at this scale"
    assert verdicts.verdict(0, 3, 2) == "does not hold at this scale"
    with pytest.raises(ValueError, match="k_required=4"):
        verdicts.verdict(2, 3, 4)
    with pytest.raises(ValueError, match="k=4, n=3"):
        verdicts.verdict(4, 3, 2)


def test_save_load_and_claims_table(tmp_path, monkeypatch):
    monkeypatch.setattr(verdicts, "results_dir", lambda profile: tmp_path / profile)
    real = verdicts.data_label("data/anthropic-persona")
    corpus = verdicts.data_label("corpus")
    assert (real, corpus) == ("real behaviours", "controlled corpus")
    row = dict(claim="faster", setting="Llama-2-7B", why="D3", command="make X")
    verdicts.save_verdicts(
        "07", [verdicts.claim_row("07", real, measured="rho 0.9", verdict_="holds", **row)]
    )
    verdicts.save_verdicts(
        "07",
        [
            verdicts.claim_row(
                "07", corpus, measured="rho 1.0", verdict_="holds with a caveat", **row
            )
        ],
    )
    verdicts.save_verdicts(
        "10",
        [
            verdicts.claim_row(
                "10",
                real,
                claim="misaligned faster",
                measured="1 of 4",
                verdict_="does not hold at this scale",
                why="reference offset",
            )
        ],
    )
    saved = verdicts.load_verdicts()
    assert len(saved) == 3 and list(saved["chapter"]) == ["07", "07", "10"]
    table = verdicts.claims_table(saved).set_index("claim")
    assert table.loc["faster", "verdict"] == "holds"
    assert table.loc["faster", "controlled corpus"] == "rho 1.0 (holds with a caveat)"
    assert table.loc["misaligned faster", "controlled corpus"] == "not run in this build"
    assert verdicts.load_verdicts("other").empty
    with pytest.raises(ValueError, match="not allowed"):
        verdicts.claim_row("07", real, "c", "m", "probably", "w")
    with pytest.raises(ValueError, match="not '08'"):
        verdicts.save_verdicts("08", [verdicts.claim_row("07", real, "c", "m", "holds", "w")])


def test_format_interval():
    assert verdicts.format_interval((1.0, 0.5, 1.5)) == "1.00 [0.50, 1.50]"


def test_chapter_seeds_per_profile():
    cpu = config.get_config("cpu")
    assert len(verdicts.chapter_seeds(cpu)) == 3  # 3 stand-ins x 1 DPO seed by default
    assert len(verdicts.chapter_seeds(cpu, n_pretrain=3, n_dpo=3)) == 9
    paper = config.get_config("llama2-7b")
    assert verdicts.chapter_seeds(paper, n_dpo=2) == [
        (paper.pretrain_seed, paper.seed),
        (paper.pretrain_seed, paper.seed + 1),
    ]
    with pytest.raises(ValueError, match="n_pretrain=3"):
        verdicts.chapter_seeds(paper, n_pretrain=3)


def test_t_interval_clipped_to_a_correlations_range():
    mean, low, high = verdicts.t_interval([1.0, 0.95, 1.0], bounds=(-1.0, 1.0))
    assert high == 1.0 and low < mean < high
