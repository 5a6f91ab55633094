"""The per-network-card datastore: ENIs -> CIDRs -> addresses (upstream section 4.2).

Upstream semantics, with three deliberate differences:

* addresses in cooldown are **not** available: ``PoolStats.available`` leaves them out, so
  the warm-pool math grows the pool instead of leaving a new pod with nothing but cooling
  addresses (upstream's "cooldown starvation");
* the choice order is deterministic (ENIs by device number, CIDRs by address, addresses
  upward from the network address) instead of Go's random map order, so a node's
  behaviour can be predicted and tested;
* a failed assignment says *why* (:class:`vpccni.core.ipam.IpamError` with a
  :class:`~vpccni.core.ipam.FailureReason` and a remedy), instead of "no available IP".

Every change to what the checkpoint holds (assigned addresses and, our addition, addresses
in cooldown) is durable (fsync + rename) before the call returns; if saving fails the change
is undone and the error raised, so a caller is never told of a change the file lacks.

Group commit.  One fsync costs milliseconds, and writing the file once per request while
holding the datastore lock serialised every concurrent request behind every other one's
fsync.  Now a change is made under the lock and gets a sequence number; the caller then
leaves the lock and waits for a write that covers its number.  The first waiter with no
write in progress becomes the writer: it snapshots the *latest* state (every change made so
far, its own and other callers'), saves it, and marks every change up to the snapshot's
number durable.  Callers that arrived during that write are all covered by the next one, so
16 concurrent requests cost about two writes instead of sixteen.

A failed write rolls the store back to the last durable state: the undo of every change
not yet durable (those the failed write covered and any made since) runs newest first, and
every caller waiting on one of them gets the error.  Undoing all of them, not only the
covered ones, keeps undo exact (a later change may build on an earlier one, e.g. the release
of an address just assigned) and leaves memory equal to the file.  Upstream, too, undoes an
assignment whose checkpoint write failed.

Restore first.  Until :meth:`DataStore.restore` has run (with the loaded checkpoint, or an
empty :class:`CheckpointState` on a fresh node) nothing is written: an early removal would
otherwise replace the file, and the running pods' allocations in it, with an empty state.

Lock order: the datastore lock, then the commit condition; never the other way round, and
nobody waits for a write while holding the datastore lock.
"""

from __future__ import annotations

import collections
import ipaddress
import math
import threading
import time
from collections.abc import Callable
from collections.abc import Iterator
from dataclasses import dataclass
from dataclasses import field
from dataclasses import replace
from typing import Any

from vpccni.core.ipam import AddressAssignment
from vpccni.core.ipam import AttachmentKey
from vpccni.core.ipam import FailureReason
from vpccni.core.ipam import IpamError
from vpccni.ipamd.checkpoint import CheckpointEntry
from vpccni.ipamd.checkpoint import Checkpointer
from vpccni.ipamd.checkpoint import CheckpointState
from vpccni.ipamd.checkpoint import CooldownEntry
from vpccni.ipamd.checkpoint import PodMeta

#: Wall-clock seconds (``time.time``): timestamps end up in the checkpoint as Unix ns.
Clock = Callable[[], float]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

MAIN_ROUTE_TABLE = 254
ADDRESSES_PER_V4_PREFIX = 16
#: Placeholders upstream wrote for allocations migrated from the CRI; DEL falls back to them.
MIGRATED_NETWORK = "_migrated-from-cri"
MIGRATED_IFNAME = "unknown"
NO_META = PodMeta()


class DatastoreError(Exception):
    """A datastore operation was refused; messages start with upstream's error strings."""


class DuplicateEniError(DatastoreError):
    pass


class UnknownEniError(DatastoreError):
    pass


class UnknownIpError(DatastoreError):
    pass


class IpAlreadyInStoreError(DatastoreError):
    pass


class IpInUseError(DatastoreError):
    pass


class EniInUseError(DatastoreError):
    pass


class NotRestoredError(DatastoreError):
    """A change that must be checkpointed was attempted before :meth:`DataStore.restore`."""


# -- read-only views (introspection, tests, the pool manager) ----------------------------------


@dataclass(frozen=True, slots=True)
class Assignment:
    """An address held by an attachment, and where it lives on the node."""

    key: AttachmentKey
    address: str
    eni_id: str
    device_number: int
    route_table: int
    network_card: int = 0
    meta: PodMeta = NO_META
    assigned_ns: int = 0

    @property
    def family(self) -> int:
        return ipaddress.ip_address(self.address).version

    def to_address_assignment(self) -> AddressAssignment:
        return AddressAssignment(
            address=self.address,
            family=self.family,
            device_number=self.device_number,
            route_table=self.route_table,
            network_card=self.network_card,
        )


