"""The ``Fabric`` class: builds the base namespaces and reconciles nodes and ENIs into them."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable
from collections.abc import Sequence

from .base import IGW_SET
from .base import INTERNET_SERVER
from .base import SRC_SETS
from .base import build_base
from .base import set_update_lines
from .shell import FabricError
from .shell import ip_batch
from .shell import list_netns
from .shell import nft_script
from .shell import sysctl
from .spec import EniSpec
from .spec import NodeSpec
from .spec import gateway_v4
from .spec import prefix_len
from .spec import validate_node
from .state import GATEWAY_V6
from .state import EniState
from .state import desired_state
from .state import link_local
from .state import read_kernel

__all__ = ["Fabric"]

_PREFIX = re.compile(r"^[a-z][a-z0-9]{0,11}$")
#: ENI MTU on a real instance (jumbo frames inside the VPC).
ENI_MTU = 9001
# What the EKS AMI sets on every node; pods are forwarded by the node.
_NODE_SYSCTLS = {"net.ipv4.ip_forward": "1"}


class Fabric:
    """A simulated VPC made of network namespaces; see the package docstring for the model."""

    internet_server_address = INTERNET_SERVER

    def __init__(
        self,
        prefix: str,
        vpc_cidrs: Sequence[str],
        vpc_ipv6_cidrs: Sequence[str] = (),
        service_addresses: Sequence[str] = (),
        *,
        source_dest_check: bool = False,
    ) -> None:
        if not _PREFIX.match(prefix):
            raise ValueError(f"prefix {prefix!r}: want a lowercase letter then up to 11 [a-z0-9]")
        self.prefix = prefix
        self.vpc_cidrs = tuple(vpc_cidrs)
        self.vpc_ipv6_cidrs = tuple(vpc_ipv6_cidrs)
        self.service_addresses = tuple(service_addresses)
        self.source_dest_check = source_dest_check
        self._lock = threading.Lock()
        # What is in the kernel, per ENI id; None means "unknown, read it back before diffing".
        self._applied: dict[str, EniState] | None = None
        self._nodes: set[str] = set()  # node names whose namespace exists
        self._sets: dict[str, set[str]] = {}  # nft set name -> elements in the kernel

    # -- names ---------------------------------------------------------------------------------

    @property
    def vpc_netns(self) -> str:
        return f"{self.prefix}-vpc"

    @property
    def internet_netns(self) -> str:
        return f"{self.prefix}-inet"

    def node_netns(self, name: str) -> str:
        return f"{self.prefix}-{name}"

    def _node_of(self, netns: str) -> str:
        return netns[len(self.prefix) + 1 :]

    # -- lifecycle -----------------------------------------------------------------------------

    def ensure_base(self) -> None:
        """Create the vpc and internet namespaces unless both exist already."""
        with self._lock:
            present = list_netns(self.prefix)
            if {self.vpc_netns, self.internet_netns} <= present:
                return
            # Half a base (a crash while building) is rebuilt from scratch.
            ip_batch(
                None,
                [
                    f"netns del {ns}"
                    for ns in (self.vpc_netns, self.internet_netns)
                    if ns in present
                ],
            )
            self._applied = None
            build_base(
                self.vpc_netns,
                self.internet_netns,
                self.vpc_cidrs,
                self.vpc_ipv6_cidrs,
                self.service_addresses,
                self.source_dest_check,
            )

    def teardown(self) -> None:
        """Remove every namespace of this fabric. Safe to call twice."""
        with self._lock:
            self.teardown_prefix(self.prefix)
            self._applied, self._nodes, self._sets = None, set(), {}

    @staticmethod
    def teardown_prefix(prefix: str) -> None:
        """Remove all ``<prefix>-*`` namespaces; needs no state, so it works after a crash."""
        # `netns del` only unmounts the name; the kernel frees each namespace (and its veth
        # pairs) in the background, so a new fabric may reuse the names at once.
        names = sorted(list_netns(prefix))
        if names:
            ip_batch(None, [f"netns del {n}" for n in names])

    # -- reconcile -----------------------------------------------------------------------------

    def sync(self, nodes: Iterable[NodeSpec]) -> None:
        """Make the fabric match ``nodes`` exactly (idempotent); only the difference is applied."""
        nodes = list(nodes)
        desired: dict[str, EniState] = {}
        for node in nodes:
            validate_node(node)
            for eni in node.enis:
                if eni.eni_id in desired:
                    raise ValueError(f"ENI {eni.eni_id} attached twice")
                desired[eni.eni_id] = desired_state(node.name, eni)
        specs = {(n.name, e.eni_id): e for n in nodes for e in n.enis}
        with self._lock:
            applied = self._applied if self._applied is not None else self._load()
            try:
                self._apply(applied, {n.name for n in nodes}, desired, specs)
            except FabricError:
                self._applied = None  # partial batch: read the kernel back next time
                raise

    def _load(self) -> dict[str, EniState]:
        present = list_netns(self.prefix)
        if self.vpc_netns not in present:
            raise FabricError(f"namespace {self.vpc_netns} missing: call ensure_base() first")
        self._nodes = {self._node_of(ns) for ns in present} - {"vpc", "inet"}
        applied = read_kernel(self.vpc_netns)
        self._sets = self._nft_sets(applied.values())
        script = [set_update_lines(k, v, (), flush=True) for k, v in self._sets.items()]
        nft_script(self.vpc_netns, "\n".join(line for lines in script for line in lines) + "\n")
        self._applied = applied
        return applied

    def _nft_sets(self, states: Iterable[EniState]) -> dict[str, set[str]]:
        """Elements of the router's nft sets for these ENIs."""
        states = list(states)
        sets = {IGW_SET: {s.primary_ip for s in states if s.is_primary}}
        if self.source_dest_check:
            for name in SRC_SETS.values():
                sets[name] = set()
            for s in states:
                for addr in s.hosts | s.prefixes:
                    key = (6 if ":" in addr else 4, addr in s.prefixes)
                    sets[SRC_SETS[key]].add(f'"{s.peer}" . {addr}')
        return sets

    def _apply(
        self,
        applied: dict[str, EniState],
        node_names: set[str],
        desired: dict[str, EniState],
        specs: dict[tuple[str, str], EniSpec],
    ) -> None:
        removed = [
            s
            for eni_id, s in applied.items()
            if eni_id not in desired or desired[eni_id].link_key != s.link_key
        ]
        kept = {s.eni_id for s in applied.values()} - {s.eni_id for s in removed}
        new_nodes = node_names - self._nodes
        gone_nodes = self._nodes - node_names

        vpc: list[str] = [f"link del {s.peer}" for s in removed]
        # All deletions before all additions: an address moving between two ENIs in one sync
        # must lose its old route before `replace` gives it the new one.
        for eni_id in kept:
            vpc += _remove_lines(applied[eni_id], desired[eni_id])
        created: list[EniState] = []
        for eni_id, want in desired.items():
            if eni_id in kept:
                vpc += _add_lines(applied[eni_id], want)
            else:
                vpc += _create_lines(want, self.node_netns(want.node))
                created.append(want)

        if new_nodes:
            ip_batch(None, [f"netns add {self.node_netns(n)}" for n in sorted(new_nodes)])
            for n in new_nodes:
                ip_batch(self.node_netns(n), ["link set lo up"])
                sysctl(self.node_netns(n), _NODE_SYSCTLS)
            self._nodes |= new_nodes
        ip_batch(self.vpc_netns, vpc)
        for s in removed:
            del applied[s.eni_id]
        applied.update({s.eni_id: s for s in created})
        for eni_id in kept:
            applied[eni_id] = desired[eni_id]
        if gone_nodes:
            ip_batch(None, [f"netns del {self.node_netns(n)}" for n in sorted(gone_nodes)])
            self._nodes -= gone_nodes
        for s in created:
            if s.is_primary:
                spec = specs[(s.node, s.eni_id)]
                ip_batch(self.node_netns(s.node), _dhcp_lines(s, spec))
        self._apply_sets(desired.values())

    def _apply_sets(self, states: Iterable[EniState]) -> None:
        """Bring the router's nft sets (gateway allow-list, source check) to these ENIs."""
        want_sets = self._nft_sets(states)
        nft: list[str] = []
        for name, elements in want_sets.items():
            have = self._sets.get(name, set())
            nft += set_update_lines(name, elements - have, have - elements)
        if nft:
            nft_script(self.vpc_netns, "\n".join(nft) + "\n")
        self._sets = want_sets


