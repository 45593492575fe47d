# Two commands a newcomer needs: `make demo` (train a tiny GPT on the corpus that ships with
# Python, then generate from it) and `make test`. Both set up .venv on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
SHARED ?= $(abspath ../shared)
# tiktoken cannot download on these machines; ../shared/tiktoken holds its files.
ifneq ($(wildcard $(SHARED)/tiktoken),)
export TIKTOKEN_CACHE_DIR ?= $(SHARED)/tiktoken
endif
RUN ?= runs/tiny

.PHONY: setup demo test lint typecheck bench docs clean
setup: $(VENV)/.installed

# constraints.txt pins torch to the CPU build on these machines (an unpinned torch pulls CUDA, several GB)
# and transformers to the release the parity tests compare against.
$(VENV)/.installed: pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[test,reference,plots,parquet,datasets,eval,tensorboard,hf,docs,dev,ray]'
	$(PY) -m pip install -q --no-deps llms-from-scratch==1.0.19
	touch $@

# A second `make demo` reuses the run in $(RUN): it continues an interrupted one and just
# generates from a finished one. Delete $(RUN) to train from scratch.
demo: setup
	$(VENV)/bin/gptzoo train configs/tiny.toml --out $(RUN) $(if $(wildcard $(RUN)/train_state.pt),--resume)
	$(VENV)/bin/gptzoo generate $(RUN) --prompt "The" --max-new-tokens 80 --temperature 0.8 --top-k 40 --seed 0

test: setup
	$(PY) -m pytest -q $(PYTEST_ARGS)

# ruff (rules and formatting) over the tree; mypy over the plugin author's API ([tool.mypy]).
# .pre-commit-config.yaml runs the same three before each commit.
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(MAKE) --no-print-directory typecheck

# mypy cannot follow the editable install's import hook: it reads the packages through links
# named as they import (build/mypy/gptzoo/core -> core/).
typecheck: setup
	@mkdir -p build/mypy/gptzoo
	@for package in core registry testing; do ln -sfn ../../../$$package build/mypy/gptzoo/$$package; done
	$(VENV)/bin/mypy

# Speed and memory against a hand-written GPT and transformers (see docs/design/performance.md).
bench: setup
	$(PY) benchmarks/bench.py --shape small --decode-shapes tiny,gpt2-124m --long-shape gpt2-124m --out bench.json

# The reference pages regenerated from the code, then the site built strictly into site/
# (a broken link fails; tests/test_docs_build.py runs the same build).
docs: setup
	$(PY) docs/gen_reference.py
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

clean:
	rm -rf $(VENV) runs .pytest_cache site
