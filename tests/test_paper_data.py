"""The paper profiles' data handling (issue 12 items 12, 13, 16): behaviours by name in the
chapters, the authors' pair batch, and their chained 90/10 split, checked on CPU with the vendored
real behaviours."""

from __future__ import annotations

import ast
import json
import random
from pathlib import Path

import pandas as pd
import pytest

from dpo_utils import config, data, joint_runs, llm_evidence, llm_experiments, run_cache

ROOT = Path(__file__).resolve().parent.parent
UPSTREAM = data.PERSONA_BEHAVIORS


def _code(chapter: str) -> str:
    cells = json.loads(next((ROOT / "notebooks").glob(f"{chapter}_*.ipynb")).read_text())["cells"]
    return "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")


# ---- item 12: numbers become names once, in the package -------------------------------------


@pytest.mark.parametrize("profile", config.PAPER_PROFILES)
def test_chapter_10_selection_at_a_paper_profile_is_by_name(profile):
    """At the paper profiles chapter 10 crashed with KeyError (84, 'base'): the authors' number
    stayed a number while the curves were keyed by name. The selection now returns names only."""
    cfg = config.get_config(profile)  # the hub id's 135 names; no download is needed to resolve
    ranking = llm_evidence.featured_behaviors(cfg)[::-1]  # any order of the five featured
    assert ranking and all(isinstance(b, str) for b in ranking)
    chosen, name_84 = llm_evidence.misalignment_behaviors(cfg, ranking)
    assert name_84 == UPSTREAM[84] and name_84 in chosen
    assert all(isinstance(b, str) for b in chosen) and len(chosen) == 4
    # the chapter's tables are keyed by name: the lookups that raised now find their rows
    table = pd.DataFrame(
        [dict(behavior=b, start=s, value=1.0) for b in chosen for s in ("base", "aligned")]
    ).set_index(["behavior", "start"])
    assert table.loc[(name_84, "base"), "value"] == 1.0
    # a papermill selection of numbers (behaviors=[84, 108]) comes back as names too
    picked, _ = llm_evidence.misalignment_behaviors(cfg, ranking, [84, 108])
    assert picked == [UPSTREAM[84], UPSTREAM[108]]
    with pytest.raises(data.PersonaDataError, match="not among the measured"):
        llm_evidence.misalignment_behaviors(cfg, ranking, [3])


def test_numbers_resolve_against_the_whole_source_not_the_ranking(monkeypatch, tmp_path):
    """A ranking is a subset in another order: position 0 of it is not behaviour 0 of the data."""
    for name in ("alpha", "beta", "gamma", "delta"):
        (tmp_path / f"{name}.jsonl").write_text("{}\n")
    cfg = config.get_config("cpu", persona_source=str(tmp_path))
    # sorted source: 0 alpha, 1 beta, 2 delta, 3 gamma
    assert llm_evidence.behaviors_among(cfg, [2, "beta"], ["gamma", "delta", "beta"]) == [
        "delta",
        "beta",
    ]
    chosen, name_84 = llm_evidence.misalignment_behaviors(cfg, ["gamma", "delta", "beta"], n=2)
    assert name_84 is None and all(isinstance(b, str) for b in chosen)


@pytest.mark.parametrize("chapter", ["07", "08", "09", "10", "11", "12"])
def test_no_llm_chapter_resolves_behaviour_numbers_itself(chapter):
    tree = ast.parse(_code(chapter))
    calls = {
        node.func.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
    }
    assert "resolve_behaviors" not in calls
    numbers = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant)}
    assert not {84, 123, 45} & numbers  # the authors' behaviour numbers live in llm_evidence


# ---- item 13: the authors' batch for their two-behaviour run ---------------------------------


def test_pair_runs_use_the_profiles_pair_batch_and_per_behaviour_splits(monkeypatch):
    """The authors trained their pair [123, 45] with their one effective batch, 128; chapter 09
    used twice the solo batch (256) at the paper profiles."""
    for name in config.PAPER_PROFILES:
        assert config.get_config(name).pair_batch_size == 128
    assert config.get_config("cpu").pair_batch_size == 2 * config.get_config("cpu").dpo_batch_size
    seen = []

    class Run:
        probes = pd.DataFrame({"step": [0]})

    def fake_load(job):
        seen.append((job["cfg"], list(job["behaviors"]), job.get("flip", False)))
        return Run()

    prefilled = []
    monkeypatch.setattr(joint_runs, "load_job", fake_load)
    monkeypatch.setattr(joint_runs, "prefill", prefilled.extend)
    cfg = config.get_config("mistral-7b")
    joint_runs.pair_curves(cfg, "a", "b")
    # the runs trained ahead (in workers on CPU; the joint ones first) are the ones then read
    ahead = [repr((j["cfg"], j["behaviors"], j.get("flip", False))) for j in prefilled]
    assert sorted(ahead) == sorted(repr(run) for run in seen) and len(seen) == 4
    solo = [c for c, b, _ in seen if len(b) == 1]
    joint = [c for c, b, _ in seen if len(b) == 2]
    assert [c.dpo_batch_size for c in solo] == [128, 128] and solo[0] == cfg
    assert [c.dpo_batch_size for c in joint] == [128, 128]
    # joint = solo needs each behaviour split on its own (the chained split would move b's rows)
    assert {c.split for c in joint} == {"per-behavior"} and cfg.split == "chained"
    with pytest.raises(config.ConfigError, match="split='shuffled'"):
        config.get_config("cpu", split="shuffled")


