"""Map a process to its Kubernetes pod and container from ``/proc/<pid>/cgroup`` (pure).

The kubelet puts every pod in a cgroup whose name carries the pod UID, and the
container runtime puts every container below it in a cgroup named after the
container ID. The naming differs by cgroup driver and runtime:

- cgroupfs driver (v1 or v2): ``/kubepods/burstable/pod<uid>/<container-id>``;
  Guaranteed pods have no QoS level: ``/kubepods/pod<uid>/<id>``; CRI-O names the
  container ``crio-<id>``.
- systemd driver: ``/kubepods.slice/kubepods-burstable.slice/``
  ``kubepods-burstable-pod<uid with _ for ->.slice/<runtime>-<id>.scope`` where
  runtime is ``cri-containerd``, ``crio`` or ``docker``; containerd's
  ``slice:prefix:name`` notation ``kubepods-...-pod<uid>.slice:cri-containerd:<id>``
  also occurs.
- Nested (kind, docker-in-docker): any prefix before ``kubepods``, e.g. ``/docker/<node>/kubepods/...``
  or ``/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/...``.
- cgroup v2 seen from a private cgroup namespace: paths relative to the reader's
  cgroup, such as ``0::/../../kubepods-besteffort-pod<uid>.slice/cri-containerd-<id>.scope``.

Static pods have a 32-hex-digit UID (the config hash) without dashes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_UID = r"[0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12}|[0-9a-f]{32}"
# The pod's segment: cgroupfs "pod<uid>", systemd "kubepods[-<qos>]-pod<uid>.slice", optionally followed
# by containerd's systemd notation ":cri-containerd:<id>".
_POD_SEGMENT = re.compile(
    r"^(?:[a-z]+-)*?(?:kubepods-(?:(?P<qos>besteffort|burstable)-)?)?pod(?P<uid>" + _UID + r")(?:\.slice)?"
    r"(?::[a-z-]+:(?P<id>[0-9a-f]{12,64}))?$",
    re.IGNORECASE,
)
# The container's segment: "<id>" (cgroupfs), "<runtime>-<id>[.scope]" (systemd, CRI-O cgroupfs).
_CONTAINER_SEGMENT = re.compile(
    r"^(?:(?:cri-containerd|containerd|crio-conmon|crio|docker|libpod)-)?(?P<id>[0-9a-f]{12,64})(?:\.scope)?$",
    re.IGNORECASE,
)
_QOS_SEGMENT = re.compile(r"(?:^|-)kubepods-(besteffort|burstable)(?:\.slice)?$|^(besteffort|burstable)$")


@dataclass(frozen=True)
class PodCgroup:
    """The pod (and container, when the process is in one) a process belongs to."""

    pod_uid: str
    container_id: str | None
    qos_class: str


def parse_cgroup_path(path: str) -> PodCgroup | None:
    """Parse one cgroup path; None when it is not a Kubernetes pod's cgroup."""
    segments = [segment for segment in path.strip().split("/") if segment]
    for position, segment in enumerate(segments):
        match = _POD_SEGMENT.match(segment)
        if match is None or not any("kubepods" in s.lower() for s in segments[: position + 1]):
            continue
        uid = match.group("uid").lower().replace("_", "-")
        qos = match.group("qos")
        if qos is None:
            for parent in segments[:position]:
                qos_match = _QOS_SEGMENT.search(parent.lower())
                if qos_match:
                    qos = qos_match.group(1) or qos_match.group(2)
        container_id = match.group("id")
        if container_id is None and position + 1 < len(segments):
            container = _CONTAINER_SEGMENT.match(segments[position + 1])
            container_id = container.group("id") if container else None
        return PodCgroup(uid, container_id.lower() if container_id else None, (qos or "guaranteed").lower())
    return None


def parse_proc_cgroup(text: str) -> PodCgroup | None:
    """Parse the content of ``/proc/<pid>/cgroup`` (v1 ``id:controllers:path`` lines or v2 ``0::path``).

    The first line naming a container wins; a line naming only the pod is kept as a
    fallback (a process of the pod's sandbox, or a controller the runtime does not nest).
    """
    pod_only: PodCgroup | None = None
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        parsed = parse_cgroup_path(parts[2])
        if parsed is None:
            continue
        if parsed.container_id is not None:
            return parsed
        if pod_only is None:
            pod_only = parsed
    return pod_only
