"""VPC fabric of the local VPC simulator: nodes, ENIs and the VPC router as network namespaces.

Model (see docs/simulator-fabric.md)::

    <prefix>-<node>: ethN (ENI MAC) ==veth== e<hash(eni id)> ─┐
    <prefix>-<node>: ethN (ENI MAC) ==veth== e<hash(eni id)> ─┴ <prefix>-vpc (VPC router)
    <prefix>-vpc: igw0 ==veth== eth0 <prefix>-inet (203.0.113.0/24 on lo)

- Each ENI attachment is a veth pair: ``eth<device_index>`` (``eth<device>nc<card>`` on network
  cards other than 0) in the node namespace, carrying the ENI's MAC, and a peer in the vpc
  namespace.
- The primary ENI (card 0, device 0) is configured as DHCP would: up, primary IP with the subnet
  prefix length, default route via the subnet router (first address + 1; ``fe80::1`` for IPv6).
  Other ENIs are left down and unconfigured, for ipamd.
- The router routes each owned address (private IPs, IPv6 addresses) to the ENI's peer with a
  permanent neighbour to the ENI MAC, and each delegated prefix via the ENI (IPv4: its primary IP;
  IPv6: its MAC-derived link-local), with no ARP learning; VPC CIDRs are blackholed otherwise.
- Internet gateway: only the primary private IPv4 of primary ENIs (standing in for a public IPv4
  association) may talk to the internet; no NAT, so the server sees that private address.
- Service addresses (instance metadata, the EC2 endpoint) are on the router's loopback.
- Optional (``source_dest_check=True``): packets from an ENI whose source it does not own are
  dropped, as EC2's source/destination check does.

API (a contract with the EC2 emulator and the ``vpccni sim`` daemon)::

    from vpccni.sim.fabric import Fabric, NodeSpec, EniSpec

    fabric = Fabric(prefix="vs1a2b", vpc_cidrs=["10.0.0.0/16"], vpc_ipv6_cidrs=[],
                    service_addresses=["169.254.169.254", "169.254.169.253"],
                    source_dest_check=False)   # keyword-only, optional
    fabric.ensure_base()          # <prefix>-vpc and <prefix>-inet, unless both exist
    fabric.sync([NodeSpec(name="node0", instance_id="i-0", enis=(EniSpec(...),))])
    fabric.node_netns("node0")    # "vs1a2b-node0"; fabric.vpc_netns, fabric.internet_netns
    fabric.internet_server_address  # "203.0.113.10": bind a test server to it in internet_netns
    fabric.teardown()             # idempotent
    Fabric.teardown_prefix("vs1a2b")  # no state needed: cleans up after a crash

``sync`` takes the full desired state and applies only the difference to the kernel, from a view
cached in the object (read back from the vpc namespace on the first sync, and after any failure).
It is thread-safe. Errors from ``ip``/``nft`` raise ``FabricError``. Nothing in the root
namespace changes except the creation and deletion of ``<prefix>-*`` namespaces.
"""

from __future__ import annotations

from .fabric import Fabric
from .shell import FabricError
from .spec import EniSpec
from .spec import NodeSpec

__all__ = ["EniSpec", "Fabric", "FabricError", "NodeSpec"]
