"""kube-apiserver SIGKILLed mid-run and started again (etcd keeps the state): the operator's watches resume,
tasks created after the restart get their Jobs within 30 s, nothing is lost or duplicated."""

from __future__ import annotations

import random
import time
from collections.abc import Callable

import pytest

from e2e.chaos.lib import JobWatch, Size, audit, create_tasks, pipeline, seed, table, wait_all
from e2e.cluster import Cluster
from e2e.operator import Operator
from e2e.util import list_objects, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]
ADMISSION_BOUND = 30.0  # seconds from creation to the first Job, for tasks created after the restart


def test_apiserver_killed_and_restarted(cluster: Cluster, namespace: str, operators: Callable[..., Operator],
                                        size: Size) -> None:
    rng = random.Random(s := seed())
    before = [f"pre-{i:02d}" for i in range(size.outage_tasks)]
    after = [f"post-{i:02d}" for i in range(size.outage_tasks)]
    op = operators()
    op.wait_metrics(60)
    with JobWatch(cluster, namespace) as watch:
        create_tasks(cluster, namespace, [pipeline(n, rng) for n in before])
        # Mid-run: some Jobs exist and some pods run when the API server goes away.
        wait_for(lambda: len(list_objects(cluster, "jobs", namespace)) >= max(2, len(before) // 2), timeout=90,
                 what="the first Jobs", describe=lambda: op.log(60))
        killed_at = time.monotonic()
        ready_after = cluster.restart_apiserver(size.outage_seconds)
        ready_at = time.monotonic()
        # The first Job created by the operator after the API server came back: how long recovery took.
        created = create_tasks(cluster, namespace, [pipeline(n, rng) for n in after])

        def first_jobs() -> dict[str, float] | None:
            seen = {n: min((t for k, t in watch.first_seen.items() if k.startswith(f"{namespace}/{n}-")),
                           default=0.0) for n in after}
            return seen if all(seen.values()) else None

        first = wait_for(first_jobs, timeout=ADMISSION_BOUND + 30, interval=0.5,
                         what="a Job for every task created after the restart", describe=lambda: op.log(80))
        latencies = {n: first[n] - created[n] for n in after}
        recovered = min(t for t in watch.first_seen.values() if t > ready_at) - ready_at
        wait_all(cluster, namespace, before + after, "Succeeded", timeout=300, describe=lambda: op.log(80))
    result = audit(cluster, namespace, before + after)
    log = op.log_path.read_text()
    table(f"kube-apiserver killed and restarted ({size.name}, seed {s})", {
        **result.rows(), "outage seconds (kill to ready)": round(ready_at - killed_at, 1),
        "apiserver start to ready s": round(ready_after, 1),
        "first new Job after ready s": round(recovered, 1),
        "create->Job after restart s (max)": round(max(latencies.values()), 1),
        "operator restarts": op.starts - 1, "tracebacks in log": log.count("Traceback (most recent call last)"),
    })
    assert op.alive() and op.starts == 1, "the operator died with the API server"
    late = {n: round(v, 1) for n, v in latencies.items() if v > ADMISSION_BOUND}
    assert not late, f"tasks created after the restart waited longer than {ADMISSION_BOUND:.0f} s: {late}"
    assert result.tasks == 2 * len(before) == result.succeeded and result.jobs == result.subtasks
    assert (result.duplicates, result.lost, result.stuck, result.extra_attempts, result.left_running) == \
        (0, 0, 0, 0, 0), result.problems[:20]
    # An Event whose post (or whose status write) the outage cut off is lost, never doubled.
    assert result.duplicate_events == 0, result.problems[:20]
