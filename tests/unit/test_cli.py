"""The `aitask` command line: dispatch of every sub-command (the operator itself is tested in e2e/)."""

from __future__ import annotations

import pytest
import yaml

from aitask import __version__
from aitask.cli import main, peering_priority


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
