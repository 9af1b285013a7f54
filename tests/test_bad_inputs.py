"""Issue 10's table of bad inputs: each one gets the project's own error, naming the bad value and
what is allowed, before any expensive work (no model loaded or trained, no hub access), and with no
file written. Config, every chapter's parameters (through the check the chapters call), the persona
data loader and the train CLI."""

from __future__ import annotations

import ast
import json
import re
import subprocess
from pathlib import Path

import pytest

from dpo_utils import (
    book,
    chapter_parameters,
    config,
    data,
    embeddings,
    hh_rlhf,
    models,
    run_cache,
    train,
)

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = "persona-fixture"
E = config.ConfigError
P = data.PersonaDataError


def _row(yes=True, question='Is the following statement something you would say?\n"Tea."'):
    return {
        "question": question,
        "statement": "Tea.",
        "label_confidence": 0.9,
        "answer_matching_behavior": " Yes" if yes else " No",
        "answer_not_matching_behavior": " No" if yes else " Yes",
    }


def _persona(folder: Path, lines: list) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    body = b"".join((x if isinstance(x, bytes) else json.dumps(x).encode()) + b"\n" for x in lines)
    (folder / "tea.jsonl").write_bytes(body)
    return folder


def _chapter(chapter, injected=(), **values):
    return lambda tmp: book.check_parameters(
        chapter, {"profile": "cpu", **values}, injected=list(injected)
    )


def _cli(*argv):
    return lambda tmp: train.main([*argv] + ([] if "--out" in argv else ["--out", str(tmp / "o")]))


def _cfg(**overrides):
    return lambda tmp: config.get_config("cpu", **overrides)


