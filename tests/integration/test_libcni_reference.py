"""The real CNI clients (libcni via cnictl, and podman) against Debian's Go
reference plugins.  This proves the clients before they drive ``aws-cni``.

Every plugin runs inside a namespace the test creates ("node"); pods are other
test-made namespaces.  Nothing touches the root network namespace.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

_REPO = Path(__file__).resolve().parents[2]
if str(_REPO) not in sys.path:  # `tests` has no __init__.py; make tests.support importable
    sys.path.insert(0, str(_REPO))

from tests.support.cnictl import GO_PLUGIN_DIR  # noqa: E402
from tests.support.cnictl import Cnictl  # noqa: E402
from tests.support.cnictl import Netns  # noqa: E402
from tests.support.cnictl import PodmanCni  # noqa: E402
from tests.support.cnictl import cnictl_unavailable_reason  # noqa: E402
from tests.support.cnictl import create_netns  # noqa: E402
from tests.support.cnictl import delete_netns  # noqa: E402
from tests.support.cnictl import ensure_cnictl  # noqa: E402
from tests.support.cnictl import podman_unavailable_reason  # noqa: E402
from tests.support.cnictl import ptp_conflist  # noqa: E402
from tests.support.cnictl import write_conflist  # noqa: E402


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root (creates network namespaces)"
    if shutil.which("ip") is None:
        return "iproute2 missing"
    for plugin in ("ptp", "host-local", "portmap", "tuning"):
        if not (GO_PLUGIN_DIR / plugin).exists():
            return (
                f"Go reference plugin {plugin} missing"
                " (apt-get install -y containernetworking-plugins)"
            )
    return cnictl_unavailable_reason()


_REASON = _skip_reason()
pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(_REASON is not None, reason=_REASON or ""),
]

SUBNET = "10.199.0.0/24"


@pytest.fixture(scope="module")
def cnictl_bin() -> str:
    return ensure_cnictl()


@pytest.fixture
def node() -> Iterator[Netns]:
    ns = create_netns("lcr-node")
    try:
        yield ns
    finally:
        delete_netns(ns)


@pytest.fixture
def pod() -> Iterator[Netns]:
    ns = create_netns("lcr-pod")
    try:
        yield ns
    finally:
        delete_netns(ns)


@pytest.fixture
def ctl(cnictl_bin: str, tmp_path: Path, node: Netns) -> Cnictl:
    return Cnictl(
        binary=cnictl_bin,
        cni_path=[str(GO_PLUGIN_DIR)],
        cache_dir=tmp_path / "cnicache",
        default_netns=node.name,
    )


def _allocations(ipam_dir: Path, network: str) -> list[str]:
    d = ipam_dir / network
    if not d.is_dir():
        return []
    return sorted(
        p.name for p in d.iterdir() if p.name[0].isdigit() and "last_reserved" not in p.name
    )


def _nat_rules(node: Netns) -> str:
    proc = node.exec("iptables-save", "-t", "nat", check=False)
    return proc.stdout


def test_ptp_host_local_add_check_get_del(
    ctl: Cnictl, node: Netns, pod: Netns, tmp_path: Path
) -> None:
    ipam = tmp_path / "ipam"
    conf = write_conflist(tmp_path / "ptp.conflist", ptp_conflist("lcrptp", SUBNET, ipam))
    cid = "lcr-ptp-1"

    add = ctl.add(conf, pod.path, cid, args={"K8S_POD_NAME": "p1", "K8S_POD_NAMESPACE": "default"})
    add.check()
    assert add.elapsed_ms is not None
    assert add.elapsed_ms > 0
    assert add.stdout_json is not None
    assert add.stdout_json["cniVersion"] == "1.0.0"
    (addr,) = add.addresses()
    assert addr.startswith("10.199.0.")

    # the address really is in the pod namespace, on eth0
    assert pod.ipv4_addresses("eth0") == [addr]
    # ... and the host side (a /32 route to the pod) is in the node namespace, not the root one
    routes = node.ip_json("route")
    assert any(r.get("dst") == addr.split("/")[0] for r in routes), routes
    assert _allocations(ipam, "lcrptp") == [addr.split("/")[0]]

    assert ctl.check(conf, pod.path, cid).check().stdout_json == {}

    got = ctl.get(conf, pod.path, cid).check()
    assert got.stdout_json == add.stdout_json

    dele = ctl.delete(conf, pod.path, cid).check()
    assert dele.stdout_json == {}
    assert pod.ipv4_addresses() == []
    assert not any(link.get("ifname") == "eth0" for link in pod.ip_json("link"))
    assert _allocations(ipam, "lcrptp") == []
    assert ctl.get(conf, pod.path, cid).check().stdout_json == {}

    # DEL is idempotent: again, and without a namespace (pod already gone)
    ctl.delete(conf, pod.path, cid).check()
    ctl.delete(conf, None, cid).check()


def test_chained_tuning_portmap_reuses_runtime_config(
    ctl: Cnictl, node: Netns, pod: Netns, tmp_path: Path
) -> None:
    ipam = tmp_path / "ipam"
    conf = write_conflist(
        tmp_path / "chain.conflist",
        ptp_conflist("lcrchain", SUBNET, ipam, tuning=True, portmap=True),
    )
    cid = "lcr-chain-1"
    mappings = {"portMappings": [{"hostPort": 18080, "containerPort": 80, "protocol": "tcp"}]}

    add = ctl.add(conf, pod.path, cid, capability_args=mappings).check()
    (addr,) = add.addresses()
    ip = addr.split("/")[0]
    assert pod.ipv4_addresses("eth0") == [addr]
    # tuning applied its sysctl inside the pod namespace
    rp = pod.exec("cat", "/proc/sys/net/ipv4/conf/eth0/rp_filter").stdout.strip()
    assert rp == "2"
    # portmap installed the DNAT for this container in the node namespace
    nat = _nat_rules(node)
    assert f'id: \\"{cid}\\"' in nat or f'id: "{cid}"' in nat, nat
    assert f"--to-destination {ip}:80" in nat

    # CHECK with the runtime config ADD used (cnictl reads it back from the libcni
    # cache).  Debian's portmap 1.1.1 fails every CHECK that carries port mappings
    # (upstream bug, fixed later); accept only that exact failure.
    chk = ctl.check(conf, pod.path, cid)
    if not chk.ok:
        err = chk.cni_error
        assert err is not None, chk.stderr
        assert "could not check" in err["msg"], chk.stderr
    # CHECK of the whole chain succeeds with empty capability args
    ctl.check(conf, pod.path, cid, capability_args={}).check()

    got = ctl.get(conf, pod.path, cid).check()
    assert got.stdout_json == add.stdout_json

    # DEL without passing the mappings again: cnictl reuses ADD's from libcni's
    # cache, so portmap removes its rules (a client that forgot them would leak them)
    ctl.delete(conf, pod.path, cid).check()
    nat = _nat_rules(node)
    assert "CNI-DN-" not in nat, nat
    assert f"{ip}:80" not in nat
    assert pod.ipv4_addresses() == []
    assert _allocations(ipam, "lcrchain") == []
    ctl.delete(conf, pod.path, cid).check()


def test_runtime_config_file_carries_args_to_del(
    cnictl_bin: str, node: Netns, pod: Netns, tmp_path: Path
) -> None:
    """--runtime-config-file alone (no libcni cache) carries ADD's capability args to DEL."""
    ipam = tmp_path / "ipam"
    conf = write_conflist(
        tmp_path / "pm.conflist", ptp_conflist("lcrpm", SUBNET, ipam, portmap=True)
    )
    rtfile = tmp_path / "rt.json"
    cid = "lcr-rt-1"
    mappings = {"portMappings": [{"hostPort": 18081, "containerPort": 81, "protocol": "tcp"}]}
    add_ctl = Cnictl(cnictl_bin, cache_dir=tmp_path / "cache-a", default_netns=node.name)
    del_ctl = Cnictl(cnictl_bin, cache_dir=tmp_path / "cache-b", default_netns=node.name)

    add_ctl.add(conf, pod.path, cid, capability_args=mappings, runtime_config_file=rtfile).check()
    saved = json.loads(rtfile.read_text())
    assert saved["capabilityArgs"] == mappings
    assert "CNI-DN-" in _nat_rules(node)

    del_ctl.delete(conf, pod.path, cid, runtime_config_file=rtfile).check()
    assert "CNI-DN-" not in _nat_rules(node)
    assert not rtfile.exists()
    # the other cache still has the ADD; clear it too
    add_ctl.delete(conf, pod.path, cid).check()


