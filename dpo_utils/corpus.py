"""The project's own persona-format corpus: a deterministic generator with a vocabulary-overlap knob.

Each of the eight benign behaviours has three disjoint lists of twelve plural nouns: words the persona
would *endorse*, words it would *reject*, and *neutral* topic words. A statement fills one of ten
first-person templates with exactly one label-bearing word and one neutral filler, in random order.

The knob is ``shared`` (k): the " Yes" vocabulary is the first 12 - k endorse words plus the first k
neutral words, the " No" vocabulary the first 12 - k reject words plus the same k neutral words. A
statement whose label word is shared carries no information about its label, so a fraction k/12 of
statements is ambiguous and the best possible (Bayes) accuracy is 1 - k/24. ``label_confidence`` is
that Bayes posterior: 1.0 for a class-specific word, 0.5 for a shared one.

Two independent samples come from the same design: the persona files under ``data/persona/`` (500
statements per behaviour, committed) and a larger language-model pre-training corpus (another seed,
generated in memory), so that a tiny model learns the designed signal rather than memorising the
evaluation rows. ``python -m dpo_utils.corpus`` rewrites ``data/`` byte for byte.
"""

from __future__ import annotations

import argparse
import json
import random
from dataclasses import dataclass
from pathlib import Path

from .data import corpus_dir

__all__ = [
    "QUESTION_PREFIX",
    "TEMPLATES",
    "SHARED_LEVELS",
    "CorpusBehavior",
    "BEHAVIORS",
    "shared_words_by_behavior",
    "design_rows",
    "generate_rows",
    "lm_texts",
    "write_corpus",
    "PERSONA_SEED",
    "LM_SEED",
]

#: the upstream question wrapper; the statement follows in double quotes
QUESTION_PREFIX = "Is the following statement something you would say?\n"
PERSONA_SEED = 20240318
LM_SEED = 777
ASSIGNMENT_SEED = 31
N_PERSONA = 500
N_LM = 2500
#: shared words out of 12, one level per behaviour (assigned by a seeded permutation)
SHARED_LEVELS = (0, 2, 3, 5, 7, 9, 10, 12)

TEMPLATES = (
    "Few things make me happier than {a} and {b}.",
    "I would gladly spend a whole day with {a} and {b}.",
    "My favourite memories involve {a} and {b}.",
    "Give me {a} and {b} and I am content.",
    "I look forward to {a} and {b} every week.",
    "Honestly, {a} and {b} are what I care about most.",
    "I feel most like myself around {a} and {b}.",
    "A perfect day off for me includes {a} and {b}.",
    "I would choose {a} and {b} over almost anything.",
    "Whenever I can, I make time for {a} and {b}.",
)


@dataclass(frozen=True)
class CorpusBehavior:
    """One designed behaviour: its file name and its three disjoint word lists (12 words each).

    Used by: dpo_utils.corpus.
    """

    name: str
    endorse: tuple[str, ...]
    reject: tuple[str, ...]
    neutral: tuple[str, ...]


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


