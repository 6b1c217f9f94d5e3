"""The `aitask` command line: dispatch of every sub-command (the operator itself is tested in e2e/)."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest
import yaml

from aitask import __version__
from aitask.cli import main, operate, peering_priority


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["version"]) == 0
    assert capsys.readouterr().out.strip() == __version__


def test_crds_prints_every_crd(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["crds"]) == 0
    names = [d["metadata"]["name"] for d in yaml.safe_load_all(capsys.readouterr().out)]
    assert names == ["aitaskbudgets.aitask.dev", "aitasks.aitask.dev", "executorclasses.aitask.dev"]


def test_agent_options_reach_the_agent_parser(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["agent", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "--port" in out
    assert "--node-name" in out


def test_peering_priority_prefers_the_older_replica() -> None:
    assert peering_priority(None, now=1_000.0) > peering_priority(None, now=1_000.001)
    assert peering_priority(7, now=1_000.0) == 7


def test_a_sigterm_before_kopfs_own_handlers_stops_the_operator_through_its_stop_flag() -> None:
    """The window between the health server answering and Kopf's signal handlers: a SIGTERM there
    raises the stop flag (and so runs the cleanup) instead of killing the process outright."""
    seen: list[object] = []

    async def operator(*, stop_flag: asyncio.Future[signal.Signals], **options: object) -> None:
        seen.append(options)
        os.kill(os.getpid(), signal.SIGTERM)  # Python's default action would end pytest here
        seen.append(await asyncio.wait_for(stop_flag, timeout=5))

    previous = signal.getsignal(signal.SIGTERM)
    try:
        operate(operator, clusterwide=True)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert seen == [{"clusterwide": True}, signal.SIGTERM]
