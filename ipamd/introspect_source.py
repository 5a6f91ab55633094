"""Adapter from the daemon's datastore and configuration to :class:`IntrospectionSource`."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from collections.abc import Mapping

from vpccni.ipamd import datastore as ds
from vpccni.ipamd import introspect as views
from vpccni.ipamd.config import IpamdConfig


def _address(a: ds.AddressView) -> views.AddressView:
    return views.AddressView(
        address=a.address,
        network_name=a.key.network_name if a.key is not None else "",
        if_name=a.key.ifname if a.key is not None else "",
        pod_namespace=a.meta.namespace,
        pod_name=a.meta.name,
        assigned_time=views.time_from_unix_ns(a.assigned_ns) if a.key is not None else None,
        unassigned_time=views.time_from_unix_ns(a.unassigned_ns),
        in_cooldown=a.in_cooldown,
    )


def _eni(e: ds.EniView) -> views.EniView:
    return views.EniView(
        id=e.id,
        device_number=e.device_number,
        is_primary=e.is_primary,
        is_trunk=e.is_trunk,
        is_efa=e.is_efa,
        is_excluded=e.is_excluded,
        route_table_id=e.route_table,
        subnet_id=e.subnet_id,
        cidrs=tuple(
            views.CidrView(
                cidr=c.cidr,
                is_prefix=c.is_prefix,
                family=6 if ":" in c.cidr else 4,
                addresses=tuple(_address(a) for a in c.addresses),
            )
            for c in e.cidrs
        ),
    )


class DaemonIntrospection:
    """Snapshots of the datastores (looked up on each request: they exist only after node
    init) and of the effective configuration."""

    def __init__(
        self,
        config: IpamdConfig,
        datastores: Callable[[], Mapping[int, ds.DataStore]],
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self._config = config
        self._datastores = datastores
        self._environ = dict(os.environ if environ is None else environ)

    def enis(self) -> Mapping[int, views.EniPoolView]:
        out: dict[int, views.EniPoolView] = {}
        for card, store in self._datastores().items():
            stats = store.stats()
            out[card] = views.EniPoolView(
                total_ips=stats.total_ips,
                assigned_ips=stats.assigned_ips,
                enis=tuple(_eni(e) for e in store.enis()),
            )
        return out

    def ipamd_env(self) -> Mapping[str, str]:
        return views.ipamd_env_settings(self._environ)

    def networkutils_env(self) -> Mapping[str, object]:
        c = self._config
        return views.networkutils_env_settings(
            exclude_snat_cidrs=c.exclude_snat_cidrs,
            external_snat=c.external_snat,
            external_service_cidrs=c.external_service_cidrs,
            eni_mtu=c.eni_mtu,
            veth_prefix=c.veth_prefix,
        )

    def config(self) -> Mapping[str, object]:
        return dataclasses.asdict(self._config)
