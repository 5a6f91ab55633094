"""Native nftables backend: the same behaviour as the iptables rules, in our own table.

Everything lives in ``table ip aws-cni`` (upstream's nftables connmark table name), so nothing
another component owns is ever read-modify-written: kube-proxy's ``ip kube-proxy`` table,
iptables-nft's ``ip nat``/``ip mangle`` tables and portmap's rules are simply other tables.
The chains keep upstream's names where upstream has them::

    nat-postrouting    (nat, hook postrouting, priority srcnat)  -> jump AWS-SNAT-CHAIN-0
    AWS-SNAT-CHAIN-0   return per VPC / excluded CIDR, then snat to <primary ip> [flags]
    nat-prerouting     (nat, hook prerouting, priority -90: after kube-proxy's DNAT at -100)
                       fib daddr type local return; iifname "<veth>*" jump
                       AWS-CONNMARK-CHAIN-0; restore the mark
    AWS-CONNMARK-CHAIN-0  return per exempt CIDR, then ct mark set ct mark | <mark>
    mangle-prerouting  (filter, hook prerouting, priority mangle) the "AWS, primary ENI" rules

State is read with ``nft -j list table`` and changes are applied with one ``nft -j -f -``
transaction. Rules are built in the JSON form nft lists them back (a /32 as a bare address,
snat flags as a string), so a correct node compares equal and a sync writes nothing. A chain
whose rules differ is flushed and refilled; if the set of chains or a base-chain hook differs
the table is rebuilt; both within the one transaction.

Restoring the mark: ``ct mark & M == M meta mark set meta mark | M`` rather than upstream's
``meta mark set ct mark & M``, which would wipe every other bit of the packet mark (kube-proxy
sets 0x4000 in nat prerouting at -100, before us, to ask for masquerade).
"""

from __future__ import annotations

import json
from typing import Any

from vpccni.ipamd.snat.model import COMMENT_CONNMARK
from vpccni.ipamd.snat.model import COMMENT_CONNMARK_JUMP
from vpccni.ipamd.snat.model import COMMENT_PRIMARY_ENI
from vpccni.ipamd.snat.model import COMMENT_SNAT
from vpccni.ipamd.snat.model import COMMENT_SNAT_JUMP
from vpccni.ipamd.snat.model import CONNMARK_CHAIN
from vpccni.ipamd.snat.model import NOTHING
from vpccni.ipamd.snat.model import SNAT_CHAIN
from vpccni.ipamd.snat.model import DesiredRules
from vpccni.ipamd.snat.model import Randomize
from vpccni.ipamd.snat.model import ReturnRule
from vpccni.ipamd.snat.model import Runner
from vpccni.ipamd.snat.model import apply_then_sync_host_rule

FAMILY = "ip"
TABLE = "aws-cni"

Expr = list[dict[str, Any]]
#: chain name -> (base-chain spec or {} for a regular chain, [(comment, expr), ...])
Chains = dict[str, tuple[dict[str, Any], list[tuple[str | None, Expr]]]]


def _base(kind: str, hook: str, prio: int) -> dict[str, Any]:
    return {"type": kind, "hook": hook, "prio": prio, "policy": "accept"}


def _match(left: Any, right: Any, op: str = "==") -> dict[str, Any]:
    return {"match": {"op": op, "left": left, "right": right}}


def _meta(key: str) -> dict[str, Any]:
    return {"meta": {"key": key}}


def _ct_mark() -> dict[str, Any]:
    return {"ct": {"key": "mark"}}


def _daddr(cidr: str) -> dict[str, Any]:
    addr, _, length = cidr.partition("/")
    # nft lists a /32 as the bare address; build it that way so comparisons match.
    right: Any = addr if length in ("", "32") else {"prefix": {"addr": addr, "len": int(length)}}
    return _match({"payload": {"protocol": "ip", "field": "daddr"}}, right)


def _return(r: ReturnRule) -> tuple[str | None, Expr]:
    return r.comment, [*([_daddr(r.cidr)] if r.cidr else []), {"return": None}]


def _or_mark(key: dict[str, Any], mark: int) -> dict[str, Any]:
    return {"mangle": {"key": key, "value": {"|": [key, mark]}}}


def _restore(mark: int) -> Expr:
    return [_match({"&": [_ct_mark(), mark]}, mark), _or_mark(_meta("mark"), mark)]


