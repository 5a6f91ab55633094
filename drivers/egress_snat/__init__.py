"""egress_snat: the chained ``egress-cni`` plugin (upstream ``cmd/egress-cni-plugin``).

It gives a pod egress in the family its cluster lacks, through the node, SNATed to the
node's address of that family.  The direction comes from ``nodeIP``, as upstream decides
it: an IPv4 ``nodeIP`` means IPv4 egress for an IPv6 pod, an IPv6 one IPv6 egress for an
IPv4 pod (``ENABLE_V6_EGRESS``).

ADD, when ``enabled`` is "true" (otherwise prevResult is passed on unchanged):

1. an address from the delegated IPAM plugin of the ``ipam`` section (``host-local``:
   169.254.172.0/22 or fd00::ac:00/118), executed per the CNI spec from ``CNI_PATH``;
2. a veth pair: ``v4if0``/``v6if0`` in the pod, ``eg4``/``eg6`` + 11 hex digits of
   SHA-1 of the attachment on the node (deterministic, so DEL and CHECK find it without
   state; upstream uses a random ``veth`` name);
3. IPv4: the pod end gets ``<addr>/<ipam prefix>``, the connected route is replaced by
   ``<gw>/32 scope link`` and ``<subnet> via <gw>``, plus the IPAM routes (``0.0.0.0/0``)
   via the gateway; the host end gets ``<gw>/32`` scope link and the node a route
   ``<addr>/32 dev <host end>``; ``net.ipv4.ip_forward=1`` on the node (upstream
   EnableIpForwarding);
   IPv6: IPv6 is disabled on the pod's ``CNI_IFNAME`` (upstream), the pod end gets
   ``<addr>/118`` (no DAD: the address is unique by construction) and ``::/0 via`` the
   host end's link-local address; the node a route ``<addr>/128 dev <host end>``.  The
   host end skips DAD too (``accept_dad=0``), so its link-local gateway answers at once;
4. SNAT: chain ``CNI-E4-…``/``CNI-E6-…`` and ``POSTROUTING -s <addr>`` (see
   :mod:`.rules`);
5. the result is prevResult with the host and pod interfaces appended.  Like upstream, the
   egress address is not added to ``ips``: the runtime reports ``ips`` as the pod's
   addresses, and a 169.254/fd00 address is nobody's business outside the node.

DEL (idempotent, also with the pod's namespace gone): the POSTROUTING jumps to the chain
and the chain, both veth ends (their routes go with them), then the IPAM reservation
(the IPAM plugin's DEL).  Like upstream, a disabled plugin does nothing on DEL.
CHECK: the IPAM plugin's CHECK, both veth ends up with the MTU, the pod's address and
default route, the node's route, the SNAT chain and exactly one jump.
"""

from __future__ import annotations

import errno
import hashlib
import ipaddress
import socket
import subprocess
import time
from dataclasses import dataclass
from dataclasses import replace
from typing import Any

from vpccni.core import errors
from vpccni.core import netconf
from vpccni.core import podnet
from vpccni.core.driver_api import DriverContext
from vpccni.core.driver_api import DriverInfo
from vpccni.core.result import Interface
from vpccni.core.result import Result

#: upstream netconf.EgressIPv4InterfaceName / EgressIPv6InterfaceName
POD_IFNAME = {4: "v4if0", 6: "v6if0"}
HOST_PREFIX = {4: "eg4", 6: "eg6"}
DEFAULT_DST = {4: "0.0.0.0/0", 6: "::/0"}
RT_SCOPE_UNIVERSE = 0
IFA_F_NODAD = 0x02
LINK_LOCAL_WAIT_S = 3.0


@dataclass(frozen=True, slots=True)
class Setup:
    """What one invocation works with, from its configuration."""

    family: int
    node_ip: str
    randomize: str
    pod_ifname: str
    host_name: str
    mtu: int


def is_enabled(conf: Any) -> bool:
    return str(conf.get("enabled", "false")).lower() == "true"


def host_veth_name(family: int, network: str, container_id: str, ifname: str) -> str:
    digest = hashlib.sha1(f"{network}~{container_id}~{ifname}".encode()).hexdigest()  # noqa: S324
    return HOST_PREFIX[family] + digest[:11]


