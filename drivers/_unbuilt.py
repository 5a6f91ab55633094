"""Shared shape of a driver whose feature is not built yet: it refuses, it never pretends."""

from __future__ import annotations

from typing import ClassVar

from vpccni.core import errors
from vpccni.core.driver_api import DriverContext
from vpccni.core.driver_api import DriverInfo
from vpccni.core.ipam import Allocation
from vpccni.core.result import Result


class UnbuiltAttachmentDriver:
    info: ClassVar[DriverInfo]

    def _refuse(self) -> errors.CniError:
        return errors.not_implemented(self.info.name, self.info.summary)

    def add(self, ctx: DriverContext, allocation: Allocation) -> Result:
        raise self._refuse()

    def delete(
        self, ctx: DriverContext, allocation: Allocation | None, prev: Result | None
    ) -> None:
        # Nothing can exist that this driver made: DEL succeeds (idempotent).
        return None

    def check(self, ctx: DriverContext, allocation: Allocation | None, prev: Result) -> None:
        raise self._refuse()
