#!/usr/bin/env bash
# Builds the Kueue manager from the Go module pinned in e2e/tools/kueue/go.mod into its own cache
# folder, keyed by the pinned version and the Go toolchain (separate from build.sh's key, so the
# control-plane binaries are not rebuilt when Kueue moves):
#   ${AITASK_CACHE:-~/.cache/aitask}/bin/<key>/kueue
# Also keeps Kueue's CRDs (config/components/crd/bases of the module) next to the binary.
# A warm run costs well under a second; concurrent runs serialise on a lock.
# Prints the folder on stdout; progress goes to stderr.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS="-trimpath -mod=mod -buildvcs=false"

KUEUE_VERSION=$(awk '($1 == "sigs.k8s.io/kueue" && $2 ~ /^v/) {print $2}' "$here/kueue/go.mod")
[[ $KUEUE_VERSION == v* ]] || { echo "build-kueue.sh: cannot read the pinned Kueue version from e2e/tools/kueue/go.mod" >&2; exit 1; }
GO_VERSION=$(go env GOVERSION)
# Bump RECIPE when the way the binary is built changes; comments do not invalidate the cache.
RECIPE=1
sum=$(cat "$here/kueue/go.mod" "$here/kueue/go.sum" | sha256sum | cut -c1-12)
key="kueue-${KUEUE_VERSION}_${GO_VERSION}_r${RECIPE}_${sum}"
bin="${AITASK_CACHE:-$HOME/.cache/aitask}/bin/$key"

ready() { [ -x "$bin/kueue" ] && [ -d "$bin/crds" ]; }
if ready; then echo "$bin"; exit 0; fi

mkdir -p "$(dirname "$bin")"
exec 9>"$bin.lock"
flock 9  # another build of the same key may be running: wait for it
if ready; then echo "$bin"; exit 0; fi
log() { echo "[build-kueue.sh $(date +%H:%M:%S)] $*" >&2; }
rm -rf "$bin.partial" && mkdir -p "$bin.partial/crds"
t0=$SECONDS
log "building sigs.k8s.io/kueue/cmd/kueue $KUEUE_VERSION ..."
ldflags="-s -w -X sigs.k8s.io/kueue/pkg/version.GitVersion=$KUEUE_VERSION"
(cd "$here/kueue" && go build -ldflags "$ldflags" -o "$bin.partial/kueue" sigs.k8s.io/kueue/cmd/kueue)
src=$(cd "$here/kueue" && go list -m -f '{{.Dir}}' sigs.k8s.io/kueue)
cp "$src"/config/components/crd/bases/*.yaml "$bin.partial/crds/"
chmod u+w "$bin.partial/crds"/*
log "cold build finished in $((SECONDS - t0)) s"
rm -rf "$bin" && mv "$bin.partial" "$bin"
echo "$bin"
