"""ipamd's side of node SNAT: build the wanted rules, choose the backend, keep them in sync.

What the daemon does, and when (upstream aws-node: ``SetupHostNetwork`` at node init and
``updateCIDRsRulesOnChange`` every 30 s; reference 3.2 step 3, 3.4):

- **at start**, after node init and before the gRPC socket serves pods
  (:meth:`SnatSync.start`): build a :class:`~vpccni.ipamd.snat.SnatConfig` from the validated
  :class:`~vpccni.ipamd.config.IpamdConfig` (``AWS_VPC_K8S_CNI_EXTERNALSNAT``,
  ``AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS``, ``AWS_VPC_K8S_CNI_VETHPREFIX``), the environment
  (``AWS_VPC_K8S_CNI_CONNMARK``, ``AWS_VPC_K8S_CNI_RANDOMIZESNAT``,
  ``AWS_VPC_CNI_NODE_PORT_SUPPORT``, read as leniently as upstream) and the primary ENI's
  metadata (its VPC IPv4 CIDRs, primary private IPv4, and the name of the link with its MAC in
  the namespace ipamd runs in); choose the backend once (``VPCCNI_SNAT_BACKEND``, see
  :mod:`vpccni.ipamd.snat.select`); delete what other backends left (:func:`remove_others`);
  sync.  A node that is already right is not rewritten, so restarts leave one copy of each rule.
- **every** ``VPCCNI_SNAT_SYNC_INTERVAL`` **seconds** (default 30, upstream's period): read the
  primary ENI's ``vpc-ipv4-cidr-blocks`` from instance metadata and sync again.  A changed
  CIDR list (a CIDR associated with or removed from the VPC) rewrites the RETURN rules; an
  unchanged one makes the sync a no-op that also repairs rules someone deleted.
- **external SNAT on** (``AWS_VPC_K8S_CNI_EXTERNALSNAT=true``): the same sync, whose wanted
  state has no ``AWS-SNAT-CHAIN-0`` and no ``AWS-CONNMARK-CHAIN-0``: they are removed if a
  previous run made them.  As upstream, NodePort support (on by default) keeps its mangle
  "AWS, primary ENI" rules and the ``fwmark`` policy rule; with
  ``AWS_VPC_CNI_NODE_PORT_SUPPORT=false`` as well, nothing of ours remains.
- **at shutdown** (:meth:`SnatSync.stop`): the watcher stops; the rules stay, so pods keep
  their egress while the daemon restarts (upstream does not remove them either).
- **IPv6 mode**: nothing; node SNAT is IPv4-only (IPv4 egress of IPv6 pods is egress-cni's).

The priority-1024 ``fwmark <mark>/<mark> lookup main`` policy rule is owned by the backend's
``sync`` (``host_rule=True``) alone: nothing else in ipamd writes it, so nothing fights
over it.

Failures (a firewall command, instance metadata unreachable) are logged and counted in
``awscni_ipamd_error_count{fn="snatSync"}``; they never stop the daemon: pods inside the VPC
work without SNAT, and the next tick retries.

Environment (ours, beside upstream's): ``VPCCNI_SNAT_BACKEND`` (``auto``), and
``VPCCNI_SNAT_SYNC_INTERVAL`` (seconds > 0, default 30; short in tests).  :func:`check_env`
validates both at daemon start, with the rest of the configuration.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
from collections.abc import Mapping

from vpccni.ipamd.config import IpamdConfig
from vpccni.ipamd.metadata import EniMetadata
from vpccni.ipamd.metadata import InstanceMetadata
from vpccni.ipamd.metadata import MetadataError
from vpccni.ipamd.metrics import Metrics
from vpccni.ipamd.snat import BACKEND_ENV
from vpccni.ipamd.snat import SnatBackend
from vpccni.ipamd.snat import SnatConfig
from vpccni.ipamd.snat import SnatError
from vpccni.ipamd.snat import backend_from_env
from vpccni.ipamd.snat import desired_rules
from vpccni.ipamd.snat import remove_others
from vpccni.ipamd.snat.select import CHOICES

log = logging.getLogger(__name__)

INTERVAL_ENV = "VPCCNI_SNAT_SYNC_INTERVAL"
DEFAULT_INTERVAL = 30.0
#: ``awscni_ipamd_error_count`` label for every failure here.
METRIC_FN = "snatSync"
_STOP_JOIN_SECONDS = 10.0


def _interval(env: Mapping[str, str]) -> float:
    raw = (env.get(INTERVAL_ENV) or "").strip()
    if not raw:
        return DEFAULT_INTERVAL
    value = float(raw)  # ValueError names the bad text
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{raw!r} is not > 0")
    return value


def check_env(env: Mapping[str, str]) -> list[str]:
    """Problems with ``VPCCNI_SNAT_BACKEND`` / ``VPCCNI_SNAT_SYNC_INTERVAL``, one line each, in
    the daemon's configuration-error style (empty: both fine)."""
    problems = []
    choice = (env.get(BACKEND_ENV) or "auto").strip().lower()
    if choice not in CHOICES:
        expected = ", ".join(CHOICES)
        problems.append(f"{BACKEND_ENV}={env.get(BACKEND_ENV)!r}: expected one of {expected}")
    try:
        _interval(env)
    except ValueError:
        problems.append(f"{INTERVAL_ENV}={env.get(INTERVAL_ENV)!r}: expected seconds > 0")
    return problems


def primary_interface(mac: str, netns: str | None = None) -> str:
    """Name of the link with ``mac`` in ipamd's namespace (``eth0``, ``ens5``, ...): the
    NodePort mangle rule matches on it."""
    from pyroute2 import IPRoute  # noqa: PLC0415 - netlink only where needed

    from vpccni.ipamd.host_net import find_link  # noqa: PLC0415

    # flags=0: open an existing namespace, never create one by accident.
    ipr = IPRoute(netns=netns, flags=0) if netns else IPRoute()
    try:
        return find_link(ipr, mac)[1]
    finally:
        ipr.close()


