#!/usr/bin/env bash
# Everything a fresh machine needs for `make test` and `make demo`, idempotent and cached:
#   1. Debian packages: prometheus (the real server, for the telemetry e2e tests)
#   2. .venv/ with the project and its dev tools (pinned in pyproject.toml)
#   3. the control-plane binaries built from e2e/tools (cached in ~/.cache/aitask/bin/<versions>)
#   4. the Kueue manager built from e2e/tools/kueue (its own cache key, ~/.cache/aitask/bin/kueue-<version>...)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
log() { echo "[setup $(date +%H:%M:%S)] $*" >&2; }

if ! command -v prometheus >/dev/null 2>&1; then
  log "installing Debian package prometheus"
  sudo_=""; [ "$(id -u)" = 0 ] || sudo_="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo_ apt-get update -qq
  # policy-rc.d keeps the package's own service from starting; the tests run their own server.
  printf '#!/bin/sh\nexit 101\n' | $sudo_ tee /usr/sbin/policy-rc.d >/dev/null; $sudo_ chmod +x /usr/sbin/policy-rc.d
  $sudo_ apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  $sudo_ rm -f /usr/sbin/policy-rc.d
fi

stamp=.venv/.installed-$(sha256sum pyproject.toml | cut -c1-12)
if [ ! -f "$stamp" ]; then
  log "creating .venv and installing the project"
  python3 -m venv .venv
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e '.[dev]'
  rm -f .venv/.installed-*; touch "$stamp"
fi

log "control-plane binaries (cold build ~10 min on 2 cores, then cached)"
bin=$(bash e2e/tools/build.sh)
log "binaries in $bin"
log "Kueue manager (for the Kueue interop test; cold build a few minutes, then cached)"
kueue_bin=$(bash e2e/tools/build-kueue.sh)
log "Kueue in $kueue_bin"
