# make book  [PROFILE=cpu|ci|gpu]  set up, execute every notebook, build the HTML book
# make test                         set up, run the unit tests, model tests and notebooks (ci profile)
# make test-alone                   set up, run every chapter on its own in an empty results folder (slow)
# make exercises                    write the student version of every chapter to _build/exercises/
# PRECISION=float32|bfloat16        force one precision over every precision parameter of the run
#                                   (default: each parameter's own value, "auto" for most)
PROFILE ?= cpu
ifdef PRECISION
export MECHUNLEARN_PRECISION := $(PRECISION)
endif
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup book test test-alone exercises clean

setup: $(VENV)/.installed

# Packages are byte-compiled by compileall on every core rather than by pip on one (on 2 cores the
# install step fell from 136 s to 104 s). As with pip, a file that does not compile (torch ships one
# written for Python 3.12) is left as source.
$(VENV)/.installed: requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --no-compile -r requirements.txt
	$(BIN)/pip install --quiet --no-deps -e .
	$(BIN)/python -m compileall -qq -j 0 "$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')" || true
	touch $@

book: setup
	if [ "$(PROFILE)" = gpu ]; then $(BIN)/pip install --quiet -r requirements-gpu.txt; fi
	$(BIN)/python -m helpers.book --profile $(PROFILE)

test: setup
	$(BIN)/python -c "from helpers.precision import describe_hardware; print('[test] precision:', describe_hardware())"
	$(BIN)/python -m pytest -v --durations=15

test-alone: setup
	$(BIN)/python -m pytest -v -m alone --durations=0 tests/test_alone.py

exercises: setup
	$(BIN)/python -m helpers.exercises --out _build/exercises

clean:
	rm -rf _build