def snat_config(
    config: IpamdConfig,
    env: Mapping[str, str],
    *,
    vpc_cidrs: tuple[str, ...],
    primary_ip: str,
    primary_interface: str,
) -> SnatConfig:
    """The wanted SNAT setup.  What :class:`IpamdConfig` validated (strictly, at start) wins
    over ``SnatConfig.from_env``'s lenient reading of the same variables."""
    base = SnatConfig.from_env(
        env, vpc_cidrs=vpc_cidrs, primary_ip=primary_ip, primary_interface=primary_interface
    )
    return dataclasses.replace(
        base,
        external_snat=config.external_snat,
        exclude_cidrs=config.exclude_snat_cidrs,
        veth_prefix=config.veth_prefix,
    )


class SnatSync:
    """Node SNAT for one ipamd: :meth:`start` once node init is done, :meth:`stop` at exit."""

    def __init__(
        self,
        config: IpamdConfig,
        metadata: InstanceMetadata,
        primary: EniMetadata,
        metrics: Metrics | None,
        env: Mapping[str, str],
        *,
        netns: str | None = None,
    ) -> None:
        self.config = config
        self.metadata = metadata
        self.primary = primary
        self.metrics = metrics
        self.env = dict(env)
        self.netns = netns
        self.interval = _interval(env)
        self.enabled = config.enable_ipv4 and not config.enable_ipv6
        self.backend: SnatBackend | None = None
        #: The VPC CIDRs the rules were last built from.
        self.vpc_cidrs: tuple[str, ...] = tuple(primary.vpc_ipv4_cidrs)
        self.syncs = 0  # successful syncs (for tests and introspection)
        self.failures = 0
        self._interface: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- life cycle --------------------------------------------------------------------------
    def start(self) -> None:
        """Choose the backend, clean the others, sync once, start the watcher.  Never raises
        for a firewall or metadata problem: it is logged, counted and retried each tick."""
        if not self.enabled:
            log.info("SNAT: IPv6 mode, no node SNAT rules (IPv4 only)")
            return
        self._first_sync()
        self._thread = threading.Thread(target=self._watch, name="snat-sync", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the watcher; the rules stay (pods keep egress across a daemon restart)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(_STOP_JOIN_SECONDS)
            self._thread = None

    # -- work --------------------------------------------------------------------------------
    def _failed(self, what: str, exc: BaseException) -> None:
        self.failures += 1
        log.error("SNAT: %s failed: %s", what, exc)
        if self.metrics is not None:
            self.metrics.error(METRIC_FN)

    def _first_sync(self) -> None:
        try:
            backend = self._backend()
        except (SnatError, OSError, ValueError) as exc:
            self._failed("choosing the firewall backend", exc)
            return
        try:
            cleaned = remove_others(backend, self.netns)
            if cleaned:
                log.info("SNAT: removed our rules from %s", ", ".join(cleaned))
        except (SnatError, OSError) as exc:
            self._failed("cleaning other backends", exc)
        self.sync()

    def _backend(self) -> SnatBackend:
        # Chosen once per daemon: `auto` prefers the backend holding our rules, so a restart
        # keeps it, and re-choosing on every tick could only flip-flop.
        if self.backend is None:
            self.backend = backend_from_env(self.env, self.netns)
        return self.backend

    def wanted(self) -> SnatConfig:
        if self._interface is None:
            self._interface = primary_interface(self.primary.mac, self.netns)
        return snat_config(
            self.config,
            self.env,
            vpc_cidrs=self.vpc_cidrs,
            primary_ip=self.primary.primary_ipv4,
            primary_interface=self._interface,
        )

    def sync(self) -> bool:
        """Make the node match the wanted rules now; True when something changed.  Failures
        are logged and counted (False)."""
        try:
            backend = self._backend()
            config = self.wanted()
            changed = backend.sync(desired_rules(config))
        except (SnatError, OSError, ValueError) as exc:
            self._failed("sync", exc)
            return False
        self.syncs += 1
        if changed:
            log.info(
                "SNAT (%s): rules updated: VPC %s, excluded %s, external SNAT %s, to %s",
                backend.name,
                ",".join(config.vpc_cidrs),
                ",".join(config.exclude_cidrs) or "-",
                config.external_snat,
                config.primary_ip,
            )
        else:
            log.debug("SNAT (%s): rules already in place", backend.name)
        return changed

    def refresh_vpc_cidrs(self) -> bool:
        """Re-read the primary ENI's VPC CIDRs from instance metadata; True when they changed."""
        cidrs = tuple(self.metadata.eni(self.primary.mac).vpc_ipv4_cidrs)
        if not cidrs:
            # A metadata hiccup must not turn every VPC destination into SNATed traffic.
            raise MetadataError("instance metadata lists no VPC IPv4 CIDR for the primary ENI")
        if cidrs == self.vpc_cidrs:
            return False
        log.info("SNAT: VPC CIDRs changed: %s -> %s", self.vpc_cidrs, cidrs)
        self.vpc_cidrs = cidrs
        return True

    def tick(self) -> None:
        """One watcher round: new CIDRs from metadata (if it answers), then sync."""
        try:
            self.refresh_vpc_cidrs()
        except MetadataError as exc:
            # Keep the last known CIDRs; still sync so deleted rules come back.
            self._failed("reading the VPC CIDRs", exc)
        self.sync()

    def _watch(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.tick()
            except Exception as exc:  # noqa: BLE001 - the watcher must survive anything
                self._failed("watcher round", exc)
