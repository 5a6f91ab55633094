"""Shipped configuration: JSON Schemas, the 10-aws.conflist template, the env-var catalogue."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any


@cache
def schema(name: str) -> dict[str, Any]:
    """Load ``conf/schemas/<name>.json`` from the installed package."""
    text = resources.files(__name__).joinpath("schemas", f"{name}.json").read_text()
    loaded: dict[str, Any] = json.loads(text)
    return loaded
