"""What scoring only the completion tokens saves in a CPU-profile DPO run.

    python benchmarks/bench_trl_compact.py [--behaviors 0] [--mode full] [--threads 1]

trl 1.16 scores every position of a sequence on a CPU (and only the completion tokens on CUDA);
``training.score_completions_only`` makes a CPU run score only the completion tokens too. This
trains the CPU profile's run (the pre-trained tiny Llama, batch 32, 16 steps, no probe) both
ways, interleaved, best of two, and prints the seconds of each and the largest gap between their
logged losses (the two must agree to float32 rounding).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
for _name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_HUB_DISABLE_TELEMETRY"):
    os.environ.setdefault(_name, "1")

import torch  # noqa: E402

from dpo_utils import config, models, run_cache, training  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    """Time a run with trl's own CPU path and with completion-only scoring; return the figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--behaviors", nargs="+", default=["0"])
    parser.add_argument("--mode", choices=training.MODES, default="full")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1 on a shared machine)"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from trl.trainer import utils as trl_utils

    training.score_completions_only()
    compact = trl_utils._use_triton
    cfg = config.get_config("cpu")
    behaviors = [int(b) if b.isdigit() else b for b in args.behaviors]
    pairs, _ = run_cache.behavior_pairs(cfg, behaviors)
    walls: dict[str, float] = {}
    losses: dict[str, list[float]] = {}
    every_position = training.score_completions_only
    for name in ("every position", "completions only") * 2:
        model, tokenizer = models.load_model_and_tokenizer(cfg, "cpu")
        model = models.clone_model(model).train()
        trl_utils._use_triton = compact if name == "completions only" else (lambda device: False)
        training.score_completions_only = (
            every_position if name == "completions only" else (lambda: False)
        )
        start = time.perf_counter()
        run = training.train_dpo(cfg, model, tokenizer, pairs, mode=args.mode)
        walls[name] = min(walls.get(name, float("inf")), time.perf_counter() - start)
        losses[name] = run.log_history["loss"].tolist()
    training.score_completions_only = every_position
    trl_utils._use_triton = compact
    gap = max(abs(a - b) for a, b in zip(*losses.values(), strict=True))
    for name, wall in walls.items():
        print(f"{name:>17}: {wall:6.2f} s for {len(losses[name])} steps ({args.mode})")
    print(
        f"speed-up x{walls['every position'] / walls['completions only']:.2f}; "
        f"largest gap between the logged losses {gap:.1e}"
    )
    return dict(walls=walls, loss_gap=gap)


if __name__ == "__main__":
    main()
