"""Network-namespace handles for drivers (pyroute2 is imported only here and in drivers).

NOTE: pyroute2 creates a namespace that does not exist unless ``flags=0`` is passed; a CNI
plugin must never create the pod's namespace, so every open goes through here.
NOTE: pyroute2 0.9 opens a socket in another namespace by forking a helper process, and
gRPC's channel threads do not survive a fork.  The runtime therefore opens the pod's
handle (:meth:`NetnsHandles.open`) before it creates the ipamd channel, and drivers use
``ctx.netns.pod`` / ``ctx.netns.host`` instead of opening their own.
"""

from __future__ import annotations

import errno
from typing import Any


class NetnsGone(Exception):
    """The namespace path does not exist (any more), or is not a network namespace."""

    def __init__(self, path: str, why: str = "does not exist") -> None:
        super().__init__(f"{path or '(empty)'} {why}")
        self.path = path
        self.why = why


def open_netns(path: str) -> Any:
    """An IPRoute bound to the namespace at ``path``; NetnsGone when it does not exist."""
    if not path:
        raise NetnsGone(path)  # pyroute2 would fail with EINVAL, which is not "gone"
    from pyroute2 import IPRoute  # noqa: PLC0415 - heavy; only invocations that plumb pay

    try:
        return IPRoute(netns=path, flags=0)
    except FileNotFoundError:
        raise NetnsGone(path) from None
    except OSError as exc:
        if exc.errno in (errno.EINVAL, errno.EBADF, errno.ENOTDIR):
            raise NetnsGone(path, "is not a network namespace") from None
        # ENAMETOOLONG, EACCES, ...: still "no usable namespace here", named with the cause.
        raise NetnsGone(path, f"cannot be opened ({exc.strerror or exc})") from None


def open_host() -> Any:
    from pyroute2 import IPRoute  # noqa: PLC0415

    return IPRoute()


class NetnsHandles:
    """The pod's and the host's netlink handles of one invocation; the runtime owns them."""

    def __init__(self, pod_path: str) -> None:
        self.pod_path = pod_path
        self._pod: Any = None
        self._host: Any = None

    def open(self, require_pod: bool) -> None:
        """Open the pod's handle now (before any RPC).  Without ``require_pod`` a missing
        namespace is fine (DEL: the pod may be gone) and :attr:`pod_gone` says so."""
        if self._pod is not None or not self.pod_path:
            if require_pod and not self.pod_path:
                raise NetnsGone("")
            return
        try:
            self._pod = open_netns(self.pod_path)
        except NetnsGone:
            if require_pod:
                raise

    @property
    def pod_gone(self) -> bool:
        return self._pod is None

    @property
    def pod(self) -> Any:
        if self._pod is None:
            raise NetnsGone(self.pod_path)
        return self._pod

    @property
    def host(self) -> Any:
        if self._host is None:
            self._host = open_host()
        return self._host

    def close(self) -> None:
        for handle in (self._pod, self._host):
            if handle is not None:
                handle.close()
        self._pod = self._host = None
