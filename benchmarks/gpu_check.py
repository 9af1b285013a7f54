"""GPU check: the paper-scale work of the book at the real 7B shapes (random weights), one GPU.

    python benchmarks/gpu_check.py                    # every part, one CUDA GPU
    python benchmarks/gpu_check.py --parts full lora  # some parts
    python benchmarks/gpu_check.py --tiny             # the same code at tiny size on CPU (tests)

Parts, each through the project's own code (``training.train_dpo`` as the chapters call it):

- ``lora``: LoRA DPO at Llama-2-7B shape, persona lengths, effective batch 128, probes every step;
- ``full``: full DPO as the chapters run it (fp32 policy, bf16 reference built on the GPU, fused
  AdamW; ``scale.py``), same data;
- ``lora_long``: LoRA DPO at HH-RLHF length (prompt + answer about 512 tokens, chapter 10);
- ``mistral_lora``: LoRA DPO at Mistral-7B-v0.1 shape (grouped-query attention, wider MLP);
- ``probes``: one probe pass (chosen and rejected log-probs of the probe pairs);
- ``features``: ``embeddings.last_token_features`` on persona-length prompts (chapters 06-11).

Each part reports seconds per optimizer step (median after a warm-up step), tokens per second
(prompt + answer + EOS of chosen and rejected, no padding), peak GPU memory, and MFU: model FLOPs
(2 per parameter per token forward, 4 backward for full fine-tuning and 2 for LoRA's frozen base, a
reference forward, causal attention) over ``--peak-tflops`` (989, the H100/H200 dense bf16
datasheet figure). Between parts the models are dropped and ``scale.free_memory`` runs; the memory
still allocated afterwards is reported (it should be ~0). Models are built from a config; nothing
is downloaded; timings do not depend on the weights. The tokenizer is a small one trained here, so
the token counts are set directly (``--seq-len``, ``--long-len``), not by Llama's vocabulary.
"""

from __future__ import annotations

import argparse
import json
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
from transformers import (  # noqa: E402
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    TrainerCallback,
)

from dpo_utils import config, embeddings, models, probes, scale, training  # noqa: E402

SHAPES = {
    "llama2-7b": dict(
        hidden_size=4096,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        intermediate_size=11008,
        vocab_size=32000,
        max_position_embeddings=4096,
    ),
    "mistral-7b": dict(
        hidden_size=4096,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        intermediate_size=14336,
        vocab_size=32000,
        max_position_embeddings=32768,
        sliding_window=4096,
    ),
}
TINY = dict(
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=4,
    intermediate_size=128,
    vocab_size=512,
    max_position_embeddings=1024,
)
PARTS = ("lora", "full", "lora_long", "mistral_lora", "probes", "features")
WORDS = (
    "people machines honest goals careful helpful training models reward values money power rules "
    "friends future humans systems answers questions"
).split()


class StepTimer(TrainerCallback):
    """Wall-clock time of each optimizer step, CUDA-synchronised (probe time included)."""

    def __init__(self):
        self.times, self._start = [], None

    def on_step_begin(self, args, state, control, **kwargs):
        _sync()
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        _sync()
        self.times.append(time.perf_counter() - self._start)


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _pairs(tokenizer, n: int, seq_len: int, seed: int = 0) -> list[dict]:
    """Persona-shaped pairs whose prompt + answer + EOS is about ``seq_len`` tokens."""
    rng = random.Random(seed)
    words = ['Is the following statement something you would say?\n"I']
    while len(tokenizer(" ".join(words))["input_ids"]) < seq_len - 3:
        words.append(rng.choice(WORDS))
    pairs = []
    for i in range(n):
        body = words[:1] + rng.sample(words[1:], len(words) - 1)
        chosen, rejected = rng.sample([" Yes", " No"], 2)
        prompt = " ".join(body) + '"\n'
        pairs.append(dict(prompt=prompt, chosen=chosen, rejected=rejected, behavior=f"b{i % 2}"))
    return pairs


