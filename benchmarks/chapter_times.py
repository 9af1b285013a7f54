"""Wall time and peak memory of every chapter, from a cold run on one profile (default: cpu).

Each chapter notebook runs with papermill, one after another in the order a cold ``make book``
executes them (Sphinx reads the documents sorted by name, so 01, 02, ..., 13), all sharing one
fresh, empty results folder (``DPO_RESULTS_DIR`` set to a temporary directory, never the user's
``results/``): a later chapter reuses the stand-ins an earlier one trained, exactly as in a cold
build, and nothing is read from an earlier run. While a chapter runs, the resident memory of the
papermill process's children (the kernel and any worker processes it starts) is polled with psutil
every 0.2 s; ``peak_rss_mib`` is the largest sum seen. ``wall_s`` is the wall time of the whole
papermill run (kernel start included).

The JSON (default ``book/chapter_times.json``) records, beside the chapters, the machine (CPU
model, cores, RAM), the date, the git commit and whether the working tree had uncommitted changes.
The status page and the instructors' chapter table read it; this script also rewrites the chapter
table of book/instructors.md (``--no-sync`` leaves it alone).

    python benchmarks/chapter_times.py                     # every chapter, cold: long on a CPU
    python benchmarks/chapter_times.py --chapters 01 13    # only these (merged into the JSON)
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dpo_utils import teaching  # noqa: E402  (the repository root is put on the path above)


def machine() -> dict:
    """The CPU model, core counts and RAM of this machine, with the date and the git commit."""
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else "unknown"

    return {
        "cpu": model,
        "logical_cores": psutil.cpu_count(logical=True),
        "physical_cores": psutil.cpu_count(logical=False),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "git_commit": git("rev-parse", "HEAD"),
        "uncommitted_changes": bool(git("status", "--porcelain", "--untracked-files=no")),
    }


def _poll_peak(process: psutil.Process, stop: threading.Event, peak: list[int]) -> None:
    """Keep ``peak[0]`` at the largest summed RSS of ``process``'s descendants seen so far."""
    while not stop.wait(0.2):
        total = 0
        try:
            children = process.children(recursive=True)
        except psutil.NoSuchProcess:
            return
        for child in children:
            try:
                total += child.memory_info().rss
            except psutil.NoSuchProcess:
                pass  # a worker that ended between the listing and the reading
        peak[0] = max(peak[0], total)


def run_chapter(notebook: Path, out_dir: Path, env: dict) -> dict:
    """Run one notebook with papermill; its wall seconds and the peak RSS of its kernel tree."""
    command = [
        sys.executable,
        "-m",
        "papermill",
        str(notebook),
        str(out_dir / notebook.name),
        "--cwd",
        str(notebook.parent),
        "--no-progress-bar",
        "--execution-timeout",
        "3600",
    ]
    start = time.perf_counter()
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    peak, stop = [0], threading.Event()
    poller = threading.Thread(target=_poll_peak, args=(psutil.Process(proc.pid), stop, peak))
    poller.start()
    output, _ = proc.communicate()
    wall = time.perf_counter() - start
    stop.set()
    poller.join()
    if proc.returncode != 0:
        tail = output.decode(errors="replace")[-3000:]
        raise RuntimeError(f"{notebook.name} failed (exit {proc.returncode}):\n{tail}")
    return {
        "chapter": notebook.stem,
        "wall_s": round(wall, 1),
        "peak_rss_mib": round(peak[0] / 2**20, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--chapters", nargs="*", help="chapter numbers to run (default: all), e.g. 01 13"
    )
    parser.add_argument("--profile", default="cpu", help="DPO_PROFILE (default: cpu)")
    parser.add_argument("--out", type=Path, default=teaching.CHAPTER_TIMES)
    parser.add_argument(
        "--no-sync", action="store_true", help="leave book/instructors.md's table alone"
    )
    parser.add_argument(
        "--results-dir",
        type=Path,
        help="fill this results folder instead of a temporary one (it must not exist yet or be "
        "empty, so the run stays cold); a later make book can then render from it",
    )
    args = parser.parse_args(argv)
    if args.results_dir is not None:  # the kernels run in notebooks/: a relative path would move
        args.results_dir = args.results_dir.resolve()
    if args.results_dir is not None and args.results_dir.exists():
        if not args.results_dir.is_dir() or any(args.results_dir.iterdir()):
            parser.error(
                f"--results-dir {str(args.results_dir)!r} exists and is not empty; give a new or "
                "empty folder (a cold run must not read earlier results, and nothing is deleted)"
            )
    notebooks = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    if args.chapters:
        known = {p.stem[:2]: p for p in notebooks}
        unknown = [c for c in args.chapters if c not in known]
        if unknown:
            parser.error(f"unknown chapter(s) {unknown}; choose from {sorted(known)}")
        notebooks = [known[c] for c in sorted(set(args.chapters))]
    rows = []
    with tempfile.TemporaryDirectory(prefix="dpo-chapter-times-") as tmp:
        env = {
            **os.environ,
            "DPO_PROFILE": args.profile,
            "DPO_RESULTS_DIR": str(args.results_dir or Path(tmp) / "results"),
            "PYTHONPATH": os.pathsep.join(
                p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p
            ),
        }
        for notebook in notebooks:
            print(f"== {notebook.name}", flush=True)
            rows.append(run_chapter(notebook, Path(tmp), env))
            print(f"   {rows[-1]['wall_s']:.1f} s, {rows[-1]['peak_rss_mib']:.0f} MiB", flush=True)
    previous = json.loads(args.out.read_text()) if args.out.is_file() else {"chapters": []}
    measured = {r["chapter"]: r for r in rows}
    kept = [r for r in previous["chapters"] if r["chapter"] not in measured]
    if kept:
        print(f"kept earlier measurements of {[r['chapter'] for r in kept]}", flush=True)
    record = {
        "profile": args.profile,
        "machine": machine(),
        "cold": True,
        "chapters": sorted(kept + rows, key=lambda r: r["chapter"]),
    }
    if kept:
        record["note"] = "chapters measured in different runs; see each row's machine/date"
        for row in rows:
            row["date"] = record["machine"]["date"]
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {args.out}")
    if not args.no_sync:
        page = ROOT / "book" / "instructors.md"
        table = teaching.chapter_table(times=args.out)
        changed = teaching.sync_chapter_table(page, table)
        print(f"{page}: chapter table {'rewritten' if changed else 'unchanged'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
