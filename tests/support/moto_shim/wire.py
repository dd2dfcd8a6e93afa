"""Recognising AWS requests and writing errors in each service's own wire format."""

import functools
import gzip
import json
import re
import uuid
import xml.etree.ElementTree as ET
from urllib.parse import parse_qs, unquote
from xml.sax.saxutils import escape

from . import cloudwatch_cbor

CREDENTIAL_RE = re.compile(r"Credential=[^/,\s]+/\d{8}/([^/]+)/([^/]+)/aws4_request")

# X-Amz-Target prefixes -> SigV4 signing name, for unsigned or oddly signed requests
TARGET_SERVICES = {
    "AmazonSQS": "sqs",
    "DynamoDB_20120810": "dynamodb",
    "GraniteServiceVersion20100801": "monitoring",
}

QUERY_NAMESPACES = {
    "rds": "http://rds.amazonaws.com/doc/2014-10-31/",
    "sns": "http://sns.amazonaws.com/doc/2010-03-31/",
    "monitoring": "http://monitoring.amazonaws.com/doc/2010-08-01/",
    "route53": "https://route53.amazonaws.com/doc/2013-04-01/",  # restXml, same error envelope
}

# REST services whose operation is found from (method, path) with botocore's own model:
# SigV4 signing name -> botocore service name.
REST_SERVICES = {"route53": "route53"}

# JSON services whose SDKs read the awsQuery error code from x-amzn-query-error
QUERY_COMPATIBLE = {"sqs", "monitoring"}
JSON_ERROR_NS = {
    "sqs": "com.amazonaws.sqs#",
    "dynamodb": "com.amazonaws.dynamodb.v20120810#",
    "monitoring": "com.amazonaws.cloudwatch#",
}

# Parameter names worth keeping in the call log: identifiers, not payloads.
_ID_KEY = re.compile(r"(Identifier|Identifiers|Name|Names|Arn|Url|Id|Ids|Namespace|Target)$")
# Flags whose value decides what a deletion keeps; tests assert them.
_KEPT_FLAGS = {"SkipFinalSnapshot", "DeleteAutomatedBackups"}
_LIST_SUFFIX = re.compile(r"(\.member)?\.\d+$|\.[A-Za-z]+\.\d+$")


class Call:
    """What the shim knows about one incoming request."""

    def __init__(self, environ, body):
        self.environ = environ
        # SDKs gzip large PutMetricData bodies (Smithy requestCompression)
        self.gzipped = "gzip" in environ.get("HTTP_CONTENT_ENCODING", "")
        if self.gzipped:
            try:
                body = gzip.decompress(body)
            except OSError:
                pass
        self.body = body
        self.path = environ.get("PATH_INFO", "")
        auth = environ.get("HTTP_AUTHORIZATION", "")
        mt = CREDENTIAL_RE.search(auth)
        self.region, self.service = (mt.group(1), mt.group(2)) if mt else ("us-east-1", None)
        target = environ.get("HTTP_X_AMZ_TARGET", "")
        self.params = {}
        self.cbor_op = cloudwatch_cbor.operation_from_path(self.path)
        if self.cbor_op:
            self.protocol, self.action = "cbor", self.cbor_op
            self.service = self.service or "monitoring"
            try:
                self.params = cloudwatch_cbor.decode_request(body)
            except Exception:  # a broken body is moto's (and the test's) problem
                self.params = {}
        elif target:
            prefix, _, self.action = target.partition(".")
            self.protocol = "json"
            self.service = self.service or TARGET_SERVICES.get(prefix)
            try:
                self.params = json.loads(body) if body else {}
            except ValueError:
                self.params = {}
        else:
            form = {}
            if "x-www-form-urlencoded" in environ.get("CONTENT_TYPE", ""):
                form = parse_qs(body.decode("utf-8", "replace"))
            form.update(parse_qs(environ.get("QUERY_STRING", "")))
            self.action = (form.get("Action") or [None])[0]
            self.protocol = "query" if self.action else "rest"
            self.params = _collapse_form(form)
            if not self.action and self.service in REST_SERVICES:
                self._rest_operation(environ.get("REQUEST_METHOD", "GET"))

    def _rest_operation(self, method):
        """Action and path labels of a REST request (Route 53), from botocore's model."""
        for op, rx, labels in _rest_routes(REST_SERVICES[self.service]).get(method, []):
            mt = rx.match(self.path.rstrip("/"))
            if mt:
                self.action = op
                self.params.update({labels[k]: unquote(v) for k, v in mt.groupdict().items()})
                break
        if self.action == "ChangeResourceRecordSets":
            # the names of the records changed (for the call log and `params_contains`)
            try:
                root = ET.fromstring(self.body)
                self.params["RecordNames"] = [e.text for e in root.iter() if e.tag.endswith("}Name")
                                              or e.tag == "Name"]
            except ET.ParseError:
                pass

    def id_params(self):
        """The identifier-like parameters of this call, for the call log."""
        if not isinstance(self.params, dict):
            return {}
        out = {}
        for k, v in self.params.items():
            if k == "Action" or k.startswith("Filters") or not (_ID_KEY.search(k) or k in _KEPT_FLAGS):
                continue
            if isinstance(v, (str, int, float)) or (isinstance(v, list) and all(isinstance(x, str) for x in v)):
                out[k] = v
        return out


