"""aws-cni driven by a real CNI client: libcni (``cnictl``), chained with Debian's
reference ``portmap`` and ``tuning``, in namespaces the test creates.

Every plugin runs inside a test-made "node" namespace (they change the namespace they
run in); pods are other test-made namespaces.  What the chain did is checked with
independent tools (``ip -j``, ``iptables -t nat -S``, ``ping``), not with our code.
Verbs libcni 1.1.2 does not know (STATUS and GC, spec 1.1.0) and our GET are driven by
executing the plugin directly, as a spec 1.1 runtime would.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

_REPO = Path(__file__).resolve().parents[2]
if str(_REPO) not in sys.path:
    sys.path.insert(0, str(_REPO))

from tests.support.cnictl import GO_PLUGIN_DIR  # noqa: E402
from tests.support.cnictl import Cnictl  # noqa: E402
from tests.support.cnictl import Netns  # noqa: E402
from tests.support.cnictl import aws_cni_binary  # noqa: E402
from tests.support.cnictl import aws_cni_conflist  # noqa: E402
from tests.support.cnictl import cnictl_unavailable_reason  # noqa: E402
from tests.support.cnictl import create_netns  # noqa: E402
from tests.support.cnictl import delete_netns  # noqa: E402
from tests.support.cnictl import ensure_cnictl  # noqa: E402
from tests.support.cnictl import exec_plugin  # noqa: E402
from tests.support.cnictl import fake_ipam_assigned  # noqa: E402
from tests.support.cnictl import nat_rules  # noqa: E402
from tests.support.cnictl import ping  # noqa: E402
from tests.support.cnictl import write_conflist  # noqa: E402
from vpccni.core import version as cniversion  # noqa: E402


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root (creates network namespaces)"
    for tool in ("ip", "iptables", "ping"):
        if shutil.which(tool) is None:
            return f"{tool} missing (apt-get install -y iproute2 iptables iputils-ping)"
    for plugin in ("portmap", "tuning"):
        if not (GO_PLUGIN_DIR / plugin).exists():
            return f"Go plugin {plugin} missing (apt-get install -y containernetworking-plugins)"
    if not aws_cni_binary().exists():
        return f"{aws_cni_binary()} missing (pip install the vpccni package)"
    return cnictl_unavailable_reason()


_REASON = _skip_reason()
pytestmark = [pytest.mark.netns, pytest.mark.skipif(_REASON is not None, reason=_REASON or "")]

POOL = "10.198.0.0/28"
#: the node's own address (on its loopback): what pods reach through their default route
NODE_ADDR = "10.198.1.1"
TUNED_MAC = "02:5a:00:00:00:01"
POD_ARGS = {"K8S_POD_NAME": "web-0", "K8S_POD_NAMESPACE": "default"}
MAPPINGS = {"portMappings": [{"hostPort": 18080, "containerPort": 80, "protocol": "tcp"}]}


@pytest.fixture(scope="module")
def cnictl_bin() -> str:
    return ensure_cnictl()


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
        for ns in made:
            delete_netns(ns)


@pytest.fixture
def node(make_ns: Callable[[str], Netns]) -> Netns:
    ns = make_ns("lac-node")
    ns.ip("addr", "add", f"{NODE_ADDR}/32", "dev", "lo")
    return ns


@pytest.fixture
def ctl(cnictl_bin: str, tmp_path: Path, node: Netns) -> Cnictl:
    return Cnictl(
        binary=cnictl_bin,
        cni_path=[str(aws_cni_binary().parent), str(GO_PLUGIN_DIR)],
        cache_dir=tmp_path / "cnicache",
        default_netns=node.name,
    )


def _conflist(
    tmp_path: Path,
    ctl: Cnictl,
    name: str,
    cni_version: str,
    tuning: dict[str, Any] | None = None,
) -> dict[str, Any]:
    assert ctl.cache_dir is not None  # our plugin's GET reads libcni's cache
    return aws_cni_conflist(
        name,
        tmp_path,
        [POOL],
        cache_dir=ctl.cache_dir,
        cni_version=cni_version,
        tuning=tuning or {"sysctl": {"net.ipv4.conf.eth0.rp_filter": "2"}},
    )


def _plugin_conf(conflist: dict[str, Any], cni_version: str | None = None) -> dict[str, Any]:
    """aws-cni's own configuration, as a runtime hands it to the plugin."""
    return {
        "cniVersion": cni_version or conflist["cniVersion"],
        "name": conflist["name"],
        **conflist["plugins"][0],
    }