# (id, call(tmp) -> raises, error type, fragment naming the value, fragment naming what is allowed)
CASES = [
    # ---- config.get_config ----------------------------------------------------------------
    (
        "profile",
        lambda t: config.get_config("gpu"),
        E,
        "'gpu'",
        "['cpu', 'llama2-7b', 'mistral-7b', 'colab-t4']",
    ),
    ("requires_gpu str", _cfg(requires_gpu="False"), E, "requires_gpu='False'", "True or False"),
    ("seed 2**40", _cfg(seed=2**40), E, "seed=1099511627776", "[0, 2**32)"),
    ("seed negative", _cfg(seed=-1), E, "seed=-1", "[0, 2**32)"),
    ("pretrain_seed float", _cfg(pretrain_seed=1.5), E, "pretrain_seed=1.5", "[0, 2**32)"),
    ("behaviors float/None", _cfg(behaviors=[1.5, None]), E, "[1.5, None]", "names (str)"),
    ("lora modules empty", _cfg(lora_target_modules=[]), E, "lora_target_modules=[]", "non-empty"),
    ("model_name unknown", _cfg(model_name="gpt-5"), E, "model_name='gpt-5'", "tiny-llama"),
    ("max_length 1", _cfg(max_length=1), E, "max_length=1", ">= 16"),
    ("beta zero", _cfg(beta=0.0), E, "beta=0.0", "> 0"),
    ("lr nan", _cfg(last_layer_lr=float("nan")), E, "last_layer_lr=nan", "finite float > 0"),
    ("dtype", _cfg(dtype="int8"), E, "dtype='int8'", "'bfloat16'"),
    ("lora_dropout 1", _cfg(lora_dropout=1.0), E, "lora_dropout=1.0", "[0, 1)"),
    ("batch mismatch", _cfg(per_device_batch_size=64), E, "per_device_batch_size=64", "at most"),
    ("unknown key", _cfg(learnig_rate=0.1), E, "['learnig_rate']", "allowed parameters are"),
    ("persona_source", _cfg(persona_source="/no/such/dir"), E, "'/no/such/dir'", "'corpus'"),
    ("n_seeds bool", _cfg(n_seeds=True), E, "n_seeds=True", "integer >= 1"),
    # ---- every chapter's parameters, through book.check_parameters ----------------------------
    ("01 vocab_size 1", _chapter("01", vocab_size=1), E, "vocab_size=1", "from 2"),
    ("01 vocab_size str", _chapter("01", vocab_size="500"), E, "vocab_size='500'", "from 2"),
    ("01 dim 0", _chapter("01", dim=0), E, "synthetic_dim=0", "integer >= 1"),
    ("02 steps 0", _chapter("02", steps=0), E, "last_layer_steps=0", "integer >= 1"),
    ("03 n_seeds -2", _chapter("03", n_seeds=-2), E, "n_seeds=-2", "integer >= 1"),
    ("04 n_pairs 0", _chapter("04", n_pairs=0), E, "n_pairs=0", "integer >= 1"),
    ("05 one model seed", _chapter("05", n_model_seeds=1), E, "n_model_seeds=1", ">= 2"),
    ("05 model_beta", _chapter("05", model_beta=-1), E, "dpo_beta=-1", "> 0"),
    ("06 behaviour", _chapter("06", behaviors=["no-such"]), E, "'no-such'", "closest available"),
    ("06 source", _chapter("06", persona_source=""), E, "persona_source=''", "non-empty"),
    ("06 stand_ins", _chapter("06", stand_ins=["tiny-gpt"]), E, "['tiny-gpt']", "'tiny-mistral'"),
    (
        "06 stand_ins twice",
        _chapter("06", stand_ins=["tiny-llama"] * 2),
        E,
        "stand_ins=",
        "different",
    ),
    ("07 comparison_lr 0", _chapter("07", comparison_lr=0), E, "last_layer_lr=0", "> 0"),
    ("07 batch_size 0", _chapter("07", batch_size=0), E, "batch_size=0", "integer >= 1"),
    ("07 pretrain 0", _chapter("07", pretrain_steps=0), E, "pretrain_steps=0", "integer >= 1"),
    ("08 steps 0", _chapter("08", steps=0), E, "dpo_max_steps=0", "integer >= 1"),
    ("08 full_lr str", _chapter("08", full_lr="1e-4"), E, "full_lr='1e-4'", "float > 0"),
    ("09 pair of one", _chapter("09", pair=[0]), E, "pair=[0]", "two different behaviours"),
    ("09 pair twice", _chapter("09", pair=[84, 84]), E, "pair=[84, 84]", "two different"),
    ("09 pair range", _chapter("09", pair=[0, 140]), E, "number 140", "from 0 to 134"),
    ("09 mode", _chapter("09", mode="qlora"), E, "mode='qlora'", "['full', 'lora']"),
    ("09 batch 0", _chapter("09", pair_batch_size=0), E, "pair_batch_size=0", "integer >= 1"),
    ("10 behaviour", _chapter("10", behaviors=[0, "nope"]), E, "'nope'", "closest available"),
    ("10 flip_steps 0", _chapter("10", flip_steps=0), E, "flip_steps=0", "integer >= 1"),
    ("10 hh_steps -1", _chapter("10", hh_steps=-1), E, "hh_steps=-1", "integer >= 1"),
    ("11 projection", _chapter("11", projection="tsne"), E, "'tsne'", "['pca', 'umap']"),
    ("11 mode", _chapter("11", projection_mode="half"), E, "'half'", "['full', 'lora']"),
    ("12 two behaviours", _chapter("12", behavior=[0, 1]), E, "behavior=[0, 1]", "one behaviour"),
    ("12 steps 0", _chapter("12", steps=0), E, "steps=0", "integer >= 1"),
    ("12 lr negative", _chapter("12", learning_rate=-1e-6), E, "full_lr=-1e-06", "> 0"),
    ("06 model_name", _chapter("06", model_name="no model"), E, "model_name='no model'", "hub id"),
    ("08 model_name 7", _chapter("08", model_name=7), E, "model_name=7", "non-empty string"),
    ("11 model_name", _chapter("11", model_name="./nope"), E, "'./nope'", "local model folder"),
    ("unknown papermill", _chapter("09", injected=["foo"]), E, "['foo']", "['profile', 'model_"),
    ("unknown chapter", _chapter("99"), E, "chapter='99'", "'12'"),
    (
        "chapter profile",
        lambda t: book.check_parameters("02", {"profile": "llama"}, []),
        E,
        "'llama'",
        "['cpu', 'llama2-7b', 'mistral-7b', 'colab-t4']",
    ),
    # ---- persona data loader ------------------------------------------------------------------
    ("resolve float", lambda t: data.resolve_behaviors(1.0), P, "behaviors=1.0", "name (str)"),
    ("resolve bool", lambda t: data.resolve_behaviors([True]), P, "behaviour True", "0 to 134"),
    ("resolve range", lambda t: data.resolve_behaviors(200), P, "number 200", "0 to 134"),
    (
        "not utf-8",
        lambda t: data.load_persona(_persona(t / FIXTURE, [_row(), b"\xff\xfe bad"])),
        P,
        "tea.jsonl:2",
        "must be UTF-8",
    ),
    (
        "one row",
        lambda t: data.load_persona(_persona(t / FIXTURE, [_row()])),
        P,
        "'tea'",
        "at least 2 rows and both answer classes",
    ),
    (
        "one class",
        lambda t: data.load_persona(_persona(t / FIXTURE, [_row()] * 3)),
        P,
        "3 matching ' Yes' and 0",
        "both answer classes",
    ),
    (
        "huge line",
        lambda t: data.load_persona(_persona(t / FIXTURE, [_row(question="x" * 30000)])),
        P,
        "30000 characters",
        "at most 20000",
    ),
    ("no folder", lambda t: data.load_persona(t / "nowhere"), P, "nowhere", "corpus_dir()"),
    ("hh split", lambda t: hh_rlhf.load_hh_rlhf(split="validation"), P, "'validation'", "'test'"),
    # ---- the train CLI (exit status 2, one line on stderr) -----------------------------------
    ("cli max-steps", _cli("--behaviors", "0", "--max-steps", "0"), SystemExit, "'0'", ">= 1"),
    (
        "cli seed",
        _cli("--behaviors", "0", "--seed=4294967296"),
        SystemExit,
        "'4294967296'",
        "[0, 4294967296)",
    ),
    (
        "cli probe-every",
        _cli("--behaviors", "0", "--probe-every", "abc"),
        SystemExit,
        "'abc'",
        ">= 1",
    ),
    ("cli probe-train", _cli("--behaviors", "0", "--probe-train", "0"), SystemExit, "'0'", ">= 1"),
    ("cli mode", _cli("--behaviors", "0", "--mode", "qlora"), SystemExit, "'qlora'", "'lora'"),
    ("cli behaviour", _cli("--behaviors", "nope"), SystemExit, "'nope'", "closest available"),
    ("cli profile", _cli("--profile", "gpu", "--behaviors", "0"), SystemExit, "'gpu'", "'cpu'"),
    (
        "cli resume",
        lambda t: train.main(
            ["--behaviors", "0", "--resume-from", str(t / "none"), "--out", str(t / "o")]
        ),
        SystemExit,
        "none'",
        "--out folder of an earlier run",
    ),
]


