"""A sweep of last-layer DPO runs, batched into one tensor computation against a Python loop of
runs.

1,000 behaviour-seed runs of 100 steps at width 256 (the chapters' sweeps are of this kind): each
run has its own synthetic behaviour (128 pairs per class) and draws a fresh random mini-batch of
128 pairs at every step, and every metric is recorded on its 256 training pairs after every step,
as in the chapters.

* ``batched``: one call of :func:`dpo_utils.linear.train_last_layer` on (R, n, d) features, one
batch
  sampler shared by all runs (one random draw per step);
* ``batched, per-run seeds``: the same call with one sampler per run, which makes every run equal
to
  the same run made alone (checked here on the first runs), at the cost of a Python loop over
  samplers;
* ``looped``: R separate calls, one per run.

    python benchmarks/bench_sweep.py                      # 1,000 runs, all three timings
    python benchmarks/bench_sweep.py --loop-runs 200      # time the loop on 200 runs, scaled to R
"""

from __future__ import annotations

import argparse
import json
import time


def _features(runs: int, n_per_class: int, dim: int):
    import torch

    gen = torch.Generator().manual_seed(0)
    gaps = torch.linspace(0.5, 4.0, runs)
    direction = torch.randn(runs, dim, generator=gen)
    direction = direction / direction.norm(dim=1, keepdim=True)
    signs = (
        torch.cat([torch.ones(n_per_class), -torch.ones(n_per_class)])
        .expand(runs, -1)
        .contiguous()
    )
    noise = torch.randn(runs, 2 * n_per_class, dim, generator=gen)
    features = noise + signs[..., None] * (gaps[:, None, None] / 2) * direction[:, None, :]
    return features, signs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--n-per-class", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument(
        "--loop-runs",
        type=int,
        default=None,
        help="time the loop on this many runs, scale to --runs",
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch intra-op threads (default: torch's)"
    )
    args = parser.parse_args()

    import torch

    from dpo_utils import linear

    if args.threads:
        torch.set_num_threads(args.threads)
    features, signs = _features(args.runs, args.n_per_class, args.dim)
    kw = dict(lr=1.0, beta=0.01, steps=args.steps, batch_size=args.batch_size)
    linear.train_last_layer(features[:2], signs[:2], **dict(kw, steps=2))  # warm-up

    start = time.perf_counter()
    linear.train_last_layer(features, signs, seed=0, **kw)
    batched = time.perf_counter() - start

    seeds = list(range(args.runs))
    start = time.perf_counter()
    per_run = linear.train_last_layer(features, signs, seed=seeds, **kw)
    batched_seeded = time.perf_counter() - start

    loop_runs = args.runs if args.loop_runs is None else min(args.loop_runs, args.runs)
    start = time.perf_counter()
    singles = [
        linear.train_last_layer(features[r], signs[r], seed=r, **kw) for r in range(loop_runs)
    ]
    looped = (time.perf_counter() - start) * args.runs / loop_runs

    for r in range(
        min(5, loop_runs)
    ):  # batched with per-run seeds == the same runs made one by one
        for key, values in singles[r].metrics.items():
            if not torch.allclose(
                torch.as_tensor(values[0]),
                torch.as_tensor(per_run.metrics[key][r]),
                rtol=1e-4,
                atol=1e-6,
            ):
                raise SystemExit(
                    f"run {r}: {key} differs between the batched and the looped trainer"
                )

    report = {
        "runs": args.runs,
        "steps": args.steps,
        "dim": args.dim,
        "pairs_per_run": 2 * args.n_per_class,
        "batch_size": args.batch_size,
        "threads": torch.get_num_threads(),
        "batched_s": round(batched, 2),
        "batched_per_run_seeds_s": round(batched_seeded, 2),
        "looped_s": round(looped, 2),
        "looped_measured_on_runs": loop_runs,
        "speedup_batched": round(looped / batched, 1),
        "speedup_batched_per_run_seeds": round(looped / batched_seeded, 1),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
