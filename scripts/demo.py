#!/usr/bin/env python3
"""A whole migration on this machine, with no AWS account.

Starts the AWS emulator (moto behind tests/support/moto_shim), creates what the deployment would
(queue + DLQ, topic, table), an RDS PostgreSQL source in its security group, tags it
`aurora-migration=start`, and runs the real `aurora-migrator run` binary against it. This script
plays AWS's part where the emulator cannot: it publishes the CloudWatch values a real source and
replica would (replication-slot lag, connections, replica lag...) and the tag-change event
EventBridge would deliver. It prints every phase notification as the agent sends it and a summary
at the end: phase durations, the write-unavailability window, AWS calls by operation.

Usage: scripts/demo [--binary PATH] [--timeout SECONDS]
"""

import argparse
import collections
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path

import boto3

ROOT = Path(__file__).resolve().parent.parent
REGION = "us-east-1"
SOURCE = "orders-pg"
MIB = 1024 * 1024
GIB = 1024 * MIB


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1).read()
            return
        except Exception:
            time.sleep(0.1)
    raise SystemExit(f"the emulator did not answer at {url}")


def shim(endpoint, path, method="GET"):
    req = urllib.request.Request(endpoint + path, method=method)
    return json.loads(urllib.request.urlopen(req, timeout=5).read() or b"null")


