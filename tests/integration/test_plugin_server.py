"""The plugin fork-server (``vpccni plugin-server``) behind the ``install-cni`` launcher.

Every call execs the launcher inside a test-made "node" namespace; the server runs in the
same node namespace (``ip netns exec``), as kubelet's plugin and the server would share the
host's.  The same invocation is made with the server (``VPCCNI_PLUGIN_SERVER_SOCKET`` = its
socket) and without (``''``: the launcher runs the command itself, as before the server),
and what a runtime sees (stdout bytes, exit status) must not differ.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import stat
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.cnictl import Netns
from tests.support.cnictl import create_netns
from tests.support.cnictl import delete_netns
from tests.support.plugin import VENV_BIN
from tests.support.plugin import Call
from tests.support.plugin import cni_env
from tests.support.plugin import fake_conf
from tests.support.plugin import run_exec
from vpccni.core.zygote import IDLE_CHILDREN

pytestmark = pytest.mark.netns

VPCCNI = str(VENV_BIN / "vpccni")
SOCKET_ENV = "VPCCNI_PLUGIN_SERVER_SOCKET"
MAC = re.compile(r'"mac": "[0-9a-f:]{17}"')


def wait_until(what: str, predicate: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def connectable(path: Path) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        s.close()


def children_of(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            status = Path(f"/proc/{entry}/status").read_text()
            if re.search(rf"^PPid:\s+{pid}$", status, re.M):
                found.append(int(entry))
    return found


def peer_pid(conn: socket.socket) -> int:
    cred = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return int(struct.unpack("3i", cred)[0])


def zombies_of(pid: int) -> list[int]:
    zombies = []
    for child in children_of(pid):
        with contextlib.suppress(OSError):
            if re.search(r"^State:\s+Z", Path(f"/proc/{child}/status").read_text(), re.M):
                zombies.append(child)
    return zombies


class Server:
    """``vpccni plugin-server`` inside namespace ``netns``; stopped (and its children
    killed) on exit."""

    def __init__(self, netns: Netns, sock: Path, log: Path, env: dict[str, str] | None = None):
        self.sock, self.log = sock, log
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", netns.name, VPCCNI, "plugin-server",
             "--socket", str(sock), "--log-file", str(log), "--log-level", "debug"],
            env={**os.environ, **(env or {})},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )  # fmt: skip
        wait_until("the plugin server's socket", lambda: self.ready(), timeout=60)

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"plugin server exited: {self.proc.stderr.read()!r}")  # type: ignore[union-attr]
        return connectable(self.sock)

    @property
    def pid(self) -> int:
        return self.proc.pid  # ip netns exec execs the command: same pid

    def log_text(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def stop(self) -> None:
        children = children_of(self.pid) if self.proc.poll() is None else []
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self.proc.stderr is not None:
            self.proc.stderr.close()


class Node:
    """A node namespace, a launcher from ``vpccni install-cni`` and pods to plumb."""

    def __init__(self, tmp: Path, prefix: str) -> None:
        self.tmp, self.prefix = tmp, prefix
        self.netns = create_netns(f"{prefix}n")
        self.pods: list[Netns] = []
        self.servers: list[Server] = []
        self.sock = tmp / "run" / "plugin.sock"
        bin_dir = tmp / "bin"
        subprocess.run(
            [VPCCNI, "install-cni", "--bin-dir", str(bin_dir), "--names", "aws-cni",
             "--server-socket", str(self.sock)],
            check=True, capture_output=True,
        )  # fmt: skip
        self.launcher = str(bin_dir / "aws-cni")

    def pod(self) -> Netns:
        ns = create_netns(f"{self.prefix}p")
        self.pods.append(ns)
        return ns

    def server(self, netns: Netns | None = None, **kw: Any) -> Server:
        server = Server(netns or self.netns, self.sock, self.tmp / "server.log", **kw)
        self.servers.append(server)
        return server

    def call(
        self,
        command: str,
        conf: dict[str, Any] | bytes,
        *,
        via_server: bool,
        pod: Netns | None = None,
        cid: str = "cid1",
        pod_name: str = "web",
        env: dict[str, str] | None = None,
        extra: dict[str, str] | None = None,
    ) -> Call:
        base = env
        if base is None:
            base = cni_env(
                command,
                container_id=cid,
                netns=pod.path if pod else None,
                args={"K8S_POD_NAMESPACE": "default", "K8S_POD_NAME": pod_name},
            )
        full = {**base, **(extra or {}), SOCKET_ENV: str(self.sock) if via_server else ""}
        return run_exec(full, conf, in_netns=self.netns.name, binary=self.launcher)

    def close(self) -> None:
        for server in self.servers:
            server.stop()
        for pod in self.pods:
            delete_netns(pod)
        delete_netns(self.netns)


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    n = Node(tmp_path, "vzy")
    try:
        yield n
    finally:
        n.close()


def host_links(ns: Netns) -> list[str]:
    return [link["ifname"] for link in ns.ip_json("link")]


# --------------------------------------------------------------------------- tests


def test_server_socket_is_root_only_and_the_server_runs_no_threads(node: Node) -> None:
    server = node.server()
    mode = node.sock.stat().st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o600
    assert node.sock.stat().st_uid == 0
    # One thread: forking a multi-threaded process could copy a lock another thread holds.
    assert len(os.listdir(f"/proc/{server.pid}/task")) == 1


def test_add_check_get_del_answer_the_same_with_and_without_server(node: Node) -> None:
    server = node.server()
    conf = fake_conf(node.tmp, "1.0.0")
    pod = node.pod()
    add = node.call("ADD", conf, via_server=True, pod=pod)
    assert add.ok, add.stdout + add.stderr
    assert add.result["ips"][0]["address"] == "10.77.0.1/32"
    # Plumbed in the node namespace (where the server runs), never elsewhere.
    assert any(name.startswith("eni") for name in host_links(node.netns))
    prev = {**conf, "prevResult": add.result}
    for command, payload in (("CHECK", prev), ("GET", conf)):
        served = node.call(command, payload, via_server=True, pod=pod)
        direct = node.call(command, payload, via_server=False, pod=pod)
        assert (served.returncode, served.stdout) == (direct.returncode, direct.stdout), command
        assert served.ok, served.stdout
    assert node.call("GET", conf, via_server=True, pod=pod).stdout == add.stdout
    deleted = node.call("DEL", conf, via_server=True, pod=pod)
    assert (deleted.returncode, deleted.stdout) == (0, "")
    assert not any(name.startswith("eni") for name in host_links(node.netns))
    # The same ADD made by the launcher itself: the same document but for the random MACs.
    again = node.call("ADD", conf, via_server=False, pod=pod)
    assert again.ok, again.stdout
    assert MAC.sub("MAC", again.stdout) == MAC.sub("MAC", add.stdout)
    for via_server in (False, True, True):  # DEL is idempotent either way
        gone = node.call("DEL", conf, via_server=via_server, pod=pod)
        assert (gone.returncode, gone.stdout) == (0, "")
    # Every request was served by a child of the server, as its log says.
    assert server.log_text().count("imported after the fork") >= 7


@pytest.mark.parametrize(
    ("code", "case"),
    [(4, "no container id"), (6, "garbage stdin"), (7, "vethPrefix too long"),
     (100, "unbuilt driver")],
)  # fmt: skip
def test_errors_are_byte_identical_with_and_without_server(
    node: Node, code: int, case: str
) -> None:
    node.server()
    pod = node.pod()
    conf: dict[str, Any] | bytes = fake_conf(node.tmp, "0.4.0")
    env = None
    if case == "no container id":
        env = cni_env("ADD", container_id=None, netns=pod.path)
    elif case == "garbage stdin":
        conf = b'{"cniVersion": "1.0.0", '
    elif case == "vethPrefix too long":
        conf = fake_conf(node.tmp, "0.4.0", vethPrefix="toolong")
    else:
        conf = fake_conf(node.tmp, "1.0.0", driver="branch_eni")
    served = node.call("ADD", conf, via_server=True, pod=pod, env=env)
    direct = node.call("ADD", conf, via_server=False, pod=pod, env=env)
    assert served.code == code, served.stdout
    assert (served.returncode, served.stdout) == (direct.returncode, direct.stdout)
    assert "Traceback" not in served.stderr


def test_commands_see_the_launchers_environment_only(node: Node) -> None:
    server_only = node.tmp / "server-only.jsonl"
    node.server(env={"VPCCNI_TIMING_FILE": str(server_only)})
    conf = fake_conf(node.tmp, "1.0.0", plugins=["timing"])
    pod = node.pod()
    add = node.call("ADD", conf, via_server=True, pod=pod)
    assert add.ok, add.stdout
    assert not server_only.exists(), "the command saw a variable of the server's environment"
    mine = node.tmp / "launcher.jsonl"
    deleted = node.call(
        "DEL", conf, via_server=True, pod=pod, extra={"VPCCNI_TIMING_FILE": str(mine)}
    )
    assert deleted.ok, deleted.stdout
    assert [json.loads(line)["command"] for line in mine.read_text().splitlines()] == ["DEL"]


def test_no_server_or_a_stale_socket_falls_back_to_running_in_the_launcher(node: Node) -> None:
    conf = fake_conf(node.tmp, "1.0.0")
    pod = node.pod()
    # No server at all: nothing at the socket path.
    add = node.call("ADD", conf, via_server=True, pod=pod)
    assert add.ok, add.stdout + add.stderr
    # A stale socket file: bound once, nobody listening (a server that was killed -9).
    node.sock.parent.mkdir(parents=True, exist_ok=True)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(node.sock))
    stale.close()
    assert node.sock.exists()
    assert not connectable(node.sock)
    get = node.call("GET", conf, via_server=True, pod=pod)
    assert get.stdout == add.stdout
    deleted = node.call("DEL", conf, via_server=True, pod=pod)
    assert (deleted.returncode, deleted.stdout) == (0, "")
    assert not any(name.startswith("eni") for name in host_links(node.netns))
    # A new server replaces the stale file and serves.
    server = node.server()
    assert node.call("ADD", conf, via_server=True, pod=pod).ok
    assert "imported after the fork" in server.log_text()


def test_a_server_in_another_network_namespace_is_refused(node: Node) -> None:
    elsewhere = create_netns("vzyo")
    try:
        server = node.server(netns=elsewhere)
        conf = fake_conf(node.tmp, "1.0.0")
        pod = node.pod()
        add = node.call("ADD", conf, via_server=True, pod=pod)
        assert add.ok, add.stdout + add.stderr
        assert "network namespace" in server.log_text()
        # The launcher ran it itself, in the node: the other namespace is untouched.
        assert any(name.startswith("eni") for name in host_links(node.netns))
        assert host_links(elsewhere) == ["lo"]
        assert node.call("DEL", conf, via_server=True, pod=pod).ok
    finally:
        for s in node.servers:
            s.stop()
        delete_netns(elsewhere)


def _hanging_ipamd(path: Path) -> socket.socket:
    """A unix socket that accepts connections and never answers: an ADD waits in its RPC."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.listen(16)
    return s


