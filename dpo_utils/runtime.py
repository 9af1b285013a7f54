"""How the experiments run: one torch thread for many small operations, stable per-run seeds,
and independent CPU runs spread over worker processes.

Shared by the chapter experiments of both halves of the book (synthetic_experiments,
feature_experiments) and by the run cache (run_cache.prefill).
"""

from __future__ import annotations

import atexit
import functools
import gc
import multiprocessing
import os
import signal
import sys
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, ParamSpec, TypeVar

import torch

from . import results
from .fingerprint import code_fingerprint

__all__ = [
    "settle_worker",
    "NotCached",
    "single_threaded",
    "run_seed",
    "worker_processes",
    "process_map",
    "PROCESSES_ENV",
    "SERVICE_ENV",
    "exit_on_sigterm",
]

#: environment variable: how many CPU runs train at once (1 trains in the notebook's own process)
PROCESSES_ENV = "DPO_PROCESSES"
#: environment variable: the socket of a build-wide worker service (dpo_utils.worker_service)
SERVICE_ENV = "DPO_WORKER_SERVICE"
#: on a CPU box, at most this many worker processes by default (each uses one core)
MAX_DEFAULT_PROCESSES = 4


_P = ParamSpec("_P")
_R = TypeVar("_R")


def single_threaded(func: Callable[_P, _R]) -> Callable[_P, _R]:
    """Run ``func`` with one torch intra-op thread, then restore the previous setting.

    These experiments are many small tensor operations; on a shared two-core machine a second
    thread only adds contention (measured: 10x slower under load), never speed.

    Used by: dpo_utils.feature_experiments, dpo_utils.priority_experiments,
    dpo_utils.synthetic_experiments.
    """

    @functools.wraps(func)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        previous = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return func(*args, **kwargs)
        finally:
            torch.set_num_threads(previous)

    return wrapper


class NotCached(LookupError):
    """A result asked for from the cache only (a pre-pass that decides what workers must compute)
    that is not there yet.

    Used by: dpo_utils.feature_experiments.
    """


def run_seed(*labels: object) -> int:
    """A stable 31-bit seed from a run's labels (the same labels always give the same seed).

    Used by: dpo_utils.feature_experiments, dpo_utils.priority_experiments,
    dpo_utils.synthetic_experiments.
    """
    return zlib.crc32(repr(labels).encode()) & 0x7FFFFFFF


def worker_processes(on_gpu: bool) -> int:
    """How many independent runs to train at once: ``$DPO_PROCESSES`` if set, else 1 on a GPU
    (one model fills it), else one per core up to ``MAX_DEFAULT_PROCESSES``. Tiny models gain
    nothing from a second torch thread, so two single-threaded processes on two cores train two
    runs in the time of one (benchmarks/bench_parallel_runs.py).

    Used by: dpo_utils.feature_experiments, dpo_utils.measuring_experiments, dpo_utils.run_cache.
    """
    raw = os.environ.get(PROCESSES_ENV, "").strip()
    if raw:
        try:
            value = int(raw)
        except ValueError:
            value = 0
        if value < 1:
            raise ValueError(
                f"{PROCESSES_ENV}={raw!r} is not allowed; give a whole number >= 1 "
                "(1: train in the notebook's own process)."
            )
        return value
    if on_gpu:
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(MAX_DEFAULT_PROCESSES, cores or 1))


def settle_worker() -> int:
    """In a worker of :func:`process_map`, after each job: collect garbage once, then freeze
    the survivors (:func:`gc.freeze`), and return how many objects are frozen; in any other
    process (a notebook's own), do nothing and return 0.

    A worker holds about half a million objects once torch, transformers and trl are imported, and
    every DPO run collects garbage twice (``train_dpo`` before it starts, accelerate when it
    ends): 0.25 s each, a tenth of a stand-in run. Frozen objects are skipped, so later
    collections walk only the next run's objects. What is frozen was alive between two runs
    (modules, caches), and a worker lives one chapter (one build, under ``make book``'s worker
    service). Never in the notebook's process: a model frozen there, at 7B on a GPU, could never
    be freed.

    Used by: dpo_utils.runtime.
    """
    if multiprocessing.parent_process() is None:
        return 0
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


_POOL: dict[str, Any] = {"executor": None, "size": 0}


def _init_worker() -> None:
    torch.set_num_threads(1)
    # Ctrl-C (a notebook's "interrupt") stops the parent's wait, which then cancels the queued
    # runs; a worker finishes its current run instead of printing a traceback mid-run
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    exit_on_sigterm("worker stopped (SIGTERM)")  # the worker service's end


