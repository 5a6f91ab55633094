"""The simulator's state directory: pid, lock, namespace prefix, status JSON, log, error line.

The CLI and the daemon are different processes; everything they share goes through this
directory, so ``down`` still works after the daemon crashed (the prefix file survives it).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_STATE_DIR = "/run/vpccni-sim"
STATE_DIR_ENV = "VPCCNI_SIM_STATE_DIR"
#: marker looked for in /proc/PID/cmdline before signalling a pid read from a file
DAEMON_MODULE = "vpccni.sim.daemon"


def resolve_state_dir(explicit: str | None) -> Path:
    raw = explicit or os.environ.get(STATE_DIR_ENV) or DEFAULT_STATE_DIR
    return Path(os.path.abspath(raw))


def prefix_for(state_dir: Path) -> str:
    """Namespace/link name prefix derived from the state dir, so two simulators coexist.

    Short on purpose: link names are limited to 15 characters and carry the prefix.
    """
    digest = hashlib.sha1(str(state_dir).encode(), usedforsecurity=False).hexdigest()
    return "vs" + digest[:4]


@dataclass(frozen=True)
class StateDir:
    path: Path

    @classmethod
    def resolve(cls, explicit: str | None = None) -> StateDir:
        return cls(resolve_state_dir(explicit))

    @property
    def pid_file(self) -> Path:
        return self.path / "daemon.pid"

    @property
    def lock_file(self) -> Path:
        return self.path / "daemon.lock"

    @property
    def status_file(self) -> Path:
        return self.path / "status.json"

    @property
    def prefix_file(self) -> Path:
        return self.path / "prefix"

    @property
    def error_file(self) -> Path:
        return self.path / "error"

    @property
    def log_file(self) -> Path:
        return self.path / "daemon.log"

    @property
    def prefix(self) -> str:
        """The recorded prefix if any (it is what the namespaces were named with), else derived."""
        try:
            recorded = self.prefix_file.read_text().strip()
        except FileNotFoundError:
            recorded = ""
        return recorded or prefix_for(self.path)

    def ensure(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True, mode=0o755)

    # -- status -------------------------------------------------------------

    def write_status(self, status: dict[str, Any]) -> None:
        write_atomic(self.status_file, json.dumps(status, indent=2, sort_keys=False) + "\n")

    def read_status(self) -> dict[str, Any] | None:
        try:
            data: dict[str, Any] = json.loads(self.status_file.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        return data

    # -- pid ----------------------------------------------------------------

    def read_pid(self) -> int | None:
        try:
            return int(self.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    def running_pid(self) -> int | None:
        """The daemon's pid when it is alive and really our daemon (pids get reused)."""
        pid = self.read_pid()
        if pid is None or not is_daemon_process(pid, self.path):
            return None
        return pid

    def clear_runtime_files(self) -> None:
        for f in (self.pid_file, self.status_file, self.error_file):
            with contextlib.suppress(FileNotFoundError):
                f.unlink()


class DaemonLock:
    """An exclusive flock held for the daemon's whole life; the kernel drops it on a crash."""

    def __init__(self, state: StateDir) -> None:
        self._path = state.lock_file
        self._fd: int | None = None

    def acquire(self) -> bool:
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def is_locked(state: StateDir) -> bool:
    lock = DaemonLock(state)
    if not state.lock_file.exists():
        return False
    if lock.acquire():
        lock.release()
        return False
    return True


def is_daemon_process(pid: int, state_path: Path) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return False
    args = [a.decode(errors="replace") for a in cmdline]
    return any(DAEMON_MODULE in a for a in args) and str(state_path) in args


def stop_process(pid: int, timeout: float = 15.0) -> bool:
    """SIGTERM, wait, then SIGKILL. True when the process is gone."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return False


def _alive(pid: int) -> bool:
    # A zombie child of ours still "exists"; reap it if it is ours, then check /proc.
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    # field 3 is the state; Z = zombie (exited, parent not reaped: not running any more)
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def write_atomic(path: Path, text: str) -> None:
    # pid and thread in the name: the daemon's main and reconcile threads may both write
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
