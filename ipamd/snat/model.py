"""What the node's SNAT and connmark setup should be, as data (reference 3.2 step 3, 3.4).

:func:`desired_rules` turns a :class:`SnatConfig` into a :class:`DesiredRules` that both
backends (``iptables.py``, ``nftables.py``) render in their own syntax, so the two cannot
disagree about *what* is wanted, only about how it is spelt.

Also here, because every backend needs them and a backend must not import another: the
command runner that targets one network namespace, and the ``fwmark <mark>/<mark> lookup main``
policy rule (priority 1024) that makes connmarked traffic use the primary ENI.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import subprocess
from collections.abc import Iterable
from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any
from typing import Protocol

log = logging.getLogger(__name__)

DEFAULT_CONNMARK = 0x80
HOST_RULE_PRIORITY = 1024  # reference 3.1 hostRulePriority
MAIN_TABLE = 254

# Upstream names and comments, kept so operators' grep/alerting keeps working.
SNAT_CHAIN = "AWS-SNAT-CHAIN-0"
CONNMARK_CHAIN = "AWS-CONNMARK-CHAIN-0"
COMMENT_SNAT_JUMP = "AWS SNAT CHAIN"
COMMENT_VPC_RETURN = "AWS SNAT CHAIN"
COMMENT_EXCLUDED_RETURN = "AWS SNAT CHAIN EXCLUSION"
COMMENT_SNAT = "AWS, SNAT"
COMMENT_CONNMARK_JUMP = "AWS, outbound connections"
COMMENT_CONNMARK_RETURN = "AWS CONNMARK CHAIN"
COMMENT_CONNMARK = "AWS, CONNMARK"
COMMENT_PRIMARY_ENI = "AWS, primary ENI"

_UINT32_MAX = 0xFFFFFFFF


class Randomize(Enum):
    """``AWS_VPC_K8S_CNI_RANDOMIZESNAT``; the value is the introspection integer upstream shows."""

    NONE = 0  # no flag: sequential port allocation
    HASHRANDOM = 1  # --random / nft "random"
    PRNG = 2  # --random-fully / nft "fully-random" (upstream default)

    @classmethod
    def parse(cls, value: str | None) -> Randomize:
        # Upstream logs and uses prng for anything it does not know; same here.
        mapping = {"none": cls.NONE, "hashrandom": cls.HASHRANDOM, "prng": cls.PRNG}
        if not value:
            return cls.PRNG
        if value not in mapping:
            log.error("AWS_VPC_K8S_CNI_RANDOMIZESNAT=%r unknown; using prng", value)
            return cls.PRNG
        return mapping[value]


@dataclass(frozen=True)
class SnatConfig:
    """Everything the node SNAT setup depends on. VPC CIDRs and the primary address come from
    instance metadata (ipamd re-reads the CIDRs every 30 s); the rest from the environment."""

    vpc_cidrs: tuple[str, ...]
    primary_ip: str
    primary_interface: str = "eth0"
    exclude_cidrs: tuple[str, ...] = ()
    connmark: int = DEFAULT_CONNMARK
    randomize: Randomize = Randomize.PRNG
    external_snat: bool = False
    node_port_support: bool = True
    veth_prefix: str = "eni"

    def __post_init__(self) -> None:
        # Normalise so equal configs give byte-equal rules (and so no-op syncs stay no-ops).
        object.__setattr__(self, "vpc_cidrs", _v4_cidrs(self.vpc_cidrs, strict=True))
        object.__setattr__(self, "exclude_cidrs", _v4_cidrs(self.exclude_cidrs, strict=True))
        ipaddress.IPv4Address(self.primary_ip)  # raises ValueError on a bad address
        if not 0 < self.connmark <= _UINT32_MAX:
            raise ValueError(f"connmark {self.connmark:#x} out of range")

    @classmethod
    def from_env(
        cls,
        env: Mapping[str, str],
        *,
        vpc_cidrs: Iterable[str],
        primary_ip: str,
        primary_interface: str,
    ) -> SnatConfig:
        """Read the upstream aws-node variables (reference 8.1), as leniently as upstream:
        invalid or IPv6 exclusions are dropped, a bad connmark or randomize mode falls back."""
        return cls(
            vpc_cidrs=tuple(vpc_cidrs),
            primary_ip=primary_ip,
            primary_interface=primary_interface,
            exclude_cidrs=_v4_cidrs(
                (env.get("AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS") or "").split(","), strict=False
            ),
            connmark=parse_connmark(env.get("AWS_VPC_K8S_CNI_CONNMARK")),
            randomize=Randomize.parse(env.get("AWS_VPC_K8S_CNI_RANDOMIZESNAT")),
            external_snat=_bool(env.get("AWS_VPC_K8S_CNI_EXTERNALSNAT"), False),
            node_port_support=_bool(env.get("AWS_VPC_CNI_NODE_PORT_SUPPORT"), True),
            veth_prefix=env.get("AWS_VPC_K8S_CNI_VETHPREFIX") or "eni",
        )


def parse_connmark(value: str | None) -> int:
    """Go's ParseInt(value, 0, 64) with upstream's fallback for <= 0 or > uint32."""
    if not value:
        return DEFAULT_CONNMARK
    try:
        mark = int(value, 0)
    except ValueError:
        log.error("AWS_VPC_K8S_CNI_CONNMARK=%r is not an integer; using 0x80", value)
        return DEFAULT_CONNMARK
    if not 0 < mark <= _UINT32_MAX:
        log.error("AWS_VPC_K8S_CNI_CONNMARK=%r out of range; using 0x80", value)
        return DEFAULT_CONNMARK
    return mark


def _bool(value: str | None, default: bool) -> bool:
    if not value:
        return default
    return value.strip().lower() in ("1", "t", "true")


def _v4_cidrs(items: Iterable[str], *, strict: bool) -> tuple[str, ...]:
    out: list[str] = []
    for item in (s.strip() for s in items):
        if not item:
            continue
        try:
            net = ipaddress.ip_network(item, strict=False)
        except ValueError:
            if strict:
                raise
            log.warning("SNAT: dropping invalid CIDR %r", item)
            continue
        if net.version != 4:
            if strict:
                raise ValueError(f"{item}: IPv4 CIDRs only (SNAT is IPv4-only upstream)")
            log.warning("SNAT: dropping IPv6 CIDR %r", item)
            continue
        if str(net) not in out:
            out.append(str(net))
    return tuple(out)


@dataclass(frozen=True)
class ReturnRule:
    """Traffic to ``cidr`` is left alone (``None`` = everything: an exclusion of 0.0.0.0/0)."""

    cidr: str | None
    comment: str


@dataclass(frozen=True)
class SnatRules:
    """nat POSTROUTING jump to AWS-SNAT-CHAIN-0 and that chain's content, in kernel order."""

    returns: tuple[ReturnRule, ...]
    to_source: str
    randomize: Randomize


