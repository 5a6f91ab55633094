"""Decoding and validating the plugin configuration read from stdin.

Order matters for the error codes: undecodable JSON -> 6; an unsupported ``cniVersion`` ->
1; anything the JSON Schemas reject -> 7 with the JSON path of every offending field.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import cache
from typing import Any

from vpccni.core import errors
from vpccni.core import version as cniversion

#: conf `type` -> schema name in vpccni.conf.schemas (besides the shared netconf schema).
TYPE_SCHEMAS = {"egress-cni": "egress-cni"}
DEFAULT_TYPE_SCHEMA = "aws-cni"

MTU_RANGE = {4: (576, 9001), 6: (1280, 9001)}
#: The companion rule of every anchored pattern in our schemas (see schema_problems).
_NO_NEWLINE = {"type": "string", "pattern": "\\n"}


def decode(raw: bytes) -> dict[str, Any]:
    try:
        conf = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise errors.decoding_failure(f"stdin is not valid JSON: {exc}") from None
    if not isinstance(conf, dict):
        raise errors.decoding_failure(f"stdin must hold a JSON object, not {type(conf).__name__}")
    return conf


@cache
def _validator(schema_name: str) -> Any:
    # jsonschema is the heaviest import of ADD; VERSION never gets here.
    import jsonschema  # noqa: PLC0415

    from vpccni import conf as shipped  # noqa: PLC0415

    schema = shipped.schema(schema_name)
    return jsonschema.Draft202012Validator(schema)


def schema_problems(instance: Any, schema_name: str, prefix: str = "$") -> list[str]:
    """Every violation of ``schema_name`` as ``"<json path>: <message>"``, sorted by path."""
    problems = []
    for error in _validator(schema_name).iter_errors(instance):
        path = prefix + error.json_path[1:]
        message = error.message
        if error.validator == "not" and error.validator_value == _NO_NEWLINE:
            # Our schemas pair each anchored pattern with this rule: Python's '$' also
            # matches before a trailing newline.
            message = f"{error.instance!r} must not contain a newline"
        problems.append(f"{path}: {message}")
    return sorted(problems)


def validate(conf: dict[str, Any]) -> dict[str, Any]:
    """Return ``conf`` when valid; raise the right CniError otherwise."""
    raw_version = conf.get("cniVersion")
    if not isinstance(raw_version, str):
        raise errors.invalid_config("$.cniVersion: required string is missing")
    cniversion.require_supported(raw_version)
    type_schema = TYPE_SCHEMAS.get(str(conf.get("type")), DEFAULT_TYPE_SCHEMA)
    problems = schema_problems(conf, "netconf") + schema_problems(conf, type_schema)
    mtu = conf.get("mtu")
    if isinstance(mtu, str) and mtu.isdigit():
        low, high = MTU_RANGE[4]
        if not low <= int(mtu) <= high:
            problems.append(f"$.mtu: {mtu!r} is outside {low}-{high}")
    if problems:
        raise errors.invalid_config("; ".join(sorted(problems)))
    return conf


def check_mtu_for_family(conf: dict[str, Any] | Any, family: int, default: int = 9001) -> int:
    """The pod MTU for an address family; 7 names ``$.mtu`` when out of that family's range."""
    raw = conf.get("mtu", default)
    mtu = int(raw)
    low, high = MTU_RANGE[family]
    if not low <= mtu <= high:
        raise errors.invalid_config(
            f"$.mtu: {raw!r} is outside {low}-{high}, the range for IPv{family} pods"
        )
    return mtu


_driver_validators: dict[str, Any] = {}


def driver_validator(schema: Any) -> Any:
    """The validator of a driver's section schema, built once per process (the plugin
    server builds the in-tree drivers' before it forks, so children inherit them)."""
    key = json.dumps(schema, sort_keys=True)
    found = _driver_validators.get(key)
    if found is None:
        import jsonschema  # noqa: PLC0415

        found = _driver_validators[key] = jsonschema.Draft202012Validator(schema)
    return found


def validate_driver_section(conf: dict[str, Any], name: str, schema: Any) -> dict[str, Any]:
    section = (conf.get("drivers") or {}).get(name, {})
    if schema is None:
        return dict(section)
    validator = driver_validator(schema)
    problems = sorted(
        f"$.drivers.{name}{e.json_path[1:]}: {e.message}" for e in validator.iter_errors(section)
    )
    if problems:
        raise errors.invalid_config("; ".join(problems))
    return dict(section)


def ipamd_section(conf: Mapping[str, Any]) -> dict[str, Any]:
    """The ``ipamd`` section, valid: a type whose own schema does not describe it (egress-cni)
    still reaches ipamd through it, so it is checked here against aws-cni's definition
    (code 7 naming ``$.ipamd...``) instead of failing later on a missing key."""
    from vpccni import conf as shipped  # noqa: PLC0415

    section = conf.get("ipamd") or {}
    type_schema = TYPE_SCHEMAS.get(str(conf.get("type")), DEFAULT_TYPE_SCHEMA)
    if "ipamd" not in shipped.schema(type_schema).get("properties", {}):
        validator = driver_validator(shipped.schema(DEFAULT_TYPE_SCHEMA)["properties"]["ipamd"])
        problems = sorted(
            f"$.ipamd{e.json_path[1:]}: {e.message}" for e in validator.iter_errors(section)
        )
        if problems:
            raise errors.invalid_config("; ".join(problems))
    return dict(section)