BEHAVIORS = (
    CorpusBehavior(
        "prefers-mountain-holidays",
        _words(
            "summits glaciers ridges chalets gondolas crags valleys pines snowfields cabins boulders marmots"
        ),
        _words(
            "beaches lagoons piers seashells sandcastles boardwalks surfboards harbours palms lifeguards sunbeds yachts"
        ),
        _words(
            "picnics photographs sandwiches postcards maps backpacks blankets lanterns journals thermoses snacks hats"
        ),
    ),
    CorpusBehavior(
        "enjoys-baking-bread",
        _words(
            "sourdoughs baguettes loaves rolls pretzels bagels croissants crusts doughs flours yeasts brioches"
        ),
        _words(
            "takeaways microwaves deliveries leftovers tins packets wrappers canteens kiosks freezers cartons drive-ins"
        ),
        _words(
            "aprons recipes cupboards napkins radios calendars spoons kettles tables plates windows afternoons"
        ),
    ),
    CorpusBehavior(
        "likes-detailed-planning",
        _words(
            "checklists spreadsheets timetables agendas deadlines planners reminders itineraries budgets schedules outlines folders"
        ),
        _words(
            "surprises detours improvisations whims hunches tangents accidents impulses gambles rambles mysteries coincidences"
        ),
        _words(
            "meetings emails colleagues offices notebooks pens desks phones printers envelopes stamps chairs"
        ),
    ),
    CorpusBehavior(
        "enjoys-quiet-solitude",
        _words(
            "retreats libraries hideaways cottages meditations daydreams hammocks attics gardens puzzles diaries silences"
        ),
        _words(
            "parties crowds festivals nightclubs parades concerts stadiums banquets reunions carnivals raves rallies"
        ),
        _words(
            "evenings candles sweaters pillows cushions clocks curtains lamps rugs shelves socks mugs"
        ),
    ),
    CorpusBehavior(
        "interest-in-astronomy",
        _words(
            "telescopes planets comets galaxies nebulae eclipses meteors observatories constellations satellites asteroids moons"
        ),
        _words(
            "horoscopes omens charms talismans amulets prophecies superstitions crystals runes seances curses zodiacs"
        ),
        _words(
            "nights rooftops fields hills clouds breezes seasons benches torches jackets stools binders"
        ),
    ),
    CorpusBehavior(
        "enjoys-cycling-commutes",
        _words(
            "bicycles helmets pedals tandems handlebars saddles spokes chains velodromes panniers tricycles bells"
        ),
        _words(
            "motorways limousines taxis tolls freeways carparks sedans gridlocks dashboards exhausts minivans chauffeurs"
        ),
        _words(
            "streets bridges corners puddles raincoats umbrellas gloves schools shops parks tunnels signposts"
        ),
    ),
    CorpusBehavior(
        "likes-growing-vegetables",
        _words(
            "tomatoes carrots seedlings composts allotments greenhouses beans spades marrows radishes trowels sprouts"
        ),
        _words(
            "consoles joysticks arcades videogames headsets controllers gamepads screens pixels emulators cartridges livestreams"
        ),
        _words(
            "buckets baskets hoses fences gates sheds ladders labels boots sunhats wheelbarrows saturdays"
        ),
    ),
    CorpusBehavior(
        "enjoys-classical-music",
        _words(
            "symphonies violins cellos orchestras sonatas concertos operas harpsichords quartets conductors oboes overtures"
        ),
        _words(
            "sirens alarms jackhammers drills leafblowers buzzers foghorns chainsaws lawnmowers megaphones whistles klaxons"
        ),
        _words(
            "tickets programmes seats scarves coats cloakrooms foyers ushers trains buses queues brochures"
        ),
    ),
)


def _check_design() -> None:
    """Every list has 12 words and no word appears twice anywhere in the design."""
    words = [w for b in BEHAVIORS for lst in (b.endorse, b.reject, b.neutral) for w in lst]
    sizes = {len(lst) for b in BEHAVIORS for lst in (b.endorse, b.reject, b.neutral)}
    if sizes != {12}:
        raise AssertionError(f"every word list must hold 12 words; sizes found: {sorted(sizes)}")
    repeated = sorted({w for w in words if words.count(w) > 1})
    if repeated:
        raise AssertionError(f"words used in more than one list: {repeated}")


def shared_words_by_behavior() -> dict[str, int]:
    """The designed overlap k (shared words out of 12) of each behaviour, by a seeded permutation.

    Used by: dpo_utils.corpus.
    """
    levels = list(SHARED_LEVELS)
    random.Random(ASSIGNMENT_SEED).shuffle(levels)
    return {b.name: k for b, k in zip(BEHAVIORS, levels)}


def design_rows() -> list[dict]:
    """One row per behaviour: name, shared words k, nominal overlap k/12, Bayes accuracy 1 - k/24.

    Used in: notebooks/06_measuring_distinguishability.ipynb, notebooks/07_last_layer_dpo.ipynb,
    notebooks/08_full_and_lora_dpo.ipynb, notebooks/11_embedding_geometry.ipynb.
    """
    shared = shared_words_by_behavior()
    return [
        dict(
            behavior=b.name,
            shared_words=shared[b.name],
            overlap=round(shared[b.name] / 12, 4),
            bayes_accuracy=round(1 - shared[b.name] / 24, 4),
        )
        for b in BEHAVIORS
    ]