@pytest.mark.parametrize("who_dies", ["child", "server and child"])
def test_a_request_lost_mid_way_is_a_999_error_without_traceback(node: Node, who_dies: str) -> None:
    server = node.server()
    ipamd = _hanging_ipamd(node.tmp / "ipamd.sock")
    try:
        conf = fake_conf(node.tmp, "1.0.0", driver="routed_eni")
        conf["ipamd"] = {"socket": str(node.tmp / "ipamd.sock")}
        pod = node.pod()
        result: list[Call] = []
        worker = threading.Thread(
            target=lambda: result.append(node.call("ADD", conf, via_server=True, pod=pod))
        )
        worker.start()
        # The child's gRPC channel connecting to "ipamd": it is past "go", mid-command.
        ipamd.settimeout(60)
        rpc, _ = ipamd.accept()
        # The child serving the request is the one connected to "ipamd" (the others idle).
        victims = [peer_pid(rpc)]
        assert victims[0] in children_of(server.pid)
        if who_dies == "server and child":
            victims.append(server.pid)
        for pid in victims:
            os.kill(pid, signal.SIGKILL)
        worker.join(60)
        assert result, "the launcher did not return"
        call = result[0]
        assert call.returncode == 1
        assert call.error["code"] == 999
        assert "plugin server" in call.error["msg"]
        assert "Traceback" not in call.stderr
        rpc.close()
    finally:
        ipamd.close()


