"""ipamd's introspection endpoint: read-only JSON views of the datastore and configuration.

Served on ``INTROSPECTION_BIND_ADDRESS`` (default ``127.0.0.1:61679``; ``unix:<path>`` for a
unix socket), with upstream's paths and JSON shapes (reference section 9) so existing tooling
and runbooks keep working:

``/``
    ``{"AvailableCommands": [...]}`` (sorted; upstream lists them in random map order).
``/v1/enis``
    network-card index -> ``{"TotalIPs", "AssignedIPs", "ENIs": {eniID: ENI}}``, the ENI with
    upstream's exported fields.  ``Cidr`` is Go's ``net.IPNet`` encoding (``{"IP", "Mask"}``,
    the mask base64), times are RFC 3339 with Go's zero time ``0001-01-01T00:00:00Z`` for
    "never", and ``IPAMKey.containerID``/``ifName`` are scrubbed as upstream v1.23+ does.
    One deviation: ``AddressFamily`` is ``"4"``/``"6"`` (upstream's copy leaves it ``""``).
``/v1/ipamd-env-settings``, ``/v1/networkutils-env-settings``
    the environment echoes of reference section 8.1.

Our additions (not upstream):

``/v1/allocations``
    ``{"Allocations": [...], "CoolingDown": [...]}``: which pod holds which address on which
    ENI (device number, route table, network card, since when), and the released addresses
    still in ``IP_COOLDOWN_PERIOD``, which upstream's counts hide.  Derived from the same
    snapshot as ``/v1/enis`` so the two never disagree.  The container id is left out, as
    it is from ``/v1/enis``.
``/v1/config``
    the full effective configuration (every setting, defaults included), which the env
    echoes above only sample.

Unknown paths answer 404 with a JSON body listing the available paths.  The daemon
implements :class:`IntrospectionSource`; tests use :class:`StaticIntrospectionSource`.
"""

from __future__ import annotations

import base64
import contextlib
import http.server
import ipaddress
import json
import logging
import os
import socket
import socketserver
import stat
import threading
from collections.abc import Callable
from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
from datetime import UTC
from datetime import datetime
from typing import Any
from typing import Protocol

log = logging.getLogger(__name__)

DEFAULT_BIND = "127.0.0.1:61679"
#: Upstream's read and write timeouts; a stuck client cannot pin a handler thread longer.
TIMEOUT_SECONDS = 5.0
#: Go's zero ``time.Time`` as ``encoding/json`` writes it: upstream's "never".
ZERO_TIME = "0001-01-01T00:00:00Z"

# -- the seam the daemon implements -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AddressView:
    """One address the datastore knows: assigned (``network_name`` set) or free/cooling."""

    address: str
    #: The attachment's network name; "" when the address is not assigned.
    network_name: str = ""
    #: The attachment's interface name: shown in /v1/allocations, scrubbed from /v1/enis.
    if_name: str = ""
    pod_namespace: str = ""
    pod_name: str = ""
    assigned_time: datetime | None = None
    unassigned_time: datetime | None = None
    in_cooldown: bool = False

    @property
    def assigned(self) -> bool:
        return bool(self.network_name)


@dataclass(frozen=True, slots=True)
class CidrView:
    """A /32 (or /128) secondary address or a delegated prefix on an ENI."""

    cidr: str
    is_prefix: bool = False
    #: 4 or 6
    family: int = 4
    addresses: Sequence[AddressView] = ()


@dataclass(frozen=True, slots=True)
class EniView:
    id: str
    device_number: int
    is_primary: bool = False
    is_trunk: bool = False
    is_efa: bool = False
    is_excluded: bool = False
    route_table_id: int = 254
    subnet_id: str = ""
    cidrs: Sequence[CidrView] = ()


@dataclass(frozen=True, slots=True)
class EniPoolView:
    """One network card's datastore.  The totals are the daemon's own figures (upstream's
    ``GetIPStats``: non-excluded ENIs, CIDRs of the active mode), not recomputed here."""

    total_ips: int
    assigned_ips: int
    enis: Sequence[EniView] = ()


class IntrospectionSource(Protocol):
    """What the introspection server reads.  Each call returns an immutable snapshot; the
    server calls it from its own threads, so implementations take their own locks."""

    def enis(self) -> Mapping[int, EniPoolView]:
        """Network-card index -> that card's datastore."""
        ...

    def ipamd_env(self) -> Mapping[str, str]:
        """Upstream's ``/v1/ipamd-env-settings`` echo (variable -> raw value)."""
        ...

    def networkutils_env(self) -> Mapping[str, object]:
        """Upstream's ``/v1/networkutils-env-settings`` echo (JSON-able values)."""
        ...

    def config(self) -> Mapping[str, object]:
        """The full effective configuration, e.g. ``dataclasses.asdict(IpamdConfig)``
        (JSON-able values; tuples become lists, anything else its ``str``)."""
        ...


