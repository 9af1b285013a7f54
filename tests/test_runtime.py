"""runtime: how many worker processes train runs at once, and the process map itself."""

from __future__ import annotations

import os

import pytest

from dpo_utils import runtime


def test_workers_default_to_one_on_a_gpu_and_to_the_cores_on_a_cpu(monkeypatch):
    monkeypatch.delenv(runtime.PROCESSES_ENV, raising=False)
    assert runtime.worker_processes(on_gpu=True) == 1
    n = runtime.worker_processes(on_gpu=False)
    assert 1 <= n <= runtime.MAX_DEFAULT_PROCESSES


def test_workers_follow_the_environment(monkeypatch):
    monkeypatch.setenv(runtime.PROCESSES_ENV, "3")
    assert runtime.worker_processes(on_gpu=True) == 3


@pytest.mark.parametrize("raw", ["0", "-2", "two", "1.5"])
def test_a_bad_worker_count_names_the_value_and_what_is_allowed(monkeypatch, raw):
    monkeypatch.setenv(runtime.PROCESSES_ENV, raw)
    with pytest.raises(ValueError, match=rf"DPO_PROCESSES='{raw}'.*whole number >= 1"):
        runtime.worker_processes(on_gpu=False)


@pytest.mark.slow  # spawns two workers that import torch (~10 s)
def test_process_map_keeps_the_order_of_the_jobs():
    jobs = [3, 1, 2]
    assert runtime.process_map(abs, [-j for j in jobs], processes=2) == jobs
    assert runtime.process_map(abs, [-4], processes=2) == [4]  # one job: no pool
    with pytest.raises(ValueError, match="processes=0"):
        runtime.process_map(abs, jobs, processes=0)


@pytest.mark.slow  # spawns two workers that import torch (~10 s)
def test_workers_see_the_environment_of_each_call_not_of_their_start(monkeypatch):
    # the pool outlives a call: a results folder or DPO_FORCE_RERUN set later must reach it (a
    # test suite that moved DPO_RESULTS_DIR found runs saved in the folder of an earlier test)
    for value in ("first", "second"):
        monkeypatch.setenv("DPO_TEST_VARIABLE", value)
        got = runtime.process_map(os.getenv, ["DPO_TEST_VARIABLE"] * 2, processes=2)
        assert got == [value, value]


@pytest.mark.slow  # spawns two workers that import torch (~10 s)
def test_workers_run_in_the_callers_working_directory_of_each_call(tmp_path, monkeypatch):
    # a relative results folder resolves against the working directory: it must be the caller's
    for folder in (tmp_path / "a", tmp_path / "b"):
        folder.mkdir()
        monkeypatch.chdir(folder)
        assert runtime.process_map(_cwd, [0, 1], processes=2) == [str(folder)] * 2


def _cwd(_job: int) -> str:
    return os.getcwd()


@pytest.mark.slow  # spawns workers twice (~15 s)
def test_a_pool_from_before_a_source_change_is_replaced(monkeypatch):
    # workers keep the code they imported: after an edit of dpo_utils they must not train old code
    # into folders keyed by the new code's fingerprint
    runtime.process_map(abs, [-1, -2], processes=2)
    before = runtime._POOL["executor"]
    runtime.process_map(abs, [-1, -2], processes=2)
    assert runtime._POOL["executor"] is before  # unchanged source: the same warm pool
    monkeypatch.setattr(runtime, "code_fingerprint", lambda: "edited")
    assert runtime.process_map(abs, [-1, -2], processes=2) == [1, 2]
    assert runtime._POOL["executor"] is not before


def _settle(_job: int) -> tuple[int, int]:
    import gc

    before = gc.get_freeze_count()
    return before, runtime.settle_worker()


@pytest.mark.slow  # spawns two workers that import torch (~10 s)
def test_settle_worker_freezes_only_in_a_worker():
    import gc

    before = gc.get_freeze_count()
    assert runtime.settle_worker() == 0 and gc.get_freeze_count() == before  # this process
    for frozen_before, frozen_after in runtime.process_map(_settle, [0, 1], processes=2):
        assert frozen_after > max(frozen_before, 10_000)  # a worker's imports, now frozen
