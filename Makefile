# Two commands on a fresh machine:   make demo   and   make test
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test venv data bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/vrlang run examples/logreg.vr --out out/logreg

test: $(STAMP)
	$(BIN)/python -m pytest -q

data: $(STAMP)
	$(BIN)/python scripts/make_data.py

clean:
	rm -rf out .pytest_cache
