"""The prefix driver: prefix delegation and IPv6 arrive with the prefix issue."""

from __future__ import annotations

from vpccni.core.driver_api import DriverInfo
from vpccni.drivers._unbuilt import UnbuiltAttachmentDriver


class PrefixDriver(UnbuiltAttachmentDriver):
    info = DriverInfo(
        name="prefix",
        kind="attachment",
        implemented=False,
        summary="prefix delegation and IPv6 arrive with the prefix issue",
    )