def _link_names(ns: Netns) -> list[str]:
    return [link["ifname"] for link in ns.ip_json("link")]


def _host_routes(ns: Netns) -> dict[str, str]:
    return {r["dst"]: r.get("dev", "") for r in ns.ip_json("route")}


def _root_links() -> list[str]:
    out = subprocess.run(["ip", "-j", "link"], capture_output=True, text=True, check=True).stdout
    return sorted(link["ifname"] for link in json.loads(out))


@pytest.mark.parametrize("cni_version", ["0.4.0", "1.0.0"])
def test_chain_add_check_get_del(
    ctl: Cnictl,
    node: Netns,
    make_ns: Callable[[str], Netns],
    tmp_path: Path,
    cni_version: str,
) -> None:
    pod = make_ns("lac-pod")
    conflist = _conflist(tmp_path, ctl, "lacnet", cni_version)
    conf = write_conflist(tmp_path / "lacnet.conflist", conflist)
    cid = "lac-chain-1"
    root_before = _root_links()

    add = ctl.add(conf, pod.path, cid, args=POD_ARGS, capability_args=MAPPINGS).check()
    result = add.result
    assert result["cniVersion"] == cni_version
    (cidr,) = add.addresses()
    ip = cidr.split("/")[0]
    if cni_version == "0.4.0":
        assert result["ips"][0]["version"] == "4"
    host_if, pod_if = result["interfaces"]
    assert pod_if["name"] == "eth0"
    assert pod_if["sandbox"] == pod.path

    # the oracle: what the kernel holds, seen with iproute2
    assert pod.ipv4_addresses("eth0") == [cidr]
    assert _host_routes(node)[ip] == host_if["name"]
    assert host_if["name"] in _link_names(node)
    assert fake_ipam_assigned(tmp_path / "ipam.json") == {f"lacnet~{cid}~eth0": ip}
    # tuning ran after us, inside the pod
    assert pod.exec("cat", "/proc/sys/net/ipv4/conf/eth0/rp_filter").stdout.strip() == "2"
    # portmap's DNAT for this container, in the node namespace
    nat = nat_rules(node)
    assert f'id: \\"{cid}\\"' in nat, nat
    assert f"--to-destination {ip}:80" in nat, nat
    # traffic: node -> pod over the host route, pod -> node over 169.254.1.1
    assert ping(node, ip)
    assert ping(pod, NODE_ADDR)
    # nothing landed in the root namespace
    assert _root_links() == root_before

    # CHECK with empty capability args: Debian's portmap 1.1.1 fails every CHECK that
    # carries port mappings (upstream bug), which is not ours to test.
    ctl.check(conf, pod.path, cid, capability_args={}).check()

    # GET: libcni's cached chain result, and our plugin's GET reading the same cache
    assert ctl.get(conf, pod.path, cid).result == result
    ours = exec_plugin(
        aws_cni_binary(),
        "GET",
        _plugin_conf(conflist),
        container_id=cid,
        ifname="eth0",
        run_in_netns=node.name,
    )
    assert ours.returncode == 0, ours.stdout + ours.stderr
    assert ours.json == result

    ctl.delete(conf, pod.path, cid).check()
    assert host_if["name"] not in _link_names(node)
    assert ip not in _host_routes(node)
    assert "eth0" not in _link_names(pod)
    assert fake_ipam_assigned(tmp_path / "ipam.json") == {}
    nat = nat_rules(node)
    assert "CNI-DN-" not in nat, nat
    assert f"{ip}:80" not in nat
    assert ctl.get(conf, pod.path, cid).result == {}
    gone = exec_plugin(
        aws_cni_binary(),
        "GET",
        _plugin_conf(conflist),
        container_id=cid,
        ifname="eth0",
        run_in_netns=node.name,
    )
    assert gone.returncode == 1
    assert gone.json["code"] == 3
    # DEL is idempotent
    ctl.delete(conf, pod.path, cid).check()
    assert _root_links() == root_before


