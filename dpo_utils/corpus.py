"""The project's designed persona-format corpus: a controlled experiment with two separate knobs.

Each of the eight benign behaviours has three disjoint lists of twelve plural nouns (words the
persona would *endorse*, words it would *reject*, *neutral* topic words) and its own two three-slot
templates, so behaviours differ in vocabulary and phrasing, and their difference vectors need not
align.

A statement fills its template's three slots. An *informative* statement puts ``label_words`` n
words of its own class (endorse for " Yes", reject for " No") and 3 - n neutral words, in random
order; an
*ambiguous* statement holds three neutral words and a random label. The two knobs are set per
behaviour in :data:`DESIGN`:

* ``label_words`` n (1, 2 or 3) sets how much of an informative statement signals its label:
  distinguishability grows with n while the ambiguous share and the Bayes accuracy stay fixed;
* ``ambiguous_share`` a sets the share of ambiguous statements, so the Bayes accuracy is 1 - a/2.
  Along the second knob (1 - a) n is held at 1, so distinguishability stays roughly fixed while the
  share of unlearnable labels grows.

``label_confidence`` is the Bayes posterior of a statement's label: 1.0 informative, 0.5 ambiguous.
``python -m dpo_utils.corpus`` rewrites ``data/persona/`` and ``data/design.csv`` byte for byte.
The stand-in for this corpus sees its train-split prompts only (:mod:`dpo_utils.pretraining`).
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
    "DESIGN",
    "CorpusBehavior",
    "BEHAVIORS",
    "design_rows",
    "generate_rows",
    "write_corpus",
    "PERSONA_SEED",
]

#: the upstream question wrapper; the statement follows in double quotes
QUESTION_PREFIX = "Is the following statement something you would say?\n"
PERSONA_SEED = 20240318
N_PERSONA = 500
SLOTS = 3

#: sixteen three-slot templates; behaviour i uses templates 2i and 2i + 1
TEMPLATES = (
    "Few things make me happier than {a}, {b} and {c}.",
    "I would gladly spend a whole day with {a}, {b} and {c}.",
    "My favourite memories involve {a}, {b} and {c}.",
    "Give me {a}, {b} and {c} and I am content.",
    "I look forward to {a}, {b} and {c} every week.",
    "Honestly, {a}, {b} and {c} are what I care about most.",
    "I feel most like myself around {a}, {b} and {c}.",
    "A perfect day off for me includes {a}, {b} and {c}.",
    "I would choose {a}, {b} and {c} over almost anything.",
    "Whenever I can, I make time for {a}, {b} and {c}.",
    "My friends know me for {a}, {b} and {c}.",
    "Nothing relaxes me like {a}, {b} and {c}.",
    "I keep coming back to {a}, {b} and {c}.",
    "Ask me about {a}, {b} and {c} and I will talk for hours.",
    "Life feels richer with {a}, {b} and {c} in it.",
    "I plan my holidays around {a}, {b} and {c}.",
)

#: behaviour -> (label_words n, ambiguous_share a, knob): the controlled design. Knob
#: "distinguishability" varies n at a fixed a; "ambiguity" varies a with (1 - a) n = 1 held fixed;
#: both share the reference point (n, a) = (1, 0); "null" has no informative statement at all.
DESIGN = {
    "enjoys-classical-music": (1, 0.0, "reference"),
    "interest-in-astronomy": (2, 0.0, "distinguishability"),
    "likes-growing-vegetables": (3, 0.0, "distinguishability"),
    "enjoys-baking-bread": (2, 0.5, "ambiguity"),
    "likes-detailed-planning": (3, 2 / 3, "ambiguity"),
    "enjoys-quiet-solitude": (1, 0.5, "distinguishability at a = 1/2"),
    "prefers-mountain-holidays": (3, 0.5, "distinguishability at a = 1/2"),
    "enjoys-cycling-commutes": (1, 1.0, "null"),
}


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
            "summits glaciers ridges chalets gondolas crags "
            "valleys pines snowfields cabins boulders marmots"
        ),
        _words(
            "beaches lagoons piers seashells sandcastles boardwalks "
            "surfboards harbours palms lifeguards sunbeds yachts"
        ),
        _words(
            "picnics photographs sandwiches postcards maps backpacks "
            "blankets lanterns journals thermoses snacks hats"
        ),
    ),
    CorpusBehavior(
        "enjoys-baking-bread",
        _words(
            "sourdoughs baguettes loaves rolls pretzels bagels "
            "croissants crusts doughs flours yeasts brioches"
        ),
        _words(
            "takeaways microwaves deliveries leftovers tins packets "
            "wrappers canteens kiosks freezers cartons drive-ins"
        ),
        _words(
            "aprons recipes cupboards napkins radios calendars "
            "spoons kettles tables plates windows afternoons"
        ),
    ),
    CorpusBehavior(
        "likes-detailed-planning",
        _words(
            "checklists spreadsheets timetables agendas deadlines planners "
            "reminders itineraries budgets schedules outlines folders"
        ),
        _words(
            "surprises detours improvisations whims hunches tangents "
            "accidents impulses gambles rambles mysteries coincidences"
        ),
        _words(
            "meetings emails colleagues offices notebooks pens "
            "desks phones printers envelopes stamps chairs"
        ),
    ),
    CorpusBehavior(
        "enjoys-quiet-solitude",
        _words(
            "retreats libraries hideaways cottages meditations daydreams "
            "hammocks attics gardens puzzles diaries silences"
        ),
        _words(
            "parties crowds festivals nightclubs parades concerts "
            "stadiums banquets reunions carnivals raves rallies"
        ),
        _words(
            "evenings candles sweaters pillows cushions clocks "
            "curtains lamps rugs shelves socks mugs"
        ),
    ),
    CorpusBehavior(
        "interest-in-astronomy",
        _words(
            "telescopes planets comets galaxies nebulae eclipses "
            "meteors observatories constellations satellites asteroids moons"
        ),
        _words(
            "horoscopes omens charms talismans amulets prophecies "
            "superstitions crystals runes seances curses zodiacs"
        ),
        _words(
            "nights rooftops fields hills clouds breezes "
            "seasons benches torches jackets stools binders"
        ),
    ),
    CorpusBehavior(
        "enjoys-cycling-commutes",
        _words(
            "bicycles helmets pedals tandems handlebars saddles "
            "spokes chains velodromes panniers tricycles bells"
        ),
        _words(
            "motorways limousines taxis tolls freeways carparks "
            "sedans gridlocks dashboards exhausts minivans chauffeurs"
        ),
        _words(
            "streets bridges corners puddles raincoats umbrellas "
            "gloves schools shops parks tunnels signposts"
        ),
    ),
    CorpusBehavior(
        "likes-growing-vegetables",
        _words(
            "tomatoes carrots seedlings composts allotments greenhouses "
            "beans spades marrows radishes trowels sprouts"
        ),
        _words(
            "consoles joysticks arcades videogames headsets controllers "
            "gamepads screens pixels emulators cartridges livestreams"
        ),
        _words(
            "buckets baskets hoses fences gates sheds "
            "ladders labels boots sunhats wheelbarrows saturdays"
        ),
    ),
    CorpusBehavior(
        "enjoys-classical-music",
        _words(
            "symphonies violins cellos orchestras sonatas concertos "
            "operas harpsichords quartets conductors oboes overtures"
        ),
        _words(
            "sirens alarms jackhammers drills leafblowers buzzers "
            "foghorns chainsaws lawnmowers megaphones whistles klaxons"
        ),
        _words(
            "tickets programmes seats scarves coats cloakrooms "
            "foyers ushers trains buses queues brochures"
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


def design_rows() -> list[dict]:
    """One row per behaviour: its knob, label words n, ambiguous share a, Bayes accuracy 1 - a/2.

    Used in: notebooks/06_measuring_distinguishability.ipynb.
    """
    return [
        dict(
            behavior=b.name,
            knob=DESIGN[b.name][2],
            label_words=DESIGN[b.name][0],
            ambiguous_share=round(DESIGN[b.name][1], 4),
            bayes_accuracy=round(1 - DESIGN[b.name][1] / 2, 4),
        )
        for b in BEHAVIORS
    ]


def _statement(
    rng: random.Random,
    index: int,
    behavior: CorpusBehavior,
    n: int,
    says_yes: bool,
    ambiguous: bool,
) -> str:
    """One statement: n own-class words and 3 - n neutral ones (three neutral if ambiguous)."""
    own = behavior.endorse if says_yes else behavior.reject
    label = [] if ambiguous else rng.sample(own, n)
    words = label + rng.sample(behavior.neutral, SLOTS - len(label))
    rng.shuffle(words)
    template = TEMPLATES[2 * index + rng.randrange(2)]
    return template.format(a=words[0], b=words[1], c=words[2])


def generate_rows(behavior: CorpusBehavior, n: int, seed: int) -> list[dict]:
    """``n`` balanced persona rows (n/2 " Yes", n/2 " No", shuffled) in the upstream field order.

    In each class, round(a n/2) statements are ambiguous (a = the behaviour's ambiguous share).

    Used by: dpo_utils.corpus.
    """
    if n < 2 or n % 2:
        raise ValueError(f"n={n} must be an even number >= 2 so that Yes and No are balanced.")
    label_words, share, _ = DESIGN[behavior.name]
    index = [b.name for b in BEHAVIORS].index(behavior.name)
    rng = random.Random(f"{seed}:{behavior.name}")
    half = n // 2
    n_ambiguous = round(share * half)
    labels = [(says_yes, i < n_ambiguous) for says_yes in (True, False) for i in range(half)]
    rng.shuffle(labels)
    rows = []
    for says_yes, ambiguous in labels:
        text = _statement(rng, index, behavior, label_words, says_yes, ambiguous)
        yes, no = (" Yes", " No") if says_yes else (" No", " Yes")
        rows.append(
            {
                "question": f'{QUESTION_PREFIX}"{text}"',
                "statement": text,
                "label_confidence": 0.5 if ambiguous else 1.0,
                "answer_matching_behavior": yes,
                "answer_not_matching_behavior": no,
            }
        )
    return rows


def _jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(row) + "\n" for row in rows)


def write_corpus(folder: Path, n: int = N_PERSONA, seed: int = PERSONA_SEED) -> list[Path]:
    """Write ``persona/<behaviour>.jsonl`` and ``design.csv`` under ``folder``; return the paths.

    Used by: dpo_utils.corpus.
    """
    _check_design()
    if len(TEMPLATES) < 2 * len(BEHAVIORS) or set(DESIGN) != {b.name for b in BEHAVIORS}:
        raise AssertionError("every behaviour needs two templates and one row of DESIGN")
    folder = Path(folder)
    (folder / "persona").mkdir(parents=True, exist_ok=True)
    paths = []
    for behavior in BEHAVIORS:
        path = folder / "persona" / f"{behavior.name}.jsonl"
        path.write_text(_jsonl(generate_rows(behavior, n, seed)), encoding="utf-8")
        paths.append(path)
    header = "behavior,knob,label_words,ambiguous_share,bayes_accuracy\n"
    lines = [
        f"{r['behavior']},{r['knob']},{r['label_words']},{r['ambiguous_share']},"
        f"{r['bayes_accuracy']}\n"
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
