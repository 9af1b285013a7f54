"""Sequence log-probabilities as trl's DPOTrainer computes them, and a callback that records them.

trl logs only batch means. The book needs per-pair and per-behaviour curves on fixed probe sets
(the authors' train and test accuracies), so :class:`ProbeCallback` runs its own forward passes
before training and after every optimizer step and keeps one row per pair.

Tokenisation follows trl 1.16 exactly: the prompt is tokenised alone and together with each
completion (EOS appended); the completion is what follows the common prefix of the two encodings; a
sequence longer than ``max_length`` keeps its start. The log-probability of a completion is the sum
over its tokens, EOS included.

The forward pass is cheaper than trl's: the token prefix all probe prompts share runs once; a
pair's chosen and rejected answers share the prompt, so the prompt runs once (left-padded, with a
key/value cache) and only the completion tokens run twice; the unembedding is applied only where a
completion token is predicted.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pandas as pd
import torch
import torch.nn.functional as F
from transformers import TrainerCallback

from . import losses, scale

if TYPE_CHECKING:  # for annotations only
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "CHAPTER_PROBE_TRAIN",
    "CHAPTER_PROBE_EVERY",
    "CPU_PROBE_EVERY",
    "chapter_probe_every",
    "EncodedPairs",
    "encode_pairs",
    "sequence_logps",
    "pair_logps",
    "ProbeCallback",
    "PROBE_METRICS",
]

#: the probe settings of every chapter's runs (chapters 08-11), and so of their cache keys: train
#: pairs probed per behaviour (plus every test pair), and a probe after every second step on a GPU
#: profile (an epoch of the authors' setting is about 7 steps) or every fourth on the CPU profile
#: (16 steps: 5 points; each probe costs about a tenth of a stand-in run), and after the last
#: step (:func:`chapter_probe_every`); the command line uses the same by default, so its runs land
#: where the chapters look
CHAPTER_PROBE_TRAIN = 48
CHAPTER_PROBE_EVERY = 2
CPU_PROBE_EVERY = 4


def chapter_probe_every(cfg) -> int:
    """The chapters' probe interval for a profile: :data:`CHAPTER_PROBE_EVERY` on a GPU profile,
    :data:`CPU_PROBE_EVERY` on the CPU profile.

    Used by: dpo_utils.run_cache.
    """
    return CHAPTER_PROBE_EVERY if cfg.requires_gpu else CPU_PROBE_EVERY


PROBE_METRICS = (
    "loss",
    "margin",
    "reward_accuracy",
    "output_accuracy",
    "logp_chosen",
    "logp_rejected",
    "ref_logp_chosen",
    "ref_logp_rejected",
)


@dataclass(frozen=True)
class EncodedPairs:
    """Token ids of a list of pairs, split as trl splits them (prompt | chosen, prompt | rejected).

    Used by: dpo_utils.probes.
    """

    prompt_ids: list[list[int]]
    chosen_ids: list[list[int]]
    rejected_ids: list[list[int]]
    behaviors: list


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):  # the shorter one bounds the prefix
        if x != y:
            break
        n += 1
    return n


def _with_eos(text: str, eos: str) -> str:
    return text if text.endswith(eos) else text + eos


def _encode(
    tokenizer, prompt: str, completions: list[str], max_length: int | None, cap: int | None = None
):
    """Prompt ids and completion ids for one prompt, as trl's tokenize step and collator produce
    them.

    ``cap`` (paper profiles: 128) applies the authors' trl 0.7.3 rule instead: a prompt that does
    not fit with its longest completion keeps its last ``cap`` tokens, then completions keep their
    start.
    """
    eos = tokenizer.eos_token
    if eos is None:
        raise ValueError("the tokenizer has no eos_token; DPO appends EOS to every completion.")
    p_ids = tokenizer(prompt)["input_ids"]
    full = [tokenizer(prompt + _with_eos(c, eos))["input_ids"] for c in completions]
    n = min(_common_prefix(p_ids, ids) for ids in full)
    if cap is not None:
        comps = [ids[n:] for ids in full]
        kept = scale.truncate_prompt(p_ids[:n], max(map(len, comps)), max_length, cap)
        keep = None if max_length is None else max_length - len(kept)
        return kept, [c[:keep] for c in comps]
    if max_length is not None and n >= max_length:
        raise ValueError(
            f"prompt {prompt[:60]!r} has {n} tokens, not fewer than max_length={max_length}; "
            "trl would drop it. Shorten the prompt or raise max_length."
        )
    keep = None if max_length is None else max_length - n
    return p_ids[:n], [ids[n:][:keep] for ids in full]


def encode_pairs(
    tokenizer: PreTrainedTokenizerBase,
    pairs: list[dict],
    max_length: int | None = None,
    max_prompt_length: int | None = None,
) -> EncodedPairs:
    """Tokenise preference pairs (dicts with prompt, chosen, rejected[, behavior]) exactly as trl
    does (with ``max_prompt_length``: as ``train_dpo`` truncates on the paper profiles, see
    :func:`_encode`).

    Used by: dpo_utils.probes.
    """
    prompts, chosen, rejected, behaviors = [], [], [], []
    for i, pair in enumerate(pairs):
        missing = {"prompt", "chosen", "rejected"} - set(pair)
        if missing:
            raise ValueError(
                f"pair {i} lacks key(s) {sorted(missing)}; a pair needs prompt, chosen, rejected."
            )
        p, (c, r) = _encode(
            tokenizer,
            pair["prompt"],
            [pair["chosen"], pair["rejected"]],
            max_length,
            max_prompt_length,
        )
        prompts.append(p)
        chosen.append(c)
        rejected.append(r)
        behaviors.append(pair.get("behavior", "all"))
    return EncodedPairs(prompts, chosen, rejected, behaviors)


def _backbone_and_head(model):
    """The decoder stack and the unembedding of a causal LM, a PeftModel included (adapters stay
    active)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.get_decoder(), base.get_output_embeddings()


