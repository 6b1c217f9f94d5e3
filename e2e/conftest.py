"""Fixtures for suites that run against the local control plane (mark them ``pytest.mark.e2e``).

- ``cluster`` (session): one control plane per pytest session (e2e.cluster.Cluster). If it cannot start,
  every test using it errors with the component logs; nothing is skipped. With
  ``AITASK_E2E_CLUSTER=DIR`` the session attaches to a cluster left running by
  ``python -m e2e.cluster up --dir DIR`` instead (and leaves it running).
- ``namespace`` (function): a fresh namespace (its ``default`` ServiceAccount exists), deleted afterwards.
- ``prometheus`` (function): a real Prometheus scraping itself (job ``prometheus``), stopped afterwards.

On a failing test the report gets the tail of every component log and the test namespace's objects.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from e2e.cluster import Cluster, ClusterError, Prometheus, locate_binaries, prometheus_config
from e2e.util import describe_namespace, wait_for

_startup_key = pytest.StashKey[str]()
_namespace_key = pytest.StashKey[str]()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--chaos-size", choices=("small", "full"), default=None,
                     help="size of the e2e/chaos suite: small (default, part of make test) or full "
                          "(make chaos); AITASK_CHAOS_SIZE does the same")


def _wants_cluster(items: list[pytest.Item]) -> bool:
    return any("cluster" in getattr(item, "fixturenames", ()) for item in items)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Builds (or finds) the control-plane binaries before any test runs, so that a cold build
    (tens of minutes) is not cut short by a per-test timeout."""
    if os.environ.get("AITASK_E2E_CLUSTER") or not _wants_cluster(session.items):
        return
    try:
        locate_binaries()
        if any("kueue" in getattr(item, "fixturenames", ()) for item in session.items):
            from e2e.kueue import locate_kueue

            locate_kueue()  # e2e/tools/build-kueue.sh: a cold build takes minutes
    except ClusterError as err:
        raise pytest.UsageError(f"e2e: control-plane binaries unavailable: {err}") from err


@pytest.fixture(scope="session")
def cluster(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    if os.environ.get("AITASK_E2E_PROVIDER", "local") == "kubeconfig":
        # An existing cluster from $KUBECONFIG (e2e/kind/run.sh: kind + in-cluster KWOK); left running.
        from e2e.kubeconfig_cluster import from_kubeconfig

        try:
            existing = from_kubeconfig(tmp_path_factory.mktemp("kubeconfig-cluster"))
        except ClusterError as err:
            pytest.fail(f"AITASK_E2E_PROVIDER=kubeconfig: {err}", pytrace=False)
        if not existing.readyz():
            pytest.fail(f"AITASK_E2E_PROVIDER=kubeconfig: {existing.server} is not ready", pytrace=False)
        request.config.stash[_startup_key] = f"using the existing cluster {existing.server} ($KUBECONFIG)"
        yield existing
        return
    reuse = os.environ.get("AITASK_E2E_CLUSTER")
    if reuse:
        try:
            attached = Cluster.attach(reuse)
        except ClusterError as err:
            pytest.fail(f"AITASK_E2E_CLUSTER={reuse}: {err}", pytrace=False)
        if not attached.readyz():
            pytest.fail(f"AITASK_E2E_CLUSTER={reuse}: API server not ready\n{attached.logs()}", pytrace=False)
        request.config.stash[_startup_key] = f"attached to the running cluster in {reuse}"
        yield attached
        return
    try:
        started = Cluster.start(tmp_path_factory.mktemp("cluster"))
    except ClusterError as err:
        pytest.fail(f"the local control plane did not start: {err}", pytrace=False)
    timings = ", ".join(f"{k} {v}s" for k, v in started.timings.items())
    request.config.stash[_startup_key] = (
        f"control plane up in {started.startup_seconds:.1f} s ({timings}); state in {started.dir}")
    try:
        yield started
    finally:
        started.stop()


def _slug(text: str, limit: int = 40) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")[:limit].strip("-")


@pytest.fixture
def namespace(cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    name = f"e2e-{_slug(request.node.name)}-{secrets.token_hex(3)}"
    cluster.kubectl("create", "namespace", name)
    cluster.kubectl("label", "namespace", name, "aitask.dev/e2e=true")
    sa = f"/api/v1/namespaces/{name}/serviceaccounts/default"
    wait_for(lambda: cluster.api_status("GET", sa) == 200, timeout=30, what=f"ServiceAccount {name}/default")
    request.node.stash[_namespace_key] = name
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found", check=False)



@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Prometheus]:
    """A running Prometheus scraping itself every second; tests may ``reload()``, ``stop()``, ``start()``."""
    prom = Prometheus(tmp_path / "prometheus", prometheus_config({"prometheus": ["127.0.0.1:{port}"]}))
    prom.start()
    try:
        yield prom
    finally:
        prom.stop()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, object, object]:
    report = yield
    if getattr(report, "failed", False) and isinstance(report, pytest.TestReport):
        funcargs = getattr(item, "funcargs", {})
        cluster = funcargs.get("cluster")
        ns = item.stash.get(_namespace_key, None)
        if isinstance(cluster, Cluster):
            if ns:
                report.sections.append((f"namespace {ns}", describe_namespace(cluster, ns)))
            report.sections.append(("control plane logs (tails)", cluster.logs(30)))
        prom = funcargs.get("prometheus")
        if isinstance(prom, Prometheus):
            report.sections.append(("prometheus log (tail)", prom.logs(30)))
    return report


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    line = terminalreporter.config.stash.get(_startup_key, None)
    if line:
        terminalreporter.write_sep("-", "e2e")
        terminalreporter.write_line(line)

