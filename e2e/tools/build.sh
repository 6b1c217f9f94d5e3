#!/usr/bin/env bash
# Builds the local control plane's binaries (kube-apiserver, kube-controller-manager,
# kube-scheduler, kubectl, etcd, kwok, helm) from the pinned Go modules beside this
# script into a cache folder keyed by the pinned versions and the Go toolchain:
#   ${AITASK_CACHE:-~/.cache/aitask}/bin/<key>/
# A warm run (every binary present and executable) costs well under a second. Concurrent runs
# serialise on a lock, so two test sessions never build into the same folder at once.
# Prints the folder on stdout; progress goes to stderr.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS="-trimpath -mod=mod -buildvcs=false"

pinned() {  # pinned MODULE_DIR MODULE_PATH -> the version required in that go.mod
  awk -v m="$2" '($1 == m && $2 ~ /^v/) {print $2} ($1 == "require" && $2 == m) {print $3}' "$here/$1/go.mod"
}
K8S_VERSION=$(pinned k8s k8s.io/kubernetes)
ETCD_VERSION=$(pinned etcd go.etcd.io/etcd/server/v3)
KWOK_VERSION=$(pinned kwok sigs.k8s.io/kwok)
HELM_VERSION=$(pinned helm helm.sh/helm/v3)
for v in "$K8S_VERSION" "$ETCD_VERSION" "$KWOK_VERSION" "$HELM_VERSION"; do
  [[ $v == v* ]] || { echo "build.sh: cannot read a pinned version from e2e/tools/*/go.mod" >&2; exit 1; }
done
GO_VERSION=$(go env GOVERSION)
# Bump RECIPE when the way the binaries are built changes (flags, ldflags, the set of binaries);
# comments and other edits of this script do not invalidate the cache.
RECIPE=1
# The modules are named, not globbed: e2e/tools/kueue/ has its own key (build-kueue.sh), and
# adding it here would rebuild every binary. The order (alphabetical) keeps the key of the glob.
sum=$(cat "$here"/{etcd,helm,k8s,kwok}/go.mod "$here"/{etcd,helm,k8s,kwok}/go.sum | sha256sum | cut -c1-12)
key="k8s-${K8S_VERSION}_etcd-${ETCD_VERSION}_kwok-${KWOK_VERSION}_helm-${HELM_VERSION}_${GO_VERSION}_r${RECIPE}_${sum}"
bin="${AITASK_CACHE:-$HOME/.cache/aitask}/bin/$key"

all=(kube-apiserver kube-controller-manager kube-scheduler kubectl etcd kwok helm)
ready() { for b in "${all[@]}"; do [ -x "$bin/$b" ] || return 1; done; }
if ready; then echo "$bin"; exit 0; fi

mkdir -p "$(dirname "$bin")"
exec 9>"$bin.lock"
flock 9  # another build of the same key may be running: wait for it
if ready; then echo "$bin"; exit 0; fi
mkdir -p "$bin.partial"
log() { echo "[build.sh $(date +%H:%M:%S)] $*" >&2; }
major_minor=${K8S_VERSION#v}; major=${major_minor%%.*}; minor=${major_minor#*.}; minor=${minor%%.*}
stamp="2026-01-01T00:00:00Z"
k8s_ldflags="-s -w"
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  k8s_ldflags+=" -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=$major -X $p.gitMinor=$minor"
  k8s_ldflags+=" -X $p.gitTreeState=clean -X $p.buildDate=$stamp"
done
helm_ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
helm_ldflags+=" -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=$major -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$minor"
helm_ldflags+=" -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=$major -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$minor"
etcd_ldflags="-s -w"

build() {  # build MODULE_DIR LDFLAGS PACKAGE...
  local dir=$1 ldf=$2; shift 2
  local t0=$SECONDS
  log "building $* ..."
  (cd "$here/$dir" && go build -ldflags "$ldf" -o "$bin.partial/" "$@")
  log "built $* in $((SECONDS - t0)) s"
}
t_all=$SECONDS
if [ ! -x "$bin.partial/etcd" ]; then  # the package path ends in /v3, so name the binary ourselves
  log "building etcd ..."; t0=$SECONDS
  (cd "$here/etcd" && go build -ldflags "$etcd_ldflags" -o "$bin.partial/etcd" go.etcd.io/etcd/server/v3)
  log "built etcd in $((SECONDS - t0)) s"
fi
[ -x "$bin.partial/kwok" ] || build kwok "-s -w" sigs.k8s.io/kwok/cmd/kwok
[ -x "$bin.partial/helm" ] || build helm "$helm_ldflags" helm.sh/helm/v3/cmd/helm
for c in kube-apiserver kube-controller-manager kube-scheduler kubectl; do
  [ -x "$bin.partial/$c" ] || build k8s "$k8s_ldflags" "k8s.io/kubernetes/cmd/$c"
done
# kwok embeds its stock stage files; keep the ones the harness uses next to the binary.
kwok_src=$(cd "$here/kwok" && go list -m -f '{{.Dir}}' sigs.k8s.io/kwok)
mkdir -p "$bin.partial/kwok-stages"
for f in node/fast/node-initialize.yaml node/heartbeat-with-lease/node-heartbeat-with-lease.yaml \
         pod/fast/pod-ready.yaml pod/fast/pod-delete.yaml; do
  cp "$kwok_src/kustomize/stage/$f" "$bin.partial/kwok-stages/$(basename "$f")"
done
chmod u+w "$bin.partial/kwok-stages"/*
"$bin.partial/kube-apiserver" --version >&2
"$bin.partial/etcd" --version | head -1 >&2
log "cold build finished in $((SECONDS - t_all)) s"
rm -rf "$bin" && mv "$bin.partial" "$bin"
echo "$bin"
