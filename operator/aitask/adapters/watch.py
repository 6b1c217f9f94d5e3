"""List-then-watch informers for the high-volume kinds the cycle reads (pods, our Jobs, nodes).

Kopf handles each watched object with its own worker and, for indexed kinds, its own
readiness toggle: at tens of thousands of pods and Jobs its start-up alone took minutes
(every toggle wakes every waiter). These kinds are only read, so a plain informer does:
one thread per kind and namespace lists (in pages), reduces every object to a small view,
then watches from the list's resourceVersion; a 410 Gone, a broken stream or any error
lists again after a short backoff. Updates are applied on the event loop's thread, so the
cycle reads a consistent store; ``synced`` says the first list is in.

Informers keep reading while Kopf has this replica paused (a standby stays warm); only the
cycles are gated, by the handlers.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import kubernetes
from kubernetes.client.exceptions import ApiException

log = logging.getLogger(__name__)
PAGE = 500
WATCH_SECONDS = 300
BACKOFF_SECONDS = (0.5, 1, 2, 5, 10)
ABSENT_RETRY_SECONDS = 60


@dataclass(frozen=True)
class Kind:
    """One kind to inform on: its list path (cluster or namespaced) and how to reduce an object."""

    name: str  # for logs and metrics: pods, jobs, nodes
    path: str  # e.g. /api/v1/pods or /apis/batch/v1/namespaces/ns/jobs
    view: Callable[[Mapping[str, Any]], Any]  # object -> view; None to ignore the object
    label_selector: str = ""
    # An optional kind may be missing from the cluster (a CRD not installed yet, e.g. after a chart
    # upgrade, which does not upgrade CRDs): a 404 counts as an empty list, asked again every minute.
    optional: bool = False


@dataclass
class Informer:
    kind: Kind
    loop: asyncio.AbstractEventLoop
    on_change: Callable[[str, Any, Any], None] = lambda kind, old, new: None  # (kind, old view, new view)
    store: dict[str, Any] = field(default_factory=dict)  # uid -> view; touched on the loop's thread only
    synced: bool = False
    lists: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _response: Any = None
    _api: Any = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"informer-{self.kind.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop at once: a watch blocked reading a quiet stream is woken by shutting its socket down.

        Not ``response.close()``: closing an SSL connection that another thread is reading from
        blocks the caller until the read returns (up to the watch timeout, minutes), which held
        every operator shutdown until SIGKILL.
        """
        self._stop.set()
        response = self._response
        conn = getattr(response, "connection", None) if response is not None else None
        sock = getattr(conn, "sock", None)
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:  # already closed
                log.debug("shutting the %s watch down failed", self.kind.name, exc_info=True)

    def values(self) -> list[Any]:
        return list(self.store.values())

    # ------------------------------------------------------------------ on the loop's thread

    def _replace(self, items: dict[str, Any]) -> None:
        old = self.store
        self.store = items
        self.synced = True
        self.lists += 1
        for uid, view in items.items():
            if old.get(uid) != view:
                self.on_change(self.kind.name, old.get(uid), view)
        for uid, view in old.items():
            if uid not in items:
                self.on_change(self.kind.name, view, None)

    def _update(self, kind: str, uid: str, view: Any) -> None:
        old = self.store.get(uid)
        if kind == "DELETED" or view is None:
            self.store.pop(uid, None)
            view = None
        else:
            self.store[uid] = view
        if old != view:
            self.on_change(self.kind.name, old, view)

    # ------------------------------------------------------------------ in the thread

    def _post(self, fn: Callable[..., None], *args: Any) -> None:
        if not self._stop.is_set():
            self.loop.call_soon_threadsafe(fn, *args)

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                version: str | None = self._list()
                failures = 0
                if version is None:  # an optional kind the cluster does not serve
                    self._stop.wait(ABSENT_RETRY_SECONDS)
                    continue
                while version is not None and not self._stop.is_set():
                    version = self._watch(version)  # None after a 410 Gone: list again
            except Exception as err:  # noqa: BLE001 - an informer never dies: it lists again
                if self._stop.is_set():
                    return
                delay = BACKOFF_SECONDS[min(failures, len(BACKOFF_SECONDS) - 1)]
                failures += 1
                log.warning("%s informer: %s; listing again in %ss", self.kind.name, err, delay)
                self._stop.wait(delay)

    def _request(self, query: list[tuple[str, Any]], timeout: float | tuple[float, float]) -> Any:
        """GET the kind's path; the urllib3 response, not read yet (a watch is read as a stream)."""
        if self._api is None:
            self._api = kubernetes.client.ApiClient()
        method, url, headers, _, _ = self._api.param_serialize(
            "GET",
            self.kind.path,
            query_params=query,
            header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"],
        )
        response = self._api.call_api(method, url, header_params=headers, _request_timeout=timeout)
        if response.status >= 400:
            body = response.read()
            raise ApiException(status=response.status, reason=f"{response.reason}: {body[:300]!r}")
        return response.response

    def _list(self) -> str | None:
        items: dict[str, Any] = {}
        token = ""
        version = ""
        while True:
            query: list[tuple[str, Any]] = [("limit", PAGE)]
            if token:
                query.append(("continue", token))
            if self.kind.label_selector:
                query.append(("labelSelector", self.kind.label_selector))
            try:
                response = self._request(query, 60)
            except ApiException as err:
                if err.status == 404 and self.kind.optional:
                    log.warning(
                        "%s: not served by the API server (CRD not installed?); asked again in %ss",
                        self.kind.name,
                        ABSENT_RETRY_SECONDS,
                    )
                    self._post(self._replace, {})
                    return None
                raise
            page = json.loads(response.data)
            response.release_conn()
            for obj in page.get("items") or []:
                view = self.kind.view(obj)
                if view is not None:
                    items[obj["metadata"]["uid"]] = view
            meta = page.get("metadata") or {}
            version = meta.get("resourceVersion") or version
            token = meta.get("continue") or ""
            if not token:
                break
        self._post(self._replace, items)
        return version

    def _watch(self, version: str) -> str | None:
        """Follow the watch until it ends; the last resourceVersion seen, or None to list again."""
        query: list[tuple[str, Any]] = [
            ("watch", "true"),
            ("resourceVersion", version),
            ("allowWatchBookmarks", "true"),
            ("timeoutSeconds", WATCH_SECONDS),
        ]
        if self.kind.label_selector:
            query.append(("labelSelector", self.kind.label_selector))
        response = self._request(query, (10, WATCH_SECONDS + 30))
        self._response = response
        try:
            for line in _lines(response):
                event = json.loads(line)
                kind, obj = event.get("type"), event.get("object") or {}
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        return None
                    raise RuntimeError(f"watch error {obj.get('code')}: {obj.get('message')}")
                version = (obj.get("metadata") or {}).get("resourceVersion") or version
                if kind == "BOOKMARK":
                    continue
                uid = (obj.get("metadata") or {}).get("uid")
                if uid:
                    self._post(self._update, kind, uid, self.kind.view(obj) if kind != "DELETED" else None)
        finally:
            self._response = None
            response.release_conn()
        return version


def _lines(response: Any) -> Iterator[bytes]:
    buffer = b""
    for chunk in response.stream(65536, decode_content=True):
        # One split per chunk: splitting off one line at a time copied the rest of the chunk per line.
        *lines, buffer = (buffer + chunk).split(b"\n")
        for line in lines:
            if line.strip():
                yield line
    if buffer.strip():
        yield buffer


@dataclass
class Informers:
    """The informers of one operator: all kinds, in every watched namespace (or cluster-wide)."""

    loop: asyncio.AbstractEventLoop
    on_change: Callable[[str, Any, Any], None]
    members: dict[str, list[Informer]] = field(default_factory=dict)
    started_at: float = field(default_factory=time.monotonic)

    def add(self, kind: Kind) -> None:
        informer = Informer(kind=kind, loop=self.loop, on_change=self.on_change)
        self.members.setdefault(kind.name, []).append(informer)
        informer.start()

    def values(self, name: str) -> list[Any]:
        return [v for informer in self.members.get(name, []) for v in informer.values()]

    @property
    def synced(self) -> bool:
        return all(i.synced for group in self.members.values() for i in group)

    def stop(self) -> None:
        for group in self.members.values():
            for informer in group:
                informer.stop()
