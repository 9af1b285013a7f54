"""Chapter 06: distinguishability and its companions measured on the stand-ins, over pre-training
seeds.

For each stand-in (the tiny Llama of :data:`dpo_utils.measuring_setup.STAND_INS`, or also the tiny
Mistral, each pre-trained with several seeds on the text of :mod:`dpo_utils.pretraining`; made
ready by :mod:`dpo_utils.measuring_setup`) and each behaviour:
distinguishability, concentration, covariance trace, mean norm, signal-to-noise ratio against
random labels, the model's own Yes/No accuracy, the token-length gap between Yes- and No-statements
and a length-matched distinguishability (Yes and No compared within length bins). Then: rank
stability across seeds, the diversity of the behaviours' directions, and the verdicts with
thresholds fixed before the first run (:data:`THRESHOLDS`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from . import embeddings
from .config import ExperimentConfig
from .embeddings import FeatureSet, persona_features
from .measuring_setup import prepare_standins
from .metrics import class_means, properties_table
from .models import load_model_and_tokenizer
from .results import config_hash, load_or_run
from .runtime import worker_processes
from .tables import rank_correlation

__all__ = [
    "Thresholds",
    "THRESHOLDS",
    "length_matched_distinguishability",
    "direction_cosines",
    "measure_standins",
    "rank_stability",
    "direction_summary",
    "knob_table",
    "verdicts",
]


@dataclass(frozen=True)
class Thresholds:
    """Chapter 06's verdict thresholds: each is the bar a claim must clear; the reasons are beside
    them.

    Used by: dpo_utils.measuring_experiments.
    """

    # real behaviours differ: largest / smallest distinguishability per model (prototype at 900
    # steps: x3.5-6), in at least 5 of the 6 models (2 archs x 3 seeds). Written for six models;
    # since the CPU build measures three (measuring_setup.STAND_INS), it is applied as the same
    # share, 5/6 of the models rounded up (3 of 3): a count of 5 cannot be met by three models
    spread_ratio: float = 2.0
    spread_share: float = 5 / 6
    # the ranking is a property of the data, not of one pre-training draw: mean pairwise Spearman
    # between seeds (prototype, 2 seeds: 0.94), in every architecture measured
    seed_rho: float = 0.7
    # a measurement, not noise: median (over seeds) SNR above 2 for at least half the behaviours
    snr: float = 2.0
    snr_share: float = 0.5
    # the length confound does not explain it away: the median behaviour keeps at least half its
    # distinguishability when Yes and No are compared within length bins (prototype: 76-89 %) and
    # the two rank alike (Spearman >= 0.7; prototype 0.84-0.94)
    length_kept: float = 0.5
    length_rho: float = 0.7
    # directions are diverse (the old corpus: cosine >= 0.99): mean pairwise cosine below 0.5
    cosine: float = 0.5
    # corpus knob 1: label words 1 -> 3 at a fixed ambiguous share raise distinguishability by at
    # least x1.5, monotonically, in at least 2 of 3 seeds
    knob1_ratio: float = 1.5
    # corpus knob 2: along the ambiguity knob distinguishability stays within x1.5 (max / min),
    # in at least 2 of 3 seeds; the null behaviour's SNR stays below 2
    knob2_ratio: float = 1.5
    seeds_needed: int = 2


#: Verdict thresholds, written down (and committed) before the first run of chapter 06 on the new
#: stand-ins; the reasons are beside the fields of :class:`Thresholds`.
THRESHOLDS = Thresholds()


def length_matched_distinguishability(
    features: torch.Tensor, signs: torch.Tensor, lengths: torch.Tensor, n_bins: int = 5
) -> float:
    """||mean over length bins of (mu_Yes - mu_No) within the bin||, bins weighted by their smaller
    class: the part of distinguishability that a Yes/No difference in length cannot produce.

    Bins are quantiles of the pooled token lengths; a bin without both classes is skipped.

    Used by: dpo_utils.measuring_experiments.
    """
    lengths = lengths.double()
    edges = torch.quantile(lengths, torch.linspace(0, 1, n_bins + 1, dtype=torch.float64))
    bins = torch.bucketize(lengths, edges[1:-1], right=True)
    total, weight = torch.zeros(features.shape[1], dtype=torch.float64), 0.0
    for b in bins.unique():
        inside = bins == b
        n_yes, n_no = int((signs[inside] > 0).sum()), int((signs[inside] < 0).sum())
        if min(n_yes, n_no) == 0:
            continue
        mu_yes, mu_no = class_means(features[inside].double(), signs[inside])
        total += min(n_yes, n_no) * (mu_yes - mu_no)
        weight += min(n_yes, n_no)
    if weight == 0:
        raise ValueError("no length bin holds both classes; use fewer bins.")
    return float((total / weight).norm())


def direction_cosines(feature_set: FeatureSet, variant: str = "final") -> pd.DataFrame:
    """Cosine between every two behaviours' difference vectors d = mu_Yes - mu_No (tidy).

    Used by: dpo_utils.measuring_experiments.
    """
    groups = feature_set.groups(variant)
    names = list(groups)
    d = torch.stack([torch.sub(*class_means(f, s)) for f, s in groups.values()])
    unit = d / d.norm(dim=1, keepdim=True)
    cos = unit @ unit.T
    return pd.DataFrame(
        [
            dict(behavior_i=a, behavior_j=b, cosine=float(cos[i, j]))
            for (i, a), (j, b) in itertools.combinations(enumerate(names), 2)
        ]
    )


def _token_lengths(tokenizer, persona: Mapping[str, Sequence[Mapping]]) -> torch.Tensor:
    rows = [row for rows in persona.values() for row in rows]
    return torch.tensor(embeddings.token_lengths(tokenizer, embeddings.prompt_texts(rows)))


def _measure_one(feature_set: FeatureSet, lengths: torch.Tensor) -> pd.DataFrame:
    accuracy = feature_set.answer_accuracy()
    tables = []
    names = np.array(feature_set.behaviors)
    for variant in feature_set.features:
        groups = feature_set.groups(variant)
        table = properties_table(groups, probe=False)
        matched, gaps = [], []
        for name, (features, signs) in groups.items():
            own = torch.from_numpy(names == name)
            length = lengths[own]
            matched.append(length_matched_distinguishability(features, signs, length))
            gaps.append(
                float(length[signs > 0].double().mean() - length[signs < 0].double().mean())
            )
        table["length_matched"] = matched
        table["length_gap"] = gaps
        table["lm_accuracy"] = table["behavior"].map(accuracy)
        table.insert(0, "variant", variant)
        tables.append(table)
    return pd.concat(tables, ignore_index=True)


def measure_standins(
    configs: Sequence[ExperimentConfig],
    persona: Mapping[str, Sequence[Mapping]],
    device: str = "cpu",
) -> tuple[pd.DataFrame, dict]:
    """The properties table of every behaviour, both variants, for each config's model.

    Returns ``(table, feature_sets)``: columns model, arch, pretrain_seed, variant, behavior, n,
    distinguishability, concentration, covariance_trace, mean_norm, snr, length_matched,
    length_gap, lm_accuracy; and ``{(model, pretrain_seed): FeatureSet}``. Tables are cached
    through ``results.load_or_run`` keyed by the model's weights folder and the statements.

    Used in: notebooks/06_measuring_distinguishability.ipynb.
    """
    tables, feature_sets = [], {}
    fingerprint = config_hash({"persona": persona})
    prepare_standins([(configs, persona)], worker_processes(on_gpu=device != "cpu"))
    for cfg in configs:
        model, tokenizer = load_model_and_tokenizer(cfg, device)
        fs = persona_features(model, tokenizer, persona, profile=cfg.profile)
        feature_sets[(cfg.model_name, cfg.pretrain_seed)] = fs
        lengths = _token_lengths(tokenizer, persona)
        key = dict(weights=getattr(model, "name_or_path", ""), persona=fingerprint, version=1)

        def measure(fs: FeatureSet = fs, lengths: torch.Tensor = lengths) -> pd.DataFrame:
            return _measure_one(fs, lengths)

        table = load_or_run("standin-properties", key, measure, profile=cfg.profile)
        table.insert(0, "pretrain_seed", cfg.pretrain_seed)
        table.insert(0, "arch", cfg.model_arch)
        table.insert(0, "model", cfg.model_name)
        tables.append(table)
        del model
    return pd.concat(tables, ignore_index=True), feature_sets


def _span(values: pd.Series, spec: str) -> str:
    """``low-high`` of ``values`` in format ``spec``, or the one value when they are all equal."""
    low, high = format(values.min(), spec), format(values.max(), spec)
    return low if low == high else f"{low}-{high}"


def rank_stability(table: pd.DataFrame, value: str = "distinguishability") -> pd.DataFrame:
    """Spearman rho of the behaviours' ``value`` between every two pre-training seeds, per model
    and variant (tidy: model, variant, seed_a, seed_b, rho).

    Used in: notebooks/06_measuring_distinguishability.ipynb.
    """
    rows = []
    for (model, variant), part in table.groupby(["model", "variant"], sort=False):
        wide = part.pivot(index="behavior", columns="pretrain_seed", values=value)
        for a, b in itertools.combinations(wide.columns, 2):
            rho = rank_correlation(wide[a], wide[b])
            rows.append(dict(model=model, variant=variant, seed_a=a, seed_b=b, rho=rho))
    return pd.DataFrame(rows, columns=["model", "variant", "seed_a", "seed_b", "rho"])


def direction_summary(feature_sets: Mapping, variant: str = "final") -> pd.DataFrame:
    """Per model and seed: mean, min and max cosine between behaviours' difference vectors.

    Used in: notebooks/06_measuring_distinguishability.ipynb.
    """
    rows = []
    for (model, seed), fs in feature_sets.items():
        cos = direction_cosines(fs, variant)["cosine"]
        rows.append(
            dict(model=model, pretrain_seed=seed, mean=cos.mean(), min=cos.min(), max=cos.max())
        )
    return pd.DataFrame(rows)


def knob_table(table: pd.DataFrame, design: Sequence[Mapping]) -> pd.DataFrame:
    """The corpus measurements (final variant) joined with the design's knobs, one row per
    behaviour and seed.

    Used in: notebooks/06_measuring_distinguishability.ipynb.
    """
    final = table[table["variant"] == "final"]
    return final.merge(pd.DataFrame(design), on="behavior")


def _length_rho(part: pd.DataFrame) -> float:
    return rank_correlation(part["distinguishability"], part["length_matched"])


def _holds(ok: bool) -> str:
    return "holds" if ok else "does not hold"


def _knob_checks(knobs: pd.DataFrame) -> tuple[list[float], list[float], list[float]]:
    """Per seed: knob-1 ratio (monotone or 0), knob-2 max/min ratio, null SNR."""
    ratio1, ratio2, null_snr = [], [], []
    for _, part in knobs.groupby("pretrain_seed"):
        first = part[part["ambiguous_share"] == 0].sort_values("label_words")
        dist = first["distinguishability"].to_numpy()
        ratio1.append(float(dist[-1] / dist[0]) if np.all(np.diff(dist) > 0) else 0.0)
        second = part[part["knob"].isin(["ambiguity", "reference"])]["distinguishability"]
        ratio2.append(float(second.max() / second.min()))
        null_snr.append(float(part[part["knob"] == "null"]["snr"].max()))
    return ratio1, ratio2, null_snr


def verdicts(
    real: pd.DataFrame,
    stability: pd.DataFrame,
    directions: pd.DataFrame,
    knobs: pd.DataFrame,
    corpus_directions: pd.DataFrame,
    t: Thresholds = THRESHOLDS,
) -> pd.DataFrame:
    """The chapter's verdict table: claim, what was measured, the bar (fixed before the run),
    verdict. ``real`` and ``knobs`` hold final-variant rows.

    Used in: notebooks/06_measuring_distinguishability.ipynb.
    """
    final = real[real["variant"] == "final"]
    per_model = final.groupby(["model", "pretrain_seed"])["distinguishability"]
    spread = (per_model.max() / per_model.min()).to_numpy()
    spread_needed = math.ceil(t.spread_share * len(spread) - 1e-9)
    rho = stability[stability["variant"] == "final"].groupby("model")["rho"].mean()
    snr = final.groupby(["model", "behavior"])["snr"].median()
    snr_share = (snr > t.snr).groupby("model").mean()
    kept = (final["length_matched"] / final["distinguishability"]).groupby(final["model"]).median()
    length_rho = final.groupby(["model", "pretrain_seed"]).apply(_length_rho)
    ratio1, ratio2, null_snr = _knob_checks(knobs)
    n1 = sum(r >= t.knob1_ratio for r in ratio1)
    n2 = sum(r <= t.knob2_ratio for r in ratio2)
    rows = [
        (
            "real behaviours differ in distinguishability",
            f"max/min {spread.min():.1f}-{spread.max():.1f} over {len(spread)} models",
            f">= {t.spread_ratio} in >= {spread_needed} of {len(spread)} models",
            _holds((spread >= t.spread_ratio).sum() >= spread_needed),
        ),
        (
            "their ranking is stable across pre-training seeds",
            ", ".join(f"{m}: rho {r:.2f}" for m, r in rho.items()),
            f"mean pairwise rho >= {t.seed_rho} in every model",
            _holds(bool((rho >= t.seed_rho).all())) if len(rho) else "not measured (one seed)",
        ),
        (
            "the measurement is above random-label noise",
            ", ".join(f"{m}: {s:.0%}" for m, s in snr_share.items()) + " of behaviours",
            f"median SNR > {t.snr} for >= {t.snr_share:.0%} of behaviours",
            _holds(bool((snr_share >= t.snr_share).all())),
        ),
        (
            "statement length does not explain it",
            f"kept {_span(kept, '.0%')} (median behaviour"
            f"{'' if len(kept) == 1 else ', per model'}); rho "
            f"{length_rho.min():.2f}-{length_rho.max():.2f}",
            f"kept >= {t.length_kept:.0%} and rho >= {t.length_rho}",
            _holds(bool((kept >= t.length_kept).all() and (length_rho >= t.length_rho).all())),
        ),
        (
            "real behaviours point in diverse directions",
            f"mean cosine {directions['mean'].min():.2f}-{directions['mean'].max():.2f}",
            f"< {t.cosine}",
            _holds(bool((directions["mean"] < t.cosine).all())),
        ),
        (
            "corpus knob 1 (label words) raises distinguishability",
            "x" + ", x".join(f"{r:.2f}" for r in ratio1) + " (0 = not monotone)",
            f">= x{t.knob1_ratio}, monotone, in >= {t.seeds_needed} seeds",
            _holds(n1 >= t.seeds_needed),
        ),
        (
            "corpus knob 2 (ambiguous share) holds distinguishability roughly fixed",
            "max/min x" + ", x".join(f"{r:.2f}" for r in ratio2),
            f"<= x{t.knob2_ratio} in >= {t.seeds_needed} seeds",
            _holds(n2 >= t.seeds_needed),
        ),
        (
            "the corpus null behaviour shows no signal",
            "SNR " + ", ".join(f"{s:.2f}" for s in null_snr),
            f"< {t.snr} in every seed",
            _holds(all(s < t.snr for s in null_snr)),
        ),
        (
            "corpus behaviours point in diverse directions",
            f"mean cosine {corpus_directions['mean'].min():.2f}-"
            f"{corpus_directions['mean'].max():.2f}",
            f"< {t.cosine}",
            _holds(bool((corpus_directions["mean"] < t.cosine).all())),
        ),
    ]
    return pd.DataFrame(rows, columns=["claim", "measured", "threshold", "verdict"])
