"""In-process patches of moto 5.2.5's RDS Proxy target operations.

moto implements CreateDBProxy, DescribeDBProxies, DescribeDBProxyTargetGroups,
RegisterDBProxyTargets, DeregisterDBProxyTargets and DescribeDBProxyTargets, but for the targets
only roughly:
  * a registered cluster is one TRACKED_CLUSTER target and nothing else (AWS adds an
    RDS_INSTANCE target per cluster member, with the member's endpoint and its Role);
  * an instance target has no Endpoint, TargetArn or Role, and Port is always 5432;
  * TargetHealth is REGISTERING on the first read of the target (usually the Register answer
    itself) and AVAILABLE on every later one: no Reason/Description, no way to stay unhealthy;
  * unknown proxies, groups, instances and clusters are a Python KeyError (HTTP 500) or are
    accepted; registering twice adds a duplicate; deregistering what is not registered succeeds;
  * TargetGroupName, Marker and MaxRecords of DescribeDBProxyTargets are ignored.

Here the targets of a target group are the shim's own records (kept on moto's target-group object,
so they follow moto's accounts, regions and resets) and are described as AWS shapes them
(see `_targets`). Health: REGISTERING for `proxy_target_registering_s` seconds (config, default
0.5) after registration, then AVAILABLE, unless a rule from `POST /_shim/proxy-target-health`
overrides it (e.g. UNAVAILABLE / CONNECTION_FAILED forever). Answers still go through moto's
model-driven awsQuery serializer.
"""

import time

from moto.core.responses import ActionResult, EmptyResult
from moto.rds import models as m
from moto.rds import responses as r
from moto.rds.exceptions import (
    DBClusterNotFoundError,
    DBInstanceNotFoundError,
    DBProxyNotFoundFault,
    InvalidParameterValue,
    RDSClientError,
)

from . import postgres_backend as pg
from .state import LOCK, STATE

STATES = ("REGISTERING", "AVAILABLE", "UNAVAILABLE", "UNUSED")
REASONS = ("UNREACHABLE", "CONNECTION_FAILED", "AUTH_FAILURE", "PENDING_PROXY_CAPACITY",
           "INVALID_REPLICATION_STATE", "PROMOTED")


def _error(code, message):
    # moto's serializer takes the HTTP status from botocore's model for the code (404 for the
    # *NotFound faults, 400 for the others)
    return RDSClientError(code, message)


def _proxy(backend, name):
    proxy = backend.db_proxies.get(name)
    if proxy is None:
        raise DBProxyNotFoundFault(name)
    return proxy


def _group(backend, proxy_name, group_name):
    proxy = _proxy(backend, proxy_name)
    group = proxy.proxy_target_groups.get(group_name or "default")
    if group is None:
        raise _error("DBProxyTargetGroupNotFoundFault",
                     f"The specified target group {group_name} doesn't exist for proxy {proxy_name}.")
    if not hasattr(group, "shim_targets"):
        group.shim_targets = []  # [{"kind": "instance"|"cluster", "id", "registered", "seen"}]
    return group


# --- what a target looks like --------------------------------------------------------

def _instance_address(db):
    real = pg.instance_endpoint(db)  # a real PostgreSQL behind it (postgres_backend.py)
    return real if real else (db.address, int(db.port))


def _targets(backend, entry, now):
    """The DBProxyTarget dicts of one registration, without TargetHealth, each with the time its
    REGISTERING period starts under "_since"."""
    if entry["kind"] == "instance":
        db = backend.databases.get(entry["id"])
        if db is None:  # deleted after registration
            return [{"RdsResourceId": entry["id"], "Type": "RDS_INSTANCE", "_since": entry["registered"],
                     "_gone": True}]
        host, port = _instance_address(db)
        return [{"TargetArn": db.arn, "Endpoint": host, "RdsResourceId": db.db_instance_identifier,
                 "Port": port, "Type": "RDS_INSTANCE", "Role": "READ_WRITE", "_since": entry["registered"]}]
    cluster = backend.clusters.get(entry["id"])
    if cluster is None:
        return [{"RdsResourceId": entry["id"], "TrackedClusterId": entry["id"], "Type": "TRACKED_CLUSTER",
                 "_since": entry["registered"], "_gone": True}]
    real = pg.cluster_endpoint(cluster)
    # AWS's register-db-proxy-targets example shows the TRACKED_CLUSTER target without an
    # Endpoint; the members carry the endpoints.
    out = [{"TargetArn": cluster.arn, "TrackedClusterId": cluster.db_cluster_identifier,
            "RdsResourceId": cluster.db_cluster_identifier, "Port": real[1] if real else int(cluster.port),
            "Type": "TRACKED_CLUSTER", "_since": entry["registered"]}]
    # the cluster is tracked: members added later appear (REGISTERING from when first seen)
    for member in sorted(cluster.members, key=lambda d: (not d.is_cluster_writer, d.db_instance_identifier)):
        since = entry["seen"].setdefault(member.db_instance_identifier, now)
        host, port = _instance_address(member)
        out.append({"TargetArn": member.arn, "Endpoint": host, "TrackedClusterId": cluster.db_cluster_identifier,
                    "RdsResourceId": member.db_instance_identifier, "Port": port, "Type": "RDS_INSTANCE",
                    "Role": "READ_WRITE" if member.is_cluster_writer else "READ_ONLY", "_since": since})
    return out


