"""dpo_utils.worker_service: a chapter's jobs go to a build-wide service's workers, and come back
as its own pool would return them; without a usable service, the chapter's own pool."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import service_jobs

from dpo_utils import results, runtime, worker_service

pytestmark = pytest.mark.slow
TESTS = Path(__file__).resolve().parent


def _start(folder: Path):
    """A service with two workers on a socket in ``folder`` (made private, as mktemp -d does),
    once its socket exists; its output goes to ``folder/log``."""
    folder.chmod(0o700)
    address = str(folder / "workers")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), *sys.path])}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dpo_utils.worker_service",
            "--address",
            address,
            "--processes",
            "2",
        ],
        env=env,
        stdout=(folder / "log").open("w"),
        stderr=subprocess.STDOUT,
    )
    for _ in range(200):
        if os.path.exists(address):
            break
        time.sleep(0.05)
    assert os.path.exists(address), (folder / "log").read_text()
    return process, address


def _stop(process) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    """One service for the tests that leave it running (its workers start once)."""
    process, address = _start(tmp_path_factory.mktemp("service"))
    yield process, address
    _stop(process)


@pytest.fixture
def service(running, monkeypatch):
    monkeypatch.setenv(runtime.SERVICE_ENV, running[1])
    return running


@pytest.fixture
def own_service(tmp_path, monkeypatch):
    """A service of this test's own (the test stops it)."""
    process, address = _start(tmp_path)
    monkeypatch.setenv(runtime.SERVICE_ENV, address)
    yield process, address
    _stop(process)


def test_jobs_run_in_the_services_workers_with_the_callers_environment(service, monkeypatch):
    process, _ = service
    monkeypatch.setenv("SERVICE_TEST_MARK", "first")
    monkeypatch.chdir(TESTS)
    before = len(results.provenance_log())
    out = runtime.process_map(service_jobs.where, [1, 2, 3, 4], processes=2)
    assert [o[0] for o in out] == [1, 2, 3, 4]  # in order
    assert {o[1] for o in out} == {process.pid}  # the service's workers, not a pool of ours
    assert {o[3] for o in out} == {"first"}  # under this process's environment at the call
    assert {o[4] for o in out} == {str(TESTS)}  # and in its working directory
    entries = results.provenance_log()[before:]
    assert sorted(e["key"] for e in entries if e["kind"] == "test") == ["1", "2", "3", "4"]
    workers = {o[2] for o in out}
    monkeypatch.setenv("SERVICE_TEST_MARK", "second")
    again = runtime.process_map(service_jobs.where, [5, 6, 7, 8], processes=2)
    assert len(workers | {o[2] for o in again}) <= 2  # the same two workers, kept
    assert {o[3] for o in again} == {"second"}


def test_a_workers_exception_is_raised_in_the_caller(service):
    with pytest.raises(ValueError, match="job [12] failed on purpose") as raised:
        runtime.process_map(service_jobs.fail, [1, 2], processes=2)
    # with the worker's traceback as its cause, as a pool of the caller's own gives it
    assert isinstance(raised.value.__cause__, worker_service.WorkerTraceback)
    assert "service_jobs.py" in str(raised.value.__cause__)
    out = runtime.process_map(service_jobs.where, [1, 2], processes=2)  # still serving
    assert {o[1] for o in out} == {service[0].pid}


def test_without_a_usable_service_the_caller_uses_its_own_pool(service, monkeypatch, tmp_path):
    process, _ = service
    # another pool size than the service's: refused (and logged), so a pool of this process's own
    out = runtime.process_map(service_jobs.where, [1, 2, 3], processes=3)
    assert {o[1] for o in out} == {os.getpid()}
    log = (Path(service[1]).parent / "log").read_text()
    assert "refused a dispatch: 3 processes asked for, 2 served" in log
    # package code that changed since the service started: refused
    monkeypatch.setattr(worker_service, "code_fingerprint", lambda: "other code")
    out = runtime.process_map(service_jobs.where, [1, 2], processes=2)
    assert {o[1] for o in out} == {os.getpid()}
    monkeypatch.undo()
    # no service at the address
    monkeypatch.setenv(runtime.SERVICE_ENV, str(tmp_path / "nothing-here"))
    out = runtime.process_map(service_jobs.where, [1, 2], processes=2)
    assert {o[1] for o in out} == {os.getpid()}
    runtime._shutdown()


def test_sigterm_stops_the_service_its_workers_and_removes_the_socket(own_service):
    process, address = own_service
    out = runtime.process_map(service_jobs.where, [1, 2, 3, 4], processes=2)
    workers = {o[2] for o in out}
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) != 0
    assert "worker service stopped (SIGTERM)" in (Path(address).parent / "log").read_text()
    assert not os.path.exists(address)
    for pid in workers:
        for _ in range(100):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            pytest.fail(f"worker {pid} still runs after the service stopped")


def test_bad_arguments_are_refused_before_serving(tmp_path):
    for args, message in (
        (["--address", str(tmp_path / "no" / "sock")], "does not exist"),
        (["--address", str(tmp_path / "s"), "--processes", "0"], "whole number >= 1"),
        (["--address", str(tmp_path / "open" / "s")], "must be yours and private"),
    ):
        (tmp_path / "open").mkdir(mode=0o755, exist_ok=True)
        (tmp_path / "open").chmod(0o755)
        done = subprocess.run(
            [sys.executable, "-m", "dpo_utils.worker_service", *args],
            capture_output=True,
            text=True,
        )
        assert done.returncode == 2 and message in done.stderr
