"""The CNI runtime: one invocation in, exactly one JSON document out.

``run(env, stdin, stdout, stderr) -> exit status`` is the whole contract, so tests drive
it without patching ``os.environ`` (skel's dispatcher, kuryr's ``run(env, fin, fout)``).
"""

from __future__ import annotations

import json
import logging
import os
import traceback
from collections.abc import Mapping
from typing import Any
from typing import BinaryIO
from typing import TextIO

from vpccni.core import errors
from vpccni.core import invocation as inv_mod
from vpccni.core import version as cniversion
from vpccni.core.invocation import Command
from vpccni.core.invocation import Invocation

log = logging.getLogger("vpccni.runtime")

LATEST = cniversion.SUPPORTED[-1]


def run(env: Mapping[str, str], stdin: BinaryIO, stdout: TextIO, stderr: TextIO) -> int:
    reply_version = LATEST
    hooks: Any = None
    invocation: Invocation | None = None
    try:
        if not env.get("CNI_COMMAND"):
            print(cniversion.ABOUT, file=stderr)
        invocation = inv_mod.from_environ(env)
        raw = stdin.read()
        if invocation.command is Command.VERSION:
            return _version(raw, stdout)

        # Everything heavier than VERSION is imported from here on.
        from vpccni.core import logsetup  # noqa: PLC0415
        from vpccni.core import netconf  # noqa: PLC0415
        from vpccni.core.plugins import Hooks  # noqa: PLC0415

        logsetup.configure(None, stderr)  # until the configuration names the log file
        conf = netconf.decode(raw)
        requested = conf.get("cniVersion")
        if isinstance(requested, str) and requested in cniversion.SUPPORTED:
            reply_version = requested
        conf = netconf.validate(conf)
        logsetup.configure(conf, stderr)
        hooks = Hooks(conf.get("plugins") or ())
        hooks.validate_conf(conf)

        from vpccni.core.commands import Runtime  # noqa: PLC0415

        runtime = Runtime(invocation, conf, hooks)
        output = hooks.run_command(invocation, conf, runtime.execute)
        if output is not None:
            stdout.write(json.dumps(output) + "\n")
        stdout.flush()
        return 0
    except errors.CniError as exc:
        log.error("%s failed: code %d: %s", _command(invocation), exc.code, exc)
        if hooks is not None and invocation is not None:
            hooks.command_failed(invocation, exc)
        return _fail(stdout, exc, reply_version)
    except OSError as exc:
        # A path from the configuration (stateDir, pluginLogFile, ...) that cannot be used.
        log.error("%s failed on I/O: %r", _command(invocation), exc)
        where = f"{exc.filename}: " if exc.filename else ""
        error = errors.CniError(
            errors.SpecCode.IO_FAILURE, "I/O failure", f"{where}{exc.strerror or exc}"
        )
        if hooks is not None and invocation is not None:
            hooks.command_failed(invocation, error)
        return _fail(stdout, error, reply_version)
    except BaseException as exc:  # any bug becomes a CNI error; the traceback goes to the log
        log.error("%s failed unexpectedly:\n%s", _command(invocation), traceback.format_exc())
        error = errors.CniError(errors.SpecCode.INTERNAL, "internal error", repr(exc))
        if hooks is not None and invocation is not None:
            hooks.command_failed(invocation, error)
        return _fail(stdout, error, reply_version)


def _command(invocation: Invocation | None) -> str:
    return str(invocation.command) if invocation else "invocation"


def _fail(stdout: TextIO, error: errors.CniError, cni_version: str) -> int:
    stdout.write(json.dumps(error.to_reply(cni_version)) + "\n")
    stdout.flush()
    return 1


def _version(raw: bytes, stdout: TextIO) -> int:
    """VERSION: answer in the version stdin asks for (latest when absent or unknown)."""
    reply_version = LATEST
    if raw.strip():
        try:
            asked = json.loads(raw).get("cniVersion")
        except (ValueError, AttributeError):
            raise errors.decoding_failure("VERSION: stdin is not a JSON object") from None
        if isinstance(asked, str) and asked in cniversion.SUPPORTED:
            reply_version = asked
    body = {"cniVersion": reply_version, "supportedVersions": list(cniversion.SUPPORTED)}
    stdout.write(json.dumps(body) + "\n")
    stdout.flush()
    return 0


def environ() -> dict[str, str]:
    return dict(os.environ)
