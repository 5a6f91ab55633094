"""The IpamApi contract, run against every implementation.

Implementations: ``FakeIpam`` (in memory), ``FileIpam`` (JSON file under flock), and the
real shared client ``GrpcIpamClient`` talking to ipamd's real gRPC servicer on a unix
socket (served here by a FakeIpam pool; ipamd's own datastore joins with the ipamd issue).
So the fakes are held to what the wire actually does, errors and reasons included.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from vpccni.core.ipam import AllocateRequest
from vpccni.core.ipam import AttachmentKey
from vpccni.core.ipam import FailureReason
from vpccni.core.ipam import IpamApi
from vpccni.core.ipam import IpamError
from vpccni.core.ipam_fake import FakeIpam
from vpccni.core.ipam_fake import FileIpam

Factory = Callable[[list[str]], IpamApi]
Finalizer = Callable[[Callable[[], object]], None]


def _fake(tmp: Path, finalize: Finalizer) -> Factory:
    return lambda pools: FakeIpam(pools=pools)


def _file(tmp: Path, finalize: Finalizer) -> Factory:
    return lambda pools: FileIpam(state_file=str(tmp / "ipam.json"), pools=pools)


def _grpc(tmp: Path, finalize: Finalizer) -> Factory:
    from vpccni.core.ipam_grpc import GrpcIpamClient
    from vpccni.ipamd.rpc import serve

    def make(pools: list[str]) -> IpamApi:
        socket_path = str(tmp / f"ipamd-{len(list(tmp.iterdir()))}.sock")
        server = serve(socket_path, FakeIpam(pools=pools))
        finalize(lambda: server.stop(None))
        client = GrpcIpamClient(socket_path, timeout_s=5)
        finalize(client.close)
        return client

    return make


@pytest.fixture(params=[_fake, _file, _grpc], ids=["FakeIpam", "FileIpam", "GrpcIpamClient"])
def make(request: pytest.FixtureRequest, tmp_path: Path) -> Factory:
    factory: Callable[[Path, Finalizer], Factory] = request.param
    return factory(tmp_path, request.addfinalizer)


def key(cid: str, ifname: str = "eth0", net: str = "vpc-net") -> AttachmentKey:
    return AttachmentKey(net, cid, ifname)


def req(k: AttachmentKey) -> AllocateRequest:
    return AllocateRequest(key=k, netns="/var/run/netns/x")


def address(ipam: IpamApi, k: AttachmentKey) -> str:
    return ipam.allocate(req(k)).addresses[0].address


def test_allocate_is_idempotent_per_attachment(make: Factory) -> None:
    ipam = make(["10.1.0.0/28"])
    first = ipam.allocate(req(key("a")))
    again = ipam.allocate(req(key("a")))
    assert first == again
    assert first.key == key("a")
    assert first.addresses[0].family == 4


def test_distinct_keys_get_distinct_addresses(make: Factory) -> None:
    ipam = make(["10.1.0.0/28"])
    keys = [key("a"), key("b"), key("a", "net1"), key("a", net="other")]
    addresses = [address(ipam, k) for k in keys]
    assert len(set(addresses)) == len(keys)


def test_keys_with_the_same_slug_are_distinct(make: Factory) -> None:
    ipam = make(["10.1.0.0/28"])
    one = ipam.allocate(req(key("b", net="vpc-a")))
    two = ipam.allocate(req(key("a-b", net="vpc")))
    assert two.key == key("a-b", net="vpc")
    assert one.addresses != two.addresses


def test_release_returns_what_was_released(make: Factory) -> None:
    ipam = make(["10.1.0.0/28"])
    allocated = ipam.allocate(req(key("a")))
    assert ipam.release(key("a")) == allocated
    assert ipam.release(key("a")) is None  # twice is fine
    assert ipam.release(key("never")) is None
    assert ipam.lookup(key("a")) is None


def test_released_address_can_be_reused(make: Factory) -> None:
    ipam = make(["10.1.0.0/30"])  # two hosts
    a = address(ipam, key("a"))
    address(ipam, key("b"))
    ipam.release(key("a"))
    assert address(ipam, key("c")) == a


def test_lookup_changes_nothing(make: Factory) -> None:
    ipam = make(["10.1.0.0/28"])
    assert ipam.lookup(key("a")) is None
    allocated = ipam.allocate(req(key("a")))
    assert ipam.lookup(key("a")) == allocated
    assert ipam.lookup(key("a")) == allocated
    assert address(ipam, key("b")) != allocated.addresses[0].address


def test_exhaustion_is_pool_empty(make: Factory) -> None:
    ipam = make(["10.1.0.0/30"])
    address(ipam, key("a"))
    address(ipam, key("b"))
    with pytest.raises(IpamError) as info:
        ipam.allocate(req(key("c")))
    assert info.value.reason is FailureReason.POOL_EMPTY
    assert info.value.remedy
    # A retry of an existing attachment still works on a full pool.
    assert ipam.lookup(key("a")) == ipam.allocate(req(key("a")))


def test_incomplete_key_is_invalid_request(make: Factory) -> None:
    ipam = make(["10.1.0.0/28"])
    with pytest.raises(IpamError) as info:
        ipam.allocate(req(AttachmentKey("vpc-net", "", "eth0")))
    assert info.value.reason is FailureReason.INVALID_REQUEST


def test_gc_releases_exactly_the_invalid_keys_of_that_network(make: Factory) -> None:
    ipam = make(["10.1.0.0/28"])
    for k in (key("keep"), key("drop"), key("keep", "net1"), key("drop", net="other")):
        ipam.allocate(req(k))
    released = ipam.gc("vpc-net", frozenset({key("keep"), key("keep", "net1")}))
    assert released == [key("drop")]
    assert ipam.lookup(key("drop")) is None
    assert ipam.lookup(key("keep")) is not None
    assert ipam.lookup(key("keep", "net1")) is not None
    assert ipam.lookup(key("drop", net="other")) is not None
    assert ipam.gc("vpc-net", frozenset({key("keep"), key("keep", "net1")})) == []


def test_status_is_ready(make: Factory) -> None:
    assert make(["10.1.0.0/28"]).status().ready


# --------------------------------------------------------------------------- FileIpam only


def test_file_ipam_instances_share_state(tmp_path: Path) -> None:
    path = str(tmp_path / "shared.json")
    one = FileIpam(state_file=path, pools=["10.1.0.0/28"])
    two = FileIpam(state_file=path, pools=["10.1.0.0/28"])
    a = one.allocate(req(key("a")))
    assert two.lookup(key("a")) == a
    assert two.allocate(req(key("b"))).addresses != a.addresses
    assert two.release(key("a")) == a
    assert one.lookup(key("a")) is None


_WORKER = """
import json, sys
from vpccni.core.ipam import AllocateRequest, AttachmentKey
from vpccni.core.ipam_fake import FileIpam
path, who, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
ipam = FileIpam(state_file=path, pools=["10.2.0.0/24"])
got = []
for n in range(count):
    k = AttachmentKey("vpc-net", f"{who}-{n}", "eth0")
    got.append(ipam.allocate(AllocateRequest(key=k, netns="/x")).addresses[0].address)
print(json.dumps(got))
"""


def test_file_ipam_concurrent_processes_never_share_an_address(tmp_path: Path) -> None:
    path = str(tmp_path / "shared.json")
    workers, count = 4, 15
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, path, f"w{w}", str(count)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for w in range(workers)
    ]
    addresses: list[str] = []
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        addresses += json.loads(out)
    assert len(addresses) == workers * count
    assert len(set(addresses)) == len(addresses)
    # The file (read as plain JSON) holds every allocation once.
    state = json.loads(Path(path).read_text())
    assert sorted(r["address"] for r in state["assigned"].values()) == sorted(addresses)
