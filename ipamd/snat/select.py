"""Which firewall backend programs the node SNAT rules: ``VPCCNI_SNAT_BACKEND``.

Values: ``iptables`` (nf_tables or legacy flavour detected, see
:func:`vpccni.ipamd.snat.iptables.detect_mode`), ``iptables-nft`` / ``iptables-legacy`` (flavour
forced), ``nftables`` (native, ``table ip aws-cni``), or ``auto`` (default), decided in order:

1. only one kind of tool installed -> that one (both missing is an error);
2. rules of ours already exist -> keep that backend (iptables checked first), so a restart
   never flips backends and leaves two copies of SNAT that disagree;
3. kube-proxy runs in nftables mode (``table ip kube-proxy`` exists) and no ``KUBE-`` chain
   exists in either iptables flavour -> ``nftables``: the node is nftables-native;
4. otherwise ``iptables``, upstream aws-node's choice, which keeps ``iptables-save | grep AWS``
   and similar operator tooling working.

After choosing, :func:`remove_others` deletes what other backends left behind (upstream does
the same when it switches between its iptables and nftables connmark backends).
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Mapping

from vpccni.ipamd.snat.iptables import IptablesBackend
from vpccni.ipamd.snat.iptables import detect_mode
from vpccni.ipamd.snat.model import NOTHING
from vpccni.ipamd.snat.model import Runner
from vpccni.ipamd.snat.model import SnatBackend
from vpccni.ipamd.snat.model import SnatError
from vpccni.ipamd.snat.nftables import NftablesBackend

log = logging.getLogger(__name__)

BACKEND_ENV = "VPCCNI_SNAT_BACKEND"
CHOICES = ("auto", "iptables", "iptables-nft", "iptables-legacy", "nftables")
CONCRETE = ("iptables-nft", "iptables-legacy", "nftables")


def _have(*tools: str) -> bool:
    return all(shutil.which(t) for t in tools)


def make_backend(name: str, netns: str | None = None) -> SnatBackend:
    """A backend by concrete name (one of :data:`CONCRETE`)."""
    if name == "nftables":
        return NftablesBackend(netns)
    if name in ("iptables-nft", "iptables-legacy"):
        return IptablesBackend(name.removeprefix("iptables-"), netns)
    raise ValueError(f"SNAT backend {name!r}: expected one of {CONCRETE}")


def _iptables_has_kube_chains(runner: Runner) -> bool:
    for mode in ("nft", "legacy"):
        try:
            text = runner.run([f"iptables-{mode}-save"])
        except (SnatError, OSError):
            continue
        if any(line.startswith(":KUBE-") for line in text.splitlines()):
            return True
    return False


def _kube_proxy_nftables(runner: Runner) -> bool:
    try:
        out = json.loads(runner.run(["nft", "-j", "list", "tables", "ip"]) or "{}")
    except (SnatError, OSError, ValueError):
        return False
    return any(o.get("table", {}).get("name") == "kube-proxy" for o in out.get("nftables", []))


def choose(choice: str, netns: str | None = None) -> str:
    """Resolve a :data:`CHOICES` value to a concrete backend name (rules in the module doc)."""
    if choice not in CHOICES:
        raise ValueError(f"{BACKEND_ENV}={choice!r}: expected one of {', '.join(CHOICES)}")
    runner = Runner(netns)
    if choice == "iptables":
        return f"iptables-{detect_mode(runner)}"
    if choice != "auto":
        return choice
    has_ipt = _have("iptables-nft-save", "iptables-nft-restore") or _have(
        "iptables-legacy-save", "iptables-legacy-restore"
    )
    has_nft = _have("nft")
    if not (has_ipt or has_nft):
        raise SnatError("neither iptables nor nft is installed")
    if not has_nft:
        return f"iptables-{detect_mode(runner)}"
    if not has_ipt:
        return "nftables"
    for name in ("iptables-nft", "iptables-legacy", "nftables"):
        try:
            if make_backend(name, netns).present():
                return name
        except (SnatError, OSError):
            continue  # e.g. legacy tables unavailable in this kernel
    if _kube_proxy_nftables(runner) and not _iptables_has_kube_chains(runner):
        return "nftables"
    return f"iptables-{detect_mode(runner)}"


def backend_from_env(env: Mapping[str, str], netns: str | None = None) -> SnatBackend:
    choice = (env.get(BACKEND_ENV) or "auto").strip().lower()
    name = choose(choice, netns)
    log.info("SNAT backend: %s (%s=%s)", name, BACKEND_ENV, choice)
    return make_backend(name, netns)


def remove_others(chosen: SnatBackend, netns: str | None = None) -> list[str]:
    """Remove our firewall rules from every backend other than ``chosen`` (the policy rule is
    left alone: ``chosen.sync`` owns it). Returns the names of backends that were cleaned."""
    cleaned: list[str] = []
    for name in CONCRETE:
        if name == chosen.name:
            continue
        try:
            other = make_backend(name, netns)
            if other.present():
                # The policy rule is shared by all backends: leave it to `chosen`.
                other.sync(NOTHING, host_rule=False)
                cleaned.append(name)
        except (SnatError, OSError) as exc:
            log.warning("SNAT: could not check/clean %s: %s", name, exc)
    return cleaned
