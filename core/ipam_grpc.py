"""The shared ipamd client: IpamApi over gRPC on ipamd's unix socket.

One instance per plugin process, built by the runtime and handed to drivers as
``ctx.ipam``.  Every call has a deadline.  ipamd's failures arrive as a gRPC status with a
``google.rpc.ErrorInfo`` (reason + remedy) and leave here as :class:`IpamError`, so
drivers never see grpc or protobuf types.

NOTE: create this client only after the pod's namespace handles are open.  Opening them no
longer forks (vpccni.core.netns enters the namespace with setns), but the order stays: any
fork after a channel exists (a driver's helper, a future open path) would break gRPC's
channel threads.  Channel options (no HTTP proxy, no retries) were measured: a fresh
channel costs ~1.7 ms and its first call ~3 ms (the HTTP/2 connection) either way.
"""

from __future__ import annotations

from typing import Any

import grpc

from vpccni.core import ipam_wire as wire
from vpccni.core.ipam import AllocateRequest
from vpccni.core.ipam import Allocation
from vpccni.core.ipam import AttachmentKey
from vpccni.core.ipam import FailureReason
from vpccni.core.ipam import IpamError
from vpccni.core.ipam import IpamStatus
from vpccni.core.proto import ipamd_pb2 as pb
from vpccni.core.proto import ipamd_pb2_grpc as pb_grpc

DEFAULT_SOCKET = "/var/run/aws-node/ipamd.sock"
#: Sent in every request; ipamd refuses another API version with FAILED_PRECONDITION.
CLIENT_VERSION = "vpccni.ipamd.v1"

#: Channels opened ahead of the request (a plugin-server child connects to ipamd while it
#: waits for work: ~5-12 ms of a served ADD), by socket path, with their stub.  The first
#: client for that socket takes them.
_prepared: dict[str, tuple[grpc.Channel, Any]] = {}
#: The socket of the last client this process built (a plugin-server child reports it, so
#: the server's next children prepare a channel to the socket the configuration names).
last_socket: str | None = None
#: How long prepare_channel waits for the connection before it warms the call path.
PREPARE_WAIT_S = 0.1


def _connectivity(channel: grpc.Channel, try_to_connect: bool) -> grpc.ChannelConnectivity | None:
    """The channel's state, asking grpc core directly.  NOTE: not ``channel.subscribe``:
    its polling thread wakes every 200 ms and ``close()`` waits for it (up to 200 ms per
    ADD, measured).  ``check_connectivity_state`` is grpc's internal channel API (what
    subscribe itself calls); where it is missing, nothing is prepared."""
    check = getattr(getattr(channel, "_channel", None), "check_connectivity_state", None)
    if check is None:
        return None
    from grpc import _common  # noqa: PLC0415

    states: dict[int, grpc.ChannelConnectivity] = (
        _common.CYGRPC_CONNECTIVITY_STATE_TO_CHANNEL_CONNECTIVITY
    )
    return states.get(check(try_to_connect))


def prepare_channel(socket_path: str, client_version: str = CLIENT_VERSION) -> None:
    """Connect to ipamd at ``socket_path`` ahead of the request; a later
    :class:`GrpcIpamClient` for the same socket uses the connection if it is still
    connected by then.  Once connected (within PREPARE_WAIT_S), one Status call warms
    grpc's per-process call path (the first call on a channel costs ~2 ms more than the
    next, measured in a forked child).  Never fails; blocks at most ~0.6 s when ipamd is
    slow; no ipamd = nothing prepared."""
    import time  # noqa: PLC0415

    if socket_path in _prepared:
        return
    channel = grpc.insecure_channel(f"unix://{socket_path}")
    if _connectivity(channel, try_to_connect=True) is None:
        channel.close()
        return
    stub = pb_grpc.IpamBackendStub(channel)  # type: ignore[no-untyped-call]
    _prepared[socket_path] = (channel, stub)
    deadline = time.monotonic() + PREPARE_WAIT_S
    while _connectivity(channel, try_to_connect=False) is not grpc.ChannelConnectivity.READY:
        if time.monotonic() > deadline:
            return
        time.sleep(0.002)
    try:
        stub.Status(pb.StatusRequest(client_version=client_version), timeout=0.5)
    except grpc.RpcError:
        pass  # the request decides: _take_prepared checks the state again


def _take_prepared(socket_path: str) -> tuple[grpc.Channel, Any] | None:
    """The prepared channel and stub for ``socket_path`` if it is connected right now,
    else None.  A channel in back-off (ipamd restarted since it connected) would fail the
    call at once, so it is dropped and the caller opens a fresh one, as without
    preparation."""
    entry = _prepared.pop(socket_path, None)
    if entry is None:
        return None
    if _connectivity(entry[0], try_to_connect=False) is grpc.ChannelConnectivity.READY:
        return entry
    entry[0].close()
    return None


