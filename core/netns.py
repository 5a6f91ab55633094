"""Network-namespace handles for drivers (pyroute2 is imported only here and in drivers).

The pod's handle is a netlink socket created *inside* the pod's namespace: the calling
thread enters it with setns(2) (per thread for network namespaces), creates the socket,
and switches back at once; the socket stays bound to the namespace it was created in.
Nothing forks: pyroute2's own ``IPRoute(netns=...)`` forks a helper process for that
(~11 ms of every ADD and DEL), and forking is also what gRPC's channel threads do not
survive.  The runtime still opens the pod's namespace (:meth:`NetnsHandles.open`) before
it creates the ipamd channel, and drivers use the handles of ``ctx.netns`` instead of
opening their own.

Two kinds of handle per namespace:

* ``pod_rtnl`` / ``host_rtnl``: :class:`vpccni.core.rtnl.Rtnl`, the raw rtnetlink client
  the in-tree plumbing uses (hand-packed, batched messages; no asyncio, no pyroute2);
* ``pod`` / ``host``: pyroute2 ``IPRoute`` objects, public driver API, created LAZILY on
  first use (an ADD that never touches them never pays for pyroute2).  The pod's is a
  socket of its own, made in the namespace :meth:`NetnsHandles.open` opened (through the
  namespace fd it keeps, so it is the same namespace even if the path was unmounted
  meanwhile); raw and pyroute2 handles never share a socket.

NOTE: a missing namespace is never created (pyroute2 creates one unless ``flags=0``): the
path is only ever opened read-only, and a missing or non-namespace path is NetnsGone.
"""

from __future__ import annotations

import errno
import os
import socket
from typing import Any

from vpccni.core.rtnl import Rtnl

CLONE_NEWNET = 0x40000000
NETLINK_ROUTE = 0
#: The calling thread's own namespace (/proc/self is the main thread's, not this one's).
THREAD_NETNS = "/proc/thread-self/ns/net"
#: pyroute2's IPRoute defaults, set on the sockets it creates itself.
SOCKET_BUFFER = 1048576


class NetnsGone(Exception):
    """The namespace path does not exist (any more), or is not a network namespace."""

    def __init__(self, path: str, why: str = "does not exist") -> None:
        super().__init__(f"{path or '(empty)'} {why}")
        self.path = path
        self.why = why


_setns: Any = None


def _libc_setns() -> Any:
    global _setns
    if _setns is None:
        import ctypes  # noqa: PLC0415 - loaded once per process, only by plumbing commands

        libc = ctypes.CDLL(None, use_errno=True)
        func = libc.setns
        func.argtypes = (ctypes.c_int, ctypes.c_int)
        func.restype = ctypes.c_int

        def setns(fd: int, nstype: int) -> None:
            if func(fd, nstype) != 0:
                err = ctypes.get_errno()
                raise OSError(err, os.strerror(err))

        _setns = setns
    return _setns


def setns_or_raise(fd: int, path: str) -> None:
    """Move the calling thread into the network namespace of ``fd`` (opened from
    ``path``, named in the error)."""
    try:
        _libc_setns()(fd, CLONE_NEWNET)
    except OSError as exc:
        raise OSError(exc.errno, f"setns({path}): {exc.strerror}") from None


def _ns_id(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino


def netlink_socket_in(path: str) -> socket.socket:
    """A NETLINK_ROUTE socket living in the network namespace at ``path``.

    The calling thread enters the namespace only for the ``socket()`` call and is always
    switched back (checked against its namespace's inode); if that ever failed, the thread
    would plumb the pod's namespace as if it were the node's, so the process exits at once
    (status 70, a line on stderr) instead.  Errors entering the namespace leave the thread
    where it was."""
    target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)  # never O_CREAT: never creates
    try:
        return netlink_socket_at(target)
    finally:
        os.close(target)


def netlink_socket_at(target: int) -> socket.socket:
    """:func:`netlink_socket_in` for the namespace of an open namespace fd."""
    setns = _libc_setns()
    own = os.open(THREAD_NETNS, os.O_RDONLY | os.O_CLOEXEC)
    try:
        home = _ns_id(os.fstat(own))
        setns(target, CLONE_NEWNET)  # EINVAL: not a network namespace; thread unchanged
        try:
            return socket.socket(
                socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC, NETLINK_ROUTE
            )
        finally:
            _switch_back(setns, own, home)
    finally:
        os.close(own)


def _switch_back(setns: Any, own: int, home: tuple[int, int]) -> None:
    try:
        setns(own, CLONE_NEWNET)
        if _ns_id(os.stat(THREAD_NETNS)) == home:
            return
        why = "the thread's namespace is not its own after setns"
    except OSError as exc:
        why = f"setns back failed: {exc}"
    # Every later netlink call and /proc/sys write of this thread would hit the pod's
    # namespace: no CNI reply is better than plumbing the wrong namespace.
    try:
        os.write(2, f"vpccni: cannot return to the node's network namespace ({why})\n".encode())
    finally:
        os._exit(70)


