import json
import os

import pandas as pd
import pytest

from dpo_utils import results


@pytest.fixture
def results_env(tmp_path, monkeypatch):
    monkeypatch.setenv("DPO_RESULTS_DIR", str(tmp_path))
    monkeypatch.delenv("DPO_FORCE_RERUN", raising=False)
    return tmp_path


def test_hash_ignores_key_order_and_changes_with_any_value():
    a = results.config_hash({"lr": 0.1, "beta": 0.01, "nested": {"x": [1, 2]}})
    assert a == results.config_hash({"nested": {"x": [1, 2]}, "beta": 0.01, "lr": 0.1})
    assert a != results.config_hash({"lr": 0.1, "beta": 0.02, "nested": {"x": [1, 2]}})
    assert len(a) == 12


def test_load_or_run_runs_once_then_reads_the_saved_table(results_env):
    calls = []

    def run():
        calls.append(1)
        return pd.DataFrame({"step": [0, 1], "value": [0.5, 0.25]})

    first = results.load_or_run("demo", {"lr": 0.1}, run, profile="cpu")
    second = results.load_or_run("demo", {"lr": 0.1}, run, profile="cpu")
    assert len(calls) == 1 and not first.attrs["from_cache"] and second.attrs["from_cache"]
    pd.testing.assert_frame_equal(first, second)
    saved = json.loads(
        (results_env / "cpu" / f"demo-{first.attrs['config_hash']}.json").read_text()
    )
    assert saved == {"lr": 0.1}
    results.load_or_run("demo", {"lr": 0.2}, run, profile="cpu")  # another config runs again
    assert len(calls) == 2
    results.load_or_run("demo", {"lr": 0.1}, run, profile="cpu", force=True)
    assert len(calls) == 3


def test_an_interrupted_run_leaves_no_file(results_env):
    def broken():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        results.load_or_run("demo", {"lr": 0.1}, broken, profile="cpu")
    assert not any((results_env / "cpu").glob("*")) if (results_env / "cpu").exists() else True


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    target = tmp_path / "table.csv"
    results.atomic_write_text(target, "old\n")

    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError):
        results.atomic_write_text(target, "new\n")
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["table.csv"]  # no temporary left behind


def test_atomic_directory_only_appears_when_complete(tmp_path):
    target = tmp_path / "model"
    with pytest.raises(RuntimeError):
        with results.atomic_directory(target) as tmp:
            (tmp / "weights.bin").write_text("partial")
            raise RuntimeError("interrupted")
    assert not target.exists() and list(tmp_path.iterdir()) == []
    with results.atomic_directory(target) as tmp:
        (tmp / "weights.bin").write_text("complete")
    assert (target / "weights.bin").read_text() == "complete"


def test_bad_names_and_non_tables_are_rejected(results_env):
    with pytest.raises(ValueError, match="name='../x'"):
        results.load_or_run("../x", {}, lambda: pd.DataFrame())
    with pytest.raises(TypeError, match="returned list, not a DataFrame"):
        results.load_or_run("demo", {}, lambda: [1, 2])
