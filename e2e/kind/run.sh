#!/usr/bin/env bash
# The e2e suite on a kind cluster (`make e2e-kind`; needs Docker and kind on PATH).
#
#  1. creates a kind cluster (name $KIND_CLUSTER_NAME, default aitask-e2e; node image $KIND_NODE_IMAGE
#     or kind's default),
#  2. builds the operator image from the Dockerfile and loads it into the cluster,
#  3. installs KWOK in the cluster: the kwok controller from kwok's release manifests for the version
#     pinned in e2e/tools/kwok/go.mod, kwok's stock node/pod stages of that version (the same files
#     the local control plane loads) and our pod-completion stages e2e/kwok/stages.yaml, as Stage CRs,
#  4. creates the fake GPU/CPU nodes of e2e/nodes.yaml and waits for them to be Ready,
#  5. installs the chart with the built image (pinned to the real kind node, watching only the
#     namespace aitask-kind-smoke so that it never races the operators the suite starts) and runs the
#     sample pipeline through it to Succeeded,
#  6. runs the pytest e2e suite against this cluster (AITASK_E2E_PROVIDER=kubeconfig); extra arguments
#     go to pytest, e.g. `e2e/kind/run.sh -k chart`.
#
# The cluster is deleted at the end unless KEEP_CLUSTER=1. kubectl and helm are the pinned ones from
# e2e/tools/build.sh ($AITASK_E2E_BIN overrides). Only the kind cluster this script created is deleted.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
CLUSTER_NAME="${KIND_CLUSTER_NAME:-aitask-e2e}"
IMAGE="${AITASK_IMAGE:-aitask-operator:e2e}"
SMOKE_NS=aitask-kind-smoke
STATE="$ROOT/.e2e/kind"
export KUBECONFIG="$STATE/kubeconfig"

log() { printf '\n==> %s\n' "$*" >&2; }
die() { printf 'e2e-kind: %s\n' "$*" >&2; exit 1; }

for tool in docker kind; do
  command -v "$tool" >/dev/null || die "$tool is not on PATH (the kind path needs Docker and kind)"
done
docker info >/dev/null 2>&1 || die "the Docker daemon is not reachable"
[[ -x .venv/bin/pytest ]] || die "no .venv: run 'make setup' first"

BIN="${AITASK_E2E_BIN:-$(bash e2e/tools/build.sh | tail -n1)}"
export AITASK_E2E_BIN="$BIN"
KUBECTL="$BIN/kubectl"
HELM="$BIN/helm"
KWOK_VERSION="$(awk '$1 == "sigs.k8s.io/kwok" {print $2}' e2e/tools/kwok/go.mod)"
[[ -n "$KWOK_VERSION" ]] || die "cannot read the kwok version from e2e/tools/kwok/go.mod"
mkdir -p "$STATE"

created=0
cleanup() {
  local rc=$?
  if [[ $created == 1 && "${KEEP_CLUSTER:-0}" != 1 ]]; then
    log "deleting kind cluster $CLUSTER_NAME"
    kind delete cluster --name "$CLUSTER_NAME" || true
  elif [[ $created == 1 ]]; then
    printf 'kept: export KUBECONFIG=%s; kind delete cluster --name %s\n' "$KUBECONFIG" "$CLUSTER_NAME" >&2
  fi
  exit $rc
}
trap cleanup EXIT

if kind get clusters 2>/dev/null | grep -qx "$CLUSTER_NAME"; then
  die "a kind cluster named $CLUSTER_NAME exists already; delete it or set KIND_CLUSTER_NAME"
fi
log "creating kind cluster $CLUSTER_NAME"
kind create cluster --name "$CLUSTER_NAME" --kubeconfig "$KUBECONFIG" --wait 180s \
  ${KIND_NODE_IMAGE:+--image "$KIND_NODE_IMAGE"}
created=1
KIND_NODE="${CLUSTER_NAME}-control-plane"

log "building $IMAGE and loading it into the cluster"
docker build -t "$IMAGE" "$ROOT"
kind load docker-image "$IMAGE" --name "$CLUSTER_NAME"

log "installing kwok $KWOK_VERSION and the stages"
"$KUBECTL" apply -f "https://github.com/kubernetes-sigs/kwok/releases/download/${KWOK_VERSION}/kwok.yaml"
"$KUBECTL" -n kube-system rollout status deployment/kwok-controller --timeout=180s
"$KUBECTL" wait --for=condition=Established --timeout=60s crd/stages.kwok.x-k8s.io
# kwok's stock stages, except its instant pod-complete (ours completes pods after sim.aitask.dev/duration).
for stage in node-initialize node-heartbeat-with-lease pod-ready pod-delete; do
  "$KUBECTL" apply -f "$BIN/kwok-stages/$stage.yaml"
done
"$KUBECTL" apply -f e2e/kwok/stages.yaml

log "creating the fake nodes of e2e/nodes.yaml"
"$KUBECTL" apply -f e2e/nodes.yaml
nodes=$(awk '/^kind: Node/{n=1} n && /^  name: /{print $2; n=0}' e2e/nodes.yaml)
for node in $nodes; do
  "$KUBECTL" wait --for=condition=Ready --timeout=120s "node/$node"
done

log "installing the chart (operator on $KIND_NODE, watching $SMOKE_NS)"
"$KUBECTL" create namespace "$SMOKE_NS"
"$KUBECTL" apply --server-side -f charts/aitask-operator/crds/
"$HELM" install aitask-operator charts/aitask-operator -n aitask-system --create-namespace \
  --set image.repository="${IMAGE%:*}" --set image.tag="${IMAGE##*:}" --set image.pullPolicy=Never \
  --set "operator.watchNamespaces={$SMOKE_NS}" --set operator.schedulingPeriodSeconds=1 \
  --set-string "nodeSelector.kubernetes\.io/hostname=$KIND_NODE" \
  --wait --timeout 180s

log "smoke: the sample pipeline through the in-cluster operator"
"$KUBECTL" apply --server-side -f manifests/samples/executorclasses.yaml
"$KUBECTL" apply --server-side -n "$SMOKE_NS" -f manifests/samples/pipeline.yaml
if ! "$KUBECTL" -n "$SMOKE_NS" wait aitask/pipeline --for=jsonpath='{.status.phase}'=Succeeded --timeout=300s; then
  "$KUBECTL" -n "$SMOKE_NS" get aitasks,jobs,pods -o wide || true
  "$KUBECTL" -n aitask-system logs deployment/aitask-operator --tail=200 || true
  die "the sample pipeline did not succeed"
fi
"$KUBECTL" -n "$SMOKE_NS" get aitasks
"$KUBECTL" delete -n "$SMOKE_NS" -f manifests/samples/pipeline.yaml --wait=true
"$KUBECTL" delete -f manifests/samples/executorclasses.yaml

log "running the e2e suite against the kind cluster"
AITASK_E2E_PROVIDER=kubeconfig .venv/bin/pytest -q e2e "$@"