def test_errors_are_reported(ctl: Cnictl, pod: Netns, tmp_path: Path) -> None:
    missing = write_conflist(
        tmp_path / "missing.conflist",
        {"cniVersion": "1.0.0", "name": "lcrmiss", "plugins": [{"type": "no-such-plugin"}]},
    )
    res = ctl.add(missing, pod.path, "lcr-err-1")
    assert res.returncode == 1
    assert "no-such-plugin" in res.stderr

    # a plugin-level CNI error comes back as JSON on the last stderr line
    bad = ptp_conflist("lcrbad", "10.199.0.0/24", tmp_path / "ipam")
    bad["plugins"][0]["ipam"]["ranges"] = [[{"subnet": "not-a-subnet"}]]
    res = ctl.add(write_conflist(tmp_path / "bad.conflist", bad), pod.path, "lcr-err-2")
    assert res.returncode == 1
    err = res.cni_error
    assert err is not None, res.stderr
    assert isinstance(err["code"], int)
    assert err["msg"]
    assert pod.ipv4_addresses() == []


# --------------------------------------------------------------------------- podman


_PODMAN_REASON = podman_unavailable_reason()


@pytest.mark.podman
@pytest.mark.slow
@pytest.mark.skipif(_PODMAN_REASON is not None, reason=_PODMAN_REASON or "")
def test_podman_cni_backend_adds_and_deletes(node: Netns, tmp_path: Path) -> None:
    """podman (CNI backend) inside a test-made node namespace: ADD on start, DEL on exit.

    A logging shim in front of ptp records the verbs podman sent.
    """
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    log = tmp_path / "verbs.log"
    shim = plugins / "ptp-logged"
    shim.write_text(
        "#!/bin/sh\n"
        f'echo "$CNI_COMMAND $CNI_CONTAINERID $CNI_IFNAME" >> {log}\n'
        f"exec {GO_PLUGIN_DIR / 'ptp'}\n"
    )
    shim.chmod(0o755)
    ipam = tmp_path / "ipam"
    pm = PodmanCni(
        workdir=tmp_path / "podman",
        node_netns=node.name,
        plugin_dirs=[str(plugins), str(GO_PLUGIN_DIR)],
    ).setup()
    pm.add_network(ptp_conflist("lcrpodman", SUBNET, ipam, ptp_type="ptp-logged"))
    root_before = _root_netns_snapshot()
    try:
        proc = pm.run(
            "lcrpodman", "/bin/sh", "-c", "ip -o -4 addr show dev eth0", name="lcr-podman-1"
        )
        assert proc.returncode == 0, proc.stderr
        assert "inet 10.199.0." in proc.stdout, proc.stdout
        # podman asks VERSION before each verb; keep the network verbs
        lines = [line.split() for line in log.read_text().splitlines()]
        verbs = [f[0] for f in lines if f and f[0] != "VERSION"]
        assert verbs == ["ADD", "DEL"], verbs
        # the same container id and ifname on both
        ids = {tuple(f[1:]) for f in lines if f and f[0] != "VERSION"}
        assert len(ids) == 1, ids
        # teardown really happened: no address held, no host-side veth left in the node
        assert _allocations(ipam, "lcrpodman") == []
        links = [link["ifname"] for link in node.ip_json("link")]
        assert links == ["lo"], links
        # and the root namespace saw none of it (read-only look)
        assert _root_netns_snapshot() == root_before
    finally:
        pm.cleanup()


def _root_netns_snapshot() -> tuple[list[str], list[str]]:
    def q(*args: str) -> list[str]:
        out = subprocess.run(["ip", "-j", *args], capture_output=True, text=True).stdout
        return sorted(json.dumps(x, sort_keys=True) for x in json.loads(out or "[]"))

    links = [json.loads(x)["ifname"] for x in q("link")]
    return sorted(links), q("route", "show", "table", "all")


def test_netns_helpers_leave_nothing_behind() -> None:
    ns = create_netns("lcr-x")
    assert Path(ns.path).exists()
    delete_netns(ns)
    assert not Path(ns.path).exists()
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert ns.name not in out
