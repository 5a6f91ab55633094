"""The exec'd ``aws-cni`` with the fake ipam and the test_veth driver, in real namespaces.

Every call runs the installed console script inside a test-made "node" namespace (the
plugin creates host veths and routes where it runs); pods are other test-made namespaces.
What the plugin did is verified with ``ip -j`` (an independent oracle), and the fake
ipam's state file is read as plain JSON.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.cnictl import Netns
from tests.support.cnictl import delete_netns
from tests.support.plugin import Call
from tests.support.plugin import cni_env
from tests.support.plugin import fake_conf
from tests.support.plugin import fake_ipam_assigned
from tests.support.plugin import node_and_pod
from tests.support.plugin import run_exec

pytestmark = pytest.mark.netns

VERSIONS = ["0.4.0", "1.0.0", "1.1.0"]
POD_ARGS = {
    "IgnoreUnknown": "1",
    "K8S_POD_NAMESPACE": "default",
    "K8S_POD_NAME": "sample-pod",
    "K8S_POD_INFRA_CONTAINER_ID": "cid1",
}
#: upstream's vector for default/sample-pod (names_test.go)
HOST_VETH = "enicc21c2d7785"


@pytest.fixture
def nodepod() -> Iterator[tuple[Netns, Netns]]:
    with node_and_pod("vpt") as pair:
        yield pair


class Plugin:
    """Calls of one attachment (cid1/eth0) of one pod, from inside the node namespace."""

    def __init__(self, node: Netns, pod: Netns, conf: dict[str, Any]) -> None:
        self.node, self.pod, self.conf = node, pod, conf

    def __call__(self, command: str, conf: dict[str, Any] | None = None, **env: str) -> Call:
        base = cni_env(command, netns=self.pod.path, args=POD_ARGS)
        return run_exec({**base, **env}, conf or self.conf, in_netns=self.node.name)


def _pod_addresses(pod: Netns) -> list[str]:
    return [
        f"{a['local']}/{a['prefixlen']}"
        for link in pod.ip_json("addr")
        if link["ifname"] == "eth0"
        for a in link.get("addr_info", [])
        if a["family"] == "inet"
    ]


def _host_routes(node: Netns) -> list[tuple[str, str]]:
    return [(r["dst"], r.get("dev", "")) for r in node.ip_json("route")]


def _node_veths(node: Netns) -> list[str]:
    return [link["ifname"] for link in node.ip_json("link") if link["ifname"] != "lo"]


@pytest.mark.parametrize("version", VERSIONS)
def test_lifecycle(tmp_path: Path, nodepod: tuple[Netns, Netns], version: str) -> None:
    node, pod = nodepod
    conf = fake_conf(tmp_path, version, vethPrefix="eni", mtu="1500")
    plugin = Plugin(node, pod, conf)

    added = plugin("ADD").result
    assert added["cniVersion"] == version
    assert added["ips"][0]["address"] == "10.77.0.1/32"
    assert ("version" in added["ips"][0]) == (version == "0.4.0")
    assert _pod_addresses(pod) == ["10.77.0.1/32"]
    assert ("10.77.0.1", HOST_VETH) in _host_routes(node)
    pod_routes = pod.ip_json("route")
    assert any(r["dst"] == "default" and r.get("gateway") == "169.254.1.1" for r in pod_routes)
    assert [link["mtu"] for link in node.ip_json("link") if link["ifname"] == HOST_VETH] == [1500]

    assert plugin("CHECK", {**conf, "prevResult": added}).ok

    retried = plugin("ADD").result
    assert retried["ips"] == added["ips"]
    assert _pod_addresses(pod) == ["10.77.0.1/32"]
    assert len(fake_ipam_assigned(conf)) == 1

    got = plugin("GET").result
    assert got["ips"] == added["ips"]

    pod.ip("addr", "del", "10.77.0.1/32", "dev", "eth0")
    broken = plugin("CHECK", {**conf, "prevResult": added})
    assert broken.code == 103
    assert "10.77.0.1" in broken.error["details"]
    assert "eth0" in broken.error["details"]

    assert plugin("DEL", {**conf, "prevResult": added}).ok
    assert _node_veths(node) == []
    assert fake_ipam_assigned(conf) == {}
    assert not any(dst == "10.77.0.1" for dst, _ in _host_routes(node))
    assert plugin("DEL").ok
    assert plugin("GET").code == 3


def test_del_after_the_pod_namespace_is_gone(tmp_path: Path, nodepod: tuple[Netns, Netns]) -> None:
    node, pod = nodepod
    conf = fake_conf(tmp_path, "1.0.0")
    plugin = Plugin(node, pod, conf)
    assert plugin("ADD").ok
    delete_netns(pod)
    assert not Path(pod.path).exists()
    assert plugin("DEL").ok
    assert fake_ipam_assigned(conf) == {}
    assert _node_veths(node) == []
    assert run_exec(cni_env("DEL", netns=None), conf, in_netns=node.name).ok


@pytest.mark.parametrize("step", [0, 1, 2, 3])
def test_failed_add_leaves_nothing_behind(
    tmp_path: Path, nodepod: tuple[Netns, Netns], step: int
) -> None:
    node, pod = nodepod
    drivers = {"enabled": ["test_veth"], "test_veth": {"failAfterStep": step}}
    conf = fake_conf(tmp_path, "1.0.0", drivers=drivers)
    call = Plugin(node, pod, conf)("ADD")
    assert call.code == 103
    assert "injected failure" in call.error["details"]
    assert _node_veths(node) == []
    assert not any(link["ifname"] == "eth0" for link in pod.ip_json("link"))
    assert fake_ipam_assigned(conf) == {}
    assert not list((tmp_path / "state").glob("attachments/*.json"))


def test_test_veth_section_schema_is_enforced(tmp_path: Path, nodepod: tuple[Netns, Netns]) -> None:
    node, pod = nodepod
    drivers = {"enabled": ["test_veth"], "test_veth": {"failAfterStep": -1}}
    conf = fake_conf(tmp_path, "1.0.0", drivers=drivers)
    call = Plugin(node, pod, conf)("ADD")
    assert call.code == 7
    assert "$.drivers.test_veth.failAfterStep:" in call.error["details"]
    assert _node_veths(node) == []
    assert fake_ipam_assigned(conf) == {}


_IMPORT_PROBE = """
import json, sys
from vpccni.core import cli
try:
    status = cli.main()
finally:
    with open(sys.argv[1], "w") as f:
        json.dump(sorted(sys.modules), f)
sys.exit(status)
"""

HEAVY = ("boto3", "botocore", "kubernetes", "moto")


def test_plugin_process_never_imports_heavy_modules(
    tmp_path: Path, nodepod: tuple[Netns, Netns]
) -> None:
    node, pod = nodepod
    conf = fake_conf(tmp_path, "1.1.0")
    for n, command in enumerate(["ADD", "CHECK", "STATUS", "DEL", "VERSION"]):
        modules = tmp_path / f"modules-{n}.json"
        conf_n = {**conf, "prevResult": {"cniVersion": "1.1.0"}} if command == "CHECK" else conf
        call = run_exec(
            cni_env(command, netns=pod.path),
            conf_n,
            in_netns=node.name,
            argv=[sys.executable, "-c", _IMPORT_PROBE, str(modules)],
        )
        assert call.ok, (command, call.stdout, call.stderr)
        loaded = json.loads(modules.read_text())
        heavy = [m for m in loaded if m.split(".")[0] in HEAVY]
        assert heavy == [], command