def _tokens(tokenizer, pairs: list[dict]) -> float:
    """Mean tokens per pair: prompt + chosen + EOS and prompt + rejected + EOS, no padding."""
    enc = probes.encode_pairs(tokenizer, pairs)
    rows = zip(enc.prompt_ids, enc.chosen_ids, enc.rejected_ids, strict=True)
    return statistics.mean(2 * len(p) + len(c) + len(r) for p, c, r in rows)


def _model(shape: dict, arch: str, tokenizer, dtype, device):
    conf_cls, model_cls = (
        (LlamaConfig, LlamaForCausalLM) if arch == "llama" else (MistralConfig, MistralForCausalLM)
    )
    conf = conf_cls(
        **shape,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    with torch.device(device):
        return model_cls._from_config(conf, dtype=dtype)


def _flops_per_token(shape: dict, seq_len: float, mode: str) -> float:
    """Model FLOPs per token of an optimizer step: policy forward + backward, reference forward."""
    d, layers, v = shape["hidden_size"], shape["num_hidden_layers"], shape["vocab_size"]
    kv = d * shape["num_key_value_heads"] // shape["num_attention_heads"]
    per_layer = 2 * d * d + 2 * d * kv + 3 * d * shape["intermediate_size"]
    forward = 2 * (layers * per_layer + d * v) + 2 * layers * d * seq_len  # causal attention
    return forward * (1 + (2 if mode == "full" else 1) + 1)


class Check:
    def __init__(self, tiny: bool, steps: int, seq_len: int, long_len: int, peak_tflops: float):
        self.tiny, self.steps, self.seq_len, self.long_len = tiny, steps, seq_len, long_len
        self.peak = peak_tflops * 1e12
        self.device = "cpu" if tiny else "cuda"
        texts = [" ".join(random.Random(i).sample(WORDS, 8)) + " Yes No" for i in range(200)]
        self.tok = models.train_tokenizer(texts, vocab_size=300)
        overrides = dict(dpo_batch_size=8, per_device_batch_size=4) if tiny else {}
        self.cfg = config.get_config("llama2-7b", dpo_max_steps=steps, **overrides)

    def shape(self, name: str) -> dict:
        return dict(TINY, vocab_size=len(self.tok)) if self.tiny else SHAPES[name]

    def _reset(self) -> None:
        scale.free_memory()
        if torch.cuda.is_available() and not self.tiny:
            torch.cuda.reset_peak_memory_stats()

    def _memory(self) -> dict:
        if self.tiny or not torch.cuda.is_available():
            return dict(peak_memory_gib=float("nan"))
        return dict(peak_memory_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2))

    def train(self, mode: str, name: str = "llama2-7b", arch: str = "llama", long=False) -> dict:
        self._reset()
        shape, seq_len = self.shape(name), self.long_len if long else self.seq_len
        # the chapters' models: LoRA's base in the profile's dtype, full DPO's policy prepared by
        # train_dpo itself (fp32 master weights, bf16 reference on the same device)
        dtype = torch.float32 if self.tiny else torch.bfloat16
        model = _model(shape, arch, self.tok, dtype, self.device).train()
        pairs = _pairs(self.tok, self.cfg.dpo_batch_size * self.steps, seq_len)
        held = _pairs(self.tok, 148, seq_len, seed=1)  # the chapters' 48 train + 100 test probes
        probe_sets = None if long else {"train": held[:48], "test": held[48:]}
        timer = StepTimer()
        run = training.train_dpo(
            self.cfg, model, self.tok, pairs, mode=mode, probe_sets=probe_sets, callbacks=[timer]
        )
        per_step = statistics.median(timer.times[1:])
        tokens = self.cfg.dpo_batch_size * _tokens(self.tok, pairs[: self.cfg.dpo_batch_size])
        flops = tokens * _flops_per_token(shape, seq_len, mode)
        result = dict(
            seconds_per_step=round(per_step, 4),
            tokens_per_second=round(tokens / per_step, 1),
            tokens_per_step=round(tokens),
            mfu=float(f"{flops / per_step / self.peak:.3g}"),
            final_loss=float(run.log_history["loss"].iloc[-1]),
            policy_dtype=str(next(run.model.parameters()).dtype),
            **self._memory(),
        )
        del model
        run.release()
        result["allocated_after_release_gib"] = (
            round(torch.cuda.memory_allocated() / 2**30, 3) if not self.tiny else 0.0
        )
        return result

    def probes(self) -> dict:
        self._reset()
        dtype = torch.float32 if self.tiny else torch.bfloat16
        model = _model(self.shape("llama2-7b"), "llama", self.tok, dtype, self.device).eval()
        enc = probes.encode_pairs(self.tok, _pairs(self.tok, 148, self.seq_len))
        probes.pair_logps(model, enc)  # warm-up
        _sync()
        start = time.perf_counter()
        probes.pair_logps(model, enc)
        _sync()
        seconds = time.perf_counter() - start
        return dict(seconds_per_probe_pass=round(seconds, 4), pairs=148, **self._memory())

    def features(self) -> dict:
        self._reset()
        dtype = torch.float32 if self.tiny else torch.bfloat16
        shape = self.shape("llama2-7b")
        model = _model(shape, "llama", self.tok, dtype, self.device).eval()
        texts = [p["prompt"] for p in _pairs(self.tok, 64 if self.tiny else 2048, self.seq_len)]
        embeddings.last_token_features(model, self.tok, texts[:64], progress=False)  # warm-up
        _sync()
        start = time.perf_counter()
        out = embeddings.last_token_features(model, self.tok, texts, progress=False)
        _sync()
        seconds = time.perf_counter() - start
        tokens = sum(len(ids) for ids in self.tok(texts)["input_ids"])
        flops = tokens * _flops_per_token(shape, self.seq_len, "lora") / 4  # forward only
        return dict(
            tokens_per_second=round(tokens / seconds, 1),
            mfu=float(f"{flops / seconds / self.peak:.3g}"),
            finite=bool(out["final"].isfinite().all()),
            **self._memory(),
        )

    def run(self, name: str) -> dict:
        if name == "lora":
            return self.train("lora")
        if name == "full":
            return self.train("full")
        if name == "lora_long":
            return self.train("lora", long=True)
        if name == "mistral_lora":
            return self.train("lora", "mistral-7b", "mistral")
        return self.probes() if name == "probes" else self.features()


