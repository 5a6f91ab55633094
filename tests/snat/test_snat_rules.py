"""Node SNAT and connmark rules (reference 3.4), for every backend, in test-made namespaces.

Everything runs inside network namespaces these tests create and delete: each backend is
given the namespace name and runs its tools through ``ip netns exec``; the oracles
(``iptables-save``, ``nft -j``, ``ip rule``) run the same way. Nothing touches the root
namespace and no packet leaves the test's namespaces.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

pytestmark = pytest.mark.netns

BACKENDS = ["iptables-nft", "iptables-legacy", "nftables"]
TOOLS = {
    "iptables-nft": ("iptables-nft-save", "iptables-nft-restore"),
    "iptables-legacy": ("iptables-legacy-save", "iptables-legacy-restore"),
    "nftables": ("nft",),
}

# Upstream's ground-truth fixture (TestSetupHostNetworkWithExcludeSNATCIDRs).
VPC = ("10.10.0.0/16", "10.11.0.0/16")
EXCLUDED = ("10.12.0.0/16", "10.13.0.0/16")
NODE_IP = "10.10.10.20"


def sh(*cmd: str, stdin: str | None = None) -> str:
    proc = subprocess.run(cmd, input=stdin, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr}")
    return proc.stdout


def in_ns(ns: str, *cmd: str, stdin: str | None = None) -> str:
    return sh("ip", "netns", "exec", ns, *cmd, stdin=stdin)


@pytest.fixture
def netns() -> Iterator[Any]:
    """Factory of uniquely named namespaces, all deleted afterwards even on failure."""
    made: list[str] = []

    def make(role: str = "node") -> str:
        name = f"vpcsnat-{role}-{uuid.uuid4().hex[:8]}"
        sh("ip", "netns", "add", name)
        made.append(name)
        in_ns(name, "ip", "link", "set", "lo", "up")
        return name

    yield make
    for name in reversed(made):
        subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.fixture(params=BACKENDS)
def backend_name(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    missing = [t for t in (*TOOLS[name], "ip") if shutil.which(t) is None]
    if missing:
        pytest.skip(f"{name}: {', '.join(missing)} not installed")
    return name


@pytest.fixture
def ns(netns: Any, backend_name: str) -> str:
    name: str = netns()
    if backend_name == "iptables-legacy":
        probe = subprocess.run(
            ["ip", "netns", "exec", name, "iptables-legacy", "-t", "nat", "-L"],
            capture_output=True,
            check=False,
        )
        if probe.returncode != 0:
            pytest.skip("legacy iptables tables are not available in this kernel")
    return name


def config(**kw: Any) -> Any:
    from vpccni.ipamd.snat import SnatConfig

    base: dict[str, Any] = dict(
        vpc_cidrs=VPC, exclude_cidrs=EXCLUDED, primary_ip=NODE_IP, primary_interface="lo"
    )
    base.update(kw)
    return SnatConfig(**base)


def backend(name: str, ns: str) -> Any:
    from vpccni.ipamd.snat import make_backend

    assert ns, "a backend in these tests must always target a test namespace"
    return make_backend(name, ns)


def sync(name: str, ns: str, **kw: Any) -> bool:
    """One daemon start: a fresh backend object, one sync."""
    from vpccni.ipamd.snat import desired_rules

    changed: bool = backend(name, ns).sync(desired_rules(config(**kw)))
    return changed


# -- oracles: what the kernel holds, decoded independently of the code under test ----------


def ipt_rules(ns: str, mode: str) -> dict[str, list[str]]:
    """'table/chain' -> rule lines, for every chain and rule iptables-save shows."""
    out: dict[str, list[str]] = {}
    for table in ("nat", "mangle"):
        for line in in_ns(ns, f"iptables-{mode}-save", "-t", table).splitlines():
            if line.startswith(":"):
                out.setdefault(f"{table}/{line[1:].split()[0]}", [])
            elif line.startswith("-A "):
                chain, _, rest = line[3:].partition(" ")
                out.setdefault(f"{table}/{chain}", []).append(rest)
    return out


def _nft_expr(e: dict[str, Any]) -> str:
    if "match" in e:
        m = e["match"]
        left, right = m["left"], m["right"]
        if "payload" in left:
            lhs = f"{left['payload']['field']}"
        elif "meta" in left:
            lhs = left["meta"]["key"]
        elif "fib" in left:
            lhs = f"fib {'.'.join(left['fib']['flags'])} {left['fib']['result']}"
        elif "&" in left:
            lhs = f"ct mark & {left['&'][1]:#x}"
        else:
            lhs = json.dumps(left)
        if isinstance(right, dict) and "prefix" in right:
            right = f"{right['prefix']['addr']}/{right['prefix']['len']}"
        elif isinstance(right, int):
            right = f"{right:#x}"
        return f"{lhs} {m['op']} {right}"
    if "snat" in e:
        flags = e["snat"].get("flags")
        flags = [flags] if isinstance(flags, str) else (flags or [])
        return " ".join(["snat", e["snat"]["addr"], *flags])
    if "jump" in e:
        return f"jump {e['jump']['target']}"
    if "mangle" in e:
        key = e["mangle"]["key"]
        what = "ct mark" if "ct" in key else "meta mark"
        return f"{what} |= {e['mangle']['value']['|'][1]:#x}"
    if "return" in e:
        return "return"
    return json.dumps(e)


def nft_rules(ns: str) -> dict[str, list[str]]:
    """'table/chain' -> decoded rules for the aws-cni table, plus hooks as a pseudo-rule."""
    ruleset = json.loads(in_ns(ns, "nft", "-j", "list", "ruleset"))["nftables"]
    out: dict[str, list[str]] = {}
    for item in ruleset:
        if "chain" in item and item["chain"]["table"] == "aws-cni":
            ch = item["chain"]
            hook = f"hook {ch['type']} {ch['hook']} {ch['prio']}" if "hook" in ch else None
            out[ch["name"]] = [hook] if hook else []
        if "rule" in item and item["rule"]["table"] == "aws-cni":
            r = item["rule"]
            text = "; ".join(_nft_expr(e) for e in r["expr"] if "counter" not in e)
            comment = f"  # {r['comment']}" if "comment" in r else ""
            out[r["chain"]].append(text + comment)
    return out


def rules(ns: str, name: str) -> dict[str, list[str]]:
    if name == "nftables":
        return nft_rules(ns)
    ours = {
        k: v
        for k, v in ipt_rules(ns, name.removeprefix("iptables-")).items()
        if "AWS" in k or any("AWS" in r for r in v)
    }
    return {k: [r for r in v if "AWS" in r] for k, v in ours.items()}


def all_text(got: dict[str, list[str]]) -> str:
    return "\n".join(line for lines in got.values() for line in lines)


def host_rules(ns: str) -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = json.loads(in_ns(ns, "ip", "-j", "-4", "rule", "show"))
    return [r for r in rules if r.get("priority") == 1024]


RESTORE = "-j CONNMARK --restore-mark --nfmask 0x80 --ctmask 0x80"
EXPECTED_IPTABLES = {
    "nat/PREROUTING": [
        '-i eni+ -m comment --comment "AWS, outbound connections" -j AWS-CONNMARK-CHAIN-0',
        f'-m comment --comment "AWS, CONNMARK" {RESTORE}',
    ],
    "nat/POSTROUTING": ['-m comment --comment "AWS SNAT CHAIN" -j AWS-SNAT-CHAIN-0'],
    "nat/AWS-SNAT-CHAIN-0": [
        '-d 10.13.0.0/16 -m comment --comment "AWS SNAT CHAIN EXCLUSION" -j RETURN',
        '-d 10.12.0.0/16 -m comment --comment "AWS SNAT CHAIN EXCLUSION" -j RETURN',
        '-d 10.11.0.0/16 -m comment --comment "AWS SNAT CHAIN" -j RETURN',
        '-d 10.10.0.0/16 -m comment --comment "AWS SNAT CHAIN" -j RETURN',
        '! -o vlan+ -m comment --comment "AWS, SNAT" -m addrtype ! --dst-type LOCAL '
        "-j SNAT --to-source 10.10.10.20 --random-fully",
    ],
    "nat/AWS-CONNMARK-CHAIN-0": [
        '-d 10.13.0.0/16 -m comment --comment "AWS CONNMARK CHAIN" -j RETURN',
        '-d 10.12.0.0/16 -m comment --comment "AWS CONNMARK CHAIN" -j RETURN',
        '-d 10.11.0.0/16 -m comment --comment "AWS CONNMARK CHAIN" -j RETURN',
        '-d 10.10.0.0/16 -m comment --comment "AWS CONNMARK CHAIN" -j RETURN',
        '-m comment --comment "AWS, CONNMARK" -j CONNMARK --set-xmark 0x80/0x80',
    ],
    "mangle/PREROUTING": [
        '-i lo -m comment --comment "AWS, primary ENI" -m addrtype --dst-type LOCAL '
        "--limit-iface-in -j CONNMARK --set-xmark 0x80/0x80",
        f'-i eni+ -m comment --comment "AWS, primary ENI" {RESTORE}',
        f'-i vlan+ -m comment --comment "AWS, primary ENI" {RESTORE}',
    ],
}
RESTORE_NFT = "ct mark & 0x80 == 0x80; meta mark |= 0x80"
EXPECTED_NFT = {
    "nat-postrouting": ["hook nat postrouting 100", "jump AWS-SNAT-CHAIN-0  # AWS SNAT CHAIN"],
    "AWS-SNAT-CHAIN-0": [
        "daddr == 10.13.0.0/16; return  # AWS SNAT CHAIN EXCLUSION",
        "daddr == 10.12.0.0/16; return  # AWS SNAT CHAIN EXCLUSION",
        "daddr == 10.11.0.0/16; return  # AWS SNAT CHAIN",
        "daddr == 10.10.0.0/16; return  # AWS SNAT CHAIN",
        "oifname != vlan*; fib daddr type != local; snat 10.10.10.20 fully-random  # AWS, SNAT",
    ],
    "nat-prerouting": [
        "hook nat prerouting -90",
        "fib daddr type == local; return",
        "iifname == eni*; jump AWS-CONNMARK-CHAIN-0  # AWS, outbound connections",
        f"{RESTORE_NFT}  # AWS, CONNMARK",
    ],
    "AWS-CONNMARK-CHAIN-0": [
        "daddr == 10.13.0.0/16; return  # AWS CONNMARK CHAIN",
        "daddr == 10.12.0.0/16; return  # AWS CONNMARK CHAIN",
        "daddr == 10.11.0.0/16; return  # AWS CONNMARK CHAIN",
        "daddr == 10.10.0.0/16; return  # AWS CONNMARK CHAIN",
        "ct mark |= 0x80  # AWS, CONNMARK",
    ],
    "mangle-prerouting": [
        "hook filter prerouting -150",
        "iifname == lo; fib daddr.iif type == local; ct mark |= 0x80  # AWS, primary ENI",
        f"iifname == eni*; {RESTORE_NFT}  # AWS, primary ENI",
        f"iifname == vlan*; {RESTORE_NFT}  # AWS, primary ENI",
    ],
}


def expected(name: str) -> dict[str, list[str]]:
    return EXPECTED_NFT if name == "nftables" else EXPECTED_IPTABLES


def plant_foreign(ns: str) -> None:
    """Rules other components own (kube-proxy, portmap) in both iptables flavours and nft."""
    for mode in ("nft", "legacy"):
        if shutil.which(f"iptables-{mode}-restore"):
            in_ns(
                ns,
                f"iptables-{mode}-restore",
                "--noflush",
                stdin="*nat\n:KUBE-POSTROUTING - [0:0]\n:CNI-HOSTPORT-DNAT - [0:0]\n"
                "-A POSTROUTING -m comment --comment kube -j KUBE-POSTROUTING\n"
                "-A KUBE-POSTROUTING -m mark --mark 0x4000/0x4000 -j MASQUERADE\n"
                "-A PREROUTING -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT\n"
                "COMMIT\n*mangle\n-A PREROUTING -i eth9 -j MARK --set-xmark 0x1/0x1\nCOMMIT\n",
            )
    in_ns(
        ns,
        "nft",
        "-f",
        "-",
        stdin="table ip kube-proxy {\n chain nat-postrouting {\n"
        "  type nat hook postrouting priority srcnat; policy accept;\n"
        "  meta mark & 0x4000 == 0x4000 masquerade\n }\n}\n",
    )
    in_ns(ns, "ip", "rule", "add", "fwmark", "0x4", "lookup", "100", "priority", "1000")


def snapshot(ns: str) -> str:
    """Everything on the node's firewall and policy routing, minus timestamps."""
    parts = [in_ns(ns, "nft", "list", "ruleset"), in_ns(ns, "ip", "rule")]
    for mode in ("nft", "legacy"):
        if shutil.which(f"iptables-{mode}-save"):
            parts.append(in_ns(ns, f"iptables-{mode}-save"))
    return "\n".join(
        line for part in parts for line in part.splitlines() if not line.startswith("#")
    )