def test_del_after_pod_namespace_is_gone(
    ctl: Cnictl, node: Netns, make_ns: Callable[[str], Netns], tmp_path: Path
) -> None:
    pod = make_ns("lac-gone")
    conflist = _conflist(tmp_path, ctl, "lacgone", "1.0.0")
    conf = write_conflist(tmp_path / "lacgone.conflist", conflist)
    cid = "lac-gone-1"
    add = ctl.add(conf, pod.path, cid, args=POD_ARGS, capability_args=MAPPINGS).check()
    (cidr,) = add.addresses()
    assert "CNI-DN-" in nat_rules(node)

    delete_netns(pod)  # the container died and its namespace went with it
    assert not Path(pod.path).exists()
    # the runtime still passes the stale path, then no path at all: both succeed
    ctl.delete(conf, pod.path, cid).check()
    ctl.delete(conf, None, cid).check()
    assert fake_ipam_assigned(tmp_path / "ipam.json") == {}
    assert "CNI-DN-" not in nat_rules(node)
    assert cidr.split("/")[0] not in _host_routes(node)
    assert _link_names(node) == ["lo"]
    assert not list((tmp_path / "state" / "attachments").glob("*.json"))


def test_cni_versions_list_is_ignored_by_libcni(
    ctl: Cnictl, make_ns: Callable[[str], Netns], tmp_path: Path
) -> None:
    """libcni 1.1.2 predates spec 1.1.0's ``cniVersions``: it runs the chain at
    ``cniVersion`` and never passes the list to plugins, so negotiation cannot be
    observed through it.  Our negotiation helper is checked on the same conflist."""
    pod = make_ns("lac-vers")
    versions = ["0.4.0", "1.0.0", "9.9.9"]
    conflist = _conflist(tmp_path, ctl, "lacvers", "0.4.0")
    conflist["cniVersions"] = versions
    conf = write_conflist(tmp_path / "lacvers.conflist", conflist)

    add = ctl.add(conf, pod.path, "lac-vers-1", args=POD_ARGS).check()
    assert add.result["cniVersion"] == "0.4.0"  # a spec 1.1 runtime would pick 1.0.0
    ctl.delete(conf, pod.path, "lac-vers-1").check()

    assert cniversion.negotiate(conflist["cniVersion"], conflist["cniVersions"]) == "1.0.0"


def test_status_needs_1_1_0_and_reports_ready(ctl: Cnictl, node: Netns, tmp_path: Path) -> None:
    conflist = _conflist(tmp_path, ctl, "lacstat", "1.0.0")
    ok = exec_plugin(
        aws_cni_binary(), "STATUS", _plugin_conf(conflist, "1.1.0"), run_in_netns=node.name
    )
    assert (ok.returncode, ok.stdout) == (0, "")
    old = exec_plugin(
        aws_cni_binary(), "STATUS", _plugin_conf(conflist, "1.0.0"), run_in_netns=node.name
    )
    assert old.returncode == 1
    assert old.json["code"] == 1
    # fake ipam is always ready; an unreachable ipamd is code 50
    down = _plugin_conf(conflist, "1.1.0")
    down["ipamd"] = {"backend": "grpc", "socket": str(tmp_path / "no-ipamd.sock")}
    gone = exec_plugin(aws_cni_binary(), "STATUS", down, run_in_netns=node.name)
    assert gone.returncode == 1
    assert gone.json["code"] == 50