@dataclass
class StaticIntrospectionSource:
    """An in-memory :class:`IntrospectionSource` (tests, demos)."""

    cards: Mapping[int, EniPoolView] = field(default_factory=dict)
    ipamd_env_settings: Mapping[str, str] = field(default_factory=dict)
    networkutils_env_settings: Mapping[str, object] = field(default_factory=dict)
    effective_config: Mapping[str, object] = field(default_factory=dict)

    def enis(self) -> Mapping[int, EniPoolView]:
        return self.cards

    def ipamd_env(self) -> Mapping[str, str]:
        return self.ipamd_env_settings

    def networkutils_env(self) -> Mapping[str, object]:
        return self.networkutils_env_settings

    def config(self) -> Mapping[str, object]:
        return self.effective_config


#: The variables upstream's ``/v1/ipamd-env-settings`` echoes (raw values, "" when unset).
IPAMD_ENV_VARS = (
    "AWS_MANAGE_ENIS_NON_SCHEDULABLE",
    "AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG",
    "ENABLE_SUBNET_DISCOVERY",
    "WARM_ENI_TARGET",
    "WARM_IP_TARGET",
)
#: ``AWS_VPC_K8S_CNI_RANDOMIZESNAT`` as upstream's networkutils echo spells it.
_RANDOMIZE_SNAT = {"none": 0, "hashrandom": 1, "prng": 2}


def ipamd_env_settings(environ: Mapping[str, str]) -> dict[str, str]:
    """Upstream's ipamd echo from the process environment (for ``ipamd_env()``)."""
    return {name: environ.get(name, "") for name in IPAMD_ENV_VARS}


def networkutils_env_settings(
    *,
    connmark: int = 0x80,
    exclude_snat_cidrs: Sequence[str] = (),
    external_snat: bool = False,
    external_service_cidrs: Sequence[str] = (),
    eni_mtu: int = 9001,
    veth_prefix: str = "eni",
    node_port_support: bool = True,
    randomize_snat: str = "prng",
) -> dict[str, object]:
    """Upstream's networkutils echo (for ``networkutils_env()``): typed values, and
    RANDOMIZESNAT as an int (0 none, 1 hashrandom, 2 prng)."""
    return {
        "AWS_VPC_K8S_CNI_CONNMARK": connmark,
        "AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS": list(exclude_snat_cidrs),
        "AWS_VPC_K8S_CNI_EXTERNALSNAT": external_snat,
        "AWS_EXTERNAL_SERVICE_CIDRS": list(external_service_cidrs),
        "AWS_VPC_ENI_MTU": eni_mtu,
        "AWS_VPC_K8S_CNI_VETHPREFIX": veth_prefix,
        "AWS_VPC_CNI_NODE_PORT_SUPPORT": node_port_support,
        "AWS_VPC_K8S_CNI_RANDOMIZESNAT": _RANDOMIZE_SNAT.get(randomize_snat.lower(), 2),
    }


def time_from_unix_ns(ns: int) -> datetime | None:
    """The datastore keeps Unix nanoseconds with 0 for "never"; views take datetimes."""
    return None if ns <= 0 else datetime.fromtimestamp(ns / 1e9, tz=UTC)


# -- JSON encoding (upstream shapes) -------------------------------------------------------


def rfc3339(when: datetime | None) -> str:
    """Go's ``time.Time`` JSON form (RFC 3339, nanosecond precision, trailing zeros dropped)."""
    if when is None:
        return ZERO_TIME
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    when = when.astimezone(UTC)
    text = when.strftime("%Y-%m-%dT%H:%M:%S")
    if when.microsecond:
        text += f".{when.microsecond:06d}".rstrip("0")
    return text + "Z"


def go_ipnet(cidr: str) -> dict[str, str]:
    """Go's ``net.IPNet`` JSON: the IP as text and the mask as base64 bytes (4 or 16)."""
    net = ipaddress.ip_network(cidr, strict=False)
    return {"IP": str(net.network_address), "Mask": base64.b64encode(net.netmask.packed).decode()}


def cidr_from_go_ipnet(value: Mapping[str, str]) -> str:
    """The inverse of :func:`go_ipnet` (for the CLI): ``{"IP", "Mask"}`` -> ``a.b.c.d/n``."""
    mask = base64.b64decode(value["Mask"])
    prefix_len = sum(bin(b).count("1") for b in mask)
    return f"{value['IP']}/{prefix_len}"


