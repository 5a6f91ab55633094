"""The plugin fork-server ("zygote"): a pod's ADD/DEL without paying for imports.

About 80% of an exec'd ADD is Python importing pyroute2, jsonschema, grpc, protobuf,
stevedore and our runtime.  ``vpccni plugin-server --socket PATH`` imports all of it once
and forks a child per request; the launcher ``vpccni install-cni`` writes hands its
invocation (argv, environment, cwd, umask, stdin/stdout/stderr descriptors) to the server
and waits for the exit status.  Protocol and safety properties: docs/plugin-server.md.

This module has two halves:

* the **client** (:func:`launch`), run by the launcher before anything else (mirrored in
  C by ``cli/native/launcher.c``, the native launcher: change both; the tests compare
  them).  It is loaded by file path (no ``vpccni`` package import, no site) and must
  stay cheap: module-level imports are builtins only (``_socket``, ``posix``, ``sys``),
  nothing that imports ``os``, ``socket`` or ``json``.  It returns None whenever the
  server has not *committed* to the request, and the launcher then runs the command
  in-process exactly as without a server; correctness never depends on the server.
* the **server** (:func:`serve`), whose imports are all inside functions for that reason.

Wire protocol (one unix stream connection per invocation, version 1)::

    launcher -> server  u32 length + payload, with SCM_RIGHTS [stdin, stdout, stderr]
                        payload: NUL-separated b"vpccni-zygote/1", netns "dev:ino", umask,
                        cwd, argc, argv..., then every "KEY=VALUE" of the environment
    child -> launcher   b"ready\\n"  (request checked, cwd/umask/netns fine, nothing run)
                     or b"refuse <why>\\n"                         -> launcher falls back
    launcher -> child   b"go\\n"     (the launcher commits; closing instead = fall back)
    child -> launcher   b"exit <status> <n>\\n" + n bytes of the command's stdout

The two-step ready/go makes the decision "server or in-process" the launcher's alone: a
child only runs once it has read ``go``, and a launcher that timed out closes the
connection instead, so a command can never run twice.  The command's stdout travels back
over the socket and the launcher writes it, so the launcher knows for certain whether
anything reached stdout: a connection lost after ``go`` and before the whole reply means
nothing was written, and the launcher prints its own CNI error (999) and exits 1.
"""

from __future__ import annotations

import _socket
import posix
import sys

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: the launcher must not import typing

if TYPE_CHECKING:
    import io
    from collections.abc import Sequence
    from typing import Any

#: Where `vpccni install-cni` points launchers by default, and the server listens.
DEFAULT_SOCKET = "/run/vpccni/plugin.sock"
#: Overrides the socket baked into the launcher; empty = never use a server (tests, bench).
SOCKET_ENV = "VPCCNI_PLUGIN_SERVER_SOCKET"
MAGIC = b"vpccni-zygote/1"
#: Connect + the child's "ready": beyond this the launcher runs the command itself.  A late
#: child then reads EOF instead of "go" and exits without running anything.
PRESTART_TIMEOUT_S = 3.0
#: How long a child waits for a request and for "go" (a stuck launcher must not pin it).
CHILD_HANDSHAKE_TIMEOUT_S = 10.0
MAX_REQUEST = 1 << 20
#: Children kept forked and waiting in accept(): a request never waits for a fork.
IDLE_CHILDREN = 2
#: Children alive at once (idle + serving).  At the limit no child is forked until one
#: ends; new connections wait in the listen backlog (a launcher gives up after
#: PRESTART_TIMEOUT_S and runs the command itself).
MAX_CHILDREN = 256
NETNS_PATH = "/proc/self/ns/net"
#: In the plugin's environment: the child writes a cProfile of the command to "<value>.<pid>".
PROFILE_ENV = "VPCCNI_PROFILE"


# ------------------------------------------------------------------------------ client


