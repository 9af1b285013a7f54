"""Batched against one-at-a-time feature extraction on the CPU-profile model (the cached tiny
Llama).

Both paths run in this one process on the same prompts (question + "\\n" of the project's corpus),
after one warm-up call each, and their features are compared (they must agree to 1e-5). Reports
statements per second for both and their ratio; the issue expects the batched path to be 5 times
faster or more.

    python benchmarks/bench_embeddings.py                 # 4000 prompts batched, 400 one at a time
    python benchmarks/bench_embeddings.py --single 1000   # a longer one-at-a-time sample
"""

from __future__ import annotations

import argparse
import json
import time


def _rate(extract, texts) -> tuple[float, dict]:
    start = time.perf_counter()
    features = extract(texts)
    return len(texts) / (time.perf_counter() - start), features


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--single", type=int, default=400, help="prompts extracted one at a time")
    parser.add_argument("--arch", default="llama", choices=["llama", "mistral"])
    args = parser.parse_args(argv)

    import torch

    from dpo_utils import data, embeddings, models

    model, tokenizer = models.pretrained_tiny_model(args.arch)  # trained and cached on first use
    rows = [row for rows in data.load_persona(data.corpus_dir()).values() for row in rows]
    texts = embeddings.prompt_texts(rows)

    def batched(t):
        return embeddings.last_token_features(
            model, tokenizer, t, batch_size=args.batch_size, progress=False
        )

    def single(t):
        return embeddings.last_token_features(model, tokenizer, t, batch_size=1, progress=False)

    batched(texts[:64]), single(texts[:8])  # warm-up
    batched_rate, all_features = _rate(batched, texts)
    sample = texts[: args.single]
    single_rate, single_features = _rate(single, sample)
    difference = max(
        float((all_features[v][: len(sample)] - single_features[v]).abs().max())
        for v in embeddings.VARIANTS
    )
    report = dict(
        model=f"tiny-{args.arch}",
        torch_threads=torch.get_num_threads(),
        prompts_batched=len(texts),
        prompts_single=len(sample),
        batch_size=args.batch_size,
        batched_statements_per_s=round(batched_rate, 1),
        single_statements_per_s=round(single_rate, 1),
        speedup=round(batched_rate / single_rate, 1),
        max_abs_difference=difference,
    )
    print(json.dumps(report, indent=1))
    if difference > 1e-5:
        raise SystemExit(f"batched and one-at-a-time features differ by {difference:.2e} (> 1e-5)")
    return report


if __name__ == "__main__":
    main()
