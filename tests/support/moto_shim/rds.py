"""In-process patches of moto 5.2.5's RDS backend and responses.

The shim runs moto's WSGI app in its own process, so changing moto's classes is the
shortest way to close its RDS gaps. Every patch wraps one moto function and says
which gap it closes. `install()` is called once before the server starts.

Answers keep flowing through moto's own model-driven awsQuery serializer, so the
XML is shaped exactly as botocore's RDS model (and so the Rust SDK) expects.
"""

import copy
import datetime
import hashlib

from moto.core.responses import ActionResult
from moto.core.utils import utcnow
from moto.rds import models as m
from moto.rds import responses as r
from moto.rds.exceptions import (
    DBClusterNotFoundError,
    DBInstanceNotFoundError,
    InvalidDBClusterStateFault,
    InvalidParameterCombination,
    InvalidParameterValue,
    RDSClientError,
)

from . import postgres_backend as pg
from . import rds_catalog
from .state import LOCK, STATE


class DBClusterAlreadyExistsFault(RDSClientError):
    def __init__(self, identifier):
        super().__init__("DBClusterAlreadyExistsFault", f"DB cluster {identifier} already exists")


def _instance_by_arn(arn):
    """The DBInstance an ARN like arn:aws:rds:REGION:ACCOUNT:db:NAME names, or raise."""
    parts = arn.split(":")
    if len(parts) != 7 or parts[5] != "db":
        return None
    region, account, name = parts[3], parts[4], parts[6]
    db = m.rds_backends[account][region].databases.get(name)
    if db is None:
        raise DBInstanceNotFoundError(name)
    return db


# --- 2. Aurora replica cluster of an RDS *instance* -----------------------------

_orig_create_db_cluster = m.RDSBackend.create_db_cluster


def create_db_cluster(self, kwargs):
    """moto only knows cluster->cluster replicas; accept an instance ARN as source.

    The replica inherits the source's master user and password (AWS asks for neither)."""
    # moto re-creates an existing cluster (dropping its replication source) before failing on
    # the automated snapshot's name; AWS refuses at once and changes nothing.
    if kwargs.get("db_cluster_identifier") in self.clusters:
        raise DBClusterAlreadyExistsFault(kwargs["db_cluster_identifier"])
    source = kwargs.get("replication_source_identifier")
    instance = _instance_by_arn(source) if source and source.startswith("arn:") else None
    if instance is None:
        return _orig_create_db_cluster(self, kwargs)
    if kwargs.get("engine") != "aurora-postgresql" or instance.engine != "postgres":
        raise InvalidParameterCombination(
            "An Aurora read replica of a DB instance needs Engine aurora-postgresql "
            "and a postgres source instance."
        )
    del kwargs["replication_source_identifier"]  # keep moto from looking for a cluster
    if not kwargs.get("master_username"):
        kwargs["master_username"] = instance.master_username or "postgres"
    if not kwargs.get("master_user_password") and not kwargs.get("manage_master_user_password"):
        kwargs["master_user_password"] = "replica-of-instance"  # moto insists; never returned
    cluster = _orig_create_db_cluster(self, kwargs)
    cluster.replication_source_identifier = instance.arn
    backend = pg.backend(instance.db_instance_identifier)
    if backend:  # a real PostgreSQL behind the source: a real standby behind the replica
        backend.create_standby(cluster.db_cluster_identifier)
    return cluster


_orig_create_db_instance = m.RDSBackend.create_db_instance


def create_db_instance(self, db_kwargs):
    """The writer of a replica cluster with a real standby starts that standby."""
    cluster_id = db_kwargs.get("db_cluster_identifier")
    db = _orig_create_db_instance(self, db_kwargs)
    standby = pg.standby(cluster_id)
    if standby:
        standby.backend.start_standby(standby)
    return db


_orig_delete_db_cluster = m.RDSBackend.delete_db_cluster


def delete_db_cluster(self, cluster_identifier, snapshot_name=None):
    """A real standby behind the cluster is stopped and its slot dropped."""
    cluster = _orig_delete_db_cluster(self, cluster_identifier, snapshot_name)
    standby = pg.standby(cluster_identifier)
    if standby:
        standby.backend.delete_standby(standby)
    return cluster


