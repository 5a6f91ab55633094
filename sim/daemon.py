"""The simulator: EC2 emulator + VPC topology + fabric + metadata, in-process or as a daemon.

``Simulator`` is the one code path; the pytest fixture runs it in the test process (direct
access to the emulator for fault injection) and ``python -m vpccni.sim.daemon`` runs it in
the background for ``vpccni sim up``. Heavy imports (moto, werkzeug, boto3: about 1.5 s) are
deferred (``noqa: PLC0415``) until the simulator starts, so the CLI can import this module for
validation without paying for them.

Reachability (see docs/simulator.md): the fabric puts the service addresses on the vpc
namespace's loopback; the EC2 app and the metadata app listen there, so a process in a node
namespace reaches them through its primary ENI, like on a real node, and nothing of the host.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
from typing import Any

from vpccni.sim.fabric import EniSpec
from vpccni.sim.fabric import Fabric
from vpccni.sim.fabric import NodeSpec
from vpccni.sim.state import DaemonLock
from vpccni.sim.state import StateDir

log = logging.getLogger("vpccni.sim")

IMDS_ADDRESS = "169.254.169.254"
#: link-local, outside every VPC range, and none of AWS's well-known link-local services
#: (.123 NTP, .253 DNS, .254 IMDS, 169.254.170.2 ECS), so it never collides with an ENI address
EC2_SERVICE_ADDRESS = "169.254.169.250"
SERVICE_PORT = 80
IMAGE_ID = "ami-12c6146b"  # one of moto's bundled AMIs
FAKE_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
MAX_NODES = 32
EXIT_LOCKED = 3

#: ranges a VPC CIDR must not overlap: the fabric and its services use them
RESERVED_RANGES = {
    "169.254.0.0/16": "link-local (metadata and EC2 service addresses)",
    "127.0.0.0/8": "loopback",
    "203.0.113.0/24": "the simulated internet",
    "0.0.0.0/8": "'this network'",
    "224.0.0.0/3": "multicast/reserved",
}


class ConfigError(ValueError):
    """Bad simulator input; the message is one line naming the problem."""


@dataclass(frozen=True)
class SimConfig:
    prefix: str
    nodes: int = 1
    instance_type: str = "m5.large"
    vpc_cidrs: tuple[str, ...] = ("10.0.0.0/16",)
    ipv6: bool = False
    region: str = "us-west-2"
    #: EC2's source/destination check: the VPC router drops a packet whose source the
    #: sending ENI does not own (catches missing per-ENI policy routing in a CNI).
    source_dest_check: bool = False

    def validate(self) -> None:
        """Everything checkable without moto; ``check_instance_type`` needs the AWS data."""
        if not 1 <= self.nodes <= MAX_NODES:
            raise ConfigError(f"--nodes must be between 1 and {MAX_NODES}, got {self.nodes}")
        nets: list[ipaddress.IPv4Network] = []
        for raw in self.vpc_cidrs:
            try:
                net = ipaddress.ip_network(raw, strict=True)
            except ValueError as exc:
                raise ConfigError(f"invalid VPC CIDR {raw!r}: {exc}") from None
            if not isinstance(net, ipaddress.IPv4Network):
                raise ConfigError(f"VPC CIDR {raw} is not IPv4 (use --ipv6 for an IPv6 block)")
            if not 16 <= net.prefixlen <= 28:
                raise ConfigError(f"VPC CIDR {raw}: AWS allows prefix lengths /16 to /28")
            for reserved, what in RESERVED_RANGES.items():
                if net.overlaps(ipaddress.ip_network(reserved)):
                    raise ConfigError(f"VPC CIDR {raw} overlaps {reserved} ({what})")
            for other in nets:
                if net.overlaps(other):
                    raise ConfigError(f"VPC CIDRs {other} and {net} overlap")
            nets.append(net)
        if not nets:
            raise ConfigError("at least one VPC CIDR is needed")

    def check_instance_type(self) -> None:
        from vpccni.sim.ec2.limits import limits_for  # noqa: PLC0415

        try:
            limits_for(self.instance_type)
        except KeyError:
            raise ConfigError(f"unknown EC2 instance type {self.instance_type!r}") from None


@dataclass
class Node:
    name: str
    instance_id: str
    instance_type: str
    namespace: str = ""
    imds_host_url: str = ""


@dataclass
class Topology:
    vpc_id: str = ""
    vpc_cidrs: list[str] = field(default_factory=list)
    vpc_ipv6_cidrs: list[str] = field(default_factory=list)
    subnets: list[dict[str, Any]] = field(default_factory=list)
    security_group_id: str = ""


class Reconciler:
    """Keeps the fabric in step with the emulator: change notifications in, ``sync`` out.

    Notifications only bump a counter (they arrive on emulator request threads, maybe with
    its lock held); one thread reconciles the latest state, so a burst of changes costs one
    sync per pass instead of one per change.
    """

    def __init__(self, sync: Callable[[], None]) -> None:
        self._sync = sync
        self._cond = threading.Condition()
        self._requested = 0
        self._done = 0
        self._stopping = False
        self.last_error: str | None = None
        self._thread = threading.Thread(target=self._run, name="sim-reconcile", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def notify(self, *_: Any) -> None:
        with self._cond:
            self._requested += 1
            self._cond.notify_all()

    def wait_synced(self, timeout: float = 10.0) -> bool:
        """Wait until a sync that started after this call has finished."""
        with self._cond:
            self._requested += 1
            target = self._requested
            self._cond.notify_all()
            return self._cond.wait_for(lambda: self._done >= target, timeout=timeout)

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._stopping or self._requested > self._done)
                if self._stopping:
                    return
                target = self._requested
            try:
                self._sync()
                self.last_error = None
            except Exception as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("fabric sync failed")
                time.sleep(0.2)
                continue
            with self._cond:
                self._done = max(self._done, target)
                self._cond.notify_all()


class Simulator:
    """Brings the whole simulated VPC up and down. ``start`` undoes its own work on failure."""

    def __init__(self, config: SimConfig, on_change: Callable[[], None] | None = None) -> None:
        self.config = config
        self.nodes: list[Node] = []
        self.topology = Topology()
        self.emulator: Any = None
        self.fabric: Any = None
        self._servers: list[Any] = []
        self._reconciler = Reconciler(self._sync_fabric)
        #: called after every fabric sync (the daemon rewrites status.json from it)
        self.on_synced = on_change
        self.vpc_ec2_url = f"http://{EC2_SERVICE_ADDRESS}"
        self.vpc_imds_url = f"http://{IMDS_ADDRESS}"

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> Simulator:
        self.config.validate()
        self.config.check_instance_type()
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        from vpccni.sim.ec2 import Ec2Emulator  # noqa: PLC0415
        from vpccni.sim.imds import EmulatorMetadataSource  # noqa: PLC0415
        from vpccni.sim.imds import ImdsApp  # noqa: PLC0415
        from vpccni.sim.netns_serve import serve_wsgi  # noqa: PLC0415

        cfg = self.config
        # A crashed simulator with the same prefix may have left namespaces behind.
        Fabric.teardown_prefix(cfg.prefix)
        self.emulator = Ec2Emulator(host="127.0.0.1", port=0, region=cfg.region)
        self.emulator.start()
        self._build_topology()
        self.fabric = Fabric(
            prefix=cfg.prefix,
            vpc_cidrs=self.topology.vpc_cidrs,
            vpc_ipv6_cidrs=self.topology.vpc_ipv6_cidrs,
            service_addresses=[IMDS_ADDRESS, EC2_SERVICE_ADDRESS],
            source_dest_check=cfg.source_dest_check,
        )
        self.fabric.ensure_base()
        self._sync_fabric()
        for node in self.nodes:
            node.namespace = self.fabric.node_netns(node.name)

        source = EmulatorMetadataSource(
            self.emulator, cfg.region, lambda: [n.instance_id for n in self.nodes]
        )
        vpc_ns = self.fabric.vpc_netns
        self._servers.append(
            serve_wsgi(vpc_ns, EC2_SERVICE_ADDRESS, SERVICE_PORT, self.emulator.wsgi_app, "ec2-vpc")
        )
        self._servers.append(
            serve_wsgi(vpc_ns, IMDS_ADDRESS, SERVICE_PORT, ImdsApp(source), "imds")
        )
        for node in self.nodes:
            # Per-node metadata on loopback for the test process, which has no source address
            # inside the VPC to be recognised by.
            app = ImdsApp(source, resolver=_fixed(node.instance_id))
            server = serve_wsgi(None, "127.0.0.1", 0, app, f"imds-{node.name}")
            node.imds_host_url = server.url
            self._servers.append(server)

        self.emulator.subscribe(self._reconciler.notify)
        self._reconciler.start()
        # The emulator may have changed between the first sync and the subscription.
        self._reconciler.wait_synced()

    def stop(self) -> None:
        self._reconciler.stop()
        for server in reversed(self._servers):
            with contextlib.suppress(Exception):
                server.stop()
        self._servers.clear()
        if self.fabric is not None:
            try:
                self.fabric.teardown()
            except Exception:
                log.exception("fabric teardown failed")
        # Backstop for a fabric object that failed half-way: sweep by name.
        with contextlib.suppress(Exception):
            Fabric.teardown_prefix(self.config.prefix)
        if self.emulator is not None:
            with contextlib.suppress(Exception):
                self.emulator.stop()
            self.emulator = None

    def wait_synced(self, timeout: float = 10.0) -> bool:
        return self._reconciler.wait_synced(timeout)

    # -- EC2 topology ------------------------------------------------------------------

    def ec2_client(self) -> Any:
        import boto3  # noqa: PLC0415

        return boto3.client(
            "ec2",
            endpoint_url=self.emulator.endpoint_url,
            region_name=self.config.region,
            aws_access_key_id=FAKE_CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=FAKE_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        )

    def _build_topology(self) -> None:
        from botocore.exceptions import ClientError  # noqa: PLC0415

        try:
            self._create_vpc_and_nodes(self.ec2_client())
        except ClientError as exc:
            err = exc.response.get("Error", {})
            msg = f"{err.get('Code')}: {err.get('Message')}".replace("\n", " ")
            raise ConfigError(msg) from None

    def _create_vpc_and_nodes(self, ec2: Any) -> None:
        cfg, topo = self.config, self.topology
        tag = {"Key": "vpccni-sim", "Value": cfg.prefix}
        vpc = ec2.create_vpc(
            CidrBlock=cfg.vpc_cidrs[0],
            AmazonProvidedIpv6CidrBlock=cfg.ipv6,
            TagSpecifications=[{"ResourceType": "vpc", "Tags": [tag]}],
        )["Vpc"]
        topo.vpc_id = vpc["VpcId"]
        for extra in cfg.vpc_cidrs[1:]:
            ec2.associate_vpc_cidr_block(VpcId=topo.vpc_id, CidrBlock=extra)
        topo.vpc_cidrs = list(cfg.vpc_cidrs)
        if cfg.ipv6:
            vpc = ec2.describe_vpcs(VpcIds=[topo.vpc_id])["Vpcs"][0]
            topo.vpc_ipv6_cidrs = [
                a["Ipv6CidrBlock"] for a in vpc.get("Ipv6CidrBlockAssociationSet", [])
            ]
        zone = f"{cfg.region}a"
        for index, (role, cidr) in enumerate(_subnet_plan(cfg.vpc_cidrs[0])):
            kwargs: dict[str, Any] = {"VpcId": topo.vpc_id, "CidrBlock": cidr}
            ipv6_cidr = None
            if topo.vpc_ipv6_cidrs:
                v6 = ipaddress.ip_network(topo.vpc_ipv6_cidrs[0])
                ipv6_cidr = str(list(v6.subnets(new_prefix=64))[index]) if index < 256 else None
                kwargs["Ipv6CidrBlock"] = ipv6_cidr
            subnet = ec2.create_subnet(
                AvailabilityZone=zone,
                TagSpecifications=[
                    {
                        "ResourceType": "subnet",
                        "Tags": [
                            tag,
                            {"Key": "Name", "Value": f"{cfg.prefix}-{role}"},
                            {"Key": "vpccni-sim/role", "Value": role},
                            {"Key": "kubernetes.io/role/cni", "Value": "1"},
                        ],
                    }
                ],
                **kwargs,
            )["Subnet"]
            topo.subnets.append(
                {"id": subnet["SubnetId"], "cidr": cidr, "ipv6_cidr": ipv6_cidr, "role": role}
            )
        sg = ec2.create_security_group(
            GroupName=f"{cfg.prefix}-nodes", Description="vpccni simulator nodes", VpcId=topo.vpc_id
        )
        topo.security_group_id = sg["GroupId"]
        node_subnet = topo.subnets[0]["id"]
        for i in range(cfg.nodes):
            name = f"node{i}"
            run: dict[str, Any] = {
                "ImageId": IMAGE_ID,
                "InstanceType": cfg.instance_type,
                "MinCount": 1,
                "MaxCount": 1,
                "SubnetId": node_subnet,
                "SecurityGroupIds": [topo.security_group_id],
                "TagSpecifications": [
                    {
                        "ResourceType": "instance",
                        "Tags": [tag, {"Key": "Name", "Value": name}],
                    }
                ],
            }
            if cfg.ipv6:
                run["Ipv6AddressCount"] = 1
            inst = ec2.run_instances(**run)["Instances"][0]
            self.nodes.append(Node(name, inst["InstanceId"], cfg.instance_type))

    # -- fabric ------------------------------------------------------------------------

    def _node_specs(self) -> list[Any]:

        specs = []
        with self.emulator.lock:
            for node in self.nodes:
                enis = [
                    EniSpec(
                        eni_id=e.eni_id,
                        mac=e.mac,
                        device_index=e.device_index,
                        network_card_index=e.network_card_index,
                        subnet_cidr=e.subnet_cidr,
                        private_ips=tuple(e.private_ips),
                        ipv4_prefixes=tuple(e.ipv4_prefixes),
                        ipv6_addresses=tuple(e.ipv6_addresses),
                        ipv6_prefixes=tuple(e.ipv6_prefixes),
                        subnet_ipv6_cidr=e.subnet_ipv6_cidrs[0] if e.subnet_ipv6_cidrs else None,
                    )
                    for e in self.emulator.describe_eni_state(node.instance_id)
                    if e.status == "attached"
                ]
                specs.append(
                    NodeSpec(name=node.name, instance_id=node.instance_id, enis=tuple(enis))
                )
        return specs

    def _sync_fabric(self) -> None:
        self.fabric.sync(self._node_specs())
        if self.on_synced is not None:
            self.on_synced()

    # -- what a node sees --------------------------------------------------------------

    def node(self, name: str) -> Node:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(f"no node {name!r} (nodes: {', '.join(n.name for n in self.nodes)})")

    def node_env(self) -> dict[str, str]:
        """The variables a process inside any node gets (same for every node)."""
        return node_environment(self.vpc_ec2_url, self.vpc_imds_url, self.config.region)

    def status(self) -> dict[str, Any]:
        nodes = []
        with self.emulator.lock:
            for node in self.nodes:
                enis = self.emulator.describe_eni_state(node.instance_id)
                nodes.append(
                    {
                        "name": node.name,
                        "instance_id": node.instance_id,
                        "instance_type": node.instance_type,
                        "namespace": node.namespace,
                        "metadata_endpoint": self.vpc_imds_url,
                        "metadata_endpoint_host": node.imds_host_url,
                        "primary_ip": _primary_ip(enis),
                        "enis": [_eni_status(e) for e in enis],
                    }
                )
        return {
            "prefix": self.config.prefix,
            "region": self.config.region,
            "ec2_endpoint": self.emulator.endpoint_url,
            "ec2_endpoint_vpc": self.vpc_ec2_url,
            "metadata_endpoint": self.vpc_imds_url,
            "vpc": {
                "id": self.topology.vpc_id,
                "cidrs": self.topology.vpc_cidrs,
                "ipv6_cidrs": self.topology.vpc_ipv6_cidrs,
                "subnets": self.topology.subnets,
                "security_group_id": self.topology.security_group_id,
            },
            "namespaces": {
                "vpc": self.fabric.vpc_netns,
                "internet": self.fabric.internet_netns,
            },
            "internet_server_address": self.fabric.internet_server_address,
            "node_env": self.node_env(),
            "nodes": nodes,
            "reconcile_error": self._reconciler.last_error,
        }


def node_environment(ec2_url: str, imds_url: str, region: str) -> dict[str, str]:
    return {
        "AWS_ENDPOINT_URL_EC2": ec2_url,
        "AWS_EC2_METADATA_SERVICE_ENDPOINT": imds_url + "/",
        "AWS_DEFAULT_REGION": region,
        "AWS_REGION": region,
        **FAKE_CREDENTIALS,
    }


#: host variables that would point a node's process somewhere else than the simulator
SCRUBBED_ENV = (
    "AWS_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_ENDPOINT_URL",
    "AWS_EC2_METADATA_DISABLED",
    "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "http_proxy",
    "https_proxy",
)


def merged_node_env(node_env: dict[str, str], base: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    for name in SCRUBBED_ENV:
        env.pop(name, None)
    env.update(node_env)
    return env


def _fixed(instance_id: str) -> Callable[[str], str | None]:
    return lambda _addr: instance_id


def _primary_ip(enis: Sequence[Any]) -> str | None:
    for e in enis:
        if e.device_index == 0 and e.network_card_index == 0 and e.private_ips:
            return str(e.private_ips[0])
    return None


def _eni_status(e: Any) -> dict[str, Any]:
    return {
        "eni_id": e.eni_id,
        "device_index": e.device_index,
        "network_card_index": e.network_card_index,
        "mac": e.mac,
        "status": e.status,
        "interface_type": e.interface_type,
        "subnet_id": e.subnet_id,
        "private_ips": list(e.private_ips),
        "ipv4_prefixes": list(e.ipv4_prefixes),
        "ipv6_addresses": list(e.ipv6_addresses),
        "ipv6_prefixes": list(e.ipv6_prefixes),
    }


def _subnet_plan(vpc_cidr: str) -> list[tuple[str, str]]:
    """Node subnet, and a second one (for custom networking) when the VPC is big enough."""
    net = ipaddress.ip_network(vpc_cidr)
    if net.prefixlen > 27:
        return [("nodes", str(net))]
    first, second = net.subnets(prefixlen_diff=1)
    return [("nodes", str(first)), ("pods", str(second))]


# -- the daemon process ------------------------------------------------------------------


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m vpccni.sim.daemon")
    p.add_argument("--state-dir", required=True)
    p.add_argument("--nodes", type=int, default=1)
    p.add_argument("--instance-type", default="m5.large")
    p.add_argument("--vpc-cidr", action="append", default=[])
    p.add_argument("--ipv6", action="store_true")
    p.add_argument("--source-dest-check", action="store_true")
    p.add_argument("--region", default="us-west-2")
    return p.parse_args(argv)


def daemon_main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    state = StateDir.resolve(args.state_dir)
    state.ensure()
    lock = DaemonLock(state)
    if not lock.acquire():
        print("a simulator is already running with this state dir", file=sys.stderr)
        return EXIT_LOCKED
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    state.clear_runtime_files()
    state.prefix_file.write_text(state.prefix + "\n")
    state.pid_file.write_text(f"{os.getpid()}\n")
    config = SimConfig(
        prefix=state.prefix,
        nodes=args.nodes,
        instance_type=args.instance_type,
        vpc_cidrs=tuple(args.vpc_cidr or ["10.0.0.0/16"]),
        ipv6=args.ipv6,
        region=args.region,
        source_dest_check=args.source_dest_check,
    )
    sim: Simulator | None = None
    try:
        status_extra = {"state": "running", "pid": os.getpid(), "state_dir": str(state.path)}

        def write_status() -> None:
            if sim is not None and sim.emulator is not None and sim.fabric is not None:
                state.write_status({**status_extra, **sim.status()})

        sim = Simulator(config)
        sim.start()
        # Only now do status updates start: the CLI takes status.json as "ready".
        sim.on_synced = write_status
        write_status()
        log.info("simulator ready: %d node(s), prefix %s", config.nodes, config.prefix)
        while not stop.wait(1.0):
            pass
        log.info("stopping")
        return 0
    except (ConfigError, KeyError) as exc:
        message = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
        state.error_file.write_text(message.splitlines()[0] + "\n")
        log.error("%s", message)
        return 1
    except Exception as exc:
        state.error_file.write_text(f"{type(exc).__name__}: {exc}".splitlines()[0] + "\n")
        log.exception("simulator failed")
        return 1
    finally:
        if sim is not None:
            sim.stop()
        for f in (state.pid_file, state.status_file):
            with contextlib.suppress(FileNotFoundError):
                f.unlink()
        lock.release()


if __name__ == "__main__":
    sys.exit(daemon_main())
