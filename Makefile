# Thin wrappers. Every target installs into .venv first if needed (Python 3.11, torch first), with
# the pins of constraints.txt (the one list of versions).
PYTHON  ?= python3.11
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed-stamp
LINT_STAMP := $(VENV)/.lint-stamp
CONSTRAINTS := constraints.txt
PIP     := $(BIN)/python -m pip install --quiet -c $(CONSTRAINTS)
PROFILE ?= cpu
# the profiles of dpo_utils/config.py (tests/test_bad_inputs.py keeps the two lists equal); PROFILE
# is checked here, before any recipe expands it into a shell command
PROFILES := cpu llama2-7b mistral-7b colab-t4
ifneq ($(words $(PROFILE)) $(filter-out $(PROFILES),$(PROFILE)),1 )
$(error PROFILE='$(PROFILE)' is not a known profile; choose one of: $(PROFILES))
endif
JOBS    ?= 1
LINT_PATHS := dpo_utils tests benchmarks notebooks browser_tests

# Where torch comes from (README, book/setup.md):
#   TORCH_INDEX=            (default) the ordinary index. On Linux x86_64 that is the CUDA build of
#                           torch, which pulls about 3 GB of NVIDIA libraries; elsewhere the CPU build.
#   TORCH_INDEX=https://download.pytorch.org/whl/cpu
#                           the CPU-only build (a few hundred MB): what CI and a GPU-less box want.
#   TORCH_INDEX=https://download.pytorch.org/whl/cu128   a given CUDA build.
TORCH_INDEX ?=

# Offline by default; a GPU box overrides these (see book/setup.md).
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export HF_HUB_DISABLE_TELEMETRY ?= 1
export TOKENIZERS_PARALLELISM ?= false
export PYDEVD_DISABLE_FILE_VALIDATION ?= 1

.PHONY: setup test test-unit test-fast test-paper test-notebooks book chapters bench clean clean-results help
.PHONY: lint typecheck
.PHONY: student pdf test-browser corpus-track

help:
	@echo "make book      execute every chapter on the CPU profile and build _build/html"
	@echo "make test      unit tests + every notebook under pytest --nbval-lax"
	@echo "make test-fast unit tests not marked slow (the inner loop, under 2 minutes)"
	@echo "make test-paper every chapter under papermill at llama2-7b and mistral-7b on the CPU,"
	@echo "               06-13 with tiny stand-ins (DPO_TINY_STAND_IN=1): the paper code paths run"
	@echo "               (about 11 minutes on 2 cores; not part of make test)"
	@echo "make lint      ruff check + ruff format --check (what CI runs first)"
	@echo "make typecheck mypy dpo_utils"
	@echo "make setup TORCH_INDEX=https://download.pytorch.org/whl/cpu   the CPU-only torch build"
	@echo "make bench     speed benchmarks (not part of make test)"
	@echo "make chapters PROFILE=llama2-7b   run every chapter with papermill into runs/<profile>/"
	@echo "make corpus-track   chapters 07-11 on the controlled corpus (the claims table's corpus column)"
	@echo "make clean     remove _build (keeps .venv and results/)"
	@echo "make student   copies of the notebooks without exercise solutions, in student/notebooks/"
	@echo "make pdf       the whole book as one PDF, _build/book.pdf (headless chromium)"
	@echo "make test-browser   open every page of _build/html in headless chromium (after make book)"

setup: $(STAMP)

$(STAMP): pyproject.toml $(CONSTRAINTS)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(PIP) torch $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PIP) -e '.[book,test,lint]'
	@touch $(STAMP)

# make lint needs only ruff: a clean clone installs that alone (make setup installs it too)
$(LINT_STAMP): $(CONSTRAINTS)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) ruff
	@touch $(LINT_STAMP)

lint: $(LINT_STAMP)
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)

typecheck: $(STAMP)
	$(BIN)/mypy dpo_utils

test: $(STAMP)
	$(BIN)/python -m pytest tests notebooks -m "not paper" --nbval-lax --nbval-current-env --nbval-cell-timeout=900 -p no:cacheprovider

test-unit: $(STAMP)
	$(BIN)/python -m pytest tests -m "not paper" -p no:cacheprovider

