"""What each CNI command does, around the drivers.

ADD:  ipamd allocates (idempotent per attachment) -> the named driver plumbs the pod ->
      the record is saved.  Any failure unwinds the driver's steps and releases the address.
DEL:  ipamd releases (unreachable ipamd is not an error: upstream returns success so the
      runtime can clean up, and ipamd reconciles later) -> the driver removes what it made
      -> the record goes.  Every step tolerates "already gone".
CHECK, STATUS, GC, GET: see the methods.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any
from typing import cast

from vpccni.core import errors
from vpccni.core import netconf
from vpccni.core import registry
from vpccni.core import version as cniversion
from vpccni.core.driver_api import AttachmentDriver
from vpccni.core.driver_api import ChainedDriver
from vpccni.core.driver_api import Driver
from vpccni.core.driver_api import DriverContext
from vpccni.core.invocation import Command
from vpccni.core.invocation import Invocation
from vpccni.core.ipam import AllocateRequest
from vpccni.core.ipam import Allocation
from vpccni.core.ipam import AttachmentKey
from vpccni.core.ipam import IpamApi
from vpccni.core.ipam import IpamError
from vpccni.core.ipam import PodRef
from vpccni.core.netns import NetnsGone
from vpccni.core.netns import NetnsHandles
from vpccni.core.plugins import Hooks
from vpccni.core.result import Result
from vpccni.core.store import DEFAULT_RUNTIME_CACHE_DIR
from vpccni.core.store import DEFAULT_STATE_DIR
from vpccni.core.store import AttachmentRecord
from vpccni.core.store import AttachmentStore
from vpccni.core.store import read_runtime_cache

log = logging.getLogger("vpccni.runtime")

#: The conflist type that lets ipamd choose the attachment driver (upstream's plugin name).
IPAMD_CHOOSES = "aws-cni"
#: Conflist types served by a chained driver of ours.
CHAINED_TYPES = {"egress-cni": "egress_snat"}
POD_ANNOTATIONS = "io.kubernetes.cri.pod-annotations"
MULTI_NIC_ANNOTATION = "k8s.amazonaws.com/nicConfig"


def make_ipam(conf: Mapping[str, Any]) -> IpamApi:
    section = netconf.ipamd_section(conf)
    if section.get("backend") == "fake":
        from vpccni.core.ipam_fake import FileIpam  # noqa: PLC0415

        return FileIpam(
            state_file=section["stateFile"],
            pools=list(section["pools"]),
            driver=section.get("driver", "test_veth"),
            vpc_cidrs=section.get("vpcCidrs"),
            device_number=int(section.get("deviceNumber", 0)),
            route_table=int(section.get("routeTable", 254)),
        )
    from vpccni.core.ipam_grpc import DEFAULT_SOCKET  # noqa: PLC0415
    from vpccni.core.ipam_grpc import GrpcIpamClient  # noqa: PLC0415

    return GrpcIpamClient(
        socket_path=section.get("socket", DEFAULT_SOCKET),
        timeout_s=float(section.get("timeoutSeconds", 10)),
    )


class Runtime:
    def __init__(self, invocation: Invocation, conf: dict[str, Any], hooks: Hooks) -> None:
        self.inv = invocation
        self.conf = conf
        self.hooks = hooks
        self.cni_version: str = conf["cniVersion"]
        self.network = str(conf.get("name") or conf["type"])
        self.key = AttachmentKey(self.network, invocation.container_id, invocation.ifname)
        self.type = str(conf["type"])
        self.store = AttachmentStore(str(conf.get("stateDir") or DEFAULT_STATE_DIR), self.type)
        self._ipam: IpamApi | None = None
        self._chained: str | None = None
        # Opened before the first ipamd call (see vpccni.core.netns); closed in execute().
        self.netns = NetnsHandles(invocation.netns)
        self.log = logging.LoggerAdapter(
            logging.getLogger("vpccni.runtime"),
            {"container_id": invocation.container_id, "ifname": invocation.ifname},
        )

    # -- collaborators ---------------------------------------------------------------
    @property
    def ipam(self) -> IpamApi:
        if self._ipam is None:
            self._ipam = make_ipam(self.conf)
        return self._ipam

    def _context(
        self,
        name: str,
        driver: Driver,
        key: AttachmentKey | None = None,
        invocation: Invocation | None = None,
    ) -> DriverContext:
        schema = driver.info.conf_schema
        section = netconf.validate_driver_section(self.conf, name, schema)
        runtime_config = self.conf.get("runtimeConfig") or {}
        return DriverContext(
            invocation=invocation or self.inv,
            key=key or self.key,
            cni_version=self.cni_version,
            conf=self.conf,
            section=section,
            ipam=self.ipam,
            netns=self.netns if invocation is None else NetnsHandles(invocation.netns),
            log=logging.LoggerAdapter(
                logging.getLogger(f"vpccni.drivers.{name}"),
                {"container_id": self.inv.container_id, "driver": name},
            ),
            pod_annotations=dict(runtime_config.get(POD_ANNOTATIONS) or {}),
            port_mappings=tuple(runtime_config.get("portMappings") or ()),
        )

    def _chained_name(self) -> str | None:
        """The chained driver this configuration's type names, if it names one."""
        if self._chained is None:
            name = CHAINED_TYPES.get(self.type)
            if name is None and self.type != IPAMD_CHOOSES:
                # A type naming a driver: chained if that driver says so.
                name = self.type if registry.load_driver(self.type).info.kind == "chained" else ""
            self._chained = name or ""
        return self._chained or None

    def _allowed(self, name: str) -> None:
        drivers = self.conf.get("drivers") or {}
        enabled = drivers.get("enabled", registry.DEFAULT_ENABLED)
        if name not in enabled and name != self.type:
            raise errors.CniError(
                errors.PluginCode.DRIVER_NOT_AVAILABLE,
                f"ipamd asked for driver {name!r}, which this configuration does not enable",
                f"$.drivers.enabled is {list(enabled)}; add {name!r} to use it",
            )

    def _attachment_driver(self, name: str, for_delete: bool = False) -> AttachmentDriver:
        driver = registry.load_driver(name)
        if driver.info.kind != "attachment":
            raise errors.invalid_config(f"$.type: driver {name!r} is a chained driver")
        if not driver.info.implemented and not for_delete:
            raise errors.not_implemented(name, driver.info.summary or "its feature is not built")
        return cast(AttachmentDriver, driver)  # kind checked above

    def _chained_driver(self, name: str, for_delete: bool = False) -> ChainedDriver:
        driver = registry.load_driver(name)
        if driver.info.kind != "chained":
            raise errors.invalid_config(f"$.type: driver {name!r} is not a chained driver")
        if not driver.info.implemented and not for_delete:
            raise errors.not_implemented(name, driver.info.summary or "its feature is not built")
        return cast(ChainedDriver, driver)  # kind checked above

    def _prev_result(self, required: bool) -> Result | None:
        raw = self.conf.get("prevResult")
        if raw is None:
            if required:
                raise errors.invalid_config(f"$.prevResult: required for {self.inv.command}")
            return None
        return Result.decode(raw, where="$.prevResult")

    def _require_version(self, floor: tuple[int, int, int]) -> None:
        if not cniversion.at_least(self.cni_version, floor):
            wanted = ".".join(map(str, floor))
            raise errors.incompatible_version(
                f"{self.inv.command} needs cniVersion {wanted} or later; "
                f"the configuration says {self.cni_version}"
            )

    # -- commands --------------------------------------------------------------------
    def execute(self) -> dict[str, Any] | None:
        handler = {
            Command.ADD: self.add,
            Command.DEL: self.delete,
            Command.CHECK: self.check,
            Command.STATUS: self.status,
            Command.GC: self.gc,
            Command.GET: self.get,
        }[self.inv.command]
        try:
            return handler()
        finally:
            self.netns.close()
            if self._ipam is not None:
                self._ipam.close()

    def _open_pod_netns(self) -> None:
        try:
            self.netns.open(require_pod=True)
        except NetnsGone as exc:
            raise errors.invalid_environment([f"CNI_NETNS: {self.inv.netns} {exc.why}"]) from None

    def add(self) -> dict[str, Any]:
        self._open_pod_netns()
        chained = self._chained_name()
        if chained:
            link = self._chained_driver(chained)
            ctx = self._context(chained, link)
            prev = self._prev_result(required=True)
            assert prev is not None  # noqa: S101
            result = self._guarded(ctx, lambda: link.add(ctx, prev))
            self._save(ctx, chained, result, None)
            return self._added(result)

        insisted = None if self.type == IPAMD_CHOOSES else self.type
        annotations = (self.conf.get("runtimeConfig") or {}).get(POD_ANNOTATIONS) or {}
        request = AllocateRequest(
            key=self.key,
            netns=self.inv.netns,
            pod=PodRef(
                namespace=self.inv.k8s.pod_namespace,
                name=self.inv.k8s.pod_name,
                uid=self.inv.k8s.pod_uid,
                infra_container_id=self.inv.k8s.infra_container_id,
            ),
            driver=insisted,
            requires_multi_nic=annotations.get(MULTI_NIC_ANNOTATION) == "multi-nic-attachment",
        )
        try:
            allocation = self.ipam.allocate(request)
        except IpamError as exc:
            raise exc.to_cni_error("add") from None
        name = allocation.driver
        try:
            if insisted is not None and name != insisted:
                raise errors.CniError(
                    errors.PluginCode.IPAMD_PROTOCOL,
                    "ipamd named another driver than the configuration",
                    f"configuration type {insisted!r}, ipamd reply {name!r}",
                )
            self._allowed(name)
            driver = self._attachment_driver(name)
            ctx = self._context(name, driver)
        except BaseException:
            self._release_quietly("SetupNSFailed")
            raise
        ctx.undo.push("release addresses", lambda: self._release_quietly("SetupNSFailed"))
        result = self._guarded(ctx, lambda: driver.add(ctx, allocation))
        self._save(ctx, name, result, allocation)
        return self._added(result)

    def _guarded(self, ctx: DriverContext, step: Any) -> Result:
        try:
            result: Result = step()
            return result
        except BaseException as exc:
            failed = ctx.undo.unwind()
            if isinstance(exc, errors.CniError):
                if failed:
                    exc.details += f" (undo incomplete: {'; '.join(failed)})"
                raise
            details = repr(exc) + (f" (undo incomplete: {'; '.join(failed)})" if failed else "")
            raise errors.CniError(
                errors.PluginCode.NETNS_PLUMBING_FAILED,
                "add: failed to set up the pod network",
                details,
            ) from exc

    def _save(
        self, ctx: DriverContext, name: str, result: Result, allocation: Allocation | None
    ) -> None:
        try:
            self.store.save(
                AttachmentRecord(self.key, self.cni_version, name, result, allocation, self.inv)
            )
        except OSError as exc:
            failed = ctx.undo.unwind()
            raise errors.CniError(
                errors.SpecCode.IO_FAILURE,
                "add: failed to record the attachment",
                f"{self.store.state_dir}: {exc.strerror or exc}"
                + (f" (undo incomplete: {'; '.join(failed)})" if failed else ""),
            ) from None
        ctx.undo.discard()

    def _added(self, result: Result) -> dict[str, Any]:
        self.hooks.after_add(self.inv, result)
        return result.encode(self.cni_version)

    def _release_quietly(self, reason: str) -> None:
        try:
            self.ipam.release(self.key, reason)
        except (IpamError, errors.CniError) as exc:
            self.log.warning("could not release the addresses of %s: %s", self.key.slug(), exc)

    def delete(self) -> None:
        self.netns.open(require_pod=False)  # the pod may be gone: DEL still succeeds
        record = self.store.load(self.key)
        try:
            prev = self._prev_result(required=False)
        except errors.CniError as exc:
            self.log.warning("ignoring an unusable prevResult on DEL: %s", exc.details)
            prev = None
        prev = prev or (record.result if record else None)
        chained = self._chained_name()
        if chained:
            link = self._chained_driver(chained, for_delete=True)
            link.delete(self._context(chained, link), prev)
        else:
            released: Allocation | None = None
            try:
                released = self.ipam.release(self.key, "PodDeleted")
            except IpamError as exc:
                # NOTE: upstream returns success here too; ipamd reclaims the address
                # when it is back, and failing DEL would block the runtime's cleanup.
                self.log.warning("ipamd release failed, tearing down from saved state: %s", exc)
            allocation = released or (record.allocation if record else None)
            name = (
                allocation.driver
                if allocation
                else record.driver
                if record
                else (None if self.type == IPAMD_CHOOSES else self.type)
            )
            if name is not None:
                driver = self._attachment_driver(name, for_delete=True)
                driver.delete(self._context(name, driver), allocation, prev)
            elif prev is not None:
                self._delete_with_every_driver(prev)
            else:
                self.log.info("DEL of an attachment nobody knows: nothing to do")
        self.store.remove(self.key)
        self.hooks.after_del(self.inv)
        return None

    def _delete_with_every_driver(self, prev: Result) -> None:
        """Neither ipamd nor our record knows the attachment, but the runtime's prevResult
        says it existed (state lost, e.g. a wiped state dir): let every enabled driver tear
        down what its own naming rules find.  Deletes are idempotent and only touch what
        matches, so asking a driver that did not plumb the pod is harmless."""
        drivers = self.conf.get("drivers") or {}
        for name in drivers.get("enabled", registry.DEFAULT_ENABLED):
            try:
                driver = self._attachment_driver(name, for_delete=True)
                if driver.info.implemented:
                    driver.delete(self._context(name, driver), None, prev)
            except errors.CniError as exc:
                self.log.warning("DEL from prevResult: driver %s could not clean up: %s", name, exc)

    def check(self) -> None:
        self._require_version(cniversion.CHECK_SINCE)
        self._open_pod_netns()
        prev = self._prev_result(required=True)
        assert prev is not None  # noqa: S101
        record = self.store.load(self.key)
        chained = self._chained_name()
        if chained:
            link = self._chained_driver(chained)
            link.check(self._context(chained, link), prev)
            return None
        try:
            allocation = self.ipam.lookup(self.key)
        except IpamError as exc:
            raise exc.to_cni_error("check") from None
        if allocation is None:
            raise errors.unknown_container(f"ipamd holds no addresses for {self.key.slug()}")
        name = allocation.driver or (record.driver if record else self.type)
        driver = self._attachment_driver(name)
        driver.check(self._context(name, driver), allocation, prev)
        return None

    def status(self) -> None:
        self._require_version(cniversion.STATUS_GC_SINCE)
        try:
            state = self.ipam.status()
        except IpamError as exc:
            raise errors.CniError(
                errors.SpecCode.PLUGIN_NOT_AVAILABLE, "ipamd is not available", exc.message
            ) from None
        if not state.ready:
            raise errors.CniError(
                errors.SpecCode.PLUGIN_NOT_AVAILABLE, "ipamd is not ready", state.detail
            )
        return None

    def gc(self) -> None:
        self._require_version(cniversion.STATUS_GC_SINCE)
        valid = frozenset(
            AttachmentKey(self.network, a["containerID"], a["ifname"])
            for a in self.conf.get("cni.dev/valid-attachments") or ()
        )
        # Plumbing first (the saved records know what each driver made), then ipamd.
        for key in self.store.keys(self.network):
            if key in valid:
                continue
            record = self.store.load(key)
            if record is None:
                continue
            try:
                found = registry.load_driver(record.driver)
                # The driver tears down as a DEL of that attachment would.
                ctx = self._context(record.driver, found, key, record.invocation)
                ctx.netns.open(require_pod=False)
                try:
                    if found.info.kind == "attachment":
                        cast(AttachmentDriver, found).delete(ctx, record.allocation, record.result)
                    else:
                        cast(ChainedDriver, found).delete(ctx, record.result)
                finally:
                    ctx.netns.close()
            except errors.CniError as exc:
                self.log.warning("GC of %s: driver cleanup failed: %s", key.slug(), exc)
            self.store.remove(key)
        if self._chained_name() is None:
            try:
                released = self.ipam.gc(self.network, valid)
            except IpamError as exc:
                raise exc.to_cni_error("gc") from None
            self.log.info("GC released %d attachment(s)", len(released))
        return None

    def get(self) -> dict[str, Any]:
        cache_dir = str(self.conf.get("runtimeCacheDir") or DEFAULT_RUNTIME_CACHE_DIR)
        raw = read_runtime_cache(cache_dir, self.key)
        if raw is not None:
            return Result.decode(raw, where="cached result").encode(self.cni_version)
        record = self.store.load(self.key)
        if record is None:
            raise errors.unknown_container(f"no cached result for {self.key.slug()}")
        return record.result.encode(self.cni_version)
