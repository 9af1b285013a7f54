"""Chapter 09's runs of several behaviours trained together: a pair alone, jointly and in conflict,
and every featured behaviour at once.

Each is also a list of :func:`~dpo_utils.run_cache.prefill` jobs, so that the chapter hands all
its runs to the worker processes in one dispatch, the heaviest first: on two cores, no worker then
waits alone at the end.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from .config import ExperimentConfig
from .llm_experiments import PROBE_TRAIN, _job
from .run_cache import load_job, prefill
from .verdicts import over_seeds

__all__ = [
    "pair_cfg",
    "pair_curves",
    "pair_jobs",
    "joint_jobs",
    "joint_curves",
    "prefill_prioritisation",
]


def pair_cfg(cfg: ExperimentConfig, pair_batch_size: int | None) -> ExperimentConfig:
    """The config of a pair's joint runs: batch ``pair_batch_size`` (default the profile's
    ``pair_batch_size``), each behaviour split on its own.

    Used by: dpo_utils.joint_runs.
    """
    return cfg.replace(dpo_batch_size=pair_batch_size or cfg.pair_batch_size, split="per-behavior")


def pair_jobs(
    cfg: ExperimentConfig,
    first: str,
    second: str,
    mode: str = "full",
    pair_batch_size: int | None = None,
    probe_train: int | None = PROBE_TRAIN,
    seed: int | None = None,
) -> list[dict]:
    """The runs :func:`pair_curves` reads, as :func:`~dpo_utils.run_cache.prefill` jobs: the two
    joint runs (compatible, conflicting) first, then the two solo runs (chapter 08's).

    Used by: dpo_utils.joint_runs.
    """
    joint_cfg, pair = pair_cfg(cfg, pair_batch_size), [first, second]
    return [
        _job(joint_cfg, pair, mode=mode, flip=flip, probe_train=probe_train, seed=seed)
        for flip in (False, [second])
    ] + [_job(cfg, [b], mode=mode, probe_train=probe_train, seed=seed) for b in pair]


def joint_jobs(
    cfg: ExperimentConfig,
    behaviors: Sequence[str],
    *,
    seeds: Sequence[tuple[int, int]],
    mode: str = "full",
    batch_size: int | None = None,
    probe_train: int | None = PROBE_TRAIN,
) -> list[dict]:
    """The runs of :func:`joint_curves` as :func:`~dpo_utils.run_cache.prefill` jobs, one per
    seed pair.

    Used by: dpo_utils.joint_runs.
    """
    batch = batch_size or min(128, cfg.dpo_batch_size * len(behaviors))
    joint_cfg = cfg.replace(dpo_batch_size=batch, per_device_batch_size=min(batch, 32))
    return [
        _job(
            joint_cfg.replace(pretrain_seed=int(p)),
            behaviors,
            mode=mode,
            probe_train=probe_train,
            seed=int(d),
        )
        for p, d in seeds
    ]


def prefill_prioritisation(
    cfg: ExperimentConfig,
    pair: Sequence[str],
    behaviors: Sequence[str],
    *,
    seeds: Sequence[tuple[int, int]],
    mode: str = "full",
    pair_batch_size: int | None = None,
) -> int:
    """Train chapter 09's runs that are not cached yet, in one dispatch and the heaviest first:
    the joint runs of all ``behaviors``, then the pair's joint, conflicting and solo runs, for
    every seed pair. Return how many were trained. Separately, the three joint runs would leave
    one of two workers idle for a third of their time.

    Used in: notebooks/09_prioritisation_llm.ipynb.
    """
    first, second = pair
    jobs = joint_jobs(cfg, behaviors, seeds=seeds, mode=mode)
    for p, d in seeds:
        seeded = cfg.replace(pretrain_seed=int(p))
        jobs += pair_jobs(seeded, first, second, mode, pair_batch_size, seed=int(d))
    return prefill(jobs)


def pair_curves(
    cfg: ExperimentConfig,
    first: str,
    second: str,
    *,
    mode: str = "full",
    pair_batch_size: int | None = None,
    probe_train: int | None = PROBE_TRAIN,
    seed: int | None = None,
) -> pd.DataFrame:
    """Joint DPO on two behaviours, compatible and conflicting (``second`` flipped), plus each solo
    run.

    Solo runs are chapter 08's (``cfg``); joint runs use ``pair_batch_size`` (default the
    profile's ``pair_batch_size``: twice the solo batch on the CPU profile, the authors' 128 on the
    paper profiles) and split each behaviour on its own (``split="per-behavior"``), so that a
    behaviour's rows are the same jointly and alone. Column ``run`` is "solo", "joint" or
    "conflicting" (in which the second behaviour's labels, and so its loss, are flipped).

    Used in: notebooks/09_prioritisation_llm.ipynb.
    """
    jobs = pair_jobs(cfg, first, second, mode, pair_batch_size, probe_train, seed)
    prefill(jobs)
    runs = ("joint", "conflicting", "solo", "solo")  # the order of pair_jobs
    tables = [load_job(job).probes.assign(run=run) for job, run in zip(jobs, runs, strict=True)]
    return pd.concat(tables, ignore_index=True).assign(mode=mode)


def joint_curves(
    cfg: ExperimentConfig,
    behaviors: Sequence[str],
    *,
    seeds: Sequence[tuple[int, int]],
    mode: str = "full",
    batch_size: int | None = None,
    probe_train: int | None = PROBE_TRAIN,
) -> pd.DataFrame:
    """One joint DPO run on all ``behaviors`` per (pre-training seed, DPO seed) pair of ``seeds``
    (batch ``batch_size``, default the profile's times the number of behaviours, capped at 128),
    probed per behaviour; column ``run`` = "joint", plus ``pretrain_seed`` and ``dpo_seed``. The
    seeds' runs train at once on a CPU box (:func:`dpo_utils.run_cache.prefill`).

    Used in: notebooks/09_prioritisation_llm.ipynb.
    """

    def jobs(c: ExperimentConfig, pairs: Sequence[tuple[int, int]]) -> list[dict]:
        return joint_jobs(
            c, behaviors, seeds=pairs, mode=mode, batch_size=batch_size, probe_train=probe_train
        )

    prefill(jobs(cfg, seeds))

    def run(c: ExperimentConfig, seed: int) -> pd.DataFrame:
        trained = load_job(jobs(c, [(c.pretrain_seed, seed)])[0])
        return trained.probes.assign(run="joint", mode=mode)

    return over_seeds(run, cfg, seeds)
