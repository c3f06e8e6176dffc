# make demo  : set up .venv when missing, then run the demo (mlrpl demo: pbce on COCO128)
# make test  : set up .venv when missing, then run the whole test suite
# make setup : install, again whenever pyproject.toml or constraints.txt changes; the exact
#              versions come from constraints.txt (pyproject.toml has lower bounds only), torch
#              and torchvision from this machine's disk
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SHARED_DATA := $(abspath ../shared/data)
export MLRPL_DATA ?= $(if $(wildcard $(SHARED_DATA)),$(SHARED_DATA),)

.PHONY: setup test demo clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt torch torchvision
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[test]'
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

demo: $(STAMP)
	$(BIN)/mlrpl demo

clean:
	rm -rf $(VENV) build *.egg-info
