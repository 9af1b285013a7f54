"""Last-layer DPO with single-token answers: the setting the paper's theory analyses.

A frozen network maps a prompt x to a feature e(x) in R^d; only the unembedding W (|V| x d) trains.
The two candidate answers are single tokens (" Yes" and " No"). With s = +1 when " Yes" is chosen
and s = -1 otherwise, and u = w_Yes - w_No, the companion derivation (book/notation.md, chapter 01)
gives

* (D1) log pi(y_w|x) - log pi(y_l|x) = s * u.e(x): the softmax partition function cancels, so DPO's
  argument is h = beta * s * (u - u_0).e(x);
* (D2) only the rows w_Yes and w_No receive gradient, with opposite signs, so
  ||W(t) - W(0)||_F = ||W(t) - W(0)||_op = ||u_t - u_0|| / sqrt(2);
* (D3) the first SGD step has size (lr * beta / sqrt 2) * ||mean_batch(s e)||.

:func:`train_last_layer` is the exact trainer that uses (D1)-(D2): it tracks only
Delta = w_Yes(t) - w_Yes(0) = -(w_No(t) - w_No(0)), for many runs (behaviours x seeds) at once, as
one batched tensor computation. :func:`dpo_utils.full_vocab.train_full_vocab` is the reference: a
full |V| x d head trained by autograd through log-softmax, used to check the exact trainer.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from .config import ConfigError
from .losses import check_beta
from .metrics import distinguishability

__all__ = [
    "LastLayerHistory",
    "batch_indices",
    "train_last_layer",
    "first_step_change",
    "weight_change_bound",
    "first_step_sweep",
]

EVAL_METRICS = ("loss", "reward_accuracy", "output_accuracy", "mean_margin")


@dataclass
class LastLayerHistory:
    """Per-step records of R runs. ``metrics[(split, metric)]`` has shape (R, len(steps)).

    ``delta`` is the final Delta = w_Yes(T) - w_Yes(0) of each run, shape (R, d); ``deltas`` holds
    every recorded Delta, shape (R, len(steps), d), when the trainer was asked to keep them.

    Used by: dpo_utils.linear.
    """

    steps: np.ndarray
    metrics: dict[tuple[str, str], np.ndarray]
    delta: torch.Tensor
    deltas: torch.Tensor | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def to_frame(self, runs: Sequence[Mapping[str, Any]] | None = None) -> pd.DataFrame:
        """Tidy long table: one row per (run, step, split, metric), the run's labels as columns.

        ``runs[r]`` labels run r, e.g. ``{"behavior": "b3", "seed": 1}``; default ``{"run": r}``.
        """
        n_runs = self.delta.shape[0]
        runs = [{"run": r} for r in range(n_runs)] if runs is None else list(runs)
        if len(runs) != n_runs:
            raise ValueError(f"runs has {len(runs)} labels but the history holds {n_runs} runs.")
        labels = pd.DataFrame(runs)
        frames = []
        for (split, metric), values in self.metrics.items():
            part = pd.DataFrame(
                {
                    "run_index": np.repeat(np.arange(n_runs), len(self.steps)),
                    "step": np.tile(self.steps, n_runs),
                    "split": split,
                    "metric": metric,
                    "value": np.asarray(values, dtype=float).reshape(-1),
                }
            )
            frames.append(part)
        table = pd.concat(frames, ignore_index=True)
        table = (
            labels.reset_index(names="run_index")
            .merge(table, on="run_index")
            .drop(columns="run_index")
        )
        return table


def _as_runs(
    features: torch.Tensor, signs: torch.Tensor, name: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Bring (n, d)/(n,) inputs to (R, n, d)/(R, n) and check that the shapes and signs agree."""
    if features.dim() == 2:
        features = features.unsqueeze(0)
    if signs.dim() == 1:
        signs = signs.unsqueeze(0)
    if features.dim() != 3 or signs.dim() != 2 or features.shape[:2] != signs.shape:
        raise ValueError(
            f"{name}: features must be (R, n, d) and signs (R, n); got {tuple(features.shape)}, "
            f"{tuple(signs.shape)}."
        )
    if not torch.all((signs == 1) | (signs == -1)):
        raise ValueError(f"{name}: signs must be +1 (' Yes' preferred) or -1 (' No' preferred).")
    return features, signs.to(features.dtype)


