"""CloudWatch over Smithy RPC v2 CBOR, translated to the awsJson1_0 form moto speaks.

aws-sdk-cloudwatch >= 1.100 for Rust only speaks rpcv2Cbor
(POST /service/GraniteServiceVersion20100801/operation/<Op>); moto 5.2.5 only the
JSON and query protocols. The request body is a CBOR map of the operation's input
shape, so decoding it gives the same dict a JSON request carries (timestamps arrive
as CBOR tag 1 and are sent on as epoch seconds). moto's JSON answer is then coerced
against botocore's output shape (timestamps -> tag 1 + float, doubles -> CBOR floats) and
encoded as CBOR.
"""

import base64
import datetime
import json
import re

import botocore.session
import cbor2

TARGET_PREFIX = "GraniteServiceVersion20100801"
PATH_RE = re.compile(r"^/service/GraniteServiceVersion20100801/operation/([A-Za-z]+)$")
SHAPE_NS = "com.amazonaws.cloudwatch#"

_model = botocore.session.get_session().get_service_model("cloudwatch")
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)


def operation_from_path(path):
    mt = PATH_RE.match(path or "")
    return mt.group(1) if mt else None


def decode_request(body):
    """CBOR request body -> dict (an empty body is an empty input)."""
    return cbor2.loads(body) if body else {}


def _to_json(value):
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=datetime.timezone.utc)
        return (value - _EPOCH).total_seconds()
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    raise TypeError(f"cannot send {type(value).__name__} as JSON")


def _drop_nulls(value):
    # CBOR may carry explicit nulls for unset members; moto's JSON parser expects absence
    if isinstance(value, dict):
        return {k: _drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_nulls(v) for v in value if v is not None]
    return value


def json_request(op, params):
    """(headers, body) for the same call in awsJson1_0, which moto understands."""
    params = _drop_nulls(params)
    headers = {
        "CONTENT_TYPE": "application/x-amz-json-1.0",
        "HTTP_X_AMZ_TARGET": f"{TARGET_PREFIX}.{op}",
    }
    return headers, json.dumps(params, default=_to_json).encode()


def _timestamp(value):
    """Tag 1 around a *float*: smithy-rs decodes the tagged value with minicbor's
    f64(), which rejects CBOR integers, so whole seconds must still be a float."""
    if not isinstance(value, (int, float)):
        when = datetime.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        if when.tzinfo is None:
            when = when.replace(tzinfo=datetime.timezone.utc)
        value = (when - _EPOCH).total_seconds()
    return cbor2.CBORTag(1, float(value))


def _coerce(value, shape):
    """Give each value the Python type whose CBOR encoding the shape calls for."""
    if value is None:
        return None
    t = shape.type_name
    if t == "structure":
        return {k: _coerce(v, shape.members[k]) for k, v in value.items()
                if k in shape.members and v is not None}
    if t == "list":
        return [_coerce(v, shape.member) for v in value]
    if t == "map":
        return {k: _coerce(v, shape.value) for k, v in value.items()}
    if t == "timestamp":
        return _timestamp(value)
    if t in ("double", "float"):
        return float(value)
    if t in ("integer", "long"):
        return int(value)
    if t == "boolean":
        return bool(value)
    if t == "blob" and isinstance(value, str):
        return base64.b64decode(value)
    return value


def encode(obj):
    # floats stay float64 (cbor2's default); timestamps are already CBORTag(1, float)
    return cbor2.dumps(obj)


def cbor_response(op, status, body, query_error=None):
    """moto's JSON answer -> (status, headers, CBOR body). Errors keep `__type` + `message`."""
    headers = [("Content-Type", "application/cbor"), ("smithy-protocol", "rpc-v2-cbor")]
    try:
        data = json.loads(body) if body and body.strip() else {}
    except ValueError:  # moto's HTML 500 page for an unimplemented corner
        status = max(status, 500)
        data = {"__type": "InternalFailure", "message": body[:300].decode("utf-8", "replace")}
    if status < 300:
        shape = _model.operation_model(op).output_shape
        return status, headers, encode(_coerce(data, shape) if shape is not None else {})
    code = str(data.get("__type") or "InternalFailure").rsplit("#", 1)[-1]
    message = data.get("message") or data.get("Message") or ""
    headers, body, _ = error(code, message, status, query_error)
    return status, headers, body


def error(code, message, status, query_error=None):
    """(headers, body, status) of an rpcv2Cbor error. CloudWatch is awsQueryCompatible,
    so the SDKs read the query error code from x-amzn-query-error."""
    fault = "Sender" if status < 500 else "Receiver"
    headers = [
        ("Content-Type", "application/cbor"),
        ("smithy-protocol", "rpc-v2-cbor"),
        ("x-amzn-query-error", query_error or f"{code};{fault}"),
    ]
    return headers, encode({"__type": SHAPE_NS + code, "message": message}), status
