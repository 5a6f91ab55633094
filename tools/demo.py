"""``make demo``: pods with VPC addresses on a local VPC simulator, through a real CNI client.

The simulator (EC2 emulator, instance metadata, a VPC made of network namespaces) runs in
this process with two m5.large nodes; ``vpccni-ipamd`` runs inside each node namespace; pods
are created by libcni (``cnictl``, built by tools/build-cnictl.sh) executing ``aws-cni``
with the routed_eni driver inside the node, more pods on node0 than one ENI holds so ipamd
attaches an ENI on demand.  Then a report (nodes, ENIs, pods, a ping matrix, ADD timings),
and everything is torn down; the root namespace is only ever read, to show it did not change.

``tools/demo.py --fake`` runs the first demo instead (fake ipam, test_veth, no simulator).

Exit status 0 when everything worked, 1 on a failure, 130 on Ctrl-C; always cleans up.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import logging
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from types import FrameType

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.support.cnictl import GO_PLUGIN_DIR  # noqa: E402
from tests.support.cnictl import NETNS_DIR  # noqa: E402
from tests.support.cnictl import CniCall  # noqa: E402
from tests.support.cnictl import CniCallError  # noqa: E402
from tests.support.cnictl import Cnictl  # noqa: E402
from tests.support.cnictl import CnictlUnavailable  # noqa: E402
from tests.support.cnictl import Netns  # noqa: E402
from tests.support.cnictl import aws_cni_binary  # noqa: E402
from tests.support.cnictl import aws_cni_conflist  # noqa: E402
from tests.support.cnictl import delete_netns  # noqa: E402
from tests.support.cnictl import ensure_cnictl  # noqa: E402
from tests.support.cnictl import fake_ipam_assigned  # noqa: E402
from tests.support.cnictl import nat_rules  # noqa: E402
from tests.support.cnictl import ping  # noqa: E402
from tests.support.cnictl import write_conflist  # noqa: E402
from tests.support.ipamd import IPAMD  # noqa: E402
from tests.support.simnode import CniFailure  # noqa: E402
from tests.support.simnode import Pod  # noqa: E402
from tests.support.simnode import SimNode  # noqa: E402
from tests.support.simnode import install_launcher  # noqa: E402
from tests.support.simnode import namespaces_with  # noqa: E402
from tests.support.simnode import ping_ok  # noqa: E402
from tests.support.simnode import root_snapshot  # noqa: E402

#: node -> pods; 12 > 9, the secondary addresses one m5.large ENI holds
PODS = {"node0": 12, "node1": 4}
IPAMD_ENV = {"WARM_IP_TARGET": "3", "IP_COOLDOWN_PERIOD": "2"}


class DemoError(Exception):
    """An expected failure: reported in one line, no traceback."""


def _sigterm(_signum: int, _frame: FrameType | None) -> None:
    # Treat `kill` like Ctrl-C so the finally blocks tear everything down.
    raise KeyboardInterrupt


def say(line: str = "") -> None:
    print(line, flush=True)


def _preflight() -> None:
    if os.geteuid() != 0:
        raise DemoError("run as root: the demo creates network namespaces (try: sudo make demo)")
    for tool in ("ip", "nft", "ping"):
        if shutil.which(tool) is None:
            raise DemoError(f"{tool} is missing: run `make demo` (it installs the Debian packages)")
    for path in (aws_cni_binary(), Path(IPAMD)):
        if not path.exists():
            raise DemoError(f"{path} is missing: run `make demo` (it installs vpccni)")


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * (len(ordered) - 1) + 0.5))]


class SimDemo:
    def __init__(self, workdir: Path, stack: contextlib.ExitStack) -> None:
        self.workdir = workdir
        self.stack = stack
        self.prefixes: list[str] = []
        self.nodes: list[SimNode] = []

    def run(self) -> None:
        # Imported after the preflight: it pulls in moto and boto3.
        from vpccni.sim.fixtures import running_simulator

        root_before = root_snapshot()
        cnictl = ensure_cnictl()
        t0 = time.perf_counter()
        sim = self.stack.enter_context(running_simulator(nodes=len(PODS), instance_type="m5.large"))
        self.prefixes.append(sim.prefix + "-")
        env = ", ".join(f"{k}={v}" for k, v in IPAMD_ENV.items())
        say(
            f"vpccni demo: VPC simulator {sim.prefix} ({sim.topology.vpc_cidrs[0]}) up in "
            f"{time.perf_counter() - t0:.1f} s; ipamd per node ({env})"
        )
        for name in PODS:
            # As on a node: `vpccni install-cni` writes the aws-cni launcher into the CNI
            # bin dir, and a `vpccni plugin-server` in the node takes its ADD/DEL.
            socket_path = self.workdir / name / "run" / "plugin.sock"
            launcher = install_launcher(self.workdir / name / "bin", socket_path)
            node = SimNode(
                sim,
                name,
                self.workdir,
                IPAMD_ENV,
                cni_path=[str(launcher.parent), str(GO_PLUGIN_DIR)],
                cnictl=cnictl,
                pod_prefix=f"vd{uuid.uuid4().hex[:6]}",
            )
            self.prefixes.append(node.pod_prefix + "-")
            # Registered before start: a half-started node is still closed.
            self.stack.callback(node.close)
            self.nodes.append(node)
            node.start()
            node.start_plugin_server(socket_path, self.workdir / name / "plugin-server.log")
        t0 = time.perf_counter()
        for letter, node in zip("ab", self.nodes, strict=False):
            for i in range(PODS[node.name]):
                node.add_pod(f"{letter}{i}")
        pods = [p for n in self.nodes for p in n.pods.values()]
        say(
            f"{len(pods)} pods ADDed through libcni -> aws-cni (routed_eni) in "
            f"{time.perf_counter() - t0:.1f} s, retried while ipamd attached ENIs: "
            f"{sum(p.add_attempts - 1 for p in pods)} retries"
        )
        say()
        owners: dict[str, tuple[str, int, str]] = {}
        for node in self.nodes:
            n = sim.node(node.name)
            with sim.emulator.lock:
                enis = sim.emulator.describe_eni_state(n.instance_id)
            say(f"{node.name}: {n.instance_id} {n.instance_type}, ENIs: {len(enis)}")
            for eni in enis:
                used = sum(p.address in eni.private_ips for p in node.pods.values())
                say(
                    f"  eth{eni.device_index} {eni.eni_id} {eni.status:9} primary "
                    f"{eni.private_ips[0]:12} + {len(eni.private_ips) - 1} secondary "
                    f"({used} used by pods)"
                )
                for ip in eni.private_ips:
                    owners[ip] = (node.name, eni.device_index, eni.eni_id)
        say()
        say("pod  address       node  ENI  rule 1536      ADD ms")
        for node in self.nodes:
            for pod in node.pods.values():
                where = owners.get(pod.address)
                if where is None:
                    raise DemoError(f"EC2 does not list {pod.address} ({pod.name}) on any ENI")
                table = node.from_pod_table(pod.address)
                rule = f"lookup {table}" if table else "- (main)"
                say(
                    f"{pod.name:4} {pod.address:13} {where[0]:5} eth{where[1]} "
                    f"{rule:14} {pod.add_ms:6.0f}"
                )
        say()
        failures = self.matrix(pods)
        adds = [p.add_ms for p in pods]
        say(
            f"ADD (libcni call, launcher + plugin server): p50 {statistics.median(adds):.0f} ms, "
            f"max {max(adds):.0f} ms"
        )
        dels = []
        for node in self.nodes:
            for pod in list(node.pods.values()):
                dels.append(_ms(node.delete_pod(pod)))
        say(
            f"DEL: p50 {statistics.median(dels):.0f} ms, max {max(dels):.0f} ms; "
            f"ipamd holds {sum(n.ipamd.pool()[2] for n in self.nodes)} assigned addresses"
        )
        self.stack.close()  # ipamd stopped, simulator down
        left = namespaces_with(self.prefixes)
        same = root_snapshot() == root_before
        say(
            f"teardown: ipamd stopped, simulator down, namespaces "
            f"{'all deleted' if not left else 'LEFT: ' + ' '.join(left)}; root namespace "
            f"{'unchanged (links, addresses, routes, rules)' if same else 'CHANGED'}"
        )
        if failures or left or not same:
            raise DemoError("some checks above failed")

    def matrix(self, pods: list[Pod]) -> int:
        """Ping every pod from every pod; print a matrix; return the number of failures."""
        # Indices, not pods, as keys: Pod is a mutable dataclass (unhashable).
        pairs = [(i, j) for i in range(len(pods)) for j in range(len(pods)) if i != j]

        def probe(pair: tuple[int, int]) -> bool:
            return ping_ok(pods[pair[0]].netns, pods[pair[1]].address)

        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            ok = dict(zip(pairs, pool.map(probe, pairs), strict=True))
        say("ping " + " ".join(f"{p.name:>3}" for p in pods) + "  (a: node0, b: node1)")
        for i, src in enumerate(pods):
            marks = [
                "  ." if i == j else (" ok" if ok.get((i, j)) else "  X") for j in range(len(pods))
            ]
            say(f"{src.name:>3}  " + " ".join(marks))
        bad = sum(not v for v in ok.values())
        cross = sum(v for (i, j), v in ok.items() if pods[i].node != pods[j].node)
        say(
            f"{len(pairs) - bad}/{len(pairs)} pairs reachable ({cross} across nodes, through the "
            "VPC namespace, no overlay)"
        )
        return bad


def _ms(call: CniCall) -> float:
    return call.elapsed_ms if call.elapsed_ms is not None else call.wall_ms


def main() -> int:
    if "--fake" in sys.argv[1:]:
        return fake_main()
    # The simulator logs its own progress; the report is what this demo prints.
    logging.basicConfig(level=logging.ERROR)
    return _guarded(_preflight, lambda workdir, stack: SimDemo(workdir, stack).run())


def _guarded(
    preflight: Callable[[], None], body: Callable[[Path, contextlib.ExitStack], None]
) -> int:
    """Run one demo: everything it sets up is torn down on success, failure, Ctrl-C or
    SIGTERM, expected failures print one line (no traceback), the exit status says which."""
    signal.signal(signal.SIGTERM, _sigterm)
    # Also when started with SIGINT ignored (a background job): Ctrl-C must clean up.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    started = time.perf_counter()
    try:
        preflight()
    except DemoError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 1
    workdir = Path(tempfile.mkdtemp(prefix="vpccni-demo-"))
    stack = contextlib.ExitStack()
    status = 0
    try:
        body(workdir, stack)
    except KeyboardInterrupt:
        print("\ndemo: interrupted, cleaning up", file=sys.stderr)
        status = 130
    except (DemoError, CniFailure, CniCallError, CnictlUnavailable, AssertionError) as exc:
        print(f"demo: FAILED: {exc}", file=sys.stderr)
        status = 1
    except (OSError, subprocess.SubprocessError) as exc:
        print(f"demo: FAILED: {exc}", file=sys.stderr)
        status = 1
    finally:
        # A second Ctrl-C during cleanup must not leave namespaces behind.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stack.close()
        shutil.rmtree(workdir, ignore_errors=True)
    if status == 0:
        print(f"demo: OK in {time.perf_counter() - started:.1f} s")
    return status


# ------------------------------------------------------------------------------------------ --fake

FAKE_POOL = "10.123.0.0/28"
FAKE_NODE_ADDR = "10.123.1.1"
FAKE_NETWORK = "demo-net"
FAKE_PODS = ("web-0", "web-1", "db-0")
FAKE_HOST_PORT = 18080


def _fake_preflight() -> None:
    if os.geteuid() != 0:
        raise DemoError("run as root: the demo creates network namespaces (try: sudo make demo)")
    for tool in ("ip", "iptables", "ping"):
        if shutil.which(tool) is None:
            raise DemoError(f"{tool} is missing: run `make demo` (it installs the Debian packages)")
    for plugin in ("portmap", "tuning"):
        if not (GO_PLUGIN_DIR / plugin).exists():
            raise DemoError(f"{GO_PLUGIN_DIR / plugin} is missing (containernetworking-plugins)")
    if not aws_cni_binary().exists():
        raise DemoError(f"{aws_cni_binary()} is missing: run `make demo` (it installs vpccni)")


def _fake_root_snapshot() -> tuple[str, str, str]:
    """The root namespace's links, routes and rules (read only)."""

    def ip(*args: str) -> str:
        out = subprocess.run(["ip", "-j", *args], capture_output=True, text=True).stdout
        return json.dumps(sorted(json.dumps(x, sort_keys=True) for x in json.loads(out or "[]")))

    return ip("link"), ip("route", "show", "table", "all"), ip("rule")


