"""Run ``vpccni-ipamd`` inside a simulated node, as a real subprocess, for end-to-end tests.

    with IpamdProcess(sim, "node0", tmp_path, {"WARM_IP_TARGET": "5"}) as ipamd:
        ipamd.client.allocate(...)
        ipamd.introspect("/v1/enis")
        ipamd.metrics()

Every path the daemon uses lives under a per-node directory of the test's tmp dir (socket,
checkpoint, introspection and metrics unix sockets, log file), so several nodes run side by
side.  Intervals are short so the pool converges in seconds.
"""

from __future__ import annotations

import collections
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING
from typing import Any
from typing import TypeVar

import grpc
from grpc_health.v1 import health_pb2
from grpc_health.v1 import health_pb2_grpc

from vpccni.core.ipam import AllocateRequest
from vpccni.core.ipam import Allocation
from vpccni.core.ipam import AttachmentKey
from vpccni.core.ipam import FailureReason
from vpccni.core.ipam import IpamError
from vpccni.core.ipam import PodRef
from vpccni.core.ipam_grpc import GrpcIpamClient

if TYPE_CHECKING:
    from vpccni.sim.fixtures import SimHandle

T = TypeVar("T")

#: The console script next to the running interpreter (the venv's), not one on PATH.
IPAMD = os.path.join(os.path.dirname(sys.executable), "vpccni-ipamd")
#: Intervals that make a node converge in seconds rather than minutes.
FAST_ENV = {
    "VPCCNI_POOL_INTERVAL": "0.5",
    "VPCCNI_RECONCILE_INTERVAL": "3",
    "VPCCNI_DECREASE_INTERVAL": "1",
    "VPCCNI_ENI_MIN_LIFETIME": "2",
    "VPCCNI_RECONCILE_COOLDOWN": "5",
    "IP_COOLDOWN_PERIOD": "2",
    "AWS_VPC_K8S_CNI_LOGLEVEL": "debug",
    "VPCCNI_EC2_MAX_ATTEMPTS": "4",
    "DISABLE_LEAKED_ENI_CLEANUP": "false",
}
START_TIMEOUT = 60.0


