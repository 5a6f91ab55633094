"""Per-pod ADD and DEL of the exec'd plugin (routed_eni, real ipamd, warm pool) vs Go ptp,
with the launcher running the command itself ("direct") and through ``vpccni plugin-server``.

One simulated node (m5.4xlarge: room for the whole run in the warm pool) with
``vpccni-ipamd`` inside it and WARM_IP_TARGET above the pod count, so no ADD waits for EC2.
The plugin is what a node would run: the launcher ``vpccni install-cni --bin-dir DIR``
writes, found by libcni on CNI_PATH, run two ways in the same run: "direct" (the launcher
imports the runtime and runs the command) and "via plugin-server" (a ``vpccni plugin-server``
in the node namespace forks a pre-imported child per command; docs/plugin-server.md); the
variant is chosen per call by ``VPCCNI_PLUGIN_SERVER_SOCKET``.  Debian's Go ``ptp`` +
``host-local`` run through the same libcni program (``cnictl``) in the same run, all three
interleaved pod by pod, each in its own test-made node namespace.  Printed (ms): p50/p95
of ADD and DEL (the libcni call, as cnictl measures it: plugin exec included), the ratios
to Go, and where the plugin's time goes: interpreter start, the import closure of one ADD
(``python -X importtime``), the command inside the process (the core's ``timing``
plugin), the ipamd RPC round trip, and what is left for netlink and the driver; for the
server, the fixed cost of the hand-over (a request that fails at once, code 4) and the
command in the forked child.

    python bench/pod_add_del.py [-n 60] [--ipamd PATH] [--vpccni PATH] [--profile DIR]

``--profile DIR`` makes every server child write a cProfile of its command to
``DIR/<add|del>.<pid>`` (``VPCCNI_PROFILE``, docs/plugin-server.md); the server figures
are then inflated by the profiler, so use it to find where the time goes, not to compare.

Needs root; touches only the namespaces it creates (simulator prefix, ``bpd``) and a temp dir.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

_REPO = Path(__file__).resolve().parents[1]
if str(_REPO) not in sys.path:
    sys.path.insert(0, str(_REPO))

from bench.anchor_ptp import percentile  # noqa: E402
from tests.support import ipamd as ipamd_support  # noqa: E402
from tests.support.cnictl import GO_PLUGIN_DIR  # noqa: E402
from tests.support.cnictl import Cnictl  # noqa: E402
from tests.support.cnictl import create_netns  # noqa: E402
from tests.support.cnictl import delete_netns  # noqa: E402
from tests.support.cnictl import ensure_cnictl  # noqa: E402
from tests.support.cnictl import ptp_conflist  # noqa: E402
from tests.support.cnictl import write_conflist  # noqa: E402
from tests.support.ipamd import request  # noqa: E402
from tests.support.ipamd import wait_for  # noqa: E402
from tests.support.simnode import Pod  # noqa: E402
from tests.support.simnode import SimNode  # noqa: E402
from tests.support.simnode import call_ms  # noqa: E402
from tests.support.simnode import install_launcher  # noqa: E402
from vpccni.cli.install_cmd import path_setup_source  # noqa: E402

VENV_BIN = Path(sys.executable).parent
#: The two ways the launcher runs a command; VPCCNI_PLUGIN_SERVER_SOCKET picks one per call.
VARIANTS = ("direct", "server")
SOCKET_ENV = "VPCCNI_PLUGIN_SERVER_SOCKET"
PROFILE_ENV = "VPCCNI_PROFILE"
TARGET_ADD, TARGET_DEL = 3.0, 2.0
_IMPORT_RE = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \|(\s*)(\S+)$")


def stats(values: Sequence[float]) -> tuple[float, float]:
    return percentile(values, 50), percentile(values, 95)


def exec_ms(argv: list[str], runs: int = 15, check: bool = True, **kw: Any) -> float:
    """p50 wall time of a fresh process (which must succeed unless ``check`` is False)."""
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(argv, capture_output=True, check=check, **kw)
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def import_closure(stderr: str) -> tuple[float, list[tuple[str, float]], list[str]]:
    """(total ms, heaviest top-level packages by cumulative ms, every module the program
    imported itself) from -X importtime."""
    tops: dict[str, float] = {}
    names: list[str] = []
    total = 0.0
    for line in stderr.splitlines():
        m = _IMPORT_RE.match(line)
        if not m:
            continue
        cumulative_us, indent, name = int(m.group(2)), len(m.group(3)), m.group(4)
        if indent == 1:  # imported by the program itself, not by another module
            names.append(name)
            total += cumulative_us / 1000
            top = name.split(".")[0] if not name.startswith("vpccni") else name
            tops[top] = tops.get(top, 0.0) + cumulative_us / 1000
    return total, sorted(tops.items(), key=lambda kv: -kv[1])[:6], names


def run(n: int, ipamd_bin: Path | None, vpccni: Path, profile: Path | None = None) -> int:
    from vpccni.sim.fixtures import running_simulator  # heavy (moto): after arg parsing

    if ipamd_bin is not None:
        ipamd_support.IPAMD = str(ipamd_bin)  # the module reads it at start()
    cnictl = ensure_cnictl()
    keys = ("direct_add", "direct_del", "server_add", "server_del", "go_add", "go_del")
    samples: dict[str, list[float]] = {k: [] for k in keys}
    with (
        tempfile.TemporaryDirectory(prefix="bpd-") as tmp,
        running_simulator(nodes=1, instance_type="m5.4xlarge") as sim,
        contextlib.ExitStack() as stack,
    ):
        work = Path(tmp)
        server_socket = work / "run" / "plugin.sock"
        plugin = install_launcher(work / "bin", server_socket, vpccni)
        # Both variants, the breakdown pods and the RTT probes: none waits for an address
        # (released ones cool down).  m5.4xlarge holds 232.
        warm = min(2 * n + 70, 230)
        node = SimNode(
            sim,
            "node0",
            work,
            {"WARM_IP_TARGET": str(warm), "AWS_VPC_K8S_CNI_LOGLEVEL": "info"},
            cni_path=[str(plugin.parent), str(GO_PLUGIN_DIR)],
            cnictl=cnictl,
            pod_prefix="bpd" + os.urandom(2).hex(),
        )
        stack.callback(node.close)
        node.start()
        node.start_plugin_server(server_socket, work / "plugin-server.log")
        # The core's timing plugin: the command's own time, without interpreter start-up.
        timing = {v: work / f"timing-{v}.jsonl" for v in VARIANTS}
        conf = json.loads(node.conflist.read_text())
        conf["plugins"][0]["plugins"] = ["timing"]
        node.conflist.write_text(json.dumps(conf))

        def use(variant: str, command: str | None = None) -> None:
            socket_env = str(server_socket) if variant == "server" else ""
            node.ctl.env = {"VPCCNI_TIMING_FILE": str(timing[variant]), SOCKET_ENV: socket_env}
            if profile is not None and command is not None and variant == "server":
                node.ctl.env[PROFILE_ENV] = str(profile / command)

        wait_for("the warm pool", lambda: node.ipamd.pool()[1] >= warm, timeout=120)

        go_node = create_netns("bpd-go")
        stack.callback(delete_netns, go_node)
        go_conf = write_conflist(
            work / "ptp.conflist", ptp_conflist("bpdptp", "10.198.0.0/16", work / "hl")
        )
        go = Cnictl(cnictl, cache_dir=work / "go-cache", default_netns=go_node.name)
        go_pods = []

        def go_pod(name: str) -> Any:
            ns = create_netns("bpd-gp")
            go_pods.append(ns)
            stack.callback(delete_netns, ns)
            return ns

        # Warm-up (page cache, first exec, ipamd's first connection), not counted.
        for tag in ("w0", "w1"):
            for variant in VARIANTS:
                use(variant)
                pod = node.add_pod(f"{tag}{variant[0]}")
                node.delete_pod(pod)
            ns = go_pod(tag)
            go.add(go_conf, ns.path, f"go-{tag}").check()
            go.delete(go_conf, ns.path, f"go-{tag}").check()
        for path in timing.values():
            path.unlink(missing_ok=True)

        pods: dict[str, list[Pod]] = {v: [] for v in VARIANTS}
        for i in range(n):
            for variant in VARIANTS:
                use(variant, "add")
                pod = node.new_pod(f"{variant[0]}{i}")
                add = node.add(pod)
                if not add.ok:
                    raise SystemExit(f"ADD {pod.name} failed: {add.stdout} {add.stderr[-300:]}")
                pods[variant].append(pod)
                samples[f"{variant}_add"].append(call_ms(add))
            ns = go_pod(f"g{i}")
            samples["go_add"].append(call_ms(go.add(go_conf, ns.path, f"go-{i}").check()))
        for i in range(n):
            for variant in VARIANTS:
                use(variant, "del")
                samples[f"{variant}_del"].append(call_ms(node.delete_pod(pods[variant][i])))
            samples["go_del"].append(call_ms(go.delete(go_conf, go_pods[2 + i].path, f"go-{i}")))

        in_process: dict[str, dict[str, list[float]]] = {}
        for variant in VARIANTS:
            per = in_process[variant] = {"ADD": [], "DEL": []}
            for line in timing[variant].read_text().splitlines():
                rec = json.loads(line)
                per.setdefault(rec["command"], []).append(rec["ms"])

        # Where the time goes.
        python = Path(plugin.read_text().splitlines()[0][2:].split()[0])
        version = exec_ms(
            [str(plugin)],
            input=b'{"cniVersion": "1.0.0"}',
            env={"CNI_COMMAND": "VERSION", "PATH": os.environ["PATH"]},
        )
        pod = node.new_pod("imp")
        single = json.loads(node.conflist.read_text())
        plugin_conf = {**single["plugins"][0], "name": single["name"], "cniVersion": "1.0.0"}
        plugin_conf.pop("plugins", None)

        def cni_env(command: str, pod: Pod, variant: str = "direct") -> dict[str, str]:
            return {
                SOCKET_ENV: str(server_socket) if variant == "server" else "",
                "PATH": os.environ["PATH"],
                "CNI_COMMAND": command,
                "CNI_CONTAINERID": pod.container_id,
                "CNI_IFNAME": "eth0",
                "CNI_NETNS": pod.netns.path,
                "CNI_ARGS": f"K8S_POD_NAME={pod.name};K8S_POD_NAMESPACE=default",
                "CNI_PATH": str(plugin.parent),
            }

        in_node = ["ip", "netns", "exec", node.namespace]
        stdin = json.dumps(plugin_conf)
        # The launcher's shebang has -I, which ignores PYTHONPROFILEIMPORTTIME: say -X.
        traced = subprocess.run(
            [*in_node, str(python), "-I", "-S", "-X", "importtime", str(plugin)],
            input=stdin,
            capture_output=True,
            text=True,
            env=cni_env("ADD", pod),
            check=False,
        )
        if traced.returncode != 0:
            raise SystemExit(f"traced ADD failed: {traced.stdout} {traced.stderr[-300:]}")
        subprocess.run(
            [*in_node, str(plugin)],
            input=stdin,
            env=cni_env("DEL", pod),
            capture_output=True,
            text=True,
            check=False,
        )
        imports_traced, heavy, names = import_closure(traced.stderr)
        # The same imports replayed without the tracing overhead: what they really cost.
        header = ["import sys", path_setup_source()]  # the launcher's sys.path set-up
        replay = "\n".join(
            [*header, "import importlib", f"for m in {names!r}:", "    importlib.import_module(m)"]
        )
        # Interleaved, one of each per round, so a load change on the machine hits all alike.
        parts: dict[str, list[float]] = {
            k: [] for k in ("bare", "imports", "netns", "direct", "served", "handover")
        }
        # A request the child rejects at once (code 4): the server path's fixed cost.
        handover_env = {
            "PATH": os.environ["PATH"],
            "CNI_COMMAND": "ADD",
            SOCKET_ENV: str(server_socket),
        }
        for i in range(15):
            parts["bare"].append(exec_ms([str(python), "-I", "-S", "-c", "pass"], runs=1))
            parts["imports"].append(exec_ms([str(python), "-I", "-S", "-c", replay], runs=1))
            parts["netns"].append(exec_ms([*in_node, "true"], runs=1))
            one = node.new_pod(f"d{i}")
            parts["direct"].append(
                exec_ms(
                    [*in_node, str(plugin)], runs=1, input=stdin.encode(), env=cni_env("ADD", one)
                )
            )
            node.delete_pod(one)
            two = node.new_pod(f"s{i}")
            parts["served"].append(
                exec_ms(
                    [*in_node, str(plugin)],
                    runs=1,
                    input=stdin.encode(),
                    env=cni_env("ADD", two, "server"),
                )
            )
            node.delete_pod(two)
            parts["handover"].append(
                exec_ms([*in_node, str(plugin)], runs=1, check=False, input=b"", env=handover_env)
            )
        bare, imports_ms, ip_netns_exec, direct_ms, served_ms, handover_ms = (
            statistics.median(parts[k])
            for k in ("bare", "imports", "netns", "direct", "served", "handover")
        )
        imports_ms -= bare
        rtts = []
        for i in range(30):
            t0 = time.perf_counter()
            node.ipamd.client.allocate(request(f"rtt{i}"))
            node.ipamd.client.release(request(f"rtt{i}").key)
            rtts.append((time.perf_counter() - t0) * 1000 / 2)

    go_add, go_del = stats(samples["go_add"]), stats(samples["go_del"])
    print(
        f"pod ADD/DEL through libcni, n={n} per variant, warm pool, real namespaces (ms, p50 / p95)"
    )
    rows = {"direct": "aws-cni direct (exec'd)", "server": "aws-cni via plugin-server"}
    for variant, label in rows.items():
        add, dele = stats(samples[f"{variant}_add"]), stats(samples[f"{variant}_del"])
        print(
            f"  {label:28s} ADD {add[0]:7.1f} / {add[1]:7.1f}   DEL {dele[0]:7.1f} / {dele[1]:7.1f}"
            f"   ratio p50 ADD {add[0] / go_add[0]:.1f}x (<= {TARGET_ADD}x), "
            f"DEL {dele[0] / go_del[0]:.1f}x (<= {TARGET_DEL}x)"
        )
    print(
        f"  {'Go ptp + host-local':28s} ADD {go_add[0]:7.1f} / {go_add[1]:7.1f}"
        f"   DEL {go_del[0]:7.1f} / {go_del[1]:7.1f}"
    )
    med = {
        v: {c: statistics.median(in_process[v][c] or [0.0]) for c in ("ADD", "DEL")}
        for v in VARIANTS
    }
    rtt = statistics.median(rtts)
    direct_add = statistics.median(samples["direct_add"])
    server_add = statistics.median(samples["server_add"])
    work_ms = direct_ms - ip_netns_exec - bare - imports_ms - rtt
    print("where one direct ADD's time goes (p50, ms):")
    print(f"  libcni ADD (cnictl's measure)                          {direct_add:7.1f}")
    print(f"    outside the plugin: libcni, cnictl                   {direct_add - direct_ms:7.1f}")
    print(f"    the plugin exec'd directly in the node namespace     {direct_ms:7.1f}")
    print(f"      ip netns exec (direct run only)                   {ip_netns_exec:7.1f}")
    print(f"      interpreter start (-I -S)                          {bare:7.1f}")
    print(f"      imports ({len(names)} top-level, replayed untraced)       {imports_ms:7.1f}")
    print(f"      ipamd RPC round trip (warm channel)                {rtt:7.1f}")
    print(f"      the rest: netlink, state, logging, page faults     {work_ms:7.1f}")
    print(
        f"    VERSION, whole process: {version:.1f}; in-process command (timing plugin): "
        f"ADD {med['direct']['ADD']:.1f}, DEL {med['direct']['DEL']:.1f}"
    )
    print(f"  heaviest imports (-X importtime, cumulative, traced total {imports_traced:.0f}):")
    print("    " + ", ".join(f"{name} {ms:.0f}" for name, ms in heavy))
    child_add = med["server"]["ADD"]
    print("where one ADD via plugin-server goes (p50, ms):")
    print(f"  libcni ADD (cnictl's measure)                          {server_add:7.1f}")
    print(f"    outside the plugin: libcni, cnictl                   {server_add - served_ms:7.1f}")
    print(f"    the launcher exec'd directly in the node namespace   {served_ms:7.1f}")
    print(f"      ip netns exec (direct run only)                   {ip_netns_exec:7.1f}")
    print(f"      interpreter start (-I -S)                          {bare:7.1f}")
    print(
        f"      hand-over: load client, connect, fork, reply       "
        f"{handover_ms - ip_netns_exec - bare:7.1f}"
    )
    print(f"      the command in the forked child (timing plugin)    {child_add:7.1f}")
    print(
        f"        of which ipamd RPC {rtt:.1f}; channel set-up, netlink, state, page faults "
        f"{child_add - rtt:.1f}"
    )
    print(
        f"      unaccounted (child time is from the libcni runs)   "
        f"{served_ms - handover_ms - child_add:7.1f}"
    )
    print(
        f"    in-process DEL: direct {med['direct']['DEL']:.1f}, "
        f"in the child {med['server']['DEL']:.1f}"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("-n", type=int, default=60, help="pods (default 60, at least 50)")
    ap.add_argument("--ipamd", type=Path, help="vpccni-ipamd to run (default: this venv's)")
    ap.add_argument(
        "--vpccni",
        type=Path,
        default=VENV_BIN / "vpccni",
        help="the vpccni CLI whose install-cni writes the plugin launcher",
    )
    ap.add_argument(
        "--profile",
        type=Path,
        help="directory for a cProfile of each server child's command (inflates its figures)",
    )
    opts = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 1
    if opts.profile is not None:
        opts.profile.mkdir(parents=True, exist_ok=True)
    return run(max(opts.n, 1), opts.ipamd, opts.vpccni, opts.profile)


if __name__ == "__main__":
    raise SystemExit(main())
