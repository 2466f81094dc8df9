# All Python runs through the project venv. `make venv` is cheap once the stamp is newer than
# pyproject.toml and constraints.txt.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.optimum-prune-installed
PYTEST_ARGS ?= -n 2 -q

.PHONY: venv venv-inc assets demo test test-inc test-all lint bench clean

venv: $(STAMP)

# torch first, pinned: an unpinned resolve of torch pulls GBs of CUDA wheels; pip's configured
# find-links provides the local CPU wheel for torch==2.13.0.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -c constraints.txt torch==2.13.0
	$(PY) -m pip install -c constraints.txt -e '.[dev]'
	touch $@

# The quantize stage's `neural-compressor` backend (onnx-neural-compressor) needs numpy<2, so it gets its
# own venv pinned by constraints-inc.txt (constraints.txt with numpy 1.26 and the pins that follow).
VENV_INC := .venv-inc
PY_INC := $(VENV_INC)/bin/python
STAMP_INC := $(VENV_INC)/.optimum-prune-installed
# one process: both test files share module-scoped exports that xdist workers would each rebuild
INC_PYTEST_ARGS ?= -q

venv-inc: $(STAMP_INC)

$(STAMP_INC): pyproject.toml constraints-inc.txt
	test -x $(PY_INC) || $(PYTHON) -m venv $(VENV_INC)
	$(PY_INC) -m pip install -c constraints-inc.txt torch==2.13.0
	$(PY_INC) -m pip install -c constraints-inc.txt -e '.[dev,neural-compressor-onnx]'
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

# The tests marked `inc` (the neural-compressor backend) in .venv-inc; `make test` skips them. Here a
# missing onnx-neural-compressor fails them instead (OPTIMUM_PRUNE_REQUIRE_INC). tests/test_pipeline.py
# runs too: every stage under numpy 1.26 (~1 min).
test-inc: venv-inc
	$(PY_INC) -m optimum_prune.assets
	OPTIMUM_PRUNE_REQUIRE_INC=1 $(PY_INC) -m pytest $(INC_PYTEST_ARGS) -m inc
	$(PY_INC) -m pytest $(INC_PYTEST_ARGS) -m "not slow" tests/test_pipeline.py

# Everything, slow tests included.
test-all: venv assets
	$(PY) -m pytest $(PYTEST_ARGS)

lint: venv
	$(PY) -m ruff check .

# Every benchmark, then the README tables from their JSON (quality ~8 min, classifier ~15 min plus ~10 min
# training on first use, decoder ~13 min, zoo ~5 min, engine_speed ~10 min with the > 2 GB decoder's
# one-off export, decoder_token_time ~2 min, distill ~5 min, arch_survey ~8 min, quality_ceiling ~60 min on an
# idle machine).
DECODER_RUNS = outputs/bench/decoder

bench: venv assets
	$(PY) -m pip install -c constraints.txt -e '.[bench]'
	$(PY) -m optimum_prune.assets --smollm2
	$(PY) benchmarks/engine_speed.py
	$(PY) benchmarks/zoo_table.py
	$(PY) benchmarks/arch_survey.py
	$(PY) benchmarks/quality.py --generated-sweep
	$(PY) benchmarks/quality_ceiling.py
	$(PY) benchmarks/quality_classifier.py
	$(PY) benchmarks/latency_budget.py
	$(PY) benchmarks/decoder.py
	$(PY) benchmarks/decoder.py --criteria activation+repair --pack --damp 0.1 --append
	$(PY) benchmarks/decoder.py --criteria fluctuation+repair fluctuation+repair@standardized --sparsities 0.2 \
		--pack --damp 0.1 --append
	$(PY) benchmarks/decoder.py --criteria fluctuation+repair@standardized --pack --damp 0.1 \
		--calibration-samples 128 --append
	$(PY) benchmarks/decoder_token_time.py --also $(foreach s,10 20 30,$(DECODER_RUNS)/fluctuation+repair-standardized-$(s)-128x256-tokenwindows-damp0.1)
	$(PY) benchmarks/norm_kernels.py
	$(PY) benchmarks/distill.py
	$(PY) benchmarks/readme_tables.py

clean:
	rm -rf outputs build *.egg-info .pytest_cache .ruff_cache
