"""The shared ipamd client with a channel prepared ahead of the request (what a
plugin-server child does while it waits for work): whatever state that channel is in when
the request comes, the call behaves as an unprepared client's would.

Real gRPC over a unix socket, ipamd's real servicer over a FakeIpam pool.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from vpccni.core import ipam_grpc
from vpccni.core.ipam import AllocateRequest
from vpccni.core.ipam import AttachmentKey
from vpccni.core.ipam import FailureReason
from vpccni.core.ipam import IpamError
from vpccni.core.ipam_fake import FakeIpam
from vpccni.core.ipam_grpc import GrpcIpamClient
from vpccni.ipamd.rpc import serve

KEY = AttachmentKey(network_name="vpc-net", container_id="c1", ifname="eth0")


def request() -> AllocateRequest:
    return AllocateRequest(key=KEY, netns="/var/run/netns/web")


@pytest.fixture(autouse=True)
def no_leftovers() -> Iterator[None]:
    yield
    for channel, _stub in ipam_grpc._prepared.values():
        channel.close()
    ipam_grpc._prepared.clear()


def wait_ready(path: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        state = ipam_grpc._connectivity(ipam_grpc._prepared[path][0], try_to_connect=False)
        if state is grpc.ChannelConnectivity.READY:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"prepared channel never READY: {state}")
        time.sleep(0.01)


def test_a_connected_prepared_channel_serves_the_first_call(tmp_path: Path) -> None:
    path = str(tmp_path / "ipamd.sock")
    server = serve(path, FakeIpam(pools=["10.9.0.0/30"]))
    try:
        ipam_grpc.prepare_channel(path)
        wait_ready(path)
        client = GrpcIpamClient(path, timeout_s=5)
        try:
            assert client.allocate(request()).addresses[0].address == "10.9.0.1"
            # It was taken: a second client for the socket opens its own channel.
            assert path not in ipam_grpc._prepared
            assert client._prepared
        finally:
            client.close()
    finally:
        server.stop(None)


def test_a_channel_prepared_before_ipamd_listened_does_not_fail_the_call(
    tmp_path: Path,
) -> None:
    path = str(tmp_path / "ipamd.sock")
    ipam_grpc.prepare_channel(path)  # nobody there: the channel backs off
    server = serve(path, FakeIpam(pools=["10.9.0.0/30"]))
    try:
        client = GrpcIpamClient(path, timeout_s=5)
        try:
            assert client.allocate(request()).addresses[0].address == "10.9.0.1"
        finally:
            client.close()
    finally:
        server.stop(None)


def test_ipamd_restarted_after_the_channel_connected_still_serves_the_call(
    tmp_path: Path,
) -> None:
    path = str(tmp_path / "ipamd.sock")
    pool = FakeIpam(pools=["10.9.0.0/30"])
    first = serve(path, pool)
    ipam_grpc.prepare_channel(path)
    wait_ready(path)
    first.stop(None).wait()
    second = serve(path, pool)  # the same state, as ipamd restored from its checkpoint
    try:
        client = GrpcIpamClient(path, timeout_s=5)
        try:
            assert client.allocate(request()).addresses[0].address == "10.9.0.1"
            assert client.lookup(KEY) is not None
        finally:
            client.close()
    finally:
        second.stop(None)


def test_preparing_a_socket_nobody_serves_leaves_the_error_unchanged(tmp_path: Path) -> None:
    path = str(tmp_path / "nobody.sock")
    ipam_grpc.prepare_channel(path)
    client = GrpcIpamClient(path, timeout_s=2)
    try:
        with pytest.raises(IpamError, match="not reachable") as info:
            client.allocate(request())
        assert info.value.reason is FailureReason.UNREACHABLE
    finally:
        client.close()
