"""Per-pod ADD and DEL of the exec'd plugin (routed_eni, real ipamd, warm pool) vs Go ptp,
with the launcher running the command itself ("direct") and through ``vpccni plugin-server``.

One simulated node (m5.4xlarge: room for the whole run in the warm pool) with
``vpccni-ipamd`` inside it and WARM_IP_TARGET above the pod count, so no ADD waits for EC2.
The plugin is what a node would run: the launchers ``vpccni install-cni --bin-dir DIR``
writes, found by libcni on CNI_PATH, run in the same run as: "direct" (the Python launcher
imports the runtime and runs the command), "via plugin-server" with the Python launcher,
and with the native launcher when install-cni could build it (docs/native-launcher.md;
the server forks pre-imported children, docs/plugin-server.md).  Debian's Go ``ptp`` +
``host-local`` run through the same libcni program (``cnictl``) in the same run, all
interleaved pod by pod, each in its own test-made node namespace.

Printed (ms): p50/p95 of ADD and DEL (the libcni call, as cnictl measures it: plugin exec
included) with the node's conflist (no plugins), and the ratios to Go.  Then, from
separate runs with the core's ``timing`` plugin added (the command's own time): where the
plugin's time goes: interpreter start, the import closure of one ADD (``python -X
importtime``), the command inside the process, the ipamd RPC round trip, and what is left
for netlink and the driver; for the server, the fixed cost of launcher + hand-over (a
request the child refuses at once, code 4) and the command in the forked child.

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
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Variant:
    """One way kubelet's exec of ``aws-cni`` can run: which launcher, server or not."""

    key: str
    label: str
    bin_dir: Path
    server: bool


def install_variants(work: Path, server_socket: Path, vpccni: Path) -> list[Variant]:
    """The launchers ``install-cni`` writes by default (native when it can build or find
    it, docs/native-launcher.md) and the Python-only ones, and the variants to compare."""
    default = install_launcher(work / "bin", server_socket, vpccni).parent
    if not (default / "aws-cni-python").exists():  # no native launcher here
        return [
            Variant("direct", "aws-cni direct (exec'd)", default, False),
            Variant("server", "aws-cni via plugin-server", default, True),
        ]
    python = install_launcher(work / "bin-py", server_socket, vpccni, launcher="python").parent
    return [
        Variant("direct", "aws-cni direct (exec'd)", python, False),
        Variant("server_py", "via plugin-server, Python launcher", python, True),
        Variant("server", "via plugin-server, native launcher", default, True),
    ]


