"""Proves each feature of tests/support/moto_shim against a real shim process.

One shim is started for the session on a free loopback port; every test starts
from POST /_shim/reset. CloudWatch CBOR requests are built with botocore's own
rpcv2Cbor serializer and read back with its rpcv2Cbor parser (boto3 itself would
pick the JSON protocol), so the shim is checked against an independent codec.
"""

import datetime
import gzip
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import boto3
import botocore.session
import cbor2
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError
from botocore.parsers import RpcV2CBORParser
from botocore.serialize import RpcV2CBORSerializer
from moto_shim import local_pgbouncer, local_postgres

HERE = os.path.dirname(os.path.abspath(__file__))
UTC = datetime.timezone.utc


# --- the shim process ---------------------------------------------------------------

def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def endpoint(tmp_path_factory):
    port = _free_port()
    log = open(tmp_path_factory.mktemp("shim") / "shim.log", "wb")
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, os.path.join(HERE, "moto_shim.py"), "-H", "127.0.0.1", "-p", str(port), "-q"],
        stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            assert proc.poll() is None, "shim exited during start-up (see shim.log)"
            assert time.monotonic() - started < 30, "shim did not answer within 30 s"
            try:
                urllib.request.urlopen(url + "/_shim/health", timeout=1).read()
                break
            except OSError:
                time.sleep(0.05)
        print(f"\nshim answered after {time.monotonic() - started:.2f} s", file=sys.stderr)
        yield url
    finally:
        proc.kill()  # by PID, the one we started
        proc.wait()
        log.close()


def ctl(endpoint, method, path, data=None):
    body = None if data is None else json.dumps(data).encode()
    req = urllib.request.Request(endpoint + path, data=body, method=method,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req) as resp:
        return json.loads(resp.read())


@pytest.fixture(autouse=True)
def reset(endpoint):
    ctl(endpoint, "POST", "/_shim/reset")


def client(endpoint, service, retries=True):
    cfg = Config(retries={"total_max_attempts": 3 if retries else 1, "mode": "standard"})
    return boto3.client(service, endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id="test", aws_secret_access_key="test", config=cfg)


def error_of(fn):
    with pytest.raises(ClientError) as ei:
        fn()
    return ei.value.response


# --- CloudWatch over rpcv2Cbor ------------------------------------------------------

CW_MODEL = botocore.session.get_session().get_service_model("cloudwatch")


def cbor_call(endpoint, op, params, gzipped=False):
    """Send `op` the way aws-sdk-cloudwatch >= 1.100 does; returns (status, headers, raw, parsed)."""
    om = CW_MODEL.operation_model(op)
    req = RpcV2CBORSerializer().serialize_to_request(params, om)
    if gzipped:  # what the SDK does to PutMetricData bodies over 10 KiB
        req["body"] = gzip.compress(req["body"])
        req["headers"]["Content-Encoding"] = "gzip"
    url = endpoint + req["url_path"]
    signed = AWSRequest(method="POST", url=url, data=req["body"], headers=dict(req["headers"]))
    SigV4Auth(Credentials("test", "test"), "monitoring", "us-east-1").add_auth(signed)
    http_req = urllib.request.Request(url, data=req["body"], headers=dict(signed.headers), method="POST")
    try:
        with urllib.request.urlopen(http_req) as resp:
            status, headers, raw = resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as e:
        status, headers, raw = e.code, dict(e.headers), e.read()
    headers = {k.lower(): v for k, v in headers.items()}
    parsed = RpcV2CBORParser().parse({"status_code": status, "headers": headers, "body": raw}, om.output_shape)
    return status, headers, raw, parsed


def _dims(db="src"):
    return [{"Name": "DBInstanceIdentifier", "Value": db}]


def test_cbor_put_metric_data_then_get_metric_data_round_trip(endpoint):
    now = datetime.datetime.now(UTC).replace(second=0, microsecond=0)
    points = [(now - datetime.timedelta(minutes=3), 900.0), (now - datetime.timedelta(minutes=2), 400.5),
              (now - datetime.timedelta(minutes=1), 0.0)]
    status, headers, _, _ = cbor_call(endpoint, "PutMetricData", {
        "Namespace": "AWS/RDS",
        "MetricData": [{"MetricName": "OldestReplicationSlotLag", "Dimensions": _dims(), "Timestamp": t,
                        "Value": v, "Unit": "Bytes"} for t, v in points]})
    assert status == 200 and headers["smithy-protocol"] == "rpc-v2-cbor"
    assert headers["content-type"] == "application/cbor"

    status, headers, raw, parsed = cbor_call(endpoint, "GetMetricData", {
        "MetricDataQueries": [{"Id": "lag", "MetricStat": {
            "Metric": {"Namespace": "AWS/RDS", "MetricName": "OldestReplicationSlotLag", "Dimensions": _dims()},
            "Period": 60, "Stat": "Minimum"}}],
        "StartTime": now - datetime.timedelta(minutes=10), "EndTime": now + datetime.timedelta(minutes=1),
        "ScanBy": "TimestampAscending"})
    assert status == 200
    result = parsed["MetricDataResults"][0]
    assert result["Id"] == "lag" and result["StatusCode"] == "Complete"
    got = sorted(zip([t.astimezone(UTC) for t in result["Timestamps"]], result["Values"]))
    assert got == points
    # On the wire: timestamps are CBOR tag 1 (epoch seconds), values CBOR floats.
    # tag 1 (0xc1) then a float64 (0xfb) of epoch seconds, even for whole seconds:
    # smithy-rs reads the tagged value with minicbor's f64(), which rejects integers
    assert raw.count(b"\xc1\xfb") == len(points)
    decoded = cbor2.loads(raw)
    assert all(isinstance(v, float) for v in decoded["MetricDataResults"][0]["Values"])

    status, _, _, parsed = cbor_call(endpoint, "GetMetricStatistics", {
        "Namespace": "AWS/RDS", "MetricName": "OldestReplicationSlotLag", "Dimensions": _dims(),
        "StartTime": now - datetime.timedelta(minutes=3), "EndTime": now, "Period": 60,
        "Statistics": ["Maximum"]})
    assert status == 200
    assert sorted(d["Maximum"] for d in parsed["Datapoints"]) == [0.0, 400.5, 900.0]


def _cw_values(endpoint, name, start, end, period=1, stat="Maximum", db="src"):
    """(timestamp, value) of one series as the agent reads it (GetMetricData over CBOR)."""
    _, _, _, parsed = cbor_call(endpoint, "GetMetricData", {
        "MetricDataQueries": [{"Id": "q", "MetricStat": {
            "Metric": {"Namespace": "AWS/RDS", "MetricName": name, "Dimensions": _dims(db)},
            "Period": period, "Stat": stat}}],
        "StartTime": start, "EndTime": end, "ScanBy": "TimestampAscending"})
    result = parsed["MetricDataResults"][0]
    return [(t.astimezone(UTC), v) for t, v in zip(result["Timestamps"], result["Values"])]


def test_cloudwatch_values_older_than_the_retention_are_dropped(endpoint):
    ctl(endpoint, "POST", "/_shim/config", {"cloudwatch_retention_s": 60})
    now = datetime.datetime.now(UTC).replace(microsecond=0)
    old, recent = now - datetime.timedelta(seconds=120), now - datetime.timedelta(seconds=5)

    def put(t, v):
        assert cbor_call(endpoint, "PutMetricData", {"Namespace": "AWS/RDS", "MetricData": [
            {"MetricName": "CPUUtilization", "Dimensions": _dims(), "Timestamp": t, "Value": v,
             "Unit": "Percent"}]})[0] == 200

    put(old, 1.0)
    put(recent, 2.0)
    put(old + datetime.timedelta(seconds=1), 3.0)  # a late value, already past the retention
    window = (now - datetime.timedelta(minutes=10), now + datetime.timedelta(minutes=1))
    assert _cw_values(endpoint, "CPUUtilization", *window) == [(recent, 2.0)]
    # The series' statistics over a longer period see only what is kept, too.
    assert _cw_values(endpoint, "CPUUtilization", *window, period=600, stat="Average")[0][1] == 2.0


