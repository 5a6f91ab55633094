"""``vpccni sim up|status|down|exec``: the local VPC simulator as a background daemon.

Nothing heavy is imported here (moto, werkzeug and boto3 load in the daemon only), so
``vpccni --help`` and ``vpccni sim down`` stay fast.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any

from vpccni.cli.main import CliError
from vpccni.sim.daemon import EXIT_LOCKED
from vpccni.sim.daemon import ConfigError
from vpccni.sim.daemon import SimConfig
from vpccni.sim.daemon import merged_node_env
from vpccni.sim.fabric import Fabric
from vpccni.sim.state import StateDir
from vpccni.sim.state import is_locked
from vpccni.sim.state import stop_process

READY_TIMEOUT = 90.0


def register(subparsers: Any) -> None:
    sim = subparsers.add_parser("sim", help="run the local VPC simulator (EC2, metadata, fabric)")
    sub = sim.add_subparsers(dest="sim_command", metavar="SIM_COMMAND", required=True)

    up = sub.add_parser("up", help="start the simulator in the background")
    _state_dir_arg(up)
    up.add_argument("--nodes", type=int, default=1, help="simulated nodes (default 1)")
    up.add_argument("--instance-type", default="m5.large", help="EC2 type of every node")
    up.add_argument(
        "--vpc-cidr",
        action="append",
        default=None,
        help="VPC IPv4 CIDR (default 10.0.0.0/16); repeat for secondary CIDRs",
    )
    up.add_argument("--ipv6", action="store_true", help="give the VPC and subnets IPv6 blocks")
    up.add_argument(
        "--source-dest-check",
        action="store_true",
        help="drop packets whose source the sending ENI does not own, as EC2 does",
    )
    up.add_argument("--region", default="us-west-2", help=argparse.SUPPRESS)
    up.set_defaults(func=cmd_up)

    status = sub.add_parser("status", help="print the running simulator as JSON")
    _state_dir_arg(status)
    status.set_defaults(func=cmd_status)

    down = sub.add_parser("down", help="stop the simulator and remove its namespaces")
    _state_dir_arg(down)
    down.set_defaults(func=cmd_down)

    ex = sub.add_parser("exec", help="run a command inside a node's namespace")
    _state_dir_arg(ex)
    ex.add_argument("node", help="node name, for example node0")
    ex.add_argument("argv", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")
    ex.set_defaults(func=cmd_exec)


def _state_dir_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--state-dir",
        default=None,
        help="state directory (default $VPCCNI_SIM_STATE_DIR or /run/vpccni-sim)",
    )


# -- up ----------------------------------------------------------------------------------


def cmd_up(args: argparse.Namespace) -> int:

    state = StateDir.resolve(args.state_dir)
    cidrs = tuple(args.vpc_cidr or ["10.0.0.0/16"])
    config = SimConfig(
        prefix=state.prefix,
        nodes=args.nodes,
        instance_type=args.instance_type,
        vpc_cidrs=cidrs,
        ipv6=args.ipv6,
        region=args.region,
        source_dest_check=args.source_dest_check,
    )
    try:
        config.validate()  # cheap checks before anything is spawned
    except ConfigError as exc:
        raise CliError(str(exc)) from None
    running = state.running_pid()
    if running is not None or (state.path.exists() and is_locked(state)):
        raise CliError(
            f"a simulator is already running (pid {running}, state dir {state.path});"
            " run 'vpccni sim down' first"
        )
    state.ensure()
    state.clear_runtime_files()
    argv = [sys.executable, "-m", "vpccni.sim.daemon", "--state-dir", str(state.path)]
    argv += ["--nodes", str(args.nodes), "--instance-type", args.instance_type]
    argv += ["--region", args.region]
    for cidr in cidrs:
        argv += ["--vpc-cidr", cidr]
    if args.ipv6:
        argv.append("--ipv6")
    if args.source_dest_check:
        argv.append("--source-dest-check")
    with open(state.log_file, "ab") as logf:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=logf,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # detached: survives the CLI and its terminal
            close_fds=True,
        )
    status = _wait_ready(state, proc)
    if status is None:
        rc = proc.poll()
        if rc == EXIT_LOCKED:
            raise CliError(f"a simulator is already running (state dir {state.path})")
        if rc is None:
            stop_process(proc.pid)
        _sweep(state)  # nothing half-built stays behind, whatever the daemon managed
        raise CliError(_failure_message(state, rc))
    print(json.dumps(status, indent=2))
    return 0


def _wait_ready(state: StateDir, proc: subprocess.Popen[bytes]) -> dict[str, Any] | None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        status = state.read_status()
        if status is not None and status.get("pid") == proc.pid:
            return status
        if proc.poll() is not None:
            return None
        time.sleep(0.05)
    return None


def _failure_message(state: StateDir, rc: int | None) -> str:
    try:
        line = state.error_file.read_text().strip().splitlines()[0]
    except (FileNotFoundError, IndexError):
        line = ""
    if line:
        return line
    if rc is None:
        return f"the simulator did not become ready in {READY_TIMEOUT:.0f} s; see {state.log_file}"
    return f"the simulator daemon exited with status {rc}; see {state.log_file}"


# -- status / down / exec ------------------------------------------------------------------


def _running_status(state: StateDir) -> dict[str, Any]:
    status = state.read_status()
    if state.running_pid() is None or status is None:
        raise CliError(f"no simulator is running (state dir {state.path}); run 'vpccni sim up'")
    return status


def cmd_status(args: argparse.Namespace) -> int:
    print(json.dumps(_running_status(StateDir.resolve(args.state_dir)), indent=2))
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    state = StateDir.resolve(args.state_dir)
    pid = state.running_pid()
    stopped = stop_process(pid) if pid is not None else False
    if pid is not None and not stopped:
        raise CliError(f"the simulator daemon (pid {pid}) did not stop")
    removed = _sweep(state)
    state.clear_runtime_files()
    print(json.dumps({"stopped_pid": pid, "prefix": state.prefix, "swept": removed}))
    return 0


def _sweep(state: StateDir) -> bool:
    """Remove every namespace carrying this state dir's prefix (after a crash too)."""
    Fabric.teardown_prefix(state.prefix)
    return True


def cmd_exec(args: argparse.Namespace) -> int:

    state = StateDir.resolve(args.state_dir)
    argv = list(args.argv)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise CliError("no command given: vpccni sim exec NODE -- COMMAND [ARGS...]")
    status = _running_status(state)
    nodes = {n["name"]: n for n in status.get("nodes", [])}
    node = nodes.get(args.node)
    if node is None:
        raise CliError(f"no node {args.node!r} (nodes: {', '.join(nodes) or 'none'})")
    env = merged_node_env(status["node_env"])
    sys.stdout.flush()
    # exec, so signals and the exit status are the command's own
    try:
        os.execvpe("ip", ["ip", "netns", "exec", node["namespace"], *argv], env)
    except OSError as exc:
        raise CliError(f"cannot run 'ip netns exec': {exc}") from None
