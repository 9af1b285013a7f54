"""Two-row trainer against the full-vocabulary head at Llama-2 shape (|V| = 32000, d = 4096, batch
128, fp32).

Each trainer runs in its own subprocess so that its peak resident memory is measured alone. Both
record their metrics on the 128 training pairs after every step, as they do in the chapters; time
per step is the wall time of ``steps`` steps divided by ``steps``, after one warm-up call.

    python benchmarks/bench_linear.py            # prints both times, their ratio and peak memory
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

VOCAB, DIM, BATCH = 32000, 4096, 128


def _problem():
    import torch

    gen = torch.Generator().manual_seed(0)
    feats = torch.randn(BATCH, DIM, generator=gen) / DIM**0.5 * 10
    signs = torch.where(torch.rand(BATCH, generator=gen) < 0.5, 1.0, -1.0)
    weight = torch.randn(VOCAB, DIM, generator=gen) * 0.02
    return feats, signs, weight


def run_one(trainer: str, steps: int) -> dict:
    """Time one trainer in this process; report seconds per step and peak RSS growth (MiB)."""
    import torch

    from dpo_utils import full_vocab, linear

    torch.set_num_threads(max(torch.get_num_threads(), 1))
    feats, signs, weight = _problem()
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    yes, no = 3869, 1939  # any two rows; the benchmark does not depend on which

    def call(n: int):
        if trainer == "two_row":
            linear.train_last_layer(
                feats, signs, weight[yes] - weight[no], lr=0.1, beta=0.01, steps=n
            )
        else:
            full_vocab.train_full_vocab(feats, signs, weight, yes, no, lr=0.1, beta=0.01, steps=n)

    call(1)  # warm-up
    start = time.perf_counter()
    call(steps)
    per_step = (time.perf_counter() - start) / steps
    peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base_rss) / 1024
    return {
        "trainer": trainer,
        "steps": steps,
        "seconds_per_step": per_step,
        "peak_extra_mib": peak,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--one", choices=["two_row", "full_vocab"], help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=0)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.steps)))
        return
    rows = []
    for trainer, steps in (("two_row", 500), ("full_vocab", 3)):
        out = subprocess.run(
            [sys.executable, __file__, "--one", trainer, "--steps", str(steps)],
            check=True,
            capture_output=True,
            text=True,
        )
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    two, full = rows
    print(f"Llama-2 shape: vocabulary {VOCAB}, width {DIM}, batch {BATCH}, float32")
    for r in rows:
        print(
            f"  {r['trainer']:>10}: {r['seconds_per_step'] * 1e3:10.3f} ms/step   "
            f"peak extra memory {r['peak_extra_mib']:8.1f} MiB   ({r['steps']} steps)"
        )
    print(
        f"  ratio full_vocab / two_row: {full['seconds_per_step'] / two['seconds_per_step']:.0f}x"
    )


if __name__ == "__main__":
    main()