def run(n: int, ipamd_bin: Path | None, vpccni: Path, profile: Path | None = None) -> int:
    from vpccni.sim.fixtures import running_simulator  # heavy (moto): after arg parsing

    if ipamd_bin is not None:
        ipamd_support.IPAMD = str(ipamd_bin)  # the module reads it at start()
    cnictl = ensure_cnictl()
    with (
        tempfile.TemporaryDirectory(prefix="bpd-") as tmp,
        running_simulator(nodes=1, instance_type="m5.4xlarge") as sim,
        contextlib.ExitStack() as stack,
    ):
        work = Path(tmp)
        server_socket = work / "run" / "plugin.sock"
        variants = install_variants(work, server_socket, vpccni)
        by_key = {v.key: v for v in variants}
        keys = [f"{v.key}_{c}" for v in variants for c in ("add", "del")] + ["go_add", "go_del"]
        samples: dict[str, list[float]] = {k: [] for k in keys}
        breakdown_n = min(n, 20)
        # Every variant's pods, the breakdown pods and the RTT probes: none waits for an
        # address (released ones cool down).  m5.4xlarge holds 232.
        warm = min(len(variants) * (n + breakdown_n) + 50, 230)
        node = SimNode(
            sim,
            "node0",
            work,
            {"WARM_IP_TARGET": str(warm), "AWS_VPC_K8S_CNI_LOGLEVEL": "info"},
            cni_path=[str(variants[0].bin_dir), str(GO_PLUGIN_DIR)],
            cnictl=cnictl,
            pod_prefix="bpd" + os.urandom(2).hex(),
        )
        stack.callback(node.close)
        node.start()
        node.start_plugin_server(server_socket, work / "plugin-server.log")
        timing = {v.key: work / f"timing-{v.key}.jsonl" for v in variants}

        def use(variant: Variant, command: str | None = None) -> None:
            node.ctl.cni_path = [str(variant.bin_dir), str(GO_PLUGIN_DIR)]
            node.ctl.env = {
                "VPCCNI_TIMING_FILE": str(timing[variant.key]),
                SOCKET_ENV: str(server_socket) if variant.server else "",
            }
            if profile is not None and command is not None and variant.key == "server":
                node.ctl.env[PROFILE_ENV] = str(profile / command)

        wait_for("the warm pool", lambda: node.ipamd.pool()[1] >= warm, timeout=180)

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

        # Warm-up (page cache, first exec, ipamd's first connection, the server learning
        # ipamd's socket), not counted.
        for tag in ("w0", "w1", "w2"):
            for variant in variants:
                use(variant)
                pod = node.add_pod(f"{tag}{variant.key}")
                node.delete_pod(pod)
            ns = go_pod(tag)
            go.add(go_conf, ns.path, f"go-{tag}").check()
            go.delete(go_conf, ns.path, f"go-{tag}").check()

        # The headline: the conflist as a node has it (no plugins), interleaved pod by pod.
        pods: dict[str, list[Pod]] = {v.key: [] for v in variants}
        go_first = len(go_pods)
        for i in range(n):
            for variant in variants:
                use(variant, "add")
                pod = node.new_pod(f"{variant.key[0]}{variant.key[-1]}{i}")
                add = node.add(pod)
                if not add.ok:
                    raise SystemExit(f"ADD {pod.name} failed: {add.stdout} {add.stderr[-300:]}")
                pods[variant.key].append(pod)
                samples[f"{variant.key}_add"].append(call_ms(add))
            ns = go_pod(f"g{i}")
            samples["go_add"].append(call_ms(go.add(go_conf, ns.path, f"go-{i}").check()))
        for i in range(n):
            for variant in variants:
                use(variant, "del")
                samples[f"{variant.key}_del"].append(call_ms(node.delete_pod(pods[variant.key][i])))
            samples["go_del"].append(
                call_ms(go.delete(go_conf, go_pods[go_first + i].path, f"go-{i}"))
            )

        # Where the time goes: the same with the core's timing plugin (the command's own
        # time, without interpreter start-up or hand-over), on fewer pods.
        conf = json.loads(node.conflist.read_text())
        conf["plugins"][0]["plugins"] = ["timing"]
        node.conflist.write_text(json.dumps(conf))
        for i in range(breakdown_n):
            for variant in variants:
                use(variant)
                node.delete_pod(node.add_pod(f"t{variant.key[0]}{variant.key[-1]}{i}"))
        in_process: dict[str, dict[str, list[float]]] = {}
        for variant in variants:
            per = in_process[variant.key] = {"ADD": [], "DEL": []}
            for line in timing[variant.key].read_text().splitlines():
                rec = json.loads(line)
                per.setdefault(rec["command"], []).append(rec["ms"])

        plugin = by_key["direct"].bin_dir / "aws-cni"  # the Python launcher
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

        def cni_env(command: str, pod: Pod, server: bool = False) -> dict[str, str]:
            return {
                SOCKET_ENV: str(server_socket) if server else "",
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
        launchers = {v.key: v.bin_dir / "aws-cni" for v in variants if v.server}
        parts: dict[str, list[float]] = {
            k: [] for k in ("bare", "imports", "netns", "direct", *launchers,
                            *(f"handover_{k}" for k in launchers))
        }  # fmt: skip
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
            for key, launcher in launchers.items():
                two = node.new_pod(f"s{key[-1]}{i}")
                parts[key].append(
                    exec_ms(
                        [*in_node, str(launcher)],
                        runs=1,
                        input=stdin.encode(),
                        env=cni_env("ADD", two, server=True),
                    )
                )
                node.delete_pod(two)
                parts[f"handover_{key}"].append(
                    exec_ms(
                        [*in_node, str(launcher)], runs=1, check=False, input=b"", env=handover_env
                    )
                )
        med_parts = {k: statistics.median(v) for k, v in parts.items()}
        bare, ip_netns_exec, direct_ms = med_parts["bare"], med_parts["netns"], med_parts["direct"]
        imports_ms = med_parts["imports"] - bare
        rtts = []
        for i in range(30):
            t0 = time.perf_counter()
            node.ipamd.client.allocate(request(f"rtt{i}"))
            node.ipamd.client.release(request(f"rtt{i}").key)
            rtts.append((time.perf_counter() - t0) * 1000 / 2)

    go_add, go_del = stats(samples["go_add"]), stats(samples["go_del"])
    print(
        f"pod ADD/DEL through libcni, n={n} per variant, warm pool, real namespaces, the node's "
        "conflist (ms, p50 / p95)"
    )
    for variant in variants:
        add, dele = stats(samples[f"{variant.key}_add"]), stats(samples[f"{variant.key}_del"])
        print(
            f"  {variant.label:36s} ADD {add[0]:6.1f} / {add[1]:6.1f}   "
            f"DEL {dele[0]:6.1f} / {dele[1]:6.1f}   ratio p50 ADD {add[0] / go_add[0]:.1f}x "
            f"(<= {TARGET_ADD}x), DEL {dele[0] / go_del[0]:.1f}x (<= {TARGET_DEL}x)"
        )
    print(
        f"  {'Go ptp + host-local':36s} ADD {go_add[0]:6.1f} / {go_add[1]:6.1f}   "
        f"DEL {go_del[0]:6.1f} / {go_del[1]:6.1f}"
    )
    med = {
        v.key: {c: statistics.median(in_process[v.key][c] or [0.0]) for c in ("ADD", "DEL")}
        for v in variants
    }
    rtt = statistics.median(rtts)
    direct_add = statistics.median(samples["direct_add"])
    work_ms = direct_ms - ip_netns_exec - bare - imports_ms - rtt
    print(f"where one direct ADD's time goes (p50 ms; breakdown runs n={breakdown_n}):")
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
    for key in launchers:
        served_add = statistics.median(samples[f"{key}_add"])
        served_ms, handover_ms = med_parts[key], med_parts[f"handover_{key}"]
        child_add = med[key]["ADD"]
        print(f"where one ADD {by_key[key].label} goes (p50, ms):")
        print(f"  libcni ADD (cnictl's measure)                          {served_add:7.1f}")
        outside = served_add - served_ms
        print(f"    outside the plugin: libcni, cnictl                   {outside:7.1f}")
        print(f"    the launcher exec'd directly in the node namespace   {served_ms:7.1f}")
        print(f"      ip netns exec (direct run only)                   {ip_netns_exec:7.1f}")
        print(
            f"      launcher start + hand-over (a request the child    "
            f"{handover_ms - ip_netns_exec:7.1f}\n"
            f"        refuses at once; Python's interpreter start alone: {bare:.1f})"
        )
        print(f"      the command in the forked child (timing plugin)    {child_add:7.1f}")
        print(
            f"        of which ipamd RPC {rtt:.1f}; netlink, state, logging, page faults "
            f"{child_add - rtt:.1f}"
        )
        print(
            f"      unaccounted (child time is from other runs)        "
            f"{served_ms - handover_ms - child_add:7.1f}"
        )
        print(f"    in-process DEL in the child: {med[key]['DEL']:.1f}")
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
