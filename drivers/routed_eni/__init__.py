"""routed_eni: the default pod network, a pod on a secondary IP of one of the node's ENIs.

Plumbing, as upstream (``driver.go`` setupVeth + setupIPBasedContainerRouteRules):

* a veth pair: host end ``vethPrefix`` + the first 11 hex digits of SHA-1 of
  ``"<namespace>.<name>"`` (the container id stands in for the name without K8S args),
  with a random locally administered MAC; pod end ``CNI_IFNAME``;
* pod side: the /32, a link-scope route to 169.254.1.1, the default route through it, a
  permanent neighbour entry 169.254.1.1 -> host end's MAC, the configured MTU;
* host side: the host veth's IPv6 sysctls before it is up, ``<ip>/32 dev <host veth>`` in
  main, rule ``to <ip> lookup main`` (priority 512) and, for a pod on a secondary ENI
  (route table != 254), rule ``from <ip> lookup <ENI table>`` (priority 1536).

Where DEL's state lives: the core's attachment record (``vpccni-attachment/1``, see
:mod:`vpccni.core.store`) keeps the ipamd allocation ADD used, with the device number and
route table of the address, and the core passes it as ``allocation`` when ipamd has
forgotten the attachment.  The result carries nothing in ``mac`` or ``sandbox`` fields
(upstream hides the route table there).  Fallback when neither ipamd nor the record knows
the attachment: the address from ``prevResult``, with every ``from <ip>`` rule at 1536
deleted whatever its table; with no address at all, the host veth is deleted by name.

Configuration section ``drivers.routed_eni`` (schema-validated):

* ``failAfterStep`` (integer >= 0): a TESTING knob, never for production.  ADD fails
  right after step N (0-based: 0 veth, 1 links up, 2 pod address, 3 pod routes, 4 pod
  neighbour, 5 host route, 6 rule 512, 7 rule 1536), to prove the undo path.  Steps 2-4
  are sent to the kernel in one datagram and steps 5-7 in another (raw rtnetlink,
  :mod:`vpccni.core.rtnl`); the failure still comes after the step it names, with every
  change made so far undone.
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

STEPS = (
    "veth",
    "links up",
    "pod address",
    "pod routes",
    "pod neighbour",
    "host route",
    "rule 512",
    "rule 1536",
)


def address_from_prev(prev: Result | None, ifname: str) -> podnet.PodAddress | None:
    """The pod's address from a result: the IP on the interface named ``ifname``, else
    the only IP there is."""
    if prev is None or not prev.ips:
        return None
    for ip in prev.ips:
        index = ip.interface
        if index is not None and 0 <= index < len(prev.interfaces):
            if prev.interfaces[index].name == ifname:
                return podnet.PodAddress.parse(ip.address)
    if len(prev.ips) == 1:
        return podnet.PodAddress.parse(prev.ips[0].address)
    return None


def _no_address(allocation: Allocation) -> errors.CniError:
    return errors.CniError(
        errors.PluginCode.IPAMD_PROTOCOL, "ipamd returned no address", allocation.key.slug()
    )


class RoutedEniDriver:
    info = DriverInfo(
        name="routed_eni",
        kind="attachment",
        families=frozenset({4}),
        conf_schema={
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "failAfterStep": {
                    "description": "testing only: fail ADD right after this 0-based step",
                    "type": "integer",
                    "minimum": 0,
                }
            },
        },
        summary="pod on a secondary IP of an ENI: veth, host route, policy rules 512/1536",
    )

    def add(self, ctx: DriverContext, allocation: Allocation) -> Result:
        if not allocation.addresses:
            raise _no_address(allocation)
        assignment = allocation.addresses[0]
        if assignment.family not in self.info.families:
            raise errors.CniError(
                errors.PluginCode.IPAMD_PROTOCOL,
                "ipamd gave an address of a family routed_eni does not plumb yet",
                f"IPv{assignment.family} address {assignment.address}; routed_eni plumbs "
                f"IPv{'/IPv'.join(map(str, sorted(self.info.families)))} pods",
            )
        addr = podnet.PodAddress(assignment.address, assignment.family)
        table = podnet.host_table(assignment.route_table)
        mtu = netconf.check_mtu_for_family(ctx.conf, addr.family)
        host_name = podnet.host_veth_name(ctx.conf, ctx.invocation)
        pod, host = ctx.netns.pod_rtnl, ctx.netns.host_rtnl
        podnet.refuse_own_namespace(ctx.invocation.netns)
        done = podnet.step_counter(ctx.section.get("failAfterStep"))

        pair = podnet.create_veth(host, ctx.netns.pod_fd, host_name, ctx.invocation.ifname, mtu)
        # Deleting the host end takes the pod end, its addresses, routes and neighbours,
        # and the host route with it: one undo covers steps 0-5.
        ctx.undo.push("delete veth", podnet.as_undo(podnet.delete_link, host, host_name))
        done("veth")
        pair = podnet.bring_up(host, pod, pair)
        self.prepare_pod(ctx, pair, addr)
        done("links up")
        # Steps 2-4 in one datagram (address, gateway route, default route, neighbour):
        # the veth's undo covers them all, whichever of them the kernel made.
        podnet.plumb_pod_side(pod, pair, addr)
        self.address_added(ctx, pair, addr)
        done("pod address")
        done("pod routes")
        done("pod neighbour")
        # Steps 5-7 in one datagram too; podnet.apply pushes the undo of every change the
        # kernel made before it raises, so a failure (or an injected one after any of
        # these steps) leaves nothing behind.
        changes = [
            podnet.Change(
                podnet.host_route_request(pair, addr),
                undo=("delete host route", podnet.as_undo(podnet.delete_host_route, host, addr)),
            ),
            podnet.Change(
                podnet.to_pod_rule_request(addr),
                podnet.EXISTS,  # upstream ignores EEXIST
                undo=(
                    "delete rule 512",
                    podnet.as_undo(
                        podnet.delete_rules,
                        host,
                        addr,
                        podnet.TO_CONTAINER_RULE_PRIORITY,
                        "to",
                        podnet.MAIN_TABLE,
                    ),
                ),
            ),
        ]
        if table != podnet.MAIN_TABLE:
            changes.append(
                podnet.Change(
                    podnet.from_pod_rule_request(addr, table),
                    podnet.EXISTS,
                    undo=(
                        "delete rule 1536",
                        podnet.as_undo(
                            podnet.delete_rules,
                            host,
                            addr,
                            podnet.FROM_POD_RULE_PRIORITY,
                            "from",
                            table,
                        ),
                    ),
                )
            )
        podnet.apply(host, changes, ctx.undo.push)
        done("host route")
        done("rule 512")
        if table != podnet.MAIN_TABLE:
            done("rule 1536")
        ctx.log.info(
            "plumbed %s on %s (device %d, table %d)",
            addr.cidr,
            host_name,
            assignment.device_number,
            table,
        )
        return Result(
            interfaces=(
                Interface(name=host_name, mac=pair.host_mac),
                Interface(name=pair.pod_name, mac=pair.pod_mac, sandbox=ctx.invocation.netns),
            ),
            ips=(IPConfig(address=addr.cidr, interface=1),),
        )

    # Hooks for drivers that reuse this plumbing (the prefix driver's IPv6 pieces); both are
    # inside ADD's undo scope (the veth's deletion undoes whatever they did in the pod).
    def prepare_pod(
        self, ctx: DriverContext, pair: podnet.VethPair, addr: podnet.PodAddress
    ) -> None:
        """After both veth ends are up, before the pod's address is added."""

    def address_added(
        self, ctx: DriverContext, pair: podnet.VethPair, addr: podnet.PodAddress
    ) -> None:
        """Right after the pod side (address, routes, neighbour: one datagram) is made,
        before the host side."""

    def delete(
        self, ctx: DriverContext, allocation: Allocation | None, prev: Result | None
    ) -> None:
        host = ctx.netns.host_rtnl
        host_name = podnet.host_veth_name(ctx.conf, ctx.invocation)
        addr: podnet.PodAddress | None = None
        route_table: int | None = None
        if allocation is not None and allocation.addresses:
            assignment = allocation.addresses[0]
            addr = podnet.PodAddress(assignment.address, assignment.family)
            route_table = assignment.route_table
        else:
            # Nobody knows the table: teardown_routed then deletes the pod's 1536 rules
            # in every table.
            addr = address_from_prev(prev, ctx.invocation.ifname)
        if addr is not None:
            podnet.teardown_routed(host, addr, route_table)
        else:
            ctx.log.info("DEL without any known address: deleting %s only", host_name)
        # The pod's namespace may be gone already (its veth end went with it).
        podnet.delete_link(host, host_name)

    def check(self, ctx: DriverContext, allocation: Allocation | None, prev: Result) -> None:
        if allocation is None or not allocation.addresses:
            raise errors.unknown_container(f"no allocation for {ctx.key.slug()}")
        assignment = allocation.addresses[0]
        addr = podnet.PodAddress(assignment.address, assignment.family)
        mtu = netconf.check_mtu_for_family(ctx.conf, addr.family)
        problems = problems_of(ctx, addr, assignment.route_table, mtu, prev)
        if problems:
            raise podnet.plumbing_error(problems)


def problems_of(
    ctx: DriverContext, addr: podnet.PodAddress, route_table: int, mtu: int, prev: Result
) -> list[str]:
    host, pod = ctx.netns.host, ctx.netns.pod
    host_name = podnet.host_veth_name(ctx.conf, ctx.invocation)
    ifname = ctx.invocation.ifname
    problems: list[str] = []
    if prev.ips and addr.cidr not in {ip.address for ip in prev.ips}:
        problems.append(f"prevResult does not hold {addr.cidr}")
    problems += podnet.check_veth(host, pod, host_name, ifname, mtu)
    problems += podnet.check_pod_side(host, pod, host_name, ifname, addr)
    problems += podnet.check_host_route(host, host_name, addr)
    problems += podnet.check_rules(host, addr, route_table)
    return problems


__all__ = ["STEPS", "RoutedEniDriver", "address_from_prev"]
