"""ipamd's gRPC server: the IpamBackend service and the standard health service.

The servicer translates between protobuf and the IpamApi dataclasses and turns
:class:`IpamError` into a gRPC status with a ``google.rpc.ErrorInfo`` detail.  What it
serves is any object with the IpamApi methods: ipamd's datastore in production, the fake
pool in the contract tests.
"""

from __future__ import annotations

import logging
import os
from concurrent import futures
from typing import Any

import grpc
from google.rpc import code_pb2
from google.rpc import error_details_pb2
from google.rpc import status_pb2
from grpc_health.v1 import health
from grpc_health.v1 import health_pb2
from grpc_health.v1 import health_pb2_grpc
from grpc_status import rpc_status

from vpccni.core import ipam_wire as wire
from vpccni.core.ipam import TRANSIENT
from vpccni.core.ipam import FailureReason
from vpccni.core.ipam import IpamApi
from vpccni.core.ipam import IpamError
from vpccni.core.ipam_grpc import CLIENT_VERSION
from vpccni.core.proto import ipamd_pb2 as pb
from vpccni.core.proto import ipamd_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

#: Upstream registers this name too; probes written for aws-node keep working.
UPSTREAM_HEALTH_SERVICE = "grpc.health.v1.aws-node"

_CODES = {
    FailureReason.INVALID_REQUEST: code_pb2.INVALID_ARGUMENT,
    FailureReason.VERSION_MISMATCH: code_pb2.FAILED_PRECONDITION,
    FailureReason.MAX_PODS: code_pb2.RESOURCE_EXHAUSTED,
    FailureReason.SUBNET_EXHAUSTED: code_pb2.RESOURCE_EXHAUSTED,
    FailureReason.POOL_EMPTY: code_pb2.RESOURCE_EXHAUSTED,
    FailureReason.INTERNAL: code_pb2.INTERNAL,
}


def _abort(context: grpc.ServicerContext, error: IpamError) -> None:
    code = code_pb2.UNAVAILABLE if error.reason in TRANSIENT else _CODES[error.reason]
    info = error_details_pb2.ErrorInfo(
        reason=error.reason.value, domain=wire.ERROR_DOMAIN, metadata={"remedy": error.remedy}
    )
    status = status_pb2.Status(code=code, message=error.message)
    status.details.add().Pack(info)
    context.abort_with_status(rpc_status.to_status(status))


class IpamServicer(pb_grpc.IpamBackendServicer):
    def __init__(self, backend: IpamApi, server_version: str = CLIENT_VERSION) -> None:
        self.backend = backend
        self.server_version = server_version

    def _check_version(self, request: Any, context: grpc.ServicerContext) -> None:
        if request.client_version != self.server_version:
            _abort(
                context,
                IpamError(
                    FailureReason.VERSION_MISMATCH,
                    f"wrong client version {request.client_version!r} (!= {self.server_version!r})",
                    "install the aws-cni plugin that matches this ipamd",
                ),
            )

    def _run(self, context: grpc.ServicerContext, call: Any) -> Any:
        try:
            return call()
        except IpamError as exc:
            _abort(context, exc)
        except Exception as exc:
            log.exception("ipamd request failed")
            _abort(context, IpamError(FailureReason.INTERNAL, f"ipamd internal error: {exc!r}"))
        return None  # not reached: abort raises

    def Allocate(self, request: pb.AllocateRequest, context: grpc.ServicerContext) -> pb.Allocation:
        self._check_version(request, context)
        req = wire.request_from_pb(request)
        return wire.allocation_to_pb(self._run(context, lambda: self.backend.allocate(req)))

    def Release(self, request: pb.ReleaseRequest, context: grpc.ServicerContext) -> pb.ReleaseReply:
        self._check_version(request, context)
        key = wire.key_from_pb(request.key)
        released = self._run(context, lambda: self.backend.release(key, request.reason))
        if released is None:
            return pb.ReleaseReply(found=False)
        return pb.ReleaseReply(found=True, released=wire.allocation_to_pb(released))

    def Lookup(self, request: pb.LookupRequest, context: grpc.ServicerContext) -> pb.LookupReply:
        self._check_version(request, context)
        key = wire.key_from_pb(request.key)
        found = self._run(context, lambda: self.backend.lookup(key))
        if found is None:
            return pb.LookupReply(found=False)
        return pb.LookupReply(found=True, allocation=wire.allocation_to_pb(found))

    def GarbageCollect(self, request: pb.GcRequest, context: grpc.ServicerContext) -> pb.GcReply:
        self._check_version(request, context)
        valid = frozenset(wire.key_from_pb(k) for k in request.valid)
        released = self._run(context, lambda: self.backend.gc(request.network_name, valid))
        return pb.GcReply(released=[wire.key_to_pb(k) for k in released])

    def Status(self, request: pb.StatusRequest, context: grpc.ServicerContext) -> pb.StatusReply:
        self._check_version(request, context)
        state = self._run(context, self.backend.status)
        return pb.StatusReply(ready=state.ready, detail=state.detail)


def serve(socket_path: str, backend: IpamApi, max_workers: int = 8) -> grpc.Server:
    """Serve ``backend`` on ``unix://socket_path`` (dir 0755, socket 0660, stale socket
    removed, as upstream) with the health service SERVING.  Returns the started server."""
    os.makedirs(os.path.dirname(socket_path) or ".", mode=0o755, exist_ok=True)
    try:
        os.unlink(socket_path)
    except FileNotFoundError:
        pass
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers))
    # grpc_tools generates untyped registration helpers (no mypy-grpc plugin here).
    pb_grpc.add_IpamBackendServicer_to_server(IpamServicer(backend), server)  # type: ignore[no-untyped-call]
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", UPSTREAM_HEALTH_SERVICE, "vpccni.ipamd.v1.IpamBackend"):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    server.add_insecure_port(f"unix://{socket_path}")
    server.start()
    os.chmod(socket_path, 0o660)
    return server
