"""The reference for the last-layer trainer: a whole |V| x d unembedding trained by autograd.

:func:`dpo_utils.linear.train_last_layer` uses the identities (D1)-(D2) to track only the two
answer rows. This module trains the full head through log-softmax with plain SGD, one run at a
time, so the tests and chapter 01 can check the exact trainer against it (and
benchmarks/bench_linear.py can time the difference).
"""

from __future__ import annotations

import pandas as pd
import torch

from .linear import _as_runs, _check_training_args, batch_indices
from .losses import dpo_loss, output_accuracy, reward_accuracy

__all__ = ["train_full_vocab"]


def train_full_vocab(
    features: torch.Tensor,
    signs: torch.Tensor,
    weight: torch.Tensor,
    yes_id: int,
    no_id: int,
    *,
    lr: float,
    beta: float,
    steps: int,
    batch_size: int | None = None,
    seed: int = 0,
    balanced: bool = False,
) -> tuple[torch.Tensor, pd.DataFrame]:
    """Reference trainer: the whole |V| x d unembedding under autograd and plain SGD (one run).

    Policy log-probs come from log_softmax(W e) at the two answer ids; reference log-probs from the
    initial ``weight``. Batches are drawn exactly as in :func:`train_last_layer` with the same
    seed, so the two trainers can be compared step by step. Returns the final head and a table of
    (step, loss, reward_accuracy, output_accuracy, weight_change) on the training set.

    Used in: notebooks/01_dpo_single_token.ipynb, tests/test_linear.py, benchmarks/bench_linear.py.
    """
    beta = _check_training_args(lr, beta, steps, batch_size)
    feats, sgn = _as_runs(features, signs, "train")
    feats, sgn = feats[0], sgn[0]
    if not (0 <= yes_id < weight.shape[0] and 0 <= no_id < weight.shape[0]) or yes_id == no_id:
        raise ValueError(
            f"yes_id={yes_id} and no_id={no_id} must be distinct rows of a head with "
            f"{weight.shape[0]} rows."
        )
    w0 = weight.detach().clone()
    head = torch.nn.Parameter(w0.clone())
    opt = torch.optim.SGD([head], lr=lr)
    chosen_ids = torch.where(sgn > 0, yes_id, no_id)
    rejected_ids = torch.where(sgn > 0, no_id, yes_id)

    def logps(w: torch.Tensor, b: slice | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Chosen and rejected log-probs from one full-vocabulary log-softmax."""
        table = torch.log_softmax(feats[b] @ w.T, dim=-1)
        return table.gather(1, chosen_ids[b, None])[:, 0], table.gather(1, rejected_ids[b, None])[
            :, 0
        ]

    with torch.no_grad():
        ref_c, ref_r = logps(w0, slice(None))

    def evaluate(step: int) -> dict[str, float]:
        with torch.no_grad():
            pc, pr = logps(head, slice(None))
            return dict(
                step=step,
                loss=float(dpo_loss(pc, pr, ref_c, ref_r, beta)),
                reward_accuracy=float(reward_accuracy(pc, pr, ref_c, ref_r)),
                output_accuracy=float(output_accuracy(pc, pr)),
                weight_change=float(torch.linalg.norm(head - w0)),
            )

    generator = torch.Generator().manual_seed(int(seed))
    rows = [evaluate(0)]
    for step in range(1, steps + 1):
        idx = batch_indices(generator, sgn[None], batch_size, balanced)
        b = slice(None) if idx is None else idx[0]
        loss = dpo_loss(*logps(head, b), ref_c[b], ref_r[b], beta)
        opt.zero_grad()
        loss.backward()
        opt.step()
        rows.append(evaluate(step))
    return head.detach(), pd.DataFrame(rows)
