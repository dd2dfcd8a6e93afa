"""What scripts/demo.py and scripts/bench.py share: the AWS emulator (moto behind
tests/support/moto_shim) on a free local port, the AWS clients of the script (their calls counted,
so that the agent's alone can be reported), what the deployment would create (queue + DLQ, topic,
table), an RDS PostgreSQL source, the CloudWatch values AWS would publish for a source and its
Aurora replica, the agent's environment and stopping it."""

import collections
import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REGION = "us-east-1"
TABLE = "aurora-migrator"
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
    return json.loads(urllib.request.urlopen(req, timeout=60).read() or b"null")


def shim_post(endpoint, path, body):
    req = urllib.request.Request(endpoint + path, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    return json.loads(urllib.request.urlopen(req, timeout=60).read() or b"null")


def now():
    return datetime.now(timezone.utc)


def start_emulator():
    """The shim on a free port, not yet answering: (process, endpoint). wait_for its health."""
    port = free_port()
    proc = subprocess.Popen(
        [str(ROOT / ".venv" / "bin" / "python"), str(ROOT / "tests/support/moto_shim.py"),
         "-H", "127.0.0.1", "-p", str(port), "-q"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    return proc, f"http://127.0.0.1:{port}"


def stop_emulator(proc):
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class Clients:
    """The script's boto3 clients of the emulator; `ours` counts their calls by operation
    (`service:Action`, as the shim's call log names them)."""

    def __init__(self, endpoint):
        import boto3
        from botocore.config import Config
        # The emulator answers a request racing another one on the same moto dict with an
        # InternalFailure ("OrderedDict mutated during iteration"): retried like any 5xx, more
        # times than boto3's default, so that one race does not end a 30-minute benchmark.
        creds = dict(aws_access_key_id="test", aws_secret_access_key="test", region_name=REGION,
                     endpoint_url=endpoint, config=Config(retries={"max_attempts": 10, "mode": "standard"}))
        self.ours = collections.Counter()
        signing = {"cloudwatch": "monitoring"}
        for attr, service in (("sqs", "sqs"), ("sns", "sns"), ("rds", "rds"), ("ec2", "ec2"),
                              ("cw", "cloudwatch"), ("sm", "secretsmanager"), ("ddb", "dynamodb")):
            client = boto3.client(service, **creds)
            name = signing.get(service, service)
            client.meta.events.register(
                "before-call", lambda model, name=name, **_: self.ours.update([f"{name}:{model.name}"]))
            setattr(self, attr, client)


def create_deployment(aws, watch=True):
    """What the CloudFormation template would create: the queue (and its DLQ) and the topic;
    with `watch`, a queue subscribed to the topic standing in for Slack. (queue, topic, watch)."""
    sqs = aws.sqs
    dlq = sqs.create_queue(QueueName="aurora-migrator-dlq")["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    queue = sqs.create_queue(QueueName="aurora-migrator", Attributes={
        "VisibilityTimeout": "60",
        "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": "5"}),
    })["QueueUrl"]
    topic = aws.sns.create_topic(Name="aurora-migrator")["TopicArn"]
    watch_url = None
    if watch:
        watch_url = sqs.create_queue(QueueName="slack-stand-in")["QueueUrl"]
        watch_arn = sqs.get_queue_attributes(QueueUrl=watch_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        aws.sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=watch_arn,
                          Attributes={"RawMessageDelivery": "true"})
    return queue, topic, watch_url


def create_network(aws, app="orders"):
    """The application's security group and a DB subnet group in the default VPC: (vpc, app_sg, subnet_group)."""
    vpc = aws.ec2.describe_vpcs()["Vpcs"][0]["VpcId"]
    app_sg = aws.ec2.create_security_group(GroupName=f"{app}-app", Description=f"{app} clients", VpcId=vpc)["GroupId"]
    subnets = [s["SubnetId"] for s in
               aws.ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [vpc]}])["Subnets"]]
    aws.rds.create_db_subnet_group(DBSubnetGroupName=f"{app}-db", DBSubnetGroupDescription=app, SubnetIds=subnets)
    return vpc, app_sg, f"{app}-db"


def create_source(aws, name, app_sg, subnet_group, team="orders"):
    """An RDS PostgreSQL instance in the application's group; its ARN."""
    aws.rds.create_db_instance(
        DBSubnetGroupName=subnet_group,
        DBInstanceIdentifier=name, Engine="postgres", EngineVersion="15.4", DBInstanceClass="db.r6g.large",
        AllocatedStorage=100, MasterUsername="postgres", MasterUserPassword="not-a-secret-1",
        BackupRetentionPeriod=7, VpcSecurityGroupIds=[app_sg], AutoMinorVersionUpgrade=False,
        Tags=[{"Key": "team", "Value": team}],
    )
    return aws.rds.describe_db_instances(DBInstanceIdentifier=name)["DBInstances"][0]["DBInstanceArn"]


