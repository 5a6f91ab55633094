"""In-memory and file-backed stand-ins for ipamd, honouring the IpamApi contract.

``FakeIpam`` keeps its pool in memory (unit tests).  ``FileIpam`` keeps the same pool in
a JSON file under an exclusive lock, so separate plugin processes (libcni, podman, the
benchmarks) share one pool without a daemon.  Both give each attachment one address per
allocation, hand out the lowest free address, and fail with ``POOL_EMPTY`` when the pools
are used up.  They are not ipamd: no ENIs, no cooldown, no warm pool.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
from collections.abc import Iterator
from typing import Any

from vpccni.core import errors
from vpccni.core.ipam import AddressAssignment
from vpccni.core.ipam import AllocateRequest
from vpccni.core.ipam import Allocation
from vpccni.core.ipam import AttachmentKey
from vpccni.core.ipam import FailureReason
from vpccni.core.ipam import IpamError
from vpccni.core.ipam import IpamStatus

_STATE_KIND = "vpccni-fake-ipam/1"


class FakeIpam:
    def __init__(
        self,
        pools: list[str],
        driver: str = "test_veth",
        vpc_cidrs: list[str] | None = None,
        device_number: int = 0,
        route_table: int = 254,
    ) -> None:
        # Where the fake says the addresses live: the primary ENI (device 0, main table)
        # unless a test wants a pod on a "secondary ENI" (device N, table N + 1).
        self._device_number = device_number
        self._route_table = route_table
        if not pools:
            raise errors.invalid_config("$.ipamd.pools: at least one CIDR is required")
        self._pools = []
        for n, pool in enumerate(pools):
            try:
                self._pools.append(ipaddress.ip_network(pool))
            except ValueError as exc:
                raise errors.invalid_config(f"$.ipamd.pools[{n}]: {exc}") from None
        self._driver = driver
        self._vpc_cidrs = tuple(
            vpc_cidrs if vpc_cidrs is not None else [str(p) for p in self._pools]
        )
        # key slug -> record (plain JSON so FileIpam can persist it as is)
        self._assigned: dict[str, dict[str, Any]] = {}
        self.closed = False

    # -- state hooks FileIpam overrides ------------------------------------------------
    @contextlib.contextmanager
    def _transaction(self) -> Iterator[dict[str, dict[str, Any]]]:
        yield self._assigned

    # -- IpamApi -----------------------------------------------------------------------
    def allocate(self, request: AllocateRequest) -> Allocation:
        key = request.key
        if not (key.network_name and key.container_id and key.ifname):
            raise IpamError(
                FailureReason.INVALID_REQUEST,
                "network name, container id and ifname are all required",
            )
        driver = request.driver or self._driver
        with self._transaction() as assigned:
            record = assigned.get(key.token())
            if record is None:
                address = self._first_free(assigned)
                record = {
                    "network": key.network_name,
                    "container": key.container_id,
                    "ifname": key.ifname,
                    "address": address,
                    "driver": driver,
                    "pod": f"{request.pod.namespace}/{request.pod.name}",
                }
                assigned[key.token()] = record
            return self._allocation(record)

    def release(self, key: AttachmentKey, reason: str = "PodDeleted") -> Allocation | None:
        with self._transaction() as assigned:
            record = assigned.pop(key.token(), None)
        return None if record is None else self._allocation(record)

    def lookup(self, key: AttachmentKey) -> Allocation | None:
        with self._transaction() as assigned:
            record = assigned.get(key.token())
        return None if record is None else self._allocation(record)

    def status(self) -> IpamStatus:
        return IpamStatus(ready=True, detail="fake ipam")

    def gc(self, network_name: str, valid: frozenset[AttachmentKey]) -> list[AttachmentKey]:
        released = []
        with self._transaction() as assigned:
            for slug, record in list(assigned.items()):
                key = AttachmentKey(record["network"], record["container"], record["ifname"])
                if key.network_name == network_name and key not in valid:
                    del assigned[slug]
                    released.append(key)
        return sorted(released)

    def close(self) -> None:
        self.closed = True

    # -- helpers -------------------------------------------------------------------------
    def _first_free(self, assigned: dict[str, dict[str, Any]]) -> str:
        used = {r["address"] for r in assigned.values()}
        for pool in self._pools:
            for host in pool.hosts():
                if str(host) not in used:
                    return str(host)
        raise IpamError(
            FailureReason.POOL_EMPTY,
            f"every address of {', '.join(map(str, self._pools))} is assigned",
            "add a pool or delete pods",
        )

    def _allocation(self, record: dict[str, Any]) -> Allocation:
        address = ipaddress.ip_address(record["address"])
        return Allocation(
            key=AttachmentKey(record["network"], record["container"], record["ifname"]),
            driver=record["driver"],
            addresses=(
                AddressAssignment(
                    address=str(address),
                    family=address.version,
                    device_number=self._device_number,
                    route_table=self._route_table,
                ),
            ),
            vpc_cidrs=self._vpc_cidrs,
        )


class FileIpam(FakeIpam):
    """FakeIpam whose pool lives in ``state_file`` (flock-protected, atomically replaced)."""

    def __init__(
        self,
        state_file: str,
        pools: list[str],
        driver: str = "test_veth",
        vpc_cidrs: list[str] | None = None,
        device_number: int = 0,
        route_table: int = 254,
    ) -> None:
        super().__init__(pools, driver, vpc_cidrs, device_number, route_table)
        self._path = state_file

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[dict[str, dict[str, Any]]]:
        os.makedirs(os.path.dirname(self._path) or ".", exist_ok=True)
        with open(self._path + ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            assigned = self._load()
            before = json.dumps(assigned, sort_keys=True)
            yield assigned
            if json.dumps(assigned, sort_keys=True) != before:
                self._save(assigned)

    def _load(self) -> dict[str, dict[str, Any]]:
        try:
            with open(self._path) as f:
                data = json.load(f)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise errors.CniError(
                errors.SpecCode.IO_FAILURE,
                "cannot read the fake ipam state",
                f"$.ipamd.stateFile {self._path}: {exc}",
            ) from None
        if not isinstance(data, dict) or data.get("kind") != _STATE_KIND:
            raise errors.CniError(
                errors.SpecCode.IO_FAILURE,
                "cannot read the fake ipam state",
                f"$.ipamd.stateFile {self._path}: not a {_STATE_KIND} file",
            )
        assigned: dict[str, dict[str, Any]] = data["assigned"]
        return assigned

    def _save(self, assigned: dict[str, dict[str, Any]]) -> None:
        tmp = f"{self._path}.tmp.{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump({"kind": _STATE_KIND, "assigned": assigned}, f, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self._path)