def _setup(ctx: DriverContext) -> Setup:
    raw = str(ctx.conf.get("nodeIP") or "")
    try:
        node_ip = ipaddress.ip_address(raw)
    except ValueError:
        raise errors.invalid_config(
            f"$.nodeIP: {raw!r} is not an IP address; egress-cni needs the node's IPv4 "
            "(IPv6 cluster) or global IPv6 (IPv4 cluster with ENABLE_V6_EGRESS) when enabled"
        ) from None
    # Go's IP.IsGlobalUnicast, as upstream checks it (ULA and documentation ranges pass)
    if node_ip.version == 6 and (
        node_ip.is_unspecified
        or node_ip.is_loopback
        or node_ip.is_multicast
        or node_ip.is_link_local
    ):
        raise errors.invalid_config(
            f"$.nodeIP: {raw} is not a global unicast IPv6 address, which IPv6 egress needs"
        )
    family = node_ip.version
    mtu = netconf.check_mtu_for_family(ctx.conf, family)
    return Setup(
        family=family,
        node_ip=str(node_ip),
        randomize=str(ctx.conf.get("randomizeSNAT") or "prng"),
        pod_ifname=POD_IFNAME[family],
        host_name=host_veth_name(
            family, ctx.key.network_name, ctx.key.container_id, ctx.key.ifname
        ),
        mtu=mtu,
    )


def _snat_for(ctx: DriverContext, setup: Setup, source: str) -> Any:
    from vpccni.drivers.egress_snat import rules  # noqa: PLC0415

    return rules.EgressSnat(
        family=setup.family,
        chain=rules.chain_name(ctx.key.network_name, ctx.key.container_id, setup.family),
        comment=rules.comment(ctx.key.network_name, ctx.key.container_id),
        node_ip=setup.node_ip,
        source=source,
        randomize=setup.randomize,
    )