@dataclass(frozen=True, slots=True)
class AddressView:
    address: str
    key: AttachmentKey | None
    meta: PodMeta
    assigned_ns: int
    unassigned_ns: int
    in_cooldown: bool


@dataclass(frozen=True, slots=True)
class CidrView:
    cidr: str
    is_prefix: bool
    size: int
    addresses: tuple[AddressView, ...]

    @property
    def assigned(self) -> int:
        return sum(1 for a in self.addresses if a.key is not None)


@dataclass(frozen=True, slots=True)
class EniView:
    id: str
    device_number: int
    route_table: int
    is_primary: bool
    is_trunk: bool
    is_efa: bool
    is_excluded: bool
    subnet_id: str
    create_time: float
    cidrs: tuple[CidrView, ...]


@dataclass(frozen=True, slots=True)
class PoolStats:
    """Counts over the non-excluded ENIs and the CIDRs of the active mode."""

    total_ips: int = 0
    assigned_ips: int = 0
    cooldown_ips: int = 0
    total_prefixes: int = 0
    #: Prefixes with no assigned and no cooling address (safe to give back to EC2).
    free_prefixes: int = 0

    @property
    def available(self) -> int:
        """Addresses a pod could get right now (cooling ones excluded, unlike upstream)."""
        return self.total_ips - self.assigned_ips - self.cooldown_ips

    @property
    def upstream_available(self) -> int:
        """Upstream's ``AvailableAddresses()``, which counts cooling addresses as free."""
        return self.total_ips - self.assigned_ips


@dataclass(frozen=True, slots=True)
class PoolHints:
    """What the pool manager knows and the datastore does not; used only to explain a
    failed assignment."""

    eni_attaching: bool = False
    at_eni_limit: bool = False
    subnet_exhausted: bool = False
    ec2_throttled: bool = False
    max_pods: int | None = None
    #: Prefix delegation: EC2 said InsufficientCidrBlocks (no aligned /28 free in the
    #: subnet) and falling back to secondary IPs is not allowed.
    no_cidr_blocks: bool = False


# -- internal model -------------------------------------------------------------------------


@dataclass(slots=True)
class _Address:
    address: str
    key: AttachmentKey | None = None
    meta: PodMeta = NO_META
    assigned_ns: int = 0
    unassigned_ns: int = 0  # 0: never released


@dataclass(slots=True)
class _Cidr:
    network: Network
    is_prefix: bool
    #: Only addresses that are or were used; the rest of the CIDR is implicitly free.
    addresses: dict[str, _Address] = field(default_factory=dict)

    def assigned(self) -> int:
        return sum(1 for a in self.addresses.values() if a.key is not None)


@dataclass(slots=True)
class _Eni:
    id: str
    device_number: int
    route_table: int
    is_primary: bool
    is_trunk: bool
    is_efa: bool
    subnet_id: str
    create_time: float
    is_excluded: bool = False
    cidrs: dict[str, _Cidr] = field(default_factory=dict)


_Slot = tuple[_Eni, _Cidr, _Address]


@dataclass(slots=True, eq=False)
class _Ticket:
    """A caller waiting for the write that makes change ``seq`` (and all before it) durable."""

    seq: int
    done: bool = False
    error: BaseException | None = None


#: A ticket for callers with nothing to wait for.
_DURABLE = _Ticket(0, done=True)


def _round_up(n: int, unit: int) -> int:
    return math.ceil(n / unit) * unit if n > 0 else 0