@dataclass(frozen=True)
class ConnmarkRules:
    """Mark connections that pods open to outside the exempt set (VPC + exclusions), and copy
    the connmark to the packet mark on their first packet (nat PREROUTING)."""

    returns: tuple[ReturnRule, ...]
    veth_prefix: str
    mark: int


@dataclass(frozen=True)
class PrimaryEniRules:
    """mangle PREROUTING rules with the comment "AWS, primary ENI" (NodePort support)."""

    mark: int
    set_mark_on: str | None  # primary interface: mark connections to the node's own address
    restore_on_veth: str | None  # veth prefix: later packets from pods take the mark back
    restore_on_vlan: bool  # branch ENIs (security groups for pods)

    @property
    def empty(self) -> bool:
        return not (self.set_mark_on or self.restore_on_veth or self.restore_on_vlan)


@dataclass(frozen=True)
class DesiredRules:
    snat: SnatRules | None
    connmark: ConnmarkRules | None
    primary_eni: PrimaryEniRules
    #: ``fwmark <m>/<m> lookup main`` at priority 1024, or None for no such rule.
    ip_rule_mark: int | None

    @property
    def empty(self) -> bool:
        return (
            self.snat is None
            and self.connmark is None
            and self.primary_eni.empty
            and self.ip_rule_mark is None
        )


#: What ``remove()`` converges to: nothing of ours anywhere.
NOTHING = DesiredRules(
    snat=None,
    connmark=None,
    primary_eni=PrimaryEniRules(DEFAULT_CONNMARK, None, None, False),
    ip_rule_mark=None,
)


def _returns(cidrs: Sequence[str], comment: str) -> list[ReturnRule]:
    return [ReturnRule(None if c == "0.0.0.0/0" else c, comment) for c in cidrs]


