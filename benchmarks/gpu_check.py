"""GPU check: a few LoRA DPO steps on a Llama-2-7B-shaped model (random weights) through
dpo_utils.training.

    python benchmarks/gpu_check.py            # one CUDA GPU; about 2-4 minutes on one H100
    python benchmarks/gpu_check.py --tiny     # the same script at tiny size on CPU (exercised by
    the tests)

Prints seconds per optimizer step, tokens per second and peak GPU memory. The model is built from a
``LlamaConfig`` (hidden 4096, 32 layers, 32 heads, intermediate 11008, vocab 32000) in bf16, so
nothing is downloaded; timings do not depend on the weights. Batch: the paper's 128 pairs per
optimizer step (32 per device x 4 accumulation steps on one GPU); sequence length ``--seq-len``
tokens (persona prompts are short; max_length stays the paper's 512).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
for _name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_HUB_DISABLE_TELEMETRY"):
    os.environ.setdefault(_name, "1")

import torch  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM, TrainerCallback  # noqa: E402

from dpo_utils import config, models, training  # noqa: E402

LLAMA2_7B = dict(
    hidden_size=4096,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=32,
    intermediate_size=11008,
    vocab_size=32000,
    max_position_embeddings=4096,
)
TINY = dict(
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=4,
    intermediate_size=128,
    vocab_size=512,
    max_position_embeddings=512,
)
WORDS = (
    "people machines honest goals careful helpful training models reward values money power rules "
    "friends future humans systems answers questions"
).split()


class StepTimer(TrainerCallback):
    """Wall-clock time of each optimizer step (CUDA-synchronised)."""

    def __init__(self):
        self.times, self._start = [], None

    def on_step_begin(self, args, state, control, **kwargs):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.times.append(time.perf_counter() - self._start)


def _pairs(tokenizer, n: int, seq_len: int, seed: int = 0) -> list[dict]:
    """Persona-shaped pairs whose prompt + answer + EOS is about ``seq_len`` tokens."""
    rng = random.Random(seed)
    pairs = []
    for _ in range(n):
        words = ['Is the following statement something you would say?\n"I']
        while len(tokenizer(" ".join(words))["input_ids"]) < seq_len - 3:
            words.append(rng.choice(WORDS))
        chosen, rejected = rng.sample([" Yes", " No"], 2)
        pairs.append(
            dict(
                prompt=" ".join(words) + '"\n', chosen=chosen, rejected=rejected, behavior="bench"
            )
        )
    return pairs


def _setup(tiny: bool, steps: int):
    shape = TINY if tiny else LLAMA2_7B
    cfg = config.get_config("cpu" if tiny else "llama2-7b", dpo_max_steps=steps)
    texts = [" ".join(random.Random(i).sample(WORDS, 8)) + " Yes No" for i in range(200)]
    tokenizer = models.train_tokenizer(texts, vocab_size=300)
    device, dtype = ("cpu", torch.float32) if tiny else ("cuda", torch.bfloat16)
    llama = LlamaConfig(
        **shape,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM._from_config(llama, dtype=dtype)
    return cfg, model.train(), tokenizer


def main(argv: list[str] | None = None) -> dict:
    """Run the check; return and print seconds/step, tokens/s and peak memory."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny model on CPU (no GPU needed)")
    parser.add_argument(
        "--steps", type=int, default=5, help="optimizer steps; the first is not timed"
    )
    parser.add_argument("--seq-len", type=int, default=64, help="tokens per prompt + answer")
    args = parser.parse_args(argv)
    if not args.tiny and not torch.cuda.is_available():
        raise SystemExit(
            "gpu_check: no CUDA GPU is visible. Run it on a GPU box, or add --tiny to run the "
            "same code at tiny size on CPU."
        )
    if args.steps < 2:
        raise SystemExit(
            f"gpu_check: --steps={args.steps}; use at least 2 (the first step is warm-up)."
        )
    start = time.perf_counter()
    cfg, model, tokenizer = _setup(args.tiny, args.steps)
    pairs = _pairs(tokenizer, cfg.dpo_batch_size * args.steps, args.seq_len)
    timer = StepTimer()
    if torch.cuda.is_available() and not args.tiny:
        torch.cuda.reset_peak_memory_stats()
    run = training.train_dpo(cfg, model, tokenizer, pairs, mode="lora", callbacks=[timer])
    per_step = statistics.median(timer.times[1:])
    tokens = (
        2
        * cfg.dpo_batch_size
        * statistics.mean(
            len(tokenizer(p["prompt"] + p["chosen"])["input_ids"]) + 1 for p in pairs
        )
    )
    result = dict(
        device=torch.cuda.get_device_name() if not args.tiny else "cpu",
        seconds_per_step=per_step,
        tokens_per_second=tokens / per_step,
        tokens_per_step=tokens,
        steps=len(timer.times),
        peak_memory_gib=torch.cuda.max_memory_allocated() / 2**30
        if not args.tiny
        else float("nan"),
        final_loss=float(run.log_history["loss"].iloc[-1]),
        total_seconds=time.perf_counter() - start,
    )
    print(
        f"{'tiny' if args.tiny else 'Llama-2-7B-shaped'} LoRA DPO on {result['device']}: "
        f"batch {cfg.dpo_batch_size} pairs ({cfg.per_device_batch_size}/device), "
        f"{args.seq_len} tokens/sequence"
    )
    print(
        f"  {per_step:.3f} s/step, {result['tokens_per_second']:.0f} tokens/s, "
        f"peak memory {result['peak_memory_gib']:.1f} GiB, total {result['total_seconds']:.0f} s"
    )
    return result


if __name__ == "__main__":
    main()