def _rule_matches(rule, proxy_name, target):
    if rule.get("proxy") and rule["proxy"] != proxy_name:
        return False
    want = rule.get("target")
    return not want or want in (target.get("RdsResourceId"), target.get("TrackedClusterId"))


def _strip(target):
    for k in [k for k in target if k.startswith("_")]:
        del target[k]


def _finish(targets, proxy_name, now):
    """Sets TargetHealth on each target (rules first, then the REGISTERING period) and drops the
    private keys; uses up one read of each rule that matched a target here."""
    delay = float(STATE.config.get("proxy_target_registering_s", 0.5))
    with LOCK:
        used = set()
        for t in targets:
            rule = next((x for x in STATE.proxy_health
                         if x["remaining"] != 0 and _rule_matches(x, proxy_name, t)), None)
            if rule is not None:
                used.add(id(rule))
                health = {"State": rule["state"]}
                if rule.get("reason"):
                    health["Reason"] = rule["reason"]
                if rule["state"] != "AVAILABLE":
                    health["Description"] = rule.get("description") or _DESCRIPTIONS.get(
                        rule.get("reason"), "DBProxy Target is unavailable")
            elif t.get("_gone"):
                health = {"State": "UNAVAILABLE", "Reason": "UNREACHABLE",
                          "Description": "The registered database no longer exists"}
            elif now - t["_since"] < delay:
                health = {"State": "REGISTERING"}
            else:
                health = {"State": "AVAILABLE"}
            t["TargetHealth"] = health
            _strip(t)
        for rule in STATE.proxy_health:
            if id(rule) in used and rule["remaining"] > 0:
                rule["remaining"] -= 1
        STATE.proxy_health[:] = [x for x in STATE.proxy_health if x["remaining"] != 0]
    return targets


# Descriptions for scripted reasons: the shim's wording, except PENDING_PROXY_CAPACITY (AWS CLI example)
_DESCRIPTIONS = {
    "PENDING_PROXY_CAPACITY": "DBProxy Target is waiting for proxy to scale to desired capacity",
    "CONNECTION_FAILED": "Could not connect to the database (moto_shim scripted health)",
    "UNREACHABLE": "The database is unreachable from the proxy (moto_shim scripted health)",
    "AUTH_FAILURE": "The proxy could not authenticate to the database (moto_shim scripted health)",
    "INVALID_REPLICATION_STATE": "The target is in an invalid replication state (moto_shim scripted health)",
    "PROMOTED": "The target was promoted (moto_shim scripted health)",
}


def add_health_rule(item):
    """POST /_shim/proxy-target-health: {"proxy", "target", "state", "reason", "description",
    "reads"}; proxy/target absent = any; reads absent = until DELETE."""
    rule = {k: item[k] for k in ("proxy", "target", "state", "reason", "description") if item.get(k)}
    if rule.get("state") not in STATES:
        raise ValueError(f"state must be one of {', '.join(STATES)}")
    if rule.get("reason") and rule["reason"] not in REASONS:
        raise ValueError(f"reason must be one of {', '.join(REASONS)}")
    rule["reads"] = item.get("reads")
    rule["remaining"] = -1 if item.get("reads") is None else int(item["reads"])
    STATE.proxy_health.append(rule)


# --- the operations --------------------------------------------------------------------------

def _ids(params, key):
    value = params.get(key) or []
    return [value] if isinstance(value, str) else list(value)


def _page(params, items):
    size = int(params.get("MaxRecords") or 100)
    start = int(params.get("Marker") or 0)
    end = start + size
    return items[start:end], (str(end) if end < len(items) else None)


