"""iptables backend: upstream's rules, byte for byte as ``iptables-save`` prints them.

Reads with ``iptables-save -t nat|mangle`` and writes one ``iptables-restore --noflush`` per
sync, so a sync is one atomic transaction per table and never touches a chain it does not own
(kube-proxy's, portmap's, Calico's survive). Ours are:

- the chains ``AWS-SNAT-CHAIN-<n>`` and ``AWS-CONNMARK-CHAIN-<n>`` (n > 0 are leftovers of old
  multi-chain layouts, reference 3.2 step 6, and are deleted);
- in the built-in chains, rules that jump to those chains or carry an upstream ``AWS`` comment.

Rules are rendered in the canonical form ``iptables-save`` prints (``--set-xmark``,
``--nfmask/--ctmask``), so "is the node already right?" is a plain comparison of token lists
and a sync on a correct node writes nothing. A user chain that differs is rewritten whole
(declaring an existing chain with ``--noflush`` flushes it); a built-in chain whose AWS rules
differ (missing, duplicated, stale, or out of order) gets all of them deleted and re-appended
in the same transaction.

Which iptables (nf_tables or legacy) is decided by :func:`detect_mode`.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field

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
from vpccni.ipamd.snat.model import SnatError
from vpccni.ipamd.snat.model import apply_then_sync_host_rule

Rule = tuple[str, ...]  # the tokens after "-A <chain>"

_OUR_CHAIN = re.compile(r"^AWS-(SNAT|CONNMARK)-CHAIN-\d+$")
# The built-in chains upstream puts rules in; AWS-commented rules elsewhere are not touched.
_BUILTIN = ("PREROUTING", "POSTROUTING")
# Kube-proxy's hint chains (iptables-wrapper): whichever iptables holds them is the node's.
_KUBE_HINTS = ("KUBE-IPTABLES-HINT", "KUBE-KUBELET-CANARY")

MODES = ("nft", "legacy")


def _comment(text: str) -> list[str]:
    return ["-m", "comment", "--comment", text]


def _return(r: ReturnRule) -> Rule:
    dest = ["-d", r.cidr] if r.cidr else []
    return (*dest, *_comment(r.comment), "-j", "RETURN")


def _restore_mark(mark: int) -> list[str]:
    return ["-j", "CONNMARK", "--restore-mark", "--nfmask", f"{mark:#x}", "--ctmask", f"{mark:#x}"]


def render(desired: DesiredRules, random_fully: bool = True) -> dict[str, dict[str, list[Rule]]]:
    """table -> chain -> rules in kernel order. Built-in chains list only our rules; a user
    chain of ours that is absent from the result must not exist."""
    nat: dict[str, list[Rule]] = {"PREROUTING": [], "POSTROUTING": []}
    mangle: dict[str, list[Rule]] = {"PREROUTING": []}
    if desired.snat:
        s = desired.snat
        nat["POSTROUTING"].append((*_comment(COMMENT_SNAT_JUMP), "-j", SNAT_CHAIN))
        flag = {
            Randomize.NONE: [],
            Randomize.HASHRANDOM: ["--random"],
            # upstream falls back to --random where iptables lacks --random-fully (< 1.6.2)
            Randomize.PRNG: ["--random-fully"] if random_fully else ["--random"],
        }[s.randomize]
        snat_rule: Rule = (
            "!", "-o", "vlan+", *_comment(COMMENT_SNAT), "-m", "addrtype", "!", "--dst-type",
            "LOCAL", "-j", "SNAT", "--to-source", s.to_source, *flag,
        )  # fmt: skip
        nat[SNAT_CHAIN] = [*(_return(r) for r in s.returns), snat_rule]
    if desired.connmark:
        c = desired.connmark
        mark = f"{c.mark:#x}"
        # The jump must come before the restore: the first packet is marked, then copied.
        nat["PREROUTING"] += [
            ("-i", f"{c.veth_prefix}+", *_comment(COMMENT_CONNMARK_JUMP), "-j", CONNMARK_CHAIN),
            (*_comment(COMMENT_CONNMARK), *_restore_mark(c.mark)),
        ]
        nat[CONNMARK_CHAIN] = [
            *(_return(r) for r in c.returns),
            (*_comment(COMMENT_CONNMARK), "-j", "CONNMARK", "--set-xmark", f"{mark}/{mark}"),
        ]
    p = desired.primary_eni
    mark = f"{p.mark:#x}"
    if p.set_mark_on:
        mangle["PREROUTING"].append(
            ("-i", p.set_mark_on, *_comment(COMMENT_PRIMARY_ENI), "-m", "addrtype",
             "--dst-type", "LOCAL", "--limit-iface-in", "-j", "CONNMARK", "--set-xmark",
             f"{mark}/{mark}")
        )  # fmt: skip
    if p.restore_on_veth:
        mangle["PREROUTING"].append(
            ("-i", f"{p.restore_on_veth}+", *_comment(COMMENT_PRIMARY_ENI), *_restore_mark(p.mark))
        )
    if p.restore_on_vlan:
        mangle["PREROUTING"].append(
            ("-i", "vlan+", *_comment(COMMENT_PRIMARY_ENI), *_restore_mark(p.mark))
        )
    return {"nat": nat, "mangle": mangle}


@dataclass
class TableState:
    chains: set[str] = field(default_factory=set)
    rules: dict[str, list[Rule]] = field(default_factory=dict)


def parse_save(text: str) -> dict[str, TableState]:
    """``iptables-save`` output -> table -> declared chains and rules (tokens after -A CHAIN)."""
    tables: dict[str, TableState] = {}
    cur: TableState | None = None
    for line in text.splitlines():
        if line.startswith("*"):
            cur = tables.setdefault(line[1:].strip(), TableState())
        elif cur is None or line.startswith("#"):
            continue
        elif line.startswith(":"):
            cur.chains.add(line[1:].split()[0])
        elif line.startswith("-A "):
            tokens = shlex.split(line)
            cur.rules.setdefault(tokens[1], []).append(tuple(tokens[2:]))
    return tables


def is_ours(rule: Rule) -> bool:
    """A rule in a built-in chain that this module manages."""
    if "-j" in rule and _OUR_CHAIN.match(rule[rule.index("-j") + 1]):
        return True
    if "--comment" in rule:
        comment = rule[rule.index("--comment") + 1]
        return comment.startswith("AWS")
    return False


def _quote(token: str) -> str:
    # iptables-restore understands double quotes only (not shell single quotes).
    return f'"{token}"' if not token or any(c.isspace() for c in token) else token


def _line(op: str, chain: str, rule: Rule) -> str:
    return " ".join([op, chain, *(_quote(t) for t in rule)])


def plan_table(current: TableState, want: dict[str, list[Rule]]) -> list[str]:
    """iptables-restore lines (between ``*table`` and ``COMMIT``) that turn ``current`` into
    ``want``; empty when nothing differs."""
    decls: list[str] = []
    body: list[str] = []
    for chain in _BUILTIN:
        have = [r for r in current.rules.get(chain, []) if is_ours(r)]
        target = want.get(chain, [])
        if have == target:
            continue
        body += [_line("-D", chain, r) for r in have]  # one -D per copy removes duplicates
        body += [_line("-A", chain, r) for r in target]
    drop: list[str] = []
    ours = {c for c in current.chains if _OUR_CHAIN.match(c)}
    for chain in sorted(ours | {c for c in want if c not in _BUILTIN}):
        if chain not in want:
            decls.append(f":{chain} - [0:0]")  # flushes it, so -X below succeeds
            drop.append(f"-X {chain}")
        elif chain not in current.chains or current.rules.get(chain, []) != want[chain]:
            decls.append(f":{chain} - [0:0]")
            body += [_line("-A", chain, r) for r in want[chain]]
    if not (decls or body or drop):
        return []
    return decls + body + drop


class IptablesBackend:
    """Node SNAT with iptables; ``mode`` is ``nft`` (iptables-nft) or ``legacy``."""

    def __init__(self, mode: str, netns: str | None = None) -> None:
        if mode not in MODES:
            raise ValueError(f"iptables mode {mode!r}: expected one of {MODES}")
        self.mode = mode
        self.name = f"iptables-{mode}"
        self.runner = Runner(netns)
        self._random_fully: bool | None = None

    def _cmd(self, tool: str) -> str:
        return f"iptables-{self.mode}-{tool}" if tool else f"iptables-{self.mode}"

    def save(self, table: str) -> TableState:
        text = self.runner.run([self._cmd("save"), "-t", table])
        return parse_save(text).get(table, TableState())

    def random_fully_supported(self) -> bool:
        """--random-fully needs iptables >= 1.6.2 (and a kernel from 3.14)."""
        if self._random_fully is None:
            out = self.runner.run([self._cmd(""), "--version"])
            m = re.search(r"v(\d+)\.(\d+)\.(\d+)", out)
            version = tuple(int(x) for x in m.groups()) if m else (0, 0, 0)
            self._random_fully = version >= (1, 6, 2)
        return self._random_fully

    def plan(self, desired: DesiredRules) -> str:
        """The iptables-restore input a sync would apply ("" = nothing to do)."""
        want = render(desired, self.random_fully_supported() if desired.snat else True)
        out: list[str] = []
        for table in ("nat", "mangle"):
            lines = plan_table(self.save(table), want[table])
            if lines:
                out += [f"*{table}", *lines, "COMMIT"]
        return "\n".join(out) + "\n" if out else ""

    def sync(self, desired: DesiredRules, *, host_rule: bool = True) -> bool:
        # -w: legacy iptables serialises writers on /run/xtables.lock (kube-proxy too).
        wait: Sequence[str] = ["-w"] if self.mode == "legacy" else []
        argv = [self._cmd("restore"), "--noflush", *wait]
        return apply_then_sync_host_rule(self.runner, argv, self.plan(desired), desired, host_rule)

    def remove(self) -> bool:
        return self.sync(NOTHING)

    def present(self) -> bool:
        for table in ("nat", "mangle"):
            state = self.save(table)
            if any(_OUR_CHAIN.match(c) for c in state.chains):
                return True
            if any(is_ours(r) for c in _BUILTIN for r in state.rules.get(c, [])):
                return True
        return False


def _rule_count(runner: Runner, mode: str) -> tuple[bool, int]:
    """(kube-proxy hint chain present, number of rules) in one iptables flavour."""
    try:
        text = runner.run([f"iptables-{mode}-save"])
    except (SnatError, OSError):
        return False, 0
    hint = any(f":{h} " in text for h in _KUBE_HINTS)
    return hint, sum(1 for line in text.splitlines() if line.startswith("-A "))


def detect_mode(runner: Runner) -> str:
    """nf_tables or legacy, the way kube-proxy's iptables-wrapper decides: the flavour holding
    kubelet/kube-proxy's hint chains wins; otherwise the one with more rules (the other
    components on the node already use it); on a tie, what ``iptables --version`` names
    (upstream aws-node's rule: "legacy" in the output means legacy)."""
    nft_hint, nft_rules = _rule_count(runner, "nft")
    legacy_hint, legacy_rules = _rule_count(runner, "legacy")
    if nft_hint != legacy_hint:
        return "nft" if nft_hint else "legacy"
    if nft_rules != legacy_rules:
        return "nft" if nft_rules > legacy_rules else "legacy"
    try:
        version = runner.run(["iptables", "--version"])
    except (SnatError, OSError):
        return "nft"
    return "legacy" if "legacy" in version else "nft"
