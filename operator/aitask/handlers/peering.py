"""Whether this replica may act, read from Kopf's peering objects the way Kopf reads them.

Kopf keeps each replica's record (priority, lifetime, last seen) in the ``ClusterKopfPeering``
(cluster-wide) or each namespace's ``KopfPeering``, and pauses a replica while another live
one has a higher or the same priority. The loop's cycles are not Kopf handlers, so they apply
the same rule to the same objects (``may_act``); Kopf itself keeps our record alive.
"""

from __future__ import annotations

import getpass
import os
import secrets
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any


@dataclass(frozen=True)
class PeeringObject:
    namespace: str  # "" for the ClusterKopfPeering
    name: str
    peers: Mapping[str, Mapping[str, Any]]  # identity -> {priority, lifetime, lastseen}


def peering_entry(body: Mapping[str, Any]) -> PeeringObject:
    meta = body.get("metadata") or {}
    status = body.get("status") or {}
    return PeeringObject(
        namespace=meta.get("namespace", "") or "",
        name=meta.get("name", ""),
        peers={k: dict(v) for k, v in status.items() if isinstance(v, Mapping)},
    )


def own_identity() -> str:
    """The identity this replica tells Kopf to use: the pod's name when it has one."""
    pod = os.environ.get("POD_ID")
    if pod:
        return pod
    return f"{getpass.getuser()}@{socket.gethostname()}/{secrets.token_hex(3)}"


def _alive(info: Mapping[str, Any], now: datetime) -> bool:
    try:
        seen = datetime.fromisoformat(str(info.get("lastseen")).replace("Z", "+00:00"))
        lifetime = timedelta(seconds=int(info.get("lifetime", 60)))
    except (TypeError, ValueError):
        return True  # unreadable: assume it lives, as the safer answer
    if seen.tzinfo is None:
        seen = seen.replace(tzinfo=UTC)
    return seen + lifetime > now


def may_act(
    objects: Iterable[PeeringObject],
    *,
    name: str,
    scopes: Iterable[str],
    identity: str,
    priority: int,
    now: datetime,
) -> bool:
    """True when, in every scope, no other live peer has a priority as high as ours (Kopf's rule)."""
    by_scope = {o.namespace: o for o in objects if o.name == name}
    for scope in scopes:
        obj = by_scope.get(scope)
        if obj is None:
            return False  # no peering object yet: Kopf does not run handlers either
        for peer, info in obj.peers.items():
            if peer == identity or not _alive(info, now):
                continue
            if int(info.get("priority", 0)) >= priority:
                return False
    return True
