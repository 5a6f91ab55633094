"""The multihome driver: multi-NIC pods are not built yet."""

from __future__ import annotations

from vpccni.core.driver_api import DriverInfo
from vpccni.drivers._unbuilt import UnbuiltAttachmentDriver


class MultihomeDriver(UnbuiltAttachmentDriver):
    info = DriverInfo(
        name="multihome",
        kind="attachment",
        implemented=False,
        summary="multi-NIC pods are not built yet",
    )
