"""Subnet address allocation with AWS semantics, done before moto could loop or collide.

moto draws random addresses (possibly the subnet's reserved ones, possibly duplicates across ENIs)
and spins forever once a subnet is full. Here the used space of a subnet is recomputed from the
backend's ENIs on every allocation (the backend stays the single source of truth, so nothing can
drift), and allocation is bounded: random probes first (AWS scatters addresses, which is what
fragments real subnets), then an exhaustive scan, then the AWS error.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Iterable
from typing import Any

from vpccni.sim.ec2.wire import Ec2Error

IPV4_PREFIX_LEN = 28
IPV6_PREFIX_LEN = 80
_PROBES = 64


def _ipv4_of(eni: Any) -> list[str]:
    return [str(a["PrivateIpAddress"]) for a in eni.private_ip_addresses]


def subnet_enis(backend: Any, subnet_id: str) -> list[Any]:
    return [eni for eni in backend.enis.values() if eni.subnet.id == subnet_id]


class Ipv4Space:
    """The IPv4 space of one subnet: which addresses and /28 blocks are free."""

    def __init__(self, backend: Any, subnet: Any) -> None:
        self.net = ipaddress.IPv4Network(subnet.cidr_block)
        self.base = int(self.net.network_address)
        self.size = self.net.num_addresses
        # AWS reserves the network address, the next three (router, DNS, future) and the last.
        self.reserved = {self.base, self.base + 1, self.base + 2, self.base + 3}
        self.reserved.add(self.base + self.size - 1)
        self.used: set[int] = set()
        for eni in subnet_enis(backend, subnet.id):
            self.used.update(int(ipaddress.IPv4Address(ip)) for ip in _ipv4_of(eni))
            for prefix in getattr(eni, "ipv4_prefixes", []):
                self._mark_prefix(str(prefix["Ipv4Prefix"]))
        # Instance primaries moto handed out itself (kept even after their ENI is gone).
        self.used.update(
            int(ipaddress.IPv4Address(ip)) for ip in getattr(subnet, "_subnet_ips", {})
        )

    def _mark_prefix(self, cidr: str) -> None:
        block = ipaddress.IPv4Network(cidr)
        start = int(block.network_address)
        self.used.update(range(start, start + block.num_addresses))

    def free_count(self) -> int:
        taken = len(self.used | self.reserved)
        return self.size - taken

    def _is_free(self, value: int) -> bool:
        return value not in self.used and value not in self.reserved

    def take_addresses(self, count: int, rng: random.Random) -> list[str]:
        if count > self.free_count():
            raise Ec2Error(
                "InsufficientFreeAddressesInSubnet",
                f"The specified subnet does not have enough free addresses to satisfy the request "
                f"({count} requested, {self.free_count()} free in {self.net}).",
            )
        out: list[str] = []
        for _ in range(count):
            value = self._pick_address(rng)
            self.used.add(value)
            out.append(str(ipaddress.IPv4Address(value)))
        return out

    def _pick_address(self, rng: random.Random) -> int:
        for _ in range(_PROBES):
            value = self.base + rng.randrange(self.size)
            if self._is_free(value):
                return value
        free = [v for v in range(self.base, self.base + self.size) if self._is_free(v)]
        return rng.choice(free)  # free_count() guaranteed at least one

    def claim_address(self, ip: str) -> None:
        """Claim an address the caller chose; AWS refuses reserved and in-use ones."""
        addr = ipaddress.IPv4Address(ip)
        value = int(addr)
        if addr not in self.net or value in self.reserved:
            raise Ec2Error(
                "InvalidParameterValue",
                f"Address {ip} is not a usable address of subnet range {self.net}.",
            )
        if value in self.used:
            raise Ec2Error(
                "InvalidIPAddress.InUse", f"The specified address {ip} is already in use."
            )
        self.used.add(value)

    def _block_free(self, start: int) -> bool:
        return all(self._is_free(v) for v in range(start, start + 16))

    def take_prefixes(self, count: int, rng: random.Random) -> list[str]:
        if self.net.prefixlen > IPV4_PREFIX_LEN:
            raise Ec2Error("InsufficientCidrBlocks", "The subnet is smaller than a /28 prefix.")
        busy_blocks = {(v - self.base) >> 4 for v in self.used | self.reserved}
        free_blocks = [b for b in range(self.size >> 4) if b not in busy_blocks]
        if count > len(free_blocks):
            raise Ec2Error(
                "InsufficientCidrBlocks",
                f"There aren't sufficient free Ipv4 addresses or prefixes in subnet {self.net} "
                f"({count} /28 requested, {len(free_blocks)} contiguous free).",
            )
        out = []
        for block in rng.sample(free_blocks, count):
            start = self.base + (block << 4)
            self.used.update(range(start, start + 16))
            out.append(f"{ipaddress.IPv4Address(start)}/{IPV4_PREFIX_LEN}")
        return out

    def claim_prefix(self, cidr: str) -> str:
        try:
            block = ipaddress.IPv4Network(cidr)
        except ValueError as exc:
            raise Ec2Error("InvalidParameterValue", f"Invalid IPv4 prefix {cidr}: {exc}") from exc
        if block.prefixlen != IPV4_PREFIX_LEN or not block.subnet_of(self.net):
            raise Ec2Error(
                "InvalidParameterValue", f"Prefix {cidr} is not a /28 within subnet {self.net}."
            )
        start = int(block.network_address)
        if not self._block_free(start):
            raise Ec2Error(
                "InvalidIPAddress.InUse", f"The prefix {cidr} overlaps addresses in use."
            )
        self.used.update(range(start, start + 16))
        return str(block)


class Ipv6Space:
    """The IPv6 space of one subnet (its first IPv6 CIDR, as AWS allows only one)."""

    def __init__(self, backend: Any, subnet: Any) -> None:
        cidrs = subnet_ipv6_cidrs(subnet)
        if not cidrs:
            raise Ec2Error(
                "InvalidParameterValue",
                f"Subnet {subnet.id} has no IPv6 CIDR block: IPv6 addresses and prefixes "
                "cannot be assigned to its network interfaces.",
            )
        self.net = ipaddress.IPv6Network(cidrs[0])
        self.base = int(self.net.network_address)
        self.size = self.net.num_addresses
        self.reserved = {self.base + i for i in range(4)} | {self.base + self.size - 1}
        self.addrs: set[int] = set()
        self.prefixes: set[int] = set()  # /80 block numbers
        for eni in subnet_enis(backend, subnet.id):
            self.addrs.update(int(ipaddress.IPv6Address(a)) for a in eni.ipv6_addresses)
            for prefix in getattr(eni, "ipv6_prefixes", []):
                self.prefixes.add(
                    self._block_of(int(ipaddress.IPv6Network(prefix["Ipv6Prefix"]).network_address))
                )

    def _block_of(self, value: int) -> int:
        return (value - self.base) >> (128 - IPV6_PREFIX_LEN)

    def _addr_free(self, value: int) -> bool:
        return (
            value not in self.addrs
            and value not in self.reserved
            and self._block_of(value) not in self.prefixes
        )

    def take_addresses(self, count: int, rng: random.Random) -> list[str]:
        out = []
        for _ in range(count):
            for _ in range(_PROBES):
                value = self.base + rng.randrange(self.size)
                if self._addr_free(value):
                    break
            else:  # only reachable for absurdly small IPv6 subnets
                raise Ec2Error(
                    "InsufficientFreeAddressesInSubnet", f"No free IPv6 address in {self.net}."
                )
            self.addrs.add(value)
            out.append(str(ipaddress.IPv6Address(value)))
        return out

    def claim_address(self, ip: str) -> str:
        value = int(ipaddress.IPv6Address(ip))
        if ipaddress.IPv6Address(ip) not in self.net or not self._addr_free(value):
            raise Ec2Error(
                "InvalidIPAddress.InUse", f"The IPv6 address {ip} is in use or not usable."
            )
        self.addrs.add(value)
        return str(ipaddress.IPv6Address(value))

    def _block_busy(self) -> set[int]:
        return self.prefixes | {self._block_of(v) for v in self.addrs | self.reserved}

    def take_prefixes(self, count: int, rng: random.Random) -> list[str]:
        nblocks = self.size >> (128 - IPV6_PREFIX_LEN)
        busy = self._block_busy()
        out = []
        for _ in range(count):
            for _ in range(_PROBES):
                block = rng.randrange(nblocks)
                if block not in busy:
                    break
            else:
                raise Ec2Error("InsufficientCidrBlocks", f"No free /80 prefix left in {self.net}.")
            busy.add(block)
            self.prefixes.add(block)
            out.append(self._block_cidr(block))
        return out

    def _block_cidr(self, block: int) -> str:
        start = self.base + (block << (128 - IPV6_PREFIX_LEN))
        return f"{ipaddress.IPv6Address(start)}/{IPV6_PREFIX_LEN}"

    def claim_prefix(self, cidr: str) -> str:
        try:
            net = ipaddress.IPv6Network(cidr)
        except ValueError as exc:
            raise Ec2Error("InvalidParameterValue", f"Invalid IPv6 prefix {cidr}: {exc}") from exc
        if net.prefixlen != IPV6_PREFIX_LEN or not net.subnet_of(self.net):
            raise Ec2Error(
                "InvalidParameterValue", f"Prefix {cidr} is not a /80 within {self.net}."
            )
        block = self._block_of(int(net.network_address))
        if block in self._block_busy():
            raise Ec2Error(
                "InvalidIPAddress.InUse", f"The prefix {cidr} overlaps addresses in use."
            )
        self.prefixes.add(block)
        return self._block_cidr(block)


def subnet_ipv6_cidrs(subnet: Any) -> list[str]:
    return [
        str(assoc["ipv6CidrBlock"])
        for assoc in subnet.ipv6_cidr_block_associations.values()
        if assoc.get("ipv6CidrBlockState", {}).get("State", "associated") == "associated"
    ]


def normalize_v6(addresses: Iterable[str]) -> list[str]:
    return [str(ipaddress.IPv6Address(a)) for a in addresses]
