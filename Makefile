# conceptkit — two commands on a fresh machine: `make demo` and `make test`.
# Each creates the virtual environment ($(VENV)) when it is missing and installs the project.
# CI may point VENV at a cached environment outside the clone (see .ci/run).

VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
DEPS_STAMP := $(VENV)/.conceptkit-deps
PYTEST_ARGS ?=

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export MPLBACKEND := Agg

.PHONY: venv install demo test test-all bench lint clean

$(DEPS_STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	@touch $(DEPS_STAMP)

# The editable install is refreshed every time: a cached venv may have been built from another
# checkout, and `pip install --no-deps -e .` takes a few seconds.
install: $(DEPS_STAMP)
	@$(PY) -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e . >/dev/null

venv: install

demo: install
	$(PY) -m conceptkit demo

# The browser tests need headless Chromium: .ci/ensure-chromium installs Debian's `chromium` when
# it is missing and this user can (root + apt-get); otherwise those tests skip with a reason in
# the summary (with CI=true they fail).
test: install
	@bash .ci/ensure-chromium
	$(PY) -m pytest $(PYTEST_ARGS)

test-all: install
	@bash .ci/ensure-chromium
	$(PY) -m pytest -m "slow or not slow" $(PYTEST_ARGS)

bench: install
	$(PY) -m conceptkit bench

lint: install
	$(PY) -m ruff check conceptkit tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info conceptkit-demo
