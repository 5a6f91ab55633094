"""Pods on simulated nodes through the real CNI client: ipamd + aws-cni (routed_eni) + libcni.

    with running_simulator(nodes=2) as sim, contextlib.ExitStack() as stack:
        node = stack.enter_context(SimNode(sim, "node0", tmp_path, {"WARM_IP_TARGET": "3"}))
        pod = node.add_pod("web-0")          # retried while ipamd grows the pool
        pod.address, pod.netns.name
        node.delete_pod(pod)

Each node gets its own conflist (``ipamd.socket`` = that node's ipamd socket, only the
``routed_eni`` driver enabled, per-node ``stateDir``/``runtimeCacheDir``/log file), and
``cnictl`` runs inside the node namespace (``ip netns exec``) so every host-side change the
plugin makes lands in the node, never in the root namespace.  Pod namespaces are made here
with a per-harness random prefix that is not the simulator's (the fabric treats every
``<sim prefix>-*`` namespace as a node) and always deleted.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from typing import Any

from tests.support.cnictl import GO_PLUGIN_DIR
from tests.support.cnictl import CniCall
from tests.support.cnictl import Cnictl
from tests.support.cnictl import Netns
from tests.support.cnictl import aws_cni_binary
from tests.support.cnictl import delete_netns
from tests.support.cnictl import ensure_cnictl
from tests.support.cnictl import write_conflist
from tests.support.ipamd import IpamdProcess

if TYPE_CHECKING:
    from vpccni.sim.fixtures import SimHandle

NETWORK = "aws-cni"
#: CNI codes a runtime retries ADD on: 11 "try again later" and 102 "address unavailable"
#: while ipamd attaches an ENI (the message says which; kubelet simply retries the sandbox).
RETRY_CODES = frozenset({11, 102})
#: UDP port of the echo server in every pod (replies with the source address it saw).
ECHO_PORT = 7777

ECHO_SERVER = f"""
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", {ECHO_PORT}))
while True:
    data, peer = s.recvfrom(512)
    s.sendto(peer[0].encode(), peer)
"""

#: Asks every address in argv[1:] for the source it saw; prints {dst: seen or null}.
ECHO_CLIENT = f"""
import json, socket, sys
seen = {{}}
for dst in sys.argv[1:]:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(1.0)
    seen[dst] = None
    for _ in range(3):
        try:
            s.sendto(b"who", (dst, {ECHO_PORT}))
            seen[dst] = s.recvfrom(512)[0].decode()
            break
        except OSError:
            pass
    s.close()
print(json.dumps(seen))
"""


def routed_conflist(
    workdir: Path, ipamd_socket: str, *, cni_version: str = "1.0.0", mtu: int = 9001
) -> dict[str, Any]:
    """The node's conflist: aws-cni with the routed_eni driver, served by ``ipamd_socket``."""
    return {
        "cniVersion": cni_version,
        "name": NETWORK,
        "plugins": [
            {
                "type": "aws-cni",
                "mtu": mtu,
                "vethPrefix": "eni",
                "ipamd": {"socket": ipamd_socket},
                "drivers": {"enabled": ["routed_eni"]},
                "stateDir": str(workdir / "state"),
                "runtimeCacheDir": str(workdir / "cnicache"),
                "pluginLogFile": str(workdir / "aws-cni.log"),
                "pluginLogLevel": "info",
            }
        ],
    }


@dataclass
class Pod:
    name: str
    node: str
    netns: Netns
    container_id: str
    address: str = ""  # bare IPv4 once ADD succeeded
    add_ms: float = 0.0  # wall time of the successful ADD (cnictl's own measure)
    add_attempts: int = 0


class CniFailure(RuntimeError):
    """A CNI call failed; the message carries the plugin's code, msg and details."""

    def __init__(self, what: str, call: CniCall) -> None:
        err = call.cni_error
        why = (
            f"code {err['code']}: {err['msg']} ({err.get('details') or ''})"
            if err
            else call.stderr.strip()[-400:]
        )
        super().__init__(f"{what}: {why}")
        self.call = call
        self.code = int(err["code"]) if err else None


def call_ms(call: CniCall) -> float:
    return call.elapsed_ms if call.elapsed_ms is not None else call.wall_ms


