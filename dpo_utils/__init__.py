"""dpo_utils: the helper package of the companion book to Im & Li (ICML 2024).

Three layers; data flows down this list, never up (tests/test_layers.py checks the imports, and the
chapters in brackets against the notebooks' code: tests/chapter_index.py).

Mechanisms (import only each other):
    config                  profiles and parameter validation [01-13]
    stand_in                DPO_TINY_STAND_IN: a paper profile with tiny stand-ins [via config]
    losses                  the DPO loss, implicit rewards, margins, both accuracies [01 04 05]
    linear                  last-layer DPO, single-token answers: the two-row trainer [01 02 07]
    full_vocab              its full-vocabulary autograd reference [01]
    synthetic               synthetic behaviours: samplers, random_direction [01 02]
    feature_models          trainable features under a one-token head [via synthetic_experiments]
    metrics                 distinguishability, concentration, priority gaps, probes [02 03 04]
    persona_names           the 135 behaviours' names and numbers, the featured lists [via data]
    data                    persona behaviours as preference pairs, the authors' splits [06 12]
    hh_rlhf                 HH-RLHF as preference pairs, unusable rows counted [10]
    corpus                  the project's own persona-format corpus [06]
    models                  hub models, or tiny pre-trained Llama / Mistral stand-ins [06 07]
    pretraining             the stand-ins' pre-training text and loop, leak-free [06]
    embeddings              last-token features of a causal LM, cached [via the experiments]
    probes                  per-pair log-probs and the probe callback [via training]
    training                DPO through trl's DPOTrainer [12]
    saved_runs              DPORun, saving and loading trained runs [via training]
    scale                   paper scale: dtypes, freeing memory, launch checks [01-05]
    run_cache               the notebooks' cache of DPO runs [via llm_experiments]
    results                 load-or-run: tidy tables saved with their config [02-05]
    fingerprint             what a cached result depends on: code and inputs [via results]
    chapter_parameters      every chapter's parameters, checked before any work [via book]
    runtime                 single_threaded, run_seed, process_map [via the experiment modules]
    worker_service          make book's workers, shared by every chapter [via runtime]
    tables                  tidy-table summaries: slopes, times, rank correlations [02 03 05 07 09]
    train                   the command line (python -m dpo_utils.train) over run_cache [none]
    verdicts                seed grids, k-of-n counts, t intervals, saved verdict rows [07-13]

Chapter experiments (import mechanisms; each returns tidy tables, never plots):
    synthetic_experiments   chapters 01-03 and 05 on synthetic features [02 03 05]
    priority_experiments    chapter 04's prioritisation [04]
    feature_experiments     chapters 06-07: measuring features, last-layer DPO on them [06 07]
    measuring_experiments   chapter 06: stand-ins' features over pre-training seeds [06]
    measuring_setup         chapter 06's stand-ins made ready; make book's background job [06]
    llm_experiments         chapters 07-12: full and LoRA DPO on language models [07-12]
    llm_evidence            chapters 07-11 over seeds: behaviours, confounds, summaries [07-11]
    joint_runs              chapter 09: behaviours trained together, one dispatch [09]

Book infrastructure (may import anything):
    book                    start_chapter: validate, go offline, provenance banner [01-13]
    plotting                the theme, palette and figure labels [01-12]
    book_assets             Sphinx extension: plotly.js for the interactive figure [none]
    teaching                student copies without solutions (make student) [none]

Import the module you need, e.g. ``from dpo_utils import config, linear``.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("dpo-utils")
except PackageNotFoundError:  # a source checkout on sys.path without `pip install -e .`
    __version__ = "0+unknown"