def launch(default_socket: str) -> int | None:
    """Run this process's CNI invocation in the plugin server: the exit status, or None
    when the caller must run it in-process (VERSION, no server, refused, too slow, ...)."""
    environ = posix.environ
    if environ.get(b"CNI_COMMAND") == b"VERSION":
        return None  # answered in-process from constants: faster than a round trip
    path = environ.get(SOCKET_ENV.encode(), default_socket.encode())
    if not path:
        return None
    try:
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    except OSError:
        return None
    committed = False
    try:
        sock.settimeout(PRESTART_TIMEOUT_S)
        sock.connect(path)
        payload = _request(environ)
        frame = len(payload).to_bytes(4, "big") + payload
        fds = b"".join(fd.to_bytes(4, sys.byteorder) for fd in (0, 1, 2))
        sent = sock.sendmsg([frame], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, fds)])
        if sent < len(frame):
            sock.sendall(frame[sent:])
        reader = _LineReader(sock)
        if reader.line() != b"ready":
            return None  # refused (wrong netns, ...) or closed before anything ran
        sock.sendall(b"go\n")
        committed = True
        sock.settimeout(None)  # the child has its own deadline (VPCCNI_PLUGIN_TIMEOUT_SECONDS)
        word, status, size = reader.line().split(b" ")
        if word != b"exit":
            raise ValueError(f"unexpected reply {word!r}")
        body = reader.exactly(int(size))
    except Exception as exc:  # noqa: BLE001 - before "go": fall back; after: a CNI error
        sock.close()
        if not committed:
            return None
        return _server_failed(path, exc)
    sock.close()
    view = memoryview(body)
    while view:
        view = view[posix.write(1, view) :]
    return int(status)


def _request(environ: dict[bytes, bytes]) -> bytes:
    st = posix.stat(NETNS_PATH)
    umask = posix.umask(0)
    posix.umask(umask)
    argv = [a.encode("utf-8", "surrogateescape") for a in sys.argv]
    fields = [
        MAGIC,
        b"%d:%d" % (st.st_dev, st.st_ino),
        b"%d" % umask,
        posix.getcwdb(),
        b"%d" % len(argv),
        *argv,
        *(k + b"=" + v for k, v in environ.items()),
    ]
    return b"\0".join(fields)


