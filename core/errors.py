"""CNI errors: the spec's well-known codes and our plugin codes (100 and up).

Every failure the plugin reports is a :class:`CniError`.  ``msg`` is a short static
phrase; ``details`` carries the variable data (field paths, values, errno text), as the
spec's error object asks.  Plugin codes are declared once in :class:`PluginCode` and never
renumbered: users grep their logs for them.
"""

from __future__ import annotations

import enum
from typing import Any


class SpecCode(enum.IntEnum):
    """Codes reserved by the CNI specification (SPEC.md, "Error")."""

    INCOMPATIBLE_VERSION = 1
    UNSUPPORTED_FIELD = 2
    UNKNOWN_CONTAINER = 3
    INVALID_ENVIRONMENT = 4
    IO_FAILURE = 5
    DECODING_FAILURE = 6
    INVALID_CONFIG = 7
    TRY_AGAIN_LATER = 11
    PLUGIN_NOT_AVAILABLE = 50
    LIMITED_CONNECTIVITY = 51
    INTERNAL = 999


class PluginCode(enum.IntEnum):
    """Codes of our own (the spec leaves 100 and up to plugins).  Stable: never renumber."""

    #: The driver named by the configuration or by ipamd exists but its feature is not built.
    DRIVER_NOT_IMPLEMENTED = 100
    #: The driver is not installed, or not in the configuration's allowlist.
    DRIVER_NOT_AVAILABLE = 101
    #: ipamd could not give the pod an address; ``details`` names the cause and the remedy.
    ADDRESS_UNAVAILABLE = 102
    #: Plumbing the pod's network namespace failed (and was undone).
    NETNS_PLUMBING_FAILED = 103
    #: ipamd answered with something this plugin cannot use.
    IPAMD_PROTOCOL = 104


class CniError(Exception):
    """An error the plugin reports to its caller as the spec's error object."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(f"{msg}: {details}" if details else msg)
        self.code = int(code)
        self.msg = msg
        self.details = details

    def to_reply(self, cni_version: str) -> dict[str, Any]:
        reply: dict[str, Any] = {"cniVersion": cni_version, "code": self.code, "msg": self.msg}
        if self.details:
            reply["details"] = self.details
        return reply


def incompatible_version(details: str) -> CniError:
    return CniError(SpecCode.INCOMPATIBLE_VERSION, "incompatible CNI version", details)


def invalid_environment(problems: list[str]) -> CniError:
    return CniError(SpecCode.INVALID_ENVIRONMENT, "invalid environment", "; ".join(problems))


def decoding_failure(details: str) -> CniError:
    return CniError(SpecCode.DECODING_FAILURE, "failed to decode network configuration", details)


def invalid_config(details: str) -> CniError:
    return CniError(SpecCode.INVALID_CONFIG, "invalid network configuration", details)


def unknown_container(details: str) -> CniError:
    return CniError(SpecCode.UNKNOWN_CONTAINER, "unknown container", details)


def try_again_later(msg: str, details: str = "") -> CniError:
    return CniError(SpecCode.TRY_AGAIN_LATER, msg, details)


def not_implemented(driver: str, details: str) -> CniError:
    return CniError(
        PluginCode.DRIVER_NOT_IMPLEMENTED,
        f"driver {driver!r} is not implemented yet",
        details,
    )
