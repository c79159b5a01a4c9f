# Two entry points for a fresh machine (Python >= 3.10): `make quickstart` and `make test`.
# Both create .venv and install the project into it first.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: quickstart test test-fast bench results report ui

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q -e '.[test]'
	touch $@

quickstart: $(VENV)/.installed
	$(VENV)/bin/lth sweep run sweeps/quickstart.yaml
	$(VENV)/bin/lth report runs/sweeps/quickstart

test: $(VENV)/.installed
	$(PY) -m pytest --durations=15

test-fast: $(VENV)/.installed
	$(PY) -m pytest -m "not slow"

# The quickstart sweep's follow-ups, without activating the venv.
results: $(VENV)/.installed
	$(VENV)/bin/lth results runs/sweeps/quickstart

report: $(VENV)/.installed
	$(VENV)/bin/lth report runs/sweeps/quickstart

ui: $(VENV)/.installed
	$(VENV)/bin/lth ui runs/sweeps/quickstart

bench: $(VENV)/.installed
	$(PY) bench/speed.py
	$(PY) bench/sweep_overhead.py
	$(PY) bench/eval_cost.py