def batch_indices(
    generator: torch.Generator, signs: torch.Tensor, batch_size: int | None, balanced: bool = False
) -> torch.Tensor | None:
    """Indices (R, B) of one fresh random mini-batch per run, or ``None`` for the full batch.

    As in the authors' last-layer scripts, each step draws a new shuffled batch without replacement
    within the batch. ``balanced=True`` draws B/2 " Yes"-preferred and B/2 " No"-preferred pairs,
    which removes the class-count noise of random batches on uncentred features.

    Used by: dpo_utils.full_vocab, dpo_utils.linear.
    """
    n_runs, n = signs.shape
    if batch_size is None or batch_size >= n and not balanced:
        return None
    scores = torch.rand(n_runs, n, generator=generator, dtype=torch.float64)
    if not balanced:
        return scores.argsort(dim=1)[:, :batch_size]
    half = batch_size // 2
    if (
        batch_size % 2
        or half > int((signs > 0).sum(1).min())
        or half > int((signs < 0).sum(1).min())
    ):
        raise ValueError(
            "balanced batches need an even batch_size, at most batch_size/2 pairs of each class; "
            f"got batch_size={batch_size}."
        )
    pos = torch.where(signs > 0, scores, -1.0).argsort(dim=1, descending=True)[:, :half]
    neg = torch.where(signs < 0, scores, -1.0).argsort(dim=1, descending=True)[:, :half]
    return torch.cat([pos, neg], dim=1)


def _gather(x: torch.Tensor, idx: torch.Tensor | None) -> torch.Tensor:
    if idx is None:
        return x
    if x.dim() == 3:
        return torch.gather(x, 1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
    return torch.gather(x, 1, idx)


def _check_training_args(lr: float, beta: float, steps: int, batch_size: int | None) -> float:
    beta = check_beta(beta)
    if (
        isinstance(lr, bool)
        or not isinstance(lr, (int, float))
        or not math.isfinite(lr)
        or lr <= 0
    ):
        raise ConfigError(
            f"lr={lr!r} is not allowed; the learning rate must be a finite float > 0."
        )
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"steps={steps!r} is not allowed; steps must be an integer >= 1.")
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise ConfigError(
            f"batch_size={batch_size!r} is not allowed; use an integer >= 1 or None."
        )
    return beta


