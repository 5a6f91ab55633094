"""EC2 Query API wire format: parse a request into boto3-shaped params, render results and errors.

Parsing and result rendering reuse moto's own botocore-model-driven parser and serializer, so the
XML the emulator writes for the actions it answers itself is byte-compatible with what moto writes
for the rest.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl
from xml.sax.saxutils import escape

from moto.core.parse import EC2QueryParser
from moto.core.serialize import XFormedAttributePicker
from moto.core.serialize import get_serializer_class
from moto.core.utils import get_service_model
from werkzeug.datastructures import MultiDict

EC2_API_VERSION = "2016-11-15"


class Ec2Error(Exception):
    """An AWS-style client error: rendered as ``<Response><Errors>`` XML with ``status``."""

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status


@dataclass(frozen=True)
class Ec2Request:
    action: str
    form: list[tuple[str, str]]  # raw form pairs, for re-encoding a request handed on to moto
    params: dict[str, Any]  # parsed with the operation's input shape: boto3 names (PascalCase)


def parse_form(body: bytes, query_string: str) -> list[tuple[str, str]]:
    pairs = parse_qsl(query_string, keep_blank_values=True)
    pairs += parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True)
    return pairs


def parse_request(form: list[tuple[str, str]]) -> Ec2Request | None:
    """Parse an EC2 Query request; None when it names no Action or one the model lacks."""
    action = next((v for k, v in form if k == "Action"), "")
    if not action:
        return None
    model = get_service_model("ec2")
    try:
        operation = model.operation_model(action)
    except Exception:  # noqa: BLE001 - botocore raises its own OperationNotFoundError
        return Ec2Request(action=action, form=form, params={})
    parser = EC2QueryParser(operation, map_type=dict)
    params = parser.parse(
        {
            "method": "POST",
            "values": MultiDict(form),
            "headers": {},  # type: ignore[typeddict-item]
            "body": b"",
            "url_path": "/",
            "url_params": {},
        }
    )
    return Ec2Request(action=action, form=form, params=dict(params))


def render_result(
    action: str, result: dict[str, Any], request_id: str = "request-id"
) -> tuple[int, dict[str, str], str]:
    """Serialize ``result`` (objects or dicts with boto3 member names) as moto would."""
    model = get_service_model("ec2")
    operation = model.operation_model(action)
    serializer_cls = get_serializer_class("ec2", "ec2")
    serializer = serializer_cls(
        operation_model=operation, pretty_print=False, value_picker=XFormedAttributePicker()
    )
    out = serializer.serialize(result)
    body = str(out["body"]).replace(
        "<requestId>request-id</requestId>", f"<requestId>{request_id}</requestId>", 1
    )
    return int(out["status_code"]), dict(out["headers"]), body


def render_error(err: Ec2Error) -> tuple[int, dict[str, str], str]:
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Response><Errors><Error><Code>{escape(err.code)}</Code>"
        f"<Message>{escape(err.message)}</Message></Error></Errors>"
        f"<RequestID>{uuid.uuid4()}</RequestID></Response>"
    )
    return err.status, {"Content-Type": "text/xml"}, body
