"""The train CLI (issue 10 items 1, 2, 10, 11): every flag checked before any data or model is
loaded, one-line errors with exit status 2, and nothing of a user's ever deleted."""

from __future__ import annotations

import json
import os

import pytest
import torch

from dpo_utils import data, run_cache, train

# behaviour 0 of the CPU profile's real persona behaviours (the authors' numbering)
BEHAVIOR = "acts-like-it-wants-to-help-humans-but-does-not-care-about-that"


@pytest.fixture
def no_work(monkeypatch):
    """Training, model loading and hub access all fail loudly: a test that reaches them fails."""

    def expensive(*args, **kwargs):
        raise AssertionError("expensive work started before the arguments were checked")

    monkeypatch.setattr(train, "train_behaviors", expensive)
    monkeypatch.setattr(run_cache, "train_behaviors", expensive)
    monkeypatch.setattr(run_cache.models, "load_model_and_tokenizer", expensive)
    monkeypatch.setattr(data, "_read_hub", expensive)
    monkeypatch.setattr(train, "save_trained", expensive)


def _cli(capsys, *argv):
    with pytest.raises(SystemExit) as stop:
        train.main(list(argv))
    err = capsys.readouterr().err.strip()
    return stop.value.code, err


def _fake_run(folder, steps=8, **settings):
    """A run folder as save_trained writes it: meta.json with settings, checkpoint state."""
    meta = dict(seed=1234, merged_model=True, base="", start=None, mode="lora", flip=False)
    meta.update(behaviors=[BEHAVIOR], profile="cpu", model="tiny-llama", data_source="persona")
    meta.update(settings)
    (folder / "checkpoint").mkdir(parents=True)
    (folder / "checkpoint" / "trainer_state.json").write_text(json.dumps({"global_step": steps}))
    (folder / "meta.json").write_text(json.dumps(meta))
    return folder


def test_out_naming_a_users_folder_is_refused_and_nothing_is_deleted(tmp_path, capsys, no_work):
    """Item 1: the old CLI trained, then deleted all in --out (``--out .``: the checkout)."""
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    for flags in ([], ["--overwrite"]):
        code, err = _cli(capsys, "--behaviors", "0", "--out", str(mine), *flags)
        assert code == 2 and err.startswith("error: ") and "\n" not in err
        assert "is not empty and is not a run this project wrote" in err and str(mine) in err
    assert (mine / "thesis.tex").read_text() == "years of work"
    cwd = os.getcwd()
    code, err = _cli(capsys, "--behaviors", "0", "--out", ".")
    assert code == 2 and "'.'" in err and os.getcwd() == cwd


def test_out_naming_a_file_fails_before_any_work(tmp_path, capsys, no_work):
    notes = tmp_path / "notes.txt"
    notes.write_text("keep")
    code, err = _cli(capsys, "--behaviors", "0", "--out", str(notes))
    assert code == 2 and "is an existing file" in err and notes.read_text() == "keep"


def test_an_earlier_run_is_replaced_only_with_overwrite(tmp_path, capsys, no_work):
    earlier = _fake_run(tmp_path / "run")
    code, err = _cli(capsys, "--behaviors", "0", "--out", str(earlier))
    assert code == 2 and "--overwrite" in err
    with pytest.raises(AssertionError, match="expensive work"):  # allowed: reaches training
        train.main(["--behaviors", BEHAVIOR, "--out", str(earlier), "--overwrite"])


@pytest.mark.parametrize(
    "flags, fragment",
    [
        (["--behaviors", "5", "--flip"], f"behaviors: saved [{BEHAVIOR!r}], now"),
        (["--behaviors", BEHAVIOR, "--flip"], "flip: saved False, now True"),
        (["--behaviors", BEHAVIOR, "--mode", "full"], "mode: saved 'lora', now 'full'"),
        (["--behaviors", BEHAVIOR, "--max-steps", "4"], "--max-steps=4 is below the 8 steps"),
    ],
)
def test_resume_with_other_settings_is_refused_naming_the_fields(
    tmp_path, capsys, no_work, flags, fragment
):
    """Item 2: the old CLI stitched a behaviour-0 run to a flipped behaviour-3 run into one table,
    ignored a lower --max-steps, and a LoRA run resumed with --mode full died in transformers."""
    saved = _fake_run(tmp_path / "run")
    code, err = _cli(capsys, *flags, "--resume-from", str(saved), "--out", str(tmp_path / "b"))
    assert code == 2 and fragment in err and not (tmp_path / "b").exists()


def test_resume_from_a_run_without_recorded_settings_is_refused(tmp_path, capsys, no_work):
    old = tmp_path / "old"
    (old / "checkpoint").mkdir(parents=True)
    (old / "meta.json").write_text(json.dumps({"mode": "lora", "seed": 1}))
    code, err = _cli(
        capsys, "--behaviors", BEHAVIOR, "--resume-from", str(old), "--out", str(tmp_path / "n")
    )
    assert code == 2 and "records no" in err and "'behaviors'" in err


def test_a_matching_resume_is_allowed(tmp_path, no_work):
    saved = _fake_run(tmp_path / "run")
    with pytest.raises(AssertionError, match="expensive work"):
        train.main(
            ["--behaviors", BEHAVIOR, "--resume-from", str(saved), "--out", str(tmp_path / "b")]
        )


def test_gpu_profile_without_gpu_stops_before_data_model_or_network(
    tmp_path, capsys, no_work, monkeypatch
):
    """Item 11: the old CLI went to the hub for the persona data first."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(
        data, "available_behaviors", lambda source: pytest.fail("persona data was listed")
    )
    code, err = _cli(
        capsys, "--profile", "llama2-7b", "--behaviors", "108", "--out", str(tmp_path / "r")
    )
    assert code == 2 and "needs a CUDA GPU and none is visible" in err
    assert not (tmp_path / "r").exists()
