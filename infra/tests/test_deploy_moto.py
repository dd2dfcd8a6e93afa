"""Deploy the template into moto's CloudFormation and read the resources back through boto3.

moto's CloudFormation reports CREATE_COMPLETE even for resource types it skips, so this test
asserts on what the services return, never on the stack status."""

from __future__ import annotations

import ast
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import boto3
import pytest

from cfn import TEMPLATE, load_template, resolve

REGION = "us-east-1"
STACK = "aurora-migrator"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory):
    port = _free_port()
    exe = Path(sys.executable).with_name("moto_server")
    server = str(exe) if exe.exists() else shutil.which("moto_server")
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "w")
    proc = subprocess.Popen([server, "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{url}/moto-api/", timeout=1)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto_server did not start (see {log.name})")
                time.sleep(0.2)
        yield url
    finally:
        # Our own process, by its PID.
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


@pytest.fixture(scope="module")
def aws(endpoint):
    session = boto3.Session(aws_access_key_id="testing", aws_secret_access_key="testing",
                            region_name=REGION)
    return lambda service: session.client(service, endpoint_url=endpoint)


def _deploy(aws, name, extra=()):
    ec2 = aws("ec2")
    vpc = ec2.create_vpc(CidrBlock="10.20.0.0/16")["Vpc"]["VpcId"]
    subnets = [ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.20.{i}.0/24")["Subnet"]["SubnetId"]
               for i in (1, 2)]
    cfn = aws("cloudformation")
    cfn.create_stack(
        StackName=name,
        TemplateBody=TEMPLATE.read_text(),
        Capabilities=["CAPABILITY_NAMED_IAM"],
        Parameters=[
            {"ParameterKey": "VpcId", "ParameterValue": vpc},
            {"ParameterKey": "SubnetIds", "ParameterValue": ",".join(subnets)},
            {"ParameterKey": "ContainerImage", "ParameterValue": "example.invalid/aurora-migrator:test"},
            *({"ParameterKey": k, "ParameterValue": v} for k, v in extra),
        ],
    )
    deadline = time.monotonic() + 60
    while True:
        status = cfn.describe_stacks(StackName=name)["Stacks"][0]["StackStatus"]
        if not status.endswith("IN_PROGRESS") or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    outputs = {o["OutputKey"]: o["OutputValue"]
               for o in cfn.describe_stacks(StackName=name)["Stacks"][0].get("Outputs", [])}
    physical = {r["LogicalResourceId"]: r["PhysicalResourceId"]
                for r in cfn.list_stack_resources(StackName=name)["StackResourceSummaries"]
                if r.get("LogicalResourceId")}
    return {"status": status, "outputs": outputs, "physical": physical}


def _regional(aws, region):
    """Clients of the same emulator in another Region (a second deployment's task role, named
    per Region, does not clash with the first's)."""
    session = boto3.Session(aws_access_key_id="testing", aws_secret_access_key="testing", region_name=region)
    endpoint = aws("sts").meta.endpoint_url
    return lambda service: session.client(service, endpoint_url=endpoint)


@pytest.fixture(scope="module")
def stack(aws):
    return _deploy(aws, STACK)


def test_queue_is_encrypted_and_redrives_to_the_dlq(aws, stack):
    sqs = aws("sqs")
    attrs = sqs.get_queue_attributes(QueueUrl=stack["outputs"]["QueueUrl"],
                                     AttributeNames=["All"])["Attributes"]
    assert attrs.get("KmsMasterKeyId"), attrs
    assert attrs["VisibilityTimeout"] == "120"
    assert attrs["ReceiveMessageWaitTimeSeconds"] == "20"
    redrive = json.loads(attrs["RedrivePolicy"])
    assert int(redrive["maxReceiveCount"]) == 5
    dlq = sqs.get_queue_attributes(QueueUrl=stack["outputs"]["DeadLetterQueueUrl"],
                                   AttributeNames=["All"])["Attributes"]
    assert redrive["deadLetterTargetArn"] == dlq["QueueArn"]
    assert dlq.get("KmsMasterKeyId")
    # The agent refuses bodies over 64 KiB; so do both queues.
    assert attrs["MaximumMessageSize"] == dlq["MaximumMessageSize"] == "65536"
    # AWS::SQS::QueuePolicy is skipped by moto 5.2.5 (no Policy attribute appears), so the
    # "only this stack's rules" condition is checked by cfn-lint/checkov and review only.


def test_table_key_schema_and_billing(aws, stack):
    table = aws("dynamodb").describe_table(TableName=stack["outputs"]["TableName"])["Table"]
    assert {(k["AttributeName"], k["KeyType"]) for k in table["KeySchema"]} == {("pk", "HASH"), ("sk", "RANGE")}
    assert {(a["AttributeName"], a["AttributeType"]) for a in table["AttributeDefinitions"]} == {("pk", "S"), ("sk", "S")}
    assert table["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
    assert table.get("DeletionProtectionEnabled") is True
    # moto 5.2.5 reads the API's SSESpecification.Enabled, not CloudFormation's SSEEnabled,
    # and ignores PointInTimeRecoverySpecification, so SSE and PITR are not read back here;
    # cfn-lint and checkov (CKV_AWS_28, CKV_AWS_119) check them in the template.


def test_rules_have_the_template_patterns_and_target_the_queue(aws, stack):
    events = aws("events")
    queue_arn = aws("sqs").get_queue_attributes(
        QueueUrl=stack["outputs"]["QueueUrl"], AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    template = load_template()
    # What CloudFormation should have sent: the template's patterns, resolved for this
    # deployment (moto's account, and the default tag prefix).
    names = {"AWS::AccountId": queue_arn.split(":")[4], "AWS::Region": REGION,
             "AWS::Partition": "aws", "TagPrefix": "aurora-migration",
             "TaskRole": f"aurora-migrator-task-{REGION}"}
    expected = {}
    for key, res in template["Resources"].items():
        if res["Type"] == "AWS::Events::Rule":
            props = res["Properties"]
            expected[stack["physical"][key]] = (
                resolve(props["EventPattern"], names) if "EventPattern" in props else None,
                props.get("ScheduleExpression"))
    assert len(expected) == 5
    for name, (pattern, schedule) in expected.items():
        rule = events.describe_rule(Name=name)
        assert rule["State"] == "ENABLED"
        if pattern is None:
            assert rule["ScheduleExpression"] == schedule
        else:
            assert json.loads(rule["EventPattern"]) == pattern
        targets = events.list_targets_by_rule(Rule=name)["Targets"]
        assert [t["Arn"] for t in targets] == [queue_arn]


def test_topic_is_encrypted(aws, stack):
    attrs = aws("sns").get_topic_attributes(TopicArn=stack["outputs"]["TopicArn"])["Attributes"]
    assert attrs.get("KmsMasterKeyId")


def test_task_definition_runs_the_agent_as_designed(aws, stack):
    ecs = aws("ecs")
    td = ecs.describe_task_definition(taskDefinition="aurora-migrator")["taskDefinition"]
    (c,) = td["containerDefinitions"]
    assert c["stopTimeout"] == 30
    assert c["healthCheck"]["command"] == ["CMD", "/aurora-migrator", "healthcheck"]
    # moto leaves AWS::NoValue in lists as null; CloudFormation drops the element.
    env = {e["name"]: e["value"] for e in c["environment"] if e}
    assert env["MIGRATOR_QUEUE_URL"] == stack["outputs"]["QueueUrl"]
    assert env["MIGRATOR_TOPIC_ARN"] == stack["outputs"]["TopicArn"]
    assert env["MIGRATOR_TABLE"] == stack["outputs"]["TableName"]
    assert env["MIGRATOR_TAG_PREFIX"] == "aurora-migration"
    assert env["MIGRATOR_CUTOVER"] == "manual"
    # Two tasks by default, each with half of the stack's 5 RDS requests/s.
    assert env["MIGRATOR_RDS_RATE_LIMIT"] == "2.5"
    assert not any(k.startswith("MIGRATOR_WEBHOOK") for k in env)
    assert not [s for s in c.get("secrets") or [] if s]  # no webhook given
    services = ecs.describe_services(cluster=stack["outputs"]["ClusterName"],
                                     services=[stack["outputs"]["ServiceName"]])["services"]
    (svc,) = services
    assert svc["desiredCount"] == 2
    # moto 5.2.5 does not model a service's deploymentConfiguration, reports the Fargate
    # launch type as EC2 and runs no task: none of those is asserted here (see test_lint's
    # template checks for MaximumPercent/MinimumHealthyPercent).


def test_one_task_deployment_gets_the_whole_rds_rate(aws, stack):
    """A deployment with AgentTasks=1 (in its own Region: the task role's name is per Region):
    one task, with all of RdsRequestsPerSecond."""
    region = "ap-southeast-2"
    regional = _regional(aws, region)
    deployed = _deploy(regional, "aurora-migrator-one-task",
                       [("AgentTasks", "1"), ("RdsRequestsPerSecond", "4")])
    ecs = regional("ecs")
    td = ecs.describe_task_definition(taskDefinition="aurora-migrator")["taskDefinition"]
    (c,) = td["containerDefinitions"]
    env = {e["name"]: e["value"] for e in c["environment"] if e}
    assert env["MIGRATOR_RDS_RATE_LIMIT"] == "4"
    (svc,) = ecs.describe_services(cluster=deployed["outputs"]["ClusterName"],
                                   services=[deployed["outputs"]["ServiceName"]])["services"]
    assert svc["desiredCount"] == 1


def test_task_role_exists(aws, stack):
    role = aws("iam").get_role(RoleName=f"aurora-migrator-task-{REGION}")["Role"]
    assert "ecs-tasks.amazonaws.com" in json.dumps(role["AssumeRolePolicyDocument"])
    # CloudWatch alarms (AWS::CloudWatch::Alarm) are skipped by moto 5.2.5's CloudFormation;
    # their definitions are covered by cfn-lint/checkov only.


def test_webhook_secrets_reach_the_task_through_secrets_only(aws, stack):
    """A second deployment (in another Region: the task role's name is per Region) with both
    webhook secrets: the container gets them as secrets, the execution role may read them."""
    region = "us-west-2"
    regional = _regional(aws, region)
    sm = regional("secretsmanager")
    url = sm.create_secret(Name="aurora-migrator/webhook-url", SecretString="https://example.invalid/route")["ARN"]
    key = sm.create_secret(Name="aurora-migrator/webhook-signing", SecretString="0" * 64)["ARN"]
    deployed = _deploy(regional, "aurora-migrator-webhook",
                       [("WebhookUrlSecretArn", url), ("WebhookSigningSecretArn", key)])
    ecs = regional("ecs")
    td = ecs.describe_task_definition(taskDefinition="aurora-migrator")["taskDefinition"]
    (c,) = td["containerDefinitions"]
    assert not any(e and e["name"].startswith("MIGRATOR_WEBHOOK") for e in c["environment"])
    assert {s["name"]: s["valueFrom"] for s in c["secrets"] if s} == {
        "MIGRATOR_WEBHOOK_URL": url, "MIGRATOR_WEBHOOK_SECRET": key}
    iam = regional("iam")
    role = deployed["physical"]["ExecutionRole"]
    doc = iam.get_role_policy(RoleName=role, PolicyName="webhook-secrets")["PolicyDocument"]
    if isinstance(doc, str):
        # moto 5.2.5 stores an inline policy from CloudFormation as the Python repr of the
        # document, not as JSON.
        doc = ast.literal_eval(doc) if doc.startswith("{'") else json.loads(doc)
    (read,) = [s for s in doc["Statement"] if s["Sid"] == "ReadWebhookSecrets"]
    assert read["Action"] == "secretsmanager:GetSecretValue" and sorted(read["Resource"]) == sorted([url, key])


def _inline_policy(iam, role, name):
    doc = iam.get_role_policy(RoleName=role, PolicyName=name)["PolicyDocument"]
    if isinstance(doc, str):
        # See above: moto 5.2.5 may store the repr of the document.
        doc = ast.literal_eval(doc) if doc.startswith("{'") else json.loads(doc)
    return doc


def test_default_deployment_has_no_database_access(aws, stack):
    td = aws("ecs").describe_task_definition(taskDefinition="aurora-migrator")["taskDefinition"]
    (c,) = td["containerDefinitions"]
    env = {e["name"] for e in c["environment"] if e}
    assert not {"MIGRATOR_DATABASE_ACCESS", "MIGRATOR_AGENT_SECURITY_GROUP"} & env
    assert "TaskDatabaseSecretsPolicy" not in stack["physical"]
    names = aws("iam").list_role_policies(RoleName=f"aurora-migrator-task-{REGION}")["PolicyNames"]
    assert "aurora-migrator-database-secrets" not in names


def test_database_access_deployment(aws, stack):
    """A deployment with DatabaseAccess=true (in its own Region: the task role's name is per
    Region): the agent is told to connect and which group is its own (the service's), and the
    task role reads agent-readable secrets only and may not tag them."""
    region = "eu-west-1"
    regional = _regional(aws, region)
    deployed = _deploy(regional, "aurora-migrator-database",
                       [("DatabaseAccess", "true"), ("DatabaseEgressCidr", "10.20.0.0/16")])
    group_id = deployed["physical"]["TaskSecurityGroup"]
    assert group_id.startswith("sg-")
    td = regional("ecs").describe_task_definition(taskDefinition="aurora-migrator")["taskDefinition"]
    (c,) = td["containerDefinitions"]
    env = {e["name"]: e["value"] for e in c["environment"] if e}
    assert env["MIGRATOR_DATABASE_ACCESS"] == "true"
    assert env["MIGRATOR_AGENT_SECURITY_GROUP"] == group_id
    assert "MIGRATOR_RDS_CA_BUNDLE" not in env  # the image's default path
    # The group is a real one of the deployment's VPC. Its egress rules cannot be read back:
    # moto 5.2.5's AWS::EC2::SecurityGroup applies SecurityGroupIngress only and leaves the
    # default allow-all egress (the HTTPS-only rule of every deployment is not there either),
    # and it has no AWS::EC2::SecurityGroupEgress. The rules are asserted on the rendered
    # template instead (test_lint.py::test_database_access_sets_the_agent_and_one_egress_rule).
    (group,) = regional("ec2").describe_security_groups(GroupIds=[group_id])["SecurityGroups"]
    assert group["Description"] == "aurora-migrator task, outbound HTTPS only (AWS APIs, webhook)"
    # In the deployment's VPC (the one _deploy made; moto 5.2.5 does not keep the service's
    # networkConfiguration, so the service's groups are checked in the template only).
    (vpc,) = regional("ec2").describe_vpcs(VpcIds=[group["VpcId"]])["Vpcs"]
    assert vpc["CidrBlock"] == "10.20.0.0/16"
    doc = _inline_policy(regional("iam"), f"aurora-migrator-task-{region}", "aurora-migrator-database-secrets")
    (read,) = [s for s in doc["Statement"] if s["Sid"] == "ReadAgentReadableSecrets"]
    account = deployed["outputs"]["TaskRoleArn"].split(":")[4]
    assert read["Action"] == "secretsmanager:GetSecretValue"
    assert read["Resource"] == f"arn:aws:secretsmanager:{region}:{account}:secret:*"
    assert read["Condition"] == {"StringEquals": {"secretsmanager:ResourceTag/aurora-migration:agent-readable": "true"}}
    scoped = _inline_policy(regional("iam"), f"aurora-migrator-task-{region}", "aurora-migrator-tag-scoped")
    (deny,) = [s for s in scoped["Statement"] if s["Sid"] == "DenyMakingSecretsAgentReadable"]
    assert deny["Effect"] == "Deny" and "secretsmanager:TagResource" in deny["Action"]
