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
import enum
import http.client
import json
import math
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field
from dataclasses import replace
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
            # No plugin server unless a test asks (its default socket is one path for
            # every simulated node; tests that want one start it themselves or set this).
            "VPCCNI_PLUGIN_SERVER_SOCKET_PATH": "",
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
    def start(self, wait: bool | None = None) -> IpamdProcess:
        """Start the daemon; wait until it is SERVING unless ``wait`` (default: the
        constructor's) is False."""
        self.proc = self.sim.node_popen(
            self.node,
            [IPAMD],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        if self._wait if wait is None else wait:
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
    """Counts every request the EC2 emulator receives while the block runs, by action,
    throttled and failed ones included.

    A view over the emulator's own ``stats`` (differences from a baseline taken on entry,
    frozen on exit), so counters may nest or overlap and nothing is patched."""

    def __init__(self, sim: SimHandle) -> None:
        self._stats = sim.emulator.stats
        self._baseline: dict[str, int] = {}
        self._frozen: collections.Counter[str] | None = None

    def __enter__(self) -> Ec2CallCounter:
        self._baseline = self._stats.counts()
        self._frozen = None
        return self

    def __exit__(self, *exc: object) -> None:
        self._frozen = self._since_entry()

    def _since_entry(self) -> collections.Counter[str]:
        base = self._baseline
        now = self._stats.counts()
        return collections.Counter(
            {a: n - base.get(a, 0) for a, n in now.items() if n > base.get(a, 0)}
        )

    @property
    def calls(self) -> collections.Counter[str]:
        """Requests per action since entry (up to exit once the block is left)."""
        return self._frozen if self._frozen is not None else self._since_entry()

    def total(self) -> int:
        return sum(self.calls.values())

    def __getitem__(self, action: str) -> int:
        return self.calls[action]


# -- kill -9 chaos ---------------------------------------------------------------------------
#
# What the client knows, per attachment, is the last thing ipamd *acknowledged* to it:
#
#   NEW        never asked for
#   ADDING     Allocate sent, no reply yet (or only transport failures): unknown outcome
#   HELD a     Allocate acknowledged with address a
#   RELEASING  Release sent after HELD a, no reply yet: unknown outcome
#   RELEASED   Release acknowledged
#
# The invariant, checked after every restart while the client is paused with nothing in
# flight (so the daemon's state and the client's knowledge are both fixed), from a Lookup of
# every key and from the checkpoint file:
#
#   1. no address is assigned to two attachments (Lookup replies; checkpoint entries);
#   2. Lookup and the checkpoint agree on every key;
#   3. HELD a: the attachment still has exactly a;
#   4. NEW, RELEASED: the attachment has no address;
#   5. RELEASING after HELD a: it has a or nothing (the kill may have hit between ipamd's
#      commit and the client's receipt of the reply);
#   6. ADDING: it has some address or nothing; if it has one, the client's retried
#      Allocate must return that same address (idempotent ADD across a restart);
#   7. every address ipamd's datastore holds is a secondary address, in EC2, of that same
#      ENI, attached to this instance (read under the emulator's lock: EC2 frozen).
#
# Besides, a Release acknowledged on its first attempt must find the allocation (an
# acknowledged Allocate was not lost) and return the address the client holds.

CHAOS_ENV = {
    **FAST_ENV,
    "AWS_VPC_K8S_CNI_LOGLEVEL": "info",
    "IP_COOLDOWN_PERIOD": "1",
    # Production's retry budget: the chaos is the kills, not EC2 giving up.
    "VPCCNI_EC2_MAX_ATTEMPTS": "11",
}
#: Failures the chaos client retries without comment: the daemon is down or restarting,
#: or the pool is growing.
CHAOS_TRANSIENT = RETRIABLE | {FailureReason.UNREACHABLE}


class Phase(enum.Enum):
    NEW = "new"
    ADDING = "adding"
    HELD = "held"
    RELEASING = "releasing"
    RELEASED = "released"


@dataclass
class Attachment:
    n: int
    phase: Phase = Phase.NEW
    #: HELD / RELEASING: the acknowledged address.
    address: str | None = None
    #: ADDING: the address a check after a restart saw; the acknowledged one must match.
    expect: str | None = None
    #: Attempts of the current operation.
    attempts: int = 0


@dataclass
class ChaosReport:
    kills: int = 0
    kills_during_start: int = 0
    attachments: int = 0
    operations: int = 0
    checks: int = 0
    restart_seconds: list[float] = field(default_factory=list)
    #: Found by the checks after restarts: operations of unknown outcome (the kill hit
    #: them) that ipamd had committed / had not.
    adds_committed: int = 0
    adds_not_committed: int = 0
    releases_committed: int = 0
    releases_not_committed: int = 0
    retried_attempts: int = 0
    violations: list[str] = field(default_factory=list)
    unexpected_errors: list[str] = field(default_factory=list)
    leftover_temp_files: int = 0
    available_enis: int = 0


class ChaosClient(threading.Thread):
    """Adds and deletes ``count`` attachments in a random interleaving (at most ``max_held``
    at once), each operation retried like kubelet retries a pod until acknowledged.  A new
    gRPC channel per attempt, as each CNI invocation is a new process.  :meth:`pause` stops
    new attempts; :meth:`wait_idle` waits until none is in flight."""

    def __init__(
        self, socket_path: str, count: int, seed: int, max_held: int, think: float = 0.005
    ) -> None:
        super().__init__(name="chaos-client", daemon=True)
        self.socket_path = socket_path
        self.count = count
        self.max_held = max_held
        self.think = think
        self.rng = random.Random(seed)
        self.cond = threading.Condition()
        self.paused = False
        self.in_flight = 0
        self.ops_done = 0
        self.retried = 0
        self.attachments = {n: Attachment(n) for n in range(count)}
        self.violations: list[str] = []
        self.unexpected: list[str] = []
        self.error: BaseException | None = None
        self.finished = threading.Event()

    # -- control (killer side) -----------------------------------------------------------
    def pause(self) -> None:
        with self.cond:
            self.paused = True

    def resume(self) -> None:
        with self.cond:
            self.paused = False
            self.cond.notify_all()

    def wait_idle(self, timeout: float = 60.0) -> None:
        with self.cond:
            if not self.cond.wait_for(lambda: self.in_flight == 0, timeout):
                raise AssertionError(f"client still has {self.in_flight} call(s) in flight")

    def wait_ops(self, target: int, timeout: float = 120.0) -> None:
        """Until ``target`` operations were acknowledged (or the client is finished)."""
        with self.cond:
            self.cond.wait_for(lambda: self.ops_done >= target or self.finished.is_set(), timeout)

    def snapshot(self) -> dict[int, Attachment]:
        with self.cond:
            return {n: replace(a) for n, a in self.attachments.items()}

    def expect(self, n: int, address: str) -> None:
        with self.cond:
            a = self.attachments[n]
            if a.phase is Phase.ADDING:
                a.expect = address

    # -- the workload -----------------------------------------------------------------------
    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            self.error = exc
        finally:
            self.finished.set()
            with self.cond:
                self.cond.notify_all()

    def _run(self) -> None:
        next_new = 0
        held: list[int] = []
        while next_new < self.count or held:
            room = len(held) < self.max_held
            if next_new < self.count and (not held or (room and self.rng.random() < 0.55)):
                self._allocate(next_new)
                held.append(next_new)
                next_new += 1
            else:
                self._release(held.pop(self.rng.randrange(len(held))))
            with self.cond:
                self.ops_done += 1
                self.cond.notify_all()
            if self.think:
                time.sleep(self.rng.uniform(0, self.think))

    def _attempt(self, n: int, call: Callable[[GrpcIpamClient], T]) -> T:
        deadline = time.monotonic() + 240.0
        while True:
            with self.cond:
                self.cond.wait_for(lambda: not self.paused)
                self.in_flight += 1
                self.attachments[n].attempts += 1
                if self.attachments[n].attempts > 1:
                    self.retried += 1
            client = GrpcIpamClient(self.socket_path, timeout_s=10.0)
            try:
                result = call(client)
            except IpamError as exc:
                if exc.reason not in CHAOS_TRANSIENT:
                    self.unexpected.append(f"attachment {n}: {exc.reason.value}: {exc.message}")
                failed: Exception | None = exc
            except Exception as exc:  # noqa: BLE001 - kubelet retries whatever went wrong
                self.unexpected.append(f"attachment {n}: {exc!r}")
                failed = exc
            else:
                failed = None
            finally:
                client.close()
            if failed is None:
                # Still "in flight" for the killer until the caller recorded the reply
                # (see _settle): the snapshot never sees an acknowledged reply unrecorded.
                return result
            with self.cond:
                self.in_flight -= 1
                self.cond.notify_all()
            if time.monotonic() > deadline:
                raise AssertionError(f"attachment {n}: never acknowledged; last {failed!r}")
            time.sleep(self.rng.uniform(0.02, 0.1))

    def _settle(self) -> None:
        self.in_flight -= 1
        self.cond.notify_all()

    def _allocate(self, n: int) -> None:
        a = self.attachments[n]
        with self.cond:
            a.phase, a.attempts = Phase.ADDING, 0
        got = self._attempt(n, lambda c: c.allocate(request(n)))
        address = got.addresses[0].address
        with self.cond:
            if a.expect is not None and address != a.expect:
                self.violations.append(
                    f"attachment {n}: ipamd held {a.expect} for it after a restart, but the "
                    f"retried Allocate returned {address}"
                )
            a.phase, a.address, a.expect = Phase.HELD, address, None
            self._settle()

    def _release(self, n: int) -> None:
        a = self.attachments[n]
        with self.cond:
            a.phase, a.attempts = Phase.RELEASING, 0
        got = self._attempt(n, lambda c: c.release(key(n)))
        with self.cond:
            if got is not None and got.addresses[0].address != a.address:
                self.violations.append(
                    f"attachment {n}: held {a.address}, Release returned {got.addresses[0].address}"
                )
            if got is None and a.attempts == 1:
                self.violations.append(
                    f"attachment {n}: its acknowledged allocation {a.address} was unknown to "
                    "ipamd on the first Release"
                )
            a.phase, a.address = Phase.RELEASED, None
            self._settle()


def _checkpoint_allocations(path: str) -> list[tuple[str, str]]:
    """(containerID, address) of every allocation in ``path`` (none if there is no file)."""
    try:
        doc = json.loads(Path(path).read_text())
    except FileNotFoundError:
        return []
    return [
        (str(e["containerID"]), str(e.get("ipv4") or e.get("ipv6")))
        for e in doc.get("allocations", [])
    ]


def _attachment_number(container_id: str) -> int | None:
    prefix = "container-"
    if container_id.startswith(prefix) and container_id[len(prefix) :].isdigit():
        return int(container_id[len(prefix) :])
    return None


def check_invariants(ipamd: IpamdProcess, client: ChaosClient, report: ChaosReport) -> list[str]:
    """Rules 1-7 above, with the client paused and idle; returns the violations found and
    tells the client which ADDING attachments ipamd turned out to hold."""
    snap = client.snapshot()
    bad: list[str] = []
    lookup_client = GrpcIpamClient(ipamd.socket, timeout_s=15.0)
    try:
        seen: dict[int, str | None] = {}
        for n in snap:
            found = lookup_client.lookup(key(n))
            seen[n] = found.addresses[0].address if found is not None else None
    finally:
        lookup_client.close()
    # 1. no address twice
    owners: dict[str, list[int]] = collections.defaultdict(list)
    for n, address in seen.items():
        if address is not None:
            owners[address].append(n)
    bad += [f"{a} assigned to attachments {ns} (Lookup)" for a, ns in owners.items() if len(ns) > 1]
    entries = _checkpoint_allocations(ipamd.checkpoint)
    by_address: dict[str, list[str]] = collections.defaultdict(list)
    for container, address in entries:
        by_address[address].append(container)
    bad += [f"{a} assigned to {cs} (checkpoint)" for a, cs in by_address.items() if len(cs) > 1]
    # 2. Lookup and checkpoint agree
    in_checkpoint: dict[int, str] = {}
    for container, address in entries:
        number = _attachment_number(container)
        if number is None or number not in snap:
            bad.append(f"checkpoint holds {address} for {container}, which the client never sent")
            continue
        in_checkpoint[number] = address
    for n, address in seen.items():
        if in_checkpoint.get(n) != address:
            bad.append(f"attachment {n}: Lookup says {address}, checkpoint {in_checkpoint.get(n)}")
    # 3-6. against what the client knows
    for n, a in snap.items():
        got = seen[n]
        if a.phase is Phase.HELD and got != a.address:
            bad.append(f"attachment {n}: Allocate acknowledged {a.address}, after restart {got}")
        elif a.phase in (Phase.NEW, Phase.RELEASED) and got is not None:
            bad.append(f"attachment {n}: {a.phase.value} but ipamd assigns it {got}")
        elif a.phase is Phase.RELEASING:
            if got not in (None, a.address):
                bad.append(f"attachment {n}: releasing {a.address} but ipamd assigns it {got}")
            elif got is None:
                report.releases_committed += 1
            else:
                report.releases_not_committed += 1
        elif a.phase is Phase.ADDING:
            if got is None:
                report.adds_not_committed += 1
            else:
                report.adds_committed += 1
                if a.expect not in (None, got):
                    bad.append(f"attachment {n}: ipamd held {a.expect} for it, now {got}")
                client.expect(n, got)
    # 7. EC2 agrees with the datastore
    bad += ec2_disagreements(ipamd, set(seen.values()) - {None})
    report.checks += 1
    return bad


def ec2_disagreements(ipamd: IpamdProcess, assigned: set[str | None]) -> list[str]:
    """Addresses or ENIs ipamd's datastore holds that EC2 does not give this instance.

    Read with the emulator's lock held: EC2 cannot change meanwhile, and ipamd only ever
    adds to its datastore what EC2 already has and removes from EC2 what it already
    dropped, so any difference seen is real."""
    bad: list[str] = []
    emulator = ipamd.sim.emulator
    with emulator.lock:
        ec2 = {
            v.eni_id: set(v.private_ips[1:])
            for v in emulator.describe_eni_state(ipamd.instance_id())
        }
        enis = ipamd.introspect("/v1/enis").get("0", {}).get("ENIs", {})
    held: set[str] = set()
    for eni_id, info in enis.items():
        addresses = {c.split("/")[0] for c in info.get("AvailableIPv4Cidrs", {})}
        held |= addresses
        if eni_id not in ec2:
            bad.append(f"ipamd holds ENI {eni_id}, not attached to the instance in EC2")
            continue
        bad += [f"ipamd holds {a} on {eni_id}; EC2 does not" for a in addresses - ec2[eni_id]]
    bad += [f"{a} is assigned but on none of ipamd's ENIs" for a in assigned - held - {None}]
    return bad


def _leftover_temp_files(ipamd: IpamdProcess) -> int:
    name = os.path.basename(ipamd.checkpoint) + ".tmp"
    return sum(1 for p in Path(ipamd.checkpoint).parent.iterdir() if p.name.startswith(name))


def run_kill9_chaos(
    sim: SimHandle,
    workdir: Path,
    *,
    kills: int,
    attachments: int = 200,
    seed: int = 1,
    max_held: int = 20,
    start_kill_rate: float = 0.2,
    node: str = "node0",
    env: Mapping[str, str] | None = None,
    progress: Callable[[str], None] | None = None,
) -> ChaosReport:
    """The kill -9 chaos: a :class:`ChaosClient` adds and deletes ``attachments``; the
    daemon gets SIGKILL ``kills`` times at random points (a random number of acknowledged
    operations into each round, then a random few ms into the next operation; with
    ``start_kill_rate`` a kill also hits the next start-up before it serves) and is
    restarted; the invariant is checked after every restart that reaches SERVING and once
    more at the end, when every attachment was released."""
    rng = random.Random(seed)
    report = ChaosReport(attachments=attachments)
    ipamd = IpamdProcess(sim, node, workdir, {**CHAOS_ENV, **(env or {})})
    client = ChaosClient(ipamd.socket, attachments, seed, max_held)
    # Operations per round, on average, so the workload spans every kill.
    per_round = max(2, 4 * attachments // max(kills, 1))

    def restart() -> None:
        started = time.monotonic()
        ipamd.start(wait=True)
        report.restart_seconds.append(time.monotonic() - started)
        report.violations.extend(check_invariants(ipamd, client, report))

    try:
        ipamd.start(wait=True)
        client.start()
        while report.kills < kills:
            client.wait_ops(client.ops_done + rng.randint(1, per_round))
            time.sleep(rng.uniform(0, 0.01))
            client.pause()
            ipamd.kill()
            report.kills += 1
            client.wait_idle()
            if report.kills < kills and rng.random() < start_kill_rate:
                ipamd.start(wait=False)
                time.sleep(rng.uniform(0, 1.5))
                ipamd.kill()
                report.kills += 1
                report.kills_during_start += 1
            restart()
            if progress is not None:
                progress(
                    f"kill {report.kills}/{kills}: {client.ops_done} ops, "
                    f"{len(report.violations)} violation(s)"
                )
            client.resume()
        client.join(timeout=300)
        if client.is_alive():
            raise AssertionError("the chaos client did not finish")
        if client.error is not None:
            raise client.error
        # At the end: every attachment released, nothing may be assigned.
        report.violations.extend(check_invariants(ipamd, client, report))
        left = _checkpoint_allocations(ipamd.checkpoint)
        if left:
            report.violations.append(f"all released, yet the checkpoint holds {left}")
        report.violations.extend(client.violations)
        report.unexpected_errors = list(client.unexpected)
        report.operations = client.ops_done
        report.retried_attempts = client.retried
        report.leftover_temp_files = _leftover_temp_files(ipamd)
        report.available_enis = len(available_enis(ipamd))
    finally:
        client.resume()
        ipamd.stop()
    return report


def available_enis(ipamd: IpamdProcess) -> list[str]:
    """ENIs tagged for this node's instance that are not attached (``available``)."""
    with ipamd.sim.emulator.lock:
        out = []
        for eni in list(ipamd.sim.emulator.backend.enis.values()):
            tags = {t["key"]: t["value"] for t in eni.get_tags()}
            if tags.get("node.k8s.amazonaws.com/instance_id") == ipamd.instance_id() and (
                eni.instance is None
            ):
                out.append(str(eni.id))
        return out


def percentile(samples: list[float], p: float) -> float:
    """The ``p``-th percentile (nearest rank) of ``samples``; 0 for none."""
    if not samples:
        return 0.0
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(p / 100 * len(ordered)) - 1))]
