"""Forced race on one cache key: W writer processes publish the same folder T times each while
R readers read it; counts writer failures and reads that saw a partial folder.

    python benchmarks/race_cache.py --writers 4 --trials 60 --readers 2 --reads 2000
    python benchmarks/race_cache.py --module /path/to/other_results.py   # e.g. main's old version

Not part of `make test` (tests/test_results.py runs a small version of it).
"""

from __future__ import annotations

import argparse
import importlib.util
import multiprocessing
import tempfile
from contextlib import nullcontext
from pathlib import Path

N_FILES = 20


def _load(module_path: str | None):
    if module_path is None:
        from dpo_utils import results

        return results
    spec = importlib.util.spec_from_file_location("results_under_test", module_path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _writer(module_path, target, trials, queue):
    results = _load(module_path)
    failures = 0
    for i in range(trials):
        try:
            with results.atomic_directory(Path(target)) as tmp:
                for k in range(N_FILES):
                    (tmp / f"part{k}.txt").write_text(f"{i}\n" * 200)
        except Exception:
            failures += 1
    queue.put(("writer", failures))


def _reader(module_path, target, reads, queue):
    results = _load(module_path)
    lock = getattr(results, "cache_lock", None)
    partial = 0
    for _ in range(reads):
        with lock(Path(target)) if lock else nullcontext():
            if Path(target).is_dir():
                try:
                    ok = all((Path(target) / f"part{k}.txt").read_text() for k in range(N_FILES))
                except OSError:
                    ok = False
                partial += not ok
    queue.put(("reader", partial))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--writers", type=int, default=4)
    p.add_argument("--trials", type=int, default=60)
    p.add_argument("--readers", type=int, default=2)
    p.add_argument("--reads", type=int, default=2000)
    p.add_argument("--module", default=None, help="a results.py to test instead of dpo_utils'")
    args = p.parse_args(argv)
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    with tempfile.TemporaryDirectory() as tmp:
        target = str(Path(tmp) / "key")
        procs = [
            ctx.Process(target=_writer, args=(args.module, target, args.trials, queue))
            for _ in range(args.writers)
        ] + [
            ctx.Process(target=_reader, args=(args.module, target, args.reads, queue))
            for _ in range(args.readers)
        ]
        for proc in procs:
            proc.start()
        outcomes = [queue.get() for _ in procs]
        for proc in procs:
            proc.join()
        leftovers = len(list(Path(tmp).glob(".key.*.tmp")))
    summary = dict(
        writer_trials=args.writers * args.trials,
        writer_failures=sum(n for kind, n in outcomes if kind == "writer"),
        reads=args.readers * args.reads,
        partial_reads=sum(n for kind, n in outcomes if kind == "reader"),
        leftover_temporaries=leftovers,
    )
    print(summary)
    return summary


if __name__ == "__main__":
    main()