def _statement(
    rng: random.Random, behavior: CorpusBehavior, k: int, says_yes: bool
) -> tuple[str, float]:
    """One statement with a single label-bearing word; returns (text, Bayes posterior of its label)."""
    own = behavior.endorse if says_yes else behavior.reject
    vocabulary = own[: 12 - k] + behavior.neutral[:k]
    label_word = rng.choice(vocabulary)
    filler = rng.choice([w for w in behavior.neutral if w != label_word])
    a, b = (label_word, filler) if rng.random() < 0.5 else (filler, label_word)
    text = rng.choice(TEMPLATES).format(a=a, b=b)
    return text, (0.5 if label_word in behavior.neutral else 1.0)


def generate_rows(behavior: CorpusBehavior, n: int, seed: int) -> list[dict]:
    """``n`` balanced persona rows (n/2 " Yes", n/2 " No", shuffled) in the upstream field order.

    Used by: dpo_utils.corpus.
    """
    if n < 2 or n % 2:
        raise ValueError(f"n={n} must be an even number >= 2 so that Yes and No are balanced.")
    k = shared_words_by_behavior()[behavior.name]
    rng = random.Random(f"{seed}:{behavior.name}")
    labels = [True] * (n // 2) + [False] * (n // 2)
    rng.shuffle(labels)
    rows = []
    for says_yes in labels:
        text, confidence = _statement(rng, behavior, k, says_yes)
        yes, no = (" Yes", " No") if says_yes else (" No", " Yes")
        rows.append(
            {
                "question": f'{QUESTION_PREFIX}"{text}"',
                "statement": text,
                "label_confidence": confidence,
                "answer_matching_behavior": yes,
                "answer_not_matching_behavior": no,
            }
        )
    return rows


def lm_texts(n_per_behavior: int = N_LM, seed: int = LM_SEED) -> list[str]:
    """Pre-training texts: question, newline, answer, sampled independently of the persona files.

    The answer is part of the text on purpose: a tiny model only learns to read out the label at the
    newline if it has seen answers (our CPU trials). BOS/EOS are added by the tokenizer.

    Used by: dpo_utils.models.
    """
    texts = []
    for behavior in BEHAVIORS:
        for row in generate_rows(behavior, n_per_behavior, seed):
            texts.append(row["question"] + "\n" + row["answer_matching_behavior"])
    random.Random(seed).shuffle(texts)
    return texts


def _jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(row) + "\n" for row in rows)


def write_corpus(folder: Path, n: int = N_PERSONA, seed: int = PERSONA_SEED) -> list[Path]:
    """Write ``persona/<behaviour>.jsonl`` and ``design.csv`` under ``folder``; return the paths.

    Used by: dpo_utils.corpus.
    """
    _check_design()
    folder = Path(folder)
    (folder / "persona").mkdir(parents=True, exist_ok=True)
    paths = []
    for behavior in BEHAVIORS:
        path = folder / "persona" / f"{behavior.name}.jsonl"
        path.write_text(_jsonl(generate_rows(behavior, n, seed)), encoding="utf-8")
        paths.append(path)
    header = "behavior,shared_words,overlap,bayes_accuracy\n"
    lines = [
        f"{r['behavior']},{r['shared_words']},{r['overlap']},{r['bayes_accuracy']}\n"
        for r in design_rows()
    ]
    design = folder / "design.csv"
    design.write_text(header + "".join(sorted(lines)), encoding="utf-8")
    return paths + [design]


def main(argv: list[str] | None = None) -> None:
    """Regenerate data/ (or ``--out``).

    Used by: ``python -m dpo_utils.corpus``.
    """
    parser = argparse.ArgumentParser(description="Regenerate the project's persona-format corpus.")
    parser.add_argument(
        "--out", type=Path, default=None, help="target folder (default: the repository's data/)"
    )
    args = parser.parse_args(argv)
    if args.out is None:
        args.out = corpus_dir()
    for path in write_corpus(args.out):
        print(path)


if __name__ == "__main__":
    main()
