"""Read-only snapshots of an instance's ENIs, for the metadata emulator and the VPC fabric."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vpccni.sim.ec2.addressing import subnet_ipv6_cidrs
from vpccni.sim.ec2.model import SimNetworkInterface
from vpccni.sim.ec2.model import adopt


@dataclass(frozen=True)
class EniView:
    eni_id: str
    mac: str
    device_index: int
    network_card_index: int
    status: str  # 'attaching' | 'attached'
    interface_type: str
    subnet_id: str
    subnet_cidr: str
    subnet_ipv6_cidrs: tuple[str, ...]
    vpc_id: str
    vpc_cidrs: tuple[str, ...]  # every associated IPv4 CIDR of the VPC, primary first
    vpc_ipv6_cidrs: tuple[str, ...]  # every associated IPv6 CIDR of the VPC
    private_ips: tuple[str, ...]  # primary first
    ipv4_prefixes: tuple[str, ...]
    ipv6_addresses: tuple[str, ...]
    ipv6_prefixes: tuple[str, ...]
    security_group_ids: tuple[str, ...]
    owner_id: str


def vpc_ipv4_cidrs(vpc: Any) -> tuple[str, ...]:
    cidrs = [vpc.cidr_block]
    for assoc in vpc.get_cidr_block_association_set(ipv6=False):
        state = assoc.get("cidr_block_state", {}).get("state", "associated")
        if state == "associated" and assoc["cidr_block"] not in cidrs:
            cidrs.append(assoc["cidr_block"])
    return tuple(cidrs)


def vpc_ipv6_cidrs(vpc: Any) -> tuple[str, ...]:
    cidrs = []
    for assoc in vpc.get_cidr_block_association_set(ipv6=True):
        state = assoc.get("cidr_block_state", {}).get("state", "associated")
        if state == "associated":
            cidrs.append(str(assoc["cidr_block"]))
    return tuple(cidrs)


def eni_view(backend: Any, eni: SimNetworkInterface) -> EniView:
    subnet = eni.subnet
    vpc = backend.get_vpc(subnet.vpc_id)
    return EniView(
        eni_id=eni.id,
        mac=eni.mac_address,
        device_index=int(eni.device_index or 0),
        network_card_index=eni.network_card_index,
        status=eni.attachment_status(),
        interface_type=eni.interface_type,
        subnet_id=subnet.id,
        subnet_cidr=subnet.cidr_block,
        subnet_ipv6_cidrs=tuple(subnet_ipv6_cidrs(subnet)),
        vpc_id=subnet.vpc_id,
        vpc_cidrs=vpc_ipv4_cidrs(vpc),
        vpc_ipv6_cidrs=vpc_ipv6_cidrs(vpc),
        private_ips=tuple(eni.private_ipv4s()),
        ipv4_prefixes=tuple(p["Ipv4Prefix"] for p in eni.ipv4_prefixes),
        ipv6_addresses=tuple(eni.ipv6_addresses),
        ipv6_prefixes=tuple(p["Ipv6Prefix"] for p in eni.ipv6_prefixes),
        security_group_ids=tuple(sorted(g.id for g in eni.group_set)),
        owner_id=eni.owner_id,
    )


def instance_enis(backend: Any, instance_id: str) -> list[EniView]:
    instance = backend.get_instance(instance_id)
    enis = [adopt(e) for e in instance.nics.values() if e.instance is instance]
    enis.sort(key=lambda e: (e.network_card_index, e.device_index or 0))
    return [eni_view(backend, e) for e in enis]
