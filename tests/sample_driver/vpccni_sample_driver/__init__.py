"""sample-dummy: a third-party vpccni attachment driver, the worked example of
docs/writing-a-driver.md.

The pod gets one link named ``CNI_IFNAME`` in its network namespace carrying the
addresses ipamd allocated (``/32`` for IPv4, ``/128`` for IPv6).  No host side, no routes:
just enough to show the shape every attachment driver has - a schema for its conf section,
steps with undo, an idempotent delete that survives a vanished namespace, and a check that
names the missing piece.

It imports only vpccni's public API: ``vpccni.core.driver_api``, ``vpccni.core.ipam``
(types), ``vpccni.core.result`` and ``vpccni.core.errors``; the pod's namespace handle
comes from the runtime as ``ctx.netns``.
"""

from __future__ import annotations

import errno
from typing import Any
from typing import ClassVar

from vpccni.core import errors
from vpccni.core.driver_api import DriverContext
from vpccni.core.driver_api import DriverInfo
from vpccni.core.ipam import Allocation
from vpccni.core.result import Interface
from vpccni.core.result import IPConfig
from vpccni.core.result import Result

__all__ = ["NAME", "SampleDummyDriver"]

#: The entry-point name in pyproject.toml; everything else refers to the driver by it.
NAME = "sample-dummy"
#: Link kinds this driver creates.  "dummy" is the natural one; "bridge" (with no ports)
#: carries addresses the same way and exists on kernels built without CONFIG_DUMMY.
LINK_KINDS = ("dummy", "bridge")
#: errno values that mean "already gone" when deleting.
_GONE = {errno.ENODEV, errno.ENOENT, errno.ESRCH}
_IFF_UP = 0x1


def _errno(exc: BaseException) -> int | None:
    # pyroute2's NetlinkError carries the errno in ``code``; OSError in ``errno``.
    code = getattr(exc, "code", None)
    return code if isinstance(code, int) else getattr(exc, "errno", None)


def _kind(link: Any) -> str | None:
    kind = link.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND")
    return str(kind) if kind is not None else None


def _prefixlen(family: int) -> int:
    return 32 if family == 4 else 128


