"""Listening sockets inside a network namespace, served from this (root-namespace) process.

A socket belongs to the namespace it was created in, for its whole life, and so do the
connections it accepts. Linux ``setns`` switches only the calling thread, so a short-lived
thread enters the namespace, creates and binds the socket, and ends; the server then runs
in ordinary threads without ever changing namespace. Python 3.11 has no ``os.setns``, so
libc's is called through ctypes. No process is forked (grpc and moto threads stay safe).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import socket
import threading
from collections.abc import Callable
from typing import Any

from werkzeug.serving import BaseWSGIServer
from werkzeug.serving import WSGIRequestHandler
from werkzeug.serving import make_server

CLONE_NEWNET = 0x40000000
NETNS_RUN_DIR = "/var/run/netns"

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def netns_path(netns: str) -> str:
    return netns if netns.startswith("/") else os.path.join(NETNS_RUN_DIR, netns)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def run_in_netns(netns: str, func: Callable[[], Any]) -> Any:
    """Run ``func`` in a throwaway thread that has entered ``netns``; return its result."""
    result: list[Any] = []
    error: list[BaseException] = []

    def worker() -> None:
        # The thread dies after func, so it never has to switch back; a thread that
        # failed to switch back would otherwise leak the namespace to later work.
        try:
            fd = os.open(netns_path(netns), os.O_RDONLY | os.O_CLOEXEC)
            try:
                _setns(fd)
            finally:
                os.close(fd)
            result.append(func())
        except BaseException as exc:  # noqa: BLE001 - handed back to the caller's thread
            error.append(exc)

    t = threading.Thread(target=worker, name=f"netns-{netns}", daemon=True)
    t.start()
    t.join()
    if error:
        raise error[0]
    return result[0]


def bind_listener(netns: str | None, host: str, port: int, backlog: int = 128) -> socket.socket:
    """A TCP listening socket on host:port, created in ``netns`` (None: this namespace)."""

    def make() -> socket.socket:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(backlog)
        except BaseException:
            sock.close()
            raise
        return sock

    return make() if netns is None else run_in_netns(netns, make)


class QuietHandler(WSGIRequestHandler):
    """werkzeug logs every request to stderr by default; the daemon log is not an access log."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass


class WsgiServer:
    """A threaded werkzeug server on a pre-bound socket, running in a background thread."""

    def __init__(self, sock: socket.socket, app: Any, name: str) -> None:
        host, port = sock.getsockname()[:2]
        self.host: str = host
        self.port: int = port
        self.name = name
        # werkzeug dups the descriptor; ours is closed once it has its copy.
        self._server: BaseWSGIServer = make_server(
            host, port, app, threaded=True, request_handler=QuietHandler, fd=sock.fileno()
        )
        sock.close()
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.2}, name=name, daemon=True
        )

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}" if self.port == 80 else f"http://{host}:{self.port}"

    def start(self) -> WsgiServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(timeout=5)
        self._server.server_close()


def serve_wsgi(netns: str | None, host: str, port: int, app: Any, name: str) -> WsgiServer:
    return WsgiServer(bind_listener(netns, host, port), app, name).start()