def test_cloudwatch_reads_answer_their_own_series_by_period_unit_and_order(endpoint):
    now = datetime.datetime.now(UTC).replace(second=0, microsecond=0)
    data = []
    for db in ("src", "other"):
        for s, v in ((0, 1.0), (20, 5.0), (70, 7.0)):
            data.append({"MetricName": "WriteIOPS", "Dimensions": _dims(db), "Unit": "Count/Second",
                         "Timestamp": now - datetime.timedelta(minutes=5) + datetime.timedelta(seconds=s),
                         "Value": v if db == "src" else 100 * v})
    data.append({"MetricName": "WriteIOPS", "Dimensions": _dims(), "Unit": "Count", "Value": 1e6,
                 "Timestamp": now - datetime.timedelta(minutes=5)})
    assert cbor_call(endpoint, "PutMetricData", {"Namespace": "AWS/RDS", "MetricData": data})[0] == 200
    # Moto's namespace is not the query's: another namespace's series is not answered.
    assert cbor_call(endpoint, "PutMetricData", {"Namespace": "Other", "MetricData": data[:1]})[0] == 200
    start = now - datetime.timedelta(minutes=5)
    _, _, _, parsed = cbor_call(endpoint, "GetMetricData", {
        "MetricDataQueries": [{"Id": "q", "MetricStat": {
            "Metric": {"Namespace": "AWS/RDS", "MetricName": "WriteIOPS", "Dimensions": _dims()},
            "Period": 60, "Stat": "Sum", "Unit": "Count/Second"}}],
        "StartTime": start, "EndTime": now, "ScanBy": "TimestampDescending"})
    result = parsed["MetricDataResults"][0]
    assert result["Label"] == "WriteIOPS Sum"
    assert [t.astimezone(UTC) for t in result["Timestamps"]] == [start + datetime.timedelta(minutes=1), start]
    assert result["Values"] == [7.0, 6.0]


def test_cbor_gzipped_put_metric_data(endpoint):
    now = datetime.datetime.now(UTC).replace(microsecond=0)
    data = [{"MetricName": f"M{i}", "Dimensions": _dims(), "Timestamp": now, "Value": float(i)} for i in range(300)]
    assert cbor_call(endpoint, "PutMetricData", {"Namespace": "Big", "MetricData": data}, gzipped=True)[0] == 200
    _, _, _, parsed = cbor_call(endpoint, "GetMetricStatistics", {
        "Namespace": "Big", "MetricName": "M299", "Dimensions": _dims(), "Period": 60, "Statistics": ["Sum"],
        "StartTime": now - datetime.timedelta(minutes=1), "EndTime": now + datetime.timedelta(minutes=1)})
    assert [d["Sum"] for d in parsed["Datapoints"]] == [299.0]


def test_cbor_alarms_put_describe_delete(endpoint):
    alarm = {"AlarmName": "mig-heartbeat-src", "Namespace": "AuroraMigrator", "MetricName": "Heartbeat",
             "Dimensions": [{"Name": "Migration", "Value": "m-1"}], "Statistic": "SampleCount",
             "Period": 60, "EvaluationPeriods": 3, "Threshold": 1.0,
             "ComparisonOperator": "LessThanThreshold", "TreatMissingData": "breaching",
             "AlarmActions": ["arn:aws:sns:us-east-1:123456789012:mig"]}
    assert cbor_call(endpoint, "PutMetricAlarm", alarm)[0] == 200
    status, _, _, parsed = cbor_call(endpoint, "DescribeAlarms", {"AlarmNames": ["mig-heartbeat-src"]})
    assert status == 200
    [got] = parsed["MetricAlarms"]
    assert got["TreatMissingData"] == "breaching" and got["Threshold"] == 1.0
    assert got["AlarmActions"] == alarm["AlarmActions"]
    assert isinstance(got["AlarmConfigurationUpdatedTimestamp"], datetime.datetime)
    assert cbor_call(endpoint, "DeleteAlarms", {"AlarmNames": ["mig-heartbeat-src"]})[0] == 200
    assert cbor_call(endpoint, "DescribeAlarms", {})[3]["MetricAlarms"] == []


def test_cbor_error_is_cbor_with_type_and_query_error_header(endpoint):
    status, headers, raw, parsed = cbor_call(endpoint, "PutMetricAlarm", {
        "AlarmName": "a", "Namespace": "n", "MetricName": "m", "ExtendedStatistic": "x99", "Period": 60,
        "EvaluationPeriods": 1, "Threshold": 1.0, "ComparisonOperator": "LessThanThreshold"})
    assert status == 400 and headers["smithy-protocol"] == "rpc-v2-cbor"
    body = cbor2.loads(raw)
    # __type is the Smithy shape; the awsQuery code travels in x-amzn-query-error
    assert body["__type"] == "com.amazonaws.cloudwatch#InvalidParameterValueException"
    assert "x99" in body["message"]
    assert headers["x-amzn-query-error"] == "InvalidParameterValue;Sender"
    assert parsed["Error"]["Code"] == "InvalidParameterValue"


def test_boto3_cloudwatch_json_still_passes_through(endpoint):
    cw = client(endpoint, "cloudwatch")
    cw.put_metric_data(Namespace="AWS/RDS", MetricData=[{"MetricName": "DatabaseConnections",
                                                         "Dimensions": _dims(), "Value": 3.0}])
    assert cw.list_metrics(Namespace="AWS/RDS")["Metrics"][0]["MetricName"] == "DatabaseConnections"


# --- RDS: Aurora replica of an instance -----------------------------------------------

def make_source(rds, ident="src", sgs=None):
    kw = {"VpcSecurityGroupIds": sgs} if sgs else {}
    return rds.create_db_instance(
        DBInstanceIdentifier=ident, Engine="postgres", EngineVersion="15.7", DBInstanceClass="db.r6g.large",
        MasterUsername="app", MasterUserPassword="secret-password", AllocatedStorage=100, **kw)["DBInstance"]


def test_aurora_replica_of_instance_create_describe_promote(endpoint):
    rds = client(endpoint, "rds")
    arn = make_source(rds)["DBInstanceArn"]
    created = rds.create_db_cluster(DBClusterIdentifier="src-aurora", Engine="aurora-postgresql",
                                    EngineVersion="15.7", ReplicationSourceIdentifier=arn)["DBCluster"]
    assert created["Status"] == "creating"
    assert created["ReplicationSourceIdentifier"] == arn
    assert created["MasterUsername"] == "app"  # inherited; none was given

    [cluster] = rds.describe_db_clusters(DBClusterIdentifier="src-aurora")["DBClusters"]
    assert cluster["ReplicationSourceIdentifier"] == arn
    [src] = rds.describe_db_instances(DBInstanceIdentifier="src")["DBInstances"]
    assert src["ReadReplicaDBClusterIdentifiers"] == ["src-aurora"]

    # a writer instance in the replica cluster is plain moto
    rds.create_db_instance(DBInstanceIdentifier="src-aurora-1", DBClusterIdentifier="src-aurora",
                           Engine="aurora-postgresql", DBInstanceClass="db.r6g.large")
    promoted = rds.promote_read_replica_db_cluster(DBClusterIdentifier="src-aurora")["DBCluster"]
    assert "ReplicationSourceIdentifier" not in promoted
    [cluster] = rds.describe_db_clusters(DBClusterIdentifier="src-aurora")["DBClusters"]
    assert "ReplicationSourceIdentifier" not in cluster
    [src] = rds.describe_db_instances(DBInstanceIdentifier="src")["DBInstances"]
    assert src.get("ReadReplicaDBClusterIdentifiers", []) == []


def test_replica_of_missing_instance_and_promote_errors(endpoint):
    rds = client(endpoint, "rds", retries=False)
    err = error_of(lambda: rds.create_db_cluster(
        DBClusterIdentifier="x", Engine="aurora-postgresql",
        ReplicationSourceIdentifier="arn:aws:rds:us-east-1:123456789012:db:nope"))
    assert err["Error"]["Code"] == "DBInstanceNotFound"

    err = error_of(lambda: rds.promote_read_replica_db_cluster(DBClusterIdentifier="nope"))
    assert err["Error"]["Code"] == "DBClusterNotFoundFault"
    assert err["ResponseMetadata"]["HTTPStatusCode"] == 404

    rds.create_db_cluster(DBClusterIdentifier="plain", Engine="aurora-postgresql",
                          MasterUsername="u", MasterUserPassword="password123")
    err = error_of(lambda: rds.promote_read_replica_db_cluster(DBClusterIdentifier="plain"))
    assert err["Error"]["Code"] == "InvalidDBClusterStateFault"
    assert err["ResponseMetadata"]["HTTPStatusCode"] == 400


# --- RDS: calls moto does not implement ---------------------------------------------