@functools.lru_cache(maxsize=None)
def _rest_routes(service_name):
    """{method: [(operation, path regex, {group: member name})]}, most literal path first."""
    import botocore.session

    model = botocore.session.get_session().get_service_model(service_name)
    routes = {}
    for op in model.operation_names:
        om = model.operation_model(op)
        uri = om.http["requestUri"].split("?")[0].rstrip("/")
        members = om.input_shape.members if om.input_shape else {}
        by_location = {(m.serialization.get("name") or n): n for n, m in members.items()
                       if m.serialization.get("location") == "uri"}
        labels, parts = {}, []
        for i, piece in enumerate(re.split(r"(\{[^}]+\})", uri)):
            if piece.startswith("{"):
                name = piece[1:-1].rstrip("+")
                group = f"g{i}"
                labels[group] = by_location.get(name, name)
                parts.append(f"(?P<{group}>.+)" if piece.endswith("+}") else f"(?P<{group}>[^/]+)")
            else:
                parts.append(re.escape(piece))
        literal = len(re.sub(r"\{[^}]+\}", "", uri))
        routes.setdefault(om.http["method"], []).append((literal, op, re.compile("".join(parts) + "$"), labels))
    return {m: [(op, rx, labels) for _, op, rx, labels in sorted(v, key=lambda r: -r[0])]
            for m, v in routes.items()}


def _collapse_form(form):
    """Form fields -> {name: value}; `VpcSecurityGroupIds.VpcSecurityGroupId.1` style
    lists become `VpcSecurityGroupIds: [..]`."""
    out = {}
    for key, values in form.items():
        base = _LIST_SUFFIX.sub("", key)
        if base != key:
            out.setdefault(base, []).extend(values)
        else:
            out[key] = values[0]
    return out


def _request_id():
    return str(uuid.uuid4())


def error_response(call, code, message, status):
    """(status, headers, body) for an error as `call`'s service would send it."""
    rid = _request_id()
    fault = "Sender" if status < 500 else "Receiver"
    if call.protocol == "cbor":
        headers, body, _ = cloudwatch_cbor.error(code, message, status)
    elif call.protocol == "json":
        ns = JSON_ERROR_NS.get(call.service, "")
        body = json.dumps({"__type": ns + code, "message": message}).encode()
        headers = [("Content-Type", "application/x-amz-json-1.0")]
        if call.service in QUERY_COMPATIBLE:
            headers.append(("x-amzn-query-error", f"{code};{fault}"))
    elif call.service == "ec2":
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Response><Errors><Error><Code>{escape(code)}</Code><Message>{escape(message)}</Message>"
            f"</Error></Errors><RequestID>{rid}</RequestID></Response>"
        ).encode()
        headers = [("Content-Type", "text/xml;charset=UTF-8")]
    else:  # awsQuery: rds, sns, cloudwatch (query), everything else
        ns = QUERY_NAMESPACES.get(call.service, "")
        body = (
            f'<ErrorResponse xmlns="{ns}"><Error><Type>{fault}</Type><Code>{escape(code)}</Code>'
            f"<Message>{escape(message)}</Message></Error><RequestId>{rid}</RequestId></ErrorResponse>"
        ).encode()
        headers = [("Content-Type", "text/xml")]
    headers.append(("x-amzn-RequestId", rid))
    return status, headers, body
