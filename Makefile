# aitask-operator — `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help
PY := .venv/bin/python
export GOTOOLCHAIN := local

.PHONY: help
help: ## list the targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2}'

.PHONY: setup
setup: ## install everything: prometheus (apt), .venv, control-plane binaries (cached)
	@bash scripts/setup.sh

.PHONY: demo
demo: setup ## see it work: local control plane + GPU pools, chart, operator, a pipeline placed and run
	$(PY) scripts/demo.py

.PHONY: test
test: setup lint unit e2e ## the whole suite: lint, types, layering, CRD drift, unit and e2e tests

.PHONY: lint
lint: ## ruff, mypy --strict, import-linter layering, generated-file drift
	.venv/bin/ruff check operator tests e2e bench
	.venv/bin/ruff format --check operator
	.venv/bin/mypy
	.venv/bin/lint-imports
	@$(MAKE) --no-print-directory check-generated chart-lint

.PHONY: unit
unit: ## unit and handler tests (no cluster)
	.venv/bin/pytest -q tests

.PHONY: e2e
e2e: ## end-to-end tests on the local control plane (real apiserver, KCM, scheduler, KWOK, Prometheus; chaos suite small)
	AITASK_CHAOS_SIZE=small .venv/bin/pytest -q e2e

.PHONY: chaos
chaos: ## the chaos suite at full size (200-pipeline kill -9 storm, API server and peer kills, node loss, 300 bad AITasks)
	AITASK_CHAOS_SIZE=full .venv/bin/pytest -q e2e/chaos

.PHONY: crds
crds: ## regenerate crds/ and docs/crd-reference.md from the pydantic models
	$(PY) -m aitask crds --out-dir crds
	$(PY) -m aitask crds --markdown > docs/crd-reference.md
	@$(MAKE) --no-print-directory manifests

.PHONY: check-generated
check-generated: ## fail if crds/ or docs/crd-reference.md drift from the models
	@tmp=$$(mktemp -d); $(PY) -m aitask crds --out-dir $$tmp; $(PY) -m aitask crds --markdown > $$tmp/ref.md; \
	  diff -ru crds $$tmp --exclude=ref.md || { echo "crds/ is stale: run 'make crds'"; exit 1; }; \
	  diff -u docs/crd-reference.md $$tmp/ref.md || { echo "docs/crd-reference.md is stale: run 'make crds'"; exit 1; }; \
	  rm -rf $$tmp
	$(PY) scripts/render_manifests.py --helm $(HELM_BIN) --check

.PHONY: cluster-up
cluster-up: setup ## start the local control plane with fake GPU pools (leaves it running)
	$(PY) -m e2e.cluster up

.PHONY: cluster-down
cluster-down: ## stop the local control plane
	$(PY) -m e2e.cluster down

.PHONY: gantt
gantt: ## redraw docs/img/simulate-gantt.png from `aitask simulate` on the samples
	$(PY) scripts/gantt.py --out docs/img/simulate-gantt.png

.PHONY: bench
bench: ## run the benchmarks (ratios measured in one run)
	for b in quality heterogeneity learning speed preemption; do $(PY) bench/$$b.py || exit 1; done

SCALE_ARGS ?=
.PHONY: scale
scale: setup ## cluster-scale benchmark on the local control plane (issue 9 sizes; SCALE_ARGS=--small for ~10 min)
	$(PY) bench/scale.py --json .e2e/scale.json $(SCALE_ARGS)

# ---- chart, manifests, image, kind (issue 6) ------------------------------------------------------------
HELM_BIN = $(shell bash e2e/tools/build.sh | tail -n1)/helm

.PHONY: chart-lint
chart-lint: ## helm lint --strict the chart; validate its rendering (defaults, all options) with kubernetes-validate
	$(HELM_BIN) lint --strict charts/aitask-operator
	$(HELM_BIN) lint --strict charts/aitask-operator -f charts/aitask-operator/ci/all-options-values.yaml
	@set -e; tmp=$$(mktemp -d); trap 'rm -rf $$tmp' EXIT; \
	  $(HELM_BIN) template aitask-operator charts/aitask-operator -n aitask-system --include-crds > $$tmp/defaults.yaml; \
	  $(HELM_BIN) template aitask-operator charts/aitask-operator -n aitask-system --include-crds \
	    -f charts/aitask-operator/ci/all-options-values.yaml > $$tmp/all.yaml; \
	  for v in 1.34.0 1.36.0; do .venv/bin/kubernetes-validate --strict --quiet -k $$v $$tmp/defaults.yaml $$tmp/all.yaml; done

.PHONY: manifests
manifests: ## copy crds/ into the chart and render manifests/install.yaml from it (run after `make crds`)
	$(PY) scripts/render_manifests.py --helm $(HELM_BIN)

.PHONY: image
image: ## build the operator image (needs Docker): aitask-operator:<version>
	docker build -t aitask-operator:$$($(PY) -c 'import aitask; print(aitask.__version__)') .

.PHONY: e2e-kind
e2e-kind: ## the e2e suite on a kind cluster with in-cluster KWOK and the chart (needs Docker and kind)
	bash e2e/kind/run.sh