def test_describe_db_engine_versions(endpoint):
    rds = client(endpoint, "rds")
    aurora = rds.describe_db_engine_versions(Engine="aurora-postgresql")["DBEngineVersions"]
    majors = {v["EngineVersion"].split(".")[0] for v in aurora}
    assert majors == {"14", "15", "16", "17"}
    v157 = next(v for v in aurora if v["EngineVersion"] == "15.7")
    assert v157["DBParameterGroupFamily"] == "aurora-postgresql15" and v157["Status"] == "available"
    assert {"Engine": "aurora-postgresql", "EngineVersion": "16.4"}.items() <= next(
        t for t in v157["ValidUpgradeTarget"] if t["EngineVersion"] == "16.4").items()

    pg = rds.describe_db_engine_versions(Engine="postgres", EngineVersion="15.7")["DBEngineVersions"]
    assert [(v["EngineVersion"], v["DBParameterGroupFamily"]) for v in pg] == [("15.7", "postgres15")]
    fam = rds.describe_db_engine_versions(DBParameterGroupFamily="postgres17")["DBEngineVersions"]
    assert fam and all(v["Engine"] == "postgres" for v in fam)
    default = rds.describe_db_engine_versions(Engine="aurora-postgresql", DefaultOnly=True)["DBEngineVersions"]
    assert len(default) == 1


REQUIRED = {"shared_preload_libraries", "rds.logical_replication", "max_connections", "work_mem",
            "log_min_duration_statement", "rds.force_ssl"}


def test_engine_default_parameters(endpoint):
    rds = client(endpoint, "rds")
    pg = rds.describe_engine_default_parameters(DBParameterGroupFamily="postgres15")["EngineDefaults"]
    assert pg["DBParameterGroupFamily"] == "postgres15"
    by_name = {p["ParameterName"]: p for p in pg["Parameters"]}
    assert len(by_name) >= 30 and REQUIRED <= set(by_name)
    for p in pg["Parameters"]:
        assert p["Source"] == "engine-default" and p["ApplyType"] in ("static", "dynamic")
        assert isinstance(p["IsModifiable"], bool)
    assert by_name["rds.logical_replication"]["ApplyType"] == "static"
    assert by_name["rds.force_ssl"]["ParameterValue"] == "1"

    ai = rds.describe_engine_default_parameters(DBParameterGroupFamily="aurora-postgresql15")["EngineDefaults"]
    ai_names = {p["ParameterName"] for p in ai["Parameters"]}
    assert {"shared_preload_libraries", "max_connections", "work_mem", "log_min_duration_statement"} <= ai_names
    # RDS-only parameters are absent at Aurora instance level: translation must drop them
    assert not {"rds.logical_replication", "rds.force_ssl", "max_wal_size", "checkpoint_timeout"} & ai_names

    ac = rds.describe_engine_default_cluster_parameters(DBParameterGroupFamily="aurora-postgresql15")
    ac_names = {p["ParameterName"] for p in ac["EngineDefaults"]["Parameters"]}
    assert {"rds.logical_replication", "rds.force_ssl", "shared_preload_libraries"} <= ac_names
    assert "max_wal_size" not in ac_names
    # rds.allowed_extensions: its AllowedValues is every extension the family offers
    ac_by_name = {p["ParameterName"]: p for p in ac["EngineDefaults"]["Parameters"]}
    allowed = [e.strip() for e in ac_by_name["rds.allowed_extensions"]["AllowedValues"].split(",")]
    assert {"plpgsql", "pg_stat_statements", "pg_cron", "postgis", "vector"} <= set(allowed)
    assert "rds.allowed_extensions" not in ai_names

    # MaxRecords/Marker paging, as the Rust SDK's paginator drives it
    pages = rds.get_paginator("describe_engine_default_parameters").paginate(
        DBParameterGroupFamily="postgres15", PaginationConfig={"PageSize": 20})
    paged = [p["ParameterName"] for page in pages for p in page["EngineDefaults"]["Parameters"]]
    assert paged == [p["ParameterName"] for p in pg["Parameters"]]

    bad = error_of(lambda: client(endpoint, "rds", retries=False).describe_engine_default_parameters(
        DBParameterGroupFamily="mysql8.0"))
    assert bad["Error"]["Code"] == "InvalidParameterValue"


def test_pending_maintenance_actions_empty_then_scripted(endpoint):
    rds = client(endpoint, "rds")
    assert rds.describe_pending_maintenance_actions()["PendingMaintenanceActions"] == []
    arn = "arn:aws:rds:us-east-1:123456789012:db:src"
    ctl(endpoint, "POST", "/_shim/pending-maintenance", [{
        "ResourceIdentifier": arn,
        "PendingMaintenanceActionDetails": [{"Action": "system-update", "Description": "New OS patch"}]}])
    got = rds.describe_pending_maintenance_actions(ResourceIdentifier=arn)["PendingMaintenanceActions"]
    assert got[0]["PendingMaintenanceActionDetails"][0]["Action"] == "system-update"
    other = rds.describe_pending_maintenance_actions(
        Filters=[{"Name": "db-instance-id", "Values": ["other"]}])["PendingMaintenanceActions"]
    assert other == []


def test_account_attributes_count_moto_state(endpoint):
    rds = client(endpoint, "rds")
    make_source(rds)
    rds.create_db_parameter_group(DBParameterGroupName="pg", DBParameterGroupFamily="postgres15", Description="d")
    rds.create_db_snapshot(DBSnapshotIdentifier="snap", DBInstanceIdentifier="src")
    ctl(endpoint, "POST", "/_shim/config", {"quotas": {"DBInstances": 7}})
    quotas = {q["AccountQuotaName"]: (q["Used"], q["Max"])
              for q in rds.describe_account_attributes()["AccountQuotas"]}
    assert quotas == {"DBClusters": (0, 40), "DBInstances": (1, 7), "DBClusterParameterGroups": (0, 50),
                      "DBParameterGroups": (1, 50), "ManualSnapshots": (1, 100)}


# --- RDS: state transitions ----------------------------------------------------------

def test_scripted_status_for_n_reads(endpoint):
    rds = client(endpoint, "rds")
    make_source(rds)
    rds.create_db_cluster(DBClusterIdentifier="tgt", Engine="aurora-postgresql",
                          MasterUsername="u", MasterUserPassword="password123")
    ctl(endpoint, "POST", "/_shim/rds-status", {"kind": "instance", "id": "src", "status": "modifying", "reads": 2})
    ctl(endpoint, "POST", "/_shim/rds-status", {"kind": "cluster", "id": "tgt", "status": "creating", "reads": 1})

    def inst():
        return rds.describe_db_instances(DBInstanceIdentifier="src")["DBInstances"][0]["DBInstanceStatus"]

    def clus():
        return rds.describe_db_clusters(DBClusterIdentifier="tgt")["DBClusters"][0]["Status"]

    assert [inst(), inst(), inst()] == ["modifying", "modifying", "available"]
    assert [clus(), clus()] == ["creating", "available"]


def test_security_groups_adding_for_configured_reads(endpoint):
    rds = client(endpoint, "rds")
    make_source(rds, sgs=["sg-old"])
    ctl(endpoint, "POST", "/_shim/config", {"sg_adding_reads": 2})
    resp = rds.modify_db_instance(DBInstanceIdentifier="src", VpcSecurityGroupIds=["sg-quarantine"],
                                  ApplyImmediately=True)["DBInstance"]
    assert {"VpcSecurityGroupId": "sg-quarantine", "Status": "adding"} in resp["VpcSecurityGroups"]

    def groups():
        db = rds.describe_db_instances(DBInstanceIdentifier="src")["DBInstances"][0]
        return sorted((g["VpcSecurityGroupId"], g["Status"]) for g in db["VpcSecurityGroups"])

    transition = [("sg-old", "removing"), ("sg-quarantine", "adding")]
    assert [groups(), groups(), groups()] == [transition, transition, [("sg-quarantine", "active")]]


def test_default_sg_change_is_immediately_active(endpoint):
    rds = client(endpoint, "rds")
    make_source(rds, sgs=["sg-old"])
    rds.modify_db_instance(DBInstanceIdentifier="src", VpcSecurityGroupIds=["sg-new"], ApplyImmediately=True)
    db = rds.describe_db_instances(DBInstanceIdentifier="src")["DBInstances"][0]
    assert db["VpcSecurityGroups"] == [{"VpcSecurityGroupId": "sg-new", "Status": "active"}]


# --- RDS: events ---------------------------------------------------------------------

