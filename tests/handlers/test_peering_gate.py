"""The loop's peering gate applies Kopf's rule to Kopf's peering objects."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from aitask.handlers.peering import PeeringObject, may_act, peering_entry

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def peer(priority: int, seen: datetime = NOW, lifetime: int = 60) -> dict[str, object]:
    return {"priority": priority, "lifetime": lifetime, "lastseen": seen.isoformat()}


def gate(peers: dict[str, dict[str, object]], *, scopes: tuple[str, ...] = ("",), priority: int = 10) -> bool:
    objects = [PeeringObject(namespace=s, name="op", peers=peers) for s in scopes]
    return may_act(objects, name="op", scopes=scopes, identity="me", priority=priority, now=NOW)


def test_alone_or_above_every_live_peer_acts() -> None:
    assert gate({"me": peer(10)})
    assert gate({"me": peer(10), "newer": peer(5)})


def test_a_live_peer_of_higher_or_equal_priority_pauses_it() -> None:
    assert not gate({"me": peer(10), "older": peer(20)})
    assert not gate({"me": peer(10), "twin": peer(10)})  # Kopf pauses both replicas of one priority


def test_a_dead_peer_does_not_count() -> None:
    assert gate({"me": peer(10), "gone": peer(20, seen=NOW - timedelta(seconds=61))})
    assert not gate({"me": peer(10), "alive": peer(20, seen=NOW - timedelta(seconds=59))})


def test_no_peering_object_means_no_acting_and_other_names_are_ignored() -> None:
    assert not may_act([], name="op", scopes=("",), identity="me", priority=10, now=NOW)
    other = PeeringObject(namespace="", name="someone-else", peers={"x": peer(99)})
    ours = PeeringObject(namespace="", name="op", peers={})
    assert may_act([other, ours], name="op", scopes=("",), identity="me", priority=10, now=NOW)


def test_every_watched_namespace_must_allow_it() -> None:
    a = PeeringObject(namespace="a", name="op", peers={})
    b = PeeringObject(namespace="b", name="op", peers={"older": peer(20)})
    assert may_act([a], name="op", scopes=("a",), identity="me", priority=10, now=NOW)
    assert not may_act([a, b], name="op", scopes=("a", "b"), identity="me", priority=10, now=NOW)


def test_peering_entry_reads_kopf_s_status() -> None:
    obj = peering_entry({"metadata": {"name": "op"}, "status": {"x": peer(3)}})
    assert obj.namespace == "" and obj.peers["x"]["priority"] == 3
