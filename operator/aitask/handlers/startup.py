"""Operator start-up: Kopf settings, API credentials, the metrics/health server."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import kopf

from aitask import metrics
from aitask.adapters import kube
from aitask.adapters.watch import Informers, Kind
from aitask.api.v1alpha1 import GROUP, VERSION
from aitask.core.observed import LABEL_TASK, job_view, pod_view, quota_view
from aitask.handlers.indexes import aitask_entry, budget_entry, class_entry, node_entry
from aitask.handlers.peering import peering_entry
from aitask.handlers.scheduler import SETTINGS, Engine

#: Set by `aitask run` from its options before Kopf starts (empty: every namespace).
WATCH: dict[str, Any] = {
    "namespaces": list(SETTINGS.namespaces),
    "standalone": SETTINGS.standalone,
    "identity": "",
    "priority": 0,
}

log = logging.getLogger("aitask.startup")


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    # Our own storage prefix for everything Kopf writes onto objects (finalizer, progress).
    settings.persistence.finalizer = "aitask.dev/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="aitask.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="aitask.dev", key="last-handled-configuration"
    )
    settings.posting.level = logging.WARNING  # Kopf's own events: only problems; ours are explicit
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.batching.error_delays = [1, 2, 5, 10, 30]
    settings.peering.name = SETTINGS.peering_name
    # Kopf logs every handler run at INFO ("Handler 'aitask_event' succeeded"): at thousands of
    # objects that is most of the log and a real share of the CPU. Problems still show.
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    kube.configure(concurrency=SETTINGS.api_concurrency, qps=SETTINGS.api_qps, burst=SETTINGS.api_burst)
    namespaces = list(WATCH["namespaces"])
    engine = Engine(settings=SETTINGS, standalone=bool(WATCH["standalone"]))
    engine.peering = (SETTINGS.peering_name, tuple(namespaces) or ("",), str(WATCH["identity"]), int(WATCH["priority"]))
    memo.engine = engine  # shared by every object's memo copy
    engine.informers = start_informers(engine, namespaces)
    engine.periodic_task = asyncio.create_task(engine.periodic())
    if SETTINGS.metrics_port:
        memo.metrics_server = metrics.serve_metrics(
            SETTINGS.metrics_host, SETTINGS.metrics_port, engine.healthy, ready=engine.ready
        )
        log.info("metrics and health on %s:%d", SETTINGS.metrics_host, memo.metrics_server.port)


@kopf.on.cleanup()
async def shutdown(memo: kopf.Memo, **_: Any) -> None:
    engine: Engine | None = getattr(memo, "engine", None)
    if engine is not None:
        for background in (engine.periodic_task, engine.legacy_cleanup, engine.wakeup):
            if background is not None:
                background.cancel()
        if engine.informers is not None:
            engine.informers.stop()
        await engine.drain()
    server = getattr(memo, "metrics_server", None)
    if server is not None:
        server.stop()


def start_informers(engine: Engine, namespaces: list[str]) -> Informers:
    """Informers for every kind the cycle reads, per watched namespace or cluster-wide."""
    informers = Informers(loop=asyncio.get_running_loop(), on_change=engine.changed)
    scopes = [f"/namespaces/{ns}" for ns in namespaces] or [""]
    for scope in scopes:
        informers.add(Kind("aitasks", f"/apis/{GROUP}/{VERSION}{scope}/aitasks", aitask_entry))
        informers.add(Kind("jobs", f"/apis/batch/v1{scope}/jobs", job_view, label_selector=LABEL_TASK))
        informers.add(Kind("pods", f"/api/v1{scope}/pods", pod_view))
        informers.add(Kind("resourcequotas", f"/api/v1{scope}/resourcequotas", quota_view))
        informers.add(
            Kind("aitaskbudgets", f"/apis/{GROUP}/{VERSION}{scope}/aitaskbudgets", budget_entry, optional=True)
        )
    informers.add(Kind("executorclasses", f"/apis/{GROUP}/{VERSION}/executorclasses", class_entry))
    if not engine.standalone:
        if namespaces:
            for ns in namespaces:
                informers.add(Kind("peerings", f"/apis/kopf.dev/v1/namespaces/{ns}/kopfpeerings", peering_entry))
        else:
            informers.add(Kind("peerings", "/apis/kopf.dev/v1/clusterkopfpeerings", peering_entry))
    informers.add(Kind("nodes", "/api/v1/nodes", node_entry))
    return informers
