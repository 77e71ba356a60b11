# The two commands: `make demo` and `make test`. Both install into .venv first.
# ACCEL=cpu (default) installs the CPU stack; ACCEL=cuda the CUDA builds of
# torch and fbgemm-gpu from TORCH_INDEX.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
ACCEL ?= cpu
VENV ?= .venv
TORCH_INDEX ?= https://download.pytorch.org/whl/cu128
TORCHREC_VERSION := 1.8.0
DEMO_DIR ?= .demo
DEMO_ROWS ?= 3000000
# Empty: DIN trains the whole epoch like DLRM (about 2.7x its time); a number caps DIN's steps.
DEMO_DIN_STEPS ?=

PY := $(VENV)/bin/python
RECSYS := $(VENV)/bin/recsys
STAMP := $(VENV)/.installed-$(ACCEL)
UV_VERSION := 0.13.9
# INSTALLER=pip installs with pip alone (slower: 2 min 13 s against 50 s for uv here).
INSTALLER ?= uv
PIP_ONLY := $(PY) -m pip install --disable-pip-version-check --quiet
ifeq ($(INSTALLER),uv)
PIP := $(PY) tools/uv_install.py --quiet
else
PIP := $(PIP_ONLY)
endif
ifeq ($(ACCEL),cuda)
PIP_INDEX := --extra-index-url $(TORCH_INDEX)
endif

.PHONY: install demo test bench clean

install: $(STAMP)

# Re-runs only when the pins or the package metadata change; otherwise a no-op.
$(STAMP): pyproject.toml requirements/common.txt requirements/$(ACCEL).txt tools/uv_install.py
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(if $(filter uv,$(INSTALLER)),$(PIP_ONLY) uv==$(UV_VERSION))
	$(PIP) $(PIP_INDEX) -r requirements/$(ACCEL).txt
	$(PIP) --no-deps torchrec==$(TORCHREC_VERSION)
	$(PIP) --no-deps --no-build-isolation -e .
	@rm -f $(VENV)/.installed-* && touch $@
	@echo "installed the $(ACCEL) stack into $(VENV)"

demo: install
	$(RECSYS) data synth --kind ctr --format criteo-tsv --rows 20000 --out $(DEMO_DIR)/criteo-raw --overwrite
	$(RECSYS) data prepare --format criteo --input $(DEMO_DIR)/criteo-raw --out $(DEMO_DIR)/criteo --overwrite
	$(RECSYS) data synth --kind ctr --rows $(DEMO_ROWS) --out $(DEMO_DIR)/ctr --overwrite
	rm -rf $(DEMO_DIR)/runs/dlrm $(DEMO_DIR)/runs/din
	$(RECSYS) train --model dlrm --data $(DEMO_DIR)/ctr --out $(DEMO_DIR)/runs/dlrm --config configs/dlrm.yaml
	$(RECSYS) train --model din --data $(DEMO_DIR)/ctr --out $(DEMO_DIR)/runs/din --config configs/din.yaml \
		$(if $(DEMO_DIN_STEPS),--set trainer.max_steps=$(DEMO_DIN_STEPS))
	$(RECSYS) features materialize --data $(DEMO_DIR)/ctr --artifact $(DEMO_DIR)/runs/dlrm/artifact
	$(PY) -m services.ranking.demo --artifact $(DEMO_DIR)/runs/dlrm/artifact --data $(DEMO_DIR)/ctr
	$(RECSYS) report --artifact $(DEMO_DIR)/runs/dlrm/artifact --artifact $(DEMO_DIR)/runs/din/artifact \
		--data $(DEMO_DIR)/ctr --bench benchmarks/results --out $(DEMO_DIR)/report.html

test: install
	$(PY) -m pytest

bench: install
	$(PY) benchmarks/bench_data.py
	$(PY) benchmarks/bench_train.py
	$(PY) benchmarks/bench_serve.py
	$(PY) benchmarks/bench_models.py  # every registered model × 3 data sets × 3 seeds: ~10 h on 2 idle cores

clean:
	rm -rf $(VENV) $(DEMO_DIR) benchmarks/work