def test_reboot_events_and_start_time_filter(endpoint):
    rds = client(endpoint, "rds")
    make_source(rds)
    ctl(endpoint, "POST", "/_shim/events", {
        "source_id": "src", "source_type": "db-instance", "message": "old news",
        "date": (datetime.datetime.now(UTC) - datetime.timedelta(minutes=30)).isoformat()})
    time.sleep(0.05)
    before_reboot = datetime.datetime.now(UTC)
    time.sleep(0.05)
    rds.reboot_db_instance(DBInstanceIdentifier="src")

    def messages(**kw):
        return [e["Message"] for e in rds.describe_events(SourceIdentifier="src", SourceType="db-instance",
                                                          **kw)["Events"]]

    assert messages(StartTime=before_reboot) == ["DB instance shutdown", "DB instance restarted"]
    everything = messages()  # default: the last hour
    assert everything[0] == "old news" and everything[-2:] == ["DB instance shutdown", "DB instance restarted"]
    assert "DB instance created" in everything
    assert messages(Duration=10)[-2:] == ["DB instance shutdown", "DB instance restarted"]
    assert "old news" not in messages(Duration=10)
    assert messages(StartTime=before_reboot, EndTime=before_reboot) == []
    assert messages(EventCategories=["availability"]) == ["DB instance shutdown", "DB instance restarted"]

    ev = rds.describe_events(SourceIdentifier="src", SourceType="db-instance", StartTime=before_reboot)["Events"][1]
    assert ev["SourceType"] == "db-instance" and ev["Date"] >= before_reboot
    assert ev["SourceArn"].endswith(":db:src")


def test_reboot_can_show_rebooting(endpoint):
    rds = client(endpoint, "rds")
    make_source(rds)
    ctl(endpoint, "POST", "/_shim/config", {"reboot_rebooting_reads": 1})
    assert rds.reboot_db_instance(DBInstanceIdentifier="src")["DBInstance"]["DBInstanceStatus"] == "rebooting"
    statuses = [rds.describe_db_instances(DBInstanceIdentifier="src")["DBInstances"][0]["DBInstanceStatus"]
                for _ in range(2)]
    assert statuses == ["rebooting", "available"]


# --- fault injection -----------------------------------------------------------------

def _throttle(endpoint, service, action, code="Throttling", status=400, count=1, **extra):
    ctl(endpoint, "POST", "/_shim/faults", [{"service": service, "action": action, "status": status,
                                            "code": code, "message": "Rate exceeded", "count": count, **extra}])


@pytest.mark.parametrize("service,action,call,code,status", [
    ("rds", "DescribeDBClusters", lambda c: c.describe_db_clusters(), "Throttling", 400),
    ("ec2", "DescribeVpcs", lambda c: c.describe_vpcs(), "RequestLimitExceeded", 503),
    ("sqs", "ListQueues", lambda c: c.list_queues(), "RequestThrottled", 400),
    ("sns", "ListTopics", lambda c: c.list_topics(), "Throttling", 400),
    ("cloudwatch", "DescribeAlarms", lambda c: c.describe_alarms(), "Throttling", 400),
    ("dynamodb", "ListTables", lambda c: c.list_tables(), "ThrottlingException", 400),
    ("route53", "ListHostedZones", lambda c: c.list_hosted_zones(), "Throttling", 400),
    ("rds", "DescribeDBInstances", lambda c: c.describe_db_instances(), "InternalFailure", 500),
])
def test_fault_in_each_wire_format(endpoint, service, action, call, code, status):
    signing = {"cloudwatch": "monitoring"}.get(service, service)
    _throttle(endpoint, signing, action, code=code, status=status)
    c = client(endpoint, service, retries=False)
    err = error_of(lambda: call(c))
    assert err["Error"]["Code"] == code
    assert err["Error"].get("Message") == "Rate exceeded"
    assert err["ResponseMetadata"]["HTTPStatusCode"] == status
    call(c)  # count 1: the next call is real again


def test_fault_in_cbor(endpoint):
    _throttle(endpoint, "monitoring", "GetMetricData", count=1)
    q = {"MetricDataQueries": [{"Id": "a", "MetricStat": {"Metric": {"Namespace": "n", "MetricName": "m"},
                                                       "Period": 60, "Stat": "Maximum"}}],
         "StartTime": datetime.datetime.now(UTC) - datetime.timedelta(minutes=5),
         "EndTime": datetime.datetime.now(UTC)}
    status, headers, raw, parsed = cbor_call(endpoint, "GetMetricData", q)
    assert status == 400 and headers["smithy-protocol"] == "rpc-v2-cbor"
    assert cbor2.loads(raw)["__type"].endswith("#Throttling")
    assert parsed["Error"]["Code"] == "Throttling"
    assert cbor_call(endpoint, "GetMetricData", q)[0] == 200


def test_fault_count_retries_and_delay(endpoint):
    rds = client(endpoint, "rds")  # 3 attempts: 2 throttles are absorbed
    _throttle(endpoint, "rds", "DescribeDBInstances", count=2)
    assert rds.describe_db_instances()["DBInstances"] == []
    _throttle(endpoint, "rds", "DescribeDBInstances", count=3)
    assert error_of(rds.describe_db_instances)["Error"]["Code"] == "Throttling"

    ctl(endpoint, "POST", "/_shim/faults", {"service": "rds", "action": "DescribeDBClusters",
                                            "delay_ms": 300, "count": 1})
    t = time.monotonic()
    rds.describe_db_clusters()
    assert time.monotonic() - t >= 0.3
    assert ctl(endpoint, "GET", "/_shim/faults") == []  # all used up
    _throttle(endpoint, "rds", "DescribeDBClusters", count=-1)  # forever, until cleared
    ctl(endpoint, "DELETE", "/_shim/faults")
    rds.describe_db_clusters()


def test_fault_count_is_exact_under_concurrency(endpoint):
    from concurrent.futures import ThreadPoolExecutor
    rds = client(endpoint, "rds", retries=False)
    _throttle(endpoint, "rds", "DescribeDBInstances", count=5)

    def one(_):
        try:
            rds.describe_db_instances()
            return "ok"
        except ClientError as e:
            return e.response["Error"]["Code"]

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(24)))
    assert results.count("Throttling") == 5 and results.count("ok") == 19
    assert len(ctl(endpoint, "GET", "/_shim/calls")) == 24


def test_fault_after_success_loses_the_answer_not_the_effect(endpoint):
    rds = client(endpoint, "rds", retries=False)
    _throttle(endpoint, "rds", "CreateDBInstance", code="InternalFailure", status=500, after_success=True)
    assert error_of(lambda: make_source(rds))["Error"]["Code"] == "InternalFailure"
    assert rds.describe_db_instances(DBInstanceIdentifier="src")["DBInstances"][0]["DBInstanceStatus"] == "available"
    again = error_of(lambda: make_source(rds))  # a blind retry now meets the real state
    assert again["Error"]["Code"] == "DBInstanceAlreadyExists"
    calls = ctl(endpoint, "GET", "/_shim/calls")
    assert calls[0]["fault"] == "InternalFailure" and calls[0]["real_status"] == 200 and calls[0]["status"] == 500


def test_hold_answers_after_the_effect_and_matches_on_identifiers(endpoint):
    rds = client(endpoint, "rds", retries=False)
    make_source(rds)
    ctl(endpoint, "POST", "/_shim/faults", {"service": "rds", "action": "ModifyDBInstance",
                                            "params_contains": "other", "code": "Throttling"})
    ctl(endpoint, "POST", "/_shim/faults", {"service": "rds", "action": "ModifyDBInstance",
                                            "params_contains": "src", "hold_ms": 1500})
    ctl(endpoint, "DELETE", "/_shim/calls")
    done = threading.Event()
    threading.Thread(target=lambda: (rds.modify_db_instance(
        DBInstanceIdentifier="src", VpcSecurityGroupIds=["sg-q"], ApplyImmediately=True), done.set())).start()
    deadline = time.monotonic() + 5
    while True:  # the effect is visible and logged while the answer is still held
        calls = ctl(endpoint, "GET", "/_shim/calls")
        if calls and calls[0].get("real_status") == 200:
            break
        assert time.monotonic() < deadline, calls
        time.sleep(0.05)
    assert not done.is_set() and calls[0]["status"] is None
    assert done.wait(5)
    assert ctl(endpoint, "GET", "/_shim/calls")[0]["status"] == 200
    # the rule for another identifier was never used
    assert [r["params_contains"] for r in ctl(endpoint, "GET", "/_shim/faults")] == ["other"]


# --- call log and reset --------------------------------------------------------------

