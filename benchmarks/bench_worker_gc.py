"""What freezing a worker's survivors (runtime.settle_worker) saves per CPU-profile DPO run.

    python benchmarks/bench_worker_gc.py [--runs 3]

A worker that has imported torch, transformers and trl holds about half a million objects, and
each DPO run collects garbage twice (train_dpo before it starts, accelerate when it ends). This
trains ``--runs`` LoRA runs of the CPU profile (16 steps, batch 32) one after another without
freezing, then as many with ``gc.collect(); gc.freeze()`` after each (what settle_worker does in a
worker), in this process, and prints the seconds of a full collection and of each run. The runs
go to a temporary results folder (the stand-in is pre-trained there first, about 35 s).
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
for _name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_HUB_DISABLE_TELEMETRY"):
    os.environ.setdefault(_name, "1")

import torch  # noqa: E402

from dpo_utils import config, llm_evidence, run_cache  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    """Time runs without and with a freeze after each; return the measured seconds."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    os.environ.setdefault("DPO_RESULTS_DIR", tempfile.mkdtemp(prefix="bench-gc-"))
    cfg = config.get_config("cpu")
    behavior = llm_evidence.featured_behaviors(cfg)[0]
    seeds = iter(range(9000, 9000 + 2 * args.runs + 1))

    def one() -> float:
        start = time.perf_counter()
        run_cache.load_or_train(
            cfg, [behavior], mode="lora", probe_every=4, probe_train=48, seed=next(seeds)
        )
        return time.perf_counter() - start

    one()  # imports, the stand-in, the tokenised rows
    start = time.perf_counter()
    gc.collect()
    collect = time.perf_counter() - start
    plain = [one() for _ in range(args.runs)]
    frozen = []
    for _ in range(args.runs):
        gc.collect()
        gc.freeze()
        frozen.append(one())
    start = time.perf_counter()
    gc.collect()
    collect_frozen = time.perf_counter() - start
    print(f"a full collection: {collect:.3f} s; after freezing: {collect_frozen:.3f} s")
    print(f"runs, no freeze: {[round(x, 2) for x in plain]} s")
    print(f"runs, freeze before each: {[round(x, 2) for x in frozen]} s")
    return dict(collect=collect, collect_frozen=collect_frozen, plain=plain, frozen=frozen)


if __name__ == "__main__":
    main()
