"""Pod attribution from /proc/<pid>/cgroup, over real-world lines of every driver and runtime."""

from __future__ import annotations

import pytest

from aitask.agent.cgroups import PodCgroup, parse_cgroup_path, parse_proc_cgroup

UID = "5f1b9c7e-2d3a-4b8c-9e0f-1a2b3c4d5e6f"
UID_ = UID.replace("-", "_")
CID = "9d5b0e0f3c2a4b1e8f7d6c5b4a392817" + "0f1e2d3c4b5a69788796a5b4c3d2e1f0"
STATIC_UID = "8c2d2c0a6f6e7b1d3e1b2a4c5d6e7f80"

CASES = [
    # cgroup v2, systemd driver, containerd (most current distributions).
    (
        f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/cri-containerd-{CID}.scope",
        PodCgroup(UID, CID, "burstable"),
    ),
    (
        f"0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/crio-{CID}.scope",
        PodCgroup(UID, CID, "besteffort"),
    ),
    # Guaranteed pods sit directly under kubepods.slice.
    (
        f"0::/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{CID}.scope",
        PodCgroup(UID, CID, "guaranteed"),
    ),
    # cgroup v1, systemd driver, docker (dockershim / cri-dockerd).
    (
        f"12:memory:/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/docker-{CID}.scope",
        PodCgroup(UID, CID, "burstable"),
    ),
    # cgroup v1, cgroupfs driver, docker or containerd: bare container id.
    (f"11:devices:/kubepods/burstable/pod{UID}/{CID}", PodCgroup(UID, CID, "burstable")),
    (f"4:cpu,cpuacct:/kubepods/besteffort/pod{UID}/{CID}", PodCgroup(UID, CID, "besteffort")),
    (f"9:memory:/kubepods/pod{UID}/{CID}", PodCgroup(UID, CID, "guaranteed")),
    # cgroup v2, cgroupfs driver, CRI-O.
    (f"0::/kubepods/burstable/pod{UID}/crio-{CID}", PodCgroup(UID, CID, "burstable")),
    # containerd's systemd notation "slice:prefix:id" as seen in nested nodes.
    (
        f"0::/system.slice/containerd.service/kubepods-burstable-pod{UID_}.slice:cri-containerd:{CID}",
        PodCgroup(UID, CID, "burstable"),
    ),
    # kind (systemd inside the node container) and docker-in-docker (v1 cgroupfs).
    (
        "0::/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/"
        f"kubelet-kubepods-besteffort-pod{UID_}.slice/cri-containerd-{CID}.scope",
        PodCgroup(UID, CID, "besteffort"),
    ),
    (
        f"8:memory:/docker/4a1c2b3d4e5f/kubepods/burstable/pod{UID}/{CID}",
        PodCgroup(UID, CID, "burstable"),
    ),
    # cgroup v2 read from a private cgroup namespace: relative path.
    (
        f"0::/../../kubepods-besteffort-pod{UID_}.slice/cri-containerd-{CID}.scope",
        PodCgroup(UID, CID, "besteffort"),
    ),
    # The pod's own cgroup (sandbox/pause, or a controller without nesting): pod only.
    (
        f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice",
        PodCgroup(UID, None, "burstable"),
    ),
    # Static pods: the UID is the 32-hex config hash.
    (f"0::/kubepods/burstable/pod{STATIC_UID}/{CID}", PodCgroup(STATIC_UID, CID, "burstable")),
    # Not a pod.
    ("0::/system.slice/containerd.service", None),
    ("0::/user.slice/user-1000.slice/session-3.scope", None),
    ("0::/", None),
    (f"0::/docker/{CID}", None),
    (f"0::/system.slice/pod{UID}.slice", None),
]


@pytest.mark.parametrize(
    ("line", "expected"),
    CASES,
    ids=[
        "v2-systemd-containerd",
        "v2-systemd-crio",
        "v2-systemd-guaranteed",
        "v1-systemd-docker",
        "v1-cgroupfs-burstable",
        "v1-cgroupfs-besteffort",
        "v1-cgroupfs-guaranteed",
        "v2-cgroupfs-crio",
        "containerd-slice-notation",
        "kind-nested-systemd",
        "dind-v1-cgroupfs",
        "v2-private-cgroupns",
        "pod-sandbox-only",
        "static-pod",
        "host-service",
        "user-session",
        "root",
        "plain-docker",
        "pod-word-outside-kubepods",
    ],
)
def test_parse_proc_cgroup_line(line: str, expected: PodCgroup | None) -> None:
    assert parse_proc_cgroup(line + "\n") == expected


def test_v1_file_prefers_a_line_with_the_container() -> None:
    text = "\n".join(
        [
            "13:misc:/",
            "12:rdma:/",
            f"11:pids:/kubepods/burstable/pod{UID}",
            f"10:memory:/kubepods/burstable/pod{UID}/{CID}",
            "1:name=systemd:/",
        ]
    )
    assert parse_proc_cgroup(text) == PodCgroup(UID, CID, "burstable")


def test_malformed_lines_are_ignored() -> None:
    assert parse_proc_cgroup("garbage\n\n0:/kubepods\n") is None


def test_uppercase_uid_is_normalised() -> None:
    parsed = parse_cgroup_path(f"/kubepods/pod{UID.upper()}/{CID}")
    assert parsed is not None
    assert parsed.pod_uid == UID