def _host_lines(peer: str, mac: str, addr: str) -> list[str]:
    return [
        f"route replace {addr} dev {peer}",
        f"neigh replace {addr} lladdr {mac} dev {peer} nud permanent",
    ]


def _prefix_line(s: EniState, prefix: str) -> str:
    # Prefixes ride on one permanent neighbour per family instead of one per address.
    via = link_local(s.mac) if ":" in prefix else s.primary_ip
    return f"route replace {prefix} via {via} dev {s.peer} onlink"


def _gateway_line(verb: str, peer: str, addr: str) -> str:
    if addr == GATEWAY_V6:
        return f"addr {verb} {addr}/64 dev {peer}" + (" nodad" if verb == "add" else "")
    # /32: the same router address sits on many peers without adding a connected route that
    # would compete with the per-address routes.
    return f"addr {verb} {addr}/32 dev {peer}"


def _create_lines(s: EniState, node_ns: str) -> list[str]:
    peer = s.peer
    lines = [
        f"link add {peer} mtu {ENI_MTU} type veth"
        f" peer name {s.ifname} address {s.mac} netns {node_ns}",
        f'link set {peer} alias "{s.alias()}"',
        # Answer proxied ARP at once instead of after up to 0.8 s (the default proxy_delay).
        f"ntable change name arp_cache dev {peer} proxy_delay 0",
        f"link set {peer} up",
        f"neigh replace {link_local(s.mac)} lladdr {s.mac} dev {peer} nud permanent",
    ]
    lines += [_gateway_line("add", peer, g) for g in sorted(s.gateways)]
    # The primary IP first: prefix routes go via it.
    for addr in sorted(s.hosts, key=lambda a: a != s.primary_ip):
        lines += _host_lines(peer, s.mac, addr)
    lines += [_prefix_line(s, p) for p in sorted(s.prefixes)]
    return lines


