"""Shared test configuration.

Tests import the *installed* vpccni (``pip install .``); this folder is a package only so
tests can share helpers in ``tests.support``.  Tests marked ``netns`` create network
namespaces and need root; they are skipped with the reason when that is not possible.
"""

from __future__ import annotations

import os
import shutil

import pytest

# The simulator's fixtures (`sim`, `sim_factory`, ...) for every test package.
pytest_plugins = ["vpccni.sim.fixtures"]


def _netns_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    if shutil.which("ip") is None:
        return "iproute2 (ip) is not installed"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    why = _netns_unavailable()
    if why is None:
        return
    skip = pytest.mark.skip(reason=why)
    for item in items:
        if "netns" in item.keywords:
            item.add_marker(skip)
