"""The LLM chapters' evidence over seeds (chapters 08-12): which behaviours to feature, properties
and loss drops per stand-in seed, the length confound, the pooled priority projection and its joint
run, and the per-metric comparison of the two misalignment starts. Each function returns a tidy
table and plots nothing; the seed loops go through :func:`dpo_utils.verdicts.over_seeds`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from . import data, embeddings, hh_rlhf, metrics, models, probes, scale
from .config import ExperimentConfig
from .llm_experiments import (
    base_features,
    loss_drops,
    persona_rows,
)
from .measuring_experiments import length_matched_distinguishability
from .tables import rank_correlation
from .training import load_trained, save_trained, train_dpo
from .verdicts import VERDICTS

__all__ = [
    "AUTHORS_PAIR",
    "AUTHORS_MISALIGNED",
    "featured_behaviors",
    "behaviors_among",
    "misalignment_behaviors",
    "authors_pair",
    "length_gaps",
    "seed_properties",
    "seed_correlations",
    "priority_projections",
    "misalignment_summary",
    "margin_reading",
    "spanning_behaviors",
    "hh_misalignment_curves",
]

#: the pair the authors' released multi-behaviour scripts train together (their numbering)
AUTHORS_PAIR = (123, 45)
#: the behaviour of the authors' misalignment plot (their numbering)
AUTHORS_MISALIGNED = 84


def _source(cfg: ExperimentConfig):
    return data.corpus_dir() if cfg.persona_source == "corpus" else cfg.persona_source


def featured_behaviors(cfg: ExperimentConfig) -> list[str]:
    """The behaviours the chapters feature, by name: ``cfg.behaviors`` when it names behaviours of
    the profile's data; the authors' eight (``data.AUTHORS_BEHAVIORS``, also the CPU profile's
    default) where the data holds them; else every behaviour of the data (the controlled corpus).
    A selection other than the authors' eight that the data lacks is an error.

    Used in: notebooks/07_last_layer_dpo.ipynb, notebooks/08_full_and_lora_dpo.ipynb,
    notebooks/09_prioritisation_llm.ipynb, notebooks/10_misalignment_llm.ipynb,
    notebooks/11_embedding_geometry.ipynb.
    """
    available = data.available_behaviors(_source(cfg))
    authors = tuple(getattr(data, "AUTHORS_BEHAVIORS", ()))
    wanted = tuple(cfg.behaviors)
    if wanted and wanted != authors:
        return data.resolve_behaviors(list(wanted), available)
    if authors:
        try:
            return data.resolve_behaviors(list(authors), available)
        except (ValueError, KeyError):
            pass
    return list(available)


def behaviors_among(cfg: ExperimentConfig, selection, among: Sequence[str]) -> list[str]:
    """``selection`` (names and/or the authors' numbers) as names, numbers resolved once against
    the whole of the profile's data (not against ``among``, whose positions are not the authors'
    numbering), then checked to be in ``among`` (e.g. a chapter's distinguishability ranking).

    Used in: notebooks/09_prioritisation_llm.ipynb.
    """
    names = data.resolve_behaviors(list(selection), data.available_behaviors(_source(cfg)))
    missing = [b for b in names if b not in among]
    if missing:
        raise data.PersonaDataError(
            f"behaviour(s) {missing} (from {list(selection)!r}) are not among the measured "
            f"ones {list(among)}; choose from those, or add them to the profile's behaviors."
        )
    return names


def misalignment_behaviors(
    cfg: ExperimentConfig,
    ranking: Sequence[str],
    behaviors: Sequence | None = None,
    n: int | None = None,
) -> tuple[list[str], str | None]:
    """Chapter 10's selection, by name: ``behaviors`` if given (names or the authors' numbers),
    else ``n`` (default 4) behaviours spanning ``ranking`` that include the authors' behaviour 84
    where the data has it. Returns (chosen, the name of 84 if chosen, else None).

    Used in: notebooks/10_misalignment_llm.ipynb.
    """
    try:
        authors = behaviors_among(cfg, [AUTHORS_MISALIGNED], ranking)[0]
    except (ValueError, KeyError):
        authors = None  # the controlled corpus (or a selection) without behaviour 84
    if behaviors:
        chosen = behaviors_among(cfg, behaviors, ranking)
    else:
        include = [authors] if authors else []
        chosen = spanning_behaviors(ranking, 4 if n is None else n, include=include)
    return chosen, (authors if authors in chosen else None)


def authors_pair(cfg: ExperimentConfig) -> list[str] | None:
    """Behaviours 123 and 45 (the authors' pair) by name, or None if the data lacks them.

    Used in: notebooks/09_prioritisation_llm.ipynb.
    """
    try:
        return data.resolve_behaviors(list(AUTHORS_PAIR), data.available_behaviors(_source(cfg)))
    except (ValueError, KeyError):
        return None


def _prompt_lengths(persona: dict, tokenizer) -> dict[str, torch.Tensor]:
    """Token length of every statement's prompt, per behaviour, in the persona's row order."""
    return {
        name: torch.tensor(embeddings.token_lengths(tokenizer, embeddings.prompt_texts(rows)))
        for name, rows in persona.items()
    }


def length_gaps(
    persona: dict, tokenizer, lengths: dict[str, torch.Tensor] | None = None
) -> pd.DataFrame:
    """Per behaviour: mean token length of the Yes-statements' prompts minus the No-statements'
    (the length confound of distinguishability: the last-token feature sees the length).
    ``lengths``: the prompts' token lengths if the caller has them (:func:`_prompt_lengths`).

    Used by: dpo_utils.llm_evidence.
    """
    rows = []
    lengths_of = _prompt_lengths(persona, tokenizer) if lengths is None else lengths
    for name, tokens in lengths_of.items():
        yes = torch.tensor([r["answer_matching_behavior"] == " Yes" for r in persona[name]])
        both = bool(yes.any()) and bool((~yes).any())
        gap = tokens[yes].double().mean() - tokens[~yes].double().mean() if both else 0.0
        rows.append(dict(behavior=name, length_gap=float(gap)))
    return pd.DataFrame(rows)


def seed_properties(cfg: ExperimentConfig, behaviors: Sequence[str], device: str = "cpu"):
    """Properties (metrics.properties_table) of the behaviours on the stand-in of
    ``cfg.pretrain_seed``, with the length gap and the length-matched distinguishability
    (chapter 06's: the part a Yes/No difference in prompt length cannot produce); most
    distinguishable first.

    Used in: notebooks/08_full_and_lora_dpo.ipynb, notebooks/10_misalignment_llm.ipynb.
    """
    persona = persona_rows(cfg, behaviors)
    feature_set = base_features(cfg, persona, device)
    groups = feature_set.groups("final")
    table = metrics.properties_table(groups, probe=True)
    tokenizer = models.load_model_and_tokenizer(cfg, "cpu")[1]
    lengths = _prompt_lengths(persona, tokenizer)
    matched = {
        name: length_matched_distinguishability(features, signs, lengths[name])
        for name, (features, signs) in groups.items()
    }
    table = table.merge(length_gaps(persona, tokenizer, lengths), on="behavior")
    table["length_matched"] = table["behavior"].map(matched)
    return table.sort_values("distinguishability", ascending=False, ignore_index=True)


def seed_correlations(curves: pd.DataFrame, props: pd.DataFrame, step: int | None = None):
    """Per seed pair, mode and split: Spearman rho of the loss drop with distinguishability, with
    the length gap and with the length-matched distinguishability, and the drops of the most and
    least distinguishable behaviour.

    ``curves`` and ``props`` carry ``pretrain_seed`` (and ``curves`` ``dpo_seed``) columns.

    Used in: notebooks/08_full_and_lora_dpo.ipynb.
    """
    seeds = ["pretrain_seed", "dpo_seed"]
    drops = loss_drops(curves, step=step, by=[*seeds, "mode"])
    merged = drops.merge(
        props[["pretrain_seed", "behavior", "distinguishability", "length_gap", "length_matched"]],
        on=["pretrain_seed", "behavior"],
    )
    rows = []
    for key, g in merged.groupby([*seeds, "mode", "split"]):
        g = g.sort_values("distinguishability", ascending=False)
        rows.append(
            dict(
                zip([*seeds, "mode", "split"], key, strict=True),
                n=len(g),
                rho=rank_correlation(g["distinguishability"], g["drop"]),
                rho_length=rank_correlation(g["length_gap"], g["drop"]),
                rho_matched=rank_correlation(g["length_matched"], g["drop"]),
                drop_top=float(g["drop"].iloc[0]),
                drop_bottom=float(g["drop"].iloc[-1]),
            )
        )
    return pd.DataFrame(rows)


def priority_projections(feature_set: embeddings.FeatureSet, behaviors: Sequence[str]):
    """Per behaviour: p_k = <b_bar, d_k> / ||b_bar|| with b_bar the mean of the behaviours' d_k
    (the pooled direction of a joint run), the distinguishability ||d_k||, their ratio (the cosine
    of d_k with b_bar) and ``predicted_backwards`` (p_k < 0: the pooled step raises its loss at
    first).

    Used in: notebooks/09_prioritisation_llm.ipynb.
    """
    groups = feature_set.groups("final")
    d = torch.stack(
        [torch.sub(*metrics.class_means(*map(torch.Tensor.double, groups[b]))) for b in behaviors]
    )
    pooled = d.mean(0)
    p = d @ pooled / pooled.norm()
    dist = d.norm(dim=1)
    return pd.DataFrame(
        dict(
            behavior=list(behaviors),
            projection=p.numpy(),
            distinguishability=dist.numpy(),
            cosine_pooled=(p / dist).numpy(),
            predicted_backwards=(p < 0).numpy(),
        )
    )


def misalignment_summary(curves: pd.DataFrame, split: str = "train") -> pd.DataFrame:
    """Per seed pair and behaviour, at the last step of the flipped runs, for each start: the
    flipped loss, the policy's own log-prob margin (logp chosen - logp rejected, chosen = the
    flipped answer) and its change from step 0, and output accuracy; plus, per metric, whether the
    aligned start is ahead (lower loss, larger margin change, larger output accuracy).

    Used in: notebooks/10_misalignment_llm.ipynb.
    """
    part = curves[curves["split"] == split]
    keys = [c for c in ("pretrain_seed", "dpo_seed") if c in part] + ["behavior", "start"]
    wide = part.pivot_table(index=[*keys, "step"], columns="metric", values="value").reset_index()
    wide["own_margin"] = wide["logp_chosen"] - wide["logp_rejected"]
    first = wide[wide["step"] == 0].set_index(keys)
    last = wide.loc[wide.groupby(keys)["step"].idxmax()].set_index(keys)
    out = pd.DataFrame(
        dict(
            step=last["step"],
            loss=last["loss"],
            own_margin_start=first["own_margin"],
            own_margin=last["own_margin"],
            own_margin_change=last["own_margin"] - first["own_margin"],
            output_accuracy_start=first["output_accuracy"],
            output_accuracy=last["output_accuracy"],
        )
    ).reset_index()
    by = [k for k in keys if k != "start"]
    both = out.pivot_table(index=by, columns="start", values=list(out.columns[len(keys) :]))
    result = pd.DataFrame(index=both.index)
    for metric in ("loss", "own_margin", "own_margin_change", "output_accuracy"):
        for start in ("base", "aligned"):
            result[f"{metric}_{start}"] = both[(metric, start)]
    result["own_margin_start_aligned"] = both[("own_margin_start", "aligned")]
    result["own_margin_start_base"] = both[("own_margin_start", "base")]
    result["aligned_lower_loss"] = result["loss_aligned"] < result["loss_base"]
    result["aligned_larger_margin_change"] = (
        result["own_margin_change_aligned"] > result["own_margin_change_base"]
    )
    result["aligned_higher_accuracy"] = (
        result["output_accuracy_aligned"] > result["output_accuracy_base"]
    )
    return result.reset_index()


def hh_misalignment_curves(
    cfg: ExperimentConfig,
    *,
    steps: int = 5,
    aligned_steps: int | None = None,
    n_train: int | None = None,
    n_probe: int = 256,
    mode: str = "lora",
    pairs: tuple[list[dict], list[dict]] | None = None,
    device: str = "cpu",
) -> pd.DataFrame:
    """Flipped-label DPO on HH-RLHF from the base model and from a model aligned on
    HH-RLHF.

    The aligned model is ``aligned_steps`` (default: the profile's) steps of ordinary DPO on the
    train pairs, merged; the flipped runs last ``steps`` steps (the authors' ``--early`` runs: 5)
    and are probed on ``n_probe`` flipped test pairs. ``pairs`` = (train, test) replaces the hub
    download (tests). Column ``start`` is "base" or "aligned"; metric "margin" is the log-prob
    difference's beta-scaled reward margin. Rows that cannot be a pair are skipped and counted
    (``attrs["hh_rows"]``); the probe set is encoded, and a prompt the profile cannot fit rejected,
    before any training. Meant for GPU profiles: HH-RLHF transcripts are far longer than the CPU
    profile's.

    Used in: notebooks/10_misalignment_llm.ipynb.
    """
    import tempfile

    loaded = (
        [hh_rlhf.HHPairs(list(p)) for p in pairs]
        if pairs
        else [hh_rlhf.load_hh_rlhf(s, limit=n) for s, n in (("train", n_train), ("test", n_probe))]
    )
    train_pairs, test_pairs = (part.pairs for part in loaded)
    tag = [dict(p, behavior="hh-rlhf") for p in train_pairs]
    flipped = [dict(p, chosen=p["rejected"], rejected=p["chosen"]) for p in tag]
    probe = {
        "test": [
            dict(p, behavior="hh-rlhf", chosen=p["rejected"], rejected=p["chosen"])
            for p in test_pairs[:n_probe]
        ]
    }
    tables = []
    with tempfile.TemporaryDirectory(prefix="hh-aligned-") as folder:
        model, tokenizer = models.load_model_and_tokenizer(cfg, device)
        # the probes are encoded as the flipped runs will encode them, before hours of training
        probes.encode_pairs(tokenizer, probe["test"], cfg.max_length, scale.max_prompt_length(cfg))
        save_trained(
            train_dpo(cfg, model.train(), tokenizer, tag, mode=mode, max_steps=aligned_steps),
            folder,
            checkpoint=False,
        )
        for start in ("base", "aligned"):
            model = (
                models.load_model_and_tokenizer(cfg, device)[0]
                if start == "base"
                else load_trained(folder, device=device).model
            )
            run = train_dpo(
                cfg,
                model.train(),
                tokenizer,
                flipped,
                mode=mode,
                max_steps=steps,
                probe_sets=probe,
            )
            tables.append(run.probes.assign(start=start))
    out = pd.concat(tables, ignore_index=True)
    out.attrs["hh_rows"] = {
        split: dict(pairs=len(part.pairs), skipped=part.n_skipped, report=part.report())
        for split, part in zip(("train", "test"), loaded, strict=True)
    }
    return out


def margin_reading(
    verdict_of: dict[str, str], starts_lower: tuple[int, int], accuracy: tuple[int, int]
) -> str:
    """Chapter 10's sentence on the policy's own margin beside the output accuracy: why they
    disagree where the margin favours the aligned start, the accuracy does not (higher in under
    half the runs, ``accuracy`` = (k, n)) and the aligned margin starts lower in most runs
    (``starts_lower``); else where each measure starts.

    Used in: notebooks/10_misalignment_llm.ipynb.
    """
    no = VERDICTS[2]
    start = (
        "the aligned start's own margin starts further from the flipped answer in "
        f"{starts_lower[0]} of {starts_lower[1]} runs"
    )
    if (
        verdict_of["own_margin_change"] != no
        and verdict_of["output_accuracy"] == no
        and 2 * accuracy[0] < accuracy[1]
        and 2 * starts_lower[0] > starts_lower[1]
    ):
        return (
            f"The margin and the accuracy disagree because {start}: it has further to climb, "
            "climbs further, and still ends preferring the original answer on more statements "
            "than the base start does (its flipped output accuracy is the higher one in "
            f"{accuracy[0]} of {accuracy[1]} runs). Moving its margin faster is not the same as "
            "ending more misaligned."
        )
    return (
        f"Each measure starts from a different place: {start}, and each run's loss is measured "
        "against its own reference."
    )


def spanning_behaviors(order: Sequence[str], n: int = 4, include: Sequence[str] = ()) -> list[str]:
    """``n`` behaviours spanning a distinguishability ranking (``order``, most first): those in
    ``include`` (e.g. the authors' misalignment behaviour 84) plus evenly spaced ranks, in
    ``order``.

    Used by: dpo_utils.llm_evidence.
    """
    order = list(order)
    missing = [b for b in include if b not in order]
    if missing:
        raise ValueError(f"include={missing!r} are not in the ranking {order!r}.")
    if not 1 <= n <= len(order):
        raise ValueError(f"n={n!r} is not allowed; choose 1..{len(order)}.")
    chosen = list(dict.fromkeys(include))
    for r in (int(round(r)) for r in np.linspace(0, len(order) - 1, n)):
        if len(chosen) < n and order[r] not in chosen and not _near(order, chosen, r, n):
            chosen.append(order[r])
    for b in order:  # fill up where the spacing collided with the included ones
        if len(chosen) < n and b not in chosen:
            chosen.append(b)
    return [b for b in order if b in chosen]


def _near(order, chosen, r, n) -> bool:
    """Whether rank r is within half a spacing of an already chosen behaviour."""
    spacing = max(1.0, (len(order) - 1) / max(1, n - 1))
    return any(abs(order.index(c) - r) < spacing / 2 for c in chosen)
