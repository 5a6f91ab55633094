"""``make demo``: aws-cni driven by a real CNI client, in throwaway namespaces.

A node namespace and three pod namespaces; a conflist chaining aws-cni (fake ipam, the
test_veth driver) with Debian's reference portmap and tuning; ADD, CHECK, GET and DEL of
three pods through libcni (``cnictl``, built by tools/build-cnictl.sh).  Every plugin
runs inside the node namespace and every file lives in a temporary directory, so the
machine's own network is only ever read (to show it did not change).

Exit status 0 when everything worked, 1 on a failure, 130 on Ctrl-C; always cleans up.
(The routed_eni issue turns this into the VPC simulator demo.)
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
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

POOL = "10.123.0.0/28"
NODE_ADDR = "10.123.1.1"
NETWORK = "demo-net"
PODS = ("web-0", "web-1", "db-0")
HOST_PORT = 18080


class DemoError(Exception):
    """An expected failure: reported in one line, no traceback."""


def _sigterm(_signum: int, _frame: FrameType | None) -> None:
    # Treat `kill` like Ctrl-C so the finally blocks tear the namespaces down.
    raise KeyboardInterrupt


def _preflight() -> None:
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


def _root_snapshot() -> tuple[str, str, str]:
    """The root namespace's links, routes and rules (read only)."""

    def ip(*args: str) -> str:
        out = subprocess.run(["ip", "-j", *args], capture_output=True, text=True).stdout
        return json.dumps(sorted(json.dumps(x, sort_keys=True) for x in json.loads(out or "[]")))

    return ip("link"), ip("route", "show", "table", "all"), ip("rule")


class Demo:
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
        root_before = _root_snapshot()
        node = self.netns("node")
        # The node's own address (pods reach it via 169.254.1.1) and forwarding between
        # pods, both inside the node namespace only.
        node.ip("addr", "add", f"{NODE_ADDR}/32", "dev", "lo")
        node.exec("sysctl", "-qw", "net.ipv4.ip_forward=1")
        pods = [self.netns(f"p{i}") for i in range(len(PODS))]
        cache = self.workdir / "cnicache"
        conflist = aws_cni_conflist(
            NETWORK,
            self.workdir,
            [POOL],
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
        for i, (name, pod) in enumerate(zip(PODS, pods, strict=True)):
            cid = f"demo-{self.tag}-{name}"
            port = {"hostPort": HOST_PORT + i, "containerPort": 80, "protocol": "tcp"}
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
                f"{name:7} {add.addresses()[0]:14} {host_if:15} {_ms(add):>7} {_ms(check):>8}"
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
            dels.append(f"{name} {_ms(dele)}")
        self.say("DEL ms: " + ", ".join(dels))
        left = fake_ipam_assigned(self.workdir / "ipam.json")
        links = [link["ifname"] for link in node.ip_json("link")]
        dnat = "CNI-DN-" in nat_rules(node)
        self.say(
            f"after DEL: addresses held {len(left)}, node links {links}, "
            f"DNAT rules {'LEFT' if dnat else 'gone'}"
        )
        self.teardown()
        gone = all(not (NETNS_DIR / ns.name).exists() for ns in self.namespaces)
        same = _root_snapshot() == root_before
        self.say(
            f"teardown: namespaces {'deleted' if gone else 'LEFT BEHIND'}; root namespace "
            f"{'untouched (links, routes, rules)' if same else 'CHANGED'}"
        )
        if failures or left or dnat or links != ["lo"] or not gone or not same:
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


def _ms(call: CniCall) -> str:
    value = call.elapsed_ms if call.elapsed_ms is not None else call.wall_ms
    return f"{value:.0f}"


def main() -> int:
    signal.signal(signal.SIGTERM, _sigterm)
    # Also when started with SIGINT ignored (a background job): Ctrl-C must clean up.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    started = time.perf_counter()
    try:
        _preflight()
    except DemoError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 1
    workdir = Path(tempfile.mkdtemp(prefix="vpccni-demo-"))
    demo = Demo(workdir)
    status = 0
    try:
        demo.run()
    except KeyboardInterrupt:
        print("\ndemo: interrupted, cleaning up", file=sys.stderr)
        status = 130
    except (DemoError, CniCallError, CnictlUnavailable) as exc:
        print(f"demo: FAILED: {exc}", file=sys.stderr)
        status = 1
    except (OSError, subprocess.SubprocessError) as exc:
        print(f"demo: FAILED: {exc}", file=sys.stderr)
        status = 1
    finally:
        # A second Ctrl-C during cleanup must not leave namespaces behind.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        demo.teardown()
        shutil.rmtree(workdir, ignore_errors=True)
    if status == 0:
        print(f"demo: OK in {time.perf_counter() - started:.1f} s")
    return status


if __name__ == "__main__":
    sys.exit(main())