def _gc_two_pods_keep_one(
    ctl: Cnictl, node: Netns, make_ns: Callable[[str], Netns], tmp_path: Path
) -> tuple[dict[str, str], dict[str, str]]:
    """ADD two pods; GC (spec 1.1.0, executed directly) with only the first valid.
    Returns {cid: address} and {cid: host veth} from before GC."""
    conflist = _conflist(tmp_path, ctl, "lacgc", "1.0.0")
    conf = write_conflist(tmp_path / "lacgc.conflist", conflist)
    addrs: dict[str, str] = {}
    veths: dict[str, str] = {}
    for n, cid in enumerate(("lac-gc-keep", "lac-gc-crashed")):
        pod = make_ns(f"lac-gc{n}")
        add = ctl.add(
            conf, pod.path, cid, args={"K8S_POD_NAME": cid, "K8S_POD_NAMESPACE": "default"}
        ).check()
        addrs[cid] = add.addresses()[0].split("/")[0]
        veths[cid] = add.result["interfaces"][0]["name"]
    gc_conf = _plugin_conf(conflist, "1.1.0")
    gc_conf["cni.dev/valid-attachments"] = [{"containerID": "lac-gc-keep", "ifname": "eth0"}]
    gc = exec_plugin(aws_cni_binary(), "GC", gc_conf, run_in_netns=node.name)
    assert (gc.returncode, gc.stdout) == (0, ""), gc.stdout
    return addrs, veths


def test_gc_releases_the_address_of_a_crashed_container(
    ctl: Cnictl, node: Netns, make_ns: Callable[[str], Netns], tmp_path: Path
) -> None:
    addrs, veths = _gc_two_pods_keep_one(ctl, node, make_ns, tmp_path)
    assert fake_ipam_assigned(tmp_path / "ipam.json") == {
        "lacgc~lac-gc-keep~eth0": addrs["lac-gc-keep"]
    }
    records = sorted(p.name for p in (tmp_path / "state" / "attachments").glob("*.json"))
    assert records == ["lacgc~lac-gc-keep~eth0~aws-cni.json"]
    # the crashed container's plumbing is gone (its namespace may linger), the valid
    # pod is untouched
    assert veths["lac-gc-crashed"] not in _link_names(node)
    assert addrs["lac-gc-crashed"] not in _host_routes(node)
    assert veths["lac-gc-keep"] in _link_names(node)
    assert ping(node, addrs["lac-gc-keep"])
    # and the released address goes to the next pod
    late = make_ns("lac-gc-late")
    conf = tmp_path / "lacgc.conflist"
    again = ctl.add(conf, late.path, "lac-gc-late", args={"K8S_POD_NAME": "late"}).check()
    assert again.addresses() == [addrs["lac-gc-crashed"] + "/32"]


def test_check_notices_a_lost_gateway_neighbour(
    ctl: Cnictl, node: Netns, make_ns: Callable[[str], Netns], tmp_path: Path
) -> None:
    pod = make_ns("lac-mac")
    conflist = _conflist(tmp_path, ctl, "lacmac", "1.0.0", tuning={"mac": TUNED_MAC})
    conf = write_conflist(tmp_path / "lacmac.conflist", conflist)
    add = ctl.add(conf, pod.path, "lac-mac-1", args=POD_ARGS).check()
    assert add.result["interfaces"][1]["mac"] == TUNED_MAC
    # the kernel drops every neighbour entry of a link whose address changes
    assert not ping(node, add.addresses()[0].split("/")[0])
    assert not ctl.check(conf, pod.path, "lac-mac-1", capability_args={}).ok


def test_check_names_a_missing_host_route(
    ctl: Cnictl, node: Netns, make_ns: Callable[[str], Netns], tmp_path: Path
) -> None:
    pod = make_ns("lac-route")
    conf = write_conflist(
        tmp_path / "lacroute.conflist", _conflist(tmp_path, ctl, "lacroute", "1.0.0")
    )
    add = ctl.add(conf, pod.path, "lac-route-1", args=POD_ARGS).check()
    ip = add.addresses()[0].split("/")[0]
    ctl.check(conf, pod.path, "lac-route-1", capability_args={}).check()
    node.ip("route", "del", f"{ip}/32")
    broken = ctl.check(conf, pod.path, "lac-route-1", capability_args={})
    err = broken.cni_error
    assert err is not None, broken.stderr
    assert (err["code"], f"host route {ip}/32 dev" in err.get("details", "")) == (103, True)
