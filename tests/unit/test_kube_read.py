"""``aitask plan --kubeconfig``'s reader against a small HTTP server speaking the list API: every list
becomes the view the cycle reads, and a list the credentials may not read is skipped with a note."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from aitask.adapters.kube_read import ClusterReadError, read_cluster

NODE = {"metadata": {"name": "n1", "labels": {"pool": "cpu"}},
        "status": {"allocatable": {"cpu": "8", "memory": "32Gi", "pods": "110"},
                   "conditions": [{"type": "Ready", "status": "True"}]}}
CLASS = {"metadata": {"name": "cpu", "generation": 1}, "spec": {"nodeSelector": {"pool": "cpu"}}}
JOB = {"metadata": {"name": "t-a-1", "namespace": "ns",
                    "labels": {"aitask.dev/task": "t", "aitask.dev/subtask": "a", "aitask.dev/attempt": "1",
                               "aitask.dev/class": "cpu"}},
       "spec": {}, "status": {"active": 1}}
POD = {"metadata": {"name": "p", "namespace": "other"}, "spec": {"nodeName": "n1", "containers": [
    {"resources": {"requests": {"cpu": "2"}}}]}, "status": {"phase": "Running"}}

LISTS: dict[str, list[dict[str, Any]]] = {
    "/api/v1/nodes": [NODE],
    "/apis/aitask.dev/v1alpha1/executorclasses": [CLASS],
    "/apis/aitask.dev/v1alpha1/aitasks": [],
    "/apis/batch/v1/jobs": [JOB],
    "/api/v1/pods": [POD],
    "/api/v1/resourcequotas": [],
    "/apis/aitask.dev/v1alpha1/aitaskbudgets": [],
}


@pytest.fixture
def server() -> Iterator[tuple[str, list[str], set[str]]]:
    seen: list[str] = []
    forbidden: set[str] = set()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the http.server protocol
            path, _, query = self.path.partition("?")
            seen.append(self.path)
            if path in forbidden or path not in LISTS:
                code, body = (403 if path in forbidden else 404), {"kind": "Status", "code": 403}
            else:
                items = LISTS[path]
                if "labelSelector" in query:
                    items = [i for i in items if "aitask.dev/task" in i["metadata"].get("labels", {})]
                code, body = 200, {"items": items}
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", seen, forbidden
    finally:
        httpd.shutdown()
        httpd.server_close()


def kubeconfig(tmp_path: Path, url: str) -> str:
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": url}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
    }))
    return str(path)


def test_every_list_becomes_the_cycles_view(server: tuple[str, list[str], set[str]], tmp_path: Path) -> None:
    url, seen, _ = server
    view, note = read_cluster(kubeconfig(tmp_path, url))
    assert note == ""
    assert [n["metadata"]["name"] for n in view.nodes] == ["n1"]
    assert [c["metadata"]["name"] for c in view.classes] == ["cpu"]
    assert [(j.task, j.subtask, j.active) for j in view.jobs] == [("t", "a", 1)]
    assert [(p.name, p.node, p.requests) for p in view.pods] == [("p", "n1", {"cpu": "2"})]
    assert any(s.startswith("/apis/batch/v1/jobs?labelSelector=aitask.dev") for s in seen)
    assert all(s.split("?")[0] in LISTS for s in seen) and len(seen) == len(LISTS)  # list calls only


def test_a_forbidden_optional_list_is_skipped_with_a_note(
    server: tuple[str, list[str], set[str]], tmp_path: Path
) -> None:
    url, _, forbidden = server
    forbidden.update({"/api/v1/pods", "/apis/aitask.dev/v1alpha1/aitasks"})
    view, note = read_cluster(kubeconfig(tmp_path, url))
    assert not view.pods and not view.tasks and view.nodes
    assert "pods: nodes are taken as idle" in note and "no preemption is previewed" in note
    forbidden.add("/api/v1/nodes")  # without nodes there is no preview at all
    with pytest.raises(ClusterReadError, match="403"):
        read_cluster(kubeconfig(tmp_path, url))