def _address_json(a: AddressView) -> dict[str, Any]:
    out: dict[str, Any] = {
        "Address": a.address,
        # Scrubbed as upstream v1.23+: the container id and ifname are not shown.
        "IPAMKey": {"networkName": a.network_name, "containerID": "", "ifName": ""},
        "IPAMMetadata": {},
        "AssignedTime": rfc3339(a.assigned_time),
        "UnassignedTime": rfc3339(a.unassigned_time),
    }
    # Upstream's IPAMMetadata fields are omitempty.
    if a.pod_namespace:
        out["IPAMMetadata"]["k8sPodNamespace"] = a.pod_namespace
    if a.pod_name:
        out["IPAMMetadata"]["k8sPodName"] = a.pod_name
    return out


def _cidr_json(c: CidrView) -> dict[str, Any]:
    return {
        "Cidr": go_ipnet(c.cidr),
        "IPAddresses": {a.address: _address_json(a) for a in c.addresses},
        "IsPrefix": c.is_prefix,
        "AddressFamily": str(c.family),
    }


def eni_json(e: EniView) -> dict[str, Any]:
    return {
        "ID": e.id,
        "IsPrimary": e.is_primary,
        "IsTrunk": e.is_trunk,
        "IsEFA": e.is_efa,
        "DeviceNumber": e.device_number,
        "AvailableIPv4Cidrs": {c.cidr: _cidr_json(c) for c in e.cidrs if c.family == 4},
        "IPv6Cidrs": {c.cidr: _cidr_json(c) for c in e.cidrs if c.family == 6},
        "IsExcludedForPodIPs": e.is_excluded,
        "RouteTableID": e.route_table_id,
        "SubnetID": e.subnet_id,
    }


def enis_json(cards: Mapping[int, EniPoolView]) -> dict[str, Any]:
    return {
        str(card): {
            "TotalIPs": pool.total_ips,
            "AssignedIPs": pool.assigned_ips,
            "ENIs": {e.id: eni_json(e) for e in pool.enis},
        }
        for card, pool in sorted(cards.items())
    }


def allocations_json(cards: Mapping[int, EniPoolView]) -> dict[str, Any]:
    allocations: list[dict[str, Any]] = []
    cooling: list[dict[str, Any]] = []
    for card, pool in sorted(cards.items()):
        for eni in pool.enis:
            for cidr in eni.cidrs:
                for a in cidr.addresses:
                    where = {
                        "Address": a.address,
                        "ENI": eni.id,
                        "DeviceNumber": eni.device_number,
                        "RouteTableID": eni.route_table_id,
                        "NetworkCard": card,
                        "Cidr": cidr.cidr,
                    }
                    if a.assigned:
                        allocations.append(
                            {
                                "PodNamespace": a.pod_namespace,
                                "PodName": a.pod_name,
                                "NetworkName": a.network_name,
                                "IfName": a.if_name,
                                **where,
                                "AssignedTime": rfc3339(a.assigned_time),
                            }
                        )
                    elif a.in_cooldown:
                        cooling.append({**where, "UnassignedTime": rfc3339(a.unassigned_time)})
    return {"Allocations": allocations, "CoolingDown": cooling}


def _jsonable(value: object) -> object:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        items = [_jsonable(v) for v in value]
        return sorted(items, key=str) if isinstance(value, set | frozenset) else items
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


# -- a small HTTP server, shared with the metrics endpoint --------------------------------


#: A route answers (status, content type, body).
Response = tuple[int, str, bytes]
Route = Callable[[], Response]


def parse_bind_address(bind: str) -> tuple[str, int] | str:
    """``host:port`` / ``[v6]:port`` -> (host, port); ``unix:<path>`` -> path.

    Raises ValueError naming the accepted forms."""
    if bind.startswith("unix:"):
        path = bind[len("unix:") :]
        if not path:
            raise ValueError(f"{bind!r}: unix: needs a socket path (unix:/run/x.sock)")
        return path
    host, sep, port_text = bind.rpartition(":")
    if not sep or not port_text.isdigit() or int(port_text) > 65535:
        raise ValueError(f"{bind!r}: expected host:port, [ipv6]:port or unix:<path>")
    host = host.strip("[]") or "127.0.0.1"
    return host, int(port_text)


def json_response(status: int, payload: object) -> Response:
    body = json.dumps(payload, indent=2, sort_keys=False).encode() + b"\n"
    return status, "application/json", body


