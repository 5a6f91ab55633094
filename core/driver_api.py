"""The driver interface (public API).

A driver is a class registered in the entry-point group ``vpccni.drivers``; its
entry-point name is its identity everywhere (conflist ``type``, ipamd replies, the
``drivers.enabled`` allowlist, the per-driver conf section ``drivers.<name>``).

Two kinds, mirroring the CNI spec's interface and chained plugins:

* :class:`AttachmentDriver` plumbs a pod from an ipamd :class:`~vpccni.core.ipam.Allocation`
  (routed_eni, branch_eni, multihome, third-party drivers);
* :class:`ChainedDriver` runs after an interface plugin and extends ``prevResult``
  (egress_snat).

Drivers receive every collaborator through :class:`DriverContext` and never construct
ipamd clients or loggers themselves.  Undo: right after a step that creates something,
``ctx.undo.push(callback)``; when ADD fails later, the core runs the callbacks in reverse.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field
from typing import Any
from typing import ClassVar
from typing import Literal
from typing import Protocol
from typing import runtime_checkable

from vpccni.core.invocation import Invocation
from vpccni.core.ipam import Allocation
from vpccni.core.ipam import AttachmentKey
from vpccni.core.ipam import IpamApi
from vpccni.core.netns import NetnsHandles
from vpccni.core.result import Result

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DriverInfo:
    """What a driver is.  ``conf_schema`` validates its section ``drivers.<name>``."""

    name: str
    kind: Literal["attachment", "chained"]
    families: frozenset[int] = frozenset({4})
    conf_schema: Mapping[str, Any] | None = None
    #: False for a driver whose feature is not built: the core refuses ADD with code 100.
    implemented: bool = True
    summary: str = ""


class UndoStack:
    """Compensations for ADD's steps, run newest first when ADD fails."""

    def __init__(self) -> None:
        self._steps: list[tuple[str, Callable[[], None]]] = []

    def push(self, what: str, callback: Callable[[], None]) -> None:
        self._steps.append((what, callback))

    def unwind(self) -> list[str]:
        """Run every compensation; return the ones that failed (all are attempted)."""
        failed = []
        while self._steps:
            what, callback = self._steps.pop()
            try:
                callback()
            except Exception as exc:  # noqa: BLE001 - undo must try every step
                log.warning("undo of %s failed: %r", what, exc)
                failed.append(f"{what}: {exc!r}")
        return failed

    def discard(self) -> None:
        self._steps.clear()

    def __len__(self) -> int:
        return len(self._steps)


@dataclass(slots=True)
class DriverContext:
    invocation: Invocation
    key: AttachmentKey
    cni_version: str
    #: The whole validated plugin configuration (read-only by convention).
    conf: Mapping[str, Any]
    #: This driver's section, ``conf["drivers"][name]`` (validated by its schema), or {}.
    section: Mapping[str, Any]
    ipam: IpamApi
    #: Pod and host netlink handles, opened by the runtime before any ipamd call.
    netns: NetnsHandles
    log: logging.LoggerAdapter[logging.Logger]
    undo: UndoStack = field(default_factory=UndoStack)
    #: Pod annotations from runtimeConfig (capability io.kubernetes.cri.pod-annotations).
    pod_annotations: Mapping[str, str] = field(default_factory=dict)
    #: Port mappings from runtimeConfig (capability portMappings), passed through.
    port_mappings: tuple[Mapping[str, Any], ...] = ()


@runtime_checkable
class AttachmentDriver(Protocol):
    info: ClassVar[DriverInfo]

    def add(self, ctx: DriverContext, allocation: Allocation) -> Result:
        """Plumb the pod; return the result for this attachment.  Register undo steps."""
        ...

    def delete(
        self, ctx: DriverContext, allocation: Allocation | None, prev: Result | None
    ) -> None:
        """Remove what add made.  Idempotent; must succeed when the netns is gone
        (CNI_NETNS empty or missing) and when ``allocation`` is None (ipamd forgot it)."""
        ...

    def check(self, ctx: DriverContext, allocation: Allocation | None, prev: Result) -> None:
        """Raise CniError naming the first piece that is missing or wrong."""
        ...


@runtime_checkable
class ChainedDriver(Protocol):
    info: ClassVar[DriverInfo]

    def add(self, ctx: DriverContext, prev: Result) -> Result: ...

    def delete(self, ctx: DriverContext, prev: Result | None) -> None: ...

    def check(self, ctx: DriverContext, prev: Result) -> None: ...


Driver = AttachmentDriver | ChainedDriver