test-fast: $(STAMP)
	$(BIN)/python -m pytest tests -m "not slow and not paper" -p no:cacheprovider -q

# every chapter at the paper profiles, on the CPU (tests marked paper; book/setup.md)
test-paper: $(STAMP)
	$(BIN)/python -m pytest tests -m paper -p no:cacheprovider -q --durations=0

test-notebooks: $(STAMP)
	$(BIN)/python -m pytest notebooks --nbval-lax --nbval-current-env --nbval-cell-timeout=900 -p no:cacheprovider

# The CPU profile builds into _build/html with _config.yml as it is (600 s per cell). Any other
# profile builds into _build/<profile>/ (its own HTML and its own jupyter-cache, so one profile's
# outputs are never shown for another) with the cell timeout off: a paper-scale training cell can
# take far longer than 600 s. The documented path is `make chapters PROFILE=...` first (papermill,
# no timeout, fills results/<profile>/), then `make book PROFILE=...`, which then loads every run.
#
# On the CPU profile, chapter 06's stand-ins are made ready in the background while chapters 01-05
# execute, which use one core of two (python -m dpo_utils.measuring_setup; its output goes to
# _build/measuring_setup.log). It runs at a lower priority (nice), so that the chapters' own work
# comes first and it takes what is idle. Each stand-in is cached under a lock: chapter 06 reads the
# ones that are done and waits for the others, and computes itself whatever the background job did
# not. The job is stopped (SIGTERM: a folder being written is removed, never left half-written)
# once jupyter-book returns, or on Ctrl-C: then it has nothing left to serve. The build's exit
# status is jupyter-book's.
#
# The chapters that train on two cores (06-10) share one pair of worker processes for the whole
# build (python -m dpo_utils.worker_service, on a socket in a fresh private folder named by
# DPO_WORKER_SERVICE; log: _build/worker_service.log) instead of each starting two that import
# torch, transformers and trl again. A chapter's jobs compute the same there; without the
# service, a chapter starts its own workers. It is stopped like the background job.
ifeq ($(PROFILE),cpu)
book: $(STAMP)
	@mkdir -p _build
	@echo "chapter 06's stand-ins: made ready in the background (log: _build/measuring_setup.log)"
	@echo "workers shared by the chapters: python -m dpo_utils.worker_service (log: _build/worker_service.log)"
	@sockets=$$(mktemp -d) || exit 1; \
	DPO_PROFILE='$(PROFILE)' nice -n 10 $(BIN)/python -m dpo_utils.measuring_setup --profile '$(PROFILE)' \
	  > _build/measuring_setup.log 2>&1 & setup=$$!; \
	$(BIN)/python -m dpo_utils.worker_service --address "$$sockets/workers" \
	  > _build/worker_service.log 2>&1 & service=$$!; \
	trap 'kill -TERM $$setup $$service 2>/dev/null' INT TERM; \
	echo "DPO_PROFILE='$(PROFILE)' $(BIN)/jupyter-book build . -W -n --keep-going"; \
	DPO_WORKER_SERVICE="$$sockets/workers" DPO_PROFILE='$(PROFILE)' \
	  $(BIN)/jupyter-book build . -W -n --keep-going; rc=$$?; \
	kill -TERM $$setup $$service 2>/dev/null; wait $$setup $$service 2>/dev/null; \
	rm -f "$$sockets/workers"; rmdir "$$sockets"; \
	exit $$rc
else
book: $(STAMP)
	@mkdir -p '_build/$(PROFILE)'
	sed -e 's/^  timeout: 600$$/  timeout: -1  # no cell timeout (generated by make book)/' \
	  _config.yml > '_build/$(PROFILE)/_config.yml'
	@grep -q '^  timeout: -1' '_build/$(PROFILE)/_config.yml' || \
	  { echo "error: _config.yml has no 'timeout: 600' line to replace" >&2; exit 1; }
	DPO_PROFILE='$(PROFILE)' $(BIN)/jupyter-book build . --config '_build/$(PROFILE)/_config.yml' \
	  --path-output '_build/$(PROFILE)' -W -n --keep-going
	@echo "book for $(PROFILE): _build/$(PROFILE)/_build/html/index.html"
