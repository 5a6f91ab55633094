"""egress-cni (drivers/egress_snat) with real packets, in test-made namespaces only.

Two ways in:

* the whole chain through libcni (``tests/support/cnictl.py``): ``aws-cni`` (fake ipam,
  routed_eni) + ``egress-cni`` + Go ``portmap``, run inside a test-made "node" namespace;
  the fake ipam hands IPv4, so this is the IPv4 pod that gets IPv6 egress (ENABLE_V6_EGRESS)
  and the pass-through when the plugin is disabled;
* ``egress-cni`` exec'd alone with a hand-written prevResult for an IPv6 pod (a test-made
  namespace with that address configured), which gets IPv4 egress.

The "internet" is a test-made namespace holding documentation addresses, reachable only
through the node's link to it; it has no route back to 169.254.172.0/22 or fd00::ac:00/118,
so an answered connection proves the SNAT, and the server reports the peer it saw.
Oracles: ``ip -j``, ``iptables-save``/``ip6tables-save``, host-local's data dir.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.cnictl import GO_PLUGIN_DIR
from tests.support.cnictl import Cnictl
from tests.support.cnictl import Netns
from tests.support.cnictl import aws_cni_binary
from tests.support.cnictl import cnictl_unavailable_reason
from tests.support.cnictl import create_netns
from tests.support.cnictl import delete_netns
from tests.support.cnictl import ensure_cnictl
from tests.support.cnictl import write_conflist
from tests.support.plugin import EGRESS_PLUGIN
from tests.support.plugin import Call
from tests.support.plugin import cni_env
from tests.support.plugin import run_exec


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root (creates network namespaces)"
    for tool in ("ip", "iptables-save", "ip6tables-save", "nsenter"):
        if shutil.which(tool) is None:
            return f"{tool} missing"
    for plugin in ("host-local", "portmap"):
        if not (GO_PLUGIN_DIR / plugin).exists():
            return f"Go plugin {plugin} missing (apt-get install -y containernetworking-plugins)"
    return cnictl_unavailable_reason()


_REASON = _skip_reason()
pytestmark = [pytest.mark.netns, pytest.mark.skipif(_REASON is not None, reason=_REASON or "")]

CID = "cid-egress-1"
NETWORK = "aws-cni"
POD_ARGS = {"IgnoreUnknown": "1", "K8S_POD_NAMESPACE": "default", "K8S_POD_NAME": "egress-pod"}
POOL = "10.77.0.0/28"
#: the node's uplink to the test's internet namespace (documentation ranges)
NODE_V4, INET_V4 = "203.0.113.10", "203.0.113.1"
NODE_V6, INET_V6 = "2001:db8:6::10", "2001:db8:6::1"
#: an IPv6 pod's own address (prevResult of the direct case)
POD_V6 = "2001:db8:1::5"
PORT = 18099

SERVER = """
import socket, sys
family = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
s = socket.socket(family, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(1)
print("ready", flush=True)
conn, peer = s.accept()
conn.sendall(peer[0].encode())
conn.close()
"""
CLIENT = """
import socket, sys
family = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
s = socket.socket(family, socket.SOCK_STREAM)
s.settimeout(5)
s.connect((sys.argv[1], int(sys.argv[2])))
print(s.recv(100).decode())
"""


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def make_ns() -> Iterator[Callable[[str], Netns]]:
    made: list[Netns] = []

    def make(prefix: str) -> Netns:
        ns = create_netns(prefix)
        made.append(ns)
        return ns

    try:
        yield make
    finally:
        for ns in reversed(made):
            delete_netns(ns)


@pytest.fixture
def world(make_ns: Callable[[str], Netns]) -> tuple[Netns, Netns, Netns]:
    """(node, pod, internet): the node's uplink ``up0`` leads to the internet namespace,
    whose only addresses and routes are the link's own."""
    node, pod, inet = make_ns("egn"), make_ns("egp"), make_ns("egi")
    node.ip("link", "add", "up0", "type", "veth", "peer", "name", "dn0", "netns", inet.name)
    node.ip("addr", "add", f"{NODE_V4}/24", "dev", "up0")
    node.ip("-6", "addr", "add", f"{NODE_V6}/64", "dev", "up0", "nodad")
    node.ip("link", "set", "up0", "up")
    inet.ip("addr", "add", f"{INET_V4}/24", "dev", "dn0")
    inet.ip("-6", "addr", "add", f"{INET_V6}/64", "dev", "dn0", "nodad")
    inet.ip("link", "set", "dn0", "up")
    node.ip("route", "add", "default", "via", INET_V4)
    node.ip("-6", "route", "add", "default", "via", INET_V6)
    # What aws-node's init container sets on a node with IPv6 egress (reference 3.2).
    node.exec("sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
    return node, pod, inet


def talk(pod: Netns, inet: Netns, server_ip: str) -> str:
    """Connect from the pod to a server in the internet namespace; the peer it saw."""
    server = subprocess.Popen(
        ["ip", "netns", "exec", inet.name, "python3", "-c", SERVER, server_ip, str(PORT)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        assert server.stdout.readline().strip() == "ready", server.stderr
        client = pod.exec("python3", "-c", CLIENT, server_ip, str(PORT), check=False)
        assert client.returncode == 0, client.stderr
        return client.stdout.strip()
    finally:
        server.kill()
        server.wait()


def links(ns: Netns) -> list[str]:
    return sorted(
        lnk["ifname"] for lnk in ns.ip_json("link") if lnk["ifname"] not in ("lo", "peer0")
    )


def addr_of(ns: Netns, ifname: str, family: str) -> list[str]:
    return [
        f"{a['local']}/{a['prefixlen']}"
        for link in ns.ip_json("addr")
        if link["ifname"] == ifname
        for a in link.get("addr_info", [])
        if a["family"] == family and a.get("scope") != "link"
    ]


def nat_save(node: Netns, family: int) -> list[str]:
    """Our rules in the node's nat table, as ``iptables-save`` prints them."""
    tool = "iptables-save" if family == 4 else "ip6tables-save"
    text = node.exec(tool, "-t", "nat").stdout
    return [ln for ln in text.splitlines() if "CNI-E4-" in ln or "CNI-E6-" in ln]


def reservations(data_dir: Path) -> list[str]:
    """host-local's reserved addresses (one file per address)."""
    if not data_dir.exists():
        return []
    return sorted(
        p.name
        for net in data_dir.iterdir()
        for p in net.iterdir()
        if not p.name.startswith(("last_reserved", "lock"))
    )


# --------------------------------------------------------------------------- chain via libcni


def egress_entry(tmp: Path, *, enabled: bool, family: int, node_ip: str) -> dict[str, Any]:
    subnet, dst = ("169.254.172.0/22", "0.0.0.0/0") if family == 4 else ("fd00::ac:00/118", "::/0")
    return {
        "name": "egress-cni",
        "type": "egress-cni",
        "mtu": "1500",
        "enabled": "true" if enabled else "false",
        "randomizeSNAT": "prng",
        "nodeIP": node_ip,
        "ipam": {
            "type": "host-local",
            "ranges": [[{"subnet": subnet}]],
            "routes": [{"dst": dst}],
            "dataDir": str(tmp / "egress-ipam"),
        },
        "pluginLogFile": str(tmp / "egress.log"),
        "pluginLogLevel": "DEBUG",
        "stateDir": str(tmp / "egress-state"),
    }


def chain_conflist(tmp: Path, version: str, egress: dict[str, Any]) -> dict[str, Any]:
    aws = {
        "name": "aws-cni",
        "type": "aws-cni",
        "vethPrefix": "eni",
        "mtu": "1500",
        "ipamd": {
            "backend": "fake",
            "stateFile": str(tmp / "ipam.json"),
            "pools": [POOL],
            "driver": "routed_eni",
        },
        "drivers": {"enabled": ["routed_eni"]},
        "stateDir": str(tmp / "state"),
        "runtimeCacheDir": str(tmp / "cnicache"),
        "pluginLogFile": str(tmp / "aws-cni.log"),
        "pluginLogLevel": "DEBUG",
        "capabilities": {"io.kubernetes.cri.pod-annotations": True},
    }
    portmap = {"type": "portmap", "capabilities": {"portMappings": True}, "snat": True}
    return {"cniVersion": version, "name": NETWORK, "plugins": [aws, egress, portmap]}


@pytest.fixture
def ctl(tmp_path: Path) -> Cnictl:
    return Cnictl(
        binary=ensure_cnictl(),
        cni_path=[str(aws_cni_binary().parent), str(GO_PLUGIN_DIR)],
        cache_dir=tmp_path / "cnicache",
    )


def test_disabled_passes_the_previous_result_through(
    ctl: Cnictl, world: tuple[Netns, Netns, Netns], tmp_path: Path
) -> None:
    node, pod, _ = world
    egress = egress_entry(tmp_path, enabled=False, family=6, node_ip="")
    conflist = write_conflist(tmp_path / "net.conflist", chain_conflist(tmp_path, "1.0.0", egress))
    before_nat = nat_save(node, 6)

    added = ctl.add(conflist, pod.path, CID, args=POD_ARGS, run_in_netns=node.name).check()
    result = added.result
    # exactly what aws-cni returned: its host veth and the pod's eth0, its one address
    assert [i["name"] for i in result["interfaces"]][1:] == ["eth0"]
    assert [ip["address"] for ip in result["ips"]] == ["10.77.0.1/32"]
    assert links(pod) == ["eth0"]
    assert nat_save(node, 6) == before_nat == []
    assert not (tmp_path / "egress-ipam").exists()

    ctl.delete(conflist, pod.path, CID, run_in_netns=node.name).check()
    assert links(pod) == []
    assert links(node) == ["up0"]


# libcni 1.1.2 (Debian) cannot decode 1.1.0 results; the direct test below covers 1.1.0.
@pytest.mark.parametrize("version", ["0.4.0", "1.0.0"])
def test_ipv4_pod_gets_ipv6_egress_snat_to_the_node(
    ctl: Cnictl, world: tuple[Netns, Netns, Netns], tmp_path: Path, version: str
) -> None:
    node, pod, inet = world
    egress = egress_entry(tmp_path, enabled=True, family=6, node_ip=NODE_V6)
    conflist = write_conflist(tmp_path / "net.conflist", chain_conflist(tmp_path, version, egress))

    result = ctl.add(conflist, pod.path, CID, args=POD_ARGS, run_in_netns=node.name).check().result
    # prevResult extended with the egress interfaces, its address kept out of `ips`
    names = [i["name"] for i in result["interfaces"]]
    assert names[1] == "eth0"
    assert names[3] == "v6if0"
    host_end = names[2]
    assert host_end.startswith("eg6")
    assert len(host_end) == 14
    assert result["interfaces"][3]["sandbox"] == pod.path
    assert [ip["address"] for ip in result["ips"]] == ["10.77.0.1/32"]

    # pod: v6if0 with a fd00::ac: address, default route through the node; eth0 without v6
    assert links(pod) == ["eth0", "v6if0"]
    (egress_addr,) = addr_of(pod, "v6if0", "inet6")
    assert egress_addr.startswith("fd00::ac:")
    assert egress_addr.endswith("/118")
    pod_ip = egress_addr.split("/")[0]
    assert any(
        r["dst"] == "default" and r["dev"] == "v6if0" and r["gateway"].startswith("fe80:")
        for r in pod.ip_json("-6", "route")
    )
    assert pod.exec("cat", "/proc/sys/net/ipv6/conf/eth0/disable_ipv6").stdout.strip() == "1"
    # node: route back to the pod, SNAT66 to the node's IPv6
    assert [r["dev"] for r in node.ip_json("-6", "route") if r["dst"] == pod_ip] == [host_end]
    rules = nat_save(node, 6)
    chain = next(ln.split()[0][1:] for ln in rules if ln.startswith(":"))
    assert chain.startswith("CNI-E6-")
    assert len(chain) == 28
    comment = f'"name: \\"{NETWORK}\\" id: \\"{CID}\\""'
    assert rules[1:] == [
        f"-A POSTROUTING -s {pod_ip}/128 -m comment --comment {comment} -j {chain}",
        f"-A {chain} -d ff00::/8 -m comment --comment {comment} -j ACCEPT",
        f"-A {chain} -m comment --comment {comment} -j SNAT --to-source {NODE_V6} --random-fully",
    ]

    # real traffic: the internet sees the node's IPv6, and the reply finds the pod
    assert talk(pod, inet, INET_V6) == NODE_V6

    # (the shipped conflist sets disableCheck; this one lets libcni run CHECK)
    ctl.check(conflist, pod.path, CID, run_in_netns=node.name).check()

    ctl.delete(conflist, pod.path, CID, run_in_netns=node.name).check()
    assert links(pod) == []
    assert links(node) == ["up0"]
    assert nat_save(node, 6) == []
    assert not any(r["dst"] == pod_ip for r in node.ip_json("-6", "route"))
    assert reservations(tmp_path / "egress-ipam") == []
    # DEL again (the runtime retries): still success, still nothing
    ctl.delete(conflist, pod.path, CID, run_in_netns=node.name).check()


def test_check_names_a_lost_snat_rule(
    ctl: Cnictl, world: tuple[Netns, Netns, Netns], tmp_path: Path
) -> None:
    node, pod, _ = world
    egress = egress_entry(tmp_path, enabled=True, family=6, node_ip=NODE_V6)
    conflist = write_conflist(tmp_path / "net.conflist", chain_conflist(tmp_path, "1.0.0", egress))
    ctl.add(conflist, pod.path, CID, args=POD_ARGS, run_in_netns=node.name).check()
    (jump,) = [ln for ln in nat_save(node, 6) if ln.startswith("-A POSTROUTING")]
    node.exec("ip6tables", "-t", "nat", "-D", "POSTROUTING", "1")
    failed = ctl.check(conflist, pod.path, CID, run_in_netns=node.name)
    assert not failed.ok
    assert "POSTROUTING has 0 jump(s)" in failed.stdout + failed.stderr, jump
    ctl.delete(conflist, pod.path, CID, run_in_netns=node.name).check()
    assert nat_save(node, 6) == []


def test_del_after_the_pod_namespace_is_gone(
    ctl: Cnictl, make_ns: Callable[[str], Netns], world: tuple[Netns, Netns, Netns],
    tmp_path: Path,
) -> None:  # fmt: skip
    node, _, _ = world
    pod = create_netns("egq")
    try:
        egress = egress_entry(tmp_path, enabled=True, family=6, node_ip=NODE_V6)
        conflist = write_conflist(
            tmp_path / "net.conflist", chain_conflist(tmp_path, "1.0.0", egress)
        )
        ctl.add(conflist, pod.path, CID, args=POD_ARGS, run_in_netns=node.name).check()
    finally:
        delete_netns(pod)
    ctl.delete(conflist, None, CID, run_in_netns=node.name).check()
    assert links(node) == ["up0"]
    assert nat_save(node, 6) == []
    assert reservations(tmp_path / "egress-ipam") == []


def test_chained_record_leaves_the_aws_cni_record_alone(
    ctl: Cnictl, world: tuple[Netns, Netns, Netns], tmp_path: Path
) -> None:
    """Deployed, both plugins share stateDir (/var/lib/cni/vpccni): egress-cni's record
    must not replace the one aws-cni's DEL and GC read."""
    node, pod, _ = world
    egress = egress_entry(tmp_path, enabled=True, family=6, node_ip=NODE_V6)
    egress["stateDir"] = str(tmp_path / "state")
    conflist = write_conflist(tmp_path / "net.conflist", chain_conflist(tmp_path, "1.0.0", egress))
    ctl.add(conflist, pod.path, CID, args=POD_ARGS, run_in_netns=node.name).check()
    try:
        drivers = sorted(
            json.loads(p.read_text())["driver"]
            for p in (tmp_path / "state" / "attachments").glob("*.json")
        )
        assert "routed_eni" in drivers, drivers
    finally:
        ctl.delete(conflist, pod.path, CID, run_in_netns=node.name).check()


# --------------------------------------------------------------------------- IPv6 pod, direct


def direct_conf(tmp: Path, prev: dict[str, Any], **over: Any) -> dict[str, Any]:
    conf = {
        "cniVersion": "1.0.0",
        "name": NETWORK,
        "type": "egress-cni",
        "mtu": "9001",
        "enabled": "true",
        "randomizeSNAT": "hashrandom",
        "nodeIP": NODE_V4,
        "ipam": {
            "type": "host-local",
            "ranges": [[{"subnet": "169.254.172.0/22"}]],
            "routes": [{"dst": "0.0.0.0/0"}],
            "dataDir": str(tmp / "egress-v4-ipam"),
        },
        "pluginLogFile": str(tmp / "egress.log"),
        "pluginLogLevel": "DEBUG",
        "stateDir": str(tmp / "state"),
        "prevResult": prev,
    }
    conf.update(over)
    return conf


def ipv6_pod_prev(pod: Netns) -> dict[str, Any]:
    """What aws-cni in IPv6 mode returns, for a pod whose eth0 holds POD_V6."""
    # a veth whose peer stays in the pod too (no dummy module needed); links() counts eth0 only
    pod.ip("link", "add", "eth0", "type", "veth", "peer", "name", "peer0")
    pod.ip("-6", "addr", "add", f"{POD_V6}/128", "dev", "eth0", "nodad")
    pod.ip("link", "set", "eth0", "up")
    return {
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "eni0123456789a"}, {"name": "eth0", "sandbox": pod.path}],
        "ips": [{"address": f"{POD_V6}/128", "interface": 1, "gateway": "fe80::1"}],
        "dns": {},
    }


def egress(node: Netns, pod: Netns, command: str, conf: dict[str, Any]) -> Call:
    env = cni_env(command, container_id=CID, netns=pod.path, args=POD_ARGS, path=str(GO_PLUGIN_DIR))
    return run_exec(env, conf, in_netns=node.name, binary=EGRESS_PLUGIN)


# 1.1.0: Debian's host-local stops at 1.0.0, so the delegation negotiates down
@pytest.mark.parametrize("version", ["0.4.0", "1.1.0"])
def test_ipv6_pod_gets_ipv4_egress_snat_to_the_node(
    world: tuple[Netns, Netns, Netns], tmp_path: Path, version: str
) -> None:
    node, pod, inet = world
    prev = ipv6_pod_prev(pod)
    conf = direct_conf(tmp_path, prev, cniVersion=version)

    result = egress(node, pod, "ADD", conf).result
    assert result["cniVersion"] == version
    assert [ip["address"] for ip in result["ips"]] == [f"{POD_V6}/128"]
    assert [i["name"] for i in result["interfaces"]][:2] == ["eni0123456789a", "eth0"]
    host_end, pod_end = result["interfaces"][2:]
    assert host_end["name"].startswith("eg4")
    assert "sandbox" not in host_end
    assert pod_end == {"name": "v4if0", "mac": pod_end["mac"], "sandbox": pod.path}

    (egress_addr,) = addr_of(pod, "v4if0", "inet")
    assert egress_addr.startswith("169.254.172.")
    assert egress_addr.endswith("/22")
    pod_ip = egress_addr.split("/")[0]
    routes = {r["dst"]: r for r in pod.ip_json("-4", "route")}
    assert routes["default"]["gateway"] == "169.254.172.1"
    assert routes["169.254.172.1"]["scope"] == "link"
    assert routes["169.254.172.0/22"]["gateway"] == "169.254.172.1"
    assert addr_of(node, host_end["name"], "inet") == []  # the gateway is scope link
    assert [
        a["local"]
        for link in node.ip_json("addr")
        if link["ifname"] == host_end["name"]
        for a in link["addr_info"]
        if a["family"] == "inet"
    ] == ["169.254.172.1"]
    assert [r["dev"] for r in node.ip_json("-4", "route") if r["dst"] == pod_ip] == [
        host_end["name"]
    ]
    rules = nat_save(node, 4)
    chain = rules[0].split()[0][1:]
    assert chain.startswith("CNI-E4-")
    assert rules[1].startswith(f"-A POSTROUTING -s {pod_ip}/32 ")
    assert rules[-1].endswith(f"-j SNAT --to-source {NODE_V4} --random")
    assert reservations(tmp_path / "egress-v4-ipam") == [pod_ip]

    # real traffic: the server sees the node's IPv4 and answers the pod
    assert talk(pod, inet, INET_V4) == NODE_V4

    assert egress(node, pod, "CHECK", conf).ok

    # ADD again (a retried ADD): the first attempt's egress is replaced, never doubled
    assert egress(node, pod, "ADD", conf).ok
    (egress_addr,) = addr_of(pod, "v4if0", "inet")
    pod_ip = egress_addr.split("/")[0]
    assert reservations(tmp_path / "egress-v4-ipam") == [pod_ip]
    again = nat_save(node, 4)
    assert len(again) == len(rules)
    assert again[1].startswith(f"-A POSTROUTING -s {pod_ip}/32 ")
    assert talk(pod, inet, INET_V4) == NODE_V4

    for _ in range(2):  # DEL twice: the second finds nothing and succeeds
        deleted = egress(node, pod, "DEL", conf)
        assert deleted.ok, deleted.stdout
        assert deleted.doc is None
        assert links(pod) == ["eth0"]
        assert links(node) == ["up0"]
        assert nat_save(node, 4) == []
        assert not any(r["dst"] == pod_ip for r in node.ip_json("-4", "route"))
        assert reservations(tmp_path / "egress-v4-ipam") == []


def test_add_failure_undoes_everything(world: tuple[Netns, Netns, Netns], tmp_path: Path) -> None:
    """An IPAM range that hands an address of the wrong family fails ADD, which must
    release the reservation it took."""
    node, pod, _ = world
    conf = direct_conf(tmp_path, ipv6_pod_prev(pod))
    conf["ipam"]["ranges"] = [[{"subnet": "fd00::ac:00/118"}]]
    failed = egress(node, pod, "ADD", conf)
    assert not failed.ok
    assert "exactly one address of the egress family" in failed.error["msg"]
    assert reservations(tmp_path / "egress-v4-ipam") == []
    assert links(pod) == ["eth0"]
    assert links(node) == ["up0"]
    assert nat_save(node, 4) == []


def test_enabled_without_node_ip_is_a_configuration_error(
    world: tuple[Netns, Netns, Netns], tmp_path: Path
) -> None:
    node, pod, _ = world
    failed = egress(node, pod, "ADD", direct_conf(tmp_path, ipv6_pod_prev(pod), nodeIP=""))
    assert failed.code == 7
    assert "$.nodeIP" in failed.error["details"]
    assert links(pod) == ["eth0"]
    assert not (tmp_path / "egress-v4-ipam").exists()
