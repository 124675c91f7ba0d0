# Set-up and entry points. `make run` and `make test` work on a fresh machine: each
# creates .venv and installs what it needs first (idempotent, fast when done).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test generated docs fuzz bench oracles digits digits-sweeps clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# CPU builds first, pinned: a bare `torch` requirement would pull a multi-GB CUDA build.
	$(BIN)/python -m pip install --quiet torch==2.13.0 tensorflow-cpu==2.21.0
	$(BIN)/python -m pip install --quiet -e '.[torch,keras,plot,test]'
	touch $(STAMP)

install: $(STAMP)

run: install  ## build the bundled specs with every backend and print their tables
	$(BIN)/archc build specs/
	$(BIN)/archc check specs/ examples/

test: install  ## the whole test suite (what CI runs)
	$(BIN)/ruff check .
	$(BIN)/archc check specs/ examples/
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -n 2 --durations=15  # ruff on PATH: the lint tests of generated code run

generated: install  ## rebuild generated/ from specs/
	$(BIN)/archc build specs/ --quiet

docs: install  ## redraw docs/diagrams/ from specs/ and examples/ (a test compares them)
	@mkdir -p docs/diagrams
	@for spec in specs/*.yaml examples/*.yaml; do \
		$(BIN)/archc graph $$spec -o docs/diagrams/$$(basename $$spec .yaml).svg || exit 1; \
	done
	$(BIN)/archc graph examples/unet_resnet34.yaml --depth 1 -o docs/diagrams/unet_resnet34_depth1.svg

# Mutated copies of every spec in specs/ and examples/: each must end in a located error
# or in valid generated code (tests/fuzz.py; the tests run a fixed-seed sample of 250).
FUZZ_CASES ?= 10000
FUZZ_SEED ?= 0
fuzz: install  ## fuzz the compiler with FUZZ_CASES mutated specs; prints the defects and a summary line
	$(BIN)/python tests/fuzz.py --cases $(FUZZ_CASES) --seed $(FUZZ_SEED) --jobs 2

# Benchmarks (not tests): timm and torchvision need torch 2.14.1, so the PyTorch
# comparison runs in its own .venv-bench; see benchmarks/RESULTS.md.
.venv-bench/.installed:
	$(PYTHON) -m venv .venv-bench
	.venv-bench/bin/python -m pip install --quiet torch==2.14.1 torchvision==0.29.1 timm segmentation-models-pytorch pytest
	.venv-bench/bin/python -m pip install --quiet -e .
	touch $@

bench: install .venv-bench/.installed  ## generated models vs timm/torchvision/keras.applications, and compile speed
	.venv-bench/bin/python benchmarks/bench_torch.py --wait-idle 300
	$(BIN)/python benchmarks/bench_keras.py --wait-idle 300
	$(BIN)/python benchmarks/bench_compile.py

# The graph examples against torchvision and smp themselves (they skip in .venv, which has
# neither): counts, shapes and multiply-adds of the references built now, and the generated
# torch models' outputs after a weight copy by structure (tests/test_oracle_copy.py).
oracles: .venv-bench/.installed  ## the graph examples against their torchvision / smp references, feature_info against timm, in .venv-bench
	.venv-bench/bin/python -c "import pytest" 2>/dev/null || .venv-bench/bin/python -m pip install --quiet pytest  # a venv made before pytest was listed
	PYTHONPATH=$(CURDIR) .venv-bench/bin/python -m pytest -q -p no:cacheprovider tests/test_oracle_copy.py tests/test_graph_examples.py tests/test_backbone.py::test_timm_agrees

# A real data set learned (long: tens of minutes per backend on a few CPU cores; not CI):
# scikit-learn's digits as PNG folders, Xception trained on them with both trainers.
DIGITS_TRAIN = specs/xception.yaml -p middle_repeats=1 -p classes=10 --image-size 71 --epochs 10 --no-augment --no-resume \
	--data runs/digits/data/train --val-data runs/digits/data/val --log-every 11
digits: install  ## Xception learns scikit-learn's digits (>= 95% validation top-1) with both backends
	$(BIN)/python -m pip install --quiet -e '.[digits]'
	rm -rf runs/digits/data && $(BIN)/python benchmarks/digits.py runs/digits/data
	$(BIN)/archc train $(DIGITS_TRAIN) --backend torch -o runs/digits/torch
	$(BIN)/archc train $(DIGITS_TRAIN) --backend keras -o runs/digits/keras
	tail -n 3 runs/digits/torch/eval.csv runs/digits/keras/eval.csv

# The paper's three experiments as sweeps on the digits (docs/experiments.md; not CI): Figure 9,
# Figure 10 and the segments spectrum, 3 seeds each, with examples/xception_digits.yaml
# (Xception at an eighth of its widths, 16 x 16 inputs): 30 trials of about 2 minutes on one core.
SWEEP_DIGITS = examples/xception_digits.yaml --epochs 8 --seeds 3 --cpus-per-trial 1 \
	--data runs/digits/data/train --val-data runs/digits/data/val $(SWEEP_ARGS)
digits-sweeps: install  ## Figures 9 and 10 and the segments spectrum on digits with archc sweep (SWEEP_ARGS="--engine ray" ...)
	$(BIN)/python -m pip install --quiet -e '.[digits]'
	test -d runs/digits/data || $(BIN)/python benchmarks/digits.py runs/digits/data
	$(BIN)/archc sweep $(SWEEP_DIGITS) --sweep residual=true,false -o runs/fig9
	$(BIN)/archc sweep $(SWEEP_DIGITS) --sweep between=none,relu,elu -o runs/fig10
	$(BIN)/archc sweep $(SWEEP_DIGITS) --sweep segments=1,2,4,8,depthwise -o runs/spectrum

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
