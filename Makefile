# The ELBO Book: build and test.
#
#   make book    build the HTML book (incremental, cached execution) -> _build/html/index.html
#   make test    THE test command: unit tests, every chapter once under nbval in a fresh kernel (two
#                at a time), a strict build of every page from those results, checks of the built
#                pages (headless browser, downloads, header, phone layout) and the PDF built and read
#                back; any failure exits non-zero
#   make venv    create/update .venv (only reinstalls when requirements.txt or pyproject.toml change)
#   make system-deps  the Debian packages make test needs (Chromium, TeX Live): installed with
#                apt-get when it can (root, or sudo without a password); otherwise it prints the command
#   make pdf     the whole book as one PDF -> _build/latex/elbo-book.pdf (needs TeX Live)
#   make clean   remove the build and test caches (keeps .venv); `make distclean` also removes .venv
#   make lab     open the chapters in JupyterLab (127.0.0.1; a double-click opens a chapter as a
#                notebook, rendered as MyST like the book; opening never modifies it); installs
#                requirements-lab.txt into .venv on first use (`make lab-install`)
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
# environment, and the benchmark results the Performance page and chapter 12 show. Stored in $(LIBHASH_FILE); when
# it changes, the execution cache is stale.
LIBHASH_FILE := $(BUILD)/.vaelib-hash
LIBHASH_CMD := { find vaelib -type f -name '*.py' | LC_ALL=C sort | xargs -r sha256sum; \
                 sha256sum pyproject.toml requirements.txt benchmarks/results.json benchmarks/diffusion_digits.json; } | sha256sum | cut -c1-64

# The kernels that execute the chapters are started from this PATH.
export PATH := $(CURDIR)/$(BIN):$(PATH)

