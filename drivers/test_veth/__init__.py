"""test_veth: a veth pair with the allocated /32 (or /128), no ENI policy routing.

A real driver for tests, demos and benchmarks: it runs wherever namespaces do, with the
fake ipam or a real ipamd, and shows the shape every attachment driver has (steps with
undo, idempotent delete, a check that names the missing piece).  Pod side as upstream:
the address, a link route to 169.254.1.1, the default route through it, and a permanent
neighbour entry for 169.254.1.1 pointing at the host veth's MAC.
"""

from __future__ import annotations

import errno
import os
from typing import Any

from vpccni.core import errors
from vpccni.core import names
from vpccni.core import netconf
from vpccni.core.driver_api import DriverContext
from vpccni.core.driver_api import DriverInfo
from vpccni.core.ipam import Allocation
from vpccni.core.result import Interface
from vpccni.core.result import IPConfig
from vpccni.core.result import Result

GATEWAY_V4 = "169.254.1.1"
NUD_PERMANENT = 0x80
_GONE = {errno.ENODEV, errno.ENOENT, errno.ESRCH, errno.EADDRNOTAVAIL}


def _host_name(ctx: DriverContext) -> str:
    prefix = str(ctx.conf.get("vethPrefix") or "eni")
    k8s = ctx.invocation.k8s
    if k8s.pod_name:
        return names.host_veth_name(prefix, k8s.pod_namespace, k8s.pod_name)
    return names.host_veth_name(prefix, "", ctx.invocation.container_id)


def _errno(exc: BaseException) -> int | None:
    code = getattr(exc, "code", None)
    return code if isinstance(code, int) else getattr(exc, "errno", None)


