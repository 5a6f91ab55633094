"""The plugin's client for ``vpccni-ipamd`` on its unix socket.

NOTE: the gRPC protocol arrives with the ipamd issue.  Until then this client can tell
whether ipamd is reachable (STATUS, and a clear code 11 on ADD when it is not) and
refuses every allocation with a "not implemented" error instead of pretending.
"""

from __future__ import annotations

import socket

from vpccni.core import errors
from vpccni.core.ipam import AllocateRequest
from vpccni.core.ipam import Allocation
from vpccni.core.ipam import AttachmentKey
from vpccni.core.ipam import FailureReason
from vpccni.core.ipam import IpamError
from vpccni.core.ipam import IpamStatus

DEFAULT_SOCKET = "/var/run/aws-node/ipamd.sock"


class IpamdClient:
    def __init__(self, socket_path: str = DEFAULT_SOCKET, timeout_s: float = 10.0) -> None:
        self.socket_path = socket_path
        self.timeout_s = timeout_s

    def _probe(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(min(self.timeout_s, 2.0))
        try:
            sock.connect(self.socket_path)
        except OSError as exc:
            raise IpamError(
                FailureReason.UNREACHABLE,
                f"ipamd is not reachable at {self.socket_path}: {exc.strerror or exc}",
                "check that the aws-node (vpccni-ipamd) daemon runs on this node",
            ) from None
        finally:
            sock.close()

    def _not_built(self) -> errors.CniError:
        return errors.not_implemented(
            "ipamd gRPC client",
            f"ipamd at {self.socket_path} answers, but this build cannot talk to it yet",
        )

    def allocate(self, request: AllocateRequest) -> Allocation:
        self._probe()
        raise self._not_built()

    def release(self, key: AttachmentKey, reason: str = "PodDeleted") -> Allocation | None:
        self._probe()
        raise self._not_built()

    def lookup(self, key: AttachmentKey) -> Allocation | None:
        self._probe()
        raise self._not_built()

    def status(self) -> IpamStatus:
        self._probe()
        return IpamStatus(ready=True, detail=f"ipamd reachable at {self.socket_path}")

    def gc(self, network_name: str, valid: frozenset[AttachmentKey]) -> list[AttachmentKey]:
        self._probe()
        raise self._not_built()

    def close(self) -> None:
        pass
