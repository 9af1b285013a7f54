"""Wall time of a chapter's independent DPO runs: one at a time in this process vs several
single-threaded worker processes (run_cache.prefill), at the CPU profile's size.

    python benchmarks/bench_parallel_runs.py [--runs 4] [--processes 2] [--threads 2]

Trains ``--runs`` LoRA runs (the first featured behaviours, chapter 08's settings and probes) into
a temporary results folder twice: first in this process with ``--threads`` torch threads (what a
chapter did before), then with ``--processes`` workers of one thread each. The stand-in is
pre-trained once beforehand and not timed. Prints both wall times and the speed-up. Run it on an
otherwise idle machine: other load makes both numbers meaningless.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
for _name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_HUB_DISABLE_TELEMETRY"):
    os.environ.setdefault(_name, "1")

import torch  # noqa: E402

from dpo_utils import config, llm_evidence, llm_experiments, models, run_cache  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    """Time the same runs sequentially and in worker processes; return the figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    cfg = config.get_config("cpu")
    behaviors = llm_evidence.featured_behaviors(cfg)[: args.runs]
    timings = {}
    with tempfile.TemporaryDirectory() as stand_ins:
        os.environ["DPO_RESULTS_DIR"] = stand_ins
        models.load_model_and_tokenizer(cfg, "cpu")  # pre-train the stand-in, untimed
        for label, processes in (("in-process", 1), ("workers", args.processes)):
            jobs = [  # force: the second pass trains again what the first saved
                llm_experiments._job(cfg, [b], mode="lora", probe_train=48, seed=7, force=True)
                for b in behaviors
            ]
            torch.set_num_threads(args.threads if processes == 1 else 1)
            start = time.perf_counter()
            run_cache.prefill(jobs, processes=processes)
            timings[label] = time.perf_counter() - start
    figures = dict(
        runs=len(behaviors),
        processes=args.processes,
        threads_in_process=args.threads,
        in_process_s=round(timings["in-process"], 1),
        workers_s=round(timings["workers"], 1),
        speedup=round(timings["in-process"] / timings["workers"], 2),
    )
    print(figures)
    return figures


if __name__ == "__main__":
    main()
