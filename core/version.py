"""CNI spec versions: what we speak, and ``cniVersions`` negotiation for conflists.

Imported on VERSION's fast path: keep module-level imports to nothing but the stdlib
basics (``errors`` is imported where an error is raised).
"""

from __future__ import annotations

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~2 ms here

if TYPE_CHECKING:
    from collections.abc import Iterable

#: Every spec version this plugin accepts and can encode a result in, oldest first.
SUPPORTED: tuple[str, ...] = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")

#: Versions that know the CHECK verb (spec 0.4.0) and STATUS/GC (spec 1.1.0).
CHECK_SINCE = (0, 4, 0)
STATUS_GC_SINCE = (1, 1, 0)

ABOUT = "AWS CNI (vpccni) 0.1.0"


def parse(version: str) -> tuple[int, int, int]:
    """``"1.0.0"`` -> ``(1, 0, 0)``; raises CniError(1) for anything else."""
    from vpccni.core import errors  # noqa: PLC0415

    parts = version.split(".") if isinstance(version, str) else []
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise errors.incompatible_version(f"cniVersion {version!r} is not of the form X.Y.Z")
    major, minor, patch = (int(p) for p in parts)
    return major, minor, patch


def require_supported(version: str) -> str:
    from vpccni.core import errors  # noqa: PLC0415

    parse(version)
    if version not in SUPPORTED:
        raise errors.incompatible_version(
            f"cniVersion {version!r} is not supported; this plugin supports {', '.join(SUPPORTED)}"
        )
    return version


def at_least(version: str, floor: tuple[int, int, int]) -> bool:
    return parse(version) >= floor


def negotiate(cni_version: str | None, cni_versions: Iterable[str] | None) -> str:
    """Pick the version a conflist runs at (spec 1.1.0, "cniVersions").

    The highest entry of ``cniVersions`` that we support wins; entries we cannot parse
    are ignored as the spec asks runtimes to.  Without ``cniVersions`` the plain
    ``cniVersion`` must be one we support.
    """
    from vpccni.core import errors  # noqa: PLC0415

    if cni_versions:
        usable = []
        for candidate in cni_versions:
            try:
                usable.append((parse(candidate), candidate))
            except errors.CniError:
                continue
        ours = [item for item in usable if item[1] in SUPPORTED]
        if ours:
            return max(ours)[1]
        raise errors.incompatible_version(
            f"none of cniVersions {list(cni_versions)} is supported; "
            f"this plugin supports {', '.join(SUPPORTED)}"
        )
    if cni_version is None:
        raise errors.invalid_config("cniVersion: required field missing")
    return require_supported(cni_version)