def render(desired: DesiredRules) -> Chains:
    chains: Chains = {}
    if desired.snat:
        s = desired.snat
        snat: dict[str, Any] = {"addr": s.to_source}
        flag = {Randomize.HASHRANDOM: "random", Randomize.PRNG: "fully-random"}.get(s.randomize)
        if flag:
            snat["flags"] = flag
        chains["nat-postrouting"] = (
            _base("nat", "postrouting", 100),
            [(COMMENT_SNAT_JUMP, [{"jump": {"target": SNAT_CHAIN}}])],
        )
        final: Expr = [
            _match(_meta("oifname"), "vlan*", "!="),
            _match({"fib": {"result": "type", "flags": ["daddr"]}}, "local", "!="),
            {"snat": snat},
        ]
        chains[SNAT_CHAIN] = ({}, [*(_return(r) for r in s.returns), (COMMENT_SNAT, final)])
    if desired.connmark:
        c = desired.connmark
        chains["nat-prerouting"] = (
            _base("nat", "prerouting", -90),
            [
                (None, [_match({"fib": {"result": "type", "flags": ["daddr"]}}, "local"),
                        {"return": None}]),
                (COMMENT_CONNMARK_JUMP, [_match(_meta("iifname"), f"{c.veth_prefix}*"),
                                         {"jump": {"target": CONNMARK_CHAIN}}]),
                (COMMENT_CONNMARK, _restore(c.mark)),
            ],
        )  # fmt: skip
        chains[CONNMARK_CHAIN] = (
            {},
            [*(_return(r) for r in c.returns), (COMMENT_CONNMARK, [_or_mark(_ct_mark(), c.mark)])],
        )
    p = desired.primary_eni
    mangle: list[tuple[str | None, Expr]] = []
    if p.set_mark_on:
        mangle.append((COMMENT_PRIMARY_ENI, [
            _match(_meta("iifname"), p.set_mark_on),
            # --limit-iface-in: local to the interface the packet came in on
            _match({"fib": {"result": "type", "flags": ["daddr", "iif"]}}, "local"),
            _or_mark(_ct_mark(), p.mark),
        ]))  # fmt: skip
    if p.restore_on_veth:
        mangle.append(
            (COMMENT_PRIMARY_ENI, [_match(_meta("iifname"), f"{p.restore_on_veth}*"),
                                   *_restore(p.mark)])
        )  # fmt: skip
    if p.restore_on_vlan:
        mangle.append((COMMENT_PRIMARY_ENI, [_match(_meta("iifname"), "vlan*"), *_restore(p.mark)]))
    if mangle:
        chains["mangle-prerouting"] = (_base("filter", "prerouting", -150), mangle)
    return chains


def parse_listing(items: list[dict[str, Any]]) -> Chains:
    """``nft -j list table`` objects -> the same shape :func:`render` returns."""
    chains: Chains = {}
    for item in items:
        if "chain" in item:
            ch = item["chain"]
            spec = {k: ch[k] for k in ("type", "hook", "prio", "policy") if k in ch}
            chains[ch["name"]] = (spec, [])
        elif "rule" in item:
            rule = item["rule"]
            expr = [e for e in rule["expr"] if "counter" not in e]  # counters are not rules
            chains.setdefault(rule["chain"], ({}, []))[1].append((rule.get("comment"), expr))
    return chains


def _chain_obj(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"chain": {"family": FAMILY, "table": TABLE, "name": name, **spec}}


def _rule_obj(chain: str, comment: str | None, expr: Expr) -> dict[str, Any]:
    rule: dict[str, Any] = {"family": FAMILY, "table": TABLE, "chain": chain, "expr": expr}
    if comment:
        rule["comment"] = comment
    return {"rule": rule}


def plan(current: Chains | None, want: Chains) -> list[dict[str, Any]]:
    """nft JSON commands turning ``current`` (None: no table) into ``want``; [] if equal."""
    table = {"table": {"family": FAMILY, "name": TABLE}}
    if not want:
        return [{"delete": table}] if current is not None else []
    if current == want:
        return []
    fills = [
        {"add": _rule_obj(name, comment, expr)}
        for name, (_, rules) in want.items()
        for comment, expr in rules
    ]
    if current is None or {k: v[0] for k, v in current.items()} != {
        k: v[0] for k, v in want.items()
    }:
        # Chains come or go, or a hook changed: rebuild. "add" first so "delete" cannot fail.
        cmds: list[dict[str, Any]] = [{"add": table}, {"delete": table}, {"add": table}]
        cmds += [{"add": _chain_obj(n, spec)} for n, (spec, _) in want.items()]
        return cmds + fills
    cmds = []
    for name, (_, rules) in want.items():
        if current[name][1] != rules:
            cmds.append({"flush": _chain_obj(name, {})})
            cmds += [{"add": _rule_obj(name, c, e)} for c, e in rules]
    return cmds


class NftablesBackend:
    """Node SNAT in ``table ip aws-cni`` with nft."""

    name = "nftables"

    def __init__(self, netns: str | None = None) -> None:
        self.runner = Runner(netns)

    def current(self) -> Chains | None:
        """Our table's chains and rules, or None when the table does not exist."""
        tables = json.loads(self.runner.run(["nft", "-j", "list", "tables", FAMILY]) or "{}")
        names = {o["table"]["name"] for o in tables.get("nftables", []) if "table" in o}
        if TABLE not in names:
            return None
        out = self.runner.run(["nft", "-j", "list", "table", FAMILY, TABLE])
        return parse_listing(json.loads(out)["nftables"])

    def plan(self, desired: DesiredRules) -> list[dict[str, Any]]:
        return plan(self.current(), render(desired))

    def sync(self, desired: DesiredRules, *, host_rule: bool = True) -> bool:
        cmds = self.plan(desired)
        script = json.dumps({"nftables": cmds}) if cmds else ""
        argv = ["nft", "-j", "-f", "-"]
        return apply_then_sync_host_rule(self.runner, argv, script, desired, host_rule)

    def remove(self) -> bool:
        return self.sync(NOTHING)

    def present(self) -> bool:
        return self.current() is not None
