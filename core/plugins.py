"""Typed facade over the pluggy hooks, so ``Any`` never leaks into the runtime.

No plugin named in the configuration -> no pluggy import at all (the common per-pod path).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from collections.abc import Mapping
from collections.abc import Sequence
from typing import Any
from typing import TypeVar

from vpccni.core import errors
from vpccni.core import registry
from vpccni.core.invocation import Invocation
from vpccni.core.result import Result

log = logging.getLogger(__name__)
T = TypeVar("T")


class Hooks:
    def __init__(self, names: Sequence[str], extra: Sequence[object] = ()) -> None:
        self._pm: Any = None
        if not names and not extra:
            return
        import pluggy  # noqa: PLC0415 - only when a plugin is configured

        from vpccni.core import hookspecs  # noqa: PLC0415

        class _CoreRunner:
            """The innermost vpccni_command implementation: the command itself."""

            @hookspecs.hookimpl(trylast=True)
            def vpccni_command(
                self, invocation: Invocation, conf: Mapping[str, Any], run: Callable[[], Any]
            ) -> Any:
                return run()

        pm = pluggy.PluginManager("vpccni")
        pm.add_hookspecs(hookspecs)
        pm.register(_CoreRunner(), name="vpccni.core")
        for name in names:
            pm.register(registry.load_plugin(name), name=name)
        for plugin in extra:
            pm.register(plugin)
        pm.check_pending()
        self._pm = pm

    def validate_conf(self, conf: Mapping[str, Any]) -> None:
        if self._pm is None:
            return
        problems = [p for found in self._pm.hook.vpccni_validate_conf(conf=conf) for p in found]
        if problems:
            raise errors.invalid_config("; ".join(problems))

    def run_command(
        self, invocation: Invocation, conf: Mapping[str, Any], run: Callable[[], T]
    ) -> T:
        if self._pm is None:
            return run()
        result: T = self._pm.hook.vpccni_command(invocation=invocation, conf=conf, run=run)
        return result

    def after_add(self, invocation: Invocation, result: Result) -> None:
        self._observe("vpccni_after_add", invocation=invocation, result=result)

    def after_del(self, invocation: Invocation) -> None:
        self._observe("vpccni_after_del", invocation=invocation)

    def command_failed(self, invocation: Invocation, error: errors.CniError) -> None:
        self._observe("vpccni_command_failed", invocation=invocation, error=error)

    def _observe(self, hook: str, **kwargs: Any) -> None:
        if self._pm is None:
            return
        try:
            getattr(self._pm.hook, hook)(**kwargs)
        except Exception as exc:  # noqa: BLE001 - observers must not fail the command
            log.warning("hook %s failed: %r", hook, exc)