def _write_sysctl(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _pod_sysctl(pod_path: str, key: str, value: str) -> None:
    """Write a sysctl of the pod's namespace: /proc/sys/net shows the namespace of the
    process that opens it, so a short-lived nsenter does it without moving this process."""
    proc = subprocess.run(  # fixed argv, never a shell
        ["nsenter", f"--net={pod_path}", "tee", f"/proc/sys/net/{key}"],
        input=value.encode(),
        capture_output=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{key}={value} in {pod_path}: {proc.stderr.decode().strip()}")


def _link_local(host: Any, index: int) -> str | None:
    for addr in host.get_addr(family=socket.AF_INET6, index=index):
        value = str(addr.get_attr("IFA_ADDRESS") or "")
        if value.startswith("fe80:"):
            return value
    return None


def _wait_link_local(host: Any, index: int) -> str:
    deadline = time.monotonic() + LINK_LOCAL_WAIT_S
    while True:
        found = _link_local(host, index)
        if found is not None:
            return found
        if time.monotonic() > deadline:
            raise RuntimeError("the host end of the egress veth has no IPv6 link-local address")
        time.sleep(0.02)


def _ignore_exists(action: Any, *args: Any, **kwargs: Any) -> None:
    try:
        action(*args, **kwargs)
    except Exception as exc:
        if podnet.error_code(exc) != errno.EEXIST:
            raise


class EgressSnatDriver:
    info = DriverInfo(
        name="egress_snat",
        kind="chained",
        families=frozenset({4, 6}),
        summary="egress-cni: egress in the other address family, SNATed to the node",
    )

    # ------------------------------------------------------------------ ADD
    def add(self, ctx: DriverContext, prev: Result) -> Result:
        if not is_enabled(ctx.conf):
            return prev
        from vpccni.drivers.egress_snat import ipam_exec  # noqa: PLC0415
        from vpccni.drivers.egress_snat import rules  # noqa: PLC0415

        setup = _setup(ctx)
        podnet.refuse_own_namespace(ctx.invocation.netns)
        ipam = ipam_exec.DelegatedIpam(ctx.conf, ctx.invocation)
        if ctx.netns.host_rtnl.get_link(setup.host_name) is not None:
            # A retried ADD: host-local refuses a second reservation for the same
            # attachment, so the first attempt's egress is removed and made again.
            ctx.log.info("ADD retried for %s: replacing its egress", ctx.key.slug())
            self._teardown(ctx, setup)
        try:
            got = ipam.add()
        except ipam_exec.IpamExecError as exc:
            raise ipam_exec.as_cni_error(exc, "add") from None
        ctx.undo.push("IPAM reservation", podnet.as_undo(ipam.delete))
        ips = [ip for ip in got.ips if ip.family == setup.family]
        if len(got.ips) != 1 or not ips:
            raise errors.CniError(
                errors.PluginCode.NETNS_PLUMBING_FAILED,
                "add: the IPAM plugin must return exactly one address of the egress family",
                f"{ipam.type} returned {[ip.address for ip in got.ips]}, "
                f"want one IPv{setup.family}",
            )
        ipc = ips[0]
        iface = ipaddress.ip_interface(ipc.address)
        gateway = ipc.gateway or str(next(iface.network.hosts()))
        ctx.log.info(
            "egress IPv%d %s (gw %s) for %s, SNAT to %s",
            setup.family, ipc.address, gateway, ctx.key.slug(), setup.node_ip,
        )  # fmt: skip

        host = ctx.netns.host_rtnl
        if setup.family == 6:
            # upstream: the cluster interface must not carry IPv6 once v6if0 does
            _pod_sysctl(
                ctx.invocation.netns, f"ipv6/conf/{ctx.invocation.ifname}/disable_ipv6", "1"
            )
        pair = podnet.create_veth(
            host, ctx.netns.pod_fd, setup.host_name, setup.pod_ifname, setup.mtu
        )
        ctx.undo.push("egress veth", podnet.as_undo(podnet.delete_link, host, setup.host_name))
        if setup.family == 6:
            podnet.write_host_sysctls(setup.host_name, (("accept_dad", "0"),))
        pair = podnet.bring_up(host, ctx.netns.pod_rtnl, pair)

        address = str(iface.ip)
        pod_addr = podnet.PodAddress.parse(address)
        # The egress-specific pieces go through the pyroute2 handles (made on first use).
        if setup.family == 4:
            self._plumb_v4(ctx.netns.host, ctx.netns.pod, pair, iface, gateway, got)
        else:
            self._plumb_v6(ctx.netns.host, ctx.netns.pod, pair, iface)
        podnet.add_host_route(host, pair, pod_addr)

        snat = _snat_for(ctx, setup, address)
        ipt = rules.Iptables(setup.family)
        ipt.add(snat)
        ctx.undo.push("SNAT rules", podnet.as_undo(ipt.delete, snat.chain))

        return replace(
            prev,
            interfaces=(
                *prev.interfaces,
                Interface(name=pair.host_name, mac=pair.host_mac),
                Interface(name=pair.pod_name, mac=pair.pod_mac, sandbox=ctx.invocation.netns),
            ),
        )

    @staticmethod
    def _plumb_v4(
        host: Any,
        pod: Any,
        pair: podnet.VethPair,
        iface: ipaddress.IPv4Interface | ipaddress.IPv6Interface,
        gateway: str,
        got: Result,
    ) -> None:
        # upstream setupContainerVethV4 (from ptp): a point-to-point link on a veth.
        _write_sysctl("/proc/sys/net/ipv4/ip_forward", "1")
        address, subnet = str(iface.ip), iface.network
        pod.addr("add", index=pair.pod_index, address=address, prefixlen=subnet.prefixlen)
        pod.route(
            "del",
            family=socket.AF_INET,
            dst=str(subnet.network_address),
            dst_len=subnet.prefixlen,
            oif=pair.pod_index,
            scope=podnet.RT_SCOPE_LINK,  # the kernel's connected route; scope 0 matches nothing
        )
        pod.route(
            "replace",
            family=socket.AF_INET,
            dst=f"{gateway}/32",
            oif=pair.pod_index,
            scope=podnet.RT_SCOPE_LINK,
            prefsrc=address,
        )
        pod.route(
            "replace",
            family=socket.AF_INET,
            dst=str(subnet),
            gateway=gateway,
            oif=pair.pod_index,
            prefsrc=address,
        )
        for route in got.routes:
            if ipaddress.ip_network(route.dst, strict=False).version != 4:
                continue
            pod.route(
                "replace",
                family=socket.AF_INET,
                dst=route.dst,
                gateway=route.gw or gateway,
                oif=pair.pod_index,
            )
        # upstream setupHostVethV4: the gateway lives on the host end (scope link)
        _ignore_exists(
            host.addr,
            "add",
            index=pair.host_index,
            address=gateway,
            prefixlen=32,
            scope=podnet.RT_SCOPE_LINK,
        )

    @staticmethod
    def _plumb_v6(
        host: Any,
        pod: Any,
        pair: podnet.VethPair,
        iface: ipaddress.IPv4Interface | ipaddress.IPv6Interface,
    ) -> None:
        pod.addr(
            "add",
            index=pair.pod_index,
            address=str(iface.ip),
            prefixlen=iface.network.prefixlen,
            flags=IFA_F_NODAD,
        )
        gw = _wait_link_local(host, pair.host_index)
        pod.route("replace", family=socket.AF_INET6, dst="::/0", gateway=gw, oif=pair.pod_index)

    # ------------------------------------------------------------------ DEL
    def delete(self, ctx: DriverContext, prev: Result | None) -> None:
        if not is_enabled(ctx.conf):
            return None  # upstream: a disabled plugin made nothing
        try:
            setup = _setup(ctx)
        except errors.CniError as exc:
            # Nothing this configuration could have made; DEL must not block the runtime.
            ctx.log.warning("DEL: %s; nothing to remove", exc.details)
            return None
        removed = self._teardown(ctx, setup)
        ctx.log.info("egress of %s removed (SNAT for %s)", ctx.key.slug(), removed or "nothing")
        return None

    @staticmethod
    def _teardown(ctx: DriverContext, setup: Setup) -> list[str]:
        """Rules, links, routes, then the IPAM reservation; returns the SNATed sources."""
        from vpccni.drivers.egress_snat import ipam_exec  # noqa: PLC0415
        from vpccni.drivers.egress_snat import rules  # noqa: PLC0415

        chain = rules.chain_name(ctx.key.network_name, ctx.key.container_id, setup.family)
        removed = rules.Iptables(setup.family).delete(chain)
        if not ctx.netns.pod_gone:
            podnet.delete_link(ctx.netns.pod_rtnl, setup.pod_ifname)
        # The pod's namespace may be gone with the host end still here (or a retried ADD
        # left it): by name, which is why the name is deterministic.
        podnet.delete_link(ctx.netns.host_rtnl, setup.host_name)
        for source in removed:
            podnet.delete_host_route(ctx.netns.host_rtnl, podnet.PodAddress.parse(source))
        try:
            ipam_exec.DelegatedIpam(ctx.conf, ctx.invocation).delete()
        except ipam_exec.IpamExecError as exc:
            raise ipam_exec.as_cni_error(exc, "del") from None
        return removed

    # ------------------------------------------------------------------ CHECK
    def check(self, ctx: DriverContext, prev: Result) -> None:
        if not is_enabled(ctx.conf):
            return None
        from vpccni.drivers.egress_snat import ipam_exec  # noqa: PLC0415
        from vpccni.drivers.egress_snat import rules  # noqa: PLC0415

        setup = _setup(ctx)
        try:
            ipam_exec.DelegatedIpam(ctx.conf, ctx.invocation).check()
        except ipam_exec.IpamExecError as exc:
            raise ipam_exec.as_cni_error(exc, "check") from None
        host, pod = ctx.netns.host, ctx.netns.pod
        problems = podnet.check_veth(host, pod, setup.host_name, setup.pod_ifname, setup.mtu)
        af = socket.AF_INET if setup.family == 4 else socket.AF_INET6
        pod_index = podnet.link_index(pod, setup.pod_ifname)
        address: str | None = None
        if pod_index is not None:
            found = [
                str(a.get_attr("IFA_ADDRESS"))
                for a in pod.get_addr(family=af, index=pod_index)
                if not str(a.get_attr("IFA_ADDRESS")).startswith("fe80:")
            ]
            if not found:
                problems.append(
                    f"pod interface {setup.pod_ifname} has no IPv{setup.family} address"
                )
            else:
                address = found[0]
            if not any(
                r.get("dst_len") == 0 and r.get_attr("RTA_OIF") == pod_index
                for r in pod.get_routes(family=af)
            ):
                problems.append(
                    f"pod route {DEFAULT_DST[setup.family]} dev {setup.pod_ifname} is missing"
                )
        if address is not None:
            problems += podnet.check_host_route(
                host, setup.host_name, podnet.PodAddress.parse(address)
            )
            problems += rules.Iptables(setup.family).problems(_snat_for(ctx, setup, address))
        if problems:
            raise podnet.plumbing_error(problems)
        return None


__all__ = ["EgressSnatDriver", "host_veth_name", "is_enabled"]
