"""Wall time of a cold CPU-profile book build, run as ``make book`` runs it, without touching the
project's ``results/`` or ``_build/``.

    python benchmarks/cold_book.py                    # as make book (background job, workers)
    python benchmarks/cold_book.py --no-background    # without the background setup
    python benchmarks/cold_book.py --no-service       # without the shared workers

Every model, run and table goes to a fresh temporary folder (``DPO_RESULTS_DIR``), and so does the
build (``jupyter-book build --path-output``, which keeps its own execution cache there), so every
chapter executes and computes everything. Like ``make book``, the default starts ``nice -n 10
python -m dpo_utils.measuring_setup`` beside jupyter-book (chapter 06's stand-ins, made ready while
chapters 01-05 run) and ``python -m dpo_utils.worker_service`` (the workers every chapter borrows,
named by ``DPO_WORKER_SERVICE``). It prints the build's wall time, each notebook's execution time
(from the execution cache's records) and the background job's. The temporary folder is removed at
the end unless ``--keep`` is given. Run it on a quiet machine: on two cores, any other load shows
in every number.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OFFLINE = dict(
    HF_HUB_OFFLINE="1",
    HF_DATASETS_OFFLINE="1",
    HF_HUB_DISABLE_TELEMETRY="1",
    TOKENIZERS_PARALLELISM="false",
    PYDEVD_DISABLE_FILE_VALIDATION="1",
)


def notebook_times(build: Path) -> dict[str, float]:
    """Execution seconds per notebook, from the jupyter-cache under ``build``."""
    from jupyter_cache import get_cache

    found = sorted(build.rglob(".jupyter_cache"))
    if not found:
        return {}
    records = get_cache(str(found[0])).list_cache_records()
    return {
        Path(r.uri).relative_to(ROOT).as_posix(): float(r.data.get("execution_seconds", "nan"))
        for r in records
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--no-background",
        action="store_true",
        help="do not start dpo_utils.measuring_setup beside jupyter-book",
    )
    parser.add_argument(
        "--no-service",
        action="store_true",
        help="do not start dpo_utils.worker_service: each chapter starts its own workers",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args(argv)
    scratch = Path(tempfile.mkdtemp(prefix="cold-book-"))
    env = {**os.environ, **OFFLINE, "DPO_PROFILE": "cpu", "DPO_RESULTS_DIR": str(scratch / "r")}
    env.pop("DPO_FORCE_RERUN", None)
    binary = Path(sys.executable).parent
    start = time.perf_counter()
    background = service = None
    try:
        if not args.no_background:
            log = (scratch / "measuring_setup.log").open("w")
            # as make book starts it: at a lower priority (nice -n 10)
            command = ["nice", "-n", "10", sys.executable, "-m", "dpo_utils.measuring_setup"]
            background = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=log)
        if not args.no_service:
            log = (scratch / "worker_service.log").open("w")
            address = str(scratch / "workers")
            command = [sys.executable, "-m", "dpo_utils.worker_service", "--address", address]
            service = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=log)
            env["DPO_WORKER_SERVICE"] = address
        out = ["--path-output", str(scratch / "b")]
        book = [str(binary / "jupyter-book"), "build", str(ROOT), *out, "-W", "-n", "--keep-going"]
        done = subprocess.run(book, cwd=ROOT, env=env)
        wall = time.perf_counter() - start
        for process in (background, service):  # as make book: stopped once jupyter-book returns
            if process is not None:
                process.terminate()
                process.wait()
        times = notebook_times(scratch / "b")
        for name, seconds in times.items():
            print(f"{seconds:8.1f} s  {name}")
        print(f"{sum(times.values()):8.1f} s  notebooks together")
        if background is not None:
            lines = (scratch / "measuring_setup.log").read_text().strip().splitlines()
            print(f"background job: {lines[-1] if lines else '(no output)'}")
        print(f"cold book build: {wall:.1f} s wall, exit status {done.returncode}")
    finally:
        for process in (background, service):
            if process is not None and process.poll() is None:
                process.terminate()
                process.wait()
        if args.keep:
            print(f"kept: {scratch}")
        else:
            shutil.rmtree(scratch)
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
