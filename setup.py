"""Map the design card's top-level folders into the single ``vpccni`` namespace.

The repository keeps ``core/``, ``drivers/``, ``conf/`` ... at its top level (the design
card fixes that layout), but nothing may be installed as a top-level package called
``core`` or ``drivers``.  Every folder below becomes ``vpccni.<folder>``; ``vpccni``
itself is an implicit namespace package.  Metadata lives in pyproject.toml.
"""

from __future__ import annotations

from setuptools import find_packages
from setuptools import setup

ROOTS = ("core", "drivers", "conf", "cli", "ipamd", "sim")

packages: list[str] = []
package_dir: dict[str, str] = {}
for root in ROOTS:
    package_dir[f"vpccni.{root}"] = root
    packages.append(f"vpccni.{root}")
    packages.extend(f"vpccni.{root}.{sub}" for sub in find_packages(root))

setup(packages=packages, package_dir=package_dir)
