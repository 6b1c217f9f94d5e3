"""Keeps the chart's copies in step: charts/aitask-operator/crds/ (our CRDs from crds/ plus Kopf's peering
CRDs) and manifests/install.yaml (the chart rendered for ``kubectl apply --server-side -f``).

    python scripts/render_manifests.py            # rewrite both (make manifests)
    python scripts/render_manifests.py --check    # exit 1 and show a diff when either is stale

helm: ``--helm PATH``, else ``$HELM``, else the pinned one from e2e/tools/build.sh (cached build).
"""

from __future__ import annotations

import argparse
import difflib
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "aitask-operator"
CRDS = ROOT / "crds"
CHART_CRDS = CHART / "crds"
INSTALL = ROOT / "manifests" / "install.yaml"
RELEASE = "aitask-operator"
NAMESPACE = "aitask-system"

HEADER = f"""\
# aitask-operator: everything in one file, rendered from charts/aitask-operator with the default values
# (`make manifests`; do not edit by hand). Install or upgrade with
#   kubectl apply --server-side -f manifests/install.yaml
# Release name {RELEASE!r}, namespace {NAMESPACE!r}. For any other setting use the Helm chart.
# The ClusterKopfPeering at the end needs its CRD (first in this file) to be established: when
# kubectl reports "no matches for kind ClusterKopfPeering" on a fresh cluster, run the command again.
---
apiVersion: v1
kind: Namespace
metadata:
  name: {NAMESPACE}
  labels:
    app.kubernetes.io/part-of: aitask-operator
    pod-security.kubernetes.io/enforce: restricted
"""


def find_helm(explicit: str | None = None) -> str:
    if explicit:
        return explicit
    if os.environ.get("HELM"):
        return os.environ["HELM"]
    proc = subprocess.run(["bash", str(ROOT / "e2e" / "tools" / "build.sh")], stdout=subprocess.PIPE, text=True,
                          check=False)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode == 0 and lines and (Path(lines[-1]) / "helm").exists():
        return str(Path(lines[-1]) / "helm")
    found = shutil.which("helm")
    if not found:
        sys.exit("no helm: pass --helm, set $HELM, or run `bash e2e/tools/build.sh`")
    return found


def chart_crds() -> dict[str, str]:
    """File name -> text the chart's crds/ folder must hold for our generated CRDs."""
    return {p.name: p.read_text() for p in sorted(CRDS.glob("*.yaml"))}


def render_install(helm: str) -> str:
    out = subprocess.run(
        [helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE, "--include-crds"],
        capture_output=True, text=True, check=True,
    ).stdout
    # helm prints `# Source: <chart>/<path>`; nothing in it depends on the machine.
    return HEADER + out


def _diff(name: str, want: str, have: str) -> str:
    return "".join(difflib.unified_diff(have.splitlines(True), want.splitlines(True), f"{name} (committed)",
                                        f"{name} (expected)"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="fail when a file is stale instead of writing it")
    parser.add_argument("--helm", default=None, help="helm binary")
    args = parser.parse_args(argv)
    stale: list[str] = []
    for name, text in chart_crds().items():
        target = CHART_CRDS / name
        have = target.read_text() if target.exists() else ""
        if have != text:
            if args.check:
                stale.append(_diff(str(target.relative_to(ROOT)), text, have))
            else:
                target.write_text(text)
    want = render_install(find_helm(args.helm))
    have = INSTALL.read_text() if INSTALL.exists() else ""
    if have != want:
        if args.check:
            stale.append(_diff(str(INSTALL.relative_to(ROOT)), want, have))
        else:
            INSTALL.write_text(want)
    if stale:
        sys.stdout.write("".join(stale))
        print("stale generated files: run `make manifests`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
