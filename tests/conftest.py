"""Shared pytest setup: offline, deterministic, and results written to a temporary folder."""

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def results_root(tmp_path_factory):
    """One temporary results folder for the whole test session (``$DPO_RESULTS_DIR``)."""
    return tmp_path_factory.mktemp("results")


@pytest.fixture(autouse=True)
def _results_in_a_temporary_folder(results_root, monkeypatch):
    """Every unit test writes its tables, features and models under ``results_root``, never into
    the repository's ``results/`` (a test may still point ``DPO_RESULTS_DIR`` elsewhere).

    Set per test rather than for the process, so the notebooks that ``make test`` executes after
    the unit tests keep using (and filling) the repository's cache that ``make book`` reuses.
    """
    monkeypatch.setenv("DPO_RESULTS_DIR", str(results_root))
    return results_root
