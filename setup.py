"""Map the design card's top-level folders into the single ``vpccni`` namespace.

The repository keeps ``core/``, ``drivers/``, ``conf/`` ... at its top level (the design
card fixes that layout), but nothing may be installed as a top-level package called
``core`` or ``drivers``.  Every folder below becomes ``vpccni.<folder>``; ``vpccni``
itself is an implicit namespace package.  Metadata lives in pyproject.toml.

``build_py`` also compiles the native plugin launcher (``cli/native/launcher.c``,
docs/native-launcher.md) into the built package as ``vpccni/cli/native/vpccni-launcher``.
Without a C compiler the package ships without it (a warning says so) and ``vpccni
install-cni`` compiles it at install time or writes the Python launcher.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys

from setuptools import find_packages
from setuptools import setup
from setuptools.command.build_py import build_py

ROOTS = ("core", "drivers", "conf", "cli", "ipamd", "sim")
#: The same flags as vpccni.cli.install_cmd.NATIVE_CFLAGS (this file cannot import it).
NATIVE_CFLAGS = ("-std=c99", "-O2", "-Wall", "-Wextra")

packages: list[str] = []
package_dir: dict[str, str] = {}
for root in ROOTS:
    package_dir[f"vpccni.{root}"] = root
    packages.append(f"vpccni.{root}")
    packages.extend(f"vpccni.{root}.{sub}" for sub in find_packages(root))


class BuildWithLauncher(build_py):
    """build_py, then the native launcher next to its source in the built package."""

    def run(self) -> None:
        super().run()
        if self.editable_mode:
            return  # an editable install maps the source tree: install-cni compiles then
        native = os.path.join(self.build_lib, "vpccni", "cli", "native")
        source = os.path.join(native, "launcher.c")
        target = os.path.join(native, "vpccni-launcher")
        cc = shlex.split(os.environ.get("CC", "")) or ["cc"]
        argv = [*cc, *NATIVE_CFLAGS, "-o", target, source]
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, check=False)
        except OSError as exc:
            print(f"warning: no native plugin launcher ({cc[0]}: {exc.strerror})", file=sys.stderr)
            return
        if proc.returncode != 0:
            print(
                f"warning: no native plugin launcher ({' '.join(argv)} failed):\n{proc.stderr}",
                file=sys.stderr,
            )


setup(packages=packages, package_dir=package_dir, cmdclass={"build_py": BuildWithLauncher})