class GrpcIpamClient:
    def __init__(
        self,
        socket_path: str = DEFAULT_SOCKET,
        timeout_s: float = 10.0,
        client_version: str = CLIENT_VERSION,
    ) -> None:
        self.socket_path = socket_path
        self.timeout_s = timeout_s
        self.client_version = client_version
        self._channel: grpc.Channel | None = None
        self._stub: Any = None
        self._prepared = False
        global last_socket
        last_socket = socket_path

    def _backend(self) -> Any:
        if self._stub is None:
            prepared = _take_prepared(self.socket_path)
            self._prepared = prepared is not None
            if prepared is not None:
                self._channel, self._stub = prepared
            else:
                self._channel = grpc.insecure_channel(f"unix://{self.socket_path}")
                # grpc_tools generates untyped stubs (no mypy-grpc plugin here).
                self._stub = pb_grpc.IpamBackendStub(self._channel)  # type: ignore[no-untyped-call]
        return self._stub

    def _call(self, method: str, request: Any) -> Any:
        try:
            try:
                return getattr(self._backend(), method)(
                    request, timeout=self.timeout_s, wait_for_ready=False
                )
            except grpc.RpcError as exc:
                if not (self._prepared and exc.code() is grpc.StatusCode.UNAVAILABLE):
                    raise
                # The prepared connection died between its READY and this call (ipamd
                # restarted): once more on a fresh channel, as an unprepared client would
                # have done.  Every ipamd method is idempotent per attachment.
                self.close()
                return getattr(self._backend(), method)(
                    request, timeout=self.timeout_s, wait_for_ready=False
                )
        except grpc.RpcError as exc:
            raise _to_ipam_error(exc, self.socket_path) from None

    # -- IpamApi -----------------------------------------------------------------------
    def allocate(self, request: AllocateRequest) -> Allocation:
        reply = self._call("Allocate", wire.request_to_pb(request, self.client_version))
        return wire.allocation_from_pb(reply)

    def release(self, key: AttachmentKey, reason: str = "PodDeleted") -> Allocation | None:
        reply = self._call(
            "Release",
            pb.ReleaseRequest(
                client_version=self.client_version, key=wire.key_to_pb(key), reason=reason
            ),
        )
        return wire.allocation_from_pb(reply.released) if reply.found else None

    def lookup(self, key: AttachmentKey) -> Allocation | None:
        reply = self._call(
            "Lookup", pb.LookupRequest(client_version=self.client_version, key=wire.key_to_pb(key))
        )
        return wire.allocation_from_pb(reply.allocation) if reply.found else None

    def status(self) -> IpamStatus:
        reply = self._call("Status", pb.StatusRequest(client_version=self.client_version))
        return IpamStatus(ready=reply.ready, detail=reply.detail)

    def gc(self, network_name: str, valid: frozenset[AttachmentKey]) -> list[AttachmentKey]:
        reply = self._call(
            "GarbageCollect",
            pb.GcRequest(
                client_version=self.client_version,
                network_name=network_name,
                valid=[wire.key_to_pb(k) for k in sorted(valid)],
            ),
        )
        return [wire.key_from_pb(k) for k in reply.released]

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None
            self._stub = None
        self._prepared = False


_BY_CODE = {
    grpc.StatusCode.UNAVAILABLE: FailureReason.UNREACHABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED: FailureReason.UNREACHABLE,
    grpc.StatusCode.INVALID_ARGUMENT: FailureReason.INVALID_REQUEST,
    grpc.StatusCode.FAILED_PRECONDITION: FailureReason.VERSION_MISMATCH,
}


def _to_ipam_error(exc: grpc.RpcError, socket_path: str) -> IpamError:
    from google.rpc import error_details_pb2  # noqa: PLC0415 - only on failures
    from grpc_status import rpc_status  # noqa: PLC0415

    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    message = exc.details() if hasattr(exc, "details") else str(exc)
    status = rpc_status.from_call(exc) if hasattr(exc, "trailing_metadata") else None
    for detail in status.details if status is not None else ():
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info) and info.domain == wire.ERROR_DOMAIN:
            try:
                reason = FailureReason(info.reason)
            except ValueError:
                reason = FailureReason.INTERNAL
            return IpamError(
                reason, status.message if status else message, info.metadata.get("remedy", "")
            )
    reason = _BY_CODE.get(code, FailureReason.INTERNAL)
    if reason is FailureReason.UNREACHABLE:
        return IpamError(
            reason,
            f"ipamd is not reachable at {socket_path}: {code.name}: {message}",
            "check that the aws-node (vpccni-ipamd) daemon runs on this node",
        )
    return IpamError(reason, f"ipamd: {code.name}: {message}")