def test_call_log_records_order_and_identifiers(endpoint):
    rds, sqs = client(endpoint, "rds"), client(endpoint, "sqs")
    ctl(endpoint, "DELETE", "/_shim/calls")
    arn = make_source(rds, sgs=["sg-1"])["DBInstanceArn"]
    rds.create_db_cluster(DBClusterIdentifier="tgt", Engine="aurora-postgresql", ReplicationSourceIdentifier=arn)
    rds.modify_db_instance(DBInstanceIdentifier="src", VpcSecurityGroupIds=["sg-q"], ApplyImmediately=True)
    rds.reboot_db_instance(DBInstanceIdentifier="src")
    sqs.create_queue(QueueName="wake")
    cbor_call(endpoint, "DescribeAlarms", {"AlarmNames": ["x"]})
    calls = ctl(endpoint, "GET", "/_shim/calls")
    assert [(c["service"], c["action"]) for c in calls] == [
        ("rds", "CreateDBInstance"), ("rds", "CreateDBCluster"), ("rds", "ModifyDBInstance"),
        ("rds", "RebootDBInstance"), ("sqs", "CreateQueue"), ("monitoring", "DescribeAlarms")]
    assert [c["seq"] for c in calls] == sorted(c["seq"] for c in calls)
    assert all(c["status"] == 200 and c["time"] > 0 for c in calls)
    assert calls[1]["params"]["ReplicationSourceIdentifier"] == arn
    assert calls[2]["params"] == {"DBInstanceIdentifier": "src", "VpcSecurityGroupIds": ["sg-q"]}
    assert calls[4]["params"] == {"QueueName": "wake"}
    assert calls[5]["params"] == {"AlarmNames": ["x"]}
    ctl(endpoint, "DELETE", "/_shim/calls")
    assert ctl(endpoint, "GET", "/_shim/calls") == []


def test_reset_clears_moto_and_shim_state(endpoint):
    rds = client(endpoint, "rds")
    make_source(rds)
    _throttle(endpoint, "rds", "DescribeDBClusters", count=-1)
    ctl(endpoint, "POST", "/_shim/rds-status", {"kind": "instance", "id": "src", "status": "rebooting", "reads": 9})
    ctl(endpoint, "POST", "/_shim/reset")
    assert rds.describe_db_instances()["DBInstances"] == []
    assert rds.describe_db_clusters()["DBClusters"] == []
    assert ctl(endpoint, "GET", "/_shim/faults") == [] and ctl(endpoint, "GET", "/_shim/rds-status") == []
    assert [c["action"] for c in ctl(endpoint, "GET", "/_shim/calls")] == ["DescribeDBInstances",
                                                                          "DescribeDBClusters"]


def test_every_instance_gets_its_own_dbi_resource_id(endpoint):
    # moto hard-codes one DbiResourceId for all instances; the agent keys migrations by it.
    rds = client(endpoint, "rds")
    make_source(rds, "first")
    make_source(rds, "second")
    ids = {d["DBInstanceIdentifier"]: d["DbiResourceId"] for d in rds.describe_db_instances()["DBInstances"]}
    assert ids["first"] != ids["second"]
    assert all(i.startswith("db-") and len(i) == 29 for i in ids.values()), ids
    again = {d["DBInstanceIdentifier"]: d["DbiResourceId"] for d in rds.describe_db_instances()["DBInstances"]}
    assert again == ids, "stable across describes"


def test_creating_an_existing_cluster_again_fails_and_changes_nothing(endpoint):
    # moto alone re-creates the cluster (losing its replication source) before failing.
    rds = client(endpoint, "rds", retries=False)
    make_source(rds, "src")
    arn = rds.describe_db_instances(DBInstanceIdentifier="src")["DBInstances"][0]["DBInstanceArn"]
    kw = dict(DBClusterIdentifier="tgt", Engine="aurora-postgresql", EngineVersion="15.4", ReplicationSourceIdentifier=arn)
    rds.create_db_cluster(**kw)
    assert error_of(lambda: rds.create_db_cluster(**kw))["Error"]["Code"] == "DBClusterAlreadyExistsFault"
    assert rds.describe_db_clusters(DBClusterIdentifier="tgt")["DBClusters"][0]["ReplicationSourceIdentifier"] == arn


# --- a real PostgreSQL behind an emulated instance (postgres_backend.py) ------------------

def _primary():
    """A primary from moto_shim/local_postgres.py. CI has the binaries: a missing one fails, it does
    not skip."""
    try:
        return local_postgres.Primary()
    except local_postgres.Missing as e:
        pytest.fail(str(e))


def _wait(what, f, limit=30):
    t = time.monotonic()
    while not f():
        assert time.monotonic() - t < limit, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_real_postgres_behind_an_instance_standby_promote_quarantine_reboot_delete(endpoint):
    primary = _primary()
    try:
        rds, ec2 = client(endpoint, "rds"), client(endpoint, "ec2")
        vpc = ec2.describe_vpcs()["Vpcs"][0]["VpcId"]
        app = ec2.create_security_group(GroupName="app", Description="app", VpcId=vpc)["GroupId"]
        agent = ec2.create_security_group(GroupName="agent", Description="agent", VpcId=vpc)["GroupId"]
        quarantine = ec2.create_security_group(GroupName="q", Description="q", VpcId=vpc)["GroupId"]
        ec2.authorize_security_group_ingress(GroupId=quarantine, IpPermissions=[{
            "IpProtocol": "tcp", "FromPort": primary.port, "ToPort": primary.port,
            "UserIdGroupPairs": [{"GroupId": agent}]}])
        arn = make_source(rds, "src", sgs=[app])["DBInstanceArn"]
        primary.sql("CREATE ROLE agent LOGIN PASSWORD 'pw'; CREATE ROLE app LOGIN; "
                    "CREATE TABLE t (n int); INSERT INTO t VALUES (1)")
        spec = {"instance": "src", "port": primary.port, "data": primary.data, "socket_dir": primary.sock,
                "bin_dir": primary.bin, "root": primary.root, "run_as": primary.run_as, "roles": {agent: "agent"}}
        assert ctl(endpoint, "POST", "/_shim/postgres", spec)["open_groups"] == [app]

        # the instance's endpoint is the primary (also as an RDS Proxy target)
        [src] = rds.describe_db_instances(DBInstanceIdentifier="src")["DBInstances"]
        assert src["Endpoint"] == {"Address": "127.0.0.1", "Port": primary.port}
        _proxy(rds, ec2)
        [target] = rds.register_db_proxy_targets(DBProxyName="orders-proxy", DBInstanceIdentifiers=["src"])[
            "DBProxyTargets"]
        assert (target["Endpoint"], target["Port"]) == ("127.0.0.1", primary.port)

        # the Aurora replica is a streaming standby on a slot, started with the writer
        rds.create_db_cluster(DBClusterIdentifier="tgt", Engine="aurora-postgresql", EngineVersion="15.7",
                              ReplicationSourceIdentifier=arn)
        [sb] = ctl(endpoint, "GET", "/_shim/postgres")[0]["standbys"]
        assert sb["cluster"] == "tgt" and not sb["running"]
        [cluster] = rds.describe_db_clusters(DBClusterIdentifier="tgt")["DBClusters"]
        assert (cluster["Endpoint"], cluster["Port"]) == ("127.0.0.1", sb["port"])
        assert primary.sql(f"SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{sb['slot']}'") == "1"
        rds.create_db_instance(DBInstanceIdentifier="tgt-1", DBClusterIdentifier="tgt",
                               Engine="aurora-postgresql", DBInstanceClass="db.r6g.large")
        primary.sql("INSERT INTO t VALUES (2)")
        standby_sql = lambda q: primary.sql(q, sock=sb["socket_dir"], port=sb["port"])  # noqa: E731
        _wait("the standby to replay the second row", lambda: standby_sql("SELECT count(*) FROM t") == "2")
        assert standby_sql("SELECT pg_is_in_recovery()") == "t"

        # quarantine: TCP refused except the roles of groups the quarantine group admits
        assert primary.tcp("app").returncode == 0
        rds.modify_db_instance(DBInstanceIdentifier="src", VpcSecurityGroupIds=[quarantine], ApplyImmediately=True)
        with open(os.path.join(primary.data, "pg_hba.conf")) as f:
            hba = f.read()
        assert "hostssl all agent 127.0.0.1/32 scram-sha-256" in hba and "host all all 127.0.0.1/32 reject" in hba
        refused = primary.tcp("app")
        assert refused.returncode != 0 and "rejects connection" in refused.stderr, refused.stderr
        # a quarantine group that admits nobody admits no role
        rds.modify_db_instance(DBInstanceIdentifier="src", VpcSecurityGroupIds=[agent], ApplyImmediately=True)
        assert ctl(endpoint, "GET", "/_shim/postgres")[0]["hba"] == []
        rds.modify_db_instance(DBInstanceIdentifier="src", VpcSecurityGroupIds=[app], ApplyImmediately=True)
        assert ctl(endpoint, "GET", "/_shim/postgres")[0]["hba"] == "open"
        assert primary.tcp("app").returncode == 0

        # reboot restarts the primary; the shim's events are still added
        before = primary.pid()
        rds.reboot_db_instance(DBInstanceIdentifier="src")
        assert primary.pid() != before
        assert primary.sql("SELECT count(*) FROM t") == "2"
        events = [e["Message"] for e in rds.describe_events(SourceIdentifier="src", SourceType="db-instance")["Events"]]
        assert "DB instance restarted" in events

        # promote: the standby leaves recovery with every row
        rds.promote_read_replica_db_cluster(DBClusterIdentifier="tgt")
        assert standby_sql("SELECT pg_is_in_recovery()") == "f"
        assert standby_sql("SELECT count(*) FROM t") == "2"

        # delete: the standby stops and its slot is dropped
        rds.delete_db_instance(DBInstanceIdentifier="tgt-1", SkipFinalSnapshot=True)
        rds.delete_db_cluster(DBClusterIdentifier="tgt", SkipFinalSnapshot=True)
        backend = ctl(endpoint, "GET", "/_shim/postgres")[0]
        assert backend["standbys"] == []
        assert primary.sql("SELECT count(*) FROM pg_replication_slots") == "0"
        assert not os.path.exists(os.path.join(sb["data"], "postmaster.pid"))
        assert [line.split()[0] for line in backend["log"]] == [
            "basebackup", "start", "hba", "hba", "hba", "restart", "promote", "delete"]
    finally:
        ctl(endpoint, "DELETE", "/_shim/postgres")
        primary.stop()


