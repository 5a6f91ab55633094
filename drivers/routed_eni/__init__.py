"""The routed_eni driver: pods on secondary ENI addresses arrive with the routed_eni issue."""

from __future__ import annotations

from vpccni.core.driver_api import DriverInfo
from vpccni.drivers._unbuilt import UnbuiltAttachmentDriver


class RoutedEniDriver(UnbuiltAttachmentDriver):
    info = DriverInfo(
        name="routed_eni",
        kind="attachment",
        implemented=False,
        summary="pods on secondary ENI addresses arrive with the routed_eni issue",
    )
