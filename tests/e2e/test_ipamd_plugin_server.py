"""ipamd starts and supervises the plugin server (VPCCNI_PLUGIN_SERVER_SOCKET_PATH), end to end:
one simulated m5.large node, pods added by libcni through the launcher `install-cni` writes.

The server's log (next to ipamd's) says which pid listens, and with ipamd's debug level each
request it served logs "imported after the fork": that is how the test knows an ADD went
through the server rather than the launcher's in-process fallback.
"""

from __future__ import annotations

import os
import re
import signal
import socket
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.support.cnictl import GO_PLUGIN_DIR
from tests.support.ipamd import wait_for
from tests.support.simnode import SimNode
from tests.support.simnode import install_launcher

if TYPE_CHECKING:
    from collections.abc import Callable

    from vpccni.sim.fixtures import SimHandle

pytestmark = [pytest.mark.sim, pytest.mark.netns]

LISTENING = re.compile(r"plugin server pid (\d+) listening on (\S+)")
SERVED = "imported after the fork"


def listening_pids(log: Path, socket_path: Path) -> list[int]:
    try:
        text = log.read_text(errors="replace")
    except FileNotFoundError:
        return []
    return [int(m[1]) for m in LISTENING.finditer(text) if m[2] == str(socket_path)]


def served(log: Path) -> int:
    return log.read_text(errors="replace").count(SERVED)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0): only a process that has not exited counts.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def accepts(path: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError:
        return False
    finally:
        probe.close()
    return True


def serving_pid(log: Path, socket_path: Path, not_pid: int | None = None) -> int | None:
    """The pid of the server that last said it listens on ``socket_path``, once it is alive
    and the socket answers (and it is not ``not_pid``)."""
    pids = listening_pids(log, socket_path)
    if not pids or pids[-1] == not_pid or not alive(pids[-1]):
        return None
    return pids[-1] if accepts(socket_path) else None


def node_with_server(sim_factory: Callable[..., SimHandle], tmp_path: Path) -> tuple[SimNode, Path]:
    """One m5.large node whose ipamd runs a plugin server on ``<tmp>/plugin.sock``, and
    the launcher install-cni writes for that socket on its CNI_PATH (not started yet)."""
    sim = sim_factory(nodes=1, instance_type="m5.large")
    plugin_socket = tmp_path / "plugin.sock"
    launcher = install_launcher(tmp_path / "bin", plugin_socket)
    node = SimNode(
        sim,
        "node0",
        tmp_path,
        {"VPCCNI_PLUGIN_SERVER_SOCKET_PATH": str(plugin_socket), "WARM_IP_TARGET": "3"},
        cni_path=[str(launcher.parent), str(GO_PLUGIN_DIR)],
    )
    return node, plugin_socket


def test_ipamd_starts_restarts_and_stops_the_plugin_server(
    sim_factory: Callable[..., SimHandle], tmp_path: Path
) -> None:
    node, plugin_socket = node_with_server(sim_factory, tmp_path)
    # ipamd logs to <dir>/ipamd.log (IpamdProcess): the server's log is next to it.
    server_log = node.dir / "plugin-server.log"
    with node:
        # (1) ipamd started it; an ADD through the launcher is served by it.
        first = wait_for("ipamd's plugin server", lambda: serving_pid(server_log, plugin_socket))
        config = node.ipamd.introspect("/v1/config")
        assert config["plugin_server_socket_path"] == str(plugin_socket)
        pod = node.add_pod("p0")
        assert pod.address
        assert served(server_log) >= 1, server_log.read_text()

        # (2) killed: ipamd starts another one, which serves the next ADD.
        os.kill(first, signal.SIGKILL)
        second = wait_for(
            "a restarted plugin server",
            lambda: serving_pid(server_log, plugin_socket, not_pid=first),
        )
        before = served(server_log)
        assert node.add_pod("p1").address
        assert served(server_log) > before, server_log.read_text()
        ipamd_log = Path(node.ipamd.log_file).read_text(errors="replace")
        assert "plugin server exited (killed by SIGKILL)" in ipamd_log
        for name in ("p0", "p1"):
            node.delete_pod(node.pods[name])

        # (3) ipamd stops on SIGTERM and takes its server with it, socket included.
        assert node.ipamd.stop() == 0
        assert not alive(second), f"plugin server {second} outlived ipamd"
        assert not plugin_socket.exists()


def test_a_server_left_by_a_killed_ipamd_is_taken_over_once_it_goes(
    sim_factory: Callable[..., SimHandle], tmp_path: Path
) -> None:
    node, plugin_socket = node_with_server(sim_factory, tmp_path)
    server_log = node.dir / "plugin-server.log"
    ipamd_log = Path(node.ipamd.log_file)
    orphan: int | None = None
    try:
        with node:
            orphan = wait_for(
                "ipamd's plugin server", lambda: serving_pid(server_log, plugin_socket)
            )
            node.ipamd.kill()  # -9: no clean-up, its server runs on
            assert alive(orphan)
            node.ipamd.start()
            wait_for("the warning", lambda: "not ours" in ipamd_log.read_text(errors="replace"))
            # Pods keep the fast path meanwhile: the orphan serves them.
            before = served(server_log)
            assert node.add_pod("p0").address
            assert served(server_log) > before, server_log.read_text()

            os.kill(orphan, signal.SIGTERM)
            ours = wait_for(
                "the new ipamd's plugin server",
                lambda: serving_pid(server_log, plugin_socket, not_pid=orphan),
            )
            assert ipamd_log.read_text(errors="replace").count("not ours") == 1
            before = served(server_log)
            assert node.add_pod("p1").address
            assert served(server_log) > before, server_log.read_text()
            assert ours != orphan
    finally:
        if orphan is not None and alive(orphan):
            os.kill(orphan, signal.SIGKILL)
