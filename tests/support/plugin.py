"""Drive the plugin two ways: in process through ``dispatch.run`` and exec'd as ``aws-cni``.

Both return a :class:`Call` whose ``doc`` is the one JSON document the plugin printed (or
None when stdout is empty, as for a successful DEL).  ``Call.__post_init__`` refuses any
stdout that is not exactly zero or one JSON document: that is part of the CNI contract,
so every test that calls the plugin checks it for free.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.cnictl import Netns
from tests.support.cnictl import create_netns
from tests.support.cnictl import delete_netns
from vpccni.core import dispatch
from vpccni.core.driver_api import DriverInfo
from vpccni.core.result import Interface
from vpccni.core.result import IPConfig
from vpccni.core.result import Result

#: CNI_NETNS for in-process tests whose drivers plumb nothing.  The runtime opens a
#: netlink handle on the pod namespace before any ipamd call (read-only), so ADD and CHECK
#: need a real namespace file; the test process's own one is always there.  Never use it
#: with a driver that plumbs (test_veth): those run exec'd inside test-made namespaces.
OWN_NETNS = "/proc/self/ns/net"

#: The console scripts of the venv running the tests (the installed package).
VENV_BIN = Path(sys.executable).parent
PLUGIN = str(VENV_BIN / "aws-cni")
EGRESS_PLUGIN = str(VENV_BIN / "egress-cni")


@dataclass(frozen=True)
class Call:
    returncode: int
    stdout: str
    stderr: str

    def __post_init__(self) -> None:
        text = self.stdout.strip()
        if text:
            # raw_decode tells us where the first document ends: anything after it
            # (a second document, a log line) breaks the one-document contract.
            obj, end = json.JSONDecoder().raw_decode(text)
            if text[end:].strip():
                raise AssertionError(f"stdout holds more than one JSON document: {self.stdout!r}")
            if not isinstance(obj, dict):
                raise AssertionError(f"stdout is not a JSON object: {self.stdout!r}")
        if self.returncode not in (0, 1):
            raise AssertionError(f"exit status {self.returncode}; stderr: {self.stderr}")
        if self.returncode == 1 and not text:
            raise AssertionError(f"failed without an error document; stderr: {self.stderr}")

    @property
    def doc(self) -> dict[str, Any] | None:
        text = self.stdout.strip()
        return json.loads(text) if text else None

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    @property
    def code(self) -> int | None:
        """The CNI error code, or None on success."""
        if self.ok:
            return None
        doc = self.doc
        assert doc is not None
        return int(doc["code"])

    @property
    def error(self) -> dict[str, Any]:
        assert not self.ok, f"expected a failure, got {self.stdout!r}"
        doc = self.doc
        assert doc is not None
        return doc

    @property
    def result(self) -> dict[str, Any]:
        assert self.ok, f"plugin failed: {self.stdout} {self.stderr}"
        doc = self.doc
        assert doc is not None
        return doc


def _stdin_bytes(conf: Mapping[str, Any] | bytes | str | None) -> bytes:
    if conf is None:
        return b""
    if isinstance(conf, bytes):
        return conf
    if isinstance(conf, str):
        return conf.encode()
    return json.dumps(conf).encode()


def cni_env(
    command: str,
    *,
    container_id: str | None = "cid1",
    ifname: str | None = "eth0",
    netns: str | None = None,
    args: Mapping[str, str] | str | None = None,
    path: str | None = "/opt/cni/bin",
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """A CNI environment; pass None to leave a variable out."""
    env: dict[str, str] = {"CNI_COMMAND": command}
    if container_id is not None:
        env["CNI_CONTAINERID"] = container_id
    if ifname is not None:
        env["CNI_IFNAME"] = ifname
    if netns is not None:
        env["CNI_NETNS"] = netns
    if path is not None:
        env["CNI_PATH"] = path
    if args is not None:
        env["CNI_ARGS"] = (
            args if isinstance(args, str) else ";".join(f"{k}={v}" for k, v in args.items())
        )
    env.update(extra or {})
    return env


def run_inproc(env: Mapping[str, str], conf: Mapping[str, Any] | bytes | str | None) -> Call:
    """One invocation through ``vpccni.core.dispatch.run``; no os.environ involved."""
    out, err = io.StringIO(), io.StringIO()
    rc = dispatch.run(env, io.BytesIO(_stdin_bytes(conf)), out, err)
    return Call(rc, out.getvalue(), err.getvalue())


def run_exec(
    env: Mapping[str, str],
    conf: Mapping[str, Any] | bytes | str | None,
    *,
    in_netns: str | None = None,
    binary: str = PLUGIN,
    argv: list[str] | None = None,
    timeout: float = 60.0,
) -> Call:
    """Exec the installed plugin with exactly ``env`` (plus PATH) and ``conf`` on stdin.

    ``in_netns`` runs it inside a test-made namespace: the plugin changes the namespace it
    runs in (host veths, routes), which must never be the root namespace.
    """
    full_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env}
    cmd = argv or [binary]
    if in_netns:
        cmd = ["ip", "netns", "exec", in_netns, *cmd]
    proc = subprocess.run(
        cmd,
        input=_stdin_bytes(conf),
        capture_output=True,
        env=full_env,
        timeout=timeout,
        check=False,
    )
    return Call(proc.returncode, proc.stdout.decode(), proc.stderr.decode())


def fake_conf(
    tmp: Path,
    cni_version: str = "1.0.0",
    *,
    driver: str = "test_veth",
    pools: list[str] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """An aws-cni plugin configuration on the fake (file) ipam, all state under ``tmp``.

    ``driver`` is the driver the fake ipamd names; it is enabled in ``drivers.enabled``.
    """
    conf: dict[str, Any] = {
        "cniVersion": cni_version,
        "name": "vpc-net",
        "type": "aws-cni",
        "ipamd": {
            "backend": "fake",
            "stateFile": str(tmp / "ipam.json"),
            "pools": pools or ["10.77.0.0/28"],
            "driver": driver,
        },
        "drivers": {"enabled": [driver]},
        "stateDir": str(tmp / "state"),
        "runtimeCacheDir": str(tmp / "cache"),
        "pluginLogFile": str(tmp / "plugin.log"),
        "pluginLogLevel": "debug",
    }
    conf.update(extra)
    return conf


def fake_ipam_assigned(conf: Mapping[str, Any]) -> dict[str, Any]:
    """What the fake ipam's state file holds, read as plain JSON (not through our code)."""
    path = Path(conf["ipamd"]["stateFile"])
    if not path.exists():
        return {}
    data = json.loads(path.read_text())
    assigned: dict[str, Any] = data["assigned"]
    return assigned


