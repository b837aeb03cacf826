# Few Channels Draw the Whole Picture — build and check the executable book.
#   make book      execute every notebook (cached) and build the HTML book into _build/html
#   make test      everything CI runs: format check, unit tests, notebooks re-run with nbval, the book built from the
#                  stored outputs (warnings are errors), and the browser check of every page
#   make student   the student edition: student/NN_*.ipynb without the solutions (tools/student.py)
#   make floors    the lowest dependency versions pyproject.toml allows, in a fresh venv, with the unit tests
# Single steps: make format | unit | notebooks | book-stored | check-book [PAGES="notebooks/02_disruption ..."]
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.few-channels-installed
CHROMIUM ?= /usr/bin/chromium
export CHROMIUM
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD := 1

.PHONY: install book test format unit notebooks book-stored check-book chromium student clean floors

# Create the virtualenv if missing, install the exact pins and the helpers package (editable).
# The stamp makes a second call instant; editing requirements.txt or pyproject.toml reinstalls.
install: $(STAMP)
$(STAMP): requirements.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt -e .
	@touch $@

book: install
	$(VENV)/bin/jupyter-book build .
	@echo "Open file://$(CURDIR)/_build/html/index.html"

# Cheap checks first, so a formatting slip fails in seconds rather than after the notebooks ran.
test: install chromium format unit notebooks book-stored check-book
	@echo "make test: all checks passed"

# The chapters' code at 88 columns (notebooks/ruff.toml); `ruff format notebooks` fixes what this reports.
format: install
	$(VENV)/bin/ruff format --check notebooks

unit: install
	$(PY) -m pytest -q tests

notebooks: install
	$(PY) -m pytest -q --nbval-lax --nbval-current-env --nbval-cell-timeout=600 \
		--nbval-sanitize-with tests/nbval_sanitize.cfg notebooks/

# nbval has just executed every notebook; build the book from the stored outputs instead of a third run.
# The config copy sits in _build/, so the local extension's folder is made absolute.
book-stored: install
	@mkdir -p _build
	$(PY) -c "import pathlib, yaml; c = yaml.safe_load(open('_config.yml')); c['execute']['execute_notebooks'] = 'off'; \
		ext = c.get('sphinx', {}).get('local_extensions') or {}; \
		c['sphinx']['local_extensions'] = {k: str(pathlib.Path(v).resolve()) for k, v in ext.items()}; \
		yaml.safe_dump(c, open('_build/_config.stored.yml', 'w'), allow_unicode=True, sort_keys=False)"
	$(VENV)/bin/jupyter-book build . --config _build/_config.stored.yml -W --keep-going

# Every page of _toc.yml at 1280 and 390 px; PAGES="notebooks/02_disruption book/intro" checks only those.
check-book: install chromium
	$(PY) tools/check_book.py _build/html $(if $(PAGES),--pages $(PAGES))

# Headless browser for the book check: Debian's chromium, or any Chrome given as CHROMIUM=/path.
chromium:
	@if [ ! -x "$(CHROMIUM)" ]; then \
		if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium; \
		else echo "no browser at $(CHROMIUM): run 'sudo apt-get install -y chromium' or set CHROMIUM=/path/to/chrome" >&2; exit 1; fi; \
	fi

student: install
	$(PY) tools/student.py

# The dependency floors of pyproject.toml: a fresh venv with the lowest allowed versions, then the unit tests
# (about 20 minutes on 2 cores; not part of `make test`). TORCH=torch==X: another torch where the floor's CPU
# build is out of reach (README).
floors:
	TORCH="$(TORCH)" .ci/floors

clean:
	rm -rf _build student
