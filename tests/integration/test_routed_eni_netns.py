"""The exec'd ``aws-cni`` with the routed_eni driver and the fake ipam, in real namespaces.

Every call runs the installed console script inside a test-made "node" namespace (the
plugin changes the namespace it runs in: host veths, routes, policy rules, sysctls); pods
are other test-made namespaces.  The fake ipam says where an address lives: the primary
ENI (device 0, main table) or a secondary ENI (device 2, table 3).  What the plugin did is
read back with ``ip -j`` (an independent oracle) and the fake ipam's state file as JSON.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.cnictl import Netns
from tests.support.cnictl import create_netns
from tests.support.cnictl import delete_netns
from tests.support.cnictl import ping
from tests.support.plugin import Call
from tests.support.plugin import cni_env
from tests.support.plugin import fake_conf
from tests.support.plugin import fake_ipam_assigned
from tests.support.plugin import node_and_pod
from tests.support.plugin import run_exec
from tests.support.plugin import stored_records

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
POD_IP = "10.77.0.1"
GW = "169.254.1.1"
SECONDARY = {"deviceNumber": 2, "routeTable": 3}
PRIMARY = {"deviceNumber": 0, "routeTable": 254}
#: routed_eni's ADD steps for a pod on a secondary ENI (see the driver's docstring)
STEPS = 8


@pytest.fixture
def nodepod() -> Iterator[tuple[Netns, Netns]]:
    with node_and_pod("vre") as pair:
        yield pair


def routed_conf(
    tmp: Path,
    version: str = "1.0.0",
    eni: dict[str, int] | None = None,
    section: dict[str, Any] | None = None,
) -> dict[str, Any]:
    conf = fake_conf(tmp, version, driver="routed_eni", vethPrefix="eni", mtu="1500")
    conf["ipamd"].update(SECONDARY if eni is None else eni)
    if section is not None:
        conf["drivers"]["routed_eni"] = section
    return conf


class Plugin:
    """Calls of one attachment (container ``cid``, eth0) from inside the node namespace."""

    def __init__(
        self,
        node: Netns,
        pod: Netns,
        conf: dict[str, Any],
        cid: str = "cid1",
        args: dict[str, str] | None = None,
    ) -> None:
        self.node, self.pod, self.conf, self.cid = node, pod, conf, cid
        self.args = POD_ARGS if args is None else args

    def __call__(self, command: str, conf: dict[str, Any] | None = None) -> Call:
        env = cni_env(command, container_id=self.cid, netns=self.pod.path, args=self.args)
        return run_exec(env, conf or self.conf, in_netns=self.node.name)


# --------------------------------------------------------------------------- oracle


def ip_json(ns: Netns, *args: str) -> list[dict[str, Any]]:
    """``ip -j -n NS ARGS``; a routing table that was never created reads as empty."""
    proc = subprocess.run(
        ["ip", "-j", "-n", ns.name, *args], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        if "table does not exist" in proc.stderr:
            return []
        raise AssertionError(f"ip {args}: {proc.stderr}")
    out: list[dict[str, Any]] = json.loads(proc.stdout or "[]")
    return out


def rules_for(node: Netns, ip: str) -> list[tuple[int, str, str]]:
    """(priority, 'to'|'from', table) of every rule naming ``ip``."""
    found = []
    for rule in ip_json(node, "rule"):
        for direction, key in (("to", "dst"), ("from", "src")):
            if rule.get(key) == ip:
                found.append((rule["priority"], direction, str(rule["table"])))
    return sorted(found)


def routes_to(node: Netns, ip: str, table: str = "main") -> list[dict[str, Any]]:
    return [r for r in ip_json(node, "route", "show", "table", table) if r["dst"] == ip]


def node_links(node: Netns) -> list[str]:
    return [link["ifname"] for link in ip_json(node, "link") if link["ifname"] != "lo"]


def pod_link(pod: Netns, name: str = "eth0") -> dict[str, Any] | None:
    return next((lnk for lnk in ip_json(pod, "link") if lnk["ifname"] == name), None)


def pod_addresses(pod: Netns) -> list[str]:
    return [
        f"{a['local']}/{a['prefixlen']}"
        for link in ip_json(pod, "addr")
        if link["ifname"] == "eth0"
        for a in link.get("addr_info", [])
        if a["family"] == "inet"
    ]


def assert_plumbed(node: Netns, pod: Netns, ip: str, table: str, host_veth: str) -> None:
    """Every piece of a routed pod, read with ip(8)."""
    host = next(lnk for lnk in ip_json(node, "link") if lnk["ifname"] == host_veth)
    assert host["mtu"] == 1500
    assert "UP" in host["flags"]
    mac = host["address"]
    first = int(mac.split(":")[0], 16)
    assert first & 0x02, f"{mac} is not locally administered"
    assert not first & 0x01, f"{mac} is multicast"
    eth0 = pod_link(pod)
    assert eth0 is not None
    assert eth0["mtu"] == 1500
    assert "UP" in eth0["flags"]
    assert pod_addresses(pod) == [f"{ip}/32"]
    pod_routes = ip_json(pod, "route")
    assert any(
        r["dst"] == GW and r["dev"] == "eth0" and r.get("scope") == "link" for r in pod_routes
    )
    assert any(
        r["dst"] == "default" and r.get("gateway") == GW and r["dev"] == "eth0" for r in pod_routes
    )
    neigh = [n for n in ip_json(pod, "neigh") if n["dst"] == GW]
    assert neigh == [{"dst": GW, "dev": "eth0", "lladdr": mac, "state": ["PERMANENT"]}]
    host_routes = routes_to(node, ip)
    assert [(r["dev"], r.get("scope")) for r in host_routes] == [(host_veth, "link")]
    want_rules = [(512, "to", "main")] + ([(1536, "from", table)] if table != "main" else [])
    assert rules_for(node, ip) == want_rules


def assert_clean(node: Netns, pod: Netns | None, conf: dict[str, Any], ip: str = POD_IP) -> None:
    assert node_links(node) == []
    if pod is not None:
        assert pod_link(pod) is None
    assert rules_for(node, ip) == []
    assert routes_to(node, ip) == []
    assert fake_ipam_assigned(conf) == {}


# --------------------------------------------------------------------------- lifecycle


@pytest.mark.parametrize("version", VERSIONS)
def test_secondary_eni_pod_lifecycle(
    tmp_path: Path, nodepod: tuple[Netns, Netns], version: str
) -> None:
    node, pod = nodepod
    conf = routed_conf(tmp_path, version)
    plugin = Plugin(node, pod, conf)

    added = plugin("ADD").result
    assert added["cniVersion"] == version
    host_mac = next(lnk["address"] for lnk in ip_json(node, "link") if lnk["ifname"] == HOST_VETH)
    eth0 = pod_link(pod)
    assert eth0 is not None
    ip_entry: dict[str, Any] = {"address": f"{POD_IP}/32", "interface": 1}
    if version == "0.4.0":
        ip_entry["version"] = "4"
    assert added["ips"] == [ip_entry]
    assert added["interfaces"] == [
        {"name": HOST_VETH, "mac": host_mac},
        {"name": "eth0", "mac": eth0["address"], "sandbox": pod.path},
    ]
    assert_plumbed(node, pod, POD_IP, "3", HOST_VETH)
    assert plugin("CHECK", {**conf, "prevResult": added}).ok

    assert plugin("DEL", {**conf, "prevResult": added}).ok
    assert_clean(node, pod, conf)
    assert stored_records(conf) == []
    assert plugin("DEL", {**conf, "prevResult": added}).ok
    assert plugin("DEL").ok


def test_primary_eni_pod_has_no_from_rule(tmp_path: Path, nodepod: tuple[Netns, Netns]) -> None:
    node, pod = nodepod
    conf = routed_conf(tmp_path, eni=PRIMARY)
    plugin = Plugin(node, pod, conf)
    added = plugin("ADD").result
    assert_plumbed(node, pod, POD_IP, "main", HOST_VETH)
    assert plugin("CHECK", {**conf, "prevResult": added}).ok
    assert plugin("DEL").ok
    assert_clean(node, pod, conf)


def test_without_k8s_args_the_container_id_names_the_veth(
    tmp_path: Path, nodepod: tuple[Netns, Netns]
) -> None:
    node, pod = nodepod
    conf = routed_conf(tmp_path)
    plugin = Plugin(node, pod, conf, args={})
    assert plugin("ADD").ok
    name = "eni" + hashlib.sha1(b".cid1").hexdigest()[:11]  # noqa: S324 - upstream's scheme
    assert node_links(node) == [name]
    assert plugin("DEL").ok
    assert_clean(node, pod, conf)


def test_retried_add_returns_the_same_address_and_one_veth(
    tmp_path: Path, nodepod: tuple[Netns, Netns]
) -> None:
    node, pod = nodepod
    conf = routed_conf(tmp_path)
    plugin = Plugin(node, pod, conf)
    first = plugin("ADD").result
    again = plugin("ADD").result
    assert again["ips"] == first["ips"]
    assert node_links(node) == [HOST_VETH]
    assert len(fake_ipam_assigned(conf)) == 1
    assert_plumbed(node, pod, POD_IP, "3", HOST_VETH)
    assert plugin("CHECK", {**conf, "prevResult": again}).ok


# --------------------------------------------------------------------------- CHECK

#: (what breaks, where, ip(8) arguments, words CHECK must use)
BREAKAGES = [
    ("address", "pod", ["addr", "del", f"{POD_IP}/32", "dev", "eth0"], f"lacks {POD_IP}/32"),
    ("gw route", "pod", ["route", "del", GW, "dev", "eth0"], f"{GW}/32 scope link"),
    ("default route", "pod", ["route", "del", "default"], "default route"),
    ("neighbour", "pod", ["neigh", "del", GW, "dev", "eth0"], "neighbour"),
    (
        "neighbour mac",
        "pod",
        ["neigh", "replace", GW, "lladdr", "02:00:00:00:00:99", "dev", "eth0", "nud", "permanent"],
        "found 02:00:00:00:00:99",
    ),
    (
        "neighbour state",
        "pod",
        ["neigh", "change", GW, "dev", "eth0", "nud", "reachable"],
        "(permanent) is missing",
    ),
    ("mtu", "pod", ["link", "set", "eth0", "mtu", "1400"], "MTU 1400, want 1500"),
    ("host route", "node", ["route", "del", f"{POD_IP}/32"], f"host route {POD_IP}/32"),
    (
        "rule 512",
        "node",
        ["rule", "del", "to", f"{POD_IP}/32", "priority", "512"],
        f"'to {POD_IP} lookup main' priority 512 is missing",
    ),
    (
        "rule 1536",
        "node",
        ["rule", "del", "from", f"{POD_IP}/32", "priority", "1536"],
        f"'from {POD_IP} lookup 3' priority 1536 is missing",
    ),
    ("host veth", "node", ["link", "set", HOST_VETH, "down"], f"host veth {HOST_VETH} is down"),
]


@pytest.mark.parametrize(
    ("where", "argv", "words"), [b[1:] for b in BREAKAGES], ids=[b[0] for b in BREAKAGES]
)
def test_check_names_the_missing_piece(
    tmp_path: Path, nodepod: tuple[Netns, Netns], where: str, argv: list[str], words: str
) -> None:
    node, pod = nodepod
    conf = routed_conf(tmp_path)
    plugin = Plugin(node, pod, conf)
    added = plugin("ADD").result
    (pod if where == "pod" else node).ip(*argv)
    call = plugin("CHECK", {**conf, "prevResult": added})
    assert call.code == 103
    assert words in call.error["details"]
    assert plugin("DEL").ok
    assert_clean(node, pod, conf)


def test_check_names_a_from_rule_in_the_wrong_table(
    tmp_path: Path, nodepod: tuple[Netns, Netns]
) -> None:
    node, pod = nodepod
    conf = routed_conf(tmp_path)
    plugin = Plugin(node, pod, conf)
    added = plugin("ADD").result
    node.ip("rule", "del", "from", f"{POD_IP}/32", "priority", "1536")
    node.ip("rule", "add", "from", f"{POD_IP}/32", "lookup", "7", "priority", "1536")
    call = plugin("CHECK", {**conf, "prevResult": added})
    assert call.code == 103
    assert "in table(s) [7] instead" in call.error["details"]
    # DEL knows the table (3) from the allocation; the stray rule in 7 is not ours.
    assert plugin("DEL").ok
    assert rules_for(node, POD_IP) == [(1536, "from", "7")]


def test_check_reports_every_missing_piece_at_once(
    tmp_path: Path, nodepod: tuple[Netns, Netns]
) -> None:
    node, pod = nodepod
    conf = routed_conf(tmp_path)
    plugin = Plugin(node, pod, conf)
    added = plugin("ADD").result
    node.ip("rule", "del", "to", f"{POD_IP}/32", "priority", "512")
    pod.ip("neigh", "del", GW, "dev", "eth0")
    details = plugin("CHECK", {**conf, "prevResult": added}).error["details"]
    assert "priority 512" in details
    assert "neighbour" in details
    assert "1536" not in details


# --------------------------------------------------------------------------- DEL


def test_del_after_the_pod_namespace_is_gone(tmp_path: Path, nodepod: tuple[Netns, Netns]) -> None:
    node, pod = nodepod
    conf = routed_conf(tmp_path)
    plugin = Plugin(node, pod, conf)
    assert plugin("ADD").ok
    delete_netns(pod)
    assert plugin("DEL").ok
    assert_clean(node, None, conf)
    assert plugin("DEL").ok


def _forget(conf: dict[str, Any]) -> None:
    """The fake ipamd loses the attachment (edit its state file, not through our code)."""
    path = Path(conf["ipamd"]["stateFile"])
    data = json.loads(path.read_text())
    data["assigned"] = {}
    path.write_text(json.dumps(data))


def test_del_after_ipamd_forgot_uses_the_attachment_record(
    tmp_path: Path, nodepod: tuple[Netns, Netns]
) -> None:
    node, pod = nodepod
    conf = routed_conf(tmp_path)
    plugin = Plugin(node, pod, conf)
    assert plugin("ADD").ok
    _forget(conf)
    assert plugin("DEL").ok  # no prevResult: the record knows the address and table 3
    assert_clean(node, pod, conf)


@pytest.mark.parametrize(
    "conf_type",
    [
        # The conflist names the driver, so the core knows whom to ask without ipamd.
        "routed_eni",
        # Nobody knows the driver: every enabled driver tears down from the prevResult.
        "aws-cni",
    ],
)
def test_del_with_only_the_prev_result(
    tmp_path: Path, nodepod: tuple[Netns, Netns], conf_type: str
) -> None:
    node, pod = nodepod
    conf = {**routed_conf(tmp_path), "type": conf_type}
    plugin = Plugin(node, pod, conf)
    added = plugin("ADD").result
    _forget(conf)
    for record in (tmp_path / "state" / "attachments").glob("*.json"):
        record.unlink()
    assert plugin("DEL", {**conf, "prevResult": added}).ok
    assert_clean(node, pod, conf)


def test_del_knowing_nothing_deletes_the_host_veth(
    tmp_path: Path, nodepod: tuple[Netns, Netns]
) -> None:
    node, pod = nodepod
    conf = {**routed_conf(tmp_path), "type": "routed_eni"}
    plugin = Plugin(node, pod, conf)
    assert plugin("ADD").ok
    _forget(conf)
    for record in (tmp_path / "state" / "attachments").glob("*.json"):
        record.unlink()
    assert plugin("DEL").ok
    assert node_links(node) == []
    assert pod_link(pod) is None
    # Without any address nothing says which rules were the pod's: they stay.
    assert rules_for(node, POD_IP) == [(512, "to", "main"), (1536, "from", "3")]


# --------------------------------------------------------------------------- ADD failures


@pytest.mark.parametrize("step", range(STEPS))
def test_failed_add_leaves_nothing_behind(
    tmp_path: Path, nodepod: tuple[Netns, Netns], step: int
) -> None:
    node, pod = nodepod
    conf = routed_conf(tmp_path, section={"failAfterStep": step})
    call = Plugin(node, pod, conf)("ADD")
    assert call.code == 103
    assert f"injected failure after step {step} " in call.error["details"]
    assert "undo incomplete" not in call.error["details"]
    assert_clean(node, pod, conf)
    assert routes_to(node, POD_IP, "3") == []
    assert stored_records(conf) == []


def test_fail_after_the_last_step_is_no_failure(
    tmp_path: Path, nodepod: tuple[Netns, Netns]
) -> None:
    node, pod = nodepod
    conf = routed_conf(tmp_path, section={"failAfterStep": STEPS})
    assert Plugin(node, pod, conf)("ADD").ok
    assert_plumbed(node, pod, POD_IP, "3", HOST_VETH)


def test_section_schema_is_enforced(tmp_path: Path, nodepod: tuple[Netns, Netns]) -> None:
    node, pod = nodepod
    conf = routed_conf(tmp_path, section={"failAfterStep": -1, "bogus": 1})
    call = Plugin(node, pod, conf)("ADD")
    assert call.code == 7
    assert "$.drivers.routed_eni.failAfterStep:" in call.error["details"]
    assert "bogus" in call.error["details"]
    assert_clean(node, pod, conf)


def test_the_node_namespace_itself_is_refused_as_a_pod(tmp_path: Path) -> None:
    node = create_netns("vren")
    try:
        conf = routed_conf(tmp_path)
        call = Plugin(node, node, conf)("ADD")
        assert call.code == 4
        assert "namespace the plugin runs in" in call.error["details"]
        assert node_links(node) == []
        assert ip_json(node, "route") == []
        assert rules_for(node, POD_IP) == []
        assert fake_ipam_assigned(conf) == {}
    finally:
        delete_netns(node)


# --------------------------------------------------------------------------- traffic


def test_two_pods_reach_each_other_and_the_node(tmp_path: Path) -> None:
    node = create_netns("vren")
    pods: list[Netns] = []
    try:
        pods = [create_netns("vrep"), create_netns("vrep")]
        node.exec("sysctl", "-qw", "net.ipv4.ip_forward=1")
        node.ip("addr", "add", "10.99.0.1/32", "dev", "lo")
        # Pod a on the primary ENI, pod b on a secondary one, one shared fake ipam.
        conf_a = routed_conf(tmp_path, eni=PRIMARY)
        conf_b = routed_conf(tmp_path, eni=SECONDARY)
        a = Plugin(node, pods[0], conf_a, cid="ca", args={**POD_ARGS, "K8S_POD_NAME": "a"})
        b = Plugin(node, pods[1], conf_b, cid="cb", args={**POD_ARGS, "K8S_POD_NAME": "b"})
        ip_a = a("ADD").result["ips"][0]["address"].split("/")[0]
        ip_b = b("ADD").result["ips"][0]["address"].split("/")[0]
        assert ip_a != ip_b
        assert ping(pods[0], ip_b)
        assert ping(pods[1], ip_a)
        assert ping(pods[0], "10.99.0.1")
        assert ping(pods[1], "10.99.0.1")
        assert a("DEL").ok
        assert b("DEL").ok
        assert node_links(node) == []
        assert fake_ipam_assigned(conf_a) == {}
    finally:
        for p in pods:
            delete_netns(p)
        delete_netns(node)
