"""Per-container SNAT of egress-cni (upstream ``cmd/egress-cni-plugin/snat/snat.go``).

For a pod's egress address ``src`` the nat table gets, in the namespace the plugin runs in
(the node's):

* chain ``CNI-E4-<hash>`` (IPv4 egress) or ``CNI-E6-<hash>`` (IPv6 egress), the hash being
  containernetworking's ``MustFormatChainNameWithPrefix(network, containerID, prefix)``
  (SHA-512 of ``network + containerID``, the whole name cut at 28 characters);
* in it, ``-d <multicast> -j ACCEPT`` then ``-j SNAT --to-source <nodeIP>`` with
  ``--random-fully`` (prng, falling back to ``--random`` when iptables lacks it),
  ``--random`` (hashrandom) or nothing (none);
* ``POSTROUTING -s <src> -j <chain>``;

every rule carrying the comment ``name: "<network>" id: "<containerID>"``.

Writes go through one ``iptables-restore --noflush`` transaction (declaring the chain
flushes it, so a retried ADD rewrites it rather than appending duplicates); the flavour
(nf_tables or legacy) is the one ipamd's node SNAT uses
(:func:`vpccni.ipamd.snat.iptables.detect_mode`), so both sets of rules land in the same
tables.  ip6tables follows the flavour iptables was found in.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass

from vpccni.ipamd.snat.iptables import parse_save
from vpccni.ipamd.snat.model import Runner
from vpccni.ipamd.snat.model import SnatError

#: containernetworking/plugins pkg/utils: maxChainLength and chainPrefix
MAX_CHAIN_LENGTH = 28
CNI_CHAIN_PREFIX = "CNI-"
CHAIN_PREFIX = {4: "E4-", 6: "E6-"}
MULTICAST = {4: "224.0.0.0/4", 6: "ff00::/8"}
RANDOMIZE = ("prng", "hashrandom", "none")

Rule = tuple[str, ...]


def chain_name(network: str, container_id: str, family: int) -> str:
    """``utils.MustFormatChainNameWithPrefix(network, containerID, "E4-"|"E6-")``."""
    digest = hashlib.sha512((network + container_id).encode()).hexdigest()
    return (CNI_CHAIN_PREFIX + CHAIN_PREFIX[family] + digest)[:MAX_CHAIN_LENGTH]


def comment(network: str, container_id: str) -> str:
    """``utils.FormatComment``: Go's %q of both values."""
    return f"name: {_go_quote(network)} id: {_go_quote(container_id)}"


def _go_quote(text: str) -> str:
    # Network names and container ids are restricted to [A-Za-z0-9_.-]: only the
    # surrounding quotes of %q ever appear, but escape like Go for anything else.
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _host_cidr(address: str) -> str:
    ip = ipaddress.ip_address(address)
    return f"{ip}/{32 if ip.version == 4 else 128}"


@dataclass(frozen=True, slots=True)
class EgressSnat:
    """The rules of one pod's egress address."""

    family: int
    chain: str
    comment: str
    node_ip: str
    source: str  # bare address of the pod's egress interface
    randomize: str = "prng"

    def chain_rules(self, random_fully: bool = True) -> list[Rule]:
        """The chain's rules in ``iptables-save`` order and spelling."""
        flag: list[str] = []
        if self.randomize == "hashrandom" or (self.randomize == "prng" and not random_fully):
            flag = ["--random"]
        elif self.randomize == "prng":
            flag = ["--random-fully"]
        tag = ["-m", "comment", "--comment", self.comment]
        return [
            ("-d", MULTICAST[self.family], *tag, "-j", "ACCEPT"),
            (*tag, "-j", "SNAT", "--to-source", self.node_ip, *flag),
        ]

    def jump(self) -> Rule:
        return ("-s", _host_cidr(self.source), "-m", "comment", "--comment", self.comment,
                "-j", self.chain)  # fmt: skip


def _quote(token: str) -> str:
    # iptables-restore reads double quotes with backslash escapes (as iptables-save writes).
    if token and not any(c.isspace() or c in '"\\' for c in token):
        return token
    return '"' + token.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _line(op: str, chain: str, rule: Rule) -> str:
    return " ".join([op, chain, *(_quote(t) for t in rule)])


