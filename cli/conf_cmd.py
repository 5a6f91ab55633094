"""``vpccni conf check FILE``: validate a conflist the way the plugin will see it.

The conflist schema first, then ``cniVersions`` negotiation, then every plugin entry of
ours (aws-cni, egress-cni and installed driver types) at the negotiated version, with
JSON paths that point into the file (``$.plugins[0].vethPrefix``).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from vpccni.cli.main import CliError

OUR_TYPES = ("aws-cni", "egress-cni")


def register(sub: Any) -> None:
    parser = sub.add_parser("conf", help="validate CNI configuration files")
    conf_sub = parser.add_subparsers(dest="conf_command", metavar="ACTION", required=True)
    check = conf_sub.add_parser("check", help="validate a .conflist (schemas, versions)")
    check.add_argument("file", help="path of the .conflist")
    check.add_argument("--json", action="store_true", help="print the verdict as JSON")
    check.set_defaults(func=check_file)


def check_conflist(conflist: Any) -> tuple[str | None, list[str]]:
    """The negotiated version and the problems found (empty when valid)."""
    from vpccni.core import errors  # noqa: PLC0415
    from vpccni.core import netconf  # noqa: PLC0415
    from vpccni.core import version  # noqa: PLC0415

    problems = netconf.schema_problems(conflist, "conflist")
    if problems:
        return None, problems
    try:
        negotiated = version.negotiate(conflist.get("cniVersion"), conflist.get("cniVersions"))
    except errors.CniError as exc:
        return None, [f"$.cniVersion: {exc.details}"]
    for index, plugin in enumerate(conflist["plugins"]):
        if plugin.get("type") not in OUR_TYPES:
            continue
        # The runtime injects name and cniVersion into each plugin's configuration.
        effective = {**plugin, "name": conflist["name"], "cniVersion": negotiated}
        try:
            netconf.validate(effective)
        except errors.CniError as exc:
            prefix = f"$.plugins[{index}]"
            problems.extend(p.replace("$", prefix, 1) for p in exc.details.split("; "))
    return negotiated, problems


def check_file(args: argparse.Namespace) -> int:
    try:
        with open(args.file, "rb") as f:
            conflist = json.load(f)
    except OSError as exc:
        raise CliError(f"{args.file}: {exc.strerror}") from None
    except ValueError as exc:
        raise CliError(f"{args.file}: not valid JSON ({exc})") from None
    negotiated, problems = check_conflist(conflist)
    if args.json:
        print(json.dumps({"file": args.file, "cniVersion": negotiated, "problems": problems}))
    elif problems:
        for problem in problems:
            print(f"{args.file}: {problem}")
    else:
        print(f"{args.file}: valid, runs at cniVersion {negotiated}")
    return 1 if problems else 0