# --- Route 53: changes that take time to reach INSYNC (route53.py) ----------------------------

def _zone(r53, name="example.com"):
    return r53.create_hosted_zone(Name=name, CallerReference=f"ref-{name}-{time.time()}")["HostedZone"]["Id"]


def _upsert_cname(r53, zone, value, name="db.example.com", ttl=5):
    return r53.change_resource_record_sets(HostedZoneId=zone, ChangeBatch={"Comment": "cutover", "Changes": [
        {"Action": "UPSERT", "ResourceRecordSet": {"Name": name, "Type": "CNAME", "TTL": ttl,
                                                   "ResourceRecords": [{"Value": value}]}}]})["ChangeInfo"]


def _cname(r53, zone, name="db.example.com."):
    rrs = [r for r in r53.list_resource_record_sets(HostedZoneId=zone)["ResourceRecordSets"]
           if r["Name"] == name and r["Type"] == "CNAME"]
    return [(r["ResourceRecords"][0]["Value"], r["TTL"]) for r in rrs]


def test_route53_upsert_cname_is_pending_then_get_change_insync(endpoint):
    r53 = client(endpoint, "route53", retries=False)
    zone = _zone(r53)
    first = _upsert_cname(r53, zone, "src.aaaaaaaaaa.us-east-1.rds.amazonaws.com")
    # AWS answers a change PENDING with an id of its own (moto: INSYNC, one fixed id for all)
    assert first["Status"] == "PENDING" and first["Id"].startswith("/change/C") and first["Comment"] == "cutover"
    assert r53.get_change(Id=first["Id"])["ChangeInfo"]["Status"] == "INSYNC"  # default: no propagation time
    assert _cname(r53, zone) == [("src.aaaaaaaaaa.us-east-1.rds.amazonaws.com", 5)]

    second = _upsert_cname(r53, zone, "tgt.cluster-bbbbbbbbbb.us-east-1.rds.amazonaws.com")  # UPSERT replaces
    assert second["Id"] != first["Id"]
    assert r53.get_change(Id=second["Id"])["ChangeInfo"]["Status"] == "INSYNC"
    assert _cname(r53, zone) == [("tgt.cluster-bbbbbbbbbb.us-east-1.rds.amazonaws.com", 5)]

    err = error_of(lambda: r53.get_change(Id="C0000000000000NOSUCH"))
    assert err["Error"]["Code"] == "NoSuchChange" and err["ResponseMetadata"]["HTTPStatusCode"] == 404

    # the call log names Route 53's REST operations, with the zone and the records changed
    calls = [(c["action"], c["params"]) for c in ctl(endpoint, "GET", "/_shim/calls")]
    bare = zone.rsplit("/", 1)[-1]
    assert calls[:3] == [("CreateHostedZone", {}),
                         ("ChangeResourceRecordSets", {"HostedZoneId": bare, "RecordNames": ["db.example.com"]}),
                         ("GetChange", {"Id": first["Id"].rsplit("/", 1)[-1]})]
    listed = ctl(endpoint, "GET", "/_shim/route53-changes")
    assert [c["Changes"][0]["Values"] for c in listed] == [["src.aaaaaaaaaa.us-east-1.rds.amazonaws.com"],
                                                          ["tgt.cluster-bbbbbbbbbb.us-east-1.rds.amazonaws.com"]]
    assert {c["Status"] for c in listed} == {"INSYNC"}


