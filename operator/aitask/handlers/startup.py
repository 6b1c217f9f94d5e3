"""Operator start-up: Kopf settings, API credentials, the metrics/health server."""

from __future__ import annotations

import logging
from typing import Any

import kopf

from aitask import metrics
from aitask.adapters import kube
from aitask.handlers.scheduler import SETTINGS, Engine

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
    memo.engine = Engine(settings=SETTINGS)  # shared by every object's memo copy
    if SETTINGS.metrics_port:
        engine: Engine = memo.engine
        memo.metrics_server = metrics.serve_metrics(
            SETTINGS.metrics_host, SETTINGS.metrics_port, engine.healthy, ready=engine.ready
        )
        log.info("metrics and health on %s:%d", SETTINGS.metrics_host, memo.metrics_server.port)


@kopf.on.cleanup()
async def shutdown(memo: kopf.Memo, **_: Any) -> None:
    engine: Engine | None = getattr(memo, "engine", None)
    if engine is not None:
        await engine.drain()
    server = getattr(memo, "metrics_server", None)
    if server is not None:
        server.stop()
