"""prefix: pods on addresses carved from delegated prefixes (IPv4 /28, IPv6 /80).

Two parts, as the design splits every driver that changes how addresses are obtained:

* **address sources inside ipamd** (:mod:`vpccni.drivers.prefix.source`, entry-point group
  ``vpccni.address_sources``: ``ipv4_prefix`` for ENABLE_PREFIX_DELEGATION, ``ipv6_prefix``
  for ENABLE_IPv6);
* **pod plumbing in the CNI process**: :class:`PrefixDriver`, a thin subclass of
  :class:`~vpccni.drivers.routed_eni.RoutedEniDriver` that reuses its plumbing step for step
  (veth, /32 or /128, gateway 169.254.1.1 or fe80::1 with a permanent neighbour, host route,
  rules 512/1536) and adds the IPv6 pieces (upstream setupVeth steps 6 and 11):
  ``disable_ipv6=0`` on the pod interface and ``lo`` inside the pod before the address, and a
  wait for DAD after the pod side is made (the /128 is added ``nodad``: see
  :mod:`vpccni.core.podnet`).

Naming decision: ipamd's reply names ``routed_eni`` for IPv4 pods in prefix-delegation mode
(an address from a /28 is plumbed exactly like a secondary IP: nothing would differ) and
``prefix`` for IPv6 pods.  A conflist running IPv6 pods therefore enables
``"drivers": {"enabled": ["routed_eni", "prefix"]}``.  This driver also plumbs IPv4 (the
same way routed_eni does) so a configuration may name it for either family.

Host side in IPv6 mode (reference 3.5): ``<podIP>/128 dev <host veth>`` in main and rule
``to <podIP> lookup main`` at 512; all IPv6 pods live on the primary ENI (table main), so
no 1536 rule; no SNAT.  Node-level IPv6 sysctls (forwarding, accept_ra=2 on the primary
ENI) are ipamd's (:func:`vpccni.ipamd.host_net.setup_host_network`).

Configuration section ``drivers.prefix``: ``failAfterStep`` as routed_eni's (testing only).
"""

from __future__ import annotations

from vpccni.core import podnet
from vpccni.core.driver_api import DriverContext
from vpccni.core.driver_api import DriverInfo
from vpccni.drivers.routed_eni import RoutedEniDriver


class PrefixDriver(RoutedEniDriver):
    info = DriverInfo(
        name="prefix",
        kind="attachment",
        families=frozenset({4, 6}),
        conf_schema=RoutedEniDriver.info.conf_schema,
        summary="pod on an address of a delegated prefix (IPv4 /28, IPv6 /80): routed_eni's "
        "plumbing plus IPv6 (disable_ipv6=0 in the pod, DAD)",
    )

    def prepare_pod(
        self, ctx: DriverContext, pair: podnet.VethPair, addr: podnet.PodAddress
    ) -> None:
        if addr.family == 6:
            podnet.enable_pod_ipv6(ctx.invocation.netns, pair.pod_name)

    def address_added(
        self, ctx: DriverContext, pair: podnet.VethPair, addr: podnet.PodAddress
    ) -> None:
        if addr.family == 6:
            podnet.wait_pod_dad(ctx.netns.pod_rtnl, pair, addr)


__all__ = ["PrefixDriver"]