class Iptables:
    """iptables or ip6tables of one flavour, in the namespace this process runs in."""

    def __init__(self, family: int, mode: str | None = None, runner: Runner | None = None) -> None:
        self.family = family
        self.runner = runner or Runner(None)
        if mode is None:
            from vpccni.ipamd.snat.iptables import detect_mode  # noqa: PLC0415

            mode = detect_mode(self.runner)
        self.mode = mode
        self.tool = f"{'iptables' if family == 4 else 'ip6tables'}-{mode}"

    def save_nat(self) -> tuple[set[str], dict[str, list[Rule]]]:
        state = parse_save(self.runner.run([f"{self.tool}-save", "-t", "nat"])).get("nat")
        if state is None:
            return set(), {}
        return state.chains, state.rules

    def random_fully_supported(self) -> bool:
        out = self.runner.run([self.tool, "--version"])
        m = re.search(r"v(\d+)\.(\d+)\.(\d+)", out)
        return bool(m) and tuple(int(x) for x in m.groups()) >= (1, 6, 2)  # type: ignore[union-attr]

    def restore(self, lines: Sequence[str]) -> None:
        if not lines:
            return
        script = "\n".join(["*nat", *lines, "COMMIT", ""])
        wait = ["-w"] if self.mode == "legacy" else []
        try:
            self.runner.run([f"{self.tool}-restore", "--noflush", *wait], stdin=script)
        except SnatError as exc:
            raise SnatError(f"{exc}\ninput was:\n{script}") from exc

    # -- the three operations --------------------------------------------------------
    def add(self, snat: EgressSnat) -> None:
        """Chain (rewritten whole) and exactly one POSTROUTING jump for ``snat.source``."""
        random_fully = snat.randomize != "prng" or self.random_fully_supported()
        _, rules = self.save_nat()
        jump = snat.jump()
        lines = [f":{snat.chain} - [0:0]"]
        lines += [_line("-A", snat.chain, r) for r in snat.chain_rules(random_fully)]
        copies = [r for r in rules.get("POSTROUTING", []) if r == jump]
        # one -D per extra copy: a crash between two ADDs never leaves duplicates behind
        lines += [_line("-D", "POSTROUTING", r) for r in copies[1:]]
        if not copies:
            lines.append(_line("-A", "POSTROUTING", jump))
        self.restore(lines)

    def delete(self, chain: str) -> list[str]:
        """Every POSTROUTING jump to ``chain`` (whatever its source), then the chain.
        Returns the sources whose jumps were removed; nothing there is success."""
        chains, rules = self.save_nat()
        jumps = [r for r in rules.get("POSTROUTING", []) if _target(r) == chain]
        lines = [_line("-D", "POSTROUTING", r) for r in jumps]
        if chain in chains:
            lines += [f":{chain} - [0:0]", f"-X {chain}"]
        self.restore(lines)
        return [r[r.index("-s") + 1] for r in jumps if "-s" in r]

    def problems(self, snat: EgressSnat) -> list[str]:
        """What CHECK finds missing or different (empty when all is in place)."""
        chains, rules = self.save_nat()
        found = []
        if snat.chain not in chains:
            found.append(f"nat chain {snat.chain} is missing")
        else:
            have = rules.get(snat.chain, [])
            want = snat.chain_rules(True)
            want_fallback = snat.chain_rules(False)
            if have not in (want, want_fallback):
                found.append(
                    f"nat chain {snat.chain} holds {[' '.join(r) for r in have]}, "
                    f"want {[' '.join(r) for r in want]}"
                )
        jumps = [r for r in rules.get("POSTROUTING", []) if r == snat.jump()]
        if len(jumps) != 1:
            found.append(
                f"POSTROUTING has {len(jumps)} jump(s) -s {_host_cidr(snat.source)} "
                f"-j {snat.chain}, want 1"
            )
        return found


def _target(rule: Rule) -> str | None:
    return rule[rule.index("-j") + 1] if "-j" in rule and rule.index("-j") + 1 < len(rule) else None
