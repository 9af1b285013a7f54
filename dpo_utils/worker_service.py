"""Worker processes that live for a whole book build: chapters borrow them instead of starting
their own.

Each chapter executes in a kernel of its own, and a chapter that trains on two cores starts two
spawned workers (:func:`dpo_utils.runtime.process_map`). A worker imports torch, transformers, trl
and peft before its first run: about 9 CPU seconds, paid twice by every such chapter (06-10 on the
CPU profile), while the chapter waits. ``make book`` therefore starts this service beside
jupyter-book (``python -m dpo_utils.worker_service --address PATH``) and exports
``$DPO_WORKER_SERVICE=PATH``. ``process_map`` then sends a chapter's jobs here, over a Unix socket
in a private folder, and gets the same answers its own pool would give: each job still runs under
the chapter's environment variables and working directory, with one torch thread, and comes back
with its provenance entries.

It changes where a job runs, never what it computes. Where the service is absent, refuses (a
different pool size asked for, package code that changed since it started, a pool that broke)
or stops mid-dispatch, ``process_map`` uses a pool of its own, as without the service; a refusal
is written to the service's log with its reason. Jobs and their outputs travel pickled and are
opened only in the workers and the chapter, so the service itself never imports what the jobs
need. A worker's exception is raised in the chapter, with the worker's traceback. A chapter
interrupted mid-dispatch closes its connection, and the service cancels that chapter's queued
jobs. The socket's folder must be private (no access for group or others): anyone who can
connect can run code in the workers.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import pickle
import signal
import stat
import sys
import threading
import warnings
from collections.abc import Sequence
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from multiprocessing.connection import Client, Listener

from .fingerprint import code_fingerprint
from .runtime import _init_worker, _logged, exit_on_sigterm, worker_processes

__all__ = ["dispatch", "serve", "main"]


class WorkerTraceback(Exception):
    """The traceback of a worker's exception, as text (the cause of the exception raised).

    Used by: dpo_utils.worker_service.
    """


def dispatch(address: str, calls: list, processes: int) -> list | None:
    """The outputs of ``calls`` (``runtime._logged`` arguments) computed by the service at
    ``address``, in order; None where there is no service there, it refuses (pool size other
    than ``processes``, other package code, a broken pool), or it stops before answering.

    Used by: dpo_utils.runtime.
    """
    try:
        conn = Client(address, family="AF_UNIX")
    except OSError:
        return None
    blobs = [pickle.dumps(call) for call in calls]
    with conn:  # on Ctrl-C the connection closes, and the service cancels what is queued
        try:
            conn.send(dict(code=code_fingerprint(), processes=processes, calls=blobs))
            status, value = conn.recv()
        except (EOFError, OSError):
            warnings.warn(
                f"the worker service at {address} stopped mid-dispatch; these runs go to a pool "
                "of this process's own (finished ones are read from the cache).",
                stacklevel=3,
            )
            return None
    if status == "error":
        error, trace = value
        if isinstance(error, BrokenProcessPool):
            raise RuntimeError(
                f"a worker process of the worker service died ({error}). If memory is short, "
                "set DPO_PROCESSES=1 to train one run at a time in the notebook's process."
            ) from error
        raise error from (WorkerTraceback(trace) if trace else None)
    return [pickle.loads(blob) for blob in value] if status == "ok" else None


def _run_pickled(blob: bytes) -> bytes:
    """In a worker: one pickled ``_logged`` call, its output pickled again for the chapter."""
    return pickle.dumps(_logged(pickle.loads(blob)))


class _Service:
    """The pool and its settings; the pool is started at the first request (a build's chapters
    01-05 need no workers) and replaced if it breaks."""

    def __init__(self, processes: int):
        self.processes, self.code = processes, code_fingerprint()
        self.pool: ProcessPoolExecutor | None = None
        self.lock = threading.Lock()

    def executor(self) -> ProcessPoolExecutor:
        with self.lock:
            if self.pool is None:
                self.pool = ProcessPoolExecutor(
                    max_workers=self.processes,
                    mp_context=multiprocessing.get_context("spawn"),
                    initializer=_init_worker,
                )
            return self.pool

    def _drop(self, pool: ProcessPoolExecutor) -> None:
        """A broken pool: the next request starts a new one."""
        with self.lock:
            if self.pool is pool:
                self.pool = None
        pool.shutdown(wait=False, cancel_futures=True)

    def _refuse(self, conn, why: str) -> None:
        print(f"worker service: refused a dispatch: {why}", flush=True)
        conn.send(("refused", why))

    def answer(self, conn) -> None:
        """One chapter's dispatch: run its calls, send ("ok", outputs), ("error", (exception,
        traceback)) or ("refused", why); cancel what is queued if the chapter goes away first."""
        with conn, contextlib.suppress(EOFError, OSError):  # a chapter gone: nothing to answer
            request = conn.recv()
            if request["code"] != self.code:
                return self._refuse(conn, "the package code changed since the service started")
            if request["processes"] != self.processes:
                asked, served = request["processes"], self.processes
                return self._refuse(conn, f"{asked} processes asked for, {served} served")
            pool = self.executor()
            try:
                futures = [pool.submit(_run_pickled, blob) for blob in request["calls"]]
            except (BrokenProcessPool, RuntimeError) as broken:  # broke while idle
                self._drop(pool)
                return self._refuse(conn, f"the pool broke ({broken}); a new one starts next")
            while True:
                done, pending = wait(futures, timeout=0.5, return_when=FIRST_EXCEPTION)
                failed = [f for f in done if not f.cancelled() and f.exception() is not None]
                if failed or not pending or any(f.cancelled() for f in done):
                    break
                if conn.poll():  # the chapter closed the connection (Ctrl-C): stop its jobs
                    for future in pending:
                        future.cancel()
                    return None
            for future in pending:
                future.cancel()
            if not failed and any(f.cancelled() for f in futures):  # stopped from outside
                return self._refuse(conn, "the service is stopping")
            if failed:
                error = failed[0].exception()
                assert error is not None  # failed holds only futures that raised
                if isinstance(error, BrokenProcessPool):
                    self._drop(pool)
                return _send_error(conn, error)
            conn.send(("ok", [f.result() for f in futures]))
        return None

    def close(self) -> None:
        pool, self.pool = self.pool, None
        if pool is not None:
            processes = list(getattr(pool, "_processes", {}).values())
            pool.shutdown(wait=False, cancel_futures=True)
            for process in processes:  # a run in progress is interrupted: its folder is removed
                with contextlib.suppress(Exception):
                    process.terminate()
                    process.join(timeout=10)
                    if process.is_alive():
                        process.kill()


def _send_error(conn, error: BaseException) -> None:
    trace = str(error.__cause__) if error.__cause__ is not None else None
    try:
        conn.send(("error", (error, trace)))
    except Exception:  # an exception that does not pickle: its type and message
        conn.send(("error", (RuntimeError(f"{type(error).__name__}: {error}"), trace)))


def serve(address: str, processes: int) -> None:
    """Answer dispatches at the Unix socket ``address`` until stopped, with ``processes``
    workers.

    Used by: dpo_utils.worker_service.
    """
    service = _Service(processes)
    listener = Listener(address, family="AF_UNIX")
    try:
        while True:
            conn = listener.accept()
            threading.Thread(target=service.answer, args=(conn,), daemon=True).start()
    finally:
        # a second SIGTERM (make's trap, then its cleanup) must not cut the cleanup short
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        listener.close()
        service.close()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m dpo_utils.worker_service --address PATH [--processes N]``: serve until
    SIGTERM (``make book`` stops it when jupyter-book returns, or on Ctrl-C).

    Used by: ``python -m dpo_utils.worker_service`` (``make book``).
    """
    parser = argparse.ArgumentParser(
        prog="python -m dpo_utils.worker_service", description=main.__doc__
    )
    parser.add_argument("--address", required=True, help="path of the Unix socket to create")
    parser.add_argument("--processes", type=int, default=None)
    args = parser.parse_args(argv)
    if args.processes is not None and args.processes < 1:
        parser.error(f"--processes {args.processes}: give a whole number >= 1.")
    processes = args.processes or worker_processes(on_gpu=False)
    folder = os.path.dirname(os.path.abspath(args.address))
    if not os.path.isdir(folder):
        parser.error(f"--address {args.address!r}: folder {folder!r} does not exist.")
    info = os.stat(folder)
    if info.st_uid != os.getuid() or stat.S_IMODE(info.st_mode) & 0o077:
        parser.error(
            f"--address {args.address!r}: folder {folder!r} has mode "
            f"{oct(stat.S_IMODE(info.st_mode))}; it must be yours and private (mode 0o700, as "
            "mktemp -d makes it): anyone who can connect runs code in the workers."
        )
    exit_on_sigterm("worker service stopped (SIGTERM)")
    print(f"worker service: {processes} workers, socket {args.address}", flush=True)
    serve(args.address, processes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
