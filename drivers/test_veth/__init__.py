"""test_veth: a veth pair with the allocated /32, no ENI policy routing.

A real driver for tests, demos and benchmarks: it runs wherever namespaces do, with the
fake ipam or a real ipamd.  It is routed_eni's plumbing (:mod:`vpccni.core.podnet`) minus
the policy rules 512/1536: the pod side as upstream (the address, a link route to
169.254.1.1, the default route through it, a permanent neighbour entry for 169.254.1.1
pointing at the host veth's MAC) and a host route to the pod.

Configuration section ``drivers.test_veth``: ``failAfterStep`` (integer >= 0, testing
only) fails ADD right after step N (0-based: 0 veth, 1 links up, 2 pod side, 3 host route).
"""

from __future__ import annotations

from vpccni.core import errors
from vpccni.core import netconf
from vpccni.core import podnet
from vpccni.core.driver_api import DriverContext
from vpccni.core.driver_api import DriverInfo
from vpccni.core.ipam import Allocation
from vpccni.core.result import Interface
from vpccni.core.result import IPConfig
from vpccni.core.result import Result

GATEWAY_V4 = podnet.gateway_for(4)


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
        addr = podnet.PodAddress(assignment.address, 4)
        mtu = netconf.check_mtu_for_family(ctx.conf, 4)
        host_name = podnet.host_veth_name(ctx.conf, ctx.invocation)
        pod, host = ctx.netns.pod_rtnl, ctx.netns.host_rtnl
        podnet.refuse_own_namespace(ctx.invocation.netns)
        done = podnet.step_counter(ctx.section.get("failAfterStep"))

        pair = podnet.create_veth(host, ctx.netns.pod_fd, host_name, ctx.invocation.ifname, mtu)
        # The host end takes the pod end, everything on it and the host route with it.
        ctx.undo.push("delete veth", podnet.as_undo(podnet.delete_link, host, host_name))
        done("veth")
        pair = podnet.bring_up(host, pod, pair)
        done("links up")
        podnet.plumb_pod_side(pod, pair, addr)
        done("pod side")
        podnet.add_host_route(host, pair, addr)
        done("host route")
        return Result(
            interfaces=(
                Interface(name=host_name, mac=pair.host_mac),
                Interface(name=pair.pod_name, mac=pair.pod_mac, sandbox=ctx.invocation.netns),
            ),
            ips=(IPConfig(address=addr.cidr, interface=1, gateway=GATEWAY_V4),),
        )

    def delete(
        self, ctx: DriverContext, allocation: Allocation | None, prev: Result | None
    ) -> None:
        # Deleting the host end removes the pod end and the host route with it; the pod's
        # namespace may already be gone (SPEC: DEL must still succeed).
        podnet.delete_link(ctx.netns.host_rtnl, podnet.host_veth_name(ctx.conf, ctx.invocation))

    def check(self, ctx: DriverContext, allocation: Allocation | None, prev: Result) -> None:
        host, pod = ctx.netns.host, ctx.netns.pod
        host_name, ifname = podnet.host_veth_name(ctx.conf, ctx.invocation), ctx.invocation.ifname
        addr = (
            podnet.PodAddress.parse(allocation.addresses[0].address)
            if allocation and allocation.addresses
            else None
        )
        # No MTU check: a chained tuning plugin may change it on purpose.
        problems = podnet.check_veth(host, pod, host_name, ifname, None)
        problems += podnet.check_pod_side(host, pod, host_name, ifname, addr)
        if addr is not None:
            problems += podnet.check_host_route(host, host_name, addr)
        if problems:
            raise podnet.plumbing_error(problems)
