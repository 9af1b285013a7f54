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

help:
	@echo "make book      execute every chapter on the CPU profile and build _build/html"
	@echo "make test      unit tests + every notebook under pytest --nbval-lax"
	@echo "make bench     speed benchmarks (not part of make test)"
	@echo "make chapters PROFILE=llama2-7b   run every chapter with papermill into runs/<profile>/"
	@echo "make clean     remove _build (keeps .venv and results/)"

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
