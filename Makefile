# Set-up and the two jobs of the README. Every target creates .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv quickstart test lint bench

venv: $(STAMP)

# torch first, pinned: its CPU build is what the other packages must keep (an open range
# would pull a multi-GB CUDA build). Everything else is pinned by constraints.txt.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

# The main job, end to end on Multi30k en-de: prepare, train, BLEU, export, serve, translate.
quickstart: venv
	$(BIN)/nmt quickstart

# The browser tests (pytest -m browser) need Debian's Chromium; without it the rest run and
# one line says the browser tests did not.
CHROMIUM := /usr/bin/chromium
test: venv
	@if [ -x $(CHROMIUM) ]; then \
		$(BIN)/python -m pytest -q; \
	else \
		$(BIN)/python -m pytest -q -m 'not slow and not browser'; status=$$?; \
		echo "make test: browser tests NOT RUN: $(CHROMIUM) is missing (apt-get install chromium)"; \
		exit $$status; \
	fi

lint: venv
	$(BIN)/ruff check nmt data_prep serve tests benchmarks

bench: venv
	$(BIN)/python benchmarks/hyperlstm_speed.py
