"""Delegated IPAM, as the CNI spec runs it (libcni ``invoke.DelegateAdd``/``DelegateDel``).

egress-cni takes the pod's egress address from the IPAM plugin named in its ``ipam``
section (``host-local`` in the shipped conflist): the binary is looked up in ``CNI_PATH``
and executed with this invocation's environment (``CNI_COMMAND`` replaced) and the
plugin's own configuration on stdin.  host-local keys its reservations by container id and
``CNI_IFNAME``, so DEL must run with the same environment ADD used, which it does.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Mapping
from typing import Any

from vpccni.core import errors
from vpccni.core import version as cniversion
from vpccni.core.invocation import Invocation
from vpccni.core.result import Result

TIMEOUT_S = 30.0


class IpamExecError(Exception):
    """The IPAM plugin answered with a CNI error (or not with JSON at all)."""

    def __init__(self, plugin: str, command: str, code: int, msg: str, details: str = "") -> None:
        super().__init__(
            f"{plugin} {command}: code {code}: {msg}" + (f" ({details})" if details else "")
        )
        self.plugin = plugin
        self.command = command
        self.code = code
        self.msg = msg
        self.details = details


def find_plugin(name: str, path: tuple[str, ...]) -> str:
    if not name or "/" in name:
        raise errors.invalid_config(f"$.ipam.type: {name!r} is not a plugin name")
    for folder in path:
        candidate = os.path.join(folder, name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise errors.CniError(
        errors.SpecCode.INVALID_CONFIG,
        f"IPAM plugin {name!r} not found",
        f"no executable {name!r} in CNI_PATH {':'.join(path) or '(empty)'}",
    )


def _env(invocation: Invocation, command: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
    env.update(
        {
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": invocation.container_id,
            "CNI_NETNS": invocation.netns,
            "CNI_IFNAME": invocation.ifname,
            "CNI_PATH": ":".join(invocation.path),
        }
    )
    if invocation.args:
        env["CNI_ARGS"] = ";".join(f"{k}={v}" for k, v in invocation.args.items())
    return env


def _run(binary: str, command: str, env: Mapping[str, str], stdin: dict[str, Any]) -> Any:
    try:
        proc = subprocess.run(  # fixed argv, never a shell
            [binary],
            input=json.dumps(stdin).encode(),
            env=dict(env),
            capture_output=True,
            timeout=TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise IpamExecError(binary, command, 999, f"no answer within {TIMEOUT_S:.0f}s") from None
    out = proc.stdout.decode(errors="replace").strip()
    doc: Any = None
    if out:
        try:
            doc = json.loads(out)
        except ValueError:
            doc = None
    if proc.returncode != 0:
        if isinstance(doc, dict) and "code" in doc:
            raise IpamExecError(
                binary,
                command,
                int(doc["code"]),
                str(doc.get("msg", "")),
                str(doc.get("details", "")),
            )
        raise IpamExecError(
            binary,
            command,
            999,
            f"exit {proc.returncode}",
            proc.stderr.decode(errors="replace")[-500:],
        )
    return doc


class DelegatedIpam:
    """The IPAM plugin of one egress-cni invocation."""

    def __init__(self, conf: Mapping[str, Any], invocation: Invocation) -> None:
        self.conf = dict(conf)
        self.invocation = invocation
        self.type = str((conf.get("ipam") or {}).get("type") or "")
        self._binary: str | None = None

    @property
    def binary(self) -> str:
        if self._binary is None:
            self._binary = find_plugin(self.type, self.invocation.path)
        return self._binary

    def _call(self, command: str) -> Any:
        env = _env(self.invocation, command)
        stdin = self.conf
        try:
            return _run(self.binary, command, env, stdin)
        except IpamExecError as exc:
            if exc.code != errors.SpecCode.INCOMPATIBLE_VERSION:
                raise
        # The IPAM plugin is older than our configuration (Debian's host-local stops at
        # 1.0.0): speak the newest version both know, as a runtime would negotiate.
        older = self._common_version()
        if older is None:
            return _run(self.binary, command, env, stdin)  # re-raise the plugin's own error
        return _run(self.binary, command, env, {**stdin, "cniVersion": older})

    def _common_version(self) -> str | None:
        ours = str(self.conf.get("cniVersion", ""))
        try:
            doc = _run(
                self.binary, "VERSION", _env(self.invocation, "VERSION"), {"cniVersion": ours}
            )
        except IpamExecError:
            return None
        theirs = set((doc or {}).get("supportedVersions") or ())
        common = [v for v in cniversion.SUPPORTED if v in theirs and v != ours]
        mine = cniversion.parse(ours) if ours in cniversion.SUPPORTED else (9, 9, 9)
        older = [v for v in common if cniversion.parse(v) < mine]
        return older[-1] if older else None

    def add(self) -> Result:
        doc = self._call("ADD")
        return Result.decode(doc, where=f"{self.type} ADD result")

    def delete(self) -> None:
        self._call("DEL")

    def check(self) -> None:
        self._call("CHECK")


def as_cni_error(exc: IpamExecError, what: str) -> errors.CniError:
    """The IPAM plugin's failure, passed on with its own code (the spec's delegation rule)."""
    return errors.CniError(
        exc.code, f"{what}: IPAM plugin {os.path.basename(exc.plugin)} failed", str(exc)
    )