def _read_replica_db_cluster_identifiers(self):
    """DBInstance.ReadReplicaDBClusterIdentifiers, computed from the clusters that
    name this instance as their source (so promote/delete need no bookkeeping)."""
    return [
        c.db_cluster_identifier
        for c in self.backend.clusters.values()
        if c.replication_source_identifier == self.arn
    ]


_orig_promote = m.RDSBackend.promote_read_replica_db_cluster


def promote_read_replica_db_cluster(self, db_cluster_identifier):
    """moto raises KeyError/TypeError (HTTP 500) for unknown or non-replica clusters."""
    cluster = self.clusters.get(db_cluster_identifier)
    if cluster is None:
        raise DBClusterNotFoundError(db_cluster_identifier)
    source = cluster.replication_source_identifier
    if not source:
        raise InvalidDBClusterStateFault(
            f"DB cluster {db_cluster_identifier} is not a read replica."
        )
    if ":db:" in source:  # instance-sourced: detaching is all there is to do
        standby = pg.standby(db_cluster_identifier)
        if standby:  # a real standby behind it is promoted first
            standby.backend.promote(standby)
        cluster.replication_source_identifier = None
        return cluster
    return _orig_promote(self, db_cluster_identifier)


# --- 4. scripted statuses and security-group transitions -------------------------

def _overlay(obj, **values):
    """A shallow copy of a moto model whose listed attributes read as `values`.

    The copy's class is a same-named subclass, so moto's serializer (which also looks
    attributes up by class-name prefix) treats it exactly like the original."""
    clone = copy.copy(obj)
    props = {k: property(lambda _self, _v=v: _v) for k, v in values.items()}
    clone.__class__ = type(type(obj).__name__, (type(obj),), props)
    return clone


def _instance_view(db, count):
    values = {}
    status = STATE.take_status("instance", db.db_instance_identifier.lower(), count)
    if status:
        values["db_instance_status"] = status
    sg = STATE.take_sg_transition(db.db_instance_identifier, count)
    if sg:
        old, new = sg
        values["vpc_security_group_membership_list"] = [
            {"VpcSecurityGroupId": g, "Status": "active" if g in old else "adding"} for g in new
        ] + [{"VpcSecurityGroupId": g, "Status": "removing"} for g in old if g not in new]
    real = pg.instance_endpoint(db)
    if real:  # a real PostgreSQL behind it: its address and port
        values["endpoint"] = {"Address": real[0], "Port": real[1]}
        values["port"] = real[1]
    return _overlay(db, **values) if values else db


def _cluster_view(cluster, count):
    values = {}
    status = STATE.take_status("cluster", cluster.db_cluster_identifier.lower(), count)
    if status:
        values["status"] = status
    real = pg.cluster_endpoint(cluster)
    if real:  # a real standby behind it: the writer endpoint is the standby
        values["endpoint"], values["port"] = real
    return _overlay(cluster, **values) if values else cluster


_orig_describe_instances = r.RDSResponse.describe_db_instances
_orig_describe_clusters = r.RDSResponse.describe_db_clusters
_orig_modify_instance = r.RDSResponse.modify_db_instance
_orig_reboot_instance = r.RDSResponse.reboot_db_instance


def describe_db_instances(self):
    res = _orig_describe_instances(self)
    res._result["DBInstances"] = [_instance_view(d, True) for d in res._result["DBInstances"]]
    return res


def describe_db_clusters(self):
    res = _orig_describe_clusters(self)
    res._result["DBClusters"] = [_cluster_view(c, True) for c in res._result["DBClusters"]]
    return res


def modify_db_instance(self):
    """moto applies new security groups at once; optionally show them as `adding`."""
    ident = self.params.get("DBInstanceIdentifier")
    before = self.backend.databases.get(ident)
    old = list(before.vpc_security_group_ids) if before is not None else []
    res = _orig_modify_instance(self)
    db = res._result["DBInstance"]
    reads = STATE.config.get("sg_adding_reads", 0)
    if "VpcSecurityGroupIds" in self.params and reads > 0 and set(old) != set(db.vpc_security_group_ids):
        with LOCK:
            STATE.sg_transitions[db.db_instance_identifier] = {
                "old": old, "new": list(db.vpc_security_group_ids), "reads": reads}
    backend = pg.backend(db.db_instance_identifier)
    if backend and "VpcSecurityGroupIds" in self.params:
        backend.set_groups(list(db.vpc_security_group_ids))
    res._result["DBInstance"] = _instance_view(db, False)
    return res