class _LineReader:
    def __init__(self, sock: Any) -> None:
        self.sock = sock
        self.buf = b""

    def _more(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError("the plugin server closed the connection")
        self.buf += chunk

    def line(self) -> bytes:
        while b"\n" not in self.buf:
            if len(self.buf) > 4096:
                raise ValueError("reply line too long")
            self._more()
        line, _, self.buf = self.buf.partition(b"\n")
        return line

    def exactly(self, size: int) -> bytes:
        while len(self.buf) < size:
            self._more()
        body, self.buf = self.buf[:size], self.buf[size:]
        return body


def _server_failed(path: bytes, exc: BaseException) -> int:
    """The server took the request and then vanished: nothing reached stdout, so the one
    JSON document is ours.  Exit 1, no traceback (the runtime retries the command)."""
    import json  # noqa: PLC0415 - error path only

    reply = {
        "cniVersion": _latest_version(),
        "code": 999,
        "msg": "plugin server failed",
        "details": f"the plugin server at {path.decode(errors='replace')} lost the "
        f"invocation after accepting it ({exc}); the command may have partly run",
    }
    posix.write(1, (json.dumps(reply) + "\n").encode())
    return 1


def _latest_version() -> str:
    # The launcher has not set up sys.path for the vpccni package (that costs ~11 ms for an
    # editable install): read our version table from the file next to this one.
    try:
        from importlib.machinery import SourceFileLoader  # noqa: PLC0415

        version = type(sys)("vpccni.core.version")
        here = __file__.rpartition("/")[0]
        SourceFileLoader(version.__name__, f"{here}/version.py").exec_module(version)
        latest: str = version.SUPPORTED[-1]
        return latest
    except Exception:  # noqa: BLE001 - a CNI error with some version beats none
        return "1.1.0"


# ------------------------------------------------------------------------------ server

#: Imported by the server before it forks anything: what one ADD/DEL/CHECK would import.
PRELOAD: tuple[str, ...] = (
    "json",
    "logging",
    "logging.handlers",
    "traceback",
    "signal",
    "vpccni.core.cli",
    "vpccni.core.dispatch",
    "vpccni.core.commands",
    "vpccni.core.netconf",
    "vpccni.core.logsetup",
    "vpccni.core.plugins",
    "vpccni.core.builtin_plugins",
    "vpccni.core.hookspecs",
    "vpccni.core.registry",
    "vpccni.core.store",
    "vpccni.core.names",
    "vpccni.core.netns",
    "vpccni.core.rtnl",
    "vpccni.core.podnet",
    "vpccni.core.ipam_fake",
    "vpccni.core.ipam_grpc",
    "vpccni.conf",
    "jsonschema",
    "pluggy",
    "stevedore",
    "stevedore.driver",
    "grpc",
    # Imported lazily by grpc.insecure_channel (~5 ms of every child otherwise).
    "grpc._channel",
    "grpc._simple_stubs",
    "grpc.experimental",
    "google.protobuf",
    "pyroute2",
    "pyroute2.iproute.linux",
    "pyroute2.netlink.rtnl.ifinfmsg",
    "pyroute2.netlink.rtnl.rtmsg",
    "pyroute2.netlink.rtnl.fibmsg",
    "pyroute2.netlink.rtnl.ndmsg",
    "pyroute2.netlink.rtnl.ifaddrmsg",
    "pyroute2.nslink.nspopen",
    "pyroute2.netns",
)


def preload(log: Any) -> list[str]:
    """Import the plugin runtime and warm its pure-Python caches (schema validators, the
    in-tree drivers' entry points).  Opens no socket, starts no thread.  Returns the
    modules that could not be imported (logged; a child imports them itself if needed)."""
    import importlib  # noqa: PLC0415
    from importlib import metadata  # noqa: PLC0415

    missing = []
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - optional speed-up, never fatal
            log.warning("preload %s: %r", name, exc)
            missing.append(name)
    from vpccni import conf  # noqa: PLC0415
    from vpccni.core import netconf  # noqa: PLC0415
    from vpccni.core import registry  # noqa: PLC0415

    for schema in ("netconf", netconf.DEFAULT_TYPE_SCHEMA, *netconf.TYPE_SCHEMAS.values()):
        try:
            _compile_patterns(conf.schema(schema))
            netconf._validator(schema)  # functools.cache: children inherit the built validator
        except Exception as exc:  # noqa: BLE001
            log.warning("preload schema %s: %r", schema, exc)
    # Only in-tree entry points: third-party driver code is not run in a long-lived root
    # process (a child still loads it by name, exactly as an exec'd plugin would).
    for group in (registry.DRIVERS_GROUP, registry.PLUGINS_GROUP):
        for ep in metadata.entry_points(group=group):
            if ep.value.startswith("vpccni."):
                try:
                    loaded = registry._load(group, ep.name)
                    section_schema = getattr(getattr(loaded, "info", None), "conf_schema", None)
                    if section_schema is not None:
                        _compile_patterns(section_schema)
                        netconf.driver_validator(section_schema)
                except Exception as exc:  # noqa: BLE001
                    log.warning("preload %s %s: %r", group, ep.name, exc)
    _compile_netlink_tables(log)
    from vpccni.core import netns  # noqa: PLC0415

    try:
        netns._libc_setns()  # dlopen + ctypes prototype only: no syscall, no thread
    except Exception as exc:  # noqa: BLE001
        log.warning("preload setns: %r", exc)
    return missing


def _compile_patterns(schema: Any) -> None:
    """Compile every regular expression of a JSON Schema into the ``re`` module's cache:
    jsonschema's ``pattern`` keyword calls ``re.search(pattern, ...)``, which otherwise
    compiles each pattern again in every child (~1 ms of a served ADD)."""
    import re  # noqa: PLC0415

    if isinstance(schema, dict):
        for key, value in schema.items():
            if key == "pattern" and isinstance(value, str):
                re.compile(value)
            elif key == "patternProperties" and isinstance(value, dict):
                for pattern in value:
                    re.compile(pattern)
            _compile_patterns(value)
    elif isinstance(schema, list):
        for item in schema:
            _compile_patterns(item)


#: pyroute2 message classes the drivers send and receive (links, addresses, routes, rules,
#: neighbours).
NETLINK_MESSAGES = (
    "pyroute2.netlink.rtnl.ifinfmsg:ifinfmsg",
    "pyroute2.netlink.rtnl.ifaddrmsg:ifaddrmsg",
    "pyroute2.netlink.rtnl.rtmsg:rtmsg",
    "pyroute2.netlink.rtnl.fibmsg:fibmsg",
    "pyroute2.netlink.rtnl.ndmsg:ndmsg",
)


def _compile_netlink_tables(log: Any) -> None:
    """pyroute2 compiles each message class's attribute table on its first instance, per
    class: ~25 ms of a fresh process's first ADD.  Done here, every fork inherits it.
    Pure Python (class attributes); no socket is opened."""
    import importlib  # noqa: PLC0415

    seen: set[type] = set()

    def walk(cls: type) -> None:
        if cls in seen:
            return
        seen.add(cls)
        try:
            cls()
        except Exception:  # noqa: BLE001 - a class that needs arguments: skip it
            return
        table = getattr(cls, "_nla_base__t_nla_map", None)
        for prime in table.values() if isinstance(table, dict) else ():
            sub = prime.get("class") if isinstance(prime, dict) else None
            if isinstance(sub, type):
                walk(sub)

    for spec in NETLINK_MESSAGES:
        module, _, name = spec.partition(":")
        try:
            walk(getattr(importlib.import_module(module), name))
        except Exception as exc:  # noqa: BLE001 - optional speed-up
            log.warning("netlink tables %s: %r", spec, exc)
    log.debug("compiled %d netlink attribute tables", len(seen))


def thread_count() -> int:
    import os  # noqa: PLC0415

    return len(os.listdir("/proc/self/task"))


class ServerError(Exception):
    """The server cannot start (another one listens, unsafe to fork, ...)."""


def bind(path: str) -> Any:
    """A listening socket at ``path``, mode 0600, appearing atomically (bound under a
    temporary name, then renamed): a launcher never connects to a half-made server."""
    import os  # noqa: PLC0415
    import socket  # noqa: PLC0415

    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        pass  # nothing there, or a stale file a dead server left: ours to replace
    else:
        raise ServerError(f"{path}: another plugin server is listening there")
    finally:
        probe.close()
    os.makedirs(os.path.dirname(path) or ".", mode=0o755, exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with _suppress_missing():
        os.unlink(tmp)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)  # created 0600: no window in which others could connect
    try:
        listener.bind(tmp)
    finally:
        os.umask(old)
    os.chmod(tmp, 0o600)
    listener.listen(128)
    os.rename(tmp, path)
    return listener


class _suppress_missing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, exc: Any, tb: Any) -> bool:
        return kind is not None and issubclass(kind, FileNotFoundError)


