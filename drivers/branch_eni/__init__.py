"""The branch_eni driver: security groups for pods (branch ENIs over VLAN) are not built yet."""

from __future__ import annotations

from vpccni.core.driver_api import DriverInfo
from vpccni.drivers._unbuilt import UnbuiltAttachmentDriver


class BranchEniDriver(UnbuiltAttachmentDriver):
    info = DriverInfo(
        name="branch_eni",
        kind="attachment",
        implemented=False,
        summary="security groups for pods (branch ENIs over VLAN) are not built yet",
    )
