"""The active peer SIGKILLed while a standby runs (Kopf peering, no --standalone): the dead peer cannot
leave the peering object, so the standby takes over when the dead one's entry expires (the peering
lifetime, 60 s); no sub-task is admitted by both."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest

from e2e.chaos.lib import JobWatch, Size, audit, create_tasks, needs_slow, pipeline, seed, table, wait_all
from e2e.cluster import Cluster
from e2e.operator import Operator
from e2e.util import list_objects, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]
REPO = Path(__file__).resolve().parents[2]
PEERING_CRD = REPO / "charts" / "aitask-operator" / "crds" / "kopf.dev_kopfpeerings.yaml"
LIFETIME = 60.0  # Kopf's settings.peering.lifetime default; the operator does not change it


def _cycles(op: Operator) -> int:
    return op.log_path.read_text().count("cycle (") if op.log_path.exists() else 0


def test_active_peer_killed_standby_takes_over(cluster: Cluster, namespace: str,
                                               operators: Callable[..., Operator], size: Size) -> None:
    needs_slow(size)
    rng = random.Random(s := seed())
    cluster.kubectl("apply", "--server-side", "-f", str(PEERING_CRD))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=30s", "crd/kopfpeerings.kopf.dev")
    cluster.apply({"apiVersion": "kopf.dev/v1", "kind": "KopfPeering", "metadata": {"name": "aitask-operator"}},
                  namespace=namespace)
    active = operators(name="active", standalone=False)
    active.wait_metrics(60)
    standby = operators(name="standby", standalone=False)
    wait_for(lambda: "(blockers: aitask-operator@" in standby.log(400) or "Pausing operations" in standby.log(400),
             timeout=60, what="the standby to start paused", describe=standby.log)
    first = [f"peer-a-{i:02d}" for i in range(size.peer_tasks)]
    second = [f"peer-b-{i:02d}" for i in range(size.peer_tasks)]
    with JobWatch(cluster, namespace) as watch:
        create_tasks(cluster, namespace, [pipeline(n, rng) for n in first])
        hit = watch.next_added(after=time.monotonic(), timeout=60)  # a Job that appears from now on
        assert hit is not None, active.log(80)
        time.sleep(max(0.0, hit[0] + rng.uniform(0.0, 0.3) - time.monotonic()))
        assert _cycles(standby) == 0, "the standby ran a scheduling cycle while the active peer was alive"
        resumes = standby.log_path.read_text().count("Resuming operations")
        active.kill()
        killed_at, killed_wall = time.monotonic(), time.time()
        create_tasks(cluster, namespace, [pipeline(n, rng) for n in second])
        wait_for(lambda: standby.log_path.read_text().count("Resuming operations") > resumes,
                 timeout=LIFETIME + 60, interval=0.5,
                 what="the standby to resume", describe=lambda: standby.log(80))
        resumed = time.monotonic() - killed_at
        later = watch.next_added(after=killed_at + resumed, timeout=60)

        wait_all(cluster, namespace, first + second, "Succeeded", timeout=400, describe=lambda: standby.log(80))
    result = audit(cluster, namespace, first + second)
    # Between the kill and the takeover nobody creates a Job (creationTimestamp has 1 s resolution; the
    # watch may deliver events late, so the server's clock decides).
    created = {j["metadata"]["name"]: datetime.fromisoformat(j["metadata"]["creationTimestamp"].replace("Z", "+00:00"))
               for j in list_objects(cluster, "jobs", namespace)}
    meanwhile = sorted(n for n, t in created.items() if killed_wall + 2 < t.timestamp() < killed_wall + resumed - 2)
    table(f"active peer SIGKILLed, standby takes over ({size.name}, seed {s})", {
        **result.rows(), "kill aimed ms after a new Job": round((killed_at - hit[0]) * 1000),
        "takeover s after the kill": round(resumed, 1), "peering lifetime s": LIFETIME,
        "first Job by the standby s after the kill": round(later[0] - killed_at, 1) if later else "-",
        "Jobs created between kill and takeover": len(meanwhile),
    })
    assert not meanwhile, meanwhile
    assert resumed <= LIFETIME + 15, f"the standby resumed {resumed:.0f} s after the kill"
    assert _cycles(standby) > 0, "the standby never scheduled"
    assert result.tasks == 2 * size.peer_tasks == result.succeeded and result.jobs == result.subtasks
    # Admitted by both would show as two attempts of one sub-task or two Jobs for one attempt.
    assert (result.duplicates, result.lost, result.stuck, result.extra_attempts, result.left_running) == \
        (0, 0, 0, 0, 0), result.problems[:20]
    assert result.duplicate_events == 0, result.problems[:20]
