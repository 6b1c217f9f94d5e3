"""kill -9 storm: the operator SIGKILLed again and again while three-step pipelines run, part of the kills
aimed 0-300 ms after a new Job appeared (the window between a Job's creation and the status write that
records it), restarted each time. Nothing may be duplicated, lost or left running."""

from __future__ import annotations

import random
import time
from collections.abc import Callable

import pytest

from e2e.chaos.lib import (
    JobWatch,
    Size,
    audit,
    create_tasks,
    has_traceback,
    pipeline,
    seed,
    table,
    unrecorded_jobs,
    wait_all,
)
from e2e.cluster import Cluster
from e2e.operator import Operator

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(2400)]


def test_kill_storm(cluster: Cluster, namespace: str, operators: Callable[..., Operator], size: Size) -> None:
    rng = random.Random(s := seed())
    print(f"seed {s}")
    names = [f"storm-{i:03d}" for i in range(size.storm_tasks)]
    bodies = [pipeline(n, rng, gpu_parallelism=2 if i % 5 == 4 else 1) for i, n in enumerate(names)]
    waves = [bodies[i::4] for i in range(4)]  # created over the first kills, so new Jobs keep appearing
    op = operators()
    kills = aimed = in_window = 0
    aim_delays: list[float] = []
    t0 = time.monotonic()
    with JobWatch(cluster, namespace) as watch:
        op.wait_metrics(60)
        for i in range(size.storm_kills):
            if i < len(waves):
                create_tasks(cluster, namespace, waves[i])
            up_at = time.monotonic()
            hit = None
            if aimed < size.storm_aimed and i % 2 == 0:
                hit = watch.next_added(after=up_at, timeout=45)
            if hit is not None:
                delay = rng.uniform(0.0, 0.3)
                time.sleep(max(0.0, hit[0] + delay - time.monotonic()))
                aim_delays.append(time.monotonic() - hit[0])
                aimed += 1
            else:
                time.sleep(rng.uniform(1.0, 6.0))
            op.kill()
            kills += 1
            # The operator is dead: a Job its task's status does not record is one created just before
            # the kill whose status write never happened (the adoption path on restart).
            in_window += len(unrecorded_jobs(cluster, namespace)) > 0
            time.sleep(rng.uniform(0.0, 1.0))
            op.start()
        storm_seconds = time.monotonic() - t0
        wait_all(cluster, namespace, names, "Succeeded", timeout=size.storm_timeout, describe=lambda: op.log(80))
    result = audit(cluster, namespace, names)
    log = op.log_path.read_text()
    table(f"kill -9 storm ({size.name}, seed {s})", {
        **result.rows(), "kills": kills, "kills aimed after a new Job": aimed,
        "aim delays ms": ", ".join(f"{d * 1000:.0f}" for d in aim_delays),
        "kills between Job create and status write": in_window, "operator starts": op.starts,
        "storm seconds": round(storm_seconds), "total seconds": round(time.monotonic() - t0),
        "tracebacks in log": log.count("Traceback (most recent call last)"),
    })
    assert kills >= size.storm_kills and aimed >= 1, (kills, aimed)
    assert result.tasks == len(names) == result.succeeded and result.subtasks == 3 * len(names)
    assert result.jobs == result.subtasks, result.problems[:20]
    assert (result.duplicates, result.lost, result.stuck, result.extra_attempts, result.left_running) == \
        (0, 0, 0, 0, 0), result.problems[:20]
    # Events are posted after the status write that records the transition (docs/architecture.md): a kill
    # between the two, or before the write (the Job is then adopted), loses that attempt's Event. Never two.
    assert result.duplicate_events == 0, result.problems[:20]
    # Events go out after their task's status write, and up to AITASK_API_CONCURRENCY tasks (16) write at
    # once: a kill can lose the Events of each task whose writes were in flight (documented), never more.
    assert result.lost_events <= kills * 16, (result.lost_events, kills)
    assert not has_traceback(log), "traceback in the operator log"