# -- rule-set tests -------------------------------------------------------------------------


def test_sync_creates_exactly_upstream_rules(ns: str, backend_name: str) -> None:
    assert sync(backend_name, ns) is True
    assert rules(ns, backend_name) == expected(backend_name)
    assert [(r["fwmark"], r["fwmask"], r["table"]) for r in host_rules(ns)] == [
        ("0x80", "0x80", "main")
    ]


def test_ten_restarts_leave_one_copy_of_each_rule(ns: str, backend_name: str) -> None:
    sync(backend_name, ns)
    for _ in range(10):
        assert sync(backend_name, ns) is False  # a correct node is not rewritten
    assert rules(ns, backend_name) == expected(backend_name)
    assert len(host_rules(ns)) == 1


def test_duplicates_left_by_someone_else_are_collapsed(ns: str, backend_name: str) -> None:
    sync(backend_name, ns)
    if backend_name == "nftables":
        in_ns(ns, "nft", "add", "rule", "ip", "aws-cni", "nat-postrouting",
              "jump", "AWS-SNAT-CHAIN-0", "comment", '"AWS SNAT CHAIN"')  # fmt: skip
    else:
        ipt = backend_name  # iptables-nft / iptables-legacy
        in_ns(ns, ipt, "-t", "nat", "-A", "POSTROUTING", "-m", "comment", "--comment",
              "AWS SNAT CHAIN", "-j", "AWS-SNAT-CHAIN-0")  # fmt: skip
        # an old multi-chain layout (reference 3.2 step 6)
        in_ns(ns, ipt, "-t", "nat", "-N", "AWS-SNAT-CHAIN-1")
    # the kernel refuses an identical second policy rule; a stale one from an old mark is not
    in_ns(ns, "ip", "rule", "add", "fwmark", "0x100/0x100", "lookup", "main", "priority", "1024")
    assert sync(backend_name, ns) is True
    assert rules(ns, backend_name) == expected(backend_name)
    assert len(host_rules(ns)) == 1