def _gone(path: str, exc: OSError) -> NetnsGone:
    """The NetnsGone naming why ``path`` gave no usable namespace."""
    if isinstance(exc, FileNotFoundError):
        return NetnsGone(path)
    if exc.errno in (errno.EINVAL, errno.EBADF, errno.ENOTDIR):
        return NetnsGone(path, "is not a network namespace")
    # ENAMETOOLONG, EACCES, EMFILE...: still "no usable namespace here", named with the cause.
    return NetnsGone(path, f"cannot be opened ({exc.strerror or exc})")


def _adopt(sock: socket.socket) -> Any:
    try:
        from pyroute2 import IPRoute  # noqa: PLC0415 - heavy; only drivers that ask pay

        # fileno=: pyroute2 adopts the socket exactly as the one its netns helper would
        # have passed back (same buffers, bind, and close() closes it).
        return IPRoute(fileno=sock.detach())
    except BaseException:
        sock.close()
        raise


def open_netns(path: str) -> Any:
    """An IPRoute bound to the namespace at ``path``; NetnsGone when it does not exist."""
    if not path:
        raise NetnsGone(path)  # pyroute2 would fail with EINVAL, which is not "gone"
    try:
        sock = netlink_socket_in(path)
    except OSError as exc:
        raise _gone(path, exc) from None
    return _adopt(sock)


def open_host() -> Any:
    from pyroute2 import IPRoute  # noqa: PLC0415

    return IPRoute()


class NetnsHandles:
    """The pod's and the host's netlink handles of one invocation; the runtime owns them.

    ``pod_rtnl`` / ``host_rtnl`` are raw :class:`~vpccni.core.rtnl.Rtnl` clients;
    ``pod`` / ``host`` are pyroute2 ``IPRoute`` objects made on first use.  The pod's
    namespace itself (an fd, :attr:`pod_fd`) and its raw socket are opened by
    :meth:`open`, before any RPC; everything else on demand.  :meth:`close` closes
    whatever was opened."""

    def __init__(self, pod_path: str) -> None:
        self.pod_path = pod_path
        self._pod_fd: int | None = None
        self._pod_rtnl: Rtnl | None = None
        self._host_rtnl: Rtnl | None = None
        self._pod: Any = None
        self._host: Any = None

    def open(self, require_pod: bool) -> None:
        """Open the pod's namespace and its raw handle now (before any RPC).  Without
        ``require_pod`` a missing namespace is fine (DEL: the pod may be gone) and
        :attr:`pod_gone` says so."""
        if self._pod_rtnl is not None or not self.pod_path:
            if require_pod and not self.pod_path:
                raise NetnsGone("")
            return
        try:
            self._pod_fd, self._pod_rtnl = _open_pod(self.pod_path)
        except NetnsGone:
            if require_pod:
                raise

    @property
    def pod_gone(self) -> bool:
        return self._pod_rtnl is None

    @property
    def pod_fd(self) -> int:
        """An fd of the pod's namespace (for IFLA_NET_NS_FD and the like); owned here."""
        if self._pod_fd is None:
            raise NetnsGone(self.pod_path)
        return self._pod_fd

    @property
    def pod_rtnl(self) -> Rtnl:
        if self._pod_rtnl is None:
            raise NetnsGone(self.pod_path)
        return self._pod_rtnl

    @property
    def host_rtnl(self) -> Rtnl:
        """The raw handle of the node's namespace (this process's: made by the first
        caller's thread, which the runtime never moves to another namespace)."""
        if self._host_rtnl is None:
            self._host_rtnl = Rtnl.here()
        return self._host_rtnl

    @property
    def pod(self) -> Any:
        if self._pod is None:
            if self._pod_fd is None:
                raise NetnsGone(self.pod_path)
            try:
                sock = netlink_socket_at(self._pod_fd)
            except OSError as exc:
                raise _gone(self.pod_path, exc) from None
            self._pod = _adopt(sock)
        return self._pod

    @property
    def host(self) -> Any:
        if self._host is None:
            self._host = open_host()
        return self._host

    def close(self) -> None:
        for handle in (self._pod, self._host, self._pod_rtnl, self._host_rtnl):
            if handle is not None:
                handle.close()
        if self._pod_fd is not None:
            os.close(self._pod_fd)
        self._pod = self._host = self._pod_rtnl = self._host_rtnl = self._pod_fd = None


def _open_pod(path: str) -> tuple[int, Rtnl]:
    """The pod namespace's fd and a raw handle inside it; NetnsGone when unusable."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)  # never O_CREAT: never creates
    except OSError as exc:
        raise _gone(path, exc) from None
    try:
        return fd, Rtnl(netlink_socket_at(fd))
    except OSError as exc:
        os.close(fd)
        raise _gone(path, exc) from None
    except BaseException:
        os.close(fd)
        raise
