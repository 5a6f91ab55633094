"""Where the plugin keeps what DEL, CHECK and GET need later.

Format ``vpccni-attachment/1`` (version notes below), one JSON file per attachment under
``<stateDir>/attachments/<network>~<container>~<ifname>~<plugin type>.json``, written
atomically.  The plugin type is part of the name because every plugin of a conflist sees the
same attachment key: aws-cni's and egress-cni's records must not replace each other.  The
name parses unambiguously: network names and container ids never contain '~', and the
netconf schema refuses '~' in a type, so the first two and the last '~' are separators.  It is
documented and versioned on purpose: upstream hides DEL state in a result's ``mac`` field.

Version 1: kind, networkName, containerId, ifName, cniVersion, driver, result (encoded at
1.1.0), allocation (the ipamd allocation that ADD used, or null for chained drivers),
invocation (netns and CNI_ARGS of ADD, so GC can tear down as that attachment's DEL would).

GET prefers the runtime's own cache (libcni: ``<cacheDir>/results/<net>-<cid>-<ifname>``),
which holds the result the runtime last returned for the whole chain.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from typing import Any

from vpccni.core import errors
from vpccni.core.invocation import Command
from vpccni.core.invocation import Invocation
from vpccni.core.invocation import k8s_args
from vpccni.core.ipam import AddressAssignment
from vpccni.core.ipam import Allocation
from vpccni.core.ipam import AttachmentKey
from vpccni.core.result import Result

KIND = "vpccni-attachment/1"
DEFAULT_STATE_DIR = "/var/lib/cni/vpccni"
DEFAULT_RUNTIME_CACHE_DIR = "/var/lib/cni"


@dataclass(frozen=True, slots=True)
class AttachmentRecord:
    key: AttachmentKey
    cni_version: str
    driver: str
    result: Result
    allocation: Allocation | None
    #: ADD's invocation, for teardown without the original caller (GC).
    invocation: Invocation


def allocation_to_json(allocation: Allocation) -> dict[str, Any]:
    return dataclasses.asdict(allocation)


def allocation_from_json(raw: dict[str, Any]) -> Allocation:
    return Allocation(
        key=AttachmentKey(**raw["key"]),
        driver=raw["driver"],
        addresses=tuple(AddressAssignment(**a) for a in raw["addresses"]),
        vpc_cidrs=tuple(raw.get("vpc_cidrs", ())),
        use_external_snat=bool(raw.get("use_external_snat", False)),
        driver_data=dict(raw.get("driver_data", {})),
    )


class AttachmentStore:
    def __init__(self, state_dir: str = DEFAULT_STATE_DIR, plugin_type: str = "aws-cni") -> None:
        self.state_dir = state_dir
        self.plugin_type = plugin_type

    def _path(self, key: AttachmentKey) -> str:
        name = f"{key.token()}~{self.plugin_type}.json"
        return os.path.join(self.state_dir, "attachments", name)

    def save(self, record: AttachmentRecord) -> None:
        path = self._path(record.key)
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        body = {
            "kind": KIND,
            "networkName": record.key.network_name,
            "containerId": record.key.container_id,
            "ifName": record.key.ifname,
            "cniVersion": record.cni_version,
            "driver": record.driver,
            "result": record.result.encode("1.1.0"),
            "allocation": None
            if record.allocation is None
            else allocation_to_json(record.allocation),
            "invocation": {
                "netns": record.invocation.netns,
                "args": dict(record.invocation.args),
            },
        }
        tmp = f"{path}.tmp.{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump(body, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def load(self, key: AttachmentKey) -> AttachmentRecord | None:
        path = self._path(key)
        try:
            with open(path) as f:
                raw = json.load(f)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise errors.CniError(
                errors.SpecCode.IO_FAILURE, "cannot read the attachment record", f"{path}: {exc}"
            ) from None
        if not isinstance(raw, dict) or raw.get("kind") != KIND or _key_of(raw) != key:
            return None
        alloc = raw.get("allocation")
        saved = raw.get("invocation") or {}
        args = {str(k): str(v) for k, v in (saved.get("args") or {}).items()}
        invocation = Invocation(
            command=Command.DEL,
            container_id=key.container_id,
            netns=str(saved.get("netns") or ""),
            ifname=key.ifname,
            args=args,
            k8s=k8s_args(args),
        )
        return AttachmentRecord(
            key=key,
            cni_version=raw["cniVersion"],
            driver=raw["driver"],
            result=Result.decode(raw["result"], where="stored result"),
            allocation=None if alloc is None else allocation_from_json(alloc),
            invocation=invocation,
        )

    def remove(self, key: AttachmentKey) -> None:
        try:
            os.unlink(self._path(key))
        except FileNotFoundError:
            pass

    def keys(self, network_name: str) -> list[AttachmentKey]:
        folder = os.path.join(self.state_dir, "attachments")
        try:
            names = os.listdir(folder)
        except (FileNotFoundError, NotADirectoryError):
            return []
        found = []
        for name in names:
            if not name.endswith(f"~{self.plugin_type}.json"):
                continue
            try:
                with open(os.path.join(folder, name)) as f:
                    raw = json.load(f)
            except (OSError, ValueError):
                continue
            if raw.get("kind") == KIND and raw.get("networkName") == network_name:
                found.append(AttachmentKey(network_name, raw["containerId"], raw["ifName"]))
        return sorted(found)


def read_runtime_cache(cache_dir: str, key: AttachmentKey) -> dict[str, Any] | None:
    """The result libcni cached for this attachment, or None."""
    path = os.path.join(cache_dir, "results", key.slug())
    try:
        with open(path) as f:
            raw = json.load(f)
    except (FileNotFoundError, ValueError):
        return None
    if not isinstance(raw, dict) or _key_of(raw) != key:
        return None  # libcni's file names are ambiguous: trust the content, not the name
    result = raw.get("result")
    return result if isinstance(result, dict) else None


def _key_of(raw: dict[str, Any]) -> AttachmentKey:
    # Both our records and libcni's cache files spell the key this way.
    return AttachmentKey(
        str(raw.get("networkName", "")), str(raw.get("containerId", "")), str(raw.get("ifName", ""))
    )