class SampleDummyDriver:
    """Attachment driver ``sample-dummy`` (see the module docstring)."""

    info: ClassVar[DriverInfo] = DriverInfo(
        name=NAME,
        kind="attachment",
        families=frozenset({4, 6}),
        # Validates the section `drivers.sample-dummy` of the plugin configuration; the
        # core reports a violation as code 7 with the path `$.drivers.sample-dummy.<field>`.
        conf_schema={
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "linkKind": {"enum": list(LINK_KINDS)},
                "mtu": {"type": "integer", "minimum": 68, "maximum": 65535},
                # Fault injection, to watch the core unwind this driver's undo steps.
                "failAfterLink": {"type": "boolean"},
            },
        },
        summary="the pod's addresses on a dummy link in its namespace (sample third-party driver)",
    )

    # -- ADD -----------------------------------------------------------------------
    def add(self, ctx: DriverContext, allocation: Allocation) -> Result:
        if not allocation.addresses:
            raise errors.CniError(
                errors.PluginCode.IPAMD_PROTOCOL, "ipamd returned no address", allocation.key.slug()
            )
        netns = ctx.invocation.netns
        ifname = ctx.key.ifname
        kind = str(ctx.section.get("linkKind", "dummy"))
        mtu = ctx.section.get("mtu")
        # The runtime opened the pod's namespace before it called ipamd (pyroute2 forks to
        # enter a namespace, gRPC does not survive a fork): use its handle, never open one.
        pod = ctx.netns.pod
        existing = pod.link_lookup(ifname=ifname)
        if existing:
            if _kind(pod.get_links(existing[0])[0]) not in LINK_KINDS:
                # Not ours: another plugin's interface.  Never delete it.
                raise errors.CniError(
                    errors.PluginCode.NETNS_PLUMBING_FAILED,
                    "add: the interface name is taken",
                    f"{ifname} already exists in {netns} and is not a {NAME} link",
                )
            # A retried ADD of this attachment: start from scratch.
            pod.link("del", index=existing[0])
        pod.link("add", ifname=ifname, kind=kind)
        # Right after the step that creates something: its compensation.  The core
        # runs it (and releases the address) if anything later in ADD fails.
        ctx.undo.push(f"delete {kind} link {ifname}", lambda: self._delete_link(pod, ifname))
        if ctx.section.get("failAfterLink"):
            raise RuntimeError(f"injected failure after creating {ifname}")
        index = pod.link_lookup(ifname=ifname)[0]
        if mtu is not None:
            pod.link("set", index=index, mtu=int(mtu))
        pod.link("set", index=index, state="up")
        for assignment in allocation.addresses:
            pod.addr(
                "add",
                index=index,
                address=assignment.address,
                prefixlen=_prefixlen(assignment.family),
            )
        mac = str(pod.get_links(index)[0].get_attr("IFLA_ADDRESS") or "")
        ctx.log.info(
            "%s link %s in %s carries %d address(es)",
            kind,
            ifname,
            netns,
            len(allocation.addresses),
        )
        return Result(
            interfaces=(Interface(name=ifname, mac=mac, sandbox=netns),),
            ips=tuple(
                IPConfig(address=f"{a.address}/{_prefixlen(a.family)}", interface=0)
                for a in allocation.addresses
            ),
        )

    # -- DEL -----------------------------------------------------------------------
    def delete(
        self, ctx: DriverContext, allocation: Allocation | None, prev: Result | None
    ) -> None:
        # DEL must succeed when the namespace is gone (CNI_NETNS empty, or a path that no
        # longer exists): the runtime then reports pod_gone, and our link went with it.
        # On GC the runtime calls delete once per stale attachment, with that attachment's
        # own key and namespace (from ADD's record).
        if ctx.netns.pod_gone:
            ctx.log.info("namespace of %s is gone, nothing to remove", ctx.key.slug())
            return
        self._delete_link(ctx.netns.pod, ctx.key.ifname)

    @staticmethod
    def _delete_link(pod: Any, ifname: str) -> None:
        found = pod.link_lookup(ifname=ifname)
        if not found or _kind(pod.get_links(found[0])[0]) not in LINK_KINDS:
            return  # already deleted (DEL twice), or not ours to delete
        try:
            pod.link("del", index=found[0])
        except Exception as exc:
            if _errno(exc) not in _GONE:
                raise

    # -- CHECK ---------------------------------------------------------------------
    def check(self, ctx: DriverContext, allocation: Allocation | None, prev: Result) -> None:
        kind = str(ctx.section.get("linkKind", "dummy"))
        problems = self._problems(ctx.netns.pod, ctx.key.ifname, kind, allocation)
        if problems:
            raise errors.CniError(
                errors.PluginCode.NETNS_PLUMBING_FAILED,
                "check: pod network is not as set up",
                "; ".join(problems),
            )

    @staticmethod
    def _problems(pod: Any, ifname: str, kind: str, allocation: Allocation | None) -> list[str]:
        found = pod.link_lookup(ifname=ifname)
        if not found:
            return [f"pod interface {ifname} is missing"]
        link = pod.get_links(found[0])[0]
        problems = []
        if _kind(link) != kind:
            problems.append(f"pod interface {ifname} is a {_kind(link)} link, not {kind}")
        if not link.get("flags", 0) & _IFF_UP:
            problems.append(f"pod interface {ifname} is down")
        have = {
            (a.get_attr("IFA_ADDRESS"), a.get("prefixlen")) for a in pod.get_addr(index=found[0])
        }
        for assignment in allocation.addresses if allocation else ():
            want = (assignment.address, _prefixlen(assignment.family))
            if want not in have:
                problems.append(f"pod interface {ifname} lacks {want[0]}/{want[1]}")
        return problems
