"""cfn-lint and checkov on the template, hadolint on the Dockerfile, and the template facts
that the agent's design depends on but no linter knows about."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from cfn import ROOT, TEMPLATE, Deployment, load_template, with_policy_strings_rendered

BIN = Path(sys.executable).parent
T = load_template()
RES = T["Resources"]


def run(*cmd, cwd=ROOT):
    return subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=600)


def _variant_with_every_option(tmp_path: Path) -> Path:
    """The template with the trail, Slack, webhook and database access switched on by
    default, so the resources behind those conditions are scanned too (checkov skips a
    resource whose condition is false under the defaults)."""
    text = TEMPLATE.read_text()
    secret = "arn:aws:secretsmanager:us-east-1:123456789012:secret:aurora-migrator/webhook-{}-AbCdEf"
    for param, value in (("CreateTrail", '"true"'), ("SlackWorkspaceId", '"T0123ABCD"'),
                         ("SlackChannelId", '"C0123ABCD"'),
                         ("WebhookUrlSecretArn", f'"{secret.format("url")}"'),
                         ("WebhookSigningSecretArn", f'"{secret.format("signing")}"'),
                         ("DatabaseAccess", '"true"'), ("DatabaseEgressCidr", '"10.20.0.0/16"')):
        text, n = re.subn(rf"(\n  {param}:\n(?:    .*\n)*?    Default: )[^\n]*", rf"\g<1>{value}", text)
        assert n == 1, param
    path = tmp_path / "template-all-options.yaml"
    path.write_text(text)
    return path


def test_cfn_lint_has_no_findings():
    result = run(BIN / "cfn-lint", TEMPLATE)
    assert result.returncode == 0, result.stdout + result.stderr


def _checkov(template: dict, tmp_path: Path, name: str) -> dict:
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(template, indent=1))
    # --skip-download: no network here, and the check set must not change under us.
    result = run(BIN / "checkov", "-f", path, "--framework", "cloudformation", "--skip-download",
                 "-o", "json")
    return json.loads(result.stdout)


# The IAM checks checkov runs on a policy it can read; on a PolicyDocument that is a string
# under Fn::Sub it runs none of them (it cannot parse the string).
IAM_POLICY_CHECKS = {"CKV_AWS_107", "CKV_AWS_108", "CKV_AWS_109", "CKV_AWS_110", "CKV_AWS_111"}


@pytest.mark.parametrize("variant", ["defaults", "all-options"])
def test_checkov_has_no_findings(variant, tmp_path):
    """checkov on the template with every Fn::Sub policy string rendered into a real
    PolicyDocument (cfn.with_policy_strings_rendered), so it sees the task role's
    destructive statements."""
    source = TEMPLATE if variant == "defaults" else _variant_with_every_option(tmp_path)
    report = _checkov(with_policy_strings_rendered(load_template(source)), tmp_path, variant)
    summary = report["summary"]
    failed = [(c["check_id"], c["resource"]) for c in report["results"]["failed_checks"]]
    assert failed == [] and summary["parsing_errors"] == 0, failed
    assert summary["passed"] > 0
    listed = set(T["Metadata"]["Suppressions"]["checkov"])
    skipped = {c["check_id"] for c in report["results"]["skipped_checks"]}
    assert skipped <= listed, f"suppressed without a reason in Metadata.Suppressions: {skipped - listed}"
    ran_on_scoped = {c["check_id"] for c in report["results"]["passed_checks"]
                     if c["resource"] == "AWS::IAM::Policy.TaskTagScopedPolicy"}
    assert IAM_POLICY_CHECKS <= ran_on_scoped, IAM_POLICY_CHECKS - ran_on_scoped
    if variant == "all-options":
        ran_on_secrets = {c["check_id"] for c in report["results"]["passed_checks"]
                          if c["resource"] == "AWS::IAM::Policy.TaskDatabaseSecretsPolicy"}
        assert IAM_POLICY_CHECKS <= ran_on_secrets, IAM_POLICY_CHECKS - ran_on_secrets


def test_checkov_reads_the_rendered_policy(tmp_path):
    """A statement that allows deleting any instance, added to the rendered task policy, is
    found: checkov evaluates the statements, it does not just pass them by."""
    template = with_policy_strings_rendered()
    doc = template["Resources"]["TaskTagScopedPolicy"]["Properties"]["PolicyDocument"]
    doc["Statement"].append({"Sid": "Unscoped", "Effect": "Allow", "Action": "rds:DeleteDBInstance",
                             "Resource": "*"})
    report = _checkov(template, tmp_path, "unscoped")
    failed = {(c["check_id"], c["resource"]) for c in report["results"]["failed_checks"]}
    assert ("CKV_AWS_111", "AWS::IAM::Policy.TaskTagScopedPolicy") in failed


def test_policy_strings_render_to_documents():
    rendered = with_policy_strings_rendered()
    for key, res in load_template()["Resources"].items():
        doc = res.get("Properties", {}).get("PolicyDocument")
        if isinstance(doc, dict) and "Fn::Sub" in doc:
            out = rendered["Resources"][key]["Properties"]["PolicyDocument"]
            assert out["Version"] == "2012-10-17" and out["Statement"]
            assert "${" not in json.dumps(out), key


def test_every_suppression_is_listed_with_a_reason():
    listed = T["Metadata"]["Suppressions"]
    in_resources = {"checkov": set(), "cfn-lint": set()}
    for res in RES.values():
        meta = res.get("Metadata", {})
        in_resources["checkov"] |= {s["id"] for s in meta.get("checkov", {}).get("skip", [])}
        in_resources["cfn-lint"] |= set(meta.get("cfn-lint", {}).get("config", {}).get("ignore_checks", []))
    for tool in in_resources:
        assert in_resources[tool] == set(listed.get(tool) or {}), tool
        assert all(len(str(reason)) > 20 for reason in (listed.get(tool) or {}).values())
    assert "checkov:skip" not in TEMPLATE.read_text()  # inline skips would escape the list


def test_hadolint_is_clean():
    exe = BIN / "hadolint"
    result = run(exe, ROOT / "Dockerfile")
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_ships_the_rds_ca_bundle():
    """The bundle lands where MIGRATOR_RDS_CA_BUNDLE points by default, from AWS's trust store,
    checked against a pinned SHA-256, readable by the agent's uid."""
    text = (ROOT / "Dockerfile").read_text()
    default = re.search(r'DEFAULT_RDS_CA_BUNDLE: &str = "([^"]+)"', (ROOT / "src/config/mod.rs").read_text())
    assert default and default.group(1) == "/etc/aurora-migrator/rds-ca-bundle.pem"
    assert f"COPY --from=rds-ca /rds-ca-bundle.pem {default.group(1)}\n" in text
    assert "ADD https://truststore.pki.rds.amazonaws.com/global/global-bundle.pem /rds-ca-bundle.pem" in text
    assert re.search(r"^ARG RDS_CA_BUNDLE_SHA256=", text, re.M)
    assert "sha256sum --check --strict" in text
    assert "chmod 0444 /rds-ca-bundle.pem" in text
    # Fetched in its own stage, before the final image: the runtime has no shell or curl.
    stages = re.split(r"^FROM ", text, flags=re.M)
    final = stages[-1]
    assert final.startswith("gcr.io/distroless/cc") and not re.search(r"^ADD ", final, re.M)


