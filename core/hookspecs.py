"""Cross-cutting hooks (public API), project name ``vpccni``.

pluggy is for 1:N concerns around the drivers, never for choosing the driver that plumbs
a pod.  Plugins register in the entry-point group ``vpccni.plugins`` and are loaded only
when the plugin configuration lists them (``"plugins": ["timing"]``).  Every hook is
called by the core runtime, in the plugin process, once per invocation.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Mapping
from typing import Any

import pluggy

from vpccni.core.errors import CniError
from vpccni.core.invocation import Invocation
from vpccni.core.result import Result

hookspec = pluggy.HookspecMarker("vpccni")
hookimpl = pluggy.HookimplMarker("vpccni")


@hookspec
def vpccni_validate_conf(conf: Mapping[str, Any]) -> list[str]:  # type: ignore[empty-body]
    """Extra validation of the plugin configuration, after the JSON Schemas passed.

    Return a list of problems, each starting with the JSON path of the field
    (``"$.mtu: ..."``); an empty list when fine.  Every plugin's problems are merged into
    one CNI error with code 7.
    """


@hookspec(firstresult=True)
def vpccni_command(invocation: Invocation, conf: Mapping[str, Any], run: Callable[[], Any]) -> Any:
    """Run one command.  The core implements it (``run()``, the command itself); plugins
    wrap it with ``@hookimpl(wrapper=True)`` for timing, metrics or log correlation, the
    way pytest plugins wrap ``pytest_runtest_call``::

        @hookimpl(wrapper=True)
        def vpccni_command(invocation, conf, run):
            started = time.monotonic()
            try:
                return (yield)      # the outcome, or the command's CniError raised here
            finally:
                record(time.monotonic() - started)

    Wrappers must re-raise errors and must not replace the outcome.
    """


@hookspec
def vpccni_after_add(invocation: Invocation, result: Result) -> None:
    """Observe a successful ADD.  The result is final; chained drivers change results,
    observers do not.  Exceptions are logged and ignored."""


@hookspec
def vpccni_after_del(invocation: Invocation) -> None:
    """Observe a successful DEL.  Exceptions are logged and ignored."""


@hookspec
def vpccni_command_failed(invocation: Invocation, error: CniError) -> None:
    """Observe a command that ends with a CNI error (after ADD's undo ran)."""
