"""``vpccni introspect [enis|allocations|config]``: ipamd's introspection endpoint, as tables.

Reads the endpoint ipamd serves (``INTROSPECTION_BIND_ADDRESS``, default
``127.0.0.1:61679``; ``--endpoint`` overrides, ``unix:<path>`` for a unix socket) and
prints what it returns as a table, or as the raw JSON with ``--json``.
"""

from __future__ import annotations

import argparse
import http.client
import ipaddress
import json
import os
import socket
from collections.abc import Mapping
from typing import Any

from vpccni.cli.main import CliError
from vpccni.ipamd.introspect import ZERO_TIME
from vpccni.ipamd.introspect import cidr_from_go_ipnet

DEFAULT_ENDPOINT = "127.0.0.1:61679"
TIMEOUT_SECONDS = 5.0

VIEWS = {"enis": "/v1/enis", "allocations": "/v1/allocations", "config": "/v1/config"}


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "introspect",
        help="show ipamd's ENIs, allocations or configuration",
        description="Show what ipamd's introspection endpoint reports, as a table or JSON.",
    )
    parser.add_argument(
        "view", nargs="?", choices=tuple(VIEWS), default="enis", help="what to show (enis)"
    )
    parser.add_argument("--json", action="store_true", help="print the endpoint's raw JSON")
    parser.add_argument(
        "--endpoint",
        default=None,
        help="host:port, http://host:port or unix:PATH "
        f"(default: $INTROSPECTION_BIND_ADDRESS or {DEFAULT_ENDPOINT})",
    )
    parser.set_defaults(func=run)


# -- fetching ----------------------------------------------------------------------------


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def _connection(endpoint: str) -> http.client.HTTPConnection:
    if endpoint.startswith("unix:"):
        return _UnixConnection(endpoint[len("unix:") :], TIMEOUT_SECONDS)
    hostport = endpoint.removeprefix("http://").rstrip("/")
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        raise CliError(f"{endpoint}: expected host:port, http://host:port or unix:PATH")
    host = host.strip("[]")
    # ipamd may be told to bind every interface; the CLI still asks over loopback.
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return http.client.HTTPConnection(host, int(port), timeout=TIMEOUT_SECONDS)


def fetch(endpoint: str, path: str) -> Any:
    """GET ``path`` from the endpoint and decode the JSON; CliError on any failure."""
    conn = _connection(endpoint)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read()
    except (OSError, http.client.HTTPException) as exc:
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        raise CliError(
            f"cannot reach ipamd introspection at {endpoint} ({reason}): is ipamd running, "
            "with introspection enabled on that address? (see --endpoint, "
            "INTROSPECTION_BIND_ADDRESS, DISABLE_INTROSPECTION)"
        ) from None
    finally:
        conn.close()
    if response.status != 200:
        raise CliError(
            f"{endpoint}{path}: HTTP {response.status} {body[:200].decode(errors='replace')}"
        )
    try:
        return json.loads(body)
    except ValueError:
        raise CliError(f"{endpoint}{path}: the answer is not JSON") from None


# -- rendering ---------------------------------------------------------------------------


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    lines = [headers, *rows]
    return [
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in lines
    ]


def _since(value: str) -> str:
    return "-" if not value or value == ZERO_TIME else value


def _cidr_text(cidr: Mapping[str, Any], key: str) -> tuple[str, int, int]:
    """(display, size, assigned) of one upstream CidrInfo."""
    try:
        text = cidr_from_go_ipnet(cidr["Cidr"])
    except (KeyError, TypeError, ValueError):
        text = key
    bits = 128 if ":" in text else 32
    size = 2 ** (bits - int(text.rpartition("/")[2])) if "/" in text else 1
    assigned = sum(
        1
        for a in (cidr.get("IPAddresses") or {}).values()
        if (a.get("IPAMKey") or {}).get("networkName")
    )
    return text, size, assigned


def _by_address(item: tuple[str, Any]) -> tuple[int, int, str]:
    # Numeric order (10.0.1.9 before 10.0.1.10), whatever the keys hold.
    try:
        net = ipaddress.ip_network(item[0], strict=False)
    except ValueError:
        return (9, 0, item[0])
    return (net.version, int(net.network_address), item[0])


#: An ENI in secondary-IP mode holds up to 49 /32s; the table shows a few and a count
#: (``allocations`` and ``--json`` list every address).
CIDRS_SHOWN = 3


