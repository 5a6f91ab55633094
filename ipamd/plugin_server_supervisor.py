"""ipamd's optional child: the plugin fork-server (``vpccni plugin-server``), supervised.

ipamd already runs where the plugin server must run (the host's network and mount
namespaces, as root), so with ``VPCCNI_PLUGIN_SERVER_SOCKET_PATH`` set it starts the server
once its own gRPC socket serves (the server's idle children connect to it ahead of their
request) and restarts it when it exits: 1 s back-off, doubling to 30 s, back to 1 s once a
server ran for a minute.  :meth:`PluginServerSupervisor.stop` (ipamd's SIGTERM) stops it with
SIGTERM (the server removes its socket), SIGKILL after 5 s.

If ipamd is killed -9 its server runs on (plugins keep their fast path; the server needs
ipamd only for its idle channels).  The next ipamd's server then finds "another plugin server
is listening there" and exits at once: that is logged once, at warning, and retried with
the back-off, so we take over as soon as the orphan goes away, without spinning.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO

log = logging.getLogger("vpccni.ipamd.plugin_server")

BACKOFF_FIRST_SECONDS = 1.0
BACKOFF_MAX_SECONDS = 30.0
#: A server that ran this long was healthy: the next restart starts the back-off again.
BACKOFF_RESET_AFTER_SECONDS = 60.0
STOP_GRACE_SECONDS = 5.0
#: An exit this soon after the start with someone answering on the socket: not our server.
QUICK_EXIT_SECONDS = 1.0
#: What ``vpccni plugin-server`` prints when the socket is taken (core/zygote.py bind()).
ANOTHER_SERVER_MARK = "another plugin server is listening there"
LOG_NAME = "plugin-server.log"


def server_command() -> list[str]:
    """argv[0:] that runs ``vpccni`` with this interpreter's installation.  The console script
    next to the interpreter (a virtualenv's bin/) when there is one; otherwise ``python -c``
    calling the CLI's entry point.  Not ``python -m vpccni.cli.main``: run as ``__main__``,
    that module is imported a second time by the subcommands, whose CliError then escapes
    ``main()``'s handler as a traceback."""
    script = Path(sys.executable).parent / "vpccni"
    if os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-c", "import sys; from vpccni.cli.main import main; sys.exit(main())"]


#: ipamd's AWS_VPC_K8S_CNI_LOGLEVEL -> the server's --log-level (debug: per request, the
#: modules a child still imported after the fork).
_SERVER_LOG_LEVELS = {"debug": "debug", "info": "info", "warn": "warning"}


def server_log_level(ipamd_level: str) -> str:
    return _SERVER_LOG_LEVELS.get(ipamd_level, "error")


def log_file_for(ipamd_log_file: str) -> str | None:
    """The server's log, next to ipamd's when ipamd logs to a file (None: ipamd's stderr)."""
    if ipamd_log_file.lower() in ("stdout", "stderr"):
        return None
    return os.path.join(os.path.dirname(ipamd_log_file), LOG_NAME)


def describe_status(status: int) -> str:
    """Popen's returncode in words: ``status 1`` or ``killed by SIGKILL``."""
    if status < 0:
        try:
            return f"killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"killed by signal {-status}"
    return f"status {status}"


def someone_listens(path: str) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(path)
    except OSError:
        return False
    finally:
        probe.close()
    return True


class PluginServerSupervisor:
    """Runs ``vpccni plugin-server`` as a child of ipamd and keeps it running; see the
    module docstring."""

    def __init__(
        self,
        socket_path: str,
        ipamd_socket: str,
        log_file: str | None,
        *,
        command: Sequence[str] | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.socket_path = socket_path
        self.ipamd_socket = ipamd_socket
        self.log_file = log_file
        self.command = list(command) if command is not None else server_command()
        self.extra_args = list(extra_args)
        self.restarts = 0
        self._stopping = threading.Event()
        self._lock = threading.Lock()  # guards _proc against stop() racing a (re)start
        self._proc: subprocess.Popen[bytes] | None = None
        self._thread: threading.Thread | None = None
        self._warned_taken = False

    @property
    def pid(self) -> int | None:
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    def argv(self) -> list[str]:
        argv = [*self.command, "plugin-server", "--socket", self.socket_path]
        argv += ["--ipamd-socket", self.ipamd_socket]
        if self.log_file is not None:
            argv += ["--log-file", self.log_file]
        return argv + self.extra_args

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="plugin-server", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """SIGTERM the server (it removes its socket), SIGKILL after 5 s; no more restarts."""
        self._stopping.set()
        with self._lock:
            proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(STOP_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                log.warning("plugin server %d still running after SIGTERM: killing it", proc.pid)
                proc.kill()
                proc.wait()
        if self._thread is not None:
            self._thread.join(STOP_GRACE_SECONDS)

    # -- the supervising thread ------------------------------------------------------------
    def _run(self) -> None:
        delay = BACKOFF_FIRST_SECONDS
        while not self._stopping.is_set():
            started = time.monotonic()
            status, output = self._run_once()
            if status is None or self._stopping.is_set():
                return
            ran = time.monotonic() - started
            if ran >= BACKOFF_RESET_AFTER_SECONDS:
                delay = BACKOFF_FIRST_SECONDS
            self._report_exit(status, ran, output, delay)
            self.restarts += 1
            if self._stopping.wait(delay):
                return
            delay = min(delay * 2, BACKOFF_MAX_SECONDS)

    def _run_once(self) -> tuple[int | None, str]:
        """Start one server and wait for it; (exit status, what it wrote to its log file
        meanwhile), or (None, "") when it could not be started or we are stopping."""
        offset = self._log_size()
        with self._lock:
            if self._stopping.is_set():
                return None, ""
            try:
                self._proc = self._spawn()
            except OSError as exc:
                log.error("cannot start the plugin server (%s): %s", self.argv()[0], exc)
                return None, ""
            proc = self._proc
        # Quiet while an orphan holds the socket: one line per retry would be noise.
        log.log(
            logging.DEBUG if self._warned_taken else logging.INFO,
            "plugin server started: pid %d, socket %s",
            proc.pid,
            self.socket_path,
        )
        status = proc.wait()
        return status, self._log_since(offset)

    def _spawn(self) -> subprocess.Popen[bytes]:
        stderr: IO[bytes] | None = None
        if self.log_file is not None:
            # Its start-up errors (printed, not logged) land in its log too.
            os.makedirs(os.path.dirname(self.log_file) or ".", exist_ok=True)
            stderr = open(self.log_file, "ab")
        try:
            # Its own session: a Ctrl-C meant for ipamd's terminal reaches ipamd alone, and
            # ipamd decides when the server stops.
            return subprocess.Popen(
                self.argv(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=stderr, start_new_session=True,
            )  # fmt: skip
        finally:
            if stderr is not None:
                stderr.close()

    def _report_exit(self, status: int, ran: float, output: str, delay: float) -> None:
        if self._taken(status, ran, output):
            if not self._warned_taken:
                self._warned_taken = True
                log.warning(
                    "another plugin server (not ours) listens on %s: retrying, first in %gs",
                    self.socket_path,
                    delay,
                )
            return
        self._warned_taken = False
        log.error(
            "plugin server exited (%s) after %.1fs; restarting in %gs",
            describe_status(status),
            ran,
            delay,
        )

    def _taken(self, status: int, ran: float, output: str) -> bool:
        """Did it exit because another server (not ours) listens on the socket?  The server
        then exits at once with status 1, having said so on stderr: our log file catches
        it; without one (stderr is ipamd's) a probe of the socket stands in.  A server
        killed by a signal never counts: its orphaned children may still answer a probe."""
        if status <= 0 or ran >= QUICK_EXIT_SECONDS:
            return False
        if self.log_file is not None:
            return ANOTHER_SERVER_MARK in output
        return someone_listens(self.socket_path)

    def _log_size(self) -> int:
        try:
            return os.path.getsize(self.log_file) if self.log_file else 0
        except OSError:
            return 0

    def _log_since(self, offset: int) -> str:
        if self.log_file is None:
            return ""
        try:
            with open(self.log_file, "rb") as f:
                f.seek(offset)
                return f.read(65536).decode("utf-8", "replace")
        except OSError:
            return ""
