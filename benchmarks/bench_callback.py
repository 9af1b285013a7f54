"""Cost of the probe callback relative to a DPO training step, at CPU-profile size.

    python benchmarks/bench_callback.py [--behaviors 0] [--mode full] [--threads 1]

The CPU profile (batch 32, max_length 64, the pre-trained tiny Llama) trains on one behaviour
(450 train pairs) and probes, as chapters 08-11 do, a fixed sample of its train split (the first
``--probe-train`` pairs, default ``llm_experiments.PROBE_TRAIN`` = 48) plus its whole test split
(50 pairs) every ``--probe-every`` steps; ``--probe-train 0`` probes all 450 train pairs. Prints
seconds per training step without the probe, seconds per probe, and the whole-run overhead.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
for _name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_HUB_DISABLE_TELEMETRY"):
    os.environ.setdefault(_name, "1")

import torch  # noqa: E402
from gpu_check import StepTimer  # noqa: E402

from dpo_utils import config, llm_experiments, models, probes, run_cache, training  # noqa: E402


def _fresh_model(cfg):
    model, tokenizer = models.load_model_and_tokenizer(cfg, "cpu")
    return models.clone_model(model).train(), tokenizer


def main(argv: list[str] | None = None) -> dict:
    """Time training steps with and without the probe; return the measured figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--behaviors", nargs="+", default=["0"])
    parser.add_argument("--mode", choices=training.MODES, default="full")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1 on a shared machine)"
    )
    parser.add_argument(
        "--probe-every", type=int, default=llm_experiments.probe_every(config.get_config("cpu"))
    )
    parser.add_argument(
        "--probe-train",
        type=int,
        default=llm_experiments.PROBE_TRAIN,
        help="train pairs probed per behaviour (0: all)",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = config.get_config("cpu")
    behaviors = [int(b) if b.isdigit() else b for b in args.behaviors]
    pairs, probe_sets = run_cache.behavior_pairs(cfg, behaviors)
    probe_sets = run_cache.probe_subsample(probe_sets, args.probe_train or None)
    n_probe = sum(len(v) for v in probe_sets.values())
    walls, timers = {}, {}
    for with_probe in (False, True, False, True):  # interleaved, best of two
        model, tokenizer = _fresh_model(cfg)
        timer = StepTimer()
        start = time.perf_counter()
        training.train_dpo(
            cfg,
            model,
            tokenizer,
            pairs,
            mode=args.mode,
            callbacks=[timer],
            probe_sets=probe_sets if with_probe else None,
            probe_every=args.probe_every,
        )
        wall = time.perf_counter() - start
        if wall < walls.get(with_probe, float("inf")):
            walls[with_probe], timers[with_probe] = wall, timer
    step = statistics.median(timers[False].times)
    model, tokenizer = _fresh_model(cfg)
    callback = probes.ProbeCallback(tokenizer, probe_sets, cfg.dpo_beta, max_length=cfg.max_length)
    callback.record(model, 0)  # includes the one-off reference pass
    probe_times = []
    for step_no in range(1, 6):
        t = time.perf_counter()
        callback.record(model, step_no)
        probe_times.append(time.perf_counter() - t)
    probe = statistics.median(probe_times)
    amortised = probe / (step * args.probe_every)
    result = dict(
        step_seconds=step,
        probe_seconds=probe,
        probe_pairs=n_probe,
        probe_per_step=amortised,
        run_seconds=walls[False],
        run_seconds_with_probe=walls[True],
        run_overhead=(walls[True] - walls[False]) / walls[False],
    )
    print(
        f"CPU profile, {args.mode}, batch {cfg.dpo_batch_size}, {cfg.dpo_max_steps} steps, "
        f"{torch.get_num_threads()} thread(s); "
        f"probe {n_probe} pairs every {args.probe_every} step(s)"
    )
    print(
        f"  training step {step * 1e3:.0f} ms; one probe {probe * 1e3:.0f} ms "
        f"= {100 * probe / step:.0f} % of a step;"
        f" every {args.probe_every} step(s): {100 * amortised:.0f} % per step (target < 20 %)"
    )
    print(
        f"  whole run {walls[False]:.2f} s without, {walls[True]:.2f} s with the probe "
        f"(+{100 * result['run_overhead']:.0f} %)"
    )
    return result


if __name__ == "__main__":
    main()