def _remove_lines(old: EniState, new: EniState) -> list[str]:
    peer = old.peer
    lines = [f"route del {p} dev {peer}" for p in sorted(old.prefixes - new.prefixes)]
    for addr in sorted(old.hosts - new.hosts):
        lines += [f"route del {addr} dev {peer}", f"neigh del {addr} dev {peer}"]
    lines += [_gateway_line("del", peer, g) for g in sorted(old.gateways - new.gateways)]
    return lines


def _add_lines(old: EniState, new: EniState) -> list[str]:
    peer = new.peer
    lines = [_gateway_line("add", peer, g) for g in sorted(new.gateways - old.gateways)]
    for addr in sorted(new.hosts - old.hosts):
        lines += _host_lines(peer, new.mac, addr)
    lines += [_prefix_line(new, p) for p in sorted(new.prefixes - old.prefixes)]
    return lines


def _dhcp_lines(s: EniState, spec: EniSpec) -> list[str]:
    """What the node's OS does to its primary ENI at boot (DHCPv4, and DHCPv6 + RA if any)."""
    lines = [
        f"link set {s.ifname} mtu {ENI_MTU} up",
        f"addr add {s.primary_ip}/{prefix_len(spec.subnet_cidr)} dev {s.ifname}",
        f"route replace default via {gateway_v4(spec.subnet_cidr)} dev {s.ifname}",
    ]
    if spec.ipv6_addresses:
        lines += [
            f"addr add {spec.ipv6_addresses[0]}/128 dev {s.ifname} nodad",
            f"route replace ::/0 via {GATEWAY_V6} dev {s.ifname}",
        ]
    return lines