def serve(
    path: str,
    log: Any,
    *,
    ready: Any = None,
    idle: int = IDLE_CHILDREN,
    ipamd_socket: str | None = None,
) -> int:
    """Preload, listen on ``path`` and keep ``idle`` forked children waiting in accept()
    until SIGTERM/SIGINT.  A child serves one request and exits; the server forks its
    replacement as soon as the child reports it took a connection, so no request waits
    for a fork.  ``ipamd_socket``: the ipamd socket idle children connect to ahead of
    their request (default: the one the last request's configuration named)."""
    import gc  # noqa: PLC0415
    import os  # noqa: PLC0415
    import select  # noqa: PLC0415
    import signal  # noqa: PLC0415

    preload(log)
    # The collector writes to every object it visits: a collection in a child would
    # copy-on-write the whole inherited heap (~25 ms measured).  Frozen objects are never
    # visited; what a child allocates is still collected.
    gc.collect()
    gc.freeze()
    threads = thread_count()
    if threads != 1:
        # A fork copies only the calling thread: locks other threads hold stay locked.
        raise ServerError(f"{threads} threads after preloading: forking would be unsafe")
    listener = bind(path)
    inode = os.stat(path).st_ino
    netns = os.stat(NETNS_PATH)
    log.info(
        "plugin server pid %d listening on %s (netns %d:%d), %d idle children",
        os.getpid(),
        path,
        netns.st_dev,
        netns.st_ino,
        idle,
    )
    # Children tell the server "took a connection" and "the ipamd socket I used" here.
    events_r, events_w = os.pipe2(os.O_CLOEXEC)
    os.set_blocking(events_r, False)  # read whenever the loop turns, not only after select
    # Signals wake the loop at once (SIGCHLD: respawn; SIGTERM: stop).
    wake_r, wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
    waiting: set[int] = set()  # forked, not yet reported a connection
    busy: set[int] = set()
    exited: list[tuple[int, int]] = []
    stopping: list[int] = []
    learned = [ipamd_socket]
    parent = os.getpid()

    def reap(_signum: int, _frame: Any) -> None:
        # No logging here: a signal handler may interrupt logging itself.
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            exited.append((pid, status))

    def stop(signum: int, _frame: Any) -> None:
        stopping.append(signum)

    def spawn() -> bool:
        try:
            pid = os.fork()
        except OSError as exc:
            log.error("fork failed: %r", exc)
            return False
        if pid == 0:
            signal.set_wakeup_fd(-1)  # before closing it: the fd number gets reused
            os.close(events_r)
            os.close(wake_r)
            os.close(wake_w)
            _idle_child(listener, events_w, log, parent, learned[0])  # never returns
        waiting.add(pid)
        return True

    signal.signal(signal.SIGCHLD, reap)
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    old_wakeup = signal.set_wakeup_fd(wake_w)
    pending = [b""]

    def read_events() -> None:
        try:
            pending[0] += os.read(events_r, 65536)
        except BlockingIOError:
            return
        *lines, pending[0] = pending[0].split(b"\n")
        for line in lines:
            kind, value = line[:1], line[1:]
            if kind == b"T" and int(value) in waiting:
                waiting.discard(int(value))
                busy.add(int(value))
            elif kind == b"I":
                learned[0] = value.decode("utf-8", "surrogateescape")

    if ready is not None:
        ready()
    try:
        while not stopping:
            # Before the exits: a child that took a request and already ended must count
            # as serving, not as an idle child that died.
            read_events()
            idle_deaths = 0
            while exited:
                pid, status = exited.pop()
                if pid in waiting:
                    idle_deaths += 1
                    waiting.discard(pid)
                    log.warning("idle child %d ended: wait status %#x", pid, status)
                else:
                    busy.discard(pid)
                    if status != 0:
                        log.warning("child %d ended abnormally: wait status %#x", pid, status)
            if not idle_deaths:
                # Children dying before any request: do not fork in a tight loop.
                while len(waiting) < idle and len(waiting) + len(busy) < MAX_CHILDREN:
                    if not spawn():
                        break  # fork failed (logged): again on the next turn, not in a loop
            ready_fds, _, _ = select.select([events_r, wake_r], [], [], 0.5)
            if wake_r in ready_fds:
                _drain(wake_r)
            if events_r in ready_fds:
                read_events()
    finally:
        signal.set_wakeup_fd(old_wakeup)
        try:
            if os.stat(path).st_ino == inode:  # still ours: a newer server may own the path
                os.unlink(path)
        except OSError:
            pass
        # Wakes every child blocked in accept() (EINVAL): idle children exit; a child that
        # already took a connection finishes its request alone.
        with _suppress_missing():
            listener.shutdown(2)  # SHUT_RDWR
        listener.close()
        log.info("plugin server stopped; %d requests still running finish alone", len(busy))
    return 0


