"""The datastore checkpoint: upstream's ``ipam.json`` (``vpc-cni-ipam/1``), byte-compatible.

A node must be able to move from upstream aws-node to this daemon, and back, with running
pods untouched, so the file has exactly upstream's shape::

    {"version":"vpc-cni-ipam/1","allocations":[{"networkName":"aws-cni",
     "containerID":"<id>","ifName":"eth0","ipv4":"10.0.1.15",
     "allocationTimestamp":1690000000123456789,
     "metadata":{"k8sPodNamespace":"default","k8sPodName":"web-0","interfacesCount":2}}]}

with Go's ``omitempty`` rules (``ipv4``/``ipv6`` and the three metadata fields are left out
when empty or zero; ``metadata`` itself is always present).

One addition: upstream forgets cooldown on restart, so a restarted daemon may hand a
just-freed address to a new pod while conntrack and ARP caches still point at the old one.
We keep released addresses and their release time under the extra top-level key
:data:`COOLDOWN_KEY`; Go's ``json.Unmarshal`` ignores unknown keys, so upstream still reads
our file, and we read upstream's (no such key: nothing in cooldown).

Writes are atomic: a temp file in the same directory (``<name>.tmp*``), fsync, rename, then
fsync of the directory so the rename itself survives a power cut.
"""

from __future__ import annotations

import ipaddress
import json
import os
import tempfile
from dataclasses import dataclass
from typing import Any
from typing import Protocol

from vpccni.core.ipam import AttachmentKey

VERSION = "vpc-cni-ipam/1"
#: Our extra top-level key; upstream's decoder ignores it.
COOLDOWN_KEY = "vpccniCooldown"


class CheckpointError(Exception):
    """The checkpoint cannot be read or written; the message names the file."""


@dataclass(frozen=True, slots=True)
class PodMeta:
    """Upstream's IPAMMetadata."""

    namespace: str = ""
    name: str = ""
    interfaces_count: int = 0


@dataclass(frozen=True, slots=True)
class CheckpointEntry:
    """One assigned address (upstream's CheckpointEntry)."""

    key: AttachmentKey
    address: str
    allocation_ns: int
    meta: PodMeta = PodMeta()

    @property
    def family(self) -> int:
        return ipaddress.ip_address(self.address).version


@dataclass(frozen=True, slots=True)
class CooldownEntry:
    """A released address and when it was released (our extension)."""

    address: str
    unassigned_ns: int


@dataclass(frozen=True, slots=True)
class CheckpointState:
    allocations: tuple[CheckpointEntry, ...] = ()
    cooldown: tuple[CooldownEntry, ...] = ()


class Checkpointer(Protocol):
    """Where a datastore persists its state.  ``save`` must be durable when it returns; the
    datastore never calls it from two threads at once.

    An implementation may set ``starts_empty = True`` when it provably holds no earlier
    state (an in-memory one created empty): the datastore then needs no ``restore()``
    before its first write, as there is nothing that write could destroy."""

    def save(self, state: CheckpointState) -> None: ...

    def load(self) -> CheckpointState | None:
        """The saved state, or None when there is none (a fresh node)."""
        ...


def checkpoint_path(base: str, network_card: int) -> str:
    """``base`` for network card 0, ``<base without .json>-nic-<n>.json`` for card n > 0."""
    if network_card == 0:
        return base
    stem, ext = os.path.splitext(base)
    return f"{stem}-nic-{network_card}{ext or '.json'}"


def _family_key(address: str) -> str:
    # Every write encodes every allocation: parsing each address with ipaddress here cost
    # ~0.35 ms per Allocate with 240 pods (more with more pods).  The datastore holds only
    # valid, canonical addresses, and only IPv6 ones contain ':'.
    return "ipv6" if ":" in address else "ipv4"


def encode(state: CheckpointState) -> dict[str, Any]:
    """The JSON document for ``state``, key order and omitempty as upstream's encoder."""
    allocations = []
    for entry in state.allocations:
        meta: dict[str, Any] = {}
        if entry.meta.namespace:
            meta["k8sPodNamespace"] = entry.meta.namespace
        if entry.meta.name:
            meta["k8sPodName"] = entry.meta.name
        if entry.meta.interfaces_count:
            meta["interfacesCount"] = entry.meta.interfaces_count
        allocations.append(
            {
                "networkName": entry.key.network_name,
                "containerID": entry.key.container_id,
                "ifName": entry.key.ifname,
                _family_key(entry.address): entry.address,
                "allocationTimestamp": entry.allocation_ns,
                "metadata": meta,
            }
        )
    doc: dict[str, Any] = {"version": VERSION, "allocations": allocations}
    if state.cooldown:
        doc[COOLDOWN_KEY] = [
            {_family_key(c.address): c.address, "unassignedTimestamp": c.unassigned_ns}
            for c in state.cooldown
        ]
    return doc


def _typed(path: str, where: str, obj: dict[str, Any], name: str, kind: type, default: Any) -> Any:
    value = obj.get(name, default)
    # bool is an int in Python, but never a valid timestamp or count in Go.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise CheckpointError(f"{path}: {where}.{name} is {value!r}, expected {kind.__name__}")
    return value