def test_ten_concurrent_requests_are_all_served_and_reaped(node: Node) -> None:
    server = node.server()
    conf = fake_conf(node.tmp, "1.0.0", pools=["10.77.0.0/27"])
    pods = [node.pod() for _ in range(10)]
    results: dict[int, Call] = {}

    def run(command: str, i: int) -> None:
        results[i] = node.call(command, conf, via_server=True, pod=pods[i], cid=f"c{i}",
                               pod_name=f"p{i}")  # fmt: skip

    for command in ("ADD", "DEL"):
        results.clear()
        threads = [threading.Thread(target=run, args=(command, i)) for i in range(10)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert sorted(results) == list(range(10))
        assert all(c.ok for c in results.values()), [c.stdout for c in results.values()]
        if command == "ADD":
            addresses = {c.result["ips"][0]["address"] for c in results.values()}
            assert len(addresses) == 10
            assert len([n for n in host_links(node.netns) if n.startswith("eni")]) == 10
    assert not any(name.startswith("eni") for name in host_links(node.netns))
    assert server.log_text().count("imported after the fork") == 20
    # Every child that served has been reaped: what is left are the idle ones, no zombie.
    wait_until(
        "the children to be reaped",
        lambda: len(children_of(server.pid)) == IDLE_CHILDREN and not zombies_of(server.pid),
        timeout=10,
    )


def test_version_is_answered_by_the_launcher_itself(node: Node) -> None:
    server = node.server()
    before = server.log_text().count("imported after the fork")
    env = {"CNI_COMMAND": "VERSION"}
    served = node.call("VERSION", b'{"cniVersion": "0.4.0"}', via_server=True, env=env)
    assert served.result["cniVersion"] == "0.4.0"
    assert server.log_text().count("imported after the fork") == before


def test_idle_children_wait_ready_and_end_with_the_server(node: Node) -> None:
    server = node.server()
    wait_until("the idle children", lambda: len(children_of(server.pid)) == IDLE_CHILDREN)
    idle = children_of(server.pid)
    conf = fake_conf(node.tmp, "1.0.0")
    pod = node.pod()
    assert node.call("ADD", conf, via_server=True, pod=pod).ok
    # One of them served it and is gone; a replacement waits in its place.
    wait_until(
        "a replacement child",
        lambda: (
            len(children_of(server.pid)) == IDLE_CHILDREN
            and set(children_of(server.pid)) != set(idle)
        ),
    )
    waiting = children_of(server.pid)
    server.stop()
    wait_until("the idle children to exit", lambda: not any(alive(p) for p in waiting), 10)
    assert not node.sock.exists()


def test_a_killed_server_takes_its_idle_children_along_and_can_be_restarted(node: Node) -> None:
    server = node.server()
    wait_until("the idle children", lambda: len(children_of(server.pid)) == IDLE_CHILDREN)
    os.kill(server.pid, signal.SIGKILL)
    server.proc.wait(10)
    # An orphan still accepting would keep answering on the socket and make a new server
    # think the path is in use.  Found by command line, not as the server's children: the
    # orphans are reparented, and one may have been forked after the children were listed
    # (the readiness probe's connection is served by an idle child, which is replaced).
    wait_until("every fork of the server to die", lambda: not forks_of(node.sock), 10)
    # A fork being torn down has no command line left but may still hold the listener for
    # a moment: nobody may answer once that is over.
    wait_until("the socket to refuse connections", lambda: not connectable(node.sock), 5)
    assert node.sock.exists()
    conf = fake_conf(node.tmp, "1.0.0")
    pod = node.pod()
    assert node.call("ADD", conf, via_server=True, pod=pod).ok  # falls back at once
    again = node.server()
    assert node.call("DEL", conf, via_server=True, pod=pod).ok
    assert "imported after the fork" in again.log_text()


def test_idle_children_connect_to_the_ipamd_socket_requests_use(node: Node) -> None:
    ipamd_sock = node.tmp / "ipamd.sock"
    ipamd = _hanging_ipamd(ipamd_sock)
    server = node.server()
    try:
        conf = fake_conf(node.tmp, "1.0.0", driver="routed_eni")
        conf["ipamd"] = {"socket": str(ipamd_sock), "timeoutSeconds": 1}
        pod = node.pod()
        # Each served request reports its ipamd socket; children forked afterwards
        # connect there while they wait for work.  Nobody answers here: code 11.
        ipamd.settimeout(0.2)
        for _ in range(IDLE_CHILDREN + 1):
            call = node.call("ADD", conf, via_server=True, pod=pod)
            assert call.code == 11, call.stdout
        connected: set[int] = set()
        deadline = time.monotonic() + 10
        waiting: set[int] = set()
        while time.monotonic() < deadline and not (waiting and waiting <= connected):
            with contextlib.suppress(TimeoutError):
                conn, _ = ipamd.accept()
                connected.add(peer_pid(conn))
            waiting = set(children_of(server.pid))
        assert waiting
        assert waiting <= connected, (waiting, connected)
    finally:
        ipamd.close()


def forks_of(sock: Path) -> list[int]:
    """Live processes running ``vpccni plugin-server --socket sock``: the server and every
    fork of it, wherever they were reparented."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and alive(int(entry)):
            with contextlib.suppress(OSError):
                argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
                if b"plugin-server" in argv and os.fsencode(sock) in argv:
                    found.append(int(entry))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return not re.search(r"^State:\s+Z", state, re.M)


def test_children_that_end_right_after_their_request_are_not_taken_for_dead_idle_ones(
    node: Node,
) -> None:
    server = node.server()
    env = cni_env("ADD", container_id=None, netns=None)  # refused at once: code 4
    for _ in range(30):
        assert node.call("ADD", fake_conf(node.tmp, "1.0.0"), via_server=True, env=env).code == 4
    wait_until(
        "the idle children",
        lambda: len(children_of(server.pid)) == IDLE_CHILDREN and not zombies_of(server.pid),
    )
    assert not re.search(r"idle child \d+ ended", server.log_text())
    assert server.log_text().count("imported after the fork") == 30