endif

# Every chapter under papermill (no cell timeout), run from notebooks/ as the book runs it, into
# runs/<profile>/. It replaces only notebooks an earlier `make chapters` wrote there (they carry
# papermill metadata); any other file in runs/<profile>/ stops it before anything runs.
chapters: $(STAMP)
	@mkdir -p 'runs/$(PROFILE)'
	@for nb in notebooks/*.ipynb; do \
	  out="runs/$(PROFILE)/$$(basename $$nb)"; \
	  if [ -e "$$out" ] && ! grep -q '"papermill"' "$$out"; then \
	    echo "error: $$out was not written by make chapters; move it away first." >&2; exit 1; \
	  fi; \
	done
	@for nb in notebooks/*.ipynb; do \
	  echo "== $$nb ($(PROFILE))"; \
	  $(BIN)/papermill --cwd notebooks "$$nb" "runs/$(PROFILE)/$$(basename $$nb)" -p profile '$(PROFILE)' \
	    --no-progress-bar || exit 1; \
	done

# The controlled-corpus track of chapters 07-11 (the claims table's "controlled corpus" column):
# each chapter once more with persona_source=corpus, into runs/<profile>-corpus/ (same rule as
# make chapters: only notebooks it wrote are replaced). Their verdicts go to
# results/<profile>/verdicts/; the claims page's cached execution is dropped so that the next
# make book reads them (the other pages stay cached).
JUPYTER_CACHE := $(if $(filter cpu,$(PROFILE)),_build/.jupyter_cache,_build/$(PROFILE)/_build/.jupyter_cache)
CORPUS_CHAPTERS := 07_last_layer_dpo 08_full_and_lora_dpo 09_prioritisation_llm \
	10_misalignment_llm 11_embedding_geometry
corpus-track: $(STAMP)
	@mkdir -p 'runs/$(PROFILE)-corpus'
	@for nb in $(CORPUS_CHAPTERS); do \
	  out="runs/$(PROFILE)-corpus/$$nb.ipynb"; \
	  if [ -e "$$out" ] && ! grep -q '"papermill"' "$$out"; then \
	    echo "error: $$out was not written by make corpus-track; move it away first." >&2; exit 1; \
	  fi; \
	done
	@for nb in $(CORPUS_CHAPTERS); do \
	  echo "== $$nb (controlled corpus, $(PROFILE))"; \
	  $(BIN)/papermill --cwd notebooks "notebooks/$$nb.ipynb" "runs/$(PROFILE)-corpus/$$nb.ipynb" \
	    -p profile '$(PROFILE)' -p persona_source corpus --no-progress-bar || exit 1; \
	done
	@$(BIN)/python -c "import sys; from pathlib import Path; from jupyter_cache import get_cache; \
	  folder = Path(sys.argv[1]); c = get_cache(folder) if folder.is_dir() else None; \
	  [c.remove_cache(r.pk) for r in (c.list_cache_records() if c else []) \
	   if r.uri.endswith('13_claims_and_verdicts.ipynb')]" '$(JUPYTER_CACHE)'
	@echo "corpus verdicts saved; make book PROFILE=$(PROFILE) shows them in the claims table"

bench: $(STAMP)
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(BIN)/python "$$b" || exit 1; done

clean:
	rm -rf _build

clean-results:
	rm -rf results runs

# ---- teaching, other formats, browser checks (book/instructors.md, book/setup.md) -----------------

student: $(STAMP)
	$(BIN)/python -m dpo_utils.teaching notebooks student/notebooks

# the HTML build (cached, so quick after make book), printed in _toc.yml order; see print_pdf.py
# for why not --builder singlehtml
pdf: book
	PY=$(BIN)/python bash browser_tests/ensure_tools.sh
	$(BIN)/python browser_tests/print_pdf.py _build/html _build/book.pdf

test-browser: $(STAMP)
	@test -f _build/html/index.html || { echo "error: no built book in _build/html; run 'make book' first." >&2; exit 1; }
	PY=$(BIN)/python bash browser_tests/ensure_tools.sh
	$(BIN)/python -m pytest browser_tests -p no:cacheprovider -q
	@echo "screenshots: _build/screenshots/"