def _pad(rows: list[list[int]], value: int, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), value, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        cols = slice(width - len(r), width) if left else slice(0, len(r))
        ids[i, cols], mask[i, cols] = torch.tensor(r, dtype=torch.long), 1
    return ids, mask


def _target_logps(head, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(target) at each row of ``hidden`` (rows already selected), in float32."""
    return F.log_softmax(head(hidden).float(), dim=-1).gather(-1, targets[:, None])[:, 0]


def _shared_prefix(backbone, prompts, device):
    """Run the token prefix that every prompt shares (persona prompts share ~half their tokens)
    once."""
    width = min(len(p) for p in prompts) - 1  # keep at least one token of each prompt
    n = 0
    while n < width and all(p[n] == prompts[0][n] for p in prompts):
        n += 1
    if n < 2:
        return 0, None
    out = backbone(input_ids=torch.tensor([prompts[0][:n]], device=device), use_cache=True)
    return n, out.cache


def _chunk_logps(backbone, head, prompts, completions, device, prefix=(0, None)) -> torch.Tensor:
    """Summed log-probs, shape (len(prompts), K), of K completions per prompt; one prompt pass."""
    k, (n_prefix, prefix_cache) = len(completions[0]), prefix
    ids, mask = _pad([p[n_prefix:] for p in prompts], 0, left=True)
    ids, mask = ids.to(device), mask.to(device)
    position = n_prefix + (mask.cumsum(-1) - 1).clamp(min=0)
    cache = None
    if prefix_cache is not None:  # a private copy of the shared prefix's cache, one row per prompt
        cache = copy.deepcopy(prefix_cache)
        cache.batch_repeat_interleave(len(prompts))
        mask = torch.cat(
            [torch.ones(len(prompts), n_prefix, dtype=mask.dtype, device=device), mask], dim=1
        )
    out = backbone(
        input_ids=ids, attention_mask=mask, position_ids=position, cache=cache, use_cache=True
    )
    first = torch.tensor([c[0] for row in completions for c in row], device=device)
    total = _target_logps(head, out.last_hidden_state[:, -1].repeat_interleave(k, 0), first)
    rest = [c for row in completions for c in row]
    if max(len(c) for c in rest) > 1:  # continue from the cached prompt, K rows per prompt
        cache = out.cache
        cache.batch_repeat_interleave(k)
        inp, cmask = _pad([c[:-1] if len(c) > 1 else [0] for c in rest], 0, left=False)
        tgt, tmask = _pad([c[1:] if len(c) > 1 else [0] for c in rest], 0, left=False)
        cmask = cmask * torch.tensor([len(c) > 1 for c in rest])[:, None]
        inp, cmask, tgt = inp.to(device), cmask.to(device), tgt.to(device)
        start = mask.sum(-1).repeat_interleave(k)[:, None]
        hidden = backbone(
            input_ids=inp,
            attention_mask=torch.cat([mask.repeat_interleave(k, 0), cmask], dim=1),
            position_ids=start + torch.arange(inp.shape[1], device=device),
            cache=cache,
            use_cache=False,
        ).last_hidden_state
        keep = cmask.bool()
        lp = torch.zeros_like(cmask, dtype=torch.float32)
        lp[keep] = _target_logps(head, hidden[keep], tgt[keep])
        total = total + lp.sum(-1)
    return total.view(-1, k).cpu()


@torch.no_grad()
def _completion_logps(model, prompts, completions, batch_size: int) -> torch.Tensor:
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} is not allowed; it must be an integer >= 1.")
    if not prompts:
        return torch.empty(0, len(completions[0]) if completions else 1)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    if scale.is_sharded(model):  # FSDP: decoder and head exist whole only inside its forward
        try:
            return scale.forward_logps(model, prompts, completions, batch_size, device)
        finally:
            model.train(was_training)
    backbone, head = _backbone_and_head(model)
    try:
        prefix = _shared_prefix(backbone, prompts, device)
        chunks = [
            _chunk_logps(
                backbone,
                head,
                prompts[s : s + batch_size],
                completions[s : s + batch_size],
                device,
                prefix,
            )
            for s in range(0, len(prompts), batch_size)
        ]
    finally:
        model.train(was_training)
    return torch.cat(chunks)


def sequence_logps(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    completions: list[str],
    batch_size: int = 64,
    max_length: int | None = None,
) -> torch.Tensor:
    """Summed log-prob of each completion (EOS appended) given its prompt, tokenised as trl does.

    Returns a float32 tensor with one entry per (prompt, completion).

    Used by: tests/test_training.py (the reference for the batched :func:`pair_logps`).
    """
    if len(prompts) != len(completions):
        raise ValueError(
            f"{len(prompts)} prompts but {len(completions)} completions; give one completion each."
        )
    encoded = [
        _encode(tokenizer, p, [c], max_length) for p, c in zip(prompts, completions, strict=True)
    ]
    return _completion_logps(model, [e[0] for e in encoded], [e[1] for e in encoded], batch_size)[
        :, 0
    ]


def pair_logps(
    model: PreTrainedModel, encoded: EncodedPairs, batch_size: int = 64
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probs (chosen, rejected) of encoded pairs under ``model``.

    Used by: dpo_utils.probes.
    """
    both = _completion_logps(
        model,
        encoded.prompt_ids,
        [list(cr) for cr in zip(encoded.chosen_ids, encoded.rejected_ids, strict=True)],
        batch_size,
    )
    return both[:, 0], both[:, 1]


class ProbeCallback(TrainerCallback):
    """Records per-pair log-probs on fixed probe sets at step 0 and after every ``every``-th
    optimizer step.

    ``probe_sets`` maps a split name ("train", "test", ...) to a list of pair dicts (prompt,
    chosen, rejected, behavior). Reference log-probs are computed once, at the start of training:
    from ``ref_model`` when it is set (full fine-tuning; :func:`dpo_utils.training.train_dpo` sets
    it to trl's reference), otherwise from the policy with its LoRA adapter disabled, or from the
    policy itself at the start. Every process computes the whole probe (a forward pass under FSDP
    is collective); :meth:`table` aggregates per step, behaviour and split.

    Used by: dpo_utils.training.
    """

    def __init__(
        self,
        tokenizer,
        probe_sets: dict,
        beta: float,
        *,
        max_length=None,
        max_prompt_length=None,
        batch_size=64,
        every=1,
        ref_model=None,
    ):
        if not isinstance(probe_sets, dict) or not probe_sets:
            raise ValueError("probe_sets must be a non-empty dict {split name: list of pairs}.")
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every={every!r} is not allowed; it must be an integer >= 1.")
        for split, pairs in probe_sets.items():
            if not pairs:
                raise ValueError(
                    f"probe set {split!r} is empty; give at least one pair or leave the split out."
                )
        self.beta = losses.check_beta(beta)
        self.encoded = {
            s: encode_pairs(tokenizer, p, max_length, max_prompt_length)
            for s, p in probe_sets.items()
        }
        self.batch_size, self.every, self.ref_model = batch_size, every, ref_model
        self.reference: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None
        self.records: list[pd.DataFrame] = []

    def _reference(self, model) -> None:
        if self.ref_model is not None:
            self.reference = {
                s: pair_logps(self.ref_model, e, self.batch_size) for s, e in self.encoded.items()
            }
        elif hasattr(model, "disable_adapter"):
            with model.disable_adapter():
                self.reference = {
                    s: pair_logps(model, e, self.batch_size) for s, e in self.encoded.items()
                }
        else:
            self.reference = {
                s: pair_logps(model, e, self.batch_size) for s, e in self.encoded.items()
            }

    def record(self, model, step: int) -> None:
        """Probe ``model`` now and store the per-pair rows under ``step``."""
        if self.reference is None:
            self._reference(model)
        assert self.reference is not None  # set by _reference
        for split, enc in self.encoded.items():
            chosen, rejected = pair_logps(model, enc, self.batch_size)
            ref_c, ref_r = self.reference[split]
            self.records.append(
                pd.DataFrame(
                    {
                        "step": step,
                        "split": split,
                        "pair": range(len(chosen)),
                        "behavior": enc.behaviors,
                        "logp_chosen": chosen.numpy(),
                        "logp_rejected": rejected.numpy(),
                        "ref_logp_chosen": ref_c.numpy(),
                        "ref_logp_rejected": ref_r.numpy(),
                    }
                )
            )

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.record(model, state.global_step)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every == 0 or state.global_step == state.max_steps:
            self.record(model, state.global_step)

    def pair_table(self) -> pd.DataFrame:
        """One row per (step, split, pair): policy and reference log-probs of chosen and
        rejected."""
        if not self.records:
            return pd.DataFrame(columns=["step", "split", "pair", "behavior", *PROBE_METRICS[4:]])
        return pd.concat(self.records, ignore_index=True).drop_duplicates(
            ["step", "split", "pair"], keep="last"
        )

    def table(self, **constants) -> pd.DataFrame:
        """Tidy long table: step, behavior, split, metric, value, plus ``constants`` (e.g. seed,
        mode)."""
        return probe_table(self.pair_table(), self.beta, **constants)


def probe_table(pairs: pd.DataFrame, beta: float, **constants) -> pd.DataFrame:
    """Aggregate a per-pair table (see :meth:`ProbeCallback.pair_table`) per step, behaviour and
    split.

    Metrics: loss, margin (beta-scaled, trl's rewards/margins), reward_accuracy, output_accuracy
    (policy logp(chosen) > logp(rejected), the authors' outputs/accuracies) and the mean log-probs.

    Used by: dpo_utils.probes, dpo_utils.training.
    """
    rows = []
    for (step, behavior, split), g in pairs.groupby(["step", "behavior", "split"], sort=True):
        t = {k: torch.tensor(g[k].to_numpy()) for k in PROBE_METRICS[4:]}
        args = (t["logp_chosen"], t["logp_rejected"], t["ref_logp_chosen"], t["ref_logp_rejected"])
        values = {
            "loss": losses.dpo_loss(*args, beta),
            "margin": losses.reward_margins(*args, beta).mean(),
            "reward_accuracy": losses.reward_accuracy(*args, beta),
            "output_accuracy": losses.output_accuracy(args[0], args[1]),
            **{k: v.mean() for k, v in t.items()},
        }
        rows += [
            dict(step=step, behavior=behavior, split=split, metric=m, value=float(v))
            for m, v in values.items()
        ]
    table = pd.DataFrame(rows, columns=["step", "behavior", "split", "metric", "value"])
    return table.assign(**constants) if constants else table
