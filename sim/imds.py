"""Instance metadata emulator (IMDSv2 only), rendered from the EC2 emulator's live state.

One WSGI app serves every node: the caller is identified by the request's source address,
which inside the fabric is an address of one of the node's ENIs (AWS likewise answers per
ENI). A server bound for one node on 127.0.0.1 (for the test process) uses a fixed
resolver instead. Only attached ENIs are shown: while an attachment is ``attaching`` the
real metadata does not list the MAC yet, and ipamd must cope with that lag.
"""

from __future__ import annotations

import ipaddress
import json
import secrets
import threading
import time
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from typing import Protocol

from werkzeug.wrappers import Request
from werkzeug.wrappers import Response

TOKEN_PATH = "/latest/api/token"
TOKEN_HEADER = "X-aws-ec2-metadata-token"
TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
MAX_TTL = 21600

#: a directory is a dict (listed with a trailing "/" in its parent), a leaf is text or lines
Tree = dict[str, Any]


@dataclass(frozen=True)
class InstanceMeta:
    instance_id: str
    instance_type: str
    availability_zone: str
    region: str
    account_id: str
    enis: Sequence[Any]  # EniView-like, attached only, primary ENI first


class MetadataSource(Protocol):
    def instance(self, instance_id: str) -> InstanceMeta | None: ...

    def instance_for_address(self, address: str) -> str | None: ...


# -- rendering ---------------------------------------------------------------------------


def _lines(values: Iterable[str]) -> str | None:
    joined = "\n".join(values)
    # Real IMDS has no key at all for an empty list (ipamd treats that 404 as "none").
    return joined or None


def _eni_tree(eni: Any, vpc_cidrs: Sequence[str], region: str) -> Tree:
    tree: dict[str, Any] = {
        "device-number": str(eni.device_index),
        "interface-id": eni.eni_id,
        "ipv4-prefix": _lines(eni.ipv4_prefixes),
        "ipv6-prefix": _lines(eni.ipv6_prefixes),
        "ipv6s": _lines(eni.ipv6_addresses),
        "local-hostname": _hostname(eni.private_ips[0], region) if eni.private_ips else None,
        "local-ipv4s": _lines(eni.private_ips),
        "mac": eni.mac,
        "network-card-index": str(eni.network_card_index),
        "owner-id": eni.owner_id,
        "security-group-ids": _lines(eni.security_group_ids),
        "subnet-id": eni.subnet_id,
        "subnet-ipv4-cidr-block": eni.subnet_cidr,
        "subnet-ipv6-cidr-blocks": _lines(eni.subnet_ipv6_cidrs),
        "vpc-id": eni.vpc_id,
        "vpc-ipv4-cidr-block": vpc_cidrs[0] if vpc_cidrs else None,
        "vpc-ipv4-cidr-blocks": _lines(vpc_cidrs),
        "vpc-ipv6-cidr-blocks": _lines(eni.vpc_ipv6_cidrs),
    }
    return {k: v for k, v in tree.items() if v is not None}


def _hostname(ip: str, region: str) -> str:
    domain = "ec2.internal" if region == "us-east-1" else f"{region}.compute.internal"
    return "ip-" + ip.replace(".", "-") + "." + domain


def render_tree(meta: InstanceMeta) -> Tree:
    """The ``/latest/`` tree of one instance."""
    primary = next(
        (e for e in meta.enis if e.device_index == 0 and e.network_card_index == 0), None
    )
    macs = {e.mac: _eni_tree(e, e.vpc_cidrs, meta.region) for e in meta.enis}
    local_ipv4 = primary.private_ips[0] if primary is not None and primary.private_ips else None
    meta_data: dict[str, Any] = {
        "ami-id": "ami-00000000000000000",
        "hostname": _hostname(local_ipv4, meta.region) if local_ipv4 else None,
        "instance-id": meta.instance_id,
        "instance-type": meta.instance_type,
        "local-hostname": _hostname(local_ipv4, meta.region) if local_ipv4 else None,
        "local-ipv4": local_ipv4,
        "mac": primary.mac if primary is not None else None,
        "network": {"interfaces": {"macs": macs}},
        "placement": {
            "availability-zone": meta.availability_zone,
            "region": meta.region,
        },
        "services": {"domain": "amazonaws.com", "partition": "aws"},
    }
    document = {
        "accountId": meta.account_id,
        "availabilityZone": meta.availability_zone,
        "instanceId": meta.instance_id,
        "instanceType": meta.instance_type,
        "privateIp": local_ipv4,
        "region": meta.region,
        "version": "2017-09-30",
    }
    return {
        "dynamic": {"instance-identity": {"document": json.dumps(document, indent=2)}},
        "meta-data": {k: v for k, v in meta_data.items() if v is not None},
    }


