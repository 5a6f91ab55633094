"""The CNI invocation: environment variables and ``CNI_ARGS``, validated all at once.

Mirrors skel's table of variables: which verbs need which variable.  Every missing or
invalid variable is reported in one error (code 4) so an operator fixes them in one go.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field

from vpccni.core import errors


class Command(enum.StrEnum):
    ADD = "ADD"
    DEL = "DEL"
    CHECK = "CHECK"
    VERSION = "VERSION"
    STATUS = "STATUS"
    GC = "GC"
    #: Not an exec verb of the spec: returns the cached result of an attachment, as
    #: libcni's GetNetworkListCachedResult does for a runtime.
    GET = "GET"


_ATTACH = frozenset({Command.ADD, Command.DEL, Command.CHECK, Command.GET})

#: (variable, verbs that require it).  CNI_PATH is required where a plugin may
#: delegate, as skel does; DEL does not need CNI_NETNS (the namespace may be gone).
_REQUIRED: tuple[tuple[str, frozenset[Command]], ...] = (
    ("CNI_CONTAINERID", _ATTACH),
    ("CNI_NETNS", frozenset({Command.ADD, Command.CHECK})),
    ("CNI_IFNAME", _ATTACH),
    ("CNI_PATH", frozenset({Command.ADD, Command.DEL, Command.CHECK})),
)

# SPEC "Parameters": container ids are alphanumeric plus _ . -, starting alphanumeric.
_CONTAINER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
# Linux IFNAMSIZ is 16 including the terminator; '/', ':' and whitespace are not allowed.
_IFNAME_BAD = re.compile(r"[/:\s]")

K8S_ARG_KEYS = ("K8S_POD_NAME", "K8S_POD_NAMESPACE", "K8S_POD_INFRA_CONTAINER_ID", "K8S_POD_UID")


@dataclass(frozen=True, slots=True)
class K8sArgs:
    pod_name: str = ""
    pod_namespace: str = ""
    infra_container_id: str = ""
    pod_uid: str = ""


@dataclass(frozen=True, slots=True)
class Invocation:
    command: Command
    container_id: str = ""
    netns: str = ""
    ifname: str = ""
    path: tuple[str, ...] = ()
    args: Mapping[str, str] = field(default_factory=dict)
    k8s: K8sArgs = field(default_factory=K8sArgs)

    @property
    def attachment_key(self) -> tuple[str, str]:
        return (self.container_id, self.ifname)


def k8s_args(args: Mapping[str, str]) -> K8sArgs:
    return K8sArgs(
        pod_name=args.get("K8S_POD_NAME", ""),
        pod_namespace=args.get("K8S_POD_NAMESPACE", ""),
        infra_container_id=args.get("K8S_POD_INFRA_CONTAINER_ID", ""),
        pod_uid=args.get("K8S_POD_UID", ""),
    )


def validate_ifname(name: str) -> str | None:
    """Why ``name`` cannot be a Linux interface name, or None when it can."""
    if not name:
        return "must not be empty"
    if len(name.encode()) > 15:
        return f"{name!r} is longer than 15 bytes (IFNAMSIZ)"
    if name in (".", ".."):
        return f"{name!r} is not a valid interface name"
    if _IFNAME_BAD.search(name):
        return f"{name!r} contains '/', ':' or whitespace"
    return None


def parse_cni_args(raw: str) -> tuple[dict[str, str], list[str]]:
    """``K=V;K2=V2`` -> mapping, and the problems found (empty when fine)."""
    out: dict[str, str] = {}
    problems: list[str] = []
    if not raw:
        return out, problems
    for pair in raw.split(";"):
        if not pair:
            continue
        key, sep, value = pair.partition("=")
        if not sep or not key:
            problems.append(f"CNI_ARGS: {pair!r} is not of the form KEY=VALUE")
            continue
        out[key] = value
    ignore_unknown = out.get("IgnoreUnknown", "").lower() in ("1", "true")
    known = {*K8S_ARG_KEYS, "IgnoreUnknown"}
    unknown = sorted(k for k in out if k not in known)
    if unknown and not ignore_unknown:
        problems.append(
            f"CNI_ARGS: unknown key(s) {', '.join(unknown)} (set IgnoreUnknown=1 to allow)"
        )
    return out, problems


def from_environ(env: Mapping[str, str]) -> Invocation:
    """Build the invocation or raise CniError(4) listing every problem."""
    problems: list[str] = []
    raw_command = env.get("CNI_COMMAND", "")
    try:
        command = Command(raw_command)
    except ValueError:
        valid = ", ".join(c.value for c in Command)
        if raw_command:
            raise errors.invalid_environment(
                [f"CNI_COMMAND: unknown command {raw_command!r} (expected one of {valid})"]
            ) from None
        raise errors.invalid_environment(
            [f"CNI_COMMAND: not set (expected one of {valid})"]
        ) from None

    for var, required_for in _REQUIRED:
        if command in required_for and not env.get(var):
            problems.append(f"{var}: required for {command} but not set")

    container_id = env.get("CNI_CONTAINERID", "")
    if container_id and not _CONTAINER_ID.fullmatch(container_id):
        problems.append(
            f"CNI_CONTAINERID: {container_id!r} must start with a letter or digit and contain "
            "only letters, digits, '_', '.' and '-'"
        )
    ifname = env.get("CNI_IFNAME", "")
    if ifname and (why := validate_ifname(ifname)):
        problems.append(f"CNI_IFNAME: {why}")
    netns = env.get("CNI_NETNS", "")
    if netns and not netns.startswith("/"):
        problems.append(f"CNI_NETNS: {netns!r} must be an absolute path")

    args, arg_problems = parse_cni_args(env.get("CNI_ARGS", ""))
    if command in _ATTACH:
        problems.extend(arg_problems)
    if problems:
        raise errors.invalid_environment(problems)

    path = tuple(p for p in env.get("CNI_PATH", "").split(":") if p)
    k8s = k8s_args(args)
    return Invocation(
        command=command,
        container_id=container_id,
        netns=netns,
        ifname=ifname,
        path=path,
        args=args,
        k8s=k8s,
    )