def _drain(fd: int) -> None:
    import os  # noqa: PLC0415

    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass


PR_SET_PDEATHSIG = 1


def _idle_child(listener: Any, events: int, log: Any, parent: int, ipamd: str | None) -> None:
    """A fork waiting for one connection.  Never returns: os._exit."""
    import os  # noqa: PLC0415
    import signal  # noqa: PLC0415

    try:
        # A fresh interpreter's signal dispositions, before anything can fork or wait.
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        # While idle, die with the server: an orphan would keep the socket answering (and a
        # restarted server would find it "in use").  Cleared once a request is taken.
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:
            os._exit(0)
        if ipamd and os.path.exists(ipamd):
            try:
                from vpccni.core import ipam_grpc  # noqa: PLC0415

                ipam_grpc.prepare_channel(ipamd)
            except Exception as exc:  # noqa: BLE001 - a speed-up only: serve without it
                log.warning("idle child: no ipamd channel prepared: %r", exc)
        listener.settimeout(None)
        while True:
            try:
                conn, _ = listener.accept()
                break
            except InterruptedError:
                continue
            except OSError:
                os._exit(0)  # the server shut the listener down: stopping
        _prctl(PR_SET_PDEATHSIG, 0)
        os.write(events, b"T%d\n" % os.getpid())
    except BaseException as exc:  # noqa: BLE001
        try:
            log.error("idle child failed: %r", exc)
        finally:
            os._exit(70)
    _child(conn, listener, log, events)


