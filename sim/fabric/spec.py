"""Desired state handed to the fabric (nodes and their ENIs) and the names derived from it."""

from __future__ import annotations

import hashlib
import ipaddress
import re
from dataclasses import dataclass

__all__ = ["EniSpec", "NodeSpec", "gateway_v4", "link_name", "peer_name"]

# Namespace names end up as files under /run/netns, so keep them to a safe alphabet.
_NODE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
# Namespace suffixes the fabric uses for itself; a node may not take them.
RESERVED_NODE_NAMES = frozenset({"vpc", "inet"})


@dataclass(frozen=True)
class EniSpec:
    """One ENI attachment as EC2 reports it; ``private_ips`` lists the primary IPv4 first."""

    eni_id: str
    mac: str
    device_index: int
    network_card_index: int
    subnet_cidr: str
    private_ips: tuple[str, ...]
    ipv4_prefixes: tuple[str, ...] = ()
    ipv6_addresses: tuple[str, ...] = ()
    ipv6_prefixes: tuple[str, ...] = ()
    subnet_ipv6_cidr: str | None = None

    @property
    def is_primary(self) -> bool:
        """The ENI the instance was launched with: the OS configures it through DHCP."""
        return self.network_card_index == 0 and self.device_index == 0


@dataclass(frozen=True)
class NodeSpec:
    """One instance: ``name`` names its namespace, ``enis`` are its current attachments."""

    name: str
    instance_id: str
    enis: tuple[EniSpec, ...]


def validate_node(node: NodeSpec) -> None:
    if not _NODE_NAME.match(node.name) or node.name in RESERVED_NODE_NAMES:
        raise ValueError(f"node name {node.name!r} cannot name a namespace")
    seen: set[str] = set()
    for eni in node.enis:
        name = link_name(eni)
        if name in seen:
            raise ValueError(f"node {node.name}: two ENIs map to link {name}")
        seen.add(name)
        if not eni.private_ips:
            raise ValueError(f"ENI {eni.eni_id} has no primary private IP")


def link_name(eni: EniSpec) -> str:
    """Name of the ENI's link inside the node namespace.

    Network card 0 uses ``eth<device_index>``, which is what the kernel names them on a real
    instance when they are attached in device order. Other cards get ``eth<device_index>nc<card>``
    (for example ``eth0nc1``): the device index restarts at 0 on every card, and the CNI finds
    links by MAC address anyway, so the name only has to be unique and readable.
    """
    if eni.network_card_index == 0:
        return f"eth{eni.device_index}"
    return f"eth{eni.device_index}nc{eni.network_card_index}"


def peer_name(eni_id: str) -> str:
    """Name of the ENI's peer link in the vpc namespace.

    Derived from the ENI id alone, so it is unique across nodes and stays the same whichever node
    the ENI is attached to; 13 characters keeps within IFNAMSIZ. The readable identity goes into
    the link alias (see ``state.encode_alias``).
    """
    return "e" + hashlib.blake2s(eni_id.encode(), digest_size=6).hexdigest()


def gateway_v4(subnet_cidr: str) -> str:
    """The subnet router address: the subnet's first address + 1, as in every VPC subnet."""
    net = ipaddress.IPv4Network(subnet_cidr, strict=False)
    return str(net.network_address + 1)


def prefix_len(subnet_cidr: str) -> int:
    return ipaddress.ip_network(subnet_cidr, strict=False).prefixlen