class _Handler(http.server.BaseHTTPRequestHandler):
    # StreamRequestHandler applies this to the connection socket: upstream's 5 s read and
    # write timeouts, so a slow or stuck client cannot hold a thread.
    timeout = TIMEOUT_SECONDS
    server: _Server
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self._answer(send_body=True)

    def do_HEAD(self) -> None:
        self._answer(send_body=False)

    def _answer(self, send_body: bool) -> None:
        path = self.path.split("?", 1)[0]
        route = self.server.routes.get(path)
        if route is None:
            status, ctype, body = json_response(
                404,
                {"error": f"no such path: {path}", "AvailableCommands": self.server.listing()},
            )
        else:
            try:
                status, ctype, body = route()
            except Exception as exc:  # a broken source must not kill the server
                log.exception("%s: serving %s failed", self.server.name, path)
                status, ctype, body = json_response(500, {"error": f"{type(exc).__name__}: {exc}"})
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def address_string(self) -> str:
        # Unix-socket peers have no address ("" rather than a (host, port) tuple).
        peer: Any = self.client_address
        if isinstance(peer, tuple) and peer:
            return str(peer[0])
        return "unix"

    def log_message(self, format: str, *args: Any) -> None:  # stdlib signature
        # Every request is logged (as upstream does), through logging rather than stderr.
        log.info("%s: %s %s", self.server.name, self.address_string(), format % args)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    # Restarting ipamd must not wait for TIME_WAIT on the old listener.
    allow_reuse_address = True

    def __init__(
        self,
        address: tuple[str, int] | str,
        routes: Mapping[str, Route],
        name: str,
        listed: Sequence[str],
    ) -> None:
        self.routes = dict(routes)
        self.name = name
        self._listed = list(listed)
        if isinstance(address, str):
            self.address_family = socket.AF_UNIX
        elif ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)  # type: ignore[arg-type]

    def listing(self) -> list[str]:
        return self._listed

    def server_bind(self) -> None:
        if self.address_family != socket.AF_UNIX:
            super().server_bind()
            return
        path = str(self.server_address)
        # A socket left by a previous (killed) daemon would make bind fail; anything else at
        # that path is the operator's and bind reports it.
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISSOCK(os.lstat(path).st_mode):
                os.unlink(path)
        socketserver.TCPServer.server_bind(self)
        os.chmod(path, 0o660)
        # HTTPServer.server_bind would unpack (host, port); a unix path has neither.
        self.server_name = "localhost"
        self.server_port = 0


class HttpServerHandle:
    """A running server: ``address`` is ``host:port`` (the real port when 0 was asked for)
    or ``unix:<path>``; ``stop()`` shuts it down and removes the socket file."""

    def __init__(self, server: _Server, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread
        if server.address_family == socket.AF_UNIX:
            self.address = f"unix:{server.server_address}"
        else:
            host, port = server.server_address[:2]
            host = str(host)
            self.address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    @property
    def url(self) -> str:
        """An ``http://`` base URL (TCP) or the ``unix:`` address."""
        return self.address if self.address.startswith("unix:") else f"http://{self.address}"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(TIMEOUT_SECONDS)
        if self._server.address_family == socket.AF_UNIX:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(str(self._server.server_address))

    def __enter__(self) -> HttpServerHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve_http(
    bind: str, routes: Mapping[str, Route], name: str, listed: Sequence[str] = ()
) -> HttpServerHandle:
    """Start a threaded HTTP server on ``bind`` answering GET for ``routes``.  Bind errors
    (address in use, bad address) raise here, in the caller's thread, so the daemon can say
    which setting is wrong."""
    server = _Server(parse_bind_address(bind), routes, name, listed)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.1}, name=name, daemon=True
    )
    thread.start()
    handle = HttpServerHandle(server, thread)
    log.info("%s listening on %s", name, handle.address)
    return handle


# -- the introspection server --------------------------------------------------------------

UPSTREAM_PATHS = ("/v1/enis", "/v1/ipamd-env-settings", "/v1/networkutils-env-settings")
EXTRA_PATHS = ("/v1/allocations", "/v1/config")


def introspection_routes(source: IntrospectionSource) -> dict[str, Route]:
    commands = sorted(UPSTREAM_PATHS + EXTRA_PATHS)
    return {
        "/": lambda: json_response(200, {"AvailableCommands": commands}),
        "/v1/enis": lambda: json_response(200, enis_json(source.enis())),
        "/v1/allocations": lambda: json_response(200, allocations_json(source.enis())),
        "/v1/ipamd-env-settings": lambda: json_response(200, _jsonable(source.ipamd_env())),
        "/v1/networkutils-env-settings": lambda: json_response(
            200, _jsonable(source.networkutils_env())
        ),
        "/v1/config": lambda: json_response(200, _jsonable(source.config())),
    }


def serve_introspection(source: IntrospectionSource, bind: str = DEFAULT_BIND) -> HttpServerHandle:
    """Serve introspection for ``source`` on ``bind`` (``host:port`` or ``unix:<path>``)."""
    routes = introspection_routes(source)
    return serve_http(bind, routes, "introspection", sorted(p for p in routes if p != "/"))