def reboot_db_instance(self):
    """moto stays `available` and logs no event; add AWS's two reboot events and,
    if configured, a `rebooting` status for some reads."""
    res = _orig_reboot_instance(self)
    db = res._result["DBInstance"]
    backend = pg.backend(db.db_instance_identifier)
    if backend:
        backend.reboot()
    now = utcnow()
    for msg in ("DB instance shutdown", "DB instance restarted"):
        self.backend.events.append(ShimEvent(db.db_instance_identifier, "db-instance", msg,
                                             ["availability"], db.arn, now))
    reads = STATE.config.get("reboot_rebooting_reads", 0)
    if reads > 0:
        with LOCK:
            STATE.status_scripts[("instance", db.db_instance_identifier.lower())] = {
                "status": "rebooting", "reads": reads}
    res._result["DBInstance"] = _instance_view(db, False)
    return res


# --- 5. events ---------------------------------------------------------------------

class ShimEvent:
    """Same attributes as moto.rds.models.Event, free text instead of moto's fixed map."""

    def __init__(self, source_identifier, source_type, message, categories, source_arn, date):
        self.source_identifier = source_identifier
        self.source_type = source_type
        self.message = message
        self.event_categories = categories
        self.source_arn = source_arn
        self.date = date


def _naive_utc(value):
    if isinstance(value, str):
        value = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    if isinstance(value, (int, float)):
        value = datetime.datetime.fromtimestamp(value, datetime.timezone.utc)
    if value.tzinfo is not None:
        value = value.astimezone(datetime.timezone.utc).replace(tzinfo=None)
    return value


_orig_describe_events = m.RDSBackend.describe_events


def describe_events(self, source_identifier=None, source_type=None, **kw):
    """moto ignores StartTime/EndTime/Duration/EventCategories; apply them as AWS does
    (no StartTime and no Duration means the last 60 minutes)."""
    events = _orig_describe_events(self, source_identifier, source_type)
    end = _naive_utc(kw["end_time"]) if kw.get("end_time") else utcnow()
    if kw.get("start_time"):
        start = _naive_utc(kw["start_time"])
    else:
        start = end - datetime.timedelta(minutes=int(kw.get("duration") or 60))
    cats = set(kw.get("event_categories") or [])
    out = [
        e for e in events
        if start <= _naive_utc(e.date) <= end
        and (not cats or cats & set(e.event_categories))
    ]
    return sorted(out, key=lambda e: _naive_utc(e.date))


def add_event(account, region, source_id, source_type, message, date=None, categories=None):
    """Append an arbitrary event (control endpoint POST /_shim/events)."""
    backend = m.rds_backends[account][region]
    arn = f"arn:aws:rds:{region}:{account}:{_ARN_KIND.get(source_type, 'db')}:{source_id}"
    backend.events.append(ShimEvent(source_id, source_type, message, categories or [], arn,
                                    _naive_utc(date) if date else utcnow()))


_ARN_KIND = {"db-instance": "db", "db-cluster": "cluster", "db-snapshot": "snapshot",
             "db-cluster-snapshot": "cluster-snapshot", "db-parameter-group": "pg",
             "db-security-group": "secgrp"}


# --- 3. calls moto does not implement ---------------------------------------------

def _filters(params):
    return {f["Name"]: f.get("Values", []) for f in params.get("Filters") or []}


def _page(params, items):
    """(page, next marker) honouring MaxRecords/Marker; the marker is an offset."""
    size = int(params.get("MaxRecords") or 100)
    start = int(params.get("Marker") or 0)
    end = start + size
    return items[start:end], (str(end) if end < len(items) else None)


def describe_db_engine_versions(self):
    p = self.params
    flt = _filters(p)
    engine = p.get("Engine") or (flt.get("engine") or [None])[0]
    version = p.get("EngineVersion") or (flt.get("engine-version") or [None])[0]
    family = p.get("DBParameterGroupFamily") or (flt.get("db-parameter-group-family") or [None])[0]
    rows = rds_catalog.engine_versions()
    if engine:
        rows = [v for v in rows if v["Engine"] == engine]
    if version:  # exact, or a major/minor prefix as AWS allows ("15", "15.7")
        rows = [v for v in rows if v["EngineVersion"] == version
                or v["EngineVersion"].startswith(version + ".")]
    if family:
        rows = [v for v in rows if v["DBParameterGroupFamily"] == family]
    if p.get("DefaultOnly"):
        rows = [v for v in rows if rds_catalog.DEFAULT_VERSION.get(v["Engine"]) == v["EngineVersion"]]
    page, marker = _page(p, rows)
    return ActionResult({"DBEngineVersions": page, "Marker": marker})