class DataStore:
    """The addresses of one network card.  ``family`` is the pod address family (4 or 6);
    ``prefix_delegation`` selects /28 prefixes over /32 secondary IPs for IPv4;
    ``secondary_fallback`` (prefix delegation only) lets pods take /32 secondary IPs too,
    after the prefixes (VPCCNI_PD_FALLBACK_TO_SECONDARY_IPS: the subnet had no /28 left)."""

    def __init__(
        self,
        checkpointer: Checkpointer,
        *,
        network_card: int = 0,
        family: int = 4,
        prefix_delegation: bool = False,
        secondary_fallback: bool = False,
        cooldown_period: float = 30.0,
        clock: Clock = time.time,
    ) -> None:
        if family not in (4, 6):
            raise ValueError(f"family must be 4 or 6, not {family!r}")
        self.network_card = network_card
        self.family = family
        self.prefix_delegation = prefix_delegation or family == 6
        self.secondary_fallback = secondary_fallback and family == 4 and prefix_delegation
        self.cooldown_period = cooldown_period
        self._checkpointer = checkpointer
        self._clock = clock
        self._lock = threading.RLock()
        self._enis: dict[str, _Eni] = {}
        self._by_key: dict[AttachmentKey, _Slot] = {}
        self._hints = PoolHints()
        # An in-memory checkpointer created empty has nothing an early write could destroy
        # (the unit tests' NullCheckpointer); a file-backed one must be restored first.
        self._restored = bool(getattr(checkpointer, "starts_empty", False))
        # Guarded by _lock: the number of the last change, and the undo of every change
        # not yet durable, oldest first.
        self._seq = 0
        self._undo_log: collections.deque[tuple[int, Callable[[], None]]] = collections.deque()
        # Guarded by _io: the last durable change, the waiting callers, whether one of
        # them is writing.
        self._io = threading.Condition(threading.Lock())
        self._durable = 0
        self._tickets: list[_Ticket] = []
        self._writing = False
        #: Checkpoint writes attempted (metrics, tests: far fewer than changes under load).
        self.writes = 0

    # -- time and cooldown -----------------------------------------------------------------
    def _now_ns(self) -> int:
        return int(self._clock() * 1e9)

    def _cooling(self, a: _Address, now_ns: int) -> bool:
        # Upstream: in cooldown while now - UnassignedTime <= period.
        return (
            a.key is None
            and a.unassigned_ns > 0
            and self.cooldown_period > 0
            and now_ns - a.unassigned_ns <= self.cooldown_period * 1e9
        )

    # -- persistence -------------------------------------------------------------------------
    def _state(self, now_ns: int) -> CheckpointState:
        allocations = []
        cooldown = []
        for _eni, _cidr, a in self._walk_all():
            if a.key is not None:
                allocations.append(CheckpointEntry(a.key, a.address, a.assigned_ns, a.meta))
            elif self._cooling(a, now_ns):
                cooldown.append(CooldownEntry(a.address, a.unassigned_ns))
        return CheckpointState(tuple(allocations), tuple(cooldown))

    @property
    def restored(self) -> bool:
        """Whether :meth:`restore` has run (changes may be checkpointed)."""
        return self._restored

    def _commit(self, undo: Callable[[], None]) -> _Ticket:
        """Register the change just made (caller holds the lock); pass the ticket to
        :meth:`_await` after releasing the lock.  Before :meth:`restore` the change is
        undone and :class:`NotRestoredError` raised: nothing may replace the checkpoint
        before its allocations are in memory."""
        if not self._restored:
            undo()
            raise NotRestoredError(
                "datastore: refusing to write the checkpoint before restore(): it may hold "
                "running pods' allocations (call restore() with the loaded checkpoint, or "
                "with an empty CheckpointState on a fresh node)"
            )
        self._seq += 1
        self._undo_log.append((self._seq, undo))
        return self._ticket(self._seq)

    def _barrier(self) -> _Ticket:
        """A ticket for everything changed so far (caller holds the lock): an answer read
        from memory (a retried ADD's address, an unknown key on DEL) is only given once
        the changes it reflects are durable."""
        return self._ticket(self._seq)

    def _ticket(self, seq: int) -> _Ticket:
        with self._io:
            if seq <= self._durable:
                return _DURABLE
            ticket = _Ticket(seq)
            self._tickets.append(ticket)
            return ticket

    def _await(self, ticket: _Ticket) -> None:
        """Wait (never holding the datastore lock) until ``ticket``'s change is durable,
        writing the checkpoint ourselves when nobody else is; raise the write's error if
        it failed (the change has then been undone)."""
        if ticket.done and ticket.error is None:
            return
        with self._io:
            while not ticket.done and self._writing:
                self._io.wait()
            lead = not ticket.done
            if lead:
                self._writing = True
        if lead:
            try:
                while not ticket.done:
                    self._write_once()
            finally:
                with self._io:
                    self._writing = False
                    self._io.notify_all()
        if ticket.error is not None:
            raise ticket.error

    def _write_once(self) -> None:
        """Save a snapshot of the latest state; settle the tickets it covers, or on failure
        roll back every change not yet durable and fail all waiting tickets."""
        self.writes += 1
        try:
            with self._lock:
                seq = self._seq
                state = self._state(self._now_ns())
            self._checkpointer.save(state)
        # Anything (even KeyboardInterrupt) must settle the waiters, or they hang; the
        # leader re-raises it through its own ticket.
        except BaseException as exc:  # noqa: BLE001
            with self._lock:
                while self._undo_log:
                    _seq, undo = self._undo_log.pop()
                    undo()
                with self._io:
                    # Memory now equals the file again (the old file survives a failed
                    # atomic write), so nothing is pending.
                    self._durable = self._seq
                    failed, self._tickets = self._tickets, []
                    for t in failed:
                        t.error, t.done = exc, True
                    self._io.notify_all()
            return
        with self._lock:
            while self._undo_log and self._undo_log[0][0] <= seq:
                self._undo_log.popleft()
            with self._io:
                self._durable = max(self._durable, seq)
                waiting = []
                for t in self._tickets:
                    if t.seq <= seq:
                        t.done = True
                    else:
                        waiting.append(t)
                self._tickets = waiting
                self._io.notify_all()

    def _walk_all(self) -> Iterator[_Slot]:
        for eni in self._sorted_enis():
            for cidr in sorted(eni.cidrs.values(), key=lambda c: c.network):
                for a in cidr.addresses.values():
                    yield eni, cidr, a

    def _sorted_enis(self) -> list[_Eni]:
        return sorted(self._enis.values(), key=lambda e: (e.device_number, e.id))

    def _usable(self, cidr: _Cidr) -> bool:
        """CIDRs of the active mode: after a PD switch the other kind stays until freed
        (upstream 4.2), except the /32s of the PD fallback to secondary IPs."""
        if cidr.network.version != self.family:
            return False
        if self.family == 6 or cidr.is_prefix == self.prefix_delegation:
            return True
        return self.secondary_fallback and not cidr.is_prefix

    # -- ENIs ----------------------------------------------------------------------------------
    def add_eni(
        self,
        eni_id: str,
        device_number: int,
        *,
        is_primary: bool = False,
        is_trunk: bool = False,
        is_efa: bool = False,
        subnet_id: str = "",
        route_table: int | None = None,
        create_time: float | None = None,
    ) -> None:
        """Add an attached ENI.  Its route table is main (254) for the primary ENI and
        device number + 1 otherwise, unless ``route_table`` says otherwise (network cards
        > 0 use their own numbering)."""
        if route_table is None:
            route_table = MAIN_ROUTE_TABLE if is_primary else device_number + 1
        with self._lock:
            if eni_id in self._enis:
                raise DuplicateEniError(f"data store: duplicate ENI: {eni_id}")
            self._enis[eni_id] = _Eni(
                eni_id,
                device_number,
                route_table,
                is_primary,
                is_trunk,
                is_efa,
                subnet_id,
                self._clock() if create_time is None else create_time,
            )

    def set_excluded(self, eni_id: str, excluded: bool) -> None:
        """Exclude an ENI from pod addresses (its subnet is tagged kubernetes.io/role/cni=0)."""
        with self._lock:
            self._eni(eni_id).is_excluded = excluded

    def remove_eni(self, eni_id: str, force: bool = False) -> list[Assignment]:
        """Forget an ENI.  With pods on it: :class:`EniInUseError`, or with ``force`` (the
        ENI is gone from the instance) the pods lose their addresses, which are returned."""
        with self._lock:
            lost, ticket = self._remove_eni(eni_id, force)
        self._await(ticket)
        return lost

    def _remove_eni(self, eni_id: str, force: bool) -> tuple[list[Assignment], _Ticket]:
        with self._lock:
            eni = self._eni(eni_id)
            lost = [
                self._assignment(eni, a)
                for c in eni.cidrs.values()
                for a in c.addresses.values()
                if a.key is not None
            ]
            if lost and not force:
                raise EniInUseError(
                    "datastore: ENI is used and can not be deleted: "
                    f"{eni_id} has {len(lost)} pod(s)"
                )
            del self._enis[eni_id]
            for assignment in lost:
                del self._by_key[assignment.key]

            def undo() -> None:
                self._enis[eni_id] = eni
                self._reindex(eni)

            return lost, self._commit(undo)

    def _eni(self, eni_id: str, prefix: str = "datastore") -> _Eni:
        eni = self._enis.get(eni_id)
        if eni is None:
            raise UnknownEniError(f"{prefix}: unknown ENI: {eni_id}")
        return eni

    def _reindex(self, eni: _Eni) -> None:
        for cidr in eni.cidrs.values():
            for a in cidr.addresses.values():
                if a.key is not None:
                    self._by_key[a.key] = (eni, cidr, a)

    # -- CIDRs -----------------------------------------------------------------------------------
    def add_cidr(self, eni_id: str, cidr: str, *, is_prefix: bool | None = None) -> None:
        """Add a secondary IP (``a.b.c.d`` or ``/32``) or a delegated prefix (``/28``, ``/80``)."""
        network = ipaddress.ip_network(cidr, strict=True)
        if is_prefix is None:
            is_prefix = network.prefixlen < network.max_prefixlen
        with self._lock:
            eni = self._eni(eni_id, prefix="add ENI's IP to datastore")
            for other in self._enis.values():
                for existing in other.cidrs.values():
                    if existing.network.overlaps(network):
                        raise IpAlreadyInStoreError(
                            f"datastore: IP already in data store: {network} "
                            f"(overlaps {existing.network} on {other.id})"
                        )
            eni.cidrs[str(network)] = _Cidr(network, is_prefix)

    def remove_cidr(self, eni_id: str, cidr: str, force: bool = False) -> list[Assignment]:
        """Remove a CIDR.  Assigned addresses: :class:`IpInUseError`, or with ``force`` the
        pods lose them (returned)."""
        key = str(ipaddress.ip_network(cidr, strict=True))
        with self._lock:
            eni = self._eni(eni_id)
            found = eni.cidrs.get(key)
            if found is None:
                raise UnknownIpError(f"datastore: unknown IP: {key} on {eni_id}")
            lost = [self._assignment(eni, a) for a in found.addresses.values() if a.key]
            if lost and not force:
                raise IpInUseError(
                    f"datastore: IP is used and can not be deleted: {key} has {len(lost)} pod(s)"
                )
            del eni.cidrs[key]
            for assignment in lost:
                del self._by_key[assignment.key]

            def undo() -> None:
                eni.cidrs[key] = found
                self._reindex(eni)

            ticket = self._commit(undo)
        self._await(ticket)
        return lost

    def freeable_cidrs(self) -> list[tuple[str, str]]:
        """(ENI id, CIDR) of active-mode CIDRs with no assigned and no cooling address,
        highest ENI and address first, so the pool shrinks from the end it grew at."""
        with self._lock:
            now = self._now_ns()
            out = []
            for eni in reversed(self._sorted_enis()):
                for c in sorted(eni.cidrs.values(), key=lambda c: c.network, reverse=True):
                    if self._usable(c) and self._idle(c, now):
                        out.append((eni.id, str(c.network)))
            return out

    def unused_cidrs(self, *, prefixes: bool) -> list[tuple[str, str]]:
        """(ENI id, CIDR) of the IPv4 prefixes (``prefixes=True``) or /32 secondary IPs with
        no pod on them, cooling or not: the other mode's leftovers after a prefix-delegation
        switch, which upstream frees lazily (4.1 step 9, DelNetwork).  Highest first."""
        with self._lock:
            out = []
            for eni in reversed(self._sorted_enis()):
                for c in sorted(eni.cidrs.values(), key=lambda c: c.network, reverse=True):
                    if c.network.version == 4 and c.is_prefix == prefixes and not c.assigned():
                        out.append((eni.id, str(c.network)))
            return out

    def _idle(self, cidr: _Cidr, now_ns: int) -> bool:
        return all(a.key is None and not self._cooling(a, now_ns) for a in cidr.addresses.values())

    # -- pods -------------------------------------------------------------------------------------
    def assign(self, key: AttachmentKey, meta: PodMeta = NO_META) -> Assignment:
        """An address for ``key``; the same one again if ``key`` already has one (a retried
        ADD).  Raises :class:`IpamError` saying why when nothing is free."""
        if not (key.network_name and key.container_id and key.ifname):
            raise IpamError(
                FailureReason.INVALID_REQUEST,
                f"attachment key {key} is incomplete: network name, container id and ifname "
                "are all required",
                "check the CNI_CONTAINERID and CNI_IFNAME the runtime passes",
            )
        with self._lock:
            slot = self._by_key.get(key)
            if slot is not None:
                found, ticket = self._assignment(slot[0], slot[2]), self._barrier()
            else:
                found, ticket = self._pick(key, meta)
        self._await(ticket)
        return found

    def _pick(self, key: AttachmentKey, meta: PodMeta) -> tuple[Assignment, _Ticket]:
        now = self._now_ns()
        # Prefixes before fallback /32s: a /32 nobody holds can go back to EC2 once the
        # subnet has /28s again, and the fewer pods sit on /32s the sooner that happens.
        passes = (True, False) if self.secondary_fallback else (None,)
        for want_prefix in passes:
            for eni in self._sorted_enis():
                if eni.is_excluded:
                    continue
                for cidr in sorted(eni.cidrs.values(), key=lambda c: c.network):
                    if not self._usable(cidr):
                        continue
                    if want_prefix is not None and cidr.is_prefix != want_prefix:
                        continue
                    address = self._free_address(cidr, now)
                    if address is not None:
                        return self._take(eni, cidr, address, key, meta, now)
        raise self._no_address_error(now)

    def _free_address(self, cidr: _Cidr, now_ns: int) -> str | None:
        """The lowest address of ``cidr`` not assigned and not cooling.  Upstream hands out
        a /28's network address too, and so do we.  Only ``len(used) + 1`` candidates can
        be needed, which keeps a /80 cheap."""
        base = int(cidr.network.network_address)
        limit = min(cidr.network.num_addresses, len(cidr.addresses) + 1)
        for offset in range(limit):
            address = str(ipaddress.ip_address(base + offset))
            a = cidr.addresses.get(address)
            if a is None or (a.key is None and not self._cooling(a, now_ns)):
                return address
        return None

    def _take(
        self, eni: _Eni, cidr: _Cidr, address: str, key: AttachmentKey, meta: PodMeta, now: int
    ) -> tuple[Assignment, _Ticket]:
        previous = cidr.addresses.get(address)
        a = _Address(address, key, meta, assigned_ns=now)
        cidr.addresses[address] = a
        self._by_key[key] = (eni, cidr, a)

        def undo() -> None:
            del self._by_key[key]
            if previous is None:
                del cidr.addresses[address]
            else:
                cidr.addresses[address] = previous

        ticket = self._commit(undo)
        return self._assignment(eni, a), ticket

    def unassign(self, key: AttachmentKey) -> Assignment | None:
        """Release ``key``'s address into cooldown; None if the key is unknown (DEL is
        idempotent).  Falls back to upstream's CRI-migration placeholders, as upstream does."""
        with self._lock:
            slot = self._by_key.get(key) or self._by_key.get(
                AttachmentKey(MIGRATED_NETWORK, key.container_id, MIGRATED_IFNAME)
            )
            if slot is None:
                ticket = self._barrier()
                released = None
            else:
                released, ticket = self._release(slot)
        self._await(ticket)
        return released

    def _release(self, slot: _Slot) -> tuple[Assignment, _Ticket]:
        with self._lock:
            eni, _cidr, a = slot
            released = self._assignment(eni, a)
            old = (a.key, a.meta, a.unassigned_ns)
            assert a.key is not None  # noqa: S101 - indexed addresses are assigned
            del self._by_key[a.key]
            a.key, a.meta, a.unassigned_ns = None, NO_META, self._now_ns()

            def undo() -> None:
                a.key, a.meta, a.unassigned_ns = old
                self._by_key[released.key] = slot

            return released, self._commit(undo)

    def lookup(self, key: AttachmentKey) -> Assignment | None:
        with self._lock:
            slot = self._by_key.get(key)
            return None if slot is None else self._assignment(slot[0], slot[2])

    def assignments(self) -> list[Assignment]:
        with self._lock:
            return sorted(
                (self._assignment(e, a) for e, _c, a in self._by_key.values()),
                key=lambda x: x.key,
            )

    def _assignment(self, eni: _Eni, a: _Address) -> Assignment:
        assert a.key is not None  # noqa: S101 - callers pass assigned addresses only
        return Assignment(
            key=a.key,
            address=a.address,
            eni_id=eni.id,
            device_number=eni.device_number,
            route_table=eni.route_table,
            network_card=self.network_card,
            meta=a.meta,
            assigned_ns=a.assigned_ns,
        )

    # -- failure explanations -------------------------------------------------------------------
    def update_hints(self, **changes: Any) -> None:
        """Tell the datastore what the pool manager knows (``eni_attaching=True``, ...);
        the fields of :class:`PoolHints`."""
        with self._lock:
            self._hints = replace(self._hints, **changes)

    @property
    def hints(self) -> PoolHints:
        return self._hints

    def _no_address_error(self, now_ns: int) -> IpamError:
        stats = self._stats(now_ns)
        h = self._hints
        where = (
            f"network card {self.network_card}: {stats.assigned_ips} of {stats.total_ips} "
            f"addresses assigned on {len(self._enis)} ENI(s)"
        )
        if h.max_pods is not None and stats.assigned_ips >= h.max_pods:
            return IpamError(
                FailureReason.MAX_PODS,
                f"the node is at its max pods ({h.max_pods}); {where}",
                "the kubelet max-pods is higher than this node's address capacity: lower it "
                "(max-pods-calculator.sh), use a larger instance type, or enable prefix delegation",
            )
        if stats.cooldown_ips:
            first = min(
                a.unassigned_ns for _e, _c, a in self._walk_all() if self._cooling(a, now_ns)
            )
            wait = max(0.0, self.cooldown_period - (now_ns - first) / 1e9)
            return IpamError(
                FailureReason.COOLDOWN,
                f"every free address is in its {self.cooldown_period:g}s cooldown "
                f"({stats.cooldown_ips} cooling, the first is free in {wait:.1f}s); {where}",
                "the runtime retries the pod; ipamd is adding addresses meanwhile. If pods churn "
                "this fast all the time, raise WARM_IP_TARGET",
            )
        if h.eni_attaching:
            return IpamError(
                FailureReason.POOL_EMPTY_ATTACHING,
                f"no free address yet: an ENI is being attached; {where}",
                "the runtime retries the pod; raise WARM_IP_TARGET or WARM_ENI_TARGET to keep "
                "addresses ready for bursts",
            )
        if h.no_cidr_blocks:
            return IpamError(
                FailureReason.SUBNET_EXHAUSTED,
                "no free address: prefix delegation needs a free aligned /28 and the subnet has "
                "none left (EC2 InsufficientCidrBlocks: the subnet is fragmented); " + where,
                "set VPCCNI_PD_FALLBACK_TO_SECONDARY_IPS=true to fall back to secondary IPs, "
                "or free contiguous space in the subnet (a /28 prefix CIDR reservation helps), "
                "or use a larger subnet, or set ENABLE_PREFIX_DELEGATION=false",
            )
        if h.subnet_exhausted:
            return IpamError(
                FailureReason.SUBNET_EXHAUSTED,
                "no free address and the subnet has no addresses left for new ENIs or IPs; "
                + where,
                "free addresses in the subnet, add a subnet (custom networking or subnet "
                "discovery with kubernetes.io/role/cni=1), or lower WARM_IP_TARGET on other nodes",
            )
        if h.ec2_throttled:
            return IpamError(
                FailureReason.EC2_THROTTLED,
                f"no free address: EC2 is throttling ipamd's requests for more; {where}",
                "the runtime retries the pod; reduce EC2 API churn (set WARM_IP_TARGET and "
                "MINIMUM_IP_TARGET to steady values)",
            )
        if h.at_eni_limit:
            return IpamError(
                FailureReason.MAX_PODS,
                f"no free address and the node has every ENI it may have, each full; {where}",
                "this node holds no more pods: lower the kubelet max-pods, raise MAX_ENI if it "
                "is set, use a larger instance type, or enable prefix delegation",
            )
        return IpamError(
            FailureReason.POOL_EMPTY,
            f"no free address in the warm pool; {where}",
            "ipamd adds addresses on its next pool cycle; if this persists, check the ipamd log "
            "for EC2 errors (IAM permissions, DISABLE_NETWORK_RESOURCE_PROVISIONING)",
        )

    # -- stats and views -------------------------------------------------------------------------
    def stats(self) -> PoolStats:
        with self._lock:
            return self._stats(self._now_ns())

    def _stats(self, now_ns: int) -> PoolStats:
        total = assigned = cooling = prefixes = free_prefixes = 0
        for eni in self._enis.values():
            if eni.is_excluded:
                continue
            for cidr in eni.cidrs.values():
                if not self._usable(cidr):
                    continue
                total += cidr.network.num_addresses
                assigned += cidr.assigned()
                cooling += sum(1 for a in cidr.addresses.values() if self._cooling(a, now_ns))
                if cidr.is_prefix:
                    prefixes += 1
                    free_prefixes += self._idle(cidr, now_ns)
        return PoolStats(total, assigned, cooling, prefixes, free_prefixes)

    def eni_count(self) -> int:
        with self._lock:
            return len(self._enis)

    def enis(self) -> list[EniView]:
        with self._lock:
            now = self._now_ns()
            return [self._eni_view(e, now) for e in self._sorted_enis()]

    def _eni_view(self, e: _Eni, now: int) -> EniView:
        cidrs = tuple(
            CidrView(
                str(c.network),
                c.is_prefix,
                c.network.num_addresses,
                tuple(
                    AddressView(
                        a.address,
                        a.key,
                        a.meta,
                        a.assigned_ns,
                        a.unassigned_ns,
                        self._cooling(a, now),
                    )
                    for a in sorted(
                        c.addresses.values(), key=lambda a: ipaddress.ip_address(a.address)
                    )
                ),
            )
            for c in sorted(e.cidrs.values(), key=lambda c: c.network)
        )
        return EniView(
            e.id,
            e.device_number,
            e.route_table,
            e.is_primary,
            e.is_trunk,
            e.is_efa,
            e.is_excluded,
            e.subnet_id,
            e.create_time,
            cidrs,
        )

    # -- ENI removal decisions (upstream getDeletableENI) ----------------------------------------
    def deletable_eni(
        self,
        warm_ip_target: int,
        minimum_ip_target: int,
        warm_prefix_target: int,
        min_lifetime: float = 60.0,
    ) -> str | None:
        """The ENI that may be detached now, or None.  Upstream's rules in upstream's order;
        the highest device number is tried first (upstream: random)."""
        with self._lock:
            return self._deletable(
                warm_ip_target, minimum_ip_target, warm_prefix_target, min_lifetime
            )

    def remove_unused_eni(
        self,
        warm_ip_target: int,
        minimum_ip_target: int,
        warm_prefix_target: int,
        min_lifetime: float = 60.0,
    ) -> str | None:
        """Remove at most one deletable ENI from the store (upstream RemoveUnusedENIFromStore);
        the caller then detaches and deletes it in EC2."""
        with self._lock:
            eni_id = self._deletable(
                warm_ip_target, minimum_ip_target, warm_prefix_target, min_lifetime
            )
            if eni_id is None:
                return None
            # Waiting for the write happens outside the lock (see the module docstring).
            _lost, ticket = self._remove_eni(eni_id, force=False)
        self._await(ticket)
        return eni_id

    def _deletable(
        self, warm_ip: int, min_ip: int, warm_prefix: int, min_lifetime: float
    ) -> str | None:
        now = self._now_ns()
        unit = ADDRESSES_PER_V4_PREFIX if self.prefix_delegation else 1
        warm_ip, min_ip = _round_up(warm_ip, unit), _round_up(min_ip, unit)
        for eni in reversed(self._sorted_enis()):
            if eni.is_primary or (now / 1e9 - eni.create_time) < min_lifetime:
                continue
            addresses = [a for c in eni.cidrs.values() for a in c.addresses.values()]
            if any(self._cooling(a, now) for a in addresses) or any(a.key for a in addresses):
                continue
            others = self._stats_without(eni.id, now)
            if warm_ip > 0 and others.available < warm_ip:
                continue
            if min_ip > 0 and others.total_ips < min_ip:
                continue
            if self.prefix_delegation and warm_prefix and others.free_prefixes < warm_prefix:
                continue
            if eni.is_trunk or eni.is_efa:
                continue
            return eni.id
        return None

    def _stats_without(self, eni_id: str, now_ns: int) -> PoolStats:
        eni = self._enis.pop(eni_id)
        try:
            return self._stats(now_ns)
        finally:
            self._enis[eni_id] = eni

    def freeable_eni_exists(self) -> bool:
        """Upstream CheckFreeableENIexists: a non-primary, non-trunk, non-EFA ENI without pods."""
        with self._lock:
            return any(
                not (e.is_primary or e.is_trunk or e.is_efa)
                and not any(c.assigned() for c in e.cidrs.values())
                for e in self._enis.values()
            )

    # -- restart ----------------------------------------------------------------------------------
    def restore(self, state: CheckpointState) -> list[CheckpointEntry]:
        """Re-insert checkpointed allocations (and our cooldown entries) into the ENIs'
        CIDRs, then rewrite the checkpoint.  Call after the ENIs and CIDRs are known, and
        before any change: with an empty ``CheckpointState()`` on a fresh node.
        Returns the allocations no CIDR contains (stale: their pods' addresses are gone).
        Two allocations of one address, or of one key, raise :class:`DatastoreError`."""
        with self._lock:
            placed: dict[str, tuple[_Eni, _Cidr, CheckpointEntry]] = {}
            keys: set[AttachmentKey] = set(self._by_key)
            dropped: list[CheckpointEntry] = []
            for entry in state.allocations:
                home = self._home(entry.address)
                if home is None:
                    dropped.append(entry)
                    continue
                current = home[1].addresses.get(entry.address)
                if entry.address in placed or (current is not None and current.key is not None):
                    raise IpAlreadyInStoreError(
                        f"datastore: IP already in data store: {entry.address} "
                        f"(second allocation by {entry.key})"
                    )
                if entry.key in keys:
                    raise DatastoreError(f"datastore: duplicate allocation for {entry.key}")
                keys.add(entry.key)
                placed[entry.address] = (*home, entry)
            cooling = []
            for c in state.cooldown:
                home = self._home(c.address)
                if (
                    home is not None
                    and c.address not in placed
                    and c.address not in home[1].addresses
                ):
                    cooling.append((home[1], c))
            added: list[tuple[_Cidr, str]] = []
            for eni, cidr, entry in placed.values():
                a = _Address(entry.address, entry.key, entry.meta, entry.allocation_ns)
                cidr.addresses[entry.address] = a
                self._by_key[entry.key] = (eni, cidr, a)
                added.append((cidr, entry.address))
            for cidr, c in cooling:
                cidr.addresses[c.address] = _Address(c.address, unassigned_ns=c.unassigned_ns)
                added.append((cidr, c.address))

            was_restored = self._restored

            def undo() -> None:
                for cidr, address in added:
                    a = cidr.addresses.pop(address)
                    if a.key is not None:
                        del self._by_key[a.key]
                self._restored = was_restored

            self._restored = True
            ticket = self._commit(undo)
        self._await(ticket)
        return dropped

    def _home(self, address: str) -> tuple[_Eni, _Cidr] | None:
        ip = ipaddress.ip_address(address)
        for eni in self._sorted_enis():
            for cidr in eni.cidrs.values():
                if ip.version == cidr.network.version and ip in cidr.network:
                    return eni, cidr
        return None
