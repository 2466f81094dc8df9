# All Python runs through the project venv. `make venv` is cheap once the stamp is newer than
# pyproject.toml and constraints.txt.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.optimum-prune-installed
PYTEST_ARGS ?= -n 2 -q

.PHONY: venv assets demo test test-all lint bench clean

venv: $(STAMP)

# torch first, pinned: an unpinned resolve of torch pulls GBs of CUDA wheels; pip's configured
# find-links provides the local CPU wheel for torch==2.13.0.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -c constraints.txt torch==2.13.0
	$(PY) -m pip install -c constraints.txt -e '.[dev]'
	touch $@

# Fetches the embedded default model (all-MiniLM-L6-v2) and data into .cache/assets (no-op when cached).
assets: venv
	$(PY) -m optimum_prune.assets

# Exports all-MiniLM-L6-v2 once (reused afterwards), prunes it and prints a summary; writes outputs/demo/.
# tests/test_demo.py runs this same script on a tiny model.
demo: venv assets
	$(PY) examples/demo.py

# Everything not marked slow.
test: venv assets
	$(PY) -m pytest $(PYTEST_ARGS) -m "not slow"

# Everything, slow tests included.
test-all: venv assets
	$(PY) -m pytest $(PYTEST_ARGS)

lint: venv
	$(PY) -m ruff check .

# Every benchmark, then the README tables from their JSON (quality ~8 min, decoder ~13 min, zoo ~5 min,
# engine_speed ~10 min with the > 2 GB decoder's one-off export, decoder_token_time ~2 min).
bench: venv assets
	$(PY) -m pip install -c constraints.txt -e '.[bench]'
	$(PY) -m optimum_prune.assets --smollm2
	$(PY) benchmarks/engine_speed.py
	$(PY) benchmarks/zoo_table.py
	$(PY) benchmarks/quality.py
	$(PY) benchmarks/decoder.py
	$(PY) benchmarks/decoder_token_time.py
	$(PY) benchmarks/readme_tables.py

clean:
	rm -rf outputs build *.egg-info .pytest_cache .ruff_cache
