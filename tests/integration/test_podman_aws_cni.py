"""aws-cni driven by podman's CNI backend, a real container runtime.

podman runs inside a test-made "node" namespace (``PodmanCni``: nsenter --net, private
storage, busybox rootfs, no image pulls).  A shim named ``aws-cni`` in front of the real
plugin records the verbs podman sends, so the test sees podman call ADD on start and
DEL on removal.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

_REPO = Path(__file__).resolve().parents[2]
if str(_REPO) not in sys.path:
    sys.path.insert(0, str(_REPO))

from tests.support.cnictl import GO_PLUGIN_DIR  # noqa: E402
from tests.support.cnictl import Netns  # noqa: E402
from tests.support.cnictl import PodmanCni  # noqa: E402
from tests.support.cnictl import aws_cni_binary  # noqa: E402
from tests.support.cnictl import aws_cni_conflist  # noqa: E402
from tests.support.cnictl import create_netns  # noqa: E402
from tests.support.cnictl import delete_netns  # noqa: E402
from tests.support.cnictl import fake_ipam_assigned  # noqa: E402
from tests.support.cnictl import nat_rules  # noqa: E402
from tests.support.cnictl import ping  # noqa: E402
from tests.support.cnictl import podman_unavailable_reason  # noqa: E402


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root (creates network namespaces)"
    if shutil.which("iptables") is None:
        return "iptables missing (apt-get install -y iptables)"
    if not (GO_PLUGIN_DIR / "portmap").exists():
        return "Go plugin portmap missing (apt-get install -y containernetworking-plugins)"
    if not aws_cni_binary().exists():
        return f"{aws_cni_binary()} missing (pip install the vpccni package)"
    return podman_unavailable_reason()


_REASON = _skip_reason()
pytestmark = [
    pytest.mark.netns,
    pytest.mark.podman,
    pytest.mark.slow,
    pytest.mark.skipif(_REASON is not None, reason=_REASON or ""),
]

POOL = "10.197.0.0/28"
NETWORK = "lacpodman"


@pytest.fixture
def node() -> Iterator[Netns]:
    ns = create_netns("lap-node")
    # an address of the node's own, so its pings to pods have a source
    ns.ip("addr", "add", "10.197.1.1/32", "dev", "lo")
    try:
        yield ns
    finally:
        delete_netns(ns)


@pytest.fixture
def podman(node: Netns, tmp_path: Path) -> Iterator[tuple[PodmanCni, Path]]:
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    verbs = tmp_path / "verbs.log"
    shim = plugins / "aws-cni"
    shim.write_text(
        "#!/bin/sh\n"
        f'echo "$CNI_COMMAND $CNI_CONTAINERID $CNI_IFNAME" >> {verbs}\n'
        f'exec {aws_cni_binary()} "$@"\n'
    )
    shim.chmod(0o755)
    pm = PodmanCni(
        workdir=tmp_path / "podman", node_netns=node.name, plugin_dirs=[plugins, GO_PLUGIN_DIR]
    ).setup()
    try:
        yield pm, verbs
    finally:
        pm.cleanup()


def _refused(proc_stderr: str) -> None:
    """Skip with podman's own words when this machine cannot run a container at all
    (never when a CNI plugin is what failed: that is what the test is for)."""
    if "plugin type=" in proc_stderr or "cni" in proc_stderr.lower():
        return
    for marker in ("cgroup", "OCI runtime", "permission denied", "operation not permitted"):
        if marker.lower() in proc_stderr.lower():
            pytest.skip(f"podman refused to run a container here: {proc_stderr.strip()}")


def test_podman_runs_a_container_on_an_aws_cni_network(
    podman: tuple[PodmanCni, Path], node: Netns, tmp_path: Path
) -> None:
    pm, verbs = podman
    state = tmp_path / "cni"
    pm.add_network(aws_cni_conflist(NETWORK, state, [POOL], cache_dir=state / "cache", tuning=None))

    started = pm.podman(
        "run", "-d", "--name", "lap-1", "--network", NETWORK, "--runtime", "runc",
        "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096",
        "-p", "18082:80",
        "--rootfs", str(pm.rootfs), "/bin/sleep", "60",
    )  # fmt: skip
    if started.returncode != 0:
        _refused(started.stderr)
    assert started.returncode == 0, started.stderr
    try:
        assigned = fake_ipam_assigned(state / "ipam.json")
        ((slug, ip),) = assigned.items()
        assert slug.startswith(f"{NETWORK}~")
        assert ip.startswith("10.197.0.")
        # the container sees its address on eth0 (podman exec reads it from inside)
        shown = pm.podman("exec", "lap-1", "/bin/ip", "-o", "-4", "addr", "show", "dev", "eth0")
        assert shown.returncode == 0, shown.stderr
        assert f"inet {ip}/32" in shown.stdout, shown.stdout
        # the node reaches it through the host route, and portmap published the port
        assert ping(node, ip)
        assert f"--to-destination {ip}:80" in nat_rules(node)
        host_links = [link["ifname"] for link in node.ip_json("link")]
        assert len(host_links) == 2, host_links  # lo and the pod's host veth
    finally:
        removed = pm.podman("rm", "-f", "-t", "0", "lap-1")
    assert removed.returncode == 0, removed.stderr

    # podman called DEL: the address is back in the pool, the host veth and DNAT are gone
    calls = [line.split() for line in verbs.read_text().splitlines()]
    network_verbs = [c[0] for c in calls if c and c[0] != "VERSION"]
    assert network_verbs == ["ADD", "DEL"], calls
    assert len({tuple(c[1:]) for c in calls if c and c[0] != "VERSION"}) == 1, calls
    assert fake_ipam_assigned(state / "ipam.json") == {}
    assert [link["ifname"] for link in node.ip_json("link")] == ["lo"]
    assert "CNI-DN-" not in nat_rules(node)
    assert not list((state / "state" / "attachments").glob("*.json"))