class FakeDemo:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.tag = uuid.uuid4().hex[:6]
        self.namespaces: list[Netns] = []
        self.added: list[tuple[Netns, str]] = []
        self.lines: list[str] = []

    def say(self, line: str = "") -> None:
        print(line, flush=True)

    def netns(self, role: str) -> Netns:
        ns = Netns(f"demo-{self.tag}-{role}")
        # Recorded before creation so a half-made namespace is still deleted.
        self.namespaces.append(ns)
        proc = subprocess.run(["ip", "netns", "add", ns.name], capture_output=True, text=True)
        if proc.returncode != 0:
            raise DemoError(f"cannot create namespace {ns.name}: {proc.stderr.strip()}")
        ns.ip("link", "set", "lo", "up")
        return ns

    def call(self, what: str, call: CniCall) -> CniCall:
        if not call.ok:
            err = call.cni_error
            why = f"code {err['code']}: {err['msg']} {err.get('details') or ''}" if err else ""
            raise DemoError(f"{what} failed: {(why or call.stderr).strip()}")
        return call

    def run(self) -> None:
        root_before = _fake_root_snapshot()
        node = self.netns("node")
        # The node's own address (pods reach it via 169.254.1.1) and forwarding between
        # pods, both inside the node namespace only.
        node.ip("addr", "add", f"{FAKE_NODE_ADDR}/32", "dev", "lo")
        node.exec("sysctl", "-qw", "net.ipv4.ip_forward=1")
        pods = [self.netns(f"p{i}") for i in range(len(FAKE_PODS))]
        cache = self.workdir / "cnicache"
        conflist = aws_cni_conflist(
            FAKE_NETWORK,
            self.workdir,
            [FAKE_POOL],
            cache_dir=cache,
            tuning={"sysctl": {"net.ipv4.conf.eth0.rp_filter": "2"}},
        )
        conf = write_conflist(self.workdir / "10-demo.conflist", conflist)
        ctl = Cnictl(
            binary=ensure_cnictl(),
            cni_path=[str(aws_cni_binary().parent), str(GO_PLUGIN_DIR)],
            cache_dir=cache,
            default_netns=node.name,
        )
        chain = " -> ".join(p["type"] for p in conflist["plugins"])
        self.say(f"vpccni demo: libcni (cnictl) drives {chain}, cniVersion 1.0.0")
        self.say(f"namespaces: {node.name} (node) + {len(pods)} pods")
        self.say(f"files: {self.workdir} (removed at the end)")

        rows = []
        for i, (name, pod) in enumerate(zip(FAKE_PODS, pods, strict=True)):
            cid = f"demo-{self.tag}-{name}"
            port = {"hostPort": FAKE_HOST_PORT + i, "containerPort": 80, "protocol": "tcp"}
            mappings = {"portMappings": [port]}
            # Recorded first: a failed ADD is still DEL'd on the way out (libcni does not).
            self.added.append((pod, cid))
            add = self.call(
                f"ADD {name}",
                ctl.add(
                    conf,
                    pod.path,
                    cid,
                    args={"K8S_POD_NAME": name, "K8S_POD_NAMESPACE": "default"},
                    capability_args=mappings,
                ),
            )
            result = add.result
            check = self.call(f"CHECK {name}", ctl.check(conf, pod.path, cid, capability_args={}))
            got = self.call(f"GET {name}", ctl.get(conf, pod.path, cid)).result
            rows.append((name, pod, cid, add, check, got == result))

        self.say()
        self.say(f"{'pod':7} {'address':14} {'host veth':15} {'ADD ms':>7} {'CHECK ms':>8}  GET")
        for name, _pod, _cid, add, check, same in rows:
            host_if = add.result["interfaces"][0]["name"]
            self.say(
                f"{name:7} {add.addresses()[0]:14} {host_if:15} {_fms(add):>7} {_fms(check):>8}"
                f"  {'= ADD result' if same else 'DIFFERS from ADD'}"
            )
        self.say("(ms: one libcni call running the whole chain, plugin start-up included)")
        self.say()
        self.say(f"routes in {node.name}:")
        for route in node.ip("-4", "route").stdout.splitlines():
            self.say(f"  {route.strip()}")
        self.say("portmap DNAT rules in the node:")
        dnat = [r.split(" -p ", 1)[-1] for r in nat_rules(node).splitlines() if "-j DNAT" in r]
        for rule in sorted(dnat):
            self.say("  " + rule)
        rp = {p.exec("cat", "/proc/sys/net/ipv4/conf/eth0/rp_filter").stdout.strip() for p in pods}
        self.say(f"tuning: net.ipv4.conf.eth0.rp_filter in the pods = {', '.join(sorted(rp))}")

        self.say()
        targets = [(name, add.addresses()[0].split("/")[0]) for name, *_x, add, _c, _s in rows]
        self.say("ping    " + " ".join(f"{name:>7}" for name, _ in targets))
        sources = [("node", node), *((n, p) for n, p, *_ in rows)]
        failures = 0
        for src_name, src in sources:
            marks = []
            for dst_name, address in targets:
                if dst_name == src_name:
                    marks.append("-")
                    continue
                ok = ping(src, address, wait_s=1)
                failures += not ok
                marks.append("ok" if ok else "FAIL")
            self.say(f"{src_name:7} " + " ".join(f"{m:>7}" for m in marks))

        self.say()
        dels = []
        for name, pod, cid, *_ in rows:
            dele = self.call(f"DEL {name}", ctl.delete(conf, pod.path, cid))
            self.added.remove((pod, cid))
            dels.append(f"{name} {_fms(dele)}")
        self.say("DEL ms: " + ", ".join(dels))
        left = fake_ipam_assigned(self.workdir / "ipam.json")
        links = [link["ifname"] for link in node.ip_json("link")]
        dnat_left = "CNI-DN-" in nat_rules(node)
        self.say(
            f"after DEL: addresses held {len(left)}, node links {links}, "
            f"DNAT rules {'LEFT' if dnat_left else 'gone'}"
        )
        self.teardown()
        gone = all(not (NETNS_DIR / ns.name).exists() for ns in self.namespaces)
        same = _fake_root_snapshot() == root_before
        self.say(
            f"teardown: namespaces {'deleted' if gone else 'LEFT BEHIND'}; root namespace "
            f"{'untouched (links, routes, rules)' if same else 'CHANGED'}"
        )
        if failures or left or dnat_left or links != ["lo"] or not gone or not same:
            raise DemoError("some checks above failed")

    def teardown(self) -> None:
        """DEL whatever is still attached (so portmap drops its rules), then the namespaces."""
        conf = self.workdir / "10-demo.conflist"
        for _pod, cid in list(self.added):
            if not self.namespaces or not conf.exists():
                break
            try:
                ctl = Cnictl(
                    binary=ensure_cnictl(),
                    cni_path=[str(aws_cni_binary().parent), str(GO_PLUGIN_DIR)],
                    cache_dir=self.workdir / "cnicache",
                    default_netns=self.namespaces[0].name,
                )
                ctl.delete(conf, None, cid)
            except (OSError, CnictlUnavailable, subprocess.SubprocessError):
                pass  # the namespaces go next, and everything in them with them
        self.added.clear()
        for ns in reversed(self.namespaces):
            delete_netns(ns)


def _fms(call: CniCall) -> str:
    value = call.elapsed_ms if call.elapsed_ms is not None else call.wall_ms
    return f"{value:.0f}"


def fake_main() -> int:
    """The first demo: fake ipam and the test_veth driver, no simulator."""

    def body(workdir: Path, stack: contextlib.ExitStack) -> None:
        demo = FakeDemo(workdir)
        stack.callback(demo.teardown)
        demo.run()

    return _guarded(_fake_preflight, body)


if __name__ == "__main__":
    sys.exit(main())