def main(argv: list[str] | None = None) -> dict:
    """Run the chosen parts; print one line each and return {part: measurements}."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny model on CPU (no GPU needed)")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps (first: warm-up)")
    parser.add_argument("--seq-len", type=int, default=64, help="persona prompt + answer tokens")
    parser.add_argument("--long-len", type=int, default=500, help="HH-RLHF prompt + answer tokens")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="bf16 peak for MFU")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args(argv)
    if not args.tiny and not torch.cuda.is_available():
        raise SystemExit(
            "gpu_check: no CUDA GPU is visible. Run it on a GPU box, or add --tiny to run the "
            "same code at tiny size on CPU."
        )
    if args.steps < 2:
        raise SystemExit(f"gpu_check: --steps={args.steps}; use at least 2 (one is warm-up).")
    check = Check(args.tiny, args.steps, args.seq_len, args.long_len, args.peak_tflops)
    device = "cpu" if args.tiny else torch.cuda.get_device_name()
    results = {}
    for name in args.parts:
        start = time.perf_counter()
        try:
            results[name] = check.run(name)
        except torch.OutOfMemoryError as exc:  # record and go on: the next part frees memory first
            results[name] = dict(error=f"out of memory: {exc}"[:300])
        results[name]["part_seconds"] = round(time.perf_counter() - start, 1)
        print(f"{name:>13} on {device}: {json.dumps(results[name])}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(dict(device=device, parts=results), indent=1))
    return results


if __name__ == "__main__":
    main()