def desired_rules(config: SnatConfig) -> DesiredRules:
    """Reference 3.4. Upstream inserts every CIDR rule at position 1, VPC CIDRs first, then
    exclusions, so the kernel order is the reverse of that list; we reproduce it so a diff of
    ``iptables-save`` against an upstream node is empty."""
    snat_on = not config.external_snat
    snat = conn = None
    if snat_on:
        order = _returns(config.vpc_cidrs, COMMENT_VPC_RETURN) + _returns(
            config.exclude_cidrs, COMMENT_EXCLUDED_RETURN
        )
        snat = SnatRules(tuple(reversed(order)), config.primary_ip, config.randomize)
        exempt = list(config.vpc_cidrs) + [
            c for c in config.exclude_cidrs if c not in config.vpc_cidrs
        ]
        conn = ConnmarkRules(
            tuple(reversed(_returns(exempt, COMMENT_CONNMARK_RETURN))),
            config.veth_prefix,
            config.connmark,
        )
    nodeport = config.node_port_support
    primary = PrimaryEniRules(
        mark=config.connmark,
        set_mark_on=config.primary_interface if nodeport else None,
        restore_on_veth=config.veth_prefix if (nodeport or snat_on) else None,
        restore_on_vlan=nodeport,
    )
    return DesiredRules(
        snat=snat,
        connmark=conn,
        primary_eni=primary,
        ip_rule_mark=config.connmark if (nodeport or snat_on) else None,
    )


# -- shared runtime pieces ----------------------------------------------------------------


class SnatError(RuntimeError):
    """A firewall or rule command failed; the message carries the command's stderr."""


class Runner:
    """Runs commands in one network namespace: ``netns=None`` is the caller's own (ipamd runs
    inside the node's namespace); a name under /var/run/netns is for tests and tools."""

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns

    def argv(self, cmd: Sequence[str]) -> list[str]:
        return (["ip", "netns", "exec", self.netns] if self.netns else []) + list(cmd)

    def run(self, cmd: Sequence[str], stdin: str | None = None, check: bool = True) -> str:
        proc = subprocess.run(  # fixed argv, never a shell
            self.argv(cmd), input=stdin, capture_output=True, text=True, check=False
        )
        if check and proc.returncode != 0:
            raise SnatError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc.stdout

    def ok(self, cmd: Sequence[str]) -> bool:
        try:
            self.run(cmd)
        except (SnatError, OSError):
            return False
        return True


def _current_host_rules(runner: Runner) -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = json.loads(runner.run(["ip", "-j", "-4", "rule", "show"]) or "[]")
    return [r for r in rules if r.get("priority") == HOST_RULE_PRIORITY and "fwmark" in r]


def apply_then_sync_host_rule(
    runner: Runner,
    argv: Sequence[str],
    script: str,
    desired: DesiredRules,
    host_rule: bool,
) -> bool:
    """The tail every backend's ``sync`` shares: feed ``script`` (the backend's one atomic
    transaction, "" = nothing to change) to ``argv``, then converge the fwmark rule.
    Returns True when anything changed."""
    if script:
        try:
            runner.run(argv, stdin=script)
        except SnatError as exc:
            raise SnatError(f"{exc}\ninput was:\n{script}") from exc
    changed = bool(script)
    if host_rule:
        changed = sync_host_rule(runner, desired.ip_rule_mark) or changed
    return changed


def sync_host_rule(runner: Runner, mark: int | None) -> bool:
    """Converge to exactly one ``fwmark <mark>/<mark> lookup main`` at priority 1024, or none
    when ``mark`` is None. Returns True when something changed. Replies to pods on secondary
    ENIs carry the connmark, and this rule (before the per-pod ``from <pod> lookup <eni>`` at
    1536) sends them out of the primary ENI, whose address they were SNATed to."""
    want = (mark, mark) if mark is not None else None
    changed = False
    kept = False
    for rule in _current_host_rules(runner):
        # `ip -j` prints the mask separately and omits it when it is all ones.
        have = (int(rule["fwmark"], 0), int(rule.get("fwmask", "0xffffffff"), 0))
        if have == want and rule.get("table") == "main" and not kept:
            kept = True  # a second identical rule (a duplicate) is deleted below
            continue
        runner.run(
            [
                "ip",
                "-4",
                "rule",
                "del",
                "priority",
                str(HOST_RULE_PRIORITY),
                "fwmark",
                f"{have[0]:#x}/{have[1]:#x}",
            ]
        )
        changed = True
    if want is not None and not kept:
        runner.run(
            [
                "ip",
                "-4",
                "rule",
                "add",
                "fwmark",
                f"{mark:#x}/{mark:#x}",
                "lookup",
                "main",
                "priority",
                str(HOST_RULE_PRIORITY),
            ]
        )
        changed = True
    return changed


class SnatBackend(Protocol):
    """What ipamd calls. ``sync`` is idempotent and atomic per firewall table (the policy rule
    is a separate netlink change); ``remove`` is ``sync(NOTHING)``. Both return True when they
    changed anything. ``host_rule=False`` leaves the priority-1024 policy rule alone."""

    name: str

    def sync(self, desired: DesiredRules, *, host_rule: bool = True) -> bool: ...

    def remove(self) -> bool: ...

    def present(self) -> bool:
        """Whether any rule of ours exists in this backend's firewall (for auto-selection and
        for cleaning up after a backend switch)."""
        ...
