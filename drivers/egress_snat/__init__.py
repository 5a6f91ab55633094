"""The egress_snat driver behind ``egress-cni``: not built yet (the egress_snat issue)."""

from __future__ import annotations

from vpccni.core import errors
from vpccni.core.driver_api import DriverContext
from vpccni.core.driver_api import DriverInfo
from vpccni.core.result import Result


class EgressSnatDriver:
    info = DriverInfo(
        name="egress_snat",
        kind="chained",
        implemented=False,
        summary="egress SNAT (egress-cni) arrives with the egress_snat issue",
    )

    def add(self, ctx: DriverContext, prev: Result) -> Result:
        raise errors.not_implemented(self.info.name, self.info.summary)

    def delete(self, ctx: DriverContext, prev: Result | None) -> None:
        return None

    def check(self, ctx: DriverContext, prev: Result) -> None:
        raise errors.not_implemented(self.info.name, self.info.summary)