# ---- item 16: the authors' chained split ------------------------------------------------------


def _authors_loop(persona: dict, seed: int = 1234) -> dict:
    """A re-implementation of the loop in the authors' DPO_training.py: random.seed once, then for
    each behaviour in the order given: train_num = int(0.9 * n // 1), shuffle, cut."""
    random.seed(seed)
    out = {}
    for name, rows in persona.items():
        dataset = list(rows)
        train_num = int(0.9 * len(dataset) // 1)
        random.shuffle(dataset)
        out[name] = (dataset[:train_num], dataset[train_num:])
    return out


@pytest.mark.parametrize("order", [[123, 45], [45, 123], [84, 108, 88]])
def test_chained_split_is_the_authors_loop(order):
    persona = data.load_persona("persona", order)
    state = random.getstate()
    ours = data.split_behaviors(persona, 1234, chained=True)
    assert random.getstate() == state  # no side effect on the caller's random state
    assert ours == _authors_loop(persona)
    first = next(iter(persona))
    assert ours[first] == data.split_rows(persona[first], 1234)  # the first is its own split


def test_chained_split_differs_from_per_behaviour_for_the_second_behaviour():
    """For the authors' pair only 8 of behaviour 45's 100 test rows are the same in both splits
    (measured here on the vendored full file of 1000 rows)."""
    persona = data.load_persona("persona", [123, 45])
    chained = data.split_behaviors(persona, 1234, chained=True)
    alone = data.split_behaviors(persona, 1234)
    second = UPSTREAM[45]
    same = {r["statement"] for r in chained[second][1]} & {
        r["statement"] for r in alone[second][1]
    }
    assert len(chained[second][1]) == 100 and len(same) == 8


def test_paper_profiles_train_on_the_chained_split_and_the_cpu_profile_per_behaviour():
    persona = data.load_persona("persona", [123, 45])
    expected = _authors_loop(persona)
    cfg = config.get_config("mistral-7b", persona_source="persona")
    train, sets = run_cache.behavior_pairs(cfg, [123, 45])
    want = [
        pair for name, (rows, _) in expected.items() for pair in data.preference_pairs(rows, name)
    ]
    assert train == want
    cpu, _ = run_cache.behavior_pairs(config.get_config("cpu"), [123, 45])
    assert cpu != want and cpu[:900] == want[:900]  # the first behaviour alike, the second not


# ---- item 19: HH-RLHF probes checked before any training -------------------------------------


def test_hh_probes_that_cannot_be_encoded_stop_the_run_before_training(monkeypatch, tmp_path):
    """A probe prompt longer than max_length raised only in the flipped runs, after the aligned
    run had trained (hours at 7B); now it raises before the first training step."""
    from training_fixtures import tiny_llama, tiny_tokenizer

    from dpo_utils import models

    tok = tiny_tokenizer()
    folder = models.save_model(tiny_llama(tok), tok, tmp_path / "tiny")
    cfg = config.get_config(
        "cpu", model_name=str(folder), dpo_batch_size=4, per_device_batch_size=4, max_length=16
    )
    short = dict(prompt="\n\nHuman: hi\n\nAssistant:", chosen=" yes", rejected=" no")
    long = dict(short, prompt="\n\nHuman: " + "tell me more " * 20 + "\n\nAssistant:")

    def no_training(*args, **kwargs):
        raise AssertionError("training started before the probes were checked")

    monkeypatch.setattr(llm_evidence, "train_dpo", no_training)
    with pytest.raises(ValueError, match="max_length=16"):
        llm_evidence.hh_misalignment_curves(cfg, pairs=([short] * 4, [short, long]), n_probe=2)


# ---- item 20: any causal LM, checked; the Colab T4 profile ------------------------------------


def _tokenizer_folder(tmp_path, texts, name):
    from tokenizers import Tokenizer, decoders, pre_tokenizers, trainers
    from tokenizers import models as tk_models
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(tk_models.BPE(unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        show_progress=False,
        special_tokens=["<pad>", "<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    core.train_from_iterator(texts, trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    folder = tmp_path / name
    tok.save_pretrained(folder)
    return folder


def test_a_model_whose_answers_are_not_single_tokens_is_refused_naming_the_tokens(tmp_path):
    from dpo_utils import models

    # a vocabulary too small to learn " Yes" and " No" as whole tokens
    bad = _tokenizer_folder(tmp_path, ["abc def ghi"] * 10, "bad")
    # the folder holds a tokenizer only: the error comes before any weights are looked for
    with pytest.raises(config.ConfigError, match=r"' Yes' is not a single token.*became \["):
        models.load_model_and_tokenizer(config.get_config("cpu", model_name=str(bad)))
    good = _tokenizer_folder(tmp_path, ['say?\n"x"\n Yes', 'say?\n"x"\n No'] * 50, "good")
    with pytest.raises((OSError, ValueError), match="(?i)config"):  # past it, to the weights
        models.load_model_and_tokenizer(config.get_config("cpu", model_name=str(good)))


def test_cli_model_flag_checks_a_local_tokenizer_before_any_work(tmp_path, capsys):
    from dpo_utils import train

    bad = _tokenizer_folder(tmp_path, ["abc def ghi"] * 10, "bad")
    with pytest.raises(SystemExit) as stop:
        train.main(["--behaviors", "0", "--model", str(bad), "--out", str(tmp_path / "out")])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: model_name=") and "' Yes' is not a single token" in err
    assert not (tmp_path / "out").exists()


def test_dpo_model_replaces_the_profiles_model_and_is_checked(monkeypatch, tmp_path):
    monkeypatch.setenv("DPO_MODEL", "Qwen/Qwen2.5-1.5B")
    assert config.get_config("colab-t4").model_name == "Qwen/Qwen2.5-1.5B"
    assert config.get_config("cpu", model_name="tiny-llama").model_name == "tiny-llama"
    monkeypatch.setenv("DPO_MODEL", "not a model")
    with pytest.raises(config.ConfigError, match="model_name='not a model'"):
        config.get_config("llama2-7b")


def test_colab_t4_profile_fits_a_t4_and_is_listed_everywhere():
    import re

    cfg = config.get_config("colab-t4")
    assert cfg.requires_gpu and cfg.dtype == "float16"  # a T4 has no bf16
    assert cfg.model_name == "Qwen/Qwen2.5-0.5B" and cfg.persona_source == "persona"
    assert cfg.dpo_batch_size % cfg.per_device_batch_size == 0 and cfg.dpo_max_steps
    assert "colab-t4" not in config.PAPER_PROFILES  # its results are never the paper's
    assert llm_evidence.featured_behaviors(cfg)[1] == UPSTREAM[84]
    listed = re.search(r"^PROFILES := (.*)$", (ROOT / "Makefile").read_text(), re.M).group(1)
    assert listed.split() == list(config.PROFILES)
    assert "colab-t4" in (ROOT / "book" / "setup.md").read_text()


def test_mistral_answer_ids_with_the_real_tokenizer(tmp_path):
    """With mistral-common's own Mistral-7B tokenizer (v1, sentencepiece): " Yes" 5592 and " No"
    1770 after a newline. Skipped where mistral-common, sentencepiece or protobuf are missing: they
    are not project dependencies (mistral-common 1.13 needs numpy < 2.4 on Python 3.11, and the
    project pins numpy 2.4.6). transformers 5 builds the tokenizer from a folder holding the
    sentencepiece file as tokenizer.model (converting it needs protobuf); constructing
    LlamaTokenizer(vocab_file=...) directly gives an empty 3-token vocabulary."""
    mistral_common = pytest.importorskip("mistral_common")
    pytest.importorskip("sentencepiece")
    pytest.importorskip("google.protobuf")
    from transformers import LlamaTokenizer

    from dpo_utils import models

    shipped = Path(mistral_common.__file__).parent / "data" / "tokenizer.model.v1"
    (tmp_path / "tokenizer.model").write_bytes(shipped.read_bytes())
    tok = LlamaTokenizer.from_pretrained(str(tmp_path))
    assert len(tok) == 32000  # the whole Mistral-7B vocabulary was read
    assert models.answer_token_ids(tok) == (5592, 1770)


# ---- item 15: one run key for the command line and the chapters -------------------------------


def test_per_device_batch_is_not_part_of_the_run_key():
    cfg = config.get_config("llama2-7b")
    kw = dict(mode="full", seed=1234, probe_every=2, probe_train=48)
    eight_gpus = cfg.replace(per_device_batch_size=16)
    assert run_cache.run_dir(cfg, ["a"], **kw) == run_cache.run_dir(eight_gpus, ["a"], **kw)
    assert run_cache.run_dir(cfg, ["a"], **kw) != run_cache.run_dir(
        cfg.replace(dpo_batch_size=64), ["a"], **kw
    )


@pytest.mark.slow
def test_cli_fills_exactly_the_folder_a_chapter_reads(tmp_path, capsys):
    """The CLI's runs never reached the notebooks (another key: probe settings, seed). Without
    --out it now trains into the chapters' cache folder, says so, and the chapter's call loads it
    without training."""
    import torch

    from dpo_utils import models, pretraining, train

    torch.set_num_threads(1)
    # the stand-ins' tokenizer (real persona prompts fit the CPU profile's max_length), random init
    tok = models.train_tokenizer(pretraining.pretraining_text().texts[:3000])
    folder = models.save_model(models.tiny_model("llama", tok, seed=5), tok, tmp_path / "tiny")
    behavior = UPSTREAM[84]
    train.main(["--behaviors", "84", "--model", str(folder), "--max-steps", "1"])
    printed = capsys.readouterr().out
    cfg = config.get_config("cpu", model_name=str(folder))
    where = run_cache.chapter_run_dir(cfg, [behavior], mode="lora", max_steps=1)
    assert f"the chapters (08-11) will find this run in {where}" in printed
    assert (where / "meta.json").is_file()
    # what chapter 08 calls (llm_experiments.per_behavior_curves' run), for the same settings
    run = llm_experiments._run(
        cfg,
        [behavior],
        mode="lora",
        seed=cfg.seed,
        max_steps=1,
        probe_train=llm_experiments.PROBE_TRAIN,
    )
    assert run.probes.attrs["from_cache"] and run.probes.attrs["path"] == str(where)


# ---- item 4: before and after features on the same device, in one dtype -----------------------


@pytest.mark.parametrize("gpu", [False, True])
def test_after_features_are_extracted_where_and_as_the_before_features(monkeypatch, gpu):
    """Chapters 10-11 extracted the trained 7B model's features on the CPU (load_trained without a
    device) and compared them with bf16 features of the base model on the GPU."""
    import torch
    from training_fixtures import tiny_llama, tiny_tokenizer

    from dpo_utils import models
    from dpo_utils.training import DPORun

    tok = tiny_tokenizer()
    saved = tiny_llama(tok).to(torch.bfloat16 if not gpu else torch.float32)
    calls = {}

    def fake_load(path, device=None):
        calls["device"] = device
        empty = pd.DataFrame()
        return DPORun(saved, empty, empty, empty, mode="full", seed=0, tokenizer=tok)

    def fake_features(model, tokenizer, persona, **kwargs):
        calls["dtype"] = next(model.parameters()).dtype
        return "features"

    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(llm_experiments, "load_trained", fake_load)
    monkeypatch.setattr(llm_experiments.embeddings, "persona_features", fake_features)
    cfg = config.get_config("llama2-7b")
    llm_experiments.trained_features("runs/dpo-x", {}, cfg.profile)
    device = "cuda" if gpu else "cpu"
    assert calls["device"] == device
    # the base model's dtype on that device (models.load_model_and_tokenizer's rule)
    assert calls["dtype"] == models.load_dtype(cfg, device)
    assert calls["dtype"] == (torch.bfloat16 if gpu else torch.float32)


# ---- item 14: a paper profile's book build has no cell timeout, in its own folder -------------


def test_make_book_at_a_paper_profile_turns_the_cell_timeout_off(tmp_path):
    """`make book PROFILE=llama2-7b` killed chapter 08's training cell at the 600 s timeout.
    The commands make would run (make -n runs nothing) write a config without the timeout."""
    import shutil
    import subprocess

    from jupyter_book.config import get_final_config

    lines = subprocess.run(
        ["make", "-n", "book", "PROFILE=llama2-7b"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.replace("\\\n", " ")
    commands = [line for line in lines.splitlines() if line.startswith(("sed ", "DPO_PROFILE="))]
    sed, build = commands
    assert "--path-output '_build/llama2-7b'" in build and "--config" in build
    shutil.copy(ROOT / "_config.yml", tmp_path / "_config.yml")
    (tmp_path / "_build" / "llama2-7b").mkdir(parents=True)
    subprocess.run(sed, shell=True, cwd=tmp_path, check=True)
    generated = tmp_path / "_build" / "llama2-7b" / "_config.yml"
    cli = dict(latex_individualpages=False)
    sphinx, _ = get_final_config(user_yaml=generated, cli_config=dict(cli), sourcedir=ROOT)
    assert sphinx["nb_execution_timeout"] == -1
    cpu, _ = get_final_config(user_yaml=ROOT / "_config.yml", cli_config=dict(cli), sourcedir=ROOT)
    assert cpu["nb_execution_timeout"] == 600  # the CPU build keeps its limit
