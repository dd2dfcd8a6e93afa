"""The WSGI middleware in front of moto: control API, call log, faults, CBOR.

Every request is buffered (AWS requests are small), identified (service from the
SigV4 credential scope, action from Action / X-Amz-Target / the CBOR path), logged,
checked against the fault rules and then handed to moto's own WSGI app.
"""

import http
import io
import json
import time
import traceback

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

from . import cloudwatch_cbor, cloudwatch_store, postgres_backend, rds, rds_proxy, route53, wire
from .state import LOCK, STATE

JSON = [("Content-Type", "application/json")]


def _status_line(code):
    try:
        return f"{code} {http.HTTPStatus(code).phrase}"
    except ValueError:
        return f"{code} Error"


def _list_endpoint(method, data, store, add, listing):
    """A control endpoint over one collection of the shim's state: DELETE empties `store`,
    POST passes each item of the body (one object or a list of them) to `add`, and any other
    call answers `listing()`, all under the state's lock."""
    with LOCK:
        if method == "DELETE":
            store.clear()
            return 200, {"cleared": True}
        if method == "POST":
            for item in data if isinstance(data, list) else [data]:
                add(item)
        return 200, listing()


class ShimApp:
    def __init__(self):
        cloudwatch_store.install()
        rds.install()
        rds_proxy.install()
        route53.install()
        self.moto = DomainDispatcherApplication(create_backend_app)

    # -- plumbing -------------------------------------------------------------
    def _moto(self, environ, body, extra_env=None):
        """Run moto on a buffered request; returns (status, headers, body)."""
        env = dict(environ)
        env.update(extra_env or {})
        env = {k: v for k, v in env.items() if v is not None}  # None = drop the key
        env["wsgi.input"] = io.BytesIO(body)
        env["CONTENT_LENGTH"] = str(len(body))
        captured = {}

        def start_response(status, headers, exc_info=None):
            captured["status"], captured["headers"] = status, headers

        chunks = self.moto(env, start_response)
        try:
            out = b"".join(chunks)
        finally:
            if hasattr(chunks, "close"):
                chunks.close()
        return int(captured["status"].split()[0]), captured["headers"], out

    @staticmethod
    def _send(start_response, status, headers, body):
        headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
        headers.append(("Content-Length", str(len(body))))
        start_response(_status_line(status), headers)
        return [body]

    @staticmethod
    def _read_body(environ):
        if environ.get("wsgi.input_terminated"):
            return environ["wsgi.input"].read()
        length = int(environ.get("CONTENT_LENGTH") or 0)
        return environ["wsgi.input"].read(length) if length else b""

    # -- entry ----------------------------------------------------------------
    def __call__(self, environ, start_response):
        body = self._read_body(environ)
        path = environ.get("PATH_INFO", "")
        if path.startswith("/_shim/"):
            status, payload = self._control(environ["REQUEST_METHOD"], path, body, environ)
            return self._send(start_response, status, JSON, json.dumps(payload, default=str).encode())
        if path.startswith("/moto-api"):
            return self._send(start_response, *self._moto(environ, body))
        return self._send(start_response, *self._aws(environ, body))

    def _aws(self, environ, body):
        call = wire.Call(environ, body)
        with LOCK:
            STATE.seq += 1
            entry = {"seq": STATE.seq, "service": call.service, "action": call.action,
                     "status": None, "time": time.time(), "params": call.id_params()}
            STATE.calls.append(entry)
            rule = self._take_fault(call)
        if rule and rule.get("delay_ms"):
            time.sleep(rule["delay_ms"] / 1000.0)
        fault = rule if rule and rule.get("code") else None
        if fault and not fault.get("after_success"):
            result = self._fault(call, fault, entry)
        else:
            result = self._forward(call, environ, body)
            if fault:  # after_success: the call took effect, its answer is lost
                entry["real_status"] = result[0]
                result = self._fault(call, fault, entry)
            elif rule and rule.get("hold_ms"):
                # The call took effect; its answer is held back, so that a test can kill the
                # caller between the effect and the answer (the "crashed right after" case).
                entry["real_status"] = result[0]
                time.sleep(rule["hold_ms"] / 1000.0)
        entry["status"] = result[0]
        return result

    @staticmethod
    def _fault(call, rule, entry):
        entry["fault"] = rule["code"]
        return wire.error_response(call, rule["code"], rule.get("message", ""), int(rule.get("status", 400)))

    def _forward(self, call, environ, body):
        try:
            return self._forward_unsafe(call, environ, body)
        except Exception as e:  # a shim bug still answers in the caller's wire format
            traceback.print_exc()
            return wire.error_response(call, "InternalFailure", f"moto_shim: {type(e).__name__}: {e}", 500)

    def _forward_unsafe(self, call, environ, body):
        if call.protocol != "cbor":
            return self._moto(environ, body)
        extra, json_body = cloudwatch_cbor.json_request(call.cbor_op, call.params)
        extra["PATH_INFO"] = "/"  # moto serves CloudWatch JSON at the root path
        extra["HTTP_CONTENT_ENCODING"] = None  # the JSON body we send is not compressed
        status, headers, out = self._moto(environ, json_body, extra)
        query_error = next((v for k, v in headers if k.lower() == "x-amzn-query-error"), None)
        return cloudwatch_cbor.cbor_response(call.cbor_op, status, out, query_error)

    @staticmethod
    def _take_fault(call):
        """First rule matching (service, action) with uses left; uses one up."""
        for rule in STATE.faults:
            if rule.get("service") not in (None, "*", call.service):
                continue
            if rule.get("action") not in (None, "*", call.action):
                continue
            if rule.get("params_contains") and rule["params_contains"] not in json.dumps(call.id_params()):
                continue
            if rule["remaining"] == 0:
                continue
            rule["remaining"] -= 1  # negative counts never reach 0: forever
            return rule
        return None

    # -- control API ---------------------------------------------------------------
    def _control(self, method, path, body, environ):
        try:
            data = json.loads(body) if body.strip() else None
        except ValueError as e:
            return 400, {"error": f"bad JSON: {e}"}
        name = path[len("/_shim/"):].strip("/")
        handler = getattr(self, f"_c_{name.replace('-', '_')}", None)
        if handler is None:
            return 404, {"error": f"unknown control endpoint {path}"}
        try:
            return handler(method, data, environ)
        except (KeyError, TypeError, ValueError) as e:
            return 400, {"error": f"{type(e).__name__}: {e}"}

    def _c_health(self, method, data, environ):
        return 200, {"ok": True}

    def _c_calls(self, method, data, environ):
        with LOCK:
            if method == "DELETE":
                STATE.calls.clear()
                return 200, {"cleared": True}
            return 200, [dict(c) for c in STATE.calls]

    def _c_faults(self, method, data, environ):
        def add(rule):
            rule = dict(rule)
            rule["remaining"] = int(rule.get("count", 1))
            if not rule.get("code") and not rule.get("delay_ms") and not rule.get("hold_ms"):
                raise ValueError("a fault rule needs a code, a delay_ms or a hold_ms")
            STATE.faults.append(rule)

        def listing():
            STATE.faults[:] = [r for r in STATE.faults if r["remaining"] != 0]  # drop used-up rules
            return [dict(r) for r in STATE.faults]

        return _list_endpoint(method, data, STATE.faults, add, listing)

    def _c_rds_status(self, method, data, environ):
        def add(item):
            if item["kind"] not in ("instance", "cluster"):
                raise ValueError("kind must be instance or cluster")
            STATE.status_scripts[(item["kind"], item["id"].lower())] = {
                "status": item["status"], "reads": int(item.get("reads", 1))}

        def listing():
            return [{"kind": k, "id": i, **v} for (k, i), v in STATE.status_scripts.items()]

        return _list_endpoint(method, data, STATE.status_scripts, add, listing)

    def _c_route53_pending(self, method, data, environ):
        """Rules that keep Route 53 changes PENDING (route53.py): pending_seconds (negative =
        forever), count (changes it applies to; default -1 = until DELETE), zone, record."""
        def add(rule):
            rule = dict(rule)
            rule["pending_seconds"] = float(rule["pending_seconds"])
            rule["remaining"] = int(rule.get("count", -1))
            STATE.route53_rules.append(rule)

        def listing():
            STATE.route53_rules[:] = [r for r in STATE.route53_rules if r["remaining"] != 0]
            return [dict(r) for r in STATE.route53_rules]

        return _list_endpoint(method, data, STATE.route53_rules, add, listing)

    def _c_route53_changes(self, method, data, environ):
        """Every change ChangeResourceRecordSets accepted, with its status now; DELETE forgets
        them (GetChange then answers NoSuchChange)."""
        if method == "DELETE":
            with LOCK:
                STATE.route53_changes.clear()
            return 200, {"cleared": True}
        return 200, route53.listing()

    def _c_proxy_target_health(self, method, data, environ):
        """Rules overriding the TargetHealth of RDS Proxy targets (rds_proxy.py)."""
        return _list_endpoint(method, data, STATE.proxy_health, rds_proxy.add_health_rule,
                              lambda: [dict(r) for r in STATE.proxy_health])

    def _c_config(self, method, data, environ):
        with LOCK:
            if method == "POST":
                for k, v in data.items():
                    if k not in STATE.config:
                        raise KeyError(f"unknown setting {k}")
                    if isinstance(STATE.config[k], dict):
                        STATE.config[k].update(v)
                    else:
                        STATE.config[k] = v
            return 200, STATE.config

    def _c_events(self, method, data, environ):
        if method != "POST":
            return 405, {"error": "POST an event"}
        rds.add_event(data.get("account", "123456789012"), data.get("region", "us-east-1"),
                      data["source_id"], data["source_type"], data["message"],
                      data.get("date"), data.get("categories"))
        return 200, {"added": True}

    def _c_pending_maintenance(self, method, data, environ):
        with LOCK:
            if method == "DELETE":
                STATE.pending_maintenance = []
            elif method == "POST":
                STATE.pending_maintenance = list(data if isinstance(data, list) else [data])
            return 200, STATE.pending_maintenance

    def _c_postgres(self, method, data, environ):
        """A real PostgreSQL behind one emulated instance (postgres_backend.py): POST registers
        one, GET lists them with their standbys and what was done, DELETE stops the standbys."""
        if method == "POST":
            return 200, postgres_backend.register(data)
        if method == "DELETE":
            postgres_backend.reset()
            return 200, {"cleared": True}
        return 200, postgres_backend.listing()

    def _c_reset(self, method, data, environ):
        status, _, out = self._moto(environ, b"", {"PATH_INFO": "/moto-api/reset", "REQUEST_METHOD": "POST",
                                                  "QUERY_STRING": ""})
        postgres_backend.reset()
        STATE.reset()
        return 200, {"moto_status": status}
