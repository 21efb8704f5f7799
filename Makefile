# The ELBO Book: build and test.
#
#   make book    build the HTML book (incremental, cached execution) -> _build/html/index.html
#   make test    THE test command: unit tests, every chapter in a fresh kernel, a cold strict build,
#                and checks of the built pages (headless browser, downloads, header); any failure
#                exits non-zero
#   make venv    create/update .venv (only reinstalls when requirements.txt or pyproject.toml change)
#   make clean   remove the build and test caches (keeps .venv); `make distclean` also removes .venv
#   make lab     open the chapters in JupyterLab (127.0.0.1; a double-click opens a chapter as a
#                notebook); installs requirements-lab.txt into .venv on first use (`make lab-install`)
#
# Every target uses the tools of .venv; nothing needs activating.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := book
.DELETE_ON_ERROR:

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
BUILD := _build
HTML := $(BUILD)/html
JB_FLAGS := -W -n --keep-going
# Hash of everything a chapter's results depend on besides its own text: the library, the pinned
# environment, and the benchmark results the Performance page shows. Stored in $(LIBHASH_FILE); when
# it changes, the execution cache is stale.
LIBHASH_FILE := $(BUILD)/.vaelib-hash
LIBHASH_CMD := { find vaelib -type f -name '*.py' | LC_ALL=C sort | xargs -r sha256sum; \
                 sha256sum pyproject.toml requirements.txt benchmarks/results.json; } | sha256sum | cut -c1-64

# The kernels that execute the chapters are started from this PATH.
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: book test venv clean distclean cache-check test-unit test-chapters test-build test-browser

## venv: create .venv with $(PYTHON) if missing; (re)install only when the pins change.
venv: $(INSTALLED)

$(INSTALLED): requirements.txt pyproject.toml
	@test -x $(BIN)/python || { echo "Creating $(VENV) with $(PYTHON)"; $(PYTHON) -m venv $(VENV); }
	$(BIN)/python -m pip install --disable-pip-version-check --quiet -r requirements.txt -e .
	@touch $@

## cache-check: clear the execution cache (and Sphinx's environment, so every page is re-read and
## re-executed) when vaelib/*.py, pyproject.toml or requirements.txt changed since the last build.
cache-check:
	@mkdir -p $(BUILD)
	@new="$$($(LIBHASH_CMD))"; \
	if [ "$$new" != "$$(cat $(LIBHASH_FILE) 2>/dev/null || true)" ]; then \
	  if [ -d $(BUILD)/.jupyter_cache ] || [ -d $(BUILD)/.doctrees ]; then \
	    echo "vaelib or the pinned environment changed: clearing the execution cache"; \
	  fi; \
	  rm -rf $(BUILD)/.jupyter_cache $(BUILD)/.doctrees $(BUILD)/jupyter_execute; \
	  echo "$$new" > $(LIBHASH_FILE); \
	fi

## book: strict build; pages whose code and library are unchanged come from the cache.
book: venv cache-check
	$(BIN)/jupyter-book build . $(JB_FLAGS)
	@echo
	@echo "The book is built. Open $(CURDIR)/$(HTML)/index.html"

## test: the four stages, in order; the first failure stops it with a non-zero exit status.
test: venv
	@command -v "$${CHROMIUM:-chromium}" >/dev/null || { \
	  echo "make test needs Chromium for its last stage: apt-get install -y chromium" >&2; exit 1; }
	@start=$$(date +%s); \
	for stage in test-unit test-chapters test-build test-browser; do \
	  echo; echo "==== $$stage ($$(date +%T))"; \
	  $(MAKE) --no-print-directory $$stage; \
	done; \
	echo; echo "==== make test passed in $$(( $$(date +%s) - start )) s"

# The tests that read the built book (BOOK_TESTS) run in test-browser, after the build. tests/test_lab.py
# starts `make lab`'s server, so the unit stage installs the pinned JupyterLab first (once).
BOOK_TESTS := tests/test_book_html.py tests/test_notebook_downloads.py tests/test_page_header.py

test-unit: venv lab-install
	@rc=0; $(BIN)/python -m pytest tests $(addprefix --ignore=,$(BOOK_TESTS)) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: no unit tests were collected in tests/" >&2; fi; \
	exit $$rc

# Each chapter (book/**/*.md with a MyST notebook header) top to bottom in a fresh kernel, in place,
# never from any cache. See conftest.py.
test-chapters: venv
	@rc=0; $(BIN)/python -m pytest --nbval-lax --durations=5 book || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: no chapters were collected in book/" >&2; fi; \
	exit $$rc

# Cold: a fresh _build, so every page is read, executed and checked; nothing stale can pass.
# It leaves a complete cache behind, so the next `make book` is warm.
test-build: venv
	rm -rf $(BUILD)
	@$(MAKE) --no-print-directory cache-check
	$(BIN)/jupyter-book build . $(JB_FLAGS)

test-browser: venv
	$(BIN)/python -m pytest $(BOOK_TESTS) --book-html=$(HTML)

clean:
	rm -rf $(BUILD) .pytest_cache .hypothesis
	find . -path ./$(VENV) -prune -o -type d -name __pycache__ -print0 | xargs -0 rm -rf

distclean: clean
	rm -rf $(VENV)

# ---- JupyterLab for learners: `make lab` ------------------------------------------------------
# All of its settings live in jupyter-config/ (JUPYTER_CONFIG_DIR), never in ~/.jupyter:
#   jupyter-config/jupyter_server_config.json    bind 127.0.0.1; Jupytext's contents manager, so
#                                                book/*.md chapters are notebooks to the server
#   jupyter-config/labconfig/default_setting_overrides.json
#                                                default viewer of .md files: "Jupytext Notebook"
# What JupyterLab writes (your own settings, workspaces) goes to jupyter-config/lab/ (git-ignored).
# The server's root is book/, so kernels start there, as in the build and the tests.
# Extra server options: make lab LAB_ARGS="--port=8899 --no-browser"
LAB_INSTALLED := $(VENV)/.installed-lab
LAB_CONFIG := $(CURDIR)/jupyter-config
LAB_ENV := JUPYTER_CONFIG_DIR=$(LAB_CONFIG) \
           JUPYTERLAB_SETTINGS_DIR=$(LAB_CONFIG)/lab/user-settings \
           JUPYTERLAB_WORKSPACES_DIR=$(LAB_CONFIG)/lab/workspaces
# Jupyter refuses to run as root without --allow-root (containers, CI); a learner's laptop is not root.
LAB_ROOT_FLAG = $(if $(filter 0,$(shell id -u)),--allow-root)
LAB_ARGS ?=

.PHONY: lab lab-install

## lab-install: JupyterLab (requirements-lab.txt) into .venv; reinstalls only when that file changes.
lab-install: $(LAB_INSTALLED)

$(LAB_INSTALLED): requirements-lab.txt | $(INSTALLED)
	$(BIN)/python -m pip install --disable-pip-version-check --quiet -r requirements-lab.txt
	@touch $@

## lab: JupyterLab on the chapters (book/), at http://127.0.0.1:8888/lab (the URL with its token is
## printed); Ctrl+C stops it.
lab: $(LAB_INSTALLED)
	$(LAB_ENV) $(BIN)/jupyter lab --ServerApp.root_dir=$(CURDIR)/book $(LAB_ROOT_FLAG) $(LAB_ARGS)