def now():
    return datetime.now(timezone.utc)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--binary", default=str(ROOT / "target" / "debug" / "aurora-migrator"))
    ap.add_argument("--timeout", type=float, default=180)
    args = ap.parse_args()

    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    emulator = subprocess.Popen(
        [str(ROOT / ".venv" / "bin" / "python"), str(ROOT / "tests/support/moto_shim.py"), "-H", "127.0.0.1", "-p", str(port), "-q"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    agent = None
    try:
        wait_for(endpoint + "/_shim/health")
        env_creds = dict(aws_access_key_id="test", aws_secret_access_key="test", region_name=REGION, endpoint_url=endpoint)
        sqs = boto3.client("sqs", **env_creds)
        sns = boto3.client("sns", **env_creds)
        rds = boto3.client("rds", **env_creds)
        ec2 = boto3.client("ec2", **env_creds)
        cw = boto3.client("cloudwatch", **env_creds)
        # This script's own calls, so that the summary counts only the agent's.
        ours = collections.Counter()
        signing = {"cloudwatch": "monitoring"}
        for client in (sqs, sns, rds, ec2, cw):
            name = client.meta.service_model.service_name
            client.meta.events.register(
                "before-call", lambda model, name=name, **_: ours.update([f"{signing.get(name, name)}:{model.name}"])
            )

        # What the CloudFormation template would create.
        dlq = sqs.create_queue(QueueName="aurora-migrator-dlq")["QueueUrl"]
        dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        queue = sqs.create_queue(QueueName="aurora-migrator", Attributes={
            "VisibilityTimeout": "60",
            "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": "5"}),
        })["QueueUrl"]
        topic = sns.create_topic(Name="aurora-migrator")["TopicArn"]
        watch = sqs.create_queue(QueueName="slack-stand-in")["QueueUrl"]
        watch_arn = sqs.get_queue_attributes(QueueUrl=watch, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=watch_arn, Attributes={"RawMessageDelivery": "true"})

        # The source: an RDS PostgreSQL instance in its application security group.
        vpc = ec2.describe_vpcs()["Vpcs"][0]["VpcId"]
        app_sg = ec2.create_security_group(GroupName="orders-app", Description="orders clients", VpcId=vpc)["GroupId"]
        subnets = [s["SubnetId"] for s in ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [vpc]}])["Subnets"]]
        rds.create_db_subnet_group(DBSubnetGroupName="orders-db", DBSubnetGroupDescription="orders", SubnetIds=subnets)
        rds.create_db_instance(
            DBSubnetGroupName="orders-db",
            DBInstanceIdentifier=SOURCE, Engine="postgres", EngineVersion="15.4", DBInstanceClass="db.r6g.large",
            AllocatedStorage=100, MasterUsername="postgres", MasterUserPassword="not-a-secret-1",
            BackupRetentionPeriod=7, VpcSecurityGroupIds=[app_sg], AutoMinorVersionUpgrade=False,
            Tags=[{"Key": "team", "Value": "orders"}],
        )
        arn = rds.describe_db_instances(DBInstanceIdentifier=SOURCE)["DBInstances"][0]["DBInstanceArn"]
        rds.add_tags_to_resource(ResourceName=arn, Tags=[
            {"Key": "aurora-migration", "Value": "start"},
            {"Key": "aurora-migration:ack-unlogged-tables", "Value": "true"},
        ])
        # EventBridge would deliver the tag change; the resync scan would find it too.
        sample = json.loads((ROOT / "events/samples/tag-change/start.json").read_text())
        sample["resources"] = [arn]
        sample["time"] = now().strftime("%Y-%m-%dT%H:%M:%SZ")
        sqs.send_message(QueueUrl=queue, MessageBody=json.dumps(sample))
        shim(endpoint, "/_shim/calls", "DELETE")
        ours.clear()

        env = dict(os.environ)
        env.update({
            "AWS_ENDPOINT_URL": endpoint, "AWS_REGION": REGION,
            "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
            "MIGRATOR_QUEUE_URL": queue, "MIGRATOR_TOPIC_ARN": topic, "MIGRATOR_TABLE": "aurora-migrator",
            "MIGRATOR_CUTOVER": "automatic", "MIGRATOR_LAG_SUSTAIN": "3s", "MIGRATOR_SOAK": "3s",
            "MIGRATOR_RETENTION": "2s", "MIGRATOR_SLOW_POLL": "1s", "MIGRATOR_FAST_POLL": "1s",
            "MIGRATOR_METRIC_PERIOD": "1s", "MIGRATOR_WRITE_BUDGET": "3m",
            "MIGRATOR_HEARTBEAT_FILE": str(ROOT / "target" / "demo.heartbeat"),
            "MIGRATOR_LOG_FORMAT": "json", "RUST_LOG": env.get("RUST_LOG", "warn"),
        })
        (ROOT / "target").mkdir(exist_ok=True)
        log = open(ROOT / "target" / "demo-agent.log", "w")
        agent = subprocess.Popen([args.binary, "run", "--create-table"], env=env, stdout=log, stderr=log)
        print(f"emulator on {endpoint}; agent pid {agent.pid} (log: target/demo-agent.log)")
        print(f"tagged {SOURCE} aurora-migration=start\n")

        started = time.time()
        phases = []  # (phase, seconds since start)
        restarted_at = None
        done = None
        while time.time() - started < args.timeout and done is None:
            if agent.poll() is not None:
                raise SystemExit(f"the agent exited with {agent.returncode}; see target/demo-agent.log")
            # Play the source and the replica: what CloudWatch would show.
            if restarted_at is None:
                for e in rds.describe_events(SourceIdentifier=SOURCE, SourceType="db-instance", Duration=60)["Events"]:
                    if e["Message"].rstrip(".").lower() == "db instance restarted":
                        restarted_at = e["Date"]
            quiet = restarted_at is not None
            data = [
                ("OldestReplicationSlotLag", SOURCE, 0 if quiet else 64 * MIB, "Bytes"),
                ("DatabaseConnections", SOURCE, 0 if quiet else 42, "Count"),
                ("FreeStorageSpace", SOURCE, 80 * GIB, "Bytes"),
                ("TransactionLogsGeneration", SOURCE, 200 if quiet else 3 * MIB, "Bytes/Second"),
                ("CPUUtilization", SOURCE, 35, "Percent"),
                ("WriteLatency", SOURCE, 0.002, "Seconds"),
                ("ReadLatency", SOURCE, 0.001, "Seconds"),
            ]
            for c in rds.describe_db_clusters()["DBClusters"]:
                for member in c.get("DBClusterMembers", []):
                    w = member["DBInstanceIdentifier"]
                    data += [
                        ("RDSToAuroraPostgreSQLReplicaLag", w, 0 if quiet else 1.5, "Seconds"),
                        ("CPUUtilization", w, 30, "Percent"),
                        ("WriteLatency", w, 0.002, "Seconds"),
                        ("ReadLatency", w, 0.001, "Seconds"),
                        ("WriteIOPS", w, 50, "Count/Second"),
                    ]
            cw.put_metric_data(Namespace="AWS/RDS", MetricData=[
                {"MetricName": name, "Dimensions": [{"Name": "DBInstanceIdentifier", "Value": ident}],
                 "Timestamp": now(), "Value": value, "Unit": unit, "StorageResolution": 1}
                for name, ident, value, unit in data
            ])
            # The Slack channel: every notification the agent sends.
            for m in sqs.receive_message(QueueUrl=watch, MaxNumberOfMessages=10, WaitTimeSeconds=1).get("Messages", []):
                sqs.delete_message(QueueUrl=watch, ReceiptHandle=m["ReceiptHandle"])
                note = json.loads(m["Body"])
                ctx = note["metadata"]["additionalContext"]
                t = time.time() - started
                print(f"[{t:6.1f}s] {ctx['severity']:<7} {ctx['phase']:<16} {note['content']['title']}")
                if ctx["event"] == "phase-change" or ctx["event"] == "cutover":
                    phases.append((ctx["phase"], t))
                if ctx["phase"] in ("completed", "failed", "rolledback", "aborted"):
                    done = ctx["phase"]
        if done is None:
            raise SystemExit(f"no end within {args.timeout:.0f}s; see target/demo-agent.log")

        print("\nSummary")
        print(f"  outcome: {done} in {time.time() - started:.1f}s")
        print("  phase durations:")
        for (phase, t), nxt in zip(phases, phases[1:] + [(None, time.time() - started)]):
            print(f"    {phase:<16} {nxt[1] - t:6.1f}s")
        at = dict(phases)
        if "quiescing" in at and "verifying" in at:
            print(f"  write-unavailability window (quarantine → traffic on Aurora): {at['verifying'] - at['quiescing']:.1f}s")
        calls = collections.Counter(f"{c['service']}:{c['action']}" for c in shim(endpoint, "/_shim/calls"))
        calls.subtract(ours)
        calls = +calls  # drop what only this script called
        print(f"  AWS calls by operation ({sum(calls.values())} in all):")
        for op, n in sorted(calls.items(), key=lambda kv: (-kv[1], kv[0])):
            print(f"    {op:<48} {n}")
        if done != "completed":
            raise SystemExit(1)
    finally:
        if agent is not None and agent.poll() is None:
            agent.send_signal(signal.SIGTERM)
            try:
                agent.wait(timeout=30)
            except subprocess.TimeoutExpired:
                agent.kill()
        emulator.terminate()
        emulator.wait(timeout=10)


if __name__ == "__main__":
    main()