def _cidr_list(cidrs: list[str]) -> str:
    if not cidrs:
        return "-"
    if len(cidrs) <= CIDRS_SHOWN:
        return ", ".join(cidrs)
    return ", ".join(cidrs[:CIDRS_SHOWN]) + f" +{len(cidrs) - CIDRS_SHOWN} more"


def render_enis(data: Mapping[str, Any]) -> list[str]:
    headers = ["CARD", "ENI", "DEVICE", "FLAGS", "ROUTE TABLE", "SUBNET", "CIDRS", "ASSIGNED/TOTAL"]
    rows: list[list[str]] = []
    summary: list[str] = []
    for card in sorted(data, key=lambda c: int(c) if str(c).isdigit() else 0):
        pool = data[card]
        enis = pool.get("ENIs") or {}
        for eni in sorted(enis.values(), key=lambda e: e.get("DeviceNumber", 0)):
            flags = [
                name
                for name, field in (
                    ("primary", "IsPrimary"),
                    ("trunk", "IsTrunk"),
                    ("efa", "IsEFA"),
                    ("excluded", "IsExcludedForPodIPs"),
                )
                if eni.get(field)
            ]
            cidrs, total, assigned = [], 0, 0
            for group in ("AvailableIPv4Cidrs", "IPv6Cidrs"):
                for key, cidr in sorted((eni.get(group) or {}).items(), key=_by_address):
                    text, size, used = _cidr_text(cidr, key)
                    cidrs.append(text + (" (prefix)" if cidr.get("IsPrefix") else ""))
                    total += size
                    assigned += used
            rows.append(
                [
                    str(card),
                    str(eni.get("ID", "")),
                    str(eni.get("DeviceNumber", "")),
                    ",".join(flags) or "-",
                    str(eni.get("RouteTableID", "")),
                    str(eni.get("SubnetID", "")) or "-",
                    _cidr_list(cidrs),
                    f"{assigned}/{total}",
                ]
            )
        summary.append(
            f"network card {card}: {pool.get('AssignedIPs', 0)} of {pool.get('TotalIPs', 0)} "
            f"addresses assigned, {len(enis)} ENI(s)"
        )
    if not rows:
        return ["no ENIs in ipamd's datastore", *summary]
    return [*_table(headers, rows), "", *summary]


def render_allocations(data: Mapping[str, Any]) -> list[str]:
    allocations = data.get("Allocations") or []
    cooling = data.get("CoolingDown") or []
    lines: list[str] = []
    if allocations:
        rows = [
            [
                f"{a.get('PodNamespace') or '-'}/{a.get('PodName') or '-'}",
                str(a.get("IfName") or "-"),
                str(a.get("Address", "")),
                str(a.get("ENI", "")),
                str(a.get("DeviceNumber", "")),
                str(a.get("NetworkCard", "")),
                _since(a.get("AssignedTime", "")),
            ]
            for a in allocations
        ]
        headers = ["POD", "IFNAME", "ADDRESS", "ENI", "DEVICE", "CARD", "ASSIGNED SINCE"]
        lines.extend(_table(headers, rows))
    else:
        lines.append("no addresses assigned")
    if cooling:
        rows = [
            [
                str(c.get("Address", "")),
                str(c.get("ENI", "")),
                str(c.get("DeviceNumber", "")),
                _since(c.get("UnassignedTime", "")),
            ]
            for c in cooling
        ]
        lines.extend(["", f"cooling down ({len(cooling)}, not yet reusable):"])
        lines.extend(_table(["ADDRESS", "ENI", "DEVICE", "RELEASED AT"], rows))
    return lines


def render_config(data: Mapping[str, Any]) -> list[str]:
    def text(value: Any) -> str:
        return value if isinstance(value, str) else json.dumps(value)

    return [f"{key} = {text(value)}" for key, value in sorted(data.items())]


RENDERERS = {"enis": render_enis, "allocations": render_allocations, "config": render_config}


def run(args: argparse.Namespace) -> int:
    endpoint = args.endpoint or os.environ.get("INTROSPECTION_BIND_ADDRESS") or DEFAULT_ENDPOINT
    data = fetch(endpoint, VIEWS[args.view])
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    if not isinstance(data, Mapping):
        raise CliError(f"{endpoint}{VIEWS[args.view]}: unexpected answer (not a JSON object)")
    for line in RENDERERS[args.view](data):
        print(line)
    return 0
