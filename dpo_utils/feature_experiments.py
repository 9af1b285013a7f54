"""Experiment A: last-layer DPO on a language model's own features, one run per behaviour and seed.

The model is frozen; its final hidden state e(x) at the DPO prompt's last token is cached once
(:func:`dpo_utils.embeddings.persona_features`) and only the " Yes" and " No" rows of the
unembedding train, with the exact two-row SGD of :func:`dpo_utils.linear.train_last_layer`. The
reference head is the model's own, so u_0 = w_Yes - w_No comes from ``lm_head``
(:func:`answer_direction`).

Each behaviour is split 90/10 exactly as the authors split its rows
(:func:`dpo_utils.data.split_rows`); training uses the train split and the test split is evaluated
alongside. Every (behaviour, seed) run has its own batch stream, seeded from its labels, so a
batched call equals running the runs one by one, and the aligned and flipped directions draw the
same batches.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import pandas as pd
import torch

from . import linear, metrics
from .data import split_rows
from .embeddings import FeatureSet, persona_features
from .metrics import class_means, priority_gap_matrix
from .models import TINY_MODELS, answer_token_ids, load_model_and_tokenizer, tiny_model
from .results import config_hash, load_or_run
from .runtime import NotCached, process_map, run_seed, single_threaded, worker_processes
from .tables import early_slope, rank_correlation, time_to_accuracy, value_at_step

__all__ = [
    "answer_direction",
    "split_groups",
    "last_layer_experiment",
    "speed_summary",
    "speed_correlations",
    "last_layer_runs",
    "last_layer_sweep",
    "priority_gaps",
]

Groups = Mapping[str, tuple[torch.Tensor, torch.Tensor]]
SPEED_METRICS = ("drop_early", "drop_final", "test_drop_final", "slope_early", "change_final")


def answer_direction(model, tokenizer) -> torch.Tensor:
    """u_0 = w_Yes - w_No (float64, CPU): the model's own unembedding rows for the answer tokens.

    The ids come from :func:`dpo_utils.models.answer_token_ids` (the tokenizer), never hard-coded.

    Used by: dpo_utils.feature_experiments.
    """
    yes, no = answer_token_ids(tokenizer)
    head = model.get_output_embeddings().weight.detach()
    return (head[yes] - head[no]).double().cpu()


def split_groups(
    groups: Groups, seed: int = 1234
) -> dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """Per behaviour, ``{"train": (f, s), "test": (f, s)}``: the authors' 90/10 split of its rows.

    ``groups`` maps a behaviour to (features (n, d), signs (n,)) with rows in file order (as
    :meth:`FeatureSet.groups` returns them); the permutation is the one ``data.split_rows`` applies
    to that behaviour's rows, so feature i of the train split belongs to row i of
    ``split_rows(rows)[0]``.

    Used by: dpo_utils.feature_experiments.
    """
    out = {}
    for name, (features, signs) in groups.items():
        train_idx, test_idx = split_rows(list(range(len(signs))), seed)
        if not test_idx:
            raise ValueError(
                f"behaviour {name!r} has {len(signs)} rows: too few for a 90/10 split."
            )
        out[name] = {
            part: (features[idx].double(), signs[idx].double())
            for part, idx in (("train", torch.tensor(train_idx)), ("test", torch.tensor(test_idx)))
        }
    return out


def _train_runs(
    runs: list[dict], data: list[dict], batch_seeds: list[int], u0: torch.Tensor, **train_args
) -> pd.DataFrame:
    """One batched :func:`linear.train_last_layer` call over runs whose splits share a shape."""
    stack = {
        part: (torch.stack([d[part][0] for d in data]), torch.stack([d[part][1] for d in data]))
        for part in ("train", "test")
    }
    history = linear.train_last_layer(
        *stack["train"],
        u0.double().expand(len(runs), -1).clone(),
        seed=batch_seeds,
        eval_sets=stack,
        **train_args,
    )
    return history.to_frame(runs)


@single_threaded
def last_layer_experiment(
    groups: Groups,
    u0: torch.Tensor,
    *,
    lr: float,
    beta: float,
    steps: int,
    batch_size: int | None,
    seeds: Sequence[int],
    flip: bool = False,
    balanced: bool = False,
    split_seed: int = 1234,
) -> pd.DataFrame:
    """Last-layer DPO for every (behaviour, seed), trained on the train split, evaluated on both.

    ``flip=True`` swaps chosen and rejected (the misalignment direction: the *other* answer is
    preferred). Returns the tidy table of :meth:`LastLayerHistory.to_frame` with the run labels
    behavior, seed, direction ("aligned"/"flipped"), lr, batch_seed, distinguishability (of the
    train split) and max_feature_norm (largest ||e|| in the train split).

    Used by: dpo_utils.feature_experiments.
    """
    sign = -1.0 if flip else 1.0
    by_shape: dict[tuple, tuple[list, list, list]] = {}
    for name, parts in split_groups(groups, split_seed).items():
        parts = {k: (f, sign * s) for k, (f, s) in parts.items()}
        f, s = parts["train"]
        labels = dict(
            behavior=name,
            direction="flipped" if flip else "aligned",
            lr=float(lr),
            distinguishability=float(metrics.distinguishability(f, s)),
            max_feature_norm=float(f.norm(dim=1).max()),
        )
        shape = (tuple(f.shape), tuple(parts["test"][0].shape))
        runs, data, batch_seeds = by_shape.setdefault(shape, ([], [], []))
        for seed in seeds:
            batch_seed = run_seed(name, int(seed), "last-layer batches")
            runs.append(dict(labels, seed=int(seed), batch_seed=batch_seed))
            data.append(parts)
            batch_seeds.append(batch_seed)
    tables = [
        _train_runs(
            runs,
            data,
            batch_seeds,
            u0,
            lr=lr,
            beta=beta,
            steps=steps,
            batch_size=batch_size,
            balanced=balanced,
        )
        for runs, data, batch_seeds in by_shape.values()
    ]
    return pd.concat(tables, ignore_index=True)


def speed_summary(table: pd.DataFrame, k: int = 10, threshold: float = 0.5) -> pd.DataFrame:
    """Per run, how fast it learns; then the mean over seeds, one row per (behaviour, direction,
    lr).

    Columns: ``drop_early`` / ``drop_final`` = ln 2 minus the train-split loss at step k / at the
    last step; ``test_drop_final`` the same on the test split; ``slope_early`` = ||W(k) - W(0)|| /
    k (:func:`tables.early_slope`); ``change_final`` = ||W(T) - W(0)||; ``output_accuracy_start`` /
    ``_final`` on the train split; ``steps_to_threshold``: first step at which train output
    accuracy reaches ``threshold`` (mean over the seeds that reach it, NaN if none; 0 when it
    starts above), and ``reached``, the fraction of seeds that reach it.

    Used in: notebooks/07_last_layer_dpo.ipynb
    """
    keys = [c for c in table.columns if c not in ("step", "split", "metric", "value")]
    last = int(table.step.max())
    out = early_slope(table, k).rename(columns={"slope": "slope_early"})
    parts = [
        value_at_step(table, keys, "train", "loss", k, "loss_early"),
        value_at_step(table, keys, "train", "loss", last, "loss_final"),
        value_at_step(table, keys, "test", "loss", last, "test_loss_final"),
        value_at_step(table, keys, "train", "weight_change", last, "change_final"),
        value_at_step(table, keys, "train", "output_accuracy", 0, "output_accuracy_start"),
        value_at_step(table, keys, "train", "output_accuracy", last, "output_accuracy_final"),
        time_to_accuracy(table, threshold, "output_accuracy", "train"),
    ]
    for part in parts:
        out = out.merge(part, on=keys)
    out["drop_early"] = math.log(2.0) - out.pop("loss_early")
    out["drop_final"] = math.log(2.0) - out.pop("loss_final")
    out["test_drop_final"] = math.log(2.0) - out.pop("test_loss_final")
    out["reached"] = out["reached"].astype(float)
    group = [c for c in keys if c not in ("seed", "batch_seed")]
    return (
        out.drop(columns=["seed", "batch_seed"], errors="ignore")
        .groupby(group, sort=False)
        .mean()
        .reset_index()
    )


def speed_correlations(
    summary: pd.DataFrame,
    metrics_: Sequence[str] = SPEED_METRICS,
    by: Sequence[str] = ("direction", "lr"),
) -> pd.DataFrame:
    """Spearman rho between distinguishability and each speed metric, per (direction, lr)
    condition.

    Returns one row per condition and metric: the condition's labels, ``metric``, ``rho`` and
    ``n_behaviors``.

    Used in: notebooks/07_last_layer_dpo.ipynb
    """
    rows = []
    for condition, part in summary.groupby(list(by), sort=False):
        condition = condition if isinstance(condition, tuple) else (condition,)
        for metric in metrics_:
            rows.append(
                dict(
                    zip(by, condition, strict=True),
                    metric=metric,
                    n_behaviors=len(part),
                    rho=rank_correlation(part["distinguishability"], part[metric]),
                )
            )
    return pd.DataFrame(rows)


def last_layer_runs(
    cfg,
    persona: Mapping[str, Sequence[Mapping]],
    *,
    lrs: Sequence[float],
    n_seeds: int,
    random_init: bool = False,
    device: str = "cpu",
    cached_only: bool = False,
) -> pd.DataFrame:
    """Chapter 07's runs for one model, cached: :func:`last_layer_experiment` at every learning
    rate in ``lrs``, aligned and flipped, ``n_seeds`` batch seeds, on the "final" features.

    The model is the profile's (for a tiny stand-in, the one of ``cfg.pretrain_seed``), or with
    ``random_init`` a freshly initialised tiny model of the same shape and tokenizer (seed
    ``cfg.pretrain_seed``), whose head is also the reference. The table gains ``model``
    ("pre-trained" or "random init") and ``pretrain_seed``; the results key holds the model, its
    weights' folder, the persona rows, every setting and the seeds. With ``cached_only`` a table
    that is not cached yet raises :class:`NotCached` instead of being computed.

    Used by: dpo_utils.feature_experiments.
    """
    if random_init and cfg.model_name not in TINY_MODELS:
        raise ValueError(
            f"random_init=True needs a tiny stand-in; model_name={cfg.model_name!r} is not one "
            f"of {sorted(TINY_MODELS)}."
        )
    model, tokenizer = load_model_and_tokenizer(cfg, device)
    weights = getattr(model, "name_or_path", cfg.model_name)
    if random_init:
        model = tiny_model(cfg.model_arch, tokenizer, cfg.pretrain_seed)
        model = model.to(device)  # type: ignore[arg-type]  # transformers' wrapped .to, as in models
        weights = f"random-init:{cfg.pretrain_seed}:{weights}"
    label = "random init" if random_init else "pre-trained"
    key = dict(
        model=weights,
        variant="final",
        persona=config_hash({"persona": persona}),
        beta=cfg.beta,
        steps=cfg.last_layer_steps,
        batch_size=cfg.last_layer_batch_size,
        seeds=int(n_seeds),
        lrs=[float(lr) for lr in lrs],
        version=2,
    )

    def run() -> pd.DataFrame:
        if cached_only:
            raise NotCached(f"last-layer runs of {label} model {weights}")
        features = persona_features(
            model, tokenizer, persona, profile=cfg.profile, model_key=weights
        )
        groups = features.groups("final")
        u0 = answer_direction(model, tokenizer)
        return pd.concat(
            [
                last_layer_experiment(
                    groups,
                    u0,
                    lr=lr,
                    beta=cfg.beta,
                    steps=cfg.last_layer_steps,
                    batch_size=cfg.last_layer_batch_size,
                    flip=flip,
                    seeds=range(n_seeds),
                )
                for lr in lrs
                for flip in (False, True)
            ],
            ignore_index=True,
        )

    table = load_or_run("last_layer", key, run, profile=cfg.profile)
    return table.assign(model=label, pretrain_seed=cfg.pretrain_seed)


def _last_layer_job(job: dict) -> pd.DataFrame:
    return last_layer_runs(**job)


def last_layer_sweep(
    cfg,
    persona: Mapping[str, Sequence[Mapping]],
    *,
    pretrain_seeds: Sequence[int],
    random_inits: Sequence[bool],
    lrs: Sequence[float],
    n_seeds: int,
    device: str = "cpu",
) -> pd.DataFrame:
    """:func:`last_layer_runs` for every pre-training seed and ``random_init`` flag, stacked in
    that order. Those not cached yet are computed ``worker_processes`` at a time on a CPU box
    (each model's features and runs in one single-threaded worker: on two cores, the six models
    of the CPU profile take half the time); cached ones are read here, without starting workers.

    Used in: notebooks/07_last_layer_dpo.ipynb.
    """
    jobs = [
        dict(
            cfg=cfg.replace(pretrain_seed=p),
            persona=persona,
            lrs=list(lrs),
            n_seeds=n_seeds,
            random_init=r,
            device=device,
        )
        for p in pretrain_seeds
        for r in random_inits
    ]
    if not jobs:
        raise ValueError(
            f"pretrain_seeds={list(pretrain_seeds)!r} and random_inits={list(random_inits)!r} "
            "give no run; name at least one of each."
        )
    processes = worker_processes(on_gpu=device != "cpu")
    if processes == 1:  # one process (a GPU): each model loaded once, nothing to dispatch
        return pd.concat([last_layer_runs(**job) for job in jobs], ignore_index=True)
    tables: dict[int, pd.DataFrame] = {}
    for i, job in enumerate(jobs):
        try:
            tables[i] = last_layer_runs(**job, cached_only=True)
        except NotCached:
            continue
    missing = [i for i in range(len(jobs)) if i not in tables]
    for i, table in zip(
        missing, process_map(_last_layer_job, [jobs[i] for i in missing], processes), strict=True
    ):
        tables[i] = table
    return pd.concat([tables[i] for i in range(len(jobs))], ignore_index=True)


# --- measuring the features (chapter 06) --------------------------------------------------


def priority_gaps(feature_set: FeatureSet, variant: str = "final") -> pd.DataFrame:
    """Tidy priority-gap matrix (behavior_i, behavior_j, gap) from each behaviour's d = mu_Yes -
    mu_No.

    Used in: notebooks/06_measuring_distinguishability.ipynb.
    """
    groups = feature_set.groups(variant)
    names = list(groups)
    differences = torch.stack([torch.sub(*class_means(f, s)) for f, s in groups.values()])
    gap = priority_gap_matrix(differences)
    return pd.DataFrame(
        [
            dict(behavior_i=a, behavior_j=b, gap=float(gap[i, j]))
            for i, a in enumerate(names)
            for j, b in enumerate(names)
        ]
    )