def metric_start_tags():
    """The tags that start a migration on the metric path (the demo's and the bench's sources have
    no logical replication consumers to declare, and acknowledge unlogged tables)."""
    return [{"Key": "aurora-migration", "Value": "start"},
            {"Key": "aurora-migration:ack-unlogged-tables", "Value": "true"}]


def event(sample, resources=None):
    """An EventBridge event from events/samples/<sample>.json, sent now, about `resources`."""
    e = json.loads((ROOT / "events/samples" / f"{sample}.json").read_text())
    if resources is not None:
        e["resources"] = resources
    e["time"] = now().strftime("%Y-%m-%dT%H:%M:%SZ")
    return e


def source_metrics(ident, quiet):
    """What CloudWatch shows of a replicating source, or (`quiet`) of one fenced or rebooted."""
    return [
        ("OldestReplicationSlotLag", ident, 0 if quiet else 64 * MIB, "Bytes"),
        ("DatabaseConnections", ident, 0 if quiet else 42, "Count"),
        ("FreeStorageSpace", ident, 80 * GIB, "Bytes"),
        ("TransactionLogsGeneration", ident, 200 if quiet else 3 * MIB, "Bytes/Second"),
        ("CPUUtilization", ident, 35, "Percent"),
        ("WriteLatency", ident, 0.002, "Seconds"),
        ("ReadLatency", ident, 0.001, "Seconds"),
    ]


def replica_metrics(ident, quiet):
    """What CloudWatch shows of an Aurora replica's (or promoted writer's) instance."""
    return [
        ("RDSToAuroraPostgreSQLReplicaLag", ident, 0 if quiet else 1.5, "Seconds"),
        ("CPUUtilization", ident, 30, "Percent"),
        ("WriteLatency", ident, 0.002, "Seconds"),
        ("ReadLatency", ident, 0.001, "Seconds"),
        ("WriteIOPS", ident, 50, "Count/Second"),
    ]


def put_metrics(cw, data, batch=500):
    """Puts (name, instance, value, unit) values in AWS/RDS at 1-second resolution, now."""
    at = now()
    for i in range(0, len(data), batch):
        cw.put_metric_data(Namespace="AWS/RDS", MetricData=[
            {"MetricName": name, "Dimensions": [{"Name": "DBInstanceIdentifier", "Value": ident}],
             "Timestamp": at, "Value": value, "Unit": unit, "StorageResolution": 1}
            for name, ident, value, unit in data[i:i + batch]
        ])


def agent_environment(endpoint, queue, topic, heartbeat, **extra):
    """The agent's environment against the emulator, with the demo's short policy (seconds where
    production waits minutes or days); `extra` adds or overrides MIGRATOR_* settings."""
    env = dict(os.environ)
    env.update({
        "AWS_ENDPOINT_URL": endpoint, "AWS_REGION": REGION,
        "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
        "MIGRATOR_QUEUE_URL": queue, "MIGRATOR_TOPIC_ARN": topic, "MIGRATOR_TABLE": TABLE,
        "MIGRATOR_CUTOVER": "automatic", "MIGRATOR_LAG_SUSTAIN": "3s", "MIGRATOR_SOAK": "3s",
        "MIGRATOR_RETENTION": "2s", "MIGRATOR_SLOW_POLL": "1s", "MIGRATOR_FAST_POLL": "1s",
        "MIGRATOR_METRIC_PERIOD": "1s", "MIGRATOR_WRITE_BUDGET": "3m",
        "MIGRATOR_HEARTBEAT_FILE": str(heartbeat),
        "MIGRATOR_LOG_FORMAT": "json", "RUST_LOG": env.get("RUST_LOG", "warn"),
    })
    env.update(extra)
    return env


def agent_calls(endpoint, ours):
    """The agent's AWS calls by operation: the shim's call log less the script's own; (counter, log)."""
    log = shim(endpoint, "/_shim/calls")
    calls = collections.Counter(f"{c['service']}:{c['action']}" for c in log)
    calls.subtract(ours)
    return +calls, log  # + drops what only the script called


def stop_agent(agent, timeout=30):
    """SIGTERM, then SIGKILL after `timeout`; a no-op when it has exited."""
    if agent is None or agent.poll() is not None:
        return
    agent.send_signal(signal.SIGTERM)
    try:
        agent.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        agent.kill()
        agent.wait()