def test_vpc_cidr_and_exclusion_changes_update_in_place(ns: str, backend_name: str) -> None:
    plant_foreign(ns)
    sync(backend_name, ns)
    assert sync(backend_name, ns, vpc_cidrs=("10.10.0.0/16", "10.20.0.0/16"),
                exclude_cidrs=("192.168.0.0/16",)) is True  # fmt: skip
    got = rules(ns, backend_name)
    snat = got["nat/AWS-SNAT-CHAIN-0" if backend_name != "nftables" else "AWS-SNAT-CHAIN-0"]
    text = "\n".join(snat)
    for cidr in ("10.10.0.0/16", "10.20.0.0/16", "192.168.0.0/16"):
        assert text.count(cidr) == 1
    for gone in ("10.11.0.0/16", "10.12.0.0/16", "10.13.0.0/16"):
        assert gone not in all_text(got)
    assert len(snat) == 4  # three RETURNs and the SNAT rule
    # an exclusion of everything means no SNAT at all: a RETURN without a destination
    sync(backend_name, ns, exclude_cidrs=("0.0.0.0/0",))
    snat = rules(ns, backend_name)[
        "nat/AWS-SNAT-CHAIN-0" if backend_name != "nftables" else "AWS-SNAT-CHAIN-0"
    ]
    assert snat[0] in (
        '-m comment --comment "AWS SNAT CHAIN EXCLUSION" -j RETURN',
        "return  # AWS SNAT CHAIN EXCLUSION",
    )