def stored_records(conf: Mapping[str, Any]) -> list[str]:
    folder = Path(conf["stateDir"]) / "attachments"
    return sorted(p.name for p in folder.glob("*.json")) if folder.exists() else []


# --------------------------------------------------------------------------- namespaces


@contextlib.contextmanager
def node_and_pod(prefix: str) -> Iterator[tuple[Netns, Netns]]:
    """A "node" namespace (where the plugin runs) and a "pod" namespace, always deleted."""
    node = create_netns(f"{prefix}n")
    pod: Netns | None = None
    try:
        pod = create_netns(f"{prefix}p")
        yield node, pod
    finally:
        if pod is not None:
            delete_netns(pod)
        delete_netns(node)


def netns_tools_missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    if shutil.which("ip") is None:
        return "iproute2 (ip) is not installed"
    return None


# --------------------------------------------------------------------------- fake drivers


class RecordingDriver:
    """An attachment driver that plumbs nothing and records what the core asked of it.

    Register it under a name with ``registry.register_for_testing`` and name that driver in
    ``fake_conf(driver=...)``; ``calls`` is shared by every instance (the core builds a new
    instance per command).
    """

    info = DriverInfo(name="recording", kind="attachment", summary="records calls; plumbs nothing")
    calls: list[tuple[str, Any]] = []

    def add(self, ctx: Any, allocation: Any) -> Result:
        self.calls.append(("add", ctx))
        address = allocation.addresses[0].address
        return Result(
            interfaces=(
                Interface(name="enifake"),
                Interface(name=ctx.invocation.ifname, sandbox=ctx.invocation.netns),
            ),
            ips=(IPConfig(address=f"{address}/32", interface=1, gateway="169.254.1.1"),),
        )

    def delete(self, ctx: Any, allocation: Any, prev: Any) -> None:
        self.calls.append(("delete", (allocation, prev)))

    def check(self, ctx: Any, allocation: Any, prev: Any) -> None:
        self.calls.append(("check", (allocation, prev)))