def _address(path: str, where: str, obj: dict[str, Any]) -> str:
    v4 = _typed(path, where, obj, "ipv4", str, "")
    v6 = _typed(path, where, obj, "ipv6", str, "")
    if bool(v4) == bool(v6):
        raise CheckpointError(f"{path}: {where} must have exactly one of ipv4 and ipv6")
    try:
        return str(ipaddress.ip_address(v4 or v6))
    except ValueError as exc:
        raise CheckpointError(f"{path}: {where}: {exc}") from None


def decode(doc: Any, path: str = "<checkpoint>") -> CheckpointState:
    """Parse a checkpoint document; raises :class:`CheckpointError` naming ``path``."""
    if not isinstance(doc, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    version = doc.get("version")
    if version != VERSION:
        raise CheckpointError(
            f"{path}: checkpoint version {version!r} is not supported (expected {VERSION!r}); "
            "move the file aside only if no pods are running on this node"
        )
    raw_allocations = doc.get("allocations") or []  # Go writes null for an empty slice
    if not isinstance(raw_allocations, list):
        raise CheckpointError(f"{path}: allocations must be a list")
    allocations = []
    for i, item in enumerate(raw_allocations):
        where = f"allocations[{i}]"
        if not isinstance(item, dict):
            raise CheckpointError(f"{path}: {where} must be an object")
        meta = _typed(path, where, item, "metadata", dict, {})
        key = AttachmentKey(
            _typed(path, where, item, "networkName", str, ""),
            _typed(path, where, item, "containerID", str, ""),
            _typed(path, where, item, "ifName", str, ""),
        )
        allocations.append(
            CheckpointEntry(
                key=key,
                address=_address(path, where, item),
                allocation_ns=_typed(path, where, item, "allocationTimestamp", int, 0),
                meta=PodMeta(
                    _typed(path, where + ".metadata", meta, "k8sPodNamespace", str, ""),
                    _typed(path, where + ".metadata", meta, "k8sPodName", str, ""),
                    _typed(path, where + ".metadata", meta, "interfacesCount", int, 0),
                ),
            )
        )
    raw_cooldown = doc.get(COOLDOWN_KEY) or []
    if not isinstance(raw_cooldown, list):
        raise CheckpointError(f"{path}: {COOLDOWN_KEY} must be a list")
    cooldown = []
    for i, item in enumerate(raw_cooldown):
        where = f"{COOLDOWN_KEY}[{i}]"
        if not isinstance(item, dict):
            raise CheckpointError(f"{path}: {where} must be an object")
        cooldown.append(
            CooldownEntry(
                _address(path, where, item),
                _typed(path, where, item, "unassignedTimestamp", int, 0),
            )
        )
    return CheckpointState(tuple(allocations), tuple(cooldown))


class JsonCheckpointer:
    """The checkpoint file at ``path`` (upstream: AWS_VPC_K8S_CNI_BACKING_STORE)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def save(self, state: CheckpointState) -> None:
        directory = os.path.dirname(self.path) or "."
        # Compact, one trailing newline: what Go's json.Encoder writes.
        data = json.dumps(encode(state), separators=(",", ":"), ensure_ascii=False) + "\n"
        try:
            os.makedirs(directory, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=directory, prefix=os.path.basename(self.path) + ".tmp")
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, self.path)
            except BaseException:
                _unlink_quietly(tmp)
                raise
            dir_fd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            raise CheckpointError(f"{self.path}: cannot write checkpoint: {exc}") from exc

    def load(self) -> CheckpointState | None:
        """The saved state (None on a fresh node)."""
        try:
            with open(self.path, encoding="utf-8") as f:
                text = f.read()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise CheckpointError(f"{self.path}: cannot read checkpoint: {exc}") from exc
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{self.path}: not valid JSON: {exc}") from None
        return decode(doc, self.path)

    def remove_stale_temp_files(self) -> None:
        """Delete temp files a killed daemon left between mkstemp and rename.  The rename is
        the commit point, so they never hold committed state.  Call it at start, before any
        write: only one daemon owns a checkpoint path, and a concurrent save's temp file
        would be deleted under it."""
        directory = os.path.dirname(self.path) or "."
        prefix = os.path.basename(self.path) + ".tmp"
        try:
            names = os.listdir(directory)
        except OSError:
            return
        for name in names:
            if name.startswith(prefix):
                _unlink_quietly(os.path.join(directory, name))


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


class NullCheckpointer:
    """Keeps the last saved state in memory (tests, and nodes that want no file)."""

    def __init__(self, state: CheckpointState | None = None) -> None:
        self.state = state
        self.saves = 0
        #: Created without a state: nothing to lose, so no restore() is needed first.
        self.starts_empty = state is None

    def save(self, state: CheckpointState) -> None:
        self.state = state
        self.saves += 1

    def load(self) -> CheckpointState | None:
        return self.state