def test_external_snat_removes_snat_and_connmark(ns: str, backend_name: str) -> None:
    sync(backend_name, ns)
    assert sync(backend_name, ns, external_snat=True) is True
    got = rules(ns, backend_name)
    # NodePort support (on by default) keeps its mangle rules and the policy rule.
    if backend_name == "nftables":
        assert set(got) == {"mangle-prerouting"}
        assert got["mangle-prerouting"] == EXPECTED_NFT["mangle-prerouting"]
    else:
        assert set(got) == {"mangle/PREROUTING"}
        assert got["mangle/PREROUTING"] == EXPECTED_IPTABLES["mangle/PREROUTING"]
    assert len(host_rules(ns)) == 1
    sync(backend_name, ns, external_snat=True, node_port_support=False)
    assert rules(ns, backend_name) == {}
    assert host_rules(ns) == []


def test_remove_restores_the_node_and_spares_foreign_rules(ns: str, backend_name: str) -> None:
    plant_foreign(ns)
    before = snapshot(ns)
    sync(backend_name, ns, connmark=0x100)
    assert snapshot(ns) != before
    assert backend(backend_name, ns).remove() is True
    assert backend(backend_name, ns).remove() is False
    assert snapshot(ns) == before


@pytest.mark.parametrize(
    ("mode", "ipt_flag", "nft_flag"),
    [("prng", " --random-fully", " fully-random"), ("hashrandom", " --random", " random"),
     ("none", "", "")],
)  # fmt: skip
def test_randomize_modes(
    ns: str, backend_name: str, mode: str, ipt_flag: str, nft_flag: str
) -> None:
    from vpccni.ipamd.snat import Randomize

    sync(backend_name, ns)
    sync(backend_name, ns, randomize=Randomize.parse(mode))
    got = rules(ns, backend_name)
    if backend_name == "nftables":
        last = got["AWS-SNAT-CHAIN-0"][-1]
        assert last.endswith(f"snat 10.10.10.20{nft_flag}  # AWS, SNAT")
    else:
        last = got["nat/AWS-SNAT-CHAIN-0"][-1]
        assert last.endswith(f"--to-source 10.10.10.20{ipt_flag}")
    assert (
        len(got["AWS-SNAT-CHAIN-0" if backend_name == "nftables" else "nat/AWS-SNAT-CHAIN-0"]) == 5
    )


