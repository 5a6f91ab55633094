"""CNI results: one internal shape, encoded in whatever spec version the caller speaks.

Internally a result has the 1.x shape (no per-IP ``version``).  0.3.0, 0.3.1 and 0.4.0
add ``"version": "4"|"6"`` to each IP; 1.0.0 and 1.1.0 drop it.  prevResult of any of
those versions decodes back to the same shape.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from dataclasses import field
from typing import Any

from vpccni.core import errors
from vpccni.core import version as cniversion


@dataclass(frozen=True, slots=True)
class Interface:
    name: str
    mac: str = ""
    sandbox: str = ""
    mtu: int | None = None


@dataclass(frozen=True, slots=True)
class IPConfig:
    address: str  # CIDR notation, e.g. "10.0.1.15/32"
    interface: int | None = None
    gateway: str = ""

    @property
    def family(self) -> int:
        return ipaddress.ip_interface(self.address).version


@dataclass(frozen=True, slots=True)
class Route:
    dst: str
    gw: str = ""


@dataclass(frozen=True, slots=True)
class Result:
    interfaces: tuple[Interface, ...] = ()
    ips: tuple[IPConfig, ...] = ()
    routes: tuple[Route, ...] = ()
    dns: dict[str, Any] = field(default_factory=dict)

    def encode(self, cni_version: str) -> dict[str, Any]:
        """The result as the spec version ``cni_version`` spells it."""
        legacy = cniversion.parse(cni_version) < (1, 0, 0)
        out: dict[str, Any] = {"cniVersion": cni_version}
        if self.interfaces:
            out["interfaces"] = [_encode_interface(i) for i in self.interfaces]
        ips = []
        for ip in self.ips:
            item: dict[str, Any] = {}
            if legacy:
                item["version"] = str(ip.family)
            item["address"] = ip.address
            if ip.gateway:
                item["gateway"] = ip.gateway
            if ip.interface is not None:
                item["interface"] = ip.interface
            ips.append(item)
        if ips:
            out["ips"] = ips
        if self.routes:
            out["routes"] = [{"dst": r.dst, **({"gw": r.gw} if r.gw else {})} for r in self.routes]
        out["dns"] = dict(self.dns)
        return out

    @classmethod
    def decode(cls, raw: Any, where: str = "prevResult") -> Result:
        """Decode a result of any supported version; CniError(7) names the bad field."""
        if not isinstance(raw, dict):
            raise errors.invalid_config(f"{where}: must be an object")
        try:
            interfaces = tuple(
                Interface(
                    name=str(i["name"]),
                    mac=str(i.get("mac", "")),
                    sandbox=str(i.get("sandbox", "")),
                    mtu=i.get("mtu"),
                )
                for i in raw.get("interfaces") or ()
            )
            ips = []
            for n, ip in enumerate(raw.get("ips") or ()):
                address = str(ip["address"])
                try:
                    ipaddress.ip_interface(address)
                except ValueError as exc:
                    raise errors.invalid_config(f"{where}.ips[{n}].address: {exc}") from None
                ips.append(
                    IPConfig(
                        address=address,
                        interface=ip.get("interface"),
                        gateway=str(ip.get("gateway") or ""),
                    )
                )
            routes = tuple(
                Route(dst=str(r["dst"]), gw=str(r.get("gw") or "")) for r in raw.get("routes") or ()
            )
            dns = raw.get("dns") or {}
            if not isinstance(dns, dict):
                raise errors.invalid_config(f"{where}.dns: must be an object")
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise errors.invalid_config(f"{where}: malformed result ({exc!r})") from None
        return cls(interfaces=interfaces, ips=tuple(ips), routes=routes, dns=dict(dns))


def _encode_interface(i: Interface) -> dict[str, Any]:
    item: dict[str, Any] = {"name": i.name}
    if i.mac:
        item["mac"] = i.mac
    if i.mtu is not None:
        item["mtu"] = i.mtu
    if i.sandbox:
        item["sandbox"] = i.sandbox
    return item