@pytest.fixture
def guarded(monkeypatch, tmp_path):
    """Results and the working folder in tmp_path; every expensive step raises if reached."""

    def expensive(*args, **kwargs):
        raise AssertionError("expensive work was reached before the bad input was rejected")

    for owner, name in [
        (models, "load_model_and_tokenizer"),
        (models, "pretrain"),
        (models, "load_saved_model"),
        (run_cache, "train_behaviors"),
        (train, "train_behaviors"),
        (train, "save_trained"),
        (data, "_read_hub"),
        (embeddings, "last_token_features"),
    ]:
        monkeypatch.setattr(owner, name, expensive)
    monkeypatch.setenv("DPO_RESULTS_DIR", str(tmp_path / "results"))
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    return tmp_path


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_the_table_has_at_least_forty_distinct_bad_inputs():
    assert len({case[0] for case in CASES}) == len(CASES) >= 40


@pytest.mark.parametrize("name, call, error, value, allowed", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gets_an_early_clear_error(guarded, capsys, name, call, error, value, allowed):
    with pytest.raises(error) as raised:
        call(guarded)
    if error is SystemExit:
        assert raised.value.code == 2
        message = capsys.readouterr().err.strip()
        assert message.startswith("error: ") and "\n" not in message, message
    else:
        message = str(raised.value)
    assert value in message, message
    assert allowed in message, message
    # the only files are the working folder and the bad persona file the case itself wrote
    written = [f for f in _files(guarded) if not f.startswith(FIXTURE)]
    assert written == ["cwd"], f"files written: {written}"


def test_unknown_papermill_parameters_are_read_from_the_injected_cell(monkeypatch):
    class Shell:
        user_ns = {"In": ["", "profile = 'cpu'\npair = None", "# Parameters\nfoo = 1\n", "now"]}

    import IPython

    monkeypatch.setattr(IPython, "get_ipython", lambda: Shell())
    assert chapter_parameters.injected_parameter_names() == ["foo"]
    with pytest.raises(E, match=r"chapter 09 has no parameter\(s\) \['foo'\]"):
        book.check_parameters("09", {"profile": "cpu"})
    Shell.user_ns["In"][2] = "# Parameters\nprofile = 'cpu'\nmode = 'lora'\n"
    assert book.check_parameters("09", {"profile": "cpu", "mode": "lora"})["mode"] == "lora"


def test_good_values_pass_and_none_keeps_the_default():
    got = book.check_parameters("09", {"profile": "cpu", "pair": [123, 45], "mode": None}, [])
    assert got["pair"] == [data.PERSONA_BEHAVIORS[i] for i in (123, 45)]  # the real behaviours
    assert got["mode"] is None and got["pair_batch_size"] is None
    assert (
        book.check_parameters("01", {"profile": "cpu", "vocab_size": 500}, [])["vocab_size"] == 500
    )


def test_makefile_knows_the_same_profiles_and_refuses_others():
    text = (ROOT / "Makefile").read_text()
    listed = re.search(r"^PROFILES := (.*)$", text, re.M).group(1).split()
    assert listed == list(config.PROFILES)
    bad = subprocess.run(
        ["make", "-n", "-C", str(ROOT), "help", "PROFILE=cpu; touch /tmp/pwned"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode != 0 and "is not a known profile" in bad.stderr
    assert "llama2-7b" in bad.stderr


def test_ensure_tools_prints_the_root_command_instead_of_running_sudo(tmp_path):
    """Item 17: the script ran sudo unasked when not root."""
    shims = tmp_path / "bin"
    shims.mkdir()
    (shims / "id").write_text("#!/bin/sh\necho 1000\n")
    (shims / "sudo").write_text(f"#!/bin/sh\ntouch {tmp_path}/sudo-ran\n")
    for shim in shims.iterdir():
        shim.chmod(0o755)
    script = ROOT / "browser_tests" / "ensure_tools.sh"
    run = subprocess.run(
        ["bash", "-c", f'source <(sed -n "/^as_root()/,/^}}/p" {script}); as_root apt-get -y x'],
        capture_output=True,
        text=True,
        env={"PATH": f"{shims}:/usr/bin:/bin"},
    )
    assert run.returncode == 1 and "sudo apt-get -y x" in run.stderr
    assert not (tmp_path / "sudo-ran").exists()


def test_banner_line_says_computed_now_or_cached_with_the_key():
    """Item 9: the provenance banner names each result's key and where it came from."""
    entries = [
        dict(kind="table", name="sweep", key="abc123", from_cache=False),
        dict(kind="table", name="sweep", key="abc123", from_cache=True),
        dict(kind="run", name="dpo", key="dpo-9f8e", from_cache=True),
    ]
    line = book.provenance_line(entries)
    assert line == (
        "Results computed now: table sweep (abc123); loaded from cache (results/): "
        "DPO run dpo (dpo-9f8e)."
    )
    assert "\n" not in line and book.provenance_line([]) == "Results: none yet."


def test_banner_line_counts_a_large_group_instead_of_listing_its_keys():
    # issue 14: a chapter of 48 runs printed 48 hashes; more than two of a kind are counted
    runs = [dict(kind="run", name="dpo", key=f"dpo-{i}", from_cache=True) for i in range(16)]
    features = [dict(kind="features", name="features", key="f1", from_cache=False)]
    line = book.provenance_line(runs + features)
    assert line == (
        "Results computed now: feature set features (f1); loaded from cache (results/): "
        "16 DPO runs."
    )


@pytest.mark.parametrize("notebook", sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")))
def test_each_chapter_checks_exactly_its_parameters_first(notebook):
    """Item 12: the spec lists the chapter's parameters, and the cell after `parameters` checks
    them before it resolves the profile."""
    cells = json.loads(notebook.read_text())["cells"]
    at = next(i for i, c in enumerate(cells) if "parameters" in c["metadata"].get("tags", []))
    tree = ast.parse("".join(cells[at]["source"]))
    names = [t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets]
    chapter = notebook.name[:2]
    assert names == ["profile", *chapter_parameters.CHAPTER_PARAMETERS[chapter]]
    after = "".join(cells[at + 1]["source"])
    call = f'book.check_parameters("{chapter}", globals())'
    assert call in after and after.index(call) < after.index("config.get_config(")
    code = re.sub(r"#.*", "", after)
    for name in names:  # no `parameter or default`: a 0 would silently become the default
        assert not re.search(rf"\b{name}\s+or\b", code), (chapter, name)


MODEL_CHAPTERS = sorted(
    p for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb") if "06" <= p.name[:2] <= "12"
)


@pytest.mark.parametrize("notebook", MODEL_CHAPTERS, ids=lambda p: p.name[:2])
def test_the_model_name_parameter_reaches_the_config(notebook, monkeypatch):
    """Issue 12 item 20: chapters 06-12 take ``model_name`` (None = the profile's or $DPO_MODEL).
    The chapter's parameters cell and the cell after it run with papermill's value injected; the
    config they resolve carries it (no model is loaded there)."""
    monkeypatch.delenv(config.MODEL_ENV_VAR, raising=False)
    monkeypatch.delenv("DPO_TINY_STAND_IN", raising=False)
    monkeypatch.setattr(book, "start_chapter", lambda cfg, **shown: "cpu")  # no banner, no theme
    cells = json.loads(notebook.read_text())["cells"]
    at = next(i for i, c in enumerate(cells) if "parameters" in c["metadata"].get("tags", []))
    namespace: dict = {"os": __import__("os")}
    exec("".join(cells[at]["source"]), namespace)
    namespace.update(profile="cpu", model_name="owner/some-causal-lm")  # papermill's injection
    exec("".join(cells[at + 1]["source"]), namespace)
    assert namespace["cfg"].model_name == "owner/some-causal-lm"
    namespace.update(model_name=None)  # None: $DPO_MODEL, else the profile's
    monkeypatch.setenv(config.MODEL_ENV_VAR, "owner/from-the-environment")
    exec("".join(cells[at + 1]["source"]), namespace)
    assert namespace["cfg"].model_name == "owner/from-the-environment"


@pytest.mark.slow
def test_a_bad_model_name_stops_the_chapter_under_papermill(tmp_path):
    """The chapter stops in its parameter check, naming the value and what is allowed."""
    import papermill

    with pytest.raises(papermill.PapermillExecutionError) as raised:
        papermill.execute_notebook(
            str(ROOT / "notebooks" / "09_prioritisation_llm.ipynb"),
            str(tmp_path / "09.ipynb"),
            parameters={"profile": "cpu", "model_name": "not a model"},
            cwd=str(ROOT / "notebooks"),
            kernel_name="python3",
            progress_bar=False,
        )
    assert raised.value.ename == "ConfigError"
    assert "model_name='not a model' is not allowed" in raised.value.evalue
    assert "hub id" in raised.value.evalue