def test_connmark_from_environment(ns: str, backend_name: str) -> None:
    from vpccni.ipamd.snat import SnatConfig
    from vpccni.ipamd.snat import desired_rules

    env = {"AWS_VPC_K8S_CNI_CONNMARK": "0x4000", "AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS": "x,fd::/8"}
    cfg = SnatConfig.from_env(env, vpc_cidrs=VPC, primary_ip=NODE_IP, primary_interface="lo")
    assert cfg.exclude_cidrs == ()
    backend(backend_name, ns).sync(desired_rules(cfg))
    text = all_text(rules(ns, backend_name))
    assert "0x80" not in text
    assert "0x4000" in text
    assert [(r["fwmark"], r["fwmask"]) for r in host_rules(ns)] == [("0x4000", "0x4000")]


# -- backend selection ----------------------------------------------------------------------


def test_auto_selection_is_sticky_and_cleans_the_other_backend(netns: Any) -> None:
    from vpccni.ipamd.snat import choose
    from vpccni.ipamd.snat import desired_rules
    from vpccni.ipamd.snat import remove_others

    if not (shutil.which("nft") and shutil.which("iptables-nft-save")):
        pytest.skip("needs nft and iptables-nft")
    ns = netns()
    assert choose("auto", ns).startswith("iptables-")  # an empty node: upstream's choice
    assert choose("nftables", ns) == "nftables"
    nft = backend("nftables", ns)
    nft.sync(desired_rules(config()))
    assert choose("auto", ns) == "nftables"  # restarts keep what is there
    # the operator switches to iptables: the nft table goes, the policy rule stays
    ipt = backend(choose("iptables", ns), ns)
    ipt.sync(desired_rules(config()))
    assert remove_others(ipt, ns) == ["nftables"]
    assert nft_rules(ns) == {}
    assert rules(ns, ipt.name) == EXPECTED_IPTABLES
    assert len(host_rules(ns)) == 1
    assert choose("auto", ns) == ipt.name


def test_auto_selects_nftables_on_an_nftables_kube_proxy_node(netns: Any) -> None:
    from vpccni.ipamd.snat import choose

    if not (shutil.which("nft") and shutil.which("iptables-nft-save")):
        pytest.skip("needs nft and iptables-nft")
    ns = netns()
    in_ns(ns, "nft", "add", "table", "ip", "kube-proxy")
    assert choose("auto", ns) == "nftables"


# -- real packets ---------------------------------------------------------------------------

SERVER = r"""
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 8080)); s.listen(16)
print("ready", flush=True)
while True:
    c, peer = s.accept()
    c.sendall(peer[0].encode()); c.close()
"""
CLIENT = r"""
import json, socket, sys
out = {}
for target in sys.argv[1:]:
    with socket.create_connection((target, 8080), timeout=10) as c:
        out[target] = c.recv(100).decode()
print(json.dumps(out))
"""
INTERNET, EXCLUDED_HOST, VPC_HOST = "203.0.113.10", "198.51.100.10", "10.0.2.20"
POD_IP, PRIMARY_IP = "10.0.1.5", "10.0.0.10"