def install_launcher(
    bin_dir: Path, server_socket: Path, vpccni: Path | None = None, launcher: str = "auto"
) -> Path:
    """The aws-cni launcher `vpccni install-cni` (this venv's, or ``vpccni``) writes for a
    node whose plugin server listens on ``server_socket``: what kubelet would execute.
    ``launcher`` is install-cni's ``--launcher``: by default the native one when a C
    compiler (or a prebuilt binary) is there, with the Python one as ``aws-cni-python``
    (docs/native-launcher.md)."""
    vpccni = vpccni or Path(sys.executable).parent / "vpccni"
    # Only when asked: an older vpccni (bench --vpccni) has no --launcher.
    pick = [] if launcher == "auto" else ["--launcher", launcher]
    subprocess.run(
        [str(vpccni), "install-cni", "--bin-dir", str(bin_dir), "--names", "aws-cni",
         "--server-socket", str(server_socket), *pick],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return bin_dir / "aws-cni"


class SimNode:
    """One simulated node as kubelet sees it: ipamd running, a conflist, pods via libcni."""

    def __init__(
        self,
        sim: SimHandle,
        node: str,
        workdir: Path,
        ipamd_env: Mapping[str, str] | None = None,
        *,
        cni_path: Sequence[str] | None = None,
        cnictl: str | None = None,
        pod_prefix: str | None = None,
    ) -> None:
        self.sim = sim
        self.name = node
        self.ipamd = IpamdProcess(sim, node, workdir, ipamd_env)
        self.dir = self.ipamd.dir
        self.conflist = write_conflist(
            self.dir / "10-aws.conflist", routed_conflist(self.dir, self.ipamd.socket)
        )
        self.ctl = Cnictl(
            binary=cnictl or ensure_cnictl(),
            cni_path=list(cni_path or [str(aws_cni_binary().parent), str(GO_PLUGIN_DIR)]),
            cache_dir=self.dir / "libcni-cache",
            default_netns=self.namespace,
        )
        # Not the simulator's prefix: the fabric takes every `<prefix>-*` namespace for a node.
        self.pod_prefix = pod_prefix or "vp" + secrets.token_hex(3)
        self.pods: dict[str, Pod] = {}
        self._echo: dict[str, subprocess.Popen[bytes]] = {}
        self.plugin_server: subprocess.Popen[bytes] | None = None

    @property
    def namespace(self) -> str:
        return str(self.sim.node(self.name).namespace)

    @property
    def node_ns(self) -> Netns:
        return Netns(self.namespace)

    # -- life cycle ----------------------------------------------------------------------------
    def start(self) -> SimNode:
        self.ipamd.start()
        return self

    def __enter__(self) -> SimNode:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """DEL every pod still attached, delete their namespaces, stop ipamd (best effort)."""
        for pod in list(self.pods.values()):
            with contextlib.suppress(Exception):
                self.delete_pod(pod)
        for pod in list(self.pods.values()):
            self._drop(pod)
        self.stop_plugin_server()
        self.ipamd.stop()

    # -- plugin server (optional) ------------------------------------------------------------
    def start_plugin_server(
        self, socket_path: Path, log_file: Path | None = None, *, timeout: float = 60.0
    ) -> subprocess.Popen[bytes]:
        """``vpccni plugin-server`` inside this node's namespace (where the plugin runs), for
        launchers written with ``install-cni --server-socket socket_path``; returns once it
        listens.  :meth:`close` stops it."""
        vpccni = str(Path(sys.executable).parent / "vpccni")
        argv = ["ip", "netns", "exec", self.namespace, vpccni, "plugin-server",
                "--socket", str(socket_path)]  # fmt: skip
        if log_file is not None:
            argv += ["--log-file", str(log_file)]
        self.plugin_server = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while True:
            if self.plugin_server.poll() is not None:
                raise RuntimeError(f"plugin server exited with {self.plugin_server.returncode}")
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(str(socket_path))
                return self.plugin_server
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"plugin server not listening on {socket_path}") from None
                time.sleep(0.05)
            finally:
                probe.close()

    def stop_plugin_server(self) -> None:
        server, self.plugin_server = self.plugin_server, None
        if server is None or server.poll() is not None:
            return
        server.terminate()  # requests in flight finish on their own
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(10)

    # -- pods ----------------------------------------------------------------------------------
    def new_pod(self, name: str) -> Pod:
        ns = Netns(f"{self.pod_prefix}-{name}")
        # Recorded before creation so a half-made pod is still cleaned up.
        pod = Pod(name, self.name, ns, f"cid-{self.pod_prefix}-{name}")
        self.pods[name] = pod
        subprocess.run(["ip", "netns", "add", ns.name], check=True, capture_output=True)
        ns.ip("link", "set", "lo", "up")
        return pod

    def add(self, pod: Pod) -> CniCall:
        """One ADD through libcni, no retry."""
        return self.ctl.add(
            self.conflist,
            pod.netns.path,
            pod.container_id,
            args={"K8S_POD_NAME": pod.name, "K8S_POD_NAMESPACE": "default"},
        )

    def add_pod(self, name: str, *, timeout: float = 90.0, interval: float = 0.5) -> Pod:
        """Create the pod's namespace and ADD it, retrying as kubelet does while ipamd says
        the pool is growing (codes in :data:`RETRY_CODES`)."""
        pod = self.pods.get(name) or self.new_pod(name)
        deadline = time.monotonic() + timeout
        while True:
            pod.add_attempts += 1
            call = self.add(pod)
            if call.ok:
                pod.address = call.addresses()[0].split("/", 1)[0]
                pod.add_ms = call_ms(call)
                return pod
            failure = CniFailure(f"ADD {name} on {self.name}", call)
            if failure.code not in RETRY_CODES or time.monotonic() >= deadline:
                raise failure
            time.sleep(interval)

    def check_pod(self, pod: Pod) -> CniCall:
        return self.ctl.check(self.conflist, pod.netns.path, pod.container_id)

    def delete_pod(self, pod: Pod, *, drop_netns: bool = True) -> CniCall:
        call = self.ctl.delete(self.conflist, pod.netns.path, pod.container_id)
        if not call.ok:
            raise CniFailure(f"DEL {pod.name} on {self.name}", call)
        if drop_netns:
            self._drop(pod)
        return call

    def _drop(self, pod: Pod) -> None:
        echo = self._echo.pop(pod.name, None)
        if echo is not None:
            echo.kill()
            echo.wait(5)
        delete_netns(pod.netns)
        self.pods.pop(pod.name, None)

    # -- traffic -------------------------------------------------------------------------------
    def start_echo(self, pod: Pod) -> None:
        """A UDP server in the pod that answers with the source address it saw."""
        self._echo[pod.name] = subprocess.Popen(
            ["ip", "netns", "exec", pod.netns.name, sys.executable, "-c", ECHO_SERVER],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    # -- views ---------------------------------------------------------------------------------
    def eni_of(self) -> dict[str, tuple[int, str]]:
        """address -> (device index, ENI id), as EC2 sees the node now."""
        with self.sim.emulator.lock:
            enis = self.sim.emulator.describe_eni_state(str(self.sim.node(self.name).instance_id))
        return {ip: (e.device_index, e.eni_id) for e in enis for ip in e.private_ips}

    def from_pod_table(self, address: str) -> int | None:
        """The table of the node's ``from <address>`` rule at 1536, None without one."""
        for rule in self.node_ns.ip_json("-4", "rule"):
            if rule.get("priority") == 1536 and rule.get("src") == address:
                table = rule.get("table")
                return 254 if table == "main" else int(table)
        return None


def echo_sources(src: Netns, destinations: Sequence[str]) -> dict[str, str | None]:
    """From inside ``src``: {destination: the source address it saw, or None if no reply}."""
    proc = subprocess.run(
        ["ip", "netns", "exec", src.name, sys.executable, "-c", ECHO_CLIENT, *destinations],
        capture_output=True,
        text=True,
        timeout=30 + 4 * len(destinations),
        check=True,
    )
    return dict(json.loads(proc.stdout))


def ping_ok(src: Netns, address: str, *, wait_s: int = 2) -> bool:
    proc = src.exec("ping", "-n", "-q", "-c", "1", "-W", str(wait_s), address, check=False)
    return proc.returncode == 0


def is_vpc_address(address: str, cidrs: Sequence[str]) -> bool:
    ip = ipaddress.ip_address(address)
    return any(ip in ipaddress.ip_network(c) for c in cidrs)


def root_snapshot() -> tuple[str, ...]:
    """The root namespace's links, addresses, routes and rules (read only; compare before
    and after)."""

    def ip(*args: str) -> str:
        out = subprocess.run(["ip", "-j", *args], capture_output=True, text=True).stdout
        items = json.loads(out or "[]")
        # Counters and flags that change by themselves are not "the namespace changed".
        for item in items:
            if isinstance(item, dict):
                for volatile in ("stats", "stats64", "operstate", "linkmode", "flags"):
                    item.pop(volatile, None)
        return json.dumps(sorted(json.dumps(x, sort_keys=True) for x in items))

    return (ip("link"), ip("-4", "addr"), ip("route", "show", "table", "all"), ip("rule"))


def namespaces_with(prefixes: Sequence[str]) -> list[str]:
    """Named network namespaces starting with one of ``prefixes`` (leftover check)."""
    names = os.listdir("/var/run/netns") if os.path.isdir("/var/run/netns") else []
    return sorted(n for n in names if n.startswith(tuple(prefixes)))