class TestVethDriver:
    info = DriverInfo(
        name="test_veth",
        kind="attachment",
        families=frozenset({4}),
        conf_schema={
            "type": "object",
            "additionalProperties": False,
            "properties": {"failAfterStep": {"type": "integer", "minimum": 0}},
        },
        summary="veth pair with a /32 and a host route; for tests, demos and benchmarks",
    )

    def add(self, ctx: DriverContext, allocation: Allocation) -> Result:
        if not allocation.addresses:
            raise errors.CniError(
                errors.PluginCode.IPAMD_PROTOCOL, "ipamd returned no address", allocation.key.slug()
            )
        assignment = allocation.addresses[0]
        if assignment.family != 4:
            raise errors.invalid_config("test_veth plumbs IPv4 pods only")
        mtu = netconf.check_mtu_for_family(ctx.conf, 4)
        fail_after = ctx.section.get("failAfterStep")
        host_name = _host_name(ctx)
        ifname = ctx.invocation.ifname
        address = assignment.address
        step = 0

        def done(what: str) -> None:
            # Fault injection for the undo tests: fail right after step N.
            nonlocal step
            step += 1
            if fail_after is not None and step > fail_after:
                raise RuntimeError(f"injected failure after step {step} ({what})")

        pod, host = ctx.netns.pod, ctx.netns.host
        if host.link_lookup(ifname=host_name):
            # A retried ADD: start from scratch, as upstream does.
            host.link("del", ifname=host_name)
        fd = os.open(ctx.invocation.netns, os.O_RDONLY)
        try:
            host.link(
                "add", ifname=host_name, kind="veth", peer={"ifname": ifname, "net_ns_fd": fd}
            )
        finally:
            os.close(fd)
        ctx.undo.push("delete veth", lambda: self._delete_link(host, host_name))
        done("veth")
        host_index = host.link_lookup(ifname=host_name)[0]
        host.link("set", index=host_index, mtu=mtu, state="up")
        host_mac = host.get_links(host_index)[0].get_attr("IFLA_ADDRESS")
        pod_index = pod.link_lookup(ifname=ifname)[0]
        pod.link("set", index=pod_index, mtu=mtu, state="up")
        pod_mac = pod.get_links(pod_index)[0].get_attr("IFLA_ADDRESS")
        done("links up")
        pod.addr("add", index=pod_index, address=address, prefixlen=32)
        pod.route("replace", dst=f"{GATEWAY_V4}/32", oif=pod_index, scope=253)
        pod.route("replace", dst="0.0.0.0/0", gateway=GATEWAY_V4, oif=pod_index)
        pod.neigh(
            "replace", dst=GATEWAY_V4, lladdr=host_mac, ifindex=pod_index, state=NUD_PERMANENT
        )
        done("pod side")
        host.route("replace", dst=f"{address}/32", oif=host_index, scope=253)
        done("host route")
        return Result(
            interfaces=(
                Interface(name=host_name, mac=host_mac),
                Interface(name=ifname, mac=pod_mac, sandbox=ctx.invocation.netns),
            ),
            ips=(IPConfig(address=f"{address}/32", interface=1, gateway=GATEWAY_V4),),
        )

    @staticmethod
    def _delete_link(host: Any, name: str) -> None:
        try:
            host.link("del", ifname=name)
        except Exception as exc:
            if _errno(exc) not in _GONE:
                raise

    def delete(
        self, ctx: DriverContext, allocation: Allocation | None, prev: Result | None
    ) -> None:
        # Deleting the host end removes the pod end and the host route with it; the pod's
        # namespace may already be gone (SPEC: DEL must still succeed).
        self._delete_link(ctx.netns.host, _host_name(ctx))

    def check(self, ctx: DriverContext, allocation: Allocation | None, prev: Result) -> None:
        host_name = _host_name(ctx)
        want = allocation.addresses[0].address if allocation and allocation.addresses else None
        problems = self._problems(
            ctx.netns.host, ctx.netns.pod, host_name, ctx.invocation.ifname, want
        )
        if problems:
            raise errors.CniError(
                errors.PluginCode.NETNS_PLUMBING_FAILED,
                "check: pod network is not as set up",
                "; ".join(problems),
            )

    @staticmethod
    def _problems(host: Any, pod: Any, host_name: str, ifname: str, want: str | None) -> list[str]:
        problems = []
        host_links = host.link_lookup(ifname=host_name)
        if not host_links:
            problems.append(f"host veth {host_name} is missing")
        pod_links = pod.link_lookup(ifname=ifname)
        if not pod_links:
            problems.append(f"pod interface {ifname} is missing")
            return problems
        if want is not None:
            have = {a.get_attr("IFA_ADDRESS") for a in pod.get_addr(index=pod_links[0])}
            if want not in have:
                problems.append(f"pod interface {ifname} lacks {want}/32")
            # NOTE: get_routes(dst=...) makes the kernel do a route *lookup*, which fails with
            # ENETUNREACH when nothing matches; list the table and filter instead.
            routes = [
                r
                for r in host.get_routes(family=2)
                if r.get_attr("RTA_DST") == want
                and r.get("dst_len") == 32
                and host_links
                and r.get_attr("RTA_OIF") == host_links[0]
            ]
            if not routes:
                problems.append(f"host route {want}/32 dev {host_name} is missing")
        if host_links:
            # The pod reaches everything through a permanent neighbour entry for the
            # gateway; a MAC change on the pod side (tuning) flushes it silently.
            host_mac = host.get_links(host_links[0])[0].get_attr("IFLA_ADDRESS")
            neighbours = [
                n
                for n in pod.get_neighbours(family=2, ifindex=pod_links[0])
                if n.get_attr("NDA_DST") == GATEWAY_V4
                and n.get("state") == NUD_PERMANENT
                and n.get_attr("NDA_LLADDR") == host_mac
            ]
            if not neighbours:
                problems.append(
                    f"pod neighbour entry {GATEWAY_V4} -> {host_mac} (permanent) is missing"
                )
        defaults = [
            r
            for r in pod.get_routes(family=2)
            if r.get("dst_len") == 0 and r.get_attr("RTA_GATEWAY") == GATEWAY_V4
        ]
        if not defaults:
            problems.append(f"pod default route via {GATEWAY_V4} is missing")
        return problems
