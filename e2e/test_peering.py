"""Two operator replicas with Kopf peering: exactly one acts, the other takes over when it exits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from e2e.cluster import Cluster
from e2e.operator import Operator
from e2e.test_operator import aitask, classes, sim, wait_phase  # noqa: F401  (classes: fixture)
from e2e.util import events, list_objects, wait_for

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parent.parent
PEERING_CRD = REPO / "charts" / "aitask-operator" / "crds" / "kopf.dev_kopfpeerings.yaml"
STEP = [{"name": "work", "type": "preprocess", "image": "registry.example/peer:e2e", "podMetadata": sim("2s")}]


def test_only_the_oldest_replica_acts_and_a_standby_takes_over(
    cluster: Cluster, namespace: str, classes: dict[str, Any], tmp_path: Path  # noqa: F811
) -> None:
    cluster.kubectl("apply", "--server-side", "-f", str(PEERING_CRD))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=30s", "crd/kopfpeerings.kopf.dev")
    cluster.apply({"apiVersion": "kopf.dev/v1", "kind": "KopfPeering", "metadata": {"name": "aitask-operator"}},
                  namespace=namespace)
    first = Operator(cluster, namespace, tmp_path, name="first", standalone=False).start()
    second: Operator | None = None
    try:
        cluster.apply(aitask("one", STEP), namespace=namespace)
        wait_phase(cluster, first, namespace, "one", "Succeeded")
        second = Operator(cluster, namespace, tmp_path, name="second", standalone=False).start()
        # It starts paused: its watch streams wait on the peering of the older, higher-priority replica.
        wait_for(lambda: "(blockers: aitask-operator@" in second.log(400), timeout=60,
                 what="the newer replica to start paused", describe=second.log)

        cluster.apply(aitask("two", STEP), namespace=namespace)
        wait_phase(cluster, first, namespace, "two", "Succeeded")
        assert "cycle (" not in second.log(2000), "the standby replica ran a scheduling cycle"

        first.stop()  # a graceful exit removes its peering entry at once
        wait_for(lambda: "Resuming operations" in second.log(400), timeout=60,
                 what="the standby to resume", describe=second.log)
        cluster.apply(aitask("three", STEP), namespace=namespace)
        wait_phase(cluster, second, namespace, "three", "Succeeded")
        jobs = sorted(j["metadata"]["name"] for j in list_objects(cluster, "jobs", namespace))
        assert jobs == ["one-work-1", "three-work-1", "two-work-1"]
        started = [e for e in events(cluster, namespace) if e["reason"] == "AttemptStarted"]
        assert len(started) == 3
    finally:
        print(f"--- first ---\n{first.log(150)}\n--- second ---\n{second.log(150) if second else ''}")
        first.stop()
        if second is not None:
            second.stop()