def wait_for(
    what: str, probe: Callable[[], T | None], timeout: float = 60.0, interval: float = 0.2
) -> T:
    """Poll ``probe`` until it returns something truthy; fail naming ``what`` and the last
    value seen (no timing assertion: the deadline only stops a hung test)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = probe()
        except AssertionError as exc:
            last = exc
        else:
            if last:
                return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}; last: {last!r}")
        time.sleep(interval)


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=10)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(10)
        sock.connect(self._path)
        self.sock = sock


def http_get(socket_path: str, path: str) -> bytes:
    conn = _UnixHTTPConnection(socket_path)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read()
        if response.status != 200:
            raise AssertionError(f"GET {path}: HTTP {response.status}: {body[:200]!r}")
        return body
    finally:
        conn.close()


def key(n: int | str, network: str = "aws-cni") -> AttachmentKey:
    return AttachmentKey(network, f"container-{n}", "eth0")


def request(n: int | str) -> AllocateRequest:
    return AllocateRequest(key(n), f"/var/run/netns/pod-{n}", PodRef("default", f"pod-{n}"))


class IpamdProcess:
    """One ipamd in one simulated node."""

    def __init__(
        self,
        sim: SimHandle,
        node: str,
        workdir: Path,
        env: Mapping[str, str] | None = None,
        *,
        wait: bool = True,
    ) -> None:
        self.sim = sim
        self.node = node
        self.dir = workdir / node
        self.dir.mkdir(parents=True, exist_ok=True)
        self.socket = str(self.dir / "ipamd.sock")
        self.checkpoint = str(self.dir / "ipam.json")
        self.introspection_socket = str(self.dir / "introspection.sock")
        self.metrics_socket = str(self.dir / "metrics.sock")
        self.log_file = str(self.dir / "ipamd.log")
        self.env = {
            **FAST_ENV,
            "VPCCNI_IPAMD_SOCKET": self.socket,
            "VPCCNI_STATE_DIR": str(self.dir),
            "AWS_VPC_K8S_CNI_BACKING_STORE": self.checkpoint,
            "INTROSPECTION_BIND_ADDRESS": f"unix:{self.introspection_socket}",
            "VPCCNI_METRICS_BIND_ADDRESS": f"unix:{self.metrics_socket}",
            "AWS_VPC_K8S_CNI_LOG_FILE": self.log_file,
            "MY_NODE_NAME": node,
            **(env or {}),
        }
        self.proc: subprocess.Popen[str] | None = None
        self.client = GrpcIpamClient(self.socket, timeout_s=15.0)
        self._wait = wait

    # -- life cycle ----------------------------------------------------------------------------
    def start(self) -> IpamdProcess:
        self.proc = self.sim.node_popen(
            self.node,
            [IPAMD],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        if self._wait:
            self.wait_serving()
        return self

    def wait_serving(self, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"ipamd on {self.node} exited with {self.proc.returncode} before serving:\n"
                    f"{self.proc.stderr.read() if self.proc.stderr else ''}\n{self.log_tail()}"
                )
            if os.path.exists(self.socket) and self._health() == "SERVING":
                return
            time.sleep(0.1)
        raise AssertionError(
            f"ipamd on {self.node} not SERVING after {timeout}s\n{self.log_tail()}"
        )

    def _health(self) -> str:
        with grpc.insecure_channel(f"unix://{self.socket}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
            except grpc.RpcError:
                return "UNREACHABLE"
            return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; returns the exit status."""
        self.client.close()
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            # `ip netns exec` execs the command: the pid is ipamd's own.
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        if proc.stderr is not None:
            proc.stderr.close()
        return proc.returncode

    def kill(self) -> None:
        """SIGKILL: a crash, no clean-up."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
        self.stop()

    def __enter__(self) -> IpamdProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = Path(self.log_file).read_text(errors="replace")
        except FileNotFoundError:
            return "(no ipamd log)"
        return "\n".join(text.splitlines()[-lines:])

    # -- views ---------------------------------------------------------------------------------
    def introspect(self, path: str = "/v1/enis") -> Any:
        return json.loads(http_get(self.introspection_socket, path))

    def metrics(self) -> str:
        return http_get(self.metrics_socket, "/metrics").decode()

    def metric(self, name: str, labels: str = "") -> float | None:
        """The value of the sample ``name{labels}`` (labels as rendered, sorted), or None."""
        wanted = f"{name}{{{labels}}}" if labels else name
        for line in self.metrics().splitlines():
            if line.startswith("#"):
                continue
            sample, _, value = line.rpartition(" ")
            if sample == wanted:
                return float(value)
        return None

    def pool(self) -> tuple[int, int, int]:
        """(ENIs, total addresses, assigned addresses) of network card 0, from introspection."""
        card = self.introspect("/v1/enis").get("0", {"ENIs": {}, "TotalIPs": 0, "AssignedIPs": 0})
        return len(card["ENIs"]), card["TotalIPs"], card["AssignedIPs"]

    # -- EC2's view ----------------------------------------------------------------------------
    def instance_id(self) -> str:
        return str(self.sim.node(self.node).instance_id)

    def ec2_enis(self) -> list[dict[str, Any]]:
        """The ENIs EC2 says are attached to this node (any attachment state)."""
        out = self.sim.ec2_client().describe_network_interfaces(
            Filters=[{"Name": "attachment.instance-id", "Values": [self.instance_id()]}]
        )
        return list(out["NetworkInterfaces"])

    def ec2_pool(self) -> tuple[int, int]:
        """(ENIs, secondary addresses) EC2 shows for this node, read from the emulator's
        state directly so injected throttling does not hit the test's own reads."""
        with self.sim.emulator.lock:
            enis = self.sim.emulator.describe_eni_state(self.instance_id())
        return len(enis), sum(len(e.private_ips) - 1 for e in enis)

    def wait_pool(self, enis: int, addresses: int, timeout: float = 60.0) -> None:
        """Until EC2 and introspection both show ``enis`` ENIs with ``addresses`` addresses."""

        def probe() -> tuple[Any, ...] | None:
            seen = (self.ec2_pool(), self.pool()[:2])
            return None if seen != ((enis, addresses), (enis, addresses)) else seen

        try:
            wait_for(f"{self.node}: {enis} ENI(s), {addresses} address(es)", probe, timeout)
        except AssertionError as exc:
            raise AssertionError(
                f"{exc}\nEC2 {self.ec2_pool()}, ipamd {self.pool()}\n{self.log_tail()}"
            ) from None

    def allocate_error(self, n: int | str) -> IpamError:
        """Allocate expecting a failure; returns the IpamError."""
        try:
            got = self.client.allocate(request(n))
        except IpamError as exc:
            return exc
        raise AssertionError(f"allocation {n} unexpectedly succeeded: {got}")


#: Reasons a runtime retries on (the pool is growing, or will once cooldown or back-off end).
RETRIABLE = frozenset(
    {
        FailureReason.POOL_EMPTY,
        FailureReason.POOL_EMPTY_ATTACHING,
        FailureReason.COOLDOWN,
        FailureReason.EC2_THROTTLED,
    }
)


def allocate_retrying(ipamd: IpamdProcess, n: int | str, timeout: float = 60.0) -> Allocation:
    """Allocate as kubelet would: retry while the reason says the pool is growing."""
    seen: list[str] = []

    def attempt() -> Allocation | None:
        try:
            return ipamd.client.allocate(request(n))
        except IpamError as exc:
            if exc.reason not in RETRIABLE:
                raise
            seen.append(exc.reason.value)
            return None

    try:
        return wait_for(f"allocation {n} on {ipamd.node}", attempt, timeout)
    except AssertionError as exc:
        reasons = sorted(set(seen))
        raise AssertionError(f"{exc}; reasons seen: {reasons}\n{ipamd.log_tail()}") from None


class Ec2CallCounter:
    """Counts every request the EC2 emulator receives, by action, throttled and failed ones
    included (the emulator asks its fault configuration for each request's latency first)."""

    def __init__(self, sim: SimHandle) -> None:
        self._faults = sim.emulator.faults
        self._lock = threading.Lock()
        self.calls: collections.Counter[str] = collections.Counter()

    def __enter__(self) -> Ec2CallCounter:
        original = self._faults.latency_for

        def counting(action: str) -> float:
            with self._lock:
                self.calls[action] += 1
            return float(original(action))

        self._faults.latency_for = counting
        return self

    def __exit__(self, *exc: object) -> None:
        del self._faults.latency_for  # the class's method again

    def total(self) -> int:
        with self._lock:
            return sum(self.calls.values())

    def __getitem__(self, action: str) -> int:
        with self._lock:
            return self.calls[action]