def exit_on_sigterm(message: str) -> None:
    """Handle SIGTERM in this process as ``sys.exit(message)``: a process stopped from outside
    (``make book``'s end, Ctrl-C) leaves as after an exception, so that a folder being written
    is removed (``atomic_directory``), never left half-written.

    Used by: dpo_utils.measuring_setup, dpo_utils.runtime, dpo_utils.worker_service.
    """
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(message))


def _executor(processes: int) -> ProcessPoolExecutor:
    """One pool of spawned single-threaded workers per process, kept for the next call (a worker
    imports torch and transformers once, ~5 s, not once per run). A pool started before the
    package's source changed is replaced: its workers would run the old code into folders keyed
    by the new code."""
    code = code_fingerprint()
    if _POOL["executor"] is None or _POOL["size"] != processes or _POOL.get("code") != code:
        _shutdown()
        _POOL["code"] = code
        _POOL["executor"] = ProcessPoolExecutor(
            max_workers=processes,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
        )
        _POOL["size"] = processes
    return _POOL["executor"]


def _shutdown() -> None:
    if _POOL["executor"] is not None:
        _POOL["executor"].shutdown(wait=True, cancel_futures=True)
        _POOL["executor"] = None
        _POOL["size"] = 0


atexit.register(_shutdown)


def _logged(
    call: tuple[Callable[[Any], Any], Any, dict[str, str], str],
) -> tuple[Any, list[dict]]:
    """In a worker: ``func(job)`` under the caller's environment and working directory as they are
    now (a worker outlives the call that started it, so a ``DPO_RESULTS_DIR``, a
    ``DPO_FORCE_RERUN`` or a ``cd`` made later must reach it), and the provenance entries it
    recorded, so that the parent's banner can say what was computed now; then
    :func:`settle_worker`."""
    func, job, environment, cwd = call
    if dict(os.environ) != environment:
        os.environ.clear()
        os.environ.update(environment)
    if os.getcwd() != cwd:
        os.chdir(cwd)
    before = len(results.provenance_log())
    output = func(job)
    settle_worker()
    return output, results.provenance_log()[before:]


def process_map(func: Callable[[Any], Any], jobs: Sequence[Any], processes: int) -> list:
    """``[func(job) for job in jobs]``, computed by ``processes`` spawned workers (each with one
    torch thread): a build-wide worker service's where ``$DPO_WORKER_SERVICE`` names one that
    agrees to serve (:mod:`dpo_utils.worker_service`), else this process's own; in this process
    when ``processes`` is 1 or there is one job. ``func`` must be a module-level function and each
    job picklable. Each job runs under this process's environment variables and working directory
    as they are at the call. A worker's exception is raised here;
    what a worker computed or loaded is added to this process's provenance log
    (:func:`dpo_utils.results.provenance_log`).

    Used by: dpo_utils.feature_experiments, dpo_utils.measuring_setup, dpo_utils.run_cache.
    """
    if processes < 1:
        raise ValueError(f"processes={processes!r} is not allowed; give a whole number >= 1.")
    if processes == 1 or len(jobs) <= 1:
        return [func(job) for job in jobs]
    context = (dict(os.environ), os.getcwd())
    calls = [(func, job, *context) for job in jobs]
    outputs = _borrowed(calls, processes)
    if outputs is None:
        outputs = _own_pool(calls, processes)
    for _, entries in outputs:
        for entry in entries:
            results.record_provenance(**entry)
    return [value for value, _ in outputs]


def _borrowed(calls: list, processes: int) -> list | None:
    """The outputs of a build-wide worker service's workers (``$DPO_WORKER_SERVICE``, which
    ``make book`` sets), or None where there is none to use (a worker never borrows)."""
    address = os.environ.get(SERVICE_ENV, "").strip()
    if not address or multiprocessing.parent_process() is not None:
        return None
    from .worker_service import dispatch

    return dispatch(address, calls, processes)


def _own_pool(calls: list, processes: int) -> list:
    pool = _executor(processes)
    try:
        outputs = list(pool.map(_logged, calls))
    except KeyboardInterrupt:
        pool.shutdown(wait=False, cancel_futures=True)
        _POOL.update(executor=None, size=0)
        raise
    except BrokenProcessPool as error:
        _shutdown()
        raise RuntimeError(
            f"a worker process died ({error}). Workers are spawned and import the main module: a "
            'script must keep its top level under `if __name__ == "__main__":`. If memory is '
            f"short, set {PROCESSES_ENV}=1 to train one run at a time in this process."
        ) from error
    return outputs