def test_dockerfile_shape():
    text = (ROOT / "Dockerfile").read_text()
    assert "cargo chef cook --release --locked" in text
    assert "cargo build --release --locked" in text
    assert "gcr.io/distroless/cc" in text
    assert re.search(r"^USER 65532", text, re.M)
    assert 'ENTRYPOINT ["/aurora-migrator"]' in text
    assert 'CMD ["run"]' in text
    assert 'CMD ["/aurora-migrator", "healthcheck"]' in text


def test_fargate_service_runs_two_agent_tasks_by_default_one_allowed():
    p = T["Parameters"]["AgentTasks"]
    # A String, not a Number: CloudFormation's Ref gives a Number's value as a string too, but
    # moto (test_deploy_moto) gives an integer, which would not equal the condition's "2".
    assert p["Type"] == "String" and p["Default"] == "2" and p["AllowedValues"] == ["1", "2"]
    assert T["Conditions"]["TwoTasks"] == {"Fn::Equals": [{"Ref": "AgentTasks"}, "2"]}
    svc = RES["Service"]["Properties"]
    assert svc["DesiredCount"] == {"Fn::If": ["TwoTasks", 2, 1]} and svc["LaunchType"] == "FARGATE"
    # Never more tasks than AgentTasks (their RDS shares never add up past the stack's rate);
    # with two, one is replaced at a time (50 % of 2 rounds up to one running), with one, the
    # old task stops first (50 % of 1 would round up to 1 and stall the deployment).
    deployment = svc["DeploymentConfiguration"]
    assert deployment["MaximumPercent"] == 100
    assert deployment["MinimumHealthyPercent"] == {"Fn::If": ["TwoTasks", 50, 0]}
    _, two_min, one_min = deployment["MinimumHealthyPercent"]["Fn::If"]
    _, two, one = svc["DesiredCount"]["Fn::If"]
    for tasks, minimum in ((two, two_min), (one, one_min)):
        running_at_least = -(-tasks * minimum // 100)  # ECS rounds the minimum up
        running_at_most = tasks * deployment["MaximumPercent"] // 100  # and the maximum down
        assert running_at_most == tasks, "never more tasks than AgentTasks"
        assert running_at_least == tasks - 1, "one task replaced at a time"
    (c,) = RES["TaskDefinition"]["Properties"]["ContainerDefinitions"]
    assert c["StopTimeout"] == 30  # the agent drains for 25 s
    assert c["HealthCheck"]["Command"] == ["CMD", "/aurora-migrator", "healthcheck"]
    # Nothing secret; the only conditional entries are database access's two.
    always = {"MIGRATOR_QUEUE_URL", "MIGRATOR_TOPIC_ARN", "MIGRATOR_TABLE", "MIGRATOR_TAG_PREFIX",
              "MIGRATOR_CUTOVER", "MIGRATOR_ROUTER", "MIGRATOR_RDS_RATE_LIMIT", "AWS_REGION",
              "RUST_LOG"}
    assert {e["Name"] for e in c["Environment"] if "Name" in e} == always
    conditional = [e["Fn::If"] for e in c["Environment"] if "Name" not in e]
    assert [(cond, otherwise) for cond, _, otherwise in conditional] == [
        ("AllowDatabaseAccess", {"Ref": "AWS::NoValue"})] * 2


def test_each_task_gets_its_share_of_the_rds_rate():
    p = T["Parameters"]["RdsRequestsPerSecond"]
    assert p["Type"] == "String" and p["Default"] == "5"
    # Every allowed rate has its half in the mapping (CloudFormation cannot divide), exactly.
    half = T["Mappings"]["RdsRateHalf"]
    assert set(half) == set(p["AllowedValues"])
    for rate, row in half.items():
        assert float(row["PerTask"]) * 2 == float(rate), (rate, row)
    (c,) = RES["TaskDefinition"]["Properties"]["ContainerDefinitions"]
    (limit,) = [e["Value"] for e in c["Environment"] if e.get("Name") == "MIGRATOR_RDS_RATE_LIMIT"]
    assert limit == {"Fn::If": ["TwoTasks",
                                {"Fn::FindInMap": ["RdsRateHalf", {"Ref": "RdsRequestsPerSecond"}, "PerTask"]},
                                {"Ref": "RdsRequestsPerSecond"}]}
    # The agent's own default is the parameter's: one task at the default rate gets what an
    # agent started without the setting allows itself.
    default = re.search(r'env = "MIGRATOR_RDS_RATE_LIMIT",\s*default_value_t = ([0-9.]+)',
                        (ROOT / "src/config/mod.rs").read_text())
    assert default and float(default.group(1)) == float(p["Default"])


def test_webhook_url_and_key_come_from_secrets_manager():
    assert "WebhookUrl" not in T["Parameters"]  # no plaintext URL in the stack
    (c,) = RES["TaskDefinition"]["Properties"]["ContainerDefinitions"]
    assert "MIGRATOR_WEBHOOK" not in json.dumps(c["Environment"])
    cond, secrets, otherwise = c["Secrets"]["Fn::If"]
    assert cond == "HasWebhook"
    assert secrets == [{"Name": "MIGRATOR_WEBHOOK_URL", "ValueFrom": {"Ref": "WebhookUrlSecretArn"}},
                       {"Name": "MIGRATOR_WEBHOOK_SECRET", "ValueFrom": {"Ref": "WebhookSigningSecretArn"}}]
    # The signing key alone (the PgBouncer companions' requests), or nothing.
    assert otherwise == {"Fn::If": ["HasSigningSecret",
                                    [{"Name": "MIGRATOR_WEBHOOK_SECRET",
                                      "ValueFrom": {"Ref": "WebhookSigningSecretArn"}}],
                                    {"Ref": "AWS::NoValue"}]}
    # The URL needs the signing key (a template rule), and both are needed for the condition.
    rule = T["Rules"]["WebhookIsSigned"]
    assert rule["RuleCondition"] == {"Fn::Not": [{"Fn::Equals": [{"Ref": "WebhookUrlSecretArn"}, ""]}]}
    assert rule["Assertions"][0]["Assert"] == {"Fn::Not": [{"Fn::Equals": [{"Ref": "WebhookSigningSecretArn"}, ""]}]}
    on = Deployment(parameters={
        "WebhookUrlSecretArn": "arn:aws:secretsmanager:us-east-1:123456789012:secret:u-AbCdEf",
        "WebhookSigningSecretArn": "arn:aws:secretsmanager:us-east-1:123456789012:secret:s-AbCdEf"})
    (c_on,) = on.resource("TaskDefinition")["ContainerDefinitions"]
    assert [s["Name"] for s in c_on["Secrets"]] == ["MIGRATOR_WEBHOOK_URL", "MIGRATOR_WEBHOOK_SECRET"]
    (c_off,) = Deployment().resource("TaskDefinition")["ContainerDefinitions"]
    assert "Secrets" not in c_off


def _env(dep: Deployment) -> dict:
    (c,) = dep.resource("TaskDefinition")["ContainerDefinitions"]
    return {e["Name"]: e["Value"] for e in c["Environment"]}


DB_ON = {"DatabaseAccess": "true", "DatabaseEgressCidr": "10.20.0.0/16"}


def test_database_access_is_off_by_default():
    off = Deployment()
    assert T["Parameters"]["DatabaseAccess"]["Default"] == "false"
    assert not off.conditions["AllowDatabaseAccess"]
    assert not {"MIGRATOR_DATABASE_ACCESS", "MIGRATOR_AGENT_SECURITY_GROUP"} & set(_env(off))
    assert [(r["FromPort"], r["CidrIp"]) for r in off.resource("TaskSecurityGroup")["SecurityGroupEgress"]] == [
        (443, "0.0.0.0/0")]
    assert not off.deployed("TaskDatabaseSecretsPolicy")
    # Without a CIDR the condition is false too (and the rule refuses the stack).
    assert not Deployment(parameters={"DatabaseAccess": "true"}).conditions["AllowDatabaseAccess"]


def test_database_access_sets_the_agent_and_one_egress_rule():
    on = Deployment(parameters=DB_ON)
    env = _env(on)
    assert env["MIGRATOR_DATABASE_ACCESS"] == "true"
    assert env["MIGRATOR_AGENT_SECURITY_GROUP"] == on.attrs["TaskSecurityGroup.GroupId"]
    assert "MIGRATOR_RDS_CA_BUNDLE" not in env  # the image's default path (test_dockerfile_ships_the_rds_ca_bundle)
    egress = on.resource("TaskSecurityGroup")["SecurityGroupEgress"]
    assert [(r["IpProtocol"], r["FromPort"], r["ToPort"], r["CidrIp"]) for r in egress] == [
        ("tcp", 443, 443, "0.0.0.0/0"), ("tcp", "5432", "5432", "10.20.0.0/16")]
    assert all(r["Description"] for r in egress)
    # The group keeps its description (a change would replace it under in-flight quarantines).
    assert on.resource("TaskSecurityGroup")["GroupDescription"] == Deployment().resource("TaskSecurityGroup")[
        "GroupDescription"]
    rule = T["Rules"]["DatabaseAccessHasAPath"]
    assert rule["RuleCondition"] == {"Fn::Equals": [{"Ref": "DatabaseAccess"}, "true"]}
    assert rule["Assertions"][0]["Assert"] == {"Fn::Not": [{"Fn::Equals": [{"Ref": "DatabaseEgressCidr"}, ""]}]}
    assert T["Parameters"]["DatabasePort"]["Default"] == 5432
    # The group the agent names is the one the service runs in.
    assert env["MIGRATOR_AGENT_SECURITY_GROUP"] == on.names["TaskSecurityGroup"]
    awsvpc = on.resource("Service")["NetworkConfiguration"]["AwsvpcConfiguration"]
    assert awsvpc["SecurityGroups"] == [on.names["TaskSecurityGroup"]]


@pytest.mark.parametrize("cidr,ok", [
    ("", True), ("10.20.0.0/16", True), ("10.0.0.0/8", True), ("192.168.4.0/24", True), ("10.20.30.40/32", True),
    ("0.0.0.0/0", False), ("10.0.0.0/7", False), ("10.20.0.0", False), ("256.0.0.0/16", False),
    ("10.20.0.0/33", False), ("fd00::/8", False), ("10.20.0.0/16,10.30.0.0/16", False),
])
def test_database_egress_cidr_pattern(cidr, ok):
    pattern = T["Parameters"]["DatabaseEgressCidr"]["AllowedPattern"]
    assert (re.fullmatch(pattern, cidr) is not None) == ok


def test_state_table_and_queue():
    table = RES["Table"]["Properties"]
    assert table["BillingMode"] == "PAY_PER_REQUEST"
    assert table["DeletionProtectionEnabled"] is True
    assert table["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"] is True
    assert table["SSESpecification"]["SSEEnabled"] is True
    assert table["KeySchema"] == [{"AttributeName": "pk", "KeyType": "HASH"},
                                  {"AttributeName": "sk", "KeyType": "RANGE"}]
    assert RES["Queue"]["Properties"]["RedrivePolicy"]["maxReceiveCount"] == 5
    # The agent refuses bodies over 64 KiB; the queues refuse them first.
    for q in ("Queue", "DeadLetterQueue"):
        assert RES[q]["Properties"]["MaximumMessageSize"] == 65536, q
    rules, own, deny = RES["QueuePolicy"]["Properties"]["PolicyDocument"]["Statement"]
    rule_ids = {k for k, r in RES.items() if r["Type"] == "AWS::Events::Rule"}
    admitted = {a["Fn::GetAtt"][0] for a in rules["Condition"]["ArnEquals"]["aws:SourceArn"]}
    assert admitted == rule_ids
    assert own["Principal"] == {"AWS": {"Fn::GetAtt": ["TaskRole", "Arn"]}}
    assert deny["Effect"] == "Deny" and deny["Principal"] == "*" and deny["Action"] == "sqs:SendMessage"
    denied_unless = deny["Condition"]["ArnNotEquals"]
    assert {a["Fn::GetAtt"][0] for a in denied_unless["aws:SourceArn"]} == rule_ids
    assert denied_unless["aws:PrincipalArn"] == {"Fn::GetAtt": ["TaskRole", "Arn"]}


def test_alarms_notify_the_topic():
    alarms = {k: r["Properties"] for k, r in RES.items() if r["Type"] == "AWS::CloudWatch::Alarm"}
    for props in alarms.values():
        assert props["AlarmActions"] == [{"Ref": "Topic"}]
    metrics = {(p["Namespace"], p["MetricName"]): p for p in alarms.values()}
    assert ("AWS/SQS", "ApproximateNumberOfMessagesVisible") in metrics
    assert ("AuroraMigrator", "AgentErrors") in metrics
    assert metrics[("AuroraMigrator", "AgentHeartbeat")]["TreatMissingData"] == "breaching"


def _task_role_statements(effect="Allow"):
    """Every statement of this effect attached to the task role, Fn::Sub strings as written."""
    out = []
    for res in RES.values():
        if res["Type"] != "AWS::IAM::Policy" or {"Ref": "TaskRole"} not in res["Properties"]["Roles"]:
            continue
        doc = res["Properties"]["PolicyDocument"]
        if "Fn::Sub" in doc:
            doc = json.loads(doc["Fn::Sub"])
        out += [s for s in doc["Statement"] if s["Effect"] == effect]
    return out


AGENT_ACTIONS = {
    "rds": """DescribeDBInstances DescribeDBClusters DescribeDBParameters DescribeDBClusterParameters
        DescribeDBParameterGroups DescribeDBClusterParameterGroups DescribeDBEngineVersions
        DescribeEngineDefaultParameters DescribeEngineDefaultClusterParameters
        DescribePendingMaintenanceActions DescribeAccountAttributes DescribeEvents DescribeDBSnapshots
        ListTagsForResource AddTagsToResource CreateDBCluster CreateDBInstance
        CreateDBClusterParameterGroup CreateDBParameterGroup ModifyDBClusterParameterGroup
        ModifyDBParameterGroup ModifyDBInstance ModifyDBCluster RebootDBInstance
        PromoteReadReplicaDBCluster CreateDBSnapshot DeleteDBInstance DeleteDBCluster
        DescribeDBProxies DescribeDBProxyTargets DescribeDBProxyTargetGroups
        RegisterDBProxyTargets DeregisterDBProxyTargets""",
    "ec2": """DescribeSecurityGroups DescribeVpcs CreateSecurityGroup AuthorizeSecurityGroupIngress
        RevokeSecurityGroupEgress RevokeSecurityGroupIngress DeleteSecurityGroup CreateTags""",
    "cloudwatch": "GetMetricData PutMetricData PutMetricAlarm DeleteAlarms DescribeAlarms",
    "sns": "Publish",
    "sqs": "ReceiveMessage DeleteMessage ChangeMessageVisibility SendMessage GetQueueAttributes",
    "dynamodb": "GetItem PutItem UpdateItem Query Scan DescribeTable",
    # CreateGrant/DescribeKey for encrypted sources (through RDS only; DescribeKey also
    # directly, read-only, for preflight); Decrypt and
    # GenerateDataKey on the stack's own key (through SQS, SNS and DynamoDB only).
    "kms": "CreateGrant DescribeKey Decrypt GenerateDataKey",
    # Database access only (TaskDatabaseSecretsPolicy): secrets tagged <prefix>:agent-readable.
    "secretsmanager": "GetSecretValue",
    # The Route 53 router only (TaskRoute53Policy): UPSERT of CNAMEs in the one zone.
    "route53": "ChangeResourceRecordSets ListResourceRecordSets GetChange",
}


def test_task_role_has_exactly_the_agents_actions():
    granted = set()
    for stmt in _task_role_statements():
        actions = stmt["Action"] if isinstance(stmt["Action"], list) else [stmt["Action"]]
        assert not any("*" in a for a in actions), actions
        granted |= set(actions)
    wanted = {f"{svc}:{a}" for svc, names in AGENT_ACTIONS.items() for a in names.split()}
    assert granted == wanted


def test_task_role_denies_backup_deletion_and_tag_removal():
    denied = set()
    for stmt in _task_role_statements("Deny"):
        denied |= set(stmt["Action"] if isinstance(stmt["Action"], list) else [stmt["Action"]])
    assert denied == {"rds:DeleteDBSnapshot", "rds:DeleteDBClusterSnapshot", "rds:DeleteDBInstanceAutomatedBackup",
                      "rds:DeleteDBClusterAutomatedBackup", "rds:RemoveTagsFromResource", "rds:AddTagsToResource",
                      "secretsmanager:TagResource", "secretsmanager:UntagResource", "secretsmanager:CreateSecret"}
    assert not denied & {f"rds:{a}" for a in AGENT_ACTIONS["rds"].split()} - {"rds:AddTagsToResource"}


def test_task_role_mutations_are_conditioned():
    for stmt in _task_role_statements():
        actions = stmt["Action"] if isinstance(stmt["Action"], list) else [stmt["Action"]]
        mutating = [a for a in actions if not re.match(r"[a-z0-9]+:(Describe|List|Get)", a)]
        resource = json.dumps(stmt["Resource"])
        if mutating and resource == '"*"':
            assert "Condition" in stmt, stmt.get("Sid")
        if any(a.startswith("secretsmanager:") for a in actions):
            assert "ResourceTag" in json.dumps(stmt["Condition"]) and "agent-readable" in json.dumps(stmt["Condition"])
        if any(a.startswith("kms:") for a in actions) and actions != ["kms:DescribeKey"]:
            assert "kms:ViaService" in json.dumps(stmt["Condition"])
        if any(a in ("cloudwatch:PutMetricAlarm", "cloudwatch:DeleteAlarms") for a in actions):
            assert resource.endswith(':alarm:aurora-migrator-heartbeat-*"}'), resource