def register_db_proxy_targets(self):
    p = self.params
    group = _group(self.backend, p.get("DBProxyName"), p.get("TargetGroupName"))
    instances, clusters = _ids(p, "DBInstanceIdentifiers"), _ids(p, "DBClusterIdentifiers")
    if not instances and not clusters:
        raise InvalidParameterValue("Specify DBInstanceIdentifiers or DBClusterIdentifiers.")
    for i in instances:
        if i not in self.backend.databases:
            raise DBInstanceNotFoundError(i)
    for c in clusters:
        if c not in self.backend.clusters:
            raise DBClusterNotFoundError(c)
    wanted = [("instance", i) for i in instances] + [("cluster", c) for c in clusters]
    now = time.monotonic()
    with LOCK:
        held = {(e["kind"], e["id"]) for e in group.shim_targets}
        for w in wanted:
            if w in held:
                raise _error("DBProxyTargetAlreadyRegisteredFault",
                             f"The {w[0]} {w[1]} is already registered with target group "
                             f"{group.target_group_name} of proxy {group.db_proxy_name}.")
        # A target group holds one database (AWS docs). The code AWS answers when asked for a
        # second one is not documented: the shim says InvalidDBProxyStateFault.
        if held or len(wanted) > 1:
            raise _error("InvalidDBProxyStateFault",
                         f"Target group {group.target_group_name} of proxy {group.db_proxy_name} can hold "
                         "only one database; deregister the current target first (moto_shim).")
        entries = [{"kind": k, "id": i, "registered": now, "seen": {}} for k, i in wanted]
        group.shim_targets.extend(entries)
    targets = [t for e in entries for t in _targets(self.backend, e, now)]
    for t in targets:  # the answer shows the new targets REGISTERING, as AWS's example does
        _strip(t)
        t["TargetHealth"] = {"State": "REGISTERING"}
    return ActionResult({"DBProxyTargets": targets})


def deregister_db_proxy_targets(self):
    p = self.params
    group = _group(self.backend, p.get("DBProxyName"), p.get("TargetGroupName"))
    wanted = [("instance", i) for i in _ids(p, "DBInstanceIdentifiers")] + \
             [("cluster", c) for c in _ids(p, "DBClusterIdentifiers")]
    if not wanted:
        raise InvalidParameterValue("Specify DBInstanceIdentifiers or DBClusterIdentifiers.")
    with LOCK:
        held = {(e["kind"], e["id"]) for e in group.shim_targets}
        for w in wanted:
            if w not in held:
                raise _error("DBProxyTargetNotFoundFault",
                             f"The {w[0]} {w[1]} is not registered with target group "
                             f"{group.target_group_name} of proxy {group.db_proxy_name}.")
        group.shim_targets[:] = [e for e in group.shim_targets if (e["kind"], e["id"]) not in wanted]
    return EmptyResult()


def describe_db_proxy_targets(self):
    p = self.params
    group = _group(self.backend, p.get("DBProxyName"), p.get("TargetGroupName"))
    now = time.monotonic()
    with LOCK:
        entries = list(group.shim_targets)
        targets = [t for e in entries for t in _targets(self.backend, e, now)]
    page, marker = _page(p, targets)
    return ActionResult({"Targets": _finish(page, group.db_proxy_name, now), "Marker": marker})


def describe_db_proxy_target_groups(self):
    p = self.params
    proxy = _proxy(self.backend, p.get("DBProxyName"))
    groups = list(proxy.proxy_target_groups.values())
    if p.get("TargetGroupName"):
        groups = [_group(self.backend, p["DBProxyName"], p["TargetGroupName"])]
    page, marker = _page(p, groups)
    return ActionResult({"TargetGroups": page, "Marker": marker})


_orig_delete_proxy = m.RDSBackend.delete_db_proxy


def delete_db_proxy(self, proxy_name):
    """moto: KeyError (HTTP 500) for an unknown proxy."""
    _proxy(self, proxy_name)
    return _orig_delete_proxy(self, proxy_name)


def install():
    r.RDSResponse.register_db_proxy_targets = register_db_proxy_targets
    r.RDSResponse.deregister_db_proxy_targets = deregister_db_proxy_targets
    r.RDSResponse.describe_db_proxy_targets = describe_db_proxy_targets
    r.RDSResponse.describe_db_proxy_target_groups = describe_db_proxy_target_groups
    m.RDSBackend.delete_db_proxy = delete_db_proxy