def _engine_defaults(self, cluster):
    family = self.params.get("DBParameterGroupFamily")
    params = rds_catalog.default_parameters(family, cluster=cluster)
    if params is None:
        raise InvalidParameterValue(f"Invalid DB parameter group family: {family}")
    page, marker = _page(self.params, params)
    return ActionResult({"EngineDefaults": {"DBParameterGroupFamily": family, "Parameters": page,
                                            "Marker": marker}})


def describe_engine_default_parameters(self):
    return _engine_defaults(self, cluster=False)


def describe_engine_default_cluster_parameters(self):
    return _engine_defaults(self, cluster=True)


def describe_pending_maintenance_actions(self):
    """Empty unless a test scripted some (POST /_shim/pending-maintenance)."""
    wanted = self.params.get("ResourceIdentifier")
    flt = _filters(self.params)
    ids = set(flt.get("db-instance-id", []) + flt.get("db-cluster-id", []))
    out = []
    for item in STATE.pending_maintenance:
        arn = item["ResourceIdentifier"]
        if wanted and arn != wanted:
            continue
        if ids and arn not in ids and arn.rsplit(":", 1)[-1] not in ids:
            continue
        out.append(item)
    return ActionResult({"PendingMaintenanceActions": out})


def describe_account_attributes(self):
    b = self.backend
    used = {
        "DBClusters": len(b.clusters),
        "DBInstances": len(b.databases),
        "DBClusterParameterGroups": len([g for g in b.db_cluster_parameter_groups if not g.startswith("default.")]),
        "DBParameterGroups": len([g for g in b.db_parameter_groups if not g.startswith("default.")]),
        "ManualSnapshots": len([s for s in b.database_snapshots.values() if s.snapshot_type == "manual"]),
    }
    quotas = [{"AccountQuotaName": k, "Used": used[k], "Max": int(v)}
              for k, v in STATE.config["quotas"].items() if k in used]
    return ActionResult({"AccountQuotas": quotas})


# moto 5.2.5 gives every instance the same DbiResourceId ("db-M5ENSHXFPU6XHZ4G4ZEI5QIO2U"); the
# agent keys migrations by it, so each instance gets its own, derived from its ARN (stable, and
# different for a new instance that reuses an identifier only if the ARN differs).
_orig_instance_init = m.DBInstance.__init__


def _instance_init(self, *args, **kwargs):
    _orig_instance_init(self, *args, **kwargs)
    with LOCK:
        STATE.instances_created = getattr(STATE, "instances_created", 0) + 1
        serial = STATE.instances_created
    digest = hashlib.sha256(f"{self.arn}#{serial}".encode()).hexdigest().upper()
    self.dbi_resource_id = "db-" + "".join(c for c in digest if c.isalnum())[:26]


def install():
    m.DBInstance.__init__ = _instance_init
    m.RDSBackend.create_db_cluster = create_db_cluster
    m.RDSBackend.create_db_instance = create_db_instance
    m.RDSBackend.delete_db_cluster = delete_db_cluster
    m.RDSBackend.promote_read_replica_db_cluster = promote_read_replica_db_cluster
    m.RDSBackend.describe_events = describe_events
    m.DBInstance.read_replica_db_cluster_identifiers = property(_read_replica_db_cluster_identifiers)
    r.RDSResponse.describe_db_instances = describe_db_instances
    r.RDSResponse.describe_db_clusters = describe_db_clusters
    r.RDSResponse.modify_db_instance = modify_db_instance
    r.RDSResponse.reboot_db_instance = reboot_db_instance
    r.RDSResponse.describe_db_engine_versions = describe_db_engine_versions
    r.RDSResponse.describe_engine_default_parameters = describe_engine_default_parameters
    r.RDSResponse.describe_engine_default_cluster_parameters = describe_engine_default_cluster_parameters
    r.RDSResponse.describe_pending_maintenance_actions = describe_pending_maintenance_actions
    r.RDSResponse.describe_account_attributes = describe_account_attributes