def _prctl(option: int, value: int) -> None:
    import ctypes  # noqa: PLC0415 - preloaded by netns._libc_setns in the server

    if ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl")


def _child(conn: Any, listener: Any, log: Any, events: int) -> None:
    """One request, in a fork of the server that took it.  Never returns: os._exit."""
    import fcntl  # noqa: PLC0415
    import os  # noqa: PLC0415

    code = 0
    try:
        listener.close()
        conn.settimeout(CHILD_HANDSHAKE_TIMEOUT_S)
        request = _receive(conn)
        if request is None:
            return
        fds, argv, env, cwd, umask, why = request
        if why is None:
            try:
                os.chdir(cwd)
            except OSError as exc:
                why = f"cannot enter the launcher's cwd: {exc.strerror}"
        if why is not None:
            log.warning("refused a request: %s", why)
            for fd in fds:
                os.close(fd)
            conn.sendall(b"refuse " + why.encode("utf-8", "replace") + b"\n")
            return
        # Everything that can fail is done before "ready": after "go" the launcher has
        # committed and a failure is a CNI error instead of a fallback.
        os.umask(umask)
        # Out of 0-2 first: a server started with a closed std fd receives one there.
        moved = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3) for fd in fds]
        for fd in fds:
            os.close(fd)
        for target, fd in enumerate(moved):
            os.dup2(fd, target)  # subprocesses the command starts inherit them, as exec'd
            os.close(fd)
        out = _become(argv, env)
        conn.sendall(b"ready\n")
        if _read_line(conn) != b"go":
            return  # the launcher gave up waiting and runs the command itself
        conn.settimeout(None)
        preloaded = set(sys.modules) if log.isEnabledFor(10) else None  # 10: DEBUG
        status, stdout = _run(out)
        _report_ipamd_socket(events)
        if preloaded is not None:
            # What PRELOAD misses (each costs every request): the list to extend.
            late = sorted(set(sys.modules) - preloaded)
            log.debug("imported after the fork: %s", " ".join(late) or "nothing")
        for fd in (0, 1, 2):
            # Before the reply: once the launcher exits, the runtime's pipes reach EOF.
            os.close(fd)
        try:
            conn.sendall(b"exit %d %d\n" % (status, len(stdout)) + stdout)
        except OSError:
            pass  # the launcher is gone; the runtime retries the command anyway
    except BaseException as exc:  # noqa: BLE001
        code = 70
        try:
            log.error("child failed: %r", exc)
        except BaseException:  # noqa: BLE001
            pass
    finally:
        os._exit(code)


def _report_ipamd_socket(events: int) -> None:
    """Tell the server which ipamd socket this request's configuration named, so its next
    idle children connect there ahead of their request."""
    import os  # noqa: PLC0415

    ipam_grpc = sys.modules.get("vpccni.core.ipam_grpc")
    used = getattr(ipam_grpc, "last_socket", None)
    if used and len(used) < 1024 and "\n" not in used:
        try:
            os.write(events, b"I" + used.encode("utf-8", "surrogateescape") + b"\n")
        except OSError:
            pass  # the server is gone: nothing to learn