def _evaluate(
    delta: torch.Tensor,
    u0: torch.Tensor,
    feats: torch.Tensor,
    signs: torch.Tensor,
    beta: float,
    proj: torch.Tensor | None = None,
    base: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Loss, both accuracies and mean margin of every run on one evaluation set.

    ``proj`` = Delta.e and ``base`` = u0.e (both (R, n)) may be passed in when already computed.
    """
    proj = torch.einsum("rnd,rd->rn", feats, delta) if proj is None else proj  # Delta.e
    base = (
        torch.einsum("rnd,rd->rn", feats, u0) if base is None else base
    )  # u0.e, fixed during training
    margin = 2.0 * beta * signs * proj  # h = beta * s * (u - u0).e, computed without cancellation
    policy_gap = signs * (base + 2.0 * proj)  # s * u_t.e
    return {
        "loss": F.softplus(-margin).mean(1),
        "reward_accuracy": (margin > 0).to(feats.dtype).mean(1),
        "output_accuracy": (policy_gap > 0).to(feats.dtype).mean(1),
        "mean_margin": margin.mean(1),
    }


def train_last_layer(
    features: torch.Tensor,
    signs: torch.Tensor,
    u0: torch.Tensor | None = None,
    *,
    lr: float,
    beta: float,
    steps: int,
    batch_size: int | None = None,
    seed: int | Sequence[int] = 0,
    balanced: bool = False,
    eval_sets: Mapping[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
    sample_weights: torch.Tensor | None = None,
    keep_deltas: bool = False,
    chunk_bytes: int | None = 8 * 2**20,
    batches: Sequence[torch.Tensor | None] | None = None,
) -> LastLayerHistory:
    """Exact two-row SGD for last-layer single-token DPO, for R runs at once.

    ``features`` (R, n, d) or (n, d); ``signs`` (R, n) of +1/-1; ``u0`` (R, d) or (d,) the initial
    w_Yes - w_No (default 0). Each step draws a fresh batch per run (``batch_size=None``: full
    batch). ``seed`` seeds the sampler; a sequence gives each run its own stream (run r: seed[r]).
    ``eval_sets`` maps a split name to (features, signs) evaluated at step 0 and after every step
    (default: the training set as ``"train"``). ``sample_weights`` (R, n) weight each pair's loss.

    Records, per split: ``loss``, ``reward_accuracy``, ``output_accuracy``, ``mean_margin``; and
    ``weight_change`` = ||W(t) - W(0)||_F and ``batch_loss`` (the loss of step t's batch).

    Large sweeps are memory-bound: every step reads all features twice. With ``chunk_bytes`` set,
    runs are trained in consecutive groups whose features fit in that many bytes (default 8 MiB, a
    share of a typical L3 cache), so each group stays in cache for all its steps. The grouping does
    not change the result: with one shared seed, each step's batches are drawn for all runs first
    and every group gets its rows (``batches``: one (R, b) index tensor per step, else sampled).

    Used in: notebooks/01_dpo_single_token.ipynb.
    """
    beta = _check_training_args(lr, beta, steps, batch_size)
    features, signs = _as_runs(features, signs, "train")
    n_runs, n, dim = features.shape
    per_run = features[0].numel() * features.element_size()
    if chunk_bytes is not None and n_runs > 1 and n_runs * per_run > chunk_bytes:
        return _train_in_chunks(
            features,
            signs,
            u0,
            max(1, chunk_bytes // per_run),
            dict(
                lr=lr,
                beta=beta,
                steps=steps,
                batch_size=batch_size,
                seed=seed,
                balanced=balanced,
                eval_sets=eval_sets,
                sample_weights=sample_weights,
                keep_deltas=keep_deltas,
            ),
        )
    u0 = torch.zeros(n_runs, dim, dtype=features.dtype) if u0 is None else u0.to(features.dtype)
    u0 = u0.expand(n_runs, dim) if u0.dim() == 1 else u0
    eval_sets = {"train": (features, signs)} if eval_sets is None else dict(eval_sets)
    evals = {name: _as_runs(f, s, name) for name, (f, s) in eval_sets.items()}
    weights = (
        None if sample_weights is None else sample_weights.to(features.dtype).expand(n_runs, n)
    )

    seeds = [seed] if isinstance(seed, int) else list(seed)
    if len(seeds) not in (1, n_runs):
        raise ValueError(f"seed must be an int or one per run ({n_runs}); got {len(seeds)} seeds.")
    generators = [torch.Generator().manual_seed(int(s)) for s in seeds]

    delta = torch.zeros(n_runs, dim, dtype=features.dtype)
    records: dict[tuple[str, str], list[torch.Tensor]] = {}
    kept = [delta.clone()] if keep_deltas else None

    # u0.e never changes, and Delta.e on the training features serves both the evaluation of the
    # training set and the next step's margins: each step reads the features twice, not ~4 times
    bases = {name: torch.einsum("rnd,rd->rn", f, u0) for name, (f, _) in evals.items()}
    train_proj = torch.zeros(n_runs, n, dtype=features.dtype)

    def record(batch_loss: torch.Tensor) -> None:
        nonlocal train_proj
        train_proj = torch.einsum("rnd,rd->rn", features, delta)
        for name, (f, s) in evals.items():
            proj = train_proj if f is features else None
            for metric, value in _evaluate(delta, u0, f, s, beta, proj, bases[name]).items():
                records.setdefault((name, metric), []).append(value)
        records.setdefault(("train", "weight_change"), []).append(
            math.sqrt(2.0) * delta.norm(dim=1)
        )
        records.setdefault(("train", "batch_loss"), []).append(batch_loss)

    record(torch.full((n_runs,), math.log(2.0), dtype=features.dtype))
    for step in range(steps):
        if batches is not None:
            idx = batches[step]
        elif len(generators) == 1:
            idx = batch_indices(generators[0], signs, batch_size, balanced)
        else:
            parts = [
                batch_indices(g, signs[r : r + 1], batch_size, balanced)
                for r, g in enumerate(generators)
            ]
            drawn = [p for p in parts if p is not None]  # all or none: every run has n pairs
            idx = torch.cat(drawn) if drawn else None
        signs_b = _gather(signs, idx)
        margin = (
            2.0 * beta * signs_b * _gather(train_proj, idx)
        )  # train_proj = Delta.e at this step
        coef = torch.sigmoid(-margin) * signs_b  # -dloss/dh * s
        if weights is None:
            batch_loss = F.softplus(-margin).mean(1)
            coef = coef / coef.shape[1]
        else:
            w_b = _gather(weights, idx)
            batch_loss = (F.softplus(-margin) * w_b).sum(1) / w_b.sum(1)
            coef = coef * w_b / w_b.sum(1, keepdim=True)
        # dL/dw_Yes = -beta * sum_i coef_i e_i ; w_No gets the opposite gradient. Scattering the
        # batch coefficients into (R, n) avoids copying its features (indices distinct per run).
        if idx is not None:
            coef = torch.zeros(n_runs, n, dtype=features.dtype).scatter_(1, idx, coef)
        delta = delta + lr * beta * torch.einsum("rn,rnd->rd", coef, features)
        if kept is not None:
            kept.append(delta.clone())
        record(batch_loss)

    metrics = {key: torch.stack(vals, dim=1).cpu().numpy() for key, vals in records.items()}
    return LastLayerHistory(
        steps=np.arange(steps + 1),
        metrics=metrics,
        delta=delta,
        deltas=None if kept is None else torch.stack(kept, dim=1),
        info=dict(lr=lr, beta=beta, steps=steps, batch_size=batch_size, balanced=balanced),
    )


def _train_in_chunks(features, signs, u0, size: int, kwargs: dict) -> LastLayerHistory:
    """Run :func:`train_last_layer` on consecutive groups of ``size`` runs; join the histories."""
    n_runs = features.shape[0]

    def rows(x, part: slice):
        return x[part] if x is not None and x.dim() > 1 and x.shape[0] == n_runs else x

    drawn = None
    if isinstance(kwargs["seed"], int) or len(kwargs["seed"]) == 1:  # one stream for all runs
        seed = kwargs["seed"] if isinstance(kwargs["seed"], int) else kwargs["seed"][0]
        gen = torch.Generator().manual_seed(int(seed))
        draw = (kwargs["batch_size"], kwargs["balanced"])
        drawn = [batch_indices(gen, signs, *draw) for _ in range(kwargs["steps"])]
    parts = []
    for start in range(0, n_runs, size):
        part = slice(start, start + size)
        kw = dict(kwargs, chunk_bytes=None)
        if drawn is not None:
            kw["batches"] = [None if i is None else i[part] for i in drawn]
        if not isinstance(kwargs["seed"], int):
            kw["seed"] = list(kwargs["seed"])[part] if len(kwargs["seed"]) > 1 else kwargs["seed"]
        if kwargs["eval_sets"] is not None:
            kw["eval_sets"] = {
                k: (rows(f, part), rows(s, part)) for k, (f, s) in kwargs["eval_sets"].items()
            }
        kw["sample_weights"] = rows(kwargs["sample_weights"], part)
        parts.append(train_last_layer(features[part], signs[part], rows(u0, part), **kw))
    kept = [p.deltas for p in parts if p.deltas is not None]  # all or none: the same kwargs
    return LastLayerHistory(
        steps=parts[0].steps,
        metrics={key: np.concatenate([p.metrics[key] for p in parts]) for key in parts[0].metrics},
        delta=torch.cat([p.delta for p in parts]),
        deltas=torch.cat(kept) if kept else None,
        info=parts[0].info,
    )


def first_step_change(
    features: torch.Tensor, signs: torch.Tensor, lr: float, beta: float
) -> torch.Tensor:
    """(D3): ||W(1) - W(0)||_F after one SGD step on this batch = (lr beta / sqrt 2) ||mean(s e)||.

    ``features`` (..., n, d), ``signs`` (..., n); returns one value per leading index.

    Used by: dpo_utils.linear.
    """
    beta = check_beta(beta)
    mean_se = (signs.to(features.dtype).unsqueeze(-1) * features).mean(-2)
    return lr * beta / math.sqrt(2.0) * mean_se.norm(dim=-1)


def weight_change_bound(
    steps: np.ndarray | int, lr: float, beta: float, max_feature_norm: float
) -> np.ndarray:
    """(D4): ||W(t) - W(0)|| <= sqrt(2) * lr * beta * t * max ||e||, as every sigmoid is below 1.

    Used in: notebooks/02_update_rate.ipynb, notebooks/07_last_layer_dpo.ipynb.
    """
    return (
        math.sqrt(2.0) * lr * check_beta(beta) * np.asarray(steps, dtype=float) * max_feature_norm
    )


def first_step_sweep(
    features: torch.Tensor,
    signs: torch.Tensor,
    *,
    lr: float,
    beta: float,
    batch_size: int | None,
    seeds: Sequence[int],
    labels: Sequence[Mapping[str, Any]],
) -> pd.DataFrame:
    """Measured ||W(1) - W(0)|| against (D3)'s prediction, for R behaviours x several batch seeds.

    Returns one row per (behaviour, seed) with ``measured``, ``predicted_batch`` (the exact
    (lr beta / sqrt 2) ||mean_batch(s e)|| on the batch drawn) and ``predicted_population``
    ((lr beta / (2 sqrt 2)) ||mu_Yes - mu_No|| of the full training set), plus the run's labels.

    Used in: notebooks/01_dpo_single_token.ipynb.
    """

    features, signs = _as_runs(features, signs, "train")
    rows = []
    dist = distinguishability(features, signs)
    for seed in seeds:
        hist = train_last_layer(
            features, signs, lr=lr, beta=beta, steps=1, batch_size=batch_size, seed=seed
        )
        idx = batch_indices(torch.Generator().manual_seed(int(seed)), signs, batch_size)
        batch_pred = first_step_change(_gather(features, idx), _gather(signs, idx), lr, beta)
        for r, label in enumerate(labels):
            rows.append(
                dict(
                    label,
                    seed=seed,
                    distinguishability=float(dist[r]),
                    measured=float(hist.metrics[("train", "weight_change")][r, 1]),
                    predicted_batch=float(batch_pred[r]),
                    predicted_population=float(
                        lr * check_beta(beta) / (2 * math.sqrt(2)) * dist[r]
                    ),
                )
            )
    return pd.DataFrame(rows)