def lookup(tree: Tree, path: str) -> str | None:
    """Body for ``path`` under ``/latest/``: a leaf's value or a directory listing; None = 404."""
    node: Any = tree
    for part in (p for p in path.split("/") if p):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    if isinstance(node, dict):
        return "\n".join(k + "/" if isinstance(v, dict) else k for k, v in node.items())
    return str(node)


# -- tokens ------------------------------------------------------------------------------


class TokenStore:
    """IMDSv2 session tokens, each valid for the instance it was issued to."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._tokens: dict[str, tuple[float, str]] = {}
        self._lock = threading.Lock()

    def issue(self, instance_id: str, ttl: int) -> str:
        token = secrets.token_urlsafe(42)
        now = self._clock()
        with self._lock:
            # Drop expired tokens here so the table cannot grow without bound.
            self._tokens = {t: v for t, v in self._tokens.items() if v[0] > now}
            self._tokens[token] = (now + ttl, instance_id)
        return token

    def valid(self, token: str | None, instance_id: str) -> bool:
        if not token:
            return False
        with self._lock:
            entry = self._tokens.get(token)
        return entry is not None and entry[0] > self._clock() and entry[1] == instance_id


# -- the app -------------------------------------------------------------------------------

Resolver = Callable[[str], "str | None"]


class ImdsApp:
    """WSGI app; ``resolver`` maps a request's source address to an instance id."""

    def __init__(self, source: MetadataSource, resolver: Resolver | None = None) -> None:
        self.source = source
        self.resolver: Resolver = resolver or source.instance_for_address
        self.tokens = TokenStore()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        request = Request(environ)
        response = self.handle(request)
        return response(environ, start_response)

    def handle(self, request: Request) -> Response:
        instance_id = self.resolver(request.remote_addr or "")
        if instance_id is None:
            return _text("Forbidden", 403)
        if request.path.rstrip("/") == TOKEN_PATH:
            return self._token(request, instance_id)
        if request.method not in ("GET", "HEAD"):
            return _text("Method Not Allowed", 405)
        if not self.tokens.valid(request.headers.get(TOKEN_HEADER), instance_id):
            # As on an instance with HttpTokens=required: v1 (tokenless) requests refused.
            return _text("Unauthorized", 401)
        if request.path in ("/", ""):
            return _text("latest", 200)
        if not request.path.startswith("/latest"):
            return _text("Not Found", 404)
        meta = self.source.instance(instance_id)
        if meta is None:
            return _text("Not Found", 404)
        body = lookup(render_tree(meta), request.path[len("/latest") :])
        return _text("Not Found", 404) if body is None else _text(body, 200)

    def _token(self, request: Request, instance_id: str) -> Response:
        if request.method != "PUT":
            return _text("Method Not Allowed", 405)
        if "X-Forwarded-For" in request.headers:
            # IMDS refuses token requests that went through a proxy.
            return _text("Forbidden", 403)
        raw = request.headers.get(TTL_HEADER, "")
        try:
            ttl = int(raw)
        except ValueError:
            return _text("Bad Request", 400)
        if not 1 <= ttl <= MAX_TTL:
            return _text("Bad Request", 400)
        token = self.tokens.issue(instance_id, ttl)
        response = _text(token, 200)
        response.headers[TTL_HEADER] = str(ttl)
        return response


def _text(body: str, status: int) -> Response:
    return Response(body, status=status, content_type="text/plain")


# -- feeding it from the EC2 emulator -------------------------------------------------------


class EmulatorMetadataSource:
    """Reads the emulator's live state, lock held, for the simulator's own instances."""

    def __init__(self, emulator: Any, region: str, instance_ids: Callable[[], Iterable[str]]):
        self._emu = emulator
        self._region = region
        self._instance_ids = instance_ids

    def instance(self, instance_id: str) -> InstanceMeta | None:
        with self._emu.lock:
            try:
                inst = self._emu.backend.get_instance(instance_id)
            except Exception:  # noqa: BLE001 - moto raises its own not-found types
                return None
            enis = [e for e in self._emu.describe_eni_state(instance_id) if e.status == "attached"]
            return InstanceMeta(
                instance_id=instance_id,
                instance_type=inst.instance_type,
                availability_zone=inst.placement.zone or f"{self._region}a",
                region=self._region,
                account_id=self._emu.backend.account_id,
                enis=sorted(enis, key=lambda e: (e.network_card_index, e.device_index)),
            )

    def instance_for_address(self, address: str) -> str | None:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return None
        with self._emu.lock:
            for instance_id in self._instance_ids():
                for eni in self._emu.describe_eni_state(instance_id):
                    if eni.status == "attached" and _owns(eni, ip):
                        return instance_id
        return None


def _owns(eni: Any, ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    text = str(ip)
    if text in eni.private_ips or text in eni.ipv6_addresses:
        return True
    prefixes = eni.ipv4_prefixes if ip.version == 4 else eni.ipv6_prefixes
    return any(ip in ipaddress.ip_network(p, strict=False) for p in prefixes)