def _receive(conn: Any) -> tuple[list[int], list[bytes], dict[bytes, bytes], bytes, int,
                                  str | None] | None:  # fmt: skip
    """(fds, argv, env, cwd, umask, refusal or None), or None for a broken request."""
    import os  # noqa: PLC0415
    import socket  # noqa: PLC0415
    import struct  # noqa: PLC0415

    data, fds, _flags, _addr = socket.recv_fds(conn, 65536, 3)
    if not data and not fds:
        return None  # connected and closed: a liveness probe, not a broken launcher
    try:
        while len(data) < 4 or len(data) < 4 + int.from_bytes(data[:4], "big"):
            if len(data) >= 4 and int.from_bytes(data[:4], "big") > MAX_REQUEST:
                raise ValueError("request too large")
            chunk = conn.recv(65536)
            if not chunk:
                raise EOFError("launcher closed the connection mid-request")
            data += chunk
        fields = data[4 : 4 + int.from_bytes(data[:4], "big")].split(b"\0")
        if fields[0] != MAGIC:
            conn.sendall(b"refuse protocol " + fields[0][:40] + b"\n")
            raise ValueError(f"protocol {fields[0][:40]!r}")
        if len(fds) != 3:
            raise ValueError(f"{len(fds)} file descriptors instead of 3")
        netns, umask, cwd, argc = fields[1], int(fields[2]), fields[3], int(fields[4])
        argv = fields[5 : 5 + argc]
        env: dict[bytes, bytes] = {}
        for item in fields[5 + argc :]:
            key, sep, value = item.partition(b"=")
            if sep:
                env[key] = value
    except Exception:
        for fd in fds:
            os.close(fd)
        raise
    why = None
    cred = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", cred)
    if uid not in (0, os.geteuid()):
        why = f"uid {uid} may not run CNI commands"
    mine = os.stat(NETNS_PATH)
    if netns != b"%d:%d" % (mine.st_dev, mine.st_ino):
        # Plumbing is done in the namespace the child runs in: never on another node's.
        why = (
            f"the launcher's network namespace ({netns.decode(errors='replace')}) is not "
            f"the server's ({mine.st_dev}:{mine.st_ino})"
        )
    return fds, argv, env, cwd, umask, why


def _read_line(conn: Any) -> bytes:
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = conn.recv(1)
        if not chunk:
            return b""
        buf += chunk
    return buf[:-1]


def _become(argv: Sequence[bytes], env: dict[bytes, bytes]) -> io.StringIO:
    """Turn this fork into the exec'd launcher: its environment (only it), argv and std
    streams.  Returns the buffer standing in for stdout (sent back in the reply)."""
    import io  # noqa: PLC0415
    import os  # noqa: PLC0415

    os.environb.clear()  # putenv/unsetenv too: subprocesses see exactly this environment
    os.environb.update(env)
    sys.argv = [os.fsdecode(a) for a in argv]
    sys.stdin = open(0, closefd=False)  # cli.main reads sys.stdin.buffer
    sys.stderr = open(2, "w", buffering=1, closefd=False, errors="backslashreplace")
    out = io.StringIO()
    sys.stdout = out
    return out


def _run(out: io.StringIO) -> tuple[int, bytes]:
    """The launcher's ``sys.exit(vpccni.core.cli.main())``, in this process: (exit status,
    what the command wrote to stdout)."""
    import os  # noqa: PLC0415
    import traceback  # noqa: PLC0415

    from vpccni.core import cli  # noqa: PLC0415

    profile = os.environ.get(PROFILE_ENV)
    profiler = None
    if profile:
        # Diagnostics only (bench/pod_add_del.py --profile): the command's own time, per
        # function, in pstats format; one file per child.
        import cProfile  # noqa: PLC0415

        profiler = cProfile.Profile()
        profiler.enable()
    try:
        status = cli.main()
    except SystemExit as exc:
        status = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if not isinstance(exc.code, int) and exc.code is not None:
            print(exc.code, file=sys.stderr)
    except BaseException:  # noqa: BLE001 - as the interpreter would: traceback, status 1
        traceback.print_exc(file=sys.stderr)
        status = 1
    if profiler is not None:
        profiler.disable()
        try:
            profiler.dump_stats(f"{profile}.{os.getpid()}")
        except OSError:
            pass
    try:
        sys.stderr.flush()
    except OSError:
        pass
    return status, out.getvalue().encode("utf-8", "surrogateescape")
