# The ELBO Book: build and test.
#
#   make book    build the HTML book (incremental, cached execution) -> _build/html/index.html
#   make test    THE test command: unit tests, every chapter in a fresh kernel, a cold strict build,
#                and a headless-browser check of the built pages; any failure exits non-zero
#   make venv    create/update .venv (only reinstalls when requirements.txt or pyproject.toml change)
#   make clean   remove the build and test caches (keeps .venv); `make distclean` also removes .venv
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

test-unit: venv
	@rc=0; $(BIN)/python -m pytest tests --ignore=tests/test_book_html.py || rc=$$?; \
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
	$(BIN)/python -m pytest tests/test_book_html.py --book-html=$(HTML)

clean:
	rm -rf $(BUILD) .pytest_cache .hypothesis
	find . -path ./$(VENV) -prune -o -type d -name __pycache__ -print0 | xargs -0 rm -rf

distclean: clean
	rm -rf $(VENV)