# vaelib.fit_cached (chapters 6 and 7) stores its trainings here while the book is executed, never in
# ~/.cache/vaelib: it lives under $(BUILD), so `make test` (which starts from an empty $(BUILD)) never
# reads a training from an earlier run, and `make clean` removes it. Absolute: kernels run in book/.
BOOK_ENV := VAELIB_CACHE=$(CURDIR)/$(BUILD)/vaelib-cache
# Chapters executed at a time by `make test-chapters` (pytest-xdist's -n).
JOBS ?= 2
# `make book` skips jupyter-book (whose own start-up takes several seconds even with nothing to do)
# when nothing it reads has changed since its last successful build: this fingerprint covers every
# file of the project that git tracks or would track (so every source, configuration file, vaelib and
# the pins), the environment's install stamps and site-packages folder, and the build flags. Outside
# a git checkout it is empty and the build always runs.
BOOK_FINGERPRINT := $(BUILD)/.book-fingerprint
FINGERPRINT_CMD := if [ "$$(git rev-parse --show-toplevel 2>/dev/null)" = "$(CURDIR)" ]; then \
  { git ls-files -z --cached --others --exclude-standard | LC_ALL=C sort -z | \
      { xargs -0r sha256sum 2>&1 || true; }; \
    stat -c '%n %Y' $(VENV)/.installed* $(VENV)/lib/*/site-packages 2>&1 || true; \
    echo '$(JB_FLAGS)'; } | sha256sum | cut -c1-64; fi

.PHONY: book test venv clean distclean cache-check test-unit test-chapters test-build test-browser test-pdf

## venv: create .venv with $(PYTHON) if missing; (re)install only when the pins change.
venv: $(INSTALLED)

$(INSTALLED): requirements.txt pyproject.toml
	@test -x $(BIN)/python || { echo "Creating $(VENV) with $(PYTHON)"; $(PYTHON) -m venv $(VENV); }
	$(BIN)/python -m pip install --disable-pip-version-check --quiet -r requirements.txt -e .
	@touch $@

## cache-check: clear the execution caches (jupyter-cache's, vaelib.fit_cached's, and Sphinx's
## environment, so every page is re-read and re-executed) when vaelib/*.py, pyproject.toml,
## requirements.txt or benchmarks/results.json changed since the last build.
cache-check:
	@mkdir -p $(BUILD)
	@new="$$($(LIBHASH_CMD))"; \
	if [ "$$new" != "$$(cat $(LIBHASH_FILE) 2>/dev/null || true)" ]; then \
	  if [ -d $(BUILD)/.jupyter_cache ] || [ -d $(BUILD)/.doctrees ]; then \
	    echo "vaelib or the pinned environment changed: clearing the execution cache"; \
	  fi; \
	  rm -rf $(BUILD)/.jupyter_cache $(BUILD)/.doctrees $(BUILD)/jupyter_execute \
	         $(BUILD)/vaelib-cache $(BOOK_FINGERPRINT); \
	  echo "$$new" > $(LIBHASH_FILE); \
	fi

## book: strict build; pages whose code and library are unchanged come from the cache. With nothing
## changed since the last successful build (same fingerprint, and the environment Sphinx saves
## whenever a run reads a page is older than the fingerprint: no Sphinx run that read anything, e.g.
## a direct jupyter-book build, came after it), it does not start at all.
book: venv cache-check
	@fp="$$($(FINGERPRINT_CMD))"; \
	if [ -n "$$fp" ] && [ -f $(HTML)/index.html ] && [ -f $(BUILD)/.doctrees/environment.pickle ] && \
	   [ ! $(BUILD)/.doctrees/environment.pickle -nt $(BOOK_FINGERPRINT) ] && \
	   [ "$$fp" = "$$(cat $(BOOK_FINGERPRINT) 2>/dev/null || true)" ]; then \
	  echo "Nothing the build reads has changed since its last successful run: $(HTML) is up to date."; \
	else \
	  rm -f $(BOOK_FINGERPRINT); \
	  echo "$(BOOK_ENV) $(BIN)/jupyter-book build . $(JB_FLAGS)"; \
	  $(BOOK_ENV) $(BIN)/jupyter-book build . $(JB_FLAGS); \
	  if [ -n "$$fp" ]; then echo "$$fp" > $(BOOK_FINGERPRINT); fi; \
	fi
	@echo
	@echo "The book is built. Open $(CURDIR)/$(HTML)/index.html"

## test: the five stages, in order; the first failure stops it with a non-zero exit status. Each
## chapter is executed once (test-chapters); the strict build and the PDF read them all from that
## run's cache.
test: venv system-deps
	@start=$$(date +%s); times=""; \
	for stage in test-unit test-chapters test-build test-browser test-pdf; do \
	  echo; echo "==== $$stage ($$(date +%T))"; t0=$$(date +%s); \
	  $(MAKE) --no-print-directory $$stage; \
	  times="$$times $$stage $$(( $$(date +%s) - t0 )) s,"; \
	done; \
	echo; echo "==== make test passed in $$(( $$(date +%s) - start )) s:$${times%,}"

## system-deps: the Debian packages `make test` needs beyond Python: Chromium for the browser check,
## TeX Live (TEX_PACKAGES, about 0.7 GB) for the PDF. When one is missing it installs them with
## apt-get (as root, or with sudo when sudo needs no password); otherwise it stops and prints the one
## command that does. SYSTEM_DEBS lists the packages, SYSTEM_CMDS the commands that show they are
## there (and the PDF's font, FreeSerif, must be known to fontconfig).
SYSTEM_DEBS ?= chromium $(TEX_PACKAGES)
SYSTEM_CMDS ?= $${CHROMIUM:-chromium} xelatex latexmk pdfinfo
.PHONY: system-deps
system-deps:
	@missing=""; for cmd in $(SYSTEM_CMDS); do command -v "$$cmd" >/dev/null || missing="$$missing $$cmd"; done; \
	[ -n "$$(fc-list FreeSerif 2>/dev/null)" ] || missing="$$missing fonts-freefont-otf"; \
	if [ -n "$$missing" ]; then \
	  install="apt-get install -y --no-install-recommends $(SYSTEM_DEBS)"; \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then sudo=""; \
	  elif command -v sudo >/dev/null && sudo -n true 2>/dev/null && command -v apt-get >/dev/null; then sudo="sudo "; \
	  else echo "make test needs$$missing: install them with" >&2; \
	       echo "  sudo apt-get update && sudo $$install" >&2; exit 1; fi; \
	  echo "Installing$$missing for make test: $$sudo$$install"; \
	  export DEBIAN_FRONTEND=noninteractive; $${sudo}apt-get update -q && $${sudo}$$install; \
	fi

# The tests that read the built book (BOOK_TESTS) run in test-browser, after the build. tests/test_lab.py
# starts `make lab`'s server, so the unit stage installs the pinned JupyterLab first (once).
BOOK_TESTS := tests/test_book_html.py tests/test_notebook_downloads.py tests/test_page_header.py tests/test_phone.py

test-unit: venv lab-install
	@rc=0; $(BIN)/python -m pytest tests $(addprefix --ignore=,$(BOOK_TESTS)) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: no unit tests were collected in tests/" >&2; fi; \
	exit $$rc

# Every chapter (each MyST notebook of book/, the pages the build executes) under nbval: top to bottom
# in a fresh kernel with book/ as working directory, $(JOBS) at a time (pytest-xdist), from an empty
# $(BUILD): nothing of an earlier run (execution cache, vaelib.fit_cached's trainings, Sphinx's
# environment) survives. A failing cell or self-check fails it, naming the chapter file, the code cell
# and its line. Each chapter whose cells all passed is stored in the build's execution cache, as the
# build would store it (--book-cache). See conftest.py.
test-chapters: venv
	rm -rf $(BUILD)
	@$(MAKE) --no-print-directory cache-check
	$(BOOK_ENV) $(BIN)/python -m pytest book --nbval-lax -n $(JOBS) -p no:cacheprovider \
	  --book-cache $(CURDIR)/$(BUILD)/.jupyter_cache

# The strict build (-W -n: any warning fails it) of every page: Sphinx's environment and output are
# removed first, so every page is read and written again, but the execution cache test-chapters just
# filled is kept, and every chapter must come from it: the build must execute nothing (checked on its
# log; a chapter changed since test-chapters, or a vaelib change, which cache-check turns into an
# empty cache, makes it fail). It leaves a complete build behind, so the next `make book` is warm.
test-build: venv
	@$(MAKE) --no-print-directory cache-check
	rm -rf $(HTML) $(BUILD)/.doctrees $(BUILD)/jupyter_execute $(BOOK_FINGERPRINT)
	@fp="$$($(FINGERPRINT_CMD))"; \
	echo "$(BOOK_ENV) $(BIN)/jupyter-book build . $(JB_FLAGS)"; \
	$(BOOK_ENV) $(BIN)/jupyter-book build . $(JB_FLAGS) 2>&1 | tee $(BUILD)/build.log; \
	$(BIN)/python tools/check_build_log.py $(BUILD)/build.log; \
	if [ -n "$$fp" ]; then echo "$$fp" > $(BOOK_FINGERPRINT); fi

test-browser: venv
	$(BIN)/python -m pytest $(BOOK_TESTS) --book-html=$(HTML)

clean:
	rm -rf $(BUILD) .pytest_cache .hypothesis
	find . -path ./$(VENV) -prune -o -type d -name __pycache__ -print0 | xargs -0 rm -rf

distclean: clean
	rm -rf $(VENV)

# ---- JupyterLab for learners: `make lab` ------------------------------------------------------
# A chapter opens as a notebook that reads like the book: jupyterlab-myst (requirements-lab.txt)
# renders its Markdown cells as MyST (math with the book's macros, admonitions, theorems and proofs,
# exercises with collapsed solutions, numbered equations and in-chapter references, numbered as in
# the book). Each chapter's first cell, hidden in the book, holds the macros and the chapter's number
# (checked against _config.yml and _toc.yml by tests/test_lab_macros.py). Lab cannot resolve
# references to other chapters, citations or glued values ({glue:text} shows its key): the book does.
# Opening is not editing: JupyterLab's autosave writes an unchanged chapter back byte for byte (each
# chapter's header as Jupytext writes it, book/jupytext.toml), so only a learner's own edits change
# a file (tests/test_lab.py saves every page through the server and compares).
# All of its settings live in jupyter-config/ (JUPYTER_CONFIG_DIR), never in ~/.jupyter:
#   jupyter-config/jupyter_server_config.json    bind 127.0.0.1; Jupytext's contents manager, so
#                                                book/*.md chapters are notebooks to the server
#   jupyter-config/labconfig/default_setting_overrides.json
#                                                default viewer of .md files: "Jupytext Notebook";
#                                                no news pop-up (it would fetch from a website)
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

# ---- The whole book as one PDF: `make pdf` -------------------------------------------------------
# Jupyter Book's LaTeX builder (--builder pdflatex: Sphinx writes $(LATEX_DIR)/$(PDF_NAME).tex, then
# latexmk runs XeLaTeX on it), as strict as the HTML build ($(JB_FLAGS)); a LaTeX error fails it too.
# It shares $(BUILD)'s execution cache and Sphinx environment with `make book` (cache-check clears both
# when vaelib or the pins changed): after `make book` it executes no chapter and reads no page again;
# on an empty $(BUILD) it executes every chapter first, as `make book` would. The PDF is copied to
# $(HTML)/$(PDF_NAME).pdf, where every page's download menu ("Book (.pdf)") and the preface link it.
# Its settings: `latex:` and sphinx.config's latex_* keys in _config.yml, and _ext/latex_macros.py
# (the MathJax macros for LaTeX, the pages' numbering, proofs, the pages it leaves out). TeX comes
# from the Debian packages of TEX_PACKAGES (about 0.7 GB; not texlive-fonts-extra).
PDF_NAME := elbo-book
LATEX_DIR := $(BUILD)/latex
PDF := $(LATEX_DIR)/$(PDF_NAME).pdf
TEX_PACKAGES := texlive-xetex texlive-latex-extra texlive-latex-recommended texlive-fonts-recommended \
                latexmk fonts-freefont-otf poppler-utils
# XeLaTeX (run by latexmk through the Makefile Sphinx writes) stops at the first error instead of
# waiting for input on the terminal, and names the .tex line.
PDF_ENV := LATEXOPTS="-interaction=nonstopmode -halt-on-error -file-line-error"

.PHONY: pdf test-pdf tex-check

## tex-check: stop with the one command that installs what `make pdf` needs, if anything is missing.
tex-check:
	@missing=""; \
	for tool in xelatex latexmk pdfinfo; do command -v $$tool >/dev/null || missing="$$missing $$tool"; done; \
	[ -n "$$(fc-list FreeSerif 2>/dev/null)" ] || missing="$$missing fonts-freefont-otf"; \
	if [ -n "$$missing" ]; then \
	  echo "make pdf needs TeX Live (missing:$$missing): sudo apt-get install -y --no-install-recommends $(TEX_PACKAGES)" >&2; \
	  exit 1; \
	fi

## pdf: the whole book as one PDF -> $(PDF), copied to $(HTML)/$(PDF_NAME).pdf. LaTeX's own files
## (.aux, .toc, .out) are kept between runs, so that one XeLaTeX pass usually suffices, unless the
## last run did not finish ($(PDF_OK) missing): an interrupted pass can leave them cut short.
PDF_OK := $(LATEX_DIR)/.pdf-ok
# Sphinx's and XeLaTeX's output (about 12,000 lines) goes here; on a failure its warnings, LaTeX's
# errors and its last lines are printed.
PDF_LOG := $(BUILD)/pdf.log
pdf: venv cache-check tex-check
	@if [ ! -f $(PDF_OK) ]; then rm -f $(LATEX_DIR)/$(PDF_NAME).{aux,toc,out,fdb_latexmk,fls}; fi
	rm -f $(PDF) $(PDF_OK)
	@mkdir -p $(BUILD)
	@echo "$(BOOK_ENV) $(PDF_ENV) $(BIN)/jupyter-book build . --builder pdflatex $(JB_FLAGS) > $(PDF_LOG)"
	@$(BOOK_ENV) $(PDF_ENV) $(BIN)/jupyter-book build . --builder pdflatex $(JB_FLAGS) > $(PDF_LOG) 2>&1 || { \
	  echo "make pdf failed. Its warnings and LaTeX errors (the whole log: $(PDF_LOG)):" >&2; \
	  grep -E 'WARNING|ERROR|^! |:[0-9]+: |Emergency stop|Fatal' $(PDF_LOG) | head -n 40 >&2 || true; \
	  echo "... and the log's last lines:" >&2; tail -n 25 $(PDF_LOG) >&2; exit 1; }
	@grep -E 'Output written on|build succeeded' $(PDF_LOG) | tail -n 2 || true
	@test -s $(PDF) || { echo "make pdf: the build wrote no $(PDF)" >&2; exit 1; }
	@touch $(PDF_OK)
	@mkdir -p $(HTML)
	cp $(PDF) $(HTML)/$(PDF_NAME).pdf
	@echo; echo "The PDF is built: $(CURDIR)/$(PDF) ($$(pdfinfo $(PDF) | awk '/^Pages:/ {print $$2}') pages)."

## test-pdf: build the PDF, then read it back (tests/test_pdf.py): every page of _toc.yml by its title,
## "Theorem 3.1" and equation numbers, every solution, no figure printed as text, no "??", > 100 pages.
## The last stage of `make test`, after test-build: it reads every chapter from that run's cache and
## Sphinx's environment, so only LaTeX's own work remains.
test-pdf: pdf
	BOOK_PDF=$(PDF) $(BIN)/python -m pytest tests/test_pdf.py
