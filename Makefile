# Thin wrappers. Every target installs into .venv first if needed (Python 3.11, torch CPU build first).
PYTHON  ?= python3.11
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed-stamp
PROFILE ?= cpu
JOBS    ?= 1

# Offline by default; a GPU box overrides these (see book/setup.md).
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export HF_HUB_DISABLE_TELEMETRY ?= 1
export TOKENIZERS_PARALLELISM ?= false
export PYDEVD_DISABLE_FILE_VALIDATION ?= 1

.PHONY: setup test test-unit test-notebooks book chapters bench clean clean-results help
.PHONY: student pdf test-browser

help:
	@echo "make book      execute every chapter on the CPU profile and build _build/html"
	@echo "make test      unit tests + every notebook under pytest --nbval-lax"
	@echo "make bench     speed benchmarks (not part of make test)"
	@echo "make chapters PROFILE=llama2-7b   run every chapter with papermill into runs/<profile>/"
	@echo "make clean     remove _build (keeps .venv and results/)"
	@echo "make student   copies of the notebooks without exercise solutions, in student/notebooks/"
	@echo "make pdf       the whole book as one PDF, _build/book.pdf (headless chromium)"
	@echo "make test-browser   open every page of _build/html in headless chromium (after make book)"

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[book,test]'
	@touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest tests notebooks --nbval-lax --nbval-current-env --nbval-cell-timeout=900 -p no:cacheprovider

test-unit: $(STAMP)
	$(BIN)/python -m pytest tests -p no:cacheprovider

test-notebooks: $(STAMP)
	$(BIN)/python -m pytest notebooks --nbval-lax --nbval-current-env --nbval-cell-timeout=900 -p no:cacheprovider

book: $(STAMP)
	DPO_PROFILE=$(PROFILE) $(BIN)/jupyter-book build . -W -n --keep-going

chapters: $(STAMP)
	@mkdir -p runs/$(PROFILE)
	@for nb in notebooks/*.ipynb; do \
	  echo "== $$nb ($(PROFILE))"; \
	  $(BIN)/papermill --cwd notebooks "$$nb" "runs/$(PROFILE)/$$(basename $$nb)" -p profile $(PROFILE) \
	    --no-progress-bar || exit 1; \
	done

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
