"""Chapter-level experiments of the LLM part (chapters 08-11): each returns a tidy table.

Every trained model comes from :func:`dpo_utils.run_cache.load_or_train`, so the chapters share
their runs: chapter 08 trains one model per behaviour and mode, chapter 09 compares its joint runs
with those solo runs, chapter 10 starts flipped-label training from chapter 08's aligned models,
and chapter 11 measures their features. Nothing here plots.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from . import data, embeddings, feature_experiments, metrics, models
from .config import ExperimentConfig, get_config
from .probes import CHAPTER_PROBE_TRAIN, chapter_probe_every
from .results import config_hash, load_or_run
from .run_cache import (
    load_job,
    prefill,
    run_dir,
)
from .tables import metric_rows
from .training import load_trained

__all__ = [
    "PROBE_TRAIN",
    "probe_every",
    "persona_rows",
    "base_features",
    "behavior_properties",
    "per_behavior_curves",
    "loss_drops",
    "pair_table",
    "misalignment_curves",
    "reference_floor",
    "load_or_train_path",
    "trained_features",
    "geometry_table",
    "projection_table",
]

#: train pairs probed per behaviour in chapters 08-11 (plus every test pair), and the probe
#: interval of a profile (:func:`probe_every`): defined with the run key, so the command line
#: fills the same folders
PROBE_TRAIN = CHAPTER_PROBE_TRAIN
probe_every = chapter_probe_every


def persona_rows(
    cfg: ExperimentConfig, behaviors: Iterable | None = None
) -> dict[str, list[dict]]:
    """The profile's persona statements per behaviour (all of them when ``behaviors`` is None or
    empty).

    Used in: notebooks/07_last_layer_dpo.ipynb, notebooks/09_prioritisation_llm.ipynb,
    notebooks/10_misalignment_llm.ipynb, notebooks/11_embedding_geometry.ipynb,
    notebooks/12_faq_rewards_go_down.ipynb.
    """
    source = cfg.persona_source  # data accepts "corpus" (the project's corpus) itself
    chosen = list(behaviors) if behaviors else (list(cfg.behaviors) or None)
    return data.load_persona(source, chosen)


def base_features(
    cfg: ExperimentConfig, persona: dict, device: str = "cpu"
) -> embeddings.FeatureSet:
    """Last-token features of the profile's (un-aligned) model for every statement, cached on disk.

    Used in: notebooks/09_prioritisation_llm.ipynb, notebooks/10_misalignment_llm.ipynb,
    notebooks/11_embedding_geometry.ipynb.
    """
    model, tokenizer = models.load_model_and_tokenizer(cfg, device)
    return embeddings.persona_features(model.eval(), tokenizer, persona, profile=cfg.profile)


def behavior_properties(feature_set: embeddings.FeatureSet) -> pd.DataFrame:
    """behavior, distinguishability, snr, probe_accuracy on the "final" features, most
    distinguishable first.

    Used in: notebooks/09_prioritisation_llm.ipynb.
    """
    table = metrics.properties_table(feature_set.groups("final"), probe=True)
    return table.sort_values("distinguishability", ascending=False, ignore_index=True)


def per_behavior_curves(
    cfg: ExperimentConfig,
    behaviors: Sequence[str],
    modes: Sequence[str] = ("full", "lora"),
    probe_train: int | None = PROBE_TRAIN,
    seed: int | None = None,
) -> pd.DataFrame:
    """One DPO run per behaviour and mode (cached); their probe tables stacked (tidy, with
    ``mode``). ``seed`` is the DPO seed (None: the profile's); the stand-in's seed is
    ``cfg.pretrain_seed``.

    Used in: notebooks/08_full_and_lora_dpo.ipynb.
    """
    prefill(
        [
            _job(cfg, [b], mode=mode, probe_train=probe_train, seed=seed)
            for mode in modes
            for b in behaviors
        ],
        then=_features_after,
    )
    tables = []
    for mode in modes:
        for behavior in behaviors:
            run = _run(cfg, [behavior], mode=mode, probe_train=probe_train, seed=seed)
            tables.append(run.probes.assign(mode=mode))
    return pd.concat(tables, ignore_index=True)


def _features_after(job: dict, path: Path) -> None:
    """In a worker, after one behaviour's run: the trained model's features on that behaviour's
    statements, cached exactly as :func:`geometry_table` asks for them (chapters 10 and 11), so
    that those chapters read them instead of extracting them one run at a time in the
    notebook."""
    cfg, (behavior,) = job["cfg"], job["behaviors"]
    trained_features(str(path), persona_rows(cfg, [behavior]), cfg.profile, cfg)


def _job(cfg, behaviors, **kwargs) -> dict:
    """The load_or_train arguments of one chapter run: every chapter's runs share one probe
    setting, so they share the cache."""
    return dict(cfg=cfg, behaviors=list(behaviors), probe_every=probe_every(cfg), **kwargs)


def _run(cfg, behaviors, **kwargs):
    return load_job(_job(cfg, behaviors, **kwargs))


def loss_drops(
    curves: pd.DataFrame, step: int | None = None, by: Sequence[str] = ("mode",)
) -> pd.DataFrame:
    """Loss at step 0 minus loss at ``step`` (default: each run's last step), per ``by``, behaviour
    and split.

    Used in: notebooks/08_full_and_lora_dpo.ipynb, notebooks/09_prioritisation_llm.ipynb.
    """
    loss = metric_rows(curves, "loss")
    keys = [*by, "behavior", "split"]
    rows = []
    for key, g in loss.groupby(keys):
        g = g.set_index("step")["value"]
        at = g.index.max() if step is None else step
        if at not in g.index:
            raise ValueError(
                f"step={at} was not probed for {dict(zip(keys, key, strict=True))}; "
                f"probed steps: {list(g.index)}."
            )
        rows.append(
            {
                **dict(zip(keys, key, strict=True)),
                "step": int(at),
                "loss_start": g.loc[0],
                "loss_end": g.loc[at],
                "drop": g.loc[0] - g.loc[at],
            }
        )
    return pd.DataFrame(rows)


def pair_table(feature_set: embeddings.FeatureSet, properties: pd.DataFrame) -> pd.DataFrame:
    """Every ordered pair (i != j): priority gap on the "final" features (chapter 06), cosine of
    d_i and d_j, both distinguishabilities and the smaller SNR of the two, largest gap first.

    Used in: notebooks/09_prioritisation_llm.ipynb.
    """
    groups = feature_set.groups("final")
    d = {b: torch.sub(*metrics.class_means(x.double(), s)) for b, (x, s) in groups.items()}
    props = properties.set_index("behavior")
    table = feature_experiments.priority_gaps(feature_set, "final")
    table = table[table["behavior_i"] != table["behavior_j"]].copy()
    table["cosine"] = [
        float(torch.nn.functional.cosine_similarity(d[i], d[j], dim=0))
        for i, j in zip(table["behavior_i"], table["behavior_j"], strict=True)
    ]
    for side in ("i", "j"):
        table[f"dist_{side}"] = table[f"behavior_{side}"].map(props["distinguishability"])
    table["min_snr"] = np.minimum(
        table["behavior_i"].map(props["snr"]), table["behavior_j"].map(props["snr"])
    )
    return table.sort_values("gap", ascending=False, ignore_index=True)


def misalignment_curves(
    cfg: ExperimentConfig,
    behaviors: Sequence[str],
    *,
    mode: str = "lora",
    steps: int | None = None,
    flip_batch_size: int | None = None,
    probe_train: int | None = PROBE_TRAIN,
    seed: int | None = None,
) -> pd.DataFrame:
    """Flipped-label DPO from the base model and from chapter 08's aligned model (column
    ``start``).

    The aligned model is the run ``load_or_train(cfg, [b], mode=mode)`` of chapter 08 (reused from
    its cache), merged; for the aligned start it is also the reference. Both flipped runs use
    ``flip_batch_size`` and ``steps`` steps (defaults: the profile's batch and step count).

    Used in: notebooks/10_misalignment_llm.ipynb.
    """
    flip_cfg = cfg.replace(dpo_batch_size=flip_batch_size) if flip_batch_size else cfg
    aligned_jobs = [
        _job(cfg, [b], mode=mode, probe_train=probe_train, seed=seed) for b in behaviors
    ]
    prefill(aligned_jobs)  # chapter 08's runs: cached when chapter 08 ran first
    prefill(
        [
            _job(
                flip_cfg,
                [b],
                mode=mode,
                flip=True,
                start=None if start is None else str(run_dir(**start)),
                max_steps=steps,
                probe_train=probe_train,
                seed=seed,
            )
            for b, aligned in zip(behaviors, aligned_jobs, strict=True)
            for start in (None, aligned)
        ]
    )
    tables = []
    for behavior in behaviors:
        aligned = _run(cfg, [behavior], mode=mode, probe_train=probe_train, seed=seed)
        for start, path in (("base", None), ("aligned", aligned.probes.attrs["path"])):
            run = _run(
                flip_cfg,
                [behavior],
                mode=mode,
                flip=True,
                start=path,
                max_steps=steps,
                probe_train=probe_train,
                seed=seed,
            )
            tables.append(run.probes.assign(start=start))
    return pd.concat(tables, ignore_index=True)


def reference_floor(curves: pd.DataFrame, beta: float) -> pd.DataFrame:
    """-log sigma(beta |m0|): the flipped loss of a policy that has only *erased* its preference
    (own margin 0) against a reference whose mean log-ratio margin is m0, per start and behaviour.

    Used in: notebooks/10_misalignment_llm.ipynb.
    """
    ref = curves[
        (curves["step"] == 0)
        & (curves["split"] == "train")
        & curves["metric"].isin(["ref_logp_chosen", "ref_logp_rejected"])
    ]
    wide = ref.pivot_table(index=["start", "behavior"], columns="metric", values="value")
    m0 = (wide["ref_logp_chosen"] - wide["ref_logp_rejected"]).abs()
    floor = -torch.nn.functional.logsigmoid(torch.tensor(beta * m0.to_numpy()))
    return pd.DataFrame({"m0_abs": m0, "erased_loss": floor.numpy()}).reset_index()


def load_or_train_path(
    cfg: ExperimentConfig,
    behavior: str,
    mode: str,
    probe_train: int | None = PROBE_TRAIN,
    seed: int | None = None,
) -> str:
    """The folder of chapter 08's run for one behaviour and mode (trained now if it is missing).

    Used in: notebooks/11_embedding_geometry.ipynb.
    """
    return _run(cfg, [behavior], mode=mode, probe_train=probe_train, seed=seed).probes.attrs[
        "path"
    ]


def trained_features(
    run_path: str, persona: dict, profile: str, cfg: ExperimentConfig | None = None
) -> embeddings.FeatureSet:
    """Features of a saved run's merged model (cached, keyed by the run's folder), extracted where
    and in the dtype the "before" features are (:func:`base_features`): on the GPU when there is
    one, in the profile's dtype there (bf16 at 7B), fp32 on the CPU; so before and after differ by
    training only, never by precision. ``cfg`` defaults to the profile's.

    Used in: notebooks/11_embedding_geometry.ipynb.
    """
    cfg = cfg or get_config(profile)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    run = load_trained(run_path, device=device)
    run.model.to(models.load_dtype(cfg, device))
    return embeddings.persona_features(
        run.model.eval(),
        run.tokenizer,
        persona,
        profile=profile,
        model_key=f"run:{run_path.rstrip('/').split('/')[-1]}",
    )


def geometry_table(
    cfg: ExperimentConfig,
    persona: dict,
    base: embeddings.FeatureSet,
    modes: Sequence[str] = ("full", "lora"),
    probe_train: int | None = PROBE_TRAIN,
    seed: int | None = None,
) -> pd.DataFrame:
    """Per behaviour and mode: distinguishability, signal-to-noise ratio
    (metrics.properties_table), linear-classifier accuracy (5-fold) and mean feature norm of the
    behaviour's statements before (``base``) and after its own chapter 08 DPO run; ``dist_ratio``
    and ``snr_ratio`` after/before. Cached (``results.load_or_run``) by the runs' folders, the
    statements and the behaviours the base features were extracted with.

    Used in: notebooks/10_misalignment_llm.ipynb, notebooks/11_embedding_geometry.ipynb.
    """
    paths = {}  # (mode, behaviour) -> the chapter 08 run's folder
    for mode in modes:
        for behavior in persona:
            run = _run(cfg, [behavior], mode=mode, probe_train=probe_train, seed=seed)
            paths[(mode, behavior)] = run.probes.attrs["path"]

    def measure() -> pd.DataFrame:
        before = {  # the base model's properties: one per behaviour, shared by the modes
            b: metrics.properties_table({b: base.select(b, "final")}).iloc[0] for b in persona
        }
        rows = []
        for (mode, behavior), path in paths.items():
            after = trained_features(path, {behavior: persona[behavior]}, cfg.profile, cfg)
            after_props = metrics.properties_table({behavior: after.select(behavior, "final")})
            row = dict(mode=mode, behavior=behavior)
            for stage, props in (("before", before[behavior]), ("after", after_props.iloc[0])):
                row[f"dist_{stage}"] = float(props["distinguishability"])
                row[f"snr_{stage}"] = float(props["snr"])
                row[f"probe_{stage}"] = float(props["probe_accuracy"])
                row[f"norm_{stage}"] = float(props["mean_norm"])
            rows.append(row)
        return pd.DataFrame(rows)

    # cached: the 5-fold classifiers are most of the cost; the runs' folders name their settings
    key = dict(
        cfg=cfg.to_dict(),
        runs={f"{m}/{b}": Path(p).name for (m, b), p in paths.items()},
        persona=config_hash({"persona": persona}),
        # which behaviours' statements the base features were extracted with (a row's features
        # depend on its batch by float rounding)
        base=list(dict.fromkeys(base.behaviors)),
        version=2,
    )
    table = load_or_run("geometry", key, measure, profile=cfg.profile)
    return table.assign(
        dist_ratio=table["dist_after"] / table["dist_before"],
        snr_ratio=table["snr_after"] / table["snr_before"],
        probe_change=table["probe_after"] - table["probe_before"],
    )


def projection_table(
    features: dict[str, tuple[torch.Tensor, torch.Tensor]], method: str = "pca", seed: int = 1234
) -> pd.DataFrame:
    """2-D projection of each stage's features ({stage: (features, signs)}), fitted per stage.

    ``method`` "pca" (torch.pca_lowrank; axis 1 oriented so the Yes class mean is positive) or
    "umap" (umap-learn, ``random_state=seed``, as the authors' plots). Columns: stage, x, y,
    answer.

    Used in: notebooks/11_embedding_geometry.ipynb.
    """
    if method not in ("pca", "umap"):
        raise ValueError(f"method={method!r} is not allowed; choose 'pca' or 'umap'.")
    tables = []
    for stage, (x, signs) in features.items():
        x = x.double()
        if method == "pca":
            centred = x - x.mean(0)
            _, _, v = torch.pca_lowrank(centred, q=2, center=False)
            xy = (centred @ v[:, :2]).numpy()
            if xy[signs.numpy() > 0, 0].mean() < 0:
                xy[:, 0] = -xy[:, 0]
        else:
            import umap

            xy = umap.UMAP(random_state=seed).fit_transform(x.numpy())
        tables.append(
            pd.DataFrame(
                dict(
                    stage=stage,
                    x=xy[:, 0],
                    y=xy[:, 1],
                    answer=np.where(signs.numpy() > 0, "Yes", "No"),
                )
            )
        )
    return pd.concat(tables, ignore_index=True)
