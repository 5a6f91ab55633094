"""Finding drivers and plugins by name through entry points (public API: the group names).

Only the names a configuration asks for are loaded: stevedore's DriverManager resolves
exactly one entry point, and never imports the rest of the group, which keeps the per-pod
process light and a broken third-party package from breaking unrelated pods.
"""

from __future__ import annotations

from typing import Any

from vpccni.core import errors
from vpccni.core.driver_api import Driver
from vpccni.core.driver_api import DriverInfo

#: Entry-point group of drivers (AttachmentDriver / ChainedDriver classes).
DRIVERS_GROUP = "vpccni.drivers"
#: Entry-point group of pluggy plugins implementing vpccni.core.hookspecs.
PLUGINS_GROUP = "vpccni.plugins"

#: The attachment drivers ipamd may name when the configuration has no allowlist.
DEFAULT_ENABLED = ("routed_eni", "branch_eni", "prefix", "multihome")

_overrides: dict[tuple[str, str], type[Any]] = {}


def register_for_testing(name: str, cls: type[Any], group: str = DRIVERS_GROUP) -> None:
    """Make ``name`` in ``group`` resolve to ``cls`` in this process (stevedore's
    make_test_instance), for drivers and pluggy plugins alike."""
    _overrides[(group, name)] = cls


def forget_for_testing(name: str, group: str = DRIVERS_GROUP) -> None:
    """Undo :func:`register_for_testing` (the entry point resolves again)."""
    _overrides.pop((group, name), None)


_loaded: dict[tuple[str, str], Any] = {}


def _load(group: str, name: str) -> Any:
    if (group, name) in _overrides:
        return _overrides[(group, name)]
    if (group, name) not in _loaded:
        _loaded[(group, name)] = _resolve(group, name)
    return _loaded[(group, name)]


def _resolve(group: str, name: str) -> Any:
    from stevedore import driver as sd_driver  # noqa: PLC0415 - only pay for it when needed
    from stevedore.exception import NoMatches  # noqa: PLC0415

    try:
        manager: Any = sd_driver.DriverManager(
            namespace=group, name=name, invoke_on_load=False, on_load_failure_callback=_reraise
        )
    except NoMatches:
        raise errors.CniError(
            errors.PluginCode.DRIVER_NOT_AVAILABLE,
            f"no driver named {name!r} is installed",
            f"nothing registers {name!r} in the entry-point group {group!r}",
        ) from None
    return manager.driver


def _reraise(_manager: Any, entrypoint: Any, exc: BaseException) -> None:
    raise errors.CniError(
        errors.PluginCode.DRIVER_NOT_AVAILABLE,
        f"driver {entrypoint.name!r} failed to load",
        f"{entrypoint.value}: {exc!r}",
    ) from exc


def load_driver(name: str) -> Driver:
    cls = _load(DRIVERS_GROUP, name)
    info = getattr(cls, "info", None)
    if not isinstance(info, DriverInfo):
        raise errors.CniError(
            errors.PluginCode.DRIVER_NOT_AVAILABLE,
            f"driver {name!r} does not declare DriverInfo",
            f"{cls!r} has no class attribute 'info' of type DriverInfo",
        )
    instance: Driver = cls()
    return instance


def load_plugin(name: str) -> Any:
    return _load(PLUGINS_GROUP, name)()
