"""Chapter 06's stand-ins made ready: which ones it measures, pre-trained and their features
computed, in worker processes, one dispatch for all of them.

A stand-in here is one tiny model (:data:`STAND_INS`, the tiny Llama unless the chapter asks for
the tiny Mistral too) for one pre-training seed, on the real behaviours or on the controlled
corpus. Making one ready is two cached steps: pre-training (:func:`dpo_utils.models.
pretrained_tiny_model`) and its features of every measured statement (:func:`dpo_utils.embeddings.
persona_features`). Each step holds a lock on its cache folder, so two processes that want the same
stand-in never both compute it: the second waits and reads what the first saved.

``make book`` uses that. On the CPU profile it starts ``python -m dpo_utils.measuring_setup`` in
the background beside jupyter-book: one process with one torch thread makes the stand-ins ready,
last first, while chapters 01-05 execute, which leave the second core idle. When chapter 06 runs,
its workers take the list from the front: they read what is done, wait for the stand-in being
computed, and compute the rest. Pre-training and feature extraction have one torch thread in a
worker and in the background job alike, so what chapter 06 measures does not depend on which
process computed it (tests/test_models.py checks that a worker's pre-trained stand-in equals the
notebook process's, bit for bit; tests/test_embeddings.py that features do not depend on the
number of threads).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from . import data, embeddings, models
from .config import PROFILES, ExperimentConfig, get_config, profile_from_env
from .models import TINY_MODELS, load_model_and_tokenizer
from .runtime import exit_on_sigterm, process_map, worker_processes

__all__ = [
    "STAND_INS",
    "N_PRETRAIN_SEEDS",
    "measured_behaviors",
    "standin_configs",
    "chapter_groups",
    "prepare_standins",
    "main",
]

#: the stand-ins chapter 06 measures on the CPU profile when its ``stand_ins`` parameter is None.
#: The tiny Mistral (grouped-query attention) is left out of the book's build: its three
#: pre-trainings would cost a third of the chapter's time (issue 11's budget).
STAND_INS: tuple[str, ...] = ("tiny-llama",)
#: chapter 06's ``n_pretrain_seeds`` default (its parameters cell says the same number;
#: tests/test_measuring_experiments.py keeps the two equal)
N_PRETRAIN_SEEDS = 3


def measured_behaviors(cfg: ExperimentConfig, source: str | None = None) -> list[str | int]:
    """The behaviours chapter 06 measures: the evaluation behaviours on the real data (never the
    format behaviours, whose answers the stand-ins saw), every corpus behaviour, or the profile's.

    Used by: dpo_utils.measuring_setup.
    """
    source = cfg.persona_source if source is None else source
    if source == data.PERSONA_SOURCE:
        return list(data.EVALUATION_BEHAVIORS)
    if source == data.CORPUS_SOURCE:
        return [*data.available_behaviors(source)]
    return list(cfg.behaviors) or list(data.AUTHORS_BEHAVIORS)


def standin_configs(
    cfg: ExperimentConfig, n_seeds: int, source: str | None = None, archs: Sequence[str] = ()
) -> list[ExperimentConfig]:
    """One config per stand-in and pre-training seed (cfg.pretrain_seed + 0, 1, ...) on the CPU
    profile; the profile's own model once on a GPU profile.

    Used by: dpo_utils.measuring_setup.
    """
    if cfg.model_name not in TINY_MODELS or cfg.requires_gpu:  # a GPU profile's own model once
        return [cfg]
    source = cfg.persona_source if source is None else source
    return [
        cfg.replace(
            model_name=name,
            model_arch=tiny.arch,
            pretrain_seed=cfg.pretrain_seed + i,
            persona_source=source,
        )
        for name, tiny in TINY_MODELS.items()
        if not archs or tiny.arch in archs
        for i in range(n_seeds)
    ]


def chapter_groups(
    cfg: ExperimentConfig,
    n_pretrain_seeds: int = N_PRETRAIN_SEEDS,
    stand_ins: Sequence[str] | None = None,
    behaviors: Sequence | None = None,
) -> list[tuple[list[ExperimentConfig], dict]]:
    """What chapter 06 measures, as ``[(configs, persona), ...]``: the stand-ins of ``stand_ins``
    (default :data:`STAND_INS`) on the profile's data with the chosen ``behaviors`` (default
    :func:`measured_behaviors`), then the tiny Llamas on the controlled corpus with all its
    behaviours. A GPU profile's own model stands for each group.

    Used in: notebooks/06_measuring_distinguishability.ipynb.
    """
    names = STAND_INS if stand_ins is None else stand_ins
    configs = standin_configs(cfg, n_pretrain_seeds, archs=[TINY_MODELS[m].arch for m in names])
    corpus = standin_configs(cfg, n_pretrain_seeds, source=data.CORPUS_SOURCE, archs=("llama",))
    return [
        (configs, data.load_persona(cfg.persona_source, behaviors or measured_behaviors(cfg))),
        (corpus, data.load_persona(data.CORPUS_SOURCE)),
    ]


def _pretrain_settings(cfg: ExperimentConfig) -> dict[str, Any] | None:
    if cfg.model_name not in TINY_MODELS or cfg.requires_gpu:
        return None
    return dict(
        arch=cfg.model_arch,
        profile=cfg.profile,
        steps=cfg.pretrain_steps,
        seed=cfg.pretrain_seed,
        source=models._source(cfg),
    )


def _features_job(job: tuple[ExperimentConfig, Mapping]) -> None:
    """One stand-in made ready in a worker process: pre-trained (if it is not cached yet), then
    its features of every statement computed and cached."""
    cfg, persona = job
    model, tokenizer = load_model_and_tokenizer(cfg, "cpu")
    embeddings.persona_features(model, tokenizer, persona, profile=cfg.profile)


def _ready(cfg: ExperimentConfig, persona: Mapping) -> bool:
    settings = _pretrain_settings(cfg)
    if settings is None or not (models.tiny_model_dir(**settings) / "pretrain.json").exists():
        return False
    model, _ = load_model_and_tokenizer(cfg, "cpu")
    return embeddings.features_cached(model, persona, profile=cfg.profile)


def prepare_standins(
    groups: Sequence[tuple[Sequence[ExperimentConfig], Mapping]], processes: int | None = None
) -> int:
    """Make every tiny stand-in of ``groups`` (``[(configs, persona), ...]``) ready: pre-trained
    and its features of ``persona`` cached, one job per stand-in, all in one dispatch to
    ``processes`` workers (default :func:`~dpo_utils.runtime.worker_processes`).

    Returns how many were not ready. With one worker, or one stand-in to do, nothing is computed
    here: the caller's own loads compute what is missing, in its process. Hub models (a GPU
    profile) are left to the caller. A warm cache starts no worker.

    Used in: notebooks/06_measuring_distinguishability.ipynb.
    """
    jobs = _pending(groups)
    processes = processes or worker_processes(on_gpu=False)
    if processes > 1 and len(jobs) > 1:
        process_map(_features_job, jobs, processes)
    return len(jobs)


def _pending(groups) -> list[tuple[ExperimentConfig, Mapping]]:
    """The stand-ins of ``groups`` not ready yet, each once, as ``(config, persona)`` jobs."""
    jobs: list[tuple[ExperimentConfig, Mapping]] = []
    for configs, persona in groups:
        for cfg in dict.fromkeys(configs):  # a stand-in named twice is one job
            if _pretrain_settings(cfg) and not _ready(cfg, persona):
                jobs.append((cfg, persona))
    return jobs


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m dpo_utils.measuring_setup [--profile P]``: make chapter 06's stand-ins (its
    default parameters) ready; on a profile without tiny stand-ins, say so and do nothing.

    Used by: ``python -m dpo_utils.measuring_setup`` (``make book``).
    """
    parser = argparse.ArgumentParser(
        prog="python -m dpo_utils.measuring_setup", description=main.__doc__
    )
    parser.add_argument("--profile", default=profile_from_env(), choices=list(PROFILES))
    args = parser.parse_args(argv)
    # make book stops this job with SIGTERM once jupyter-book returns (or on Ctrl-C)
    exit_on_sigterm("stopped (SIGTERM): jupyter-book returned, or Ctrl-C")
    cfg = get_config(args.profile)
    if _pretrain_settings(cfg) is None:  # a hub model: nothing of chapter 06's to pre-train
        print(f"profile {args.profile!r} has no tiny stand-ins to prepare; nothing to do.")
        return 0
    start = time.perf_counter()
    # one process with one torch thread, as a worker: the same numbers, and the other core is
    # left to the chapters that execute meanwhile (two workers here would crowd out their
    # multi-threaded steps); chapter 06's own workers take the list from the front, so this
    # job takes it from the back
    torch.set_num_threads(1)
    jobs = _pending(chapter_groups(cfg))
    for job in reversed(jobs):
        _features_job(job)
    seconds = time.perf_counter() - start
    print(f"chapter 06's stand-ins: {len(jobs)} made ready in {seconds:.0f} s.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