def test_route53_change_stays_pending_for_a_while_or_forever(endpoint):
    r53 = client(endpoint, "route53", retries=False)
    zone = _zone(r53)
    # the next change stays PENDING for 0.6 s, then INSYNC
    ctl(endpoint, "POST", "/_shim/route53-pending", {"pending_seconds": 0.6, "count": 1})
    change = _upsert_cname(r53, zone, "a.example.net")
    t = time.monotonic()
    assert r53.get_change(Id=change["Id"])["ChangeInfo"]["Status"] == "PENDING"
    _wait("the change to reach INSYNC", lambda: r53.get_change(Id=change["Id"])["ChangeInfo"]["Status"] == "INSYNC")
    assert time.monotonic() - t >= 0.5
    assert ctl(endpoint, "GET", "/_shim/route53-pending") == []  # used up

    # accepted but never INSYNC (negative = forever); the record itself has changed
    ctl(endpoint, "POST", "/_shim/route53-pending", {"pending_seconds": -1, "count": 1})
    stuck = _upsert_cname(r53, zone, "b.example.net")
    for _ in range(5):
        assert r53.get_change(Id=stuck["Id"])["ChangeInfo"]["Status"] == "PENDING"
        time.sleep(0.1)
    assert _cname(r53, zone) == [("b.example.net", 5)]
    # the next change (e.g. the rollback's) is not affected
    back = _upsert_cname(r53, zone, "a.example.net")
    assert r53.get_change(Id=back["Id"])["ChangeInfo"]["Status"] == "INSYNC"
    assert r53.get_change(Id=stuck["Id"])["ChangeInfo"]["Status"] == "PENDING"
    assert [c["Status"] for c in ctl(endpoint, "GET", "/_shim/route53-changes")] == ["INSYNC", "PENDING", "INSYNC"]

    # rules can be scoped to a record (or a zone); without count they last until DELETE
    ctl(endpoint, "POST", "/_shim/route53-pending", {"pending_seconds": -1, "record": "other.example.com."})
    assert r53.get_change(Id=_upsert_cname(r53, zone, "x.example.net")["Id"])["ChangeInfo"]["Status"] == "INSYNC"
    other = _upsert_cname(r53, zone, "x.example.net", name="other.example.com")
    assert r53.get_change(Id=other["Id"])["ChangeInfo"]["Status"] == "PENDING"
    ctl(endpoint, "DELETE", "/_shim/route53-pending")
    again = _upsert_cname(r53, zone, "y.example.net", name="other.example.com")
    assert r53.get_change(Id=again["Id"])["ChangeInfo"]["Status"] == "INSYNC"

    # a failing Route 53 call answers in its restXml error format
    _throttle(endpoint, "route53", "ChangeResourceRecordSets", code="PriorRequestNotComplete")
    err = error_of(lambda: _upsert_cname(r53, zone, "z.example.net"))
    assert err["Error"]["Code"] == "PriorRequestNotComplete" and err["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert _cname(r53, zone) == [("x.example.net", 5)]  # unchanged by the refused call


# --- RDS Proxy targets (rds_proxy.py) ---------------------------------------------------------

def _proxy(rds, ec2, name="orders-proxy"):
    subnets = [s["SubnetId"] for s in ec2.describe_subnets()["Subnets"]][:2]
    return rds.create_db_proxy(
        DBProxyName=name, EngineFamily="POSTGRESQL", RoleArn="arn:aws:iam::123456789012:role/proxy",
        Auth=[{"AuthScheme": "SECRETS", "IAMAuth": "DISABLED",
               "SecretArn": "arn:aws:secretsmanager:us-east-1:123456789012:secret:orders"}],
        VpcSubnetIds=subnets)["DBProxy"]


def _aurora(rds, cluster="tgt", members=("tgt-1", "tgt-2")):
    rds.create_db_cluster(DBClusterIdentifier=cluster, Engine="aurora-postgresql", MasterUsername="u",
                          MasterUserPassword="password1")
    for m in members:
        rds.create_db_instance(DBInstanceIdentifier=m, DBClusterIdentifier=cluster, Engine="aurora-postgresql",
                               DBInstanceClass="db.r6g.large")


def _targets(rds, proxy="orders-proxy"):
    return rds.describe_db_proxy_targets(DBProxyName=proxy)["Targets"]


def _states(rds, proxy="orders-proxy"):
    return [(t["Type"], t["RdsResourceId"], t["TargetHealth"]["State"]) for t in _targets(rds, proxy)]


def test_rds_proxy_instance_target_registers_then_becomes_available(endpoint):
    rds, ec2 = client(endpoint, "rds", retries=False), client(endpoint, "ec2")
    proxy = _proxy(rds, ec2)
    assert rds.describe_db_proxies(DBProxyName="orders-proxy")["DBProxies"][0]["EngineFamily"] == "POSTGRESQL"
    assert proxy["Endpoint"].startswith("orders-proxy.db-proxy-")
    [group] = rds.describe_db_proxy_target_groups(DBProxyName="orders-proxy")["TargetGroups"]
    assert (group["TargetGroupName"], group["IsDefault"], group["Status"]) == ("default", True, "available")
    src = make_source(rds, "src")
    assert _targets(rds) == []

    t0 = time.monotonic()
    [reg] = rds.register_db_proxy_targets(DBProxyName="orders-proxy", DBInstanceIdentifiers=["src"])["DBProxyTargets"]
    assert reg == {"TargetArn": src["DBInstanceArn"], "Endpoint": src["Endpoint"]["Address"], "RdsResourceId": "src",
                   "Port": src["Endpoint"]["Port"], "Type": "RDS_INSTANCE", "Role": "READ_WRITE",
                   "TargetHealth": {"State": "REGISTERING"}}
    assert _states(rds) == [("RDS_INSTANCE", "src", "REGISTERING")]  # default: 0.5 s REGISTERING
    _wait("the target to become AVAILABLE", lambda: _states(rds) == [("RDS_INSTANCE", "src", "AVAILABLE")], 5)
    assert 0.4 <= time.monotonic() - t0 < 3
    [target] = _targets(rds)
    assert target["TargetHealth"] == {"State": "AVAILABLE"} and "TrackedClusterId" not in target

    # a registered database deleted since is unreachable
    rds.delete_db_instance(DBInstanceIdentifier="src", SkipFinalSnapshot=True)
    [gone] = _targets(rds)
    assert (gone["RdsResourceId"], gone["TargetHealth"]["State"], gone["TargetHealth"]["Reason"]) == (
        "src", "UNAVAILABLE", "UNREACHABLE")
    rds.deregister_db_proxy_targets(DBProxyName="orders-proxy", DBInstanceIdentifiers=["src"])
    assert _targets(rds) == []


def test_rds_proxy_moves_from_instance_to_aurora_cluster(endpoint):
    rds, ec2 = client(endpoint, "rds", retries=False), client(endpoint, "ec2")
    _proxy(rds, ec2)
    make_source(rds, "src")
    _aurora(rds)
    ctl(endpoint, "POST", "/_shim/config", {"proxy_target_registering_s": 0.2})
    rds.register_db_proxy_targets(DBProxyName="orders-proxy", TargetGroupName="default", DBInstanceIdentifiers=["src"])

    # a target group holds one database: the cluster is refused while the instance is registered
    code = lambda f: error_of(f)["Error"]["Code"]  # noqa: E731
    assert code(lambda: rds.register_db_proxy_targets(DBProxyName="orders-proxy", DBClusterIdentifiers=["tgt"])) \
        == "InvalidDBProxyStateFault"
    assert code(lambda: rds.register_db_proxy_targets(DBProxyName="orders-proxy", DBInstanceIdentifiers=["src"])) \
        == "DBProxyTargetAlreadyRegisteredFault"

    rds.deregister_db_proxy_targets(DBProxyName="orders-proxy", DBInstanceIdentifiers=["src"])
    reg = rds.register_db_proxy_targets(DBProxyName="orders-proxy", DBClusterIdentifiers=["tgt"])["DBProxyTargets"]
    # AWS: one TRACKED_CLUSTER target (no Endpoint) plus an RDS_INSTANCE target per member
    assert [(t["Type"], t["RdsResourceId"], t.get("Role"), t["TargetHealth"]["State"]) for t in reg] == [
        ("TRACKED_CLUSTER", "tgt", None, "REGISTERING"),
        ("RDS_INSTANCE", "tgt-1", "READ_WRITE", "REGISTERING"),
        ("RDS_INSTANCE", "tgt-2", "READ_ONLY", "REGISTERING")]
    [cluster] = rds.describe_db_clusters(DBClusterIdentifier="tgt")["DBClusters"]
    writer = rds.describe_db_instances(DBInstanceIdentifier="tgt-1")["DBInstances"][0]
    assert "Endpoint" not in reg[0] and reg[0]["TargetArn"] == cluster["DBClusterArn"]
    assert {t["TrackedClusterId"] for t in reg} == {"tgt"}
    assert (reg[1]["Endpoint"], reg[1]["Port"], reg[1]["TargetArn"]) == (
        writer["Endpoint"]["Address"], writer["Endpoint"]["Port"], writer["DBInstanceArn"])
    _wait("the cluster's targets to become AVAILABLE",
          lambda: {s for _, _, s in _states(rds)} == {"AVAILABLE"}, 5)

    # the cluster is tracked: a member added later shows up, REGISTERING first
    rds.create_db_instance(DBInstanceIdentifier="tgt-3", DBClusterIdentifier="tgt", Engine="aurora-postgresql",
                           DBInstanceClass="db.r6g.large")
    assert ("RDS_INSTANCE", "tgt-3", "REGISTERING") in _states(rds)
    _wait("the new member to become AVAILABLE", lambda: ("RDS_INSTANCE", "tgt-3", "AVAILABLE") in _states(rds), 5)

    # paging, and errors AWS has instead of moto's HTTP 500s
    page = rds.describe_db_proxy_targets(DBProxyName="orders-proxy", MaxRecords=20)  # AWS's minimum
    assert len(page["Targets"]) == 4 and "Marker" not in page
    for call, want, status in [
        (lambda: rds.describe_db_proxy_targets(DBProxyName="nope"), "DBProxyNotFoundFault", 404),
        (lambda: rds.describe_db_proxy_targets(DBProxyName="orders-proxy", TargetGroupName="x"),
         "DBProxyTargetGroupNotFoundFault", 404),
        (lambda: rds.deregister_db_proxy_targets(DBProxyName="orders-proxy", DBInstanceIdentifiers=["src"]),
         "DBProxyTargetNotFoundFault", 404),
        (lambda: rds.register_db_proxy_targets(DBProxyName="orders-proxy", DBClusterIdentifiers=["nope"]),
         "DBClusterNotFoundFault", 404),
        (lambda: rds.register_db_proxy_targets(DBProxyName="orders-proxy", DBInstanceIdentifiers=["nope"]),
         "DBInstanceNotFound", 404),
        (lambda: rds.describe_db_proxy_target_groups(DBProxyName="nope"), "DBProxyNotFoundFault", 404),
        (lambda: rds.delete_db_proxy(DBProxyName="nope"), "DBProxyNotFoundFault", 404),
    ]:
        err = error_of(call)
        assert (err["Error"]["Code"], err["ResponseMetadata"]["HTTPStatusCode"]) == (want, status)

    # rollback: back to the instance
    rds.deregister_db_proxy_targets(DBProxyName="orders-proxy", DBClusterIdentifiers=["tgt"])
    rds.register_db_proxy_targets(DBProxyName="orders-proxy", DBInstanceIdentifiers=["src"])
    assert _states(rds) == [("RDS_INSTANCE", "src", "REGISTERING")]
    moves = [(c["action"], c["params"].get("DBInstanceIdentifiers") or c["params"].get("DBClusterIdentifiers"))
             for c in ctl(endpoint, "GET", "/_shim/calls")
             if c["action"] in ("RegisterDBProxyTargets", "DeregisterDBProxyTargets") and c["status"] == 200]
    assert moves == [("RegisterDBProxyTargets", ["src"]), ("DeregisterDBProxyTargets", ["src"]),
                     ("RegisterDBProxyTargets", ["tgt"]), ("DeregisterDBProxyTargets", ["tgt"]),
                     ("RegisterDBProxyTargets", ["src"])]


def test_rds_proxy_target_never_becomes_healthy(endpoint):
    rds, ec2 = client(endpoint, "rds", retries=False), client(endpoint, "ec2")
    _proxy(rds, ec2)
    _aurora(rds, members=("tgt-1",))
    ctl(endpoint, "POST", "/_shim/config", {"proxy_target_registering_s": 0.05})
    # set before registration; target = RdsResourceId or TrackedClusterId; no reads = until DELETE
    ctl(endpoint, "POST", "/_shim/proxy-target-health",
        {"proxy": "orders-proxy", "target": "tgt", "state": "UNAVAILABLE", "reason": "CONNECTION_FAILED"})
    rds.register_db_proxy_targets(DBProxyName="orders-proxy", DBClusterIdentifiers=["tgt"])
    for _ in range(5):
        time.sleep(0.1)
        targets = _targets(rds)
        assert [t["TargetHealth"]["State"] for t in targets] == ["UNAVAILABLE", "UNAVAILABLE"]
    health = targets[1]["TargetHealth"]
    assert health["Reason"] == "CONNECTION_FAILED" and health["Description"]
    assert ctl(endpoint, "GET", "/_shim/proxy-target-health")[0]["remaining"] == -1

    ctl(endpoint, "DELETE", "/_shim/proxy-target-health")
    assert {s for _, _, s in _states(rds)} == {"AVAILABLE"}

    # for a number of describes only; other proxies and targets unaffected
    ctl(endpoint, "POST", "/_shim/proxy-target-health",
        [{"target": "tgt-1", "state": "UNAVAILABLE", "reason": "PENDING_PROXY_CAPACITY", "reads": 2}])
    assert _states(rds) == [("TRACKED_CLUSTER", "tgt", "AVAILABLE"), ("RDS_INSTANCE", "tgt-1", "UNAVAILABLE")]
    assert _targets(rds)[1]["TargetHealth"]["Description"] == \
        "DBProxy Target is waiting for proxy to scale to desired capacity"
    assert {s for _, _, s in _states(rds)} == {"AVAILABLE"}
    assert ctl(endpoint, "GET", "/_shim/proxy-target-health") == []

    with pytest.raises(urllib.error.HTTPError) as bad:
        ctl(endpoint, "POST", "/_shim/proxy-target-health", {"state": "BROKEN"})
    assert bad.value.code == 400


# --- PgBouncer in front of real PostgreSQL servers (local_pgbouncer.py) -------------------------

@pytest.fixture(scope="module")
def two_primaries():
    """Primaries A and B, each with the role `app` (password `app-pw`). Shared by the PgBouncer tests."""
    a = _primary()
    b = None
    try:
        b = _primary()
        for p in (a, b):
            p.sql("CREATE ROLE app LOGIN PASSWORD 'app-pw'; CREATE TABLE t (n int); GRANT ALL ON t TO app")
        yield a, b
    finally:
        a.stop()
        if b:
            b.stop()


def _bouncer(a, **kw):
    """A PgBouncer whose database `app` is primary A. CI installs pgbouncer (scripts/install-pgbouncer): a
    missing one fails, it does not skip."""
    try:
        return local_pgbouncer.Bouncer({"app": ("127.0.0.1", a.port, "postgres")}, **kw)
    except local_postgres.Missing as e:
        pytest.fail(str(e))


def _connect(bouncer, password="app-pw"):
    import psycopg

    return psycopg.connect(bouncer.dsn("app", password, "app"), autocommit=True, connect_timeout=10)


def _port_of(conn):
    return conn.execute("SELECT inet_server_port()").fetchone()[0]


def _in_thread(fn):
    """Runs fn in a thread; returns (thread, result dict with "value" or "error", and "seconds")."""
    out = {}

    def run():
        t = time.monotonic()
        try:
            out["value"] = fn()
        except Exception as e:  # the test asserts there is none
            out["error"] = e
        out["done_at"] = time.monotonic()
        out["seconds"] = out["done_at"] - t

    th = threading.Thread(target=run, daemon=True)
    th.start()
    return th, out


def test_pgbouncer_pause_repoint_reload_resume_holds_open_clients_then_runs_them_on_the_new_primary(two_primaries):
    a, b = two_primaries
    bouncer = _bouncer(a)  # pool_mode = transaction
    try:
        import psycopg

        with pytest.raises(psycopg.OperationalError, match="authentication failed"):
            _connect(bouncer, "wrong")  # passwords are PostgreSQL's (auth_user + auth_query)
        open_client = _connect(bouncer)
        assert _port_of(open_client) == a.port
        open_client.execute("INSERT INTO t VALUES (1)")

        t = time.monotonic()
        bouncer.pause("app")  # returns once no server connection is in use (transaction mode)
        pause_s = time.monotonic() - t
        held, held_out = _in_thread(lambda: (_port_of(open_client), open_client.execute("INSERT INTO t VALUES (2)")))
        late, late_out = _in_thread(lambda: _port_of(_connect(bouncer)))  # a new client during the pause
        time.sleep(1.0)
        assert held.is_alive() and late.is_alive(), (held_out, late_out)  # held, not failed
        waiting = [c for c in bouncer.show("CLIENTS") if c["database"] == "app"]
        assert {c["state"] for c in waiting} == {"waiting"}, waiting

        t = time.monotonic()
        bouncer.set_database("app", "127.0.0.1", b.port)
        bouncer.reload()
        bouncer.resume("app")
        resumed_at = time.monotonic()
        switch_s = resumed_at - t
        held.join(10)
        late.join(10)
        assert "error" not in held_out and "error" not in late_out, (held_out, late_out)
        assert held_out["value"][0] == b.port and late_out["value"] == b.port
        assert _port_of(open_client) == b.port and _port_of(_connect(bouncer)) == b.port
        assert a.sql("SELECT array_agg(n) FROM t") == "{1}" and b.sql("SELECT array_agg(n) FROM t") == "{2}"
        assert {s["port"] for s in bouncer.show("SERVERS")} == {str(b.port)}
        print(f"\npgbouncer {local_pgbouncer.version()} (transaction pooling): PAUSE took {pause_s:.3f} s; the open "
              f"client's query was held {held_out['seconds']:.3f} s (the test waited 1 s, then the rewrite, RELOAD "
              f"and RESUME took {switch_s:.3f} s; the query ran on the new primary "
              f"{held_out['done_at'] - resumed_at:.3f} s after RESUME returned); a new connection made during "
              f"the pause waited {late_out['seconds']:.3f} s", file=sys.stderr)
        assert 0.9 <= held_out["seconds"] < 10
    finally:
        bouncer.stop()
        b.sql("TRUNCATE t")
        a.sql("TRUNCATE t")


def test_pgbouncer_session_mode_pause_waits_for_clients_and_reload_keeps_them_on_the_old_server(two_primaries):
    a, b = two_primaries
    bouncer = _bouncer(a, pool_mode="session")
    try:
        client_ = _connect(bouncer)
        assert _port_of(client_) == a.port
        # session pooling: PAUSE waits for the client to disconnect, so it does not return
        with pytest.raises(subprocess.TimeoutExpired):
            bouncer.pause("app", timeout=1.0)
        bouncer.resume("app")
        # and a RELOAD that moves the database leaves the open client on the old server
        bouncer.set_database("app", "127.0.0.1", b.port)
        bouncer.reload()
        assert _port_of(client_) == a.port
        assert _port_of(_connect(bouncer)) == b.port
    finally:
        bouncer.stop()


def test_pgbouncer_query_wait_timeout_fails_a_client_held_too_long(two_primaries):
    a, _ = two_primaries
    bouncer = _bouncer(a, settings={"query_wait_timeout": 1})  # default 120 s
    try:
        import psycopg

        client_ = _connect(bouncer)
        bouncer.pause("app")
        t = time.monotonic()
        with pytest.raises(psycopg.OperationalError, match="query_wait_timeout"):
            _port_of(client_)
        assert 1.0 <= time.monotonic() - t < 5
    finally:
        bouncer.stop()