def build_node(netns: Any) -> tuple[str, str, str]:
    """pod --veth(eni*)--> node; node eth0 (primary ENI) and eth1 (the pod's secondary ENI)
    --> "vpc/internet" namespace. The far side runs strict reverse-path filtering, as the VPC
    drops traffic whose source does not belong to the ENI: a SNATed packet (source = primary
    address) that left by the secondary ENI is lost, so replies only work if the connmark
    and the priority-1024 rule send it out of the primary ENI."""
    pod, node, inet = netns("pod"), netns("node"), netns("inet")
    ip = "ip"
    sh(ip, "-n", node, "link", "add", "eni1a2b3c", "type", "veth", "peer", "name", "eth0",
       "netns", pod)  # fmt: skip
    sh(ip, "-n", node, "link", "add", "eth0", "type", "veth", "peer", "name", "vpc0",
       "netns", inet)  # fmt: skip
    sh(ip, "-n", node, "link", "add", "eth1", "type", "veth", "peer", "name", "vpc1",
       "netns", inet)  # fmt: skip
    script = {
        pod: [
            f"addr add {POD_IP}/24 dev eth0", "link set eth0 up",
            "route add default via 10.0.1.1",
        ],
        node: [
            "addr add 10.0.1.1/24 dev eni1a2b3c", "link set eni1a2b3c up",
            f"addr add {PRIMARY_IP}/24 dev eth0", "link set eth0 up",
            "addr add 10.0.3.10/24 dev eth1", "link set eth1 up",
            "route add default via 10.0.0.1",
            "route add default via 10.0.3.1 dev eth1 table 2",
            f"rule add from {POD_IP} lookup 2 priority 1536",
        ],
        inet: [
            "addr add 10.0.0.1/24 dev vpc0", "link set vpc0 up",
            "addr add 10.0.3.1/24 dev vpc1", "link set vpc1 up",
            f"addr add {INTERNET}/32 dev lo", f"addr add {EXCLUDED_HOST}/32 dev lo",
            f"addr add {VPC_HOST}/32 dev lo",
            "route add 10.0.1.0/24 via 10.0.3.10",  # pod addresses live on the secondary ENI
        ],
    }  # fmt: skip
    for ns, cmds in script.items():
        for cmd in cmds:
            sh(ip, "-n", ns, *cmd.split())
    in_ns(node, "sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0",
          "net.ipv4.conf.eth0.rp_filter=2", "net.ipv4.conf.eth1.rp_filter=0")  # fmt: skip
    in_ns(inet, "sysctl", "-qw", "net.ipv4.conf.all.rp_filter=1",
          "net.ipv4.conf.vpc0.rp_filter=1", "net.ipv4.conf.vpc1.rp_filter=1")  # fmt: skip
    return pod, node, inet


@pytest.mark.parametrize("external_snat", [False, True], ids=["snat", "external-snat"])
def test_real_traffic(netns: Any, backend_name: str, external_snat: bool) -> None:
    if backend_name == "iptables-legacy" and shutil.which("iptables-legacy") is None:
        pytest.skip("no iptables-legacy")
    pod, node, inet = build_node(netns)
    sync(backend_name, node, vpc_cidrs=("10.0.0.0/16",), exclude_cidrs=("198.51.100.0/24",),
         primary_ip=PRIMARY_IP, primary_interface="eth0", external_snat=external_snat)  # fmt: skip
    server = subprocess.Popen(
        ["ip", "netns", "exec", inet, sys.executable, "-c", SERVER],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert server.stdout is not None
        assert server.stdout.readline().strip() == "ready"
        seen = json.loads(
            in_ns(pod, sys.executable, "-c", CLIENT, INTERNET, EXCLUDED_HOST, VPC_HOST)
        )
    finally:
        server.kill()
        server.wait()
    # The server's answer arriving at all proves the replies reach the pod.
    assert seen == {
        INTERNET: POD_IP if external_snat else PRIMARY_IP,
        EXCLUDED_HOST: POD_IP,
        VPC_HOST: POD_IP,
    }
    if shutil.which("conntrack"):
        marked = in_ns(node, "conntrack", "-L", "-p", "tcp", "--orig-dst", INTERNET)
        # the connection out of the VPC carries the connmark (unless SNAT is external)
        assert ("mark=128" in marked) is (not external_snat)
        vpc = in_ns(node, "conntrack", "-L", "-p", "tcp", "--orig-dst", VPC_HOST)
        assert "mark=0" in vpc
