"""Opening a pod's netlink handle with setns(2) instead of pyroute2's forked helper.

What a user would notice if this went wrong: the plugin plumbing the node's namespace as
if it were the pod's (the thread left in the wrong namespace), a pod namespace created
where none existed, or an error other than "namespace gone" for a pod that is gone.  Each
test checks the calling thread's own namespace (/proc/thread-self/ns/net) before and after,
and the namespaces are test-made (the test process itself never changes namespace).
"""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cnictl import Netns
from tests.support.cnictl import create_netns
from tests.support.cnictl import delete_netns
from vpccni.core import netns as netns_mod
from vpccni.core.netns import NetnsGone
from vpccni.core.netns import NetnsHandles
from vpccni.core.netns import open_netns

pytestmark = pytest.mark.netns


def thread_ns() -> tuple[int, int]:
    st = os.stat("/proc/thread-self/ns/net")
    return st.st_dev, st.st_ino


@pytest.fixture
def pod() -> Iterator[Netns]:
    ns = create_netns("tno")
    try:
        yield ns
    finally:
        delete_netns(ns)


def links_of(ns: Netns) -> set[str]:
    return {link["ifname"] for link in json.loads(ns.ip("-j", "link").stdout)}


def test_the_handle_works_in_the_pod_namespace_and_the_thread_stays_home(pod: Netns) -> None:
    before = thread_ns()
    handle = open_netns(pod.path)
    try:
        assert thread_ns() == before
        assert {link.get_attr("IFLA_IFNAME") for link in handle.get_links()} == {"lo"}
        handle.link("add", ifname="tnoveth", kind="veth", peer="tnopeer")
    finally:
        handle.close()
    # The link went to the pod's namespace, where `ip -n` sees it.
    assert {"tnoveth", "tnopeer"} <= links_of(pod)
    assert thread_ns() == before


def test_nothing_forks(pod: Netns, monkeypatch: pytest.MonkeyPatch) -> None:
    # pyroute2's netns=... path forks a helper; ours must not (gRPC does not survive forks).
    def no_fork() -> int:
        raise AssertionError("open_netns forked")

    monkeypatch.setattr(os, "fork", no_fork)
    handle = open_netns(pod.path)
    handle.close()


def test_a_missing_namespace_is_gone_and_is_not_created(tmp_path: Path) -> None:
    before = thread_ns()
    missing = tmp_path / "no-such-netns"
    with pytest.raises(NetnsGone) as caught:
        open_netns(str(missing))
    assert caught.value.why == "does not exist"
    assert not missing.exists()
    assert thread_ns() == before


def test_a_deleted_pod_namespace_is_gone() -> None:
    ns = create_netns("tno")
    delete_netns(ns)
    with pytest.raises(NetnsGone, match="does not exist"):
        open_netns(ns.path)
    assert not os.path.exists(ns.path)


@pytest.mark.parametrize("kind", ["file", "directory", "mount namespace"])
def test_a_path_that_is_not_a_network_namespace(tmp_path: Path, kind: str) -> None:
    if kind == "file":
        path = tmp_path / "plain"
        path.write_text("not a namespace")
    elif kind == "directory":
        path = tmp_path
    else:
        path = Path("/proc/self/ns/mnt")
    before = thread_ns()
    with pytest.raises(NetnsGone) as caught:
        open_netns(str(path))
    assert caught.value.why == "is not a network namespace"
    assert thread_ns() == before


def test_an_empty_path_is_gone() -> None:
    with pytest.raises(NetnsGone):
        open_netns("")


def test_a_failure_inside_the_pod_namespace_still_switches_back(
    pod: Netns, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = thread_ns()
    seen: list[tuple[int, int]] = []

    def failing_socket(*args: object, **kwargs: object) -> socket.socket:
        seen.append(thread_ns())  # where the thread is when the socket would be made
        raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))

    monkeypatch.setattr(netns_mod.socket, "socket", failing_socket)
    with pytest.raises(NetnsGone, match="cannot be opened"):
        open_netns(pod.path)
    pod_ns = os.stat(pod.path)
    assert seen == [(pod_ns.st_dev, pod_ns.st_ino)]  # it did enter the pod's namespace
    assert thread_ns() == before


def test_other_threads_never_see_the_switch(pod: Netns) -> None:
    # setns switches only the calling thread: a second thread opening a handle leaves this
    # one (and itself) where they were.
    main_before = thread_ns()
    result: list[object] = []

    def worker() -> None:
        own = thread_ns()
        handle = open_netns(pod.path)
        handle.close()
        result.append(thread_ns() == own)

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert result == [True]
    assert thread_ns() == main_before


def test_handles_open_require_pod_semantics(tmp_path: Path, pod: Netns) -> None:
    gone = NetnsHandles(str(tmp_path / "gone"))
    gone.open(require_pod=False)  # DEL of a pod whose namespace is gone
    assert gone.pod_gone
    with pytest.raises(NetnsGone):
        NetnsHandles(str(tmp_path / "gone")).open(require_pod=True)
    there = NetnsHandles(pod.path)
    there.open(require_pod=True)
    try:
        assert not there.pod_gone
        assert there.pod.link_lookup(ifname="lo")
    finally:
        there.close()


def test_a_failed_switch_back_ends_the_process(pod: Netns) -> None:
    # If the thread could not return to its namespace, every later netlink call would plumb
    # the pod's namespace as if it were the node's: the process must stop instead of going
    # on.  The switch back is made to fail in a separate interpreter.
    script = f"""
import sys
from vpccni.core import netns
real = netns._libc_setns()
calls = []
def flaky(fd, nstype):
    calls.append(fd)
    if len(calls) == 2:
        raise OSError(1, "injected failure")
    real(fd, nstype)
netns._setns = flaky
netns.netlink_socket_in({pod.path!r})
print("carried on")
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 70
    assert "carried on" not in done.stdout
    assert "cannot return to the node's network namespace" in done.stderr
