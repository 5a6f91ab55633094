"""The emulator's network interface: moto's object plus the state AWS has and moto lacks.

Every ENI in the backend is *adopted* into :class:`SimNetworkInterface` (its class is switched to
this subclass, which only adds attributes and overrides two read-only views). Keeping the extra
state on moto's own object means moto's bookkeeping, tags, moto's serializer and ``/moto-api/reset``
all keep working, and nothing in moto is patched.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from moto.ec2.models.elastic_network_interfaces import NetworkInterface

ATTACHING = "attaching"
ATTACHED = "attached"


class SimAttachment:
    """What the EC2 model calls NetworkInterfaceAttachment; read by moto's serializer."""

    def __init__(self, eni: SimNetworkInterface) -> None:
        if eni.instance is None:
            raise ValueError(f"{eni.id} is not attached")
        self.attach_time: datetime | None = eni.attach_time
        self.attachment_id: str | None = eni.attachment_id
        self.delete_on_termination: bool = bool(eni.delete_on_termination)
        self.device_index: int | None = eni.device_index
        self.network_card_index: int = eni.network_card_index
        self.instance_id: str = eni.instance.id
        self.instance_owner_id: str = eni.instance.owner_id
        self.status: str = eni.attachment_status()


class SimNetworkInterface(NetworkInterface):
    network_card_index: int
    attach_ready_at: float
    ipv4_prefixes: list[dict[str, str]]
    ipv6_prefixes: list[dict[str, str]]

    @property
    def attachment(self) -> SimAttachment | None:  # type: ignore[override]
        if self.attachment_id and self.instance is not None:
            return SimAttachment(self)
        return None

    def attachment_status(self, now: float | None = None) -> str:
        # Status is derived from the deadline, so readers never see a stale 'attaching' even
        # if the timer that announces the transition has not fired yet.
        now = time.monotonic() if now is None else now
        return ATTACHED if now >= self.attach_ready_at else ATTACHING

    def private_ipv4s(self) -> list[str]:
        """Primary first, then secondaries in assignment order."""
        ips = [str(a["PrivateIpAddress"]) for a in self.private_ip_addresses]
        primary = self.private_ip_address
        if primary in ips:
            ips.remove(primary)
            ips.insert(0, primary)
        return ips

    def get_filter_value(self, filter_name: str, method_name: str | None = None) -> Any:
        # AWS filters moto lacks (moto answers them with HTTP 500) or gets wrong.
        attached = self.instance is not None
        if filter_name == "attachment.status":
            return self.attachment_status() if attached else None
        if filter_name == "attachment.device-index":
            return self.device_index if attached else None
        if filter_name == "attachment.network-card-index":
            return self.network_card_index if attached else None
        if filter_name == "attachment.delete-on-termination":
            return bool(self.delete_on_termination) if attached else None
        if filter_name == "attachment.instance-owner-id":
            return self.instance.owner_id if self.instance is not None else None
        if filter_name == "interface-type":
            return self.interface_type
        if filter_name == "status":
            return self.status
        if filter_name == "mac-address":
            return self.mac_address
        if filter_name == "owner-id":
            return self.owner_id
        if filter_name in ("private-ip-address", "addresses.private-ip-address"):
            return self.private_ipv4s()
        if filter_name in ("ipv6-addresses.ipv6-address", "ipv6-address"):
            return list(self.ipv6_addresses)
        if filter_name == "ipv4-prefix":
            return [p["Ipv4Prefix"] for p in self.ipv4_prefixes]
        if filter_name == "ipv6-prefix":
            return [p["Ipv6Prefix"] for p in self.ipv6_prefixes]
        if filter_name == "source-dest-check":
            return bool(self.source_dest_check)
        return super().get_filter_value(filter_name, method_name)


def adopt(eni: Any) -> SimNetworkInterface:
    """Give a moto ENI the emulator's extra state (idempotent)."""
    if not isinstance(eni, SimNetworkInterface):
        eni.__class__ = SimNetworkInterface
        eni.network_card_index = 0
        eni.attach_ready_at = 0.0
        eni.ipv4_prefixes = []
        eni.ipv6_prefixes = []
    if not isinstance(eni, SimNetworkInterface):
        raise TypeError(f"cannot adopt {eni!r}")
    return eni


def adopt_all(backend: Any) -> None:
    for eni in list(backend.enis.values()):
        adopt(eni)
