"""The shipped policies, evaluated as IAM would (iam_eval.py) against a table of requests.

The template is rendered for the sample deployment (cfn.Deployment: default TagPrefix,
account 123456789012, us-east-1), so the JSON string of TaskTagScopedPolicy is read exactly
as IAM reads it. The names follow src/core/naming.rs: cluster <source>-aurora-<hash>-<n>,
writer <cluster>-w, final snapshot <source>-final-<hash>-<n>, parameter groups
aurora-migrator-<kind>-<family>-<hash>."""

from __future__ import annotations

import pytest

from cfn import Deployment
from iam_eval import ALLOW, DENY, IMPLICIT_DENY, evaluate, request

D = Deployment()
# The same stack with database access on (DatabaseAccess=true and its egress CIDR).
D_DB = Deployment(parameters={"DatabaseAccess": "true", "DatabaseEgressCidr": "10.20.0.0/16"})
P = D.names["TagPrefix"]
ACCOUNT = D.names["AWS::AccountId"]
REGION = D.names["AWS::Region"]
RDS = f"arn:aws:rds:{REGION}:{ACCOUNT}"

TASK = D.attrs["TaskRole.Arn"]
OPERATOR = f"arn:aws:iam::{ACCOUNT}:role/DBAOperators"
CDC_ADMIN = f"arn:aws:iam::{ACCOUNT}:role/CdcAdmins"
DEVELOPER = f"arn:aws:iam::{ACCOUNT}:role/Developers"
ADMIN = f"arn:aws:iam::{ACCOUNT}:role/Admin"
STRANGER = "arn:aws:iam::210987654321:role/Anyone"

ANYTHING = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
RDS_ANYTHING = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "rds:*", "Resource": "*"}]}

POLICIES = {
    TASK: D.role_policies("TaskRole"),
    # Operators get the managed policy; one of them also has rds:* from elsewhere, which must
    # not let them write the agent's keys.
    OPERATOR: [D.policy_document("TagOperatorPolicy")],
    CDC_ADMIN: [D.policy_document("TagCdcConsumersPolicy")],
    DEVELOPER: [RDS_ANYTHING, D.policy_document("TagGuardPolicy")],
    ADMIN: [RDS_ANYTHING, D.policy_document("TagOperatorPolicy")],
    STRANGER: [ANYTHING],
}
# The task role's policies when the stack allows database access; every other principal's
# are the same in both.
POLICIES_DB = {**POLICIES, TASK: D_DB.role_policies("TaskRole")}

SOURCE_ID = "db-ABCDEFGHIJKLMNOPQRSTUVWXY1"
ORDERS = f"{RDS}:db:orders"                      # never opted in
BILLING = f"{RDS}:db:billing"                    # a source
WRITER = f"{RDS}:db:billing-aurora-1a2b3c-1-w"
CLUSTER = f"{RDS}:cluster:billing-aurora-1a2b3c-1"
PG = f"{RDS}:pg:aurora-migrator-pg-aurora-postgresql16-00112233aabbccdd"
CPG = f"{RDS}:cluster-pg:aurora-migrator-cluster-aurora-postgresql16-00112233aabbccdd"
FINAL = f"{RDS}:snapshot:billing-final-1a2b3c-1"

NEVER = {"owner": "payments"}
STARTED = {P: "start"}
MARKED = {f"{P}:marker": SOURCE_ID}                       # the trigger was removed
STOPPED = {P: "stopped", f"{P}:marker": SOURCE_ID}
OWN = {f"{P}:source": SOURCE_ID, f"{P}:migration": f"{SOURCE_ID}#1"}

AURORA = {"rds:DatabaseEngine": "aurora-postgresql"}
MUTATE_INSTANCE = ["rds:ModifyDBInstance", "rds:RebootDBInstance", "rds:DeleteDBInstance", "rds:CreateDBSnapshot"]
BACKUP_DELETES = ["rds:DeleteDBSnapshot", "rds:DeleteDBClusterSnapshot",
                  "rds:DeleteDBInstanceAutomatedBackup", "rds:DeleteDBClusterAutomatedBackup"]


def decide(principal, action, resource, resource_tags=None, request_tags=None, tag_keys=None, context=None,
           database_access=False):
    req = request(action, resource, principal, resource_tags=resource_tags,
                  request_tags=request_tags, tag_keys=tag_keys, context=context)
    policies = POLICIES_DB if database_access else POLICIES
    return evaluate(req, policies[principal], resource_account=ACCOUNT)


def row(principal, action, resource, tags, expected, *, request_tags=None, tag_keys=None, context=None,
        database_access=False, id):
    return pytest.param(principal, action, resource, tags, request_tags, tag_keys, context, database_access,
                        expected, id=id)


# ---- database credentials (Secrets Manager)
SM = f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret"
# An RDS-managed master secret (MasterUserSecret.SecretArn) and an owner's own secret.
MASTER_SECRET = f"{SM}:rds!db-0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d-AbCdEf"
OWN_SECRET = f"{SM}:billing/aurora-migrator-login-GhIjKl"
WEBHOOK_SIGNING = f"{SM}:aurora-migrator/webhook-signing-MnOpQr"
READABLE = {f"{P}:agent-readable": "true"}
OTHER_KEY = f"arn:aws:kms:{REGION}:{ACCOUNT}:key/1234abcd-12ab-34cd-56ef-1234567890ab"


def secret_ctx(tags):
    """Secrets Manager puts a secret's tags in the context twice: aws:ResourceTag/<key> (from
    resource_tags) and secretsmanager:ResourceTag/<key>."""
    return {f"secretsmanager:ResourceTag/{k}": v for k, v in (tags or {}).items()}


def get_secret(arn, tags, expected, *, access, id):
    return row(TASK, "secretsmanager:GetSecretValue", arn, tags, expected, context=secret_ctx(tags),
               database_access=access, id=id)


def decrypt(context, expected, *, access=True, id):
    return row(TASK, "kms:Decrypt", OTHER_KEY, None, expected, context=context, database_access=access, id=id)


VIA_SM = {"kms:ViaService": f"secretsmanager.{REGION}.amazonaws.com"}


DATABASE_ROWS = [
    # Readable only with DatabaseAccess=true, and only what carries <prefix>:agent-readable = true.
    *[get_secret(arn, READABLE, ALLOW, access=True, id=f"task reads {what} tagged agent-readable, access on")
      for what, arn in (("the master secret", MASTER_SECRET), ("an owner's secret", OWN_SECRET))],
    *[get_secret(arn, READABLE, IMPLICIT_DENY, access=False, id=f"task reads {what} tagged agent-readable, access off")
      for what, arn in (("the master secret", MASTER_SECRET), ("an owner's secret", OWN_SECRET))],
    get_secret(MASTER_SECRET, None, IMPLICIT_DENY, access=True, id="task reads an untagged master secret"),
    get_secret(MASTER_SECRET, {"owner": "payments"}, IMPLICIT_DENY, access=True, id="task reads a master secret tagged otherwise"),
    *[get_secret(OWN_SECRET, {f"{P}:agent-readable": v}, IMPLICIT_DENY, access=True,
                 id=f"task reads a secret tagged agent-readable={v}") for v in ("false", "True", "yes", "")],
    get_secret(OWN_SECRET, {f"{P}:database-access": "true"}, IMPLICIT_DENY, access=True,
               id="task reads a secret tagged with the instance's key"),
    get_secret(WEBHOOK_SIGNING, None, IMPLICIT_DENY, access=True, id="task reads the webhook signing secret"),
    get_secret(f"arn:aws:secretsmanager:eu-west-1:{ACCOUNT}:secret:billing-AbCdEf", READABLE, IMPLICIT_DENY,
               access=True, id="task reads a readable secret of another Region"),
    get_secret("arn:aws:secretsmanager:us-east-1:210987654321:secret:billing-AbCdEf", READABLE, IMPLICIT_DENY,
               access=True, id="task reads a readable secret of another account"),
    row(TASK, "secretsmanager:ListSecrets", "*", None, IMPLICIT_DENY, database_access=True, id="task lists secrets"),
    row(TASK, "secretsmanager:PutSecretValue", OWN_SECRET, READABLE, IMPLICIT_DENY, context=secret_ctx(READABLE),
        database_access=True, id="task writes a readable secret"),
    # Decrypt: through Secrets Manager only, for a secret of this account and Region.
    decrypt({**VIA_SM, "kms:EncryptionContext:SecretARN": MASTER_SECRET}, ALLOW, id="task decrypts via Secrets Manager"),
    decrypt({**VIA_SM, "kms:EncryptionContext:SecretARN": MASTER_SECRET}, IMPLICIT_DENY, access=False,
            id="task decrypts via Secrets Manager, access off"),
    decrypt({"kms:EncryptionContext:SecretARN": MASTER_SECRET}, IMPLICIT_DENY, id="task decrypts directly"),
    decrypt({"kms:ViaService": f"ssm.{REGION}.amazonaws.com"}, IMPLICIT_DENY, id="task decrypts via SSM"),
    decrypt({**VIA_SM, "kms:EncryptionContext:SecretARN": "arn:aws:secretsmanager:us-east-1:210987654321:secret:x-AbCdEf"},
            IMPLICIT_DENY, id="task decrypts another account's secret"),
    # The agent cannot grant itself a secret, with access on or off, whatever the spelling.
    *[row(TASK, action, OWN_SECRET, None, DENY, request_tags=tags, database_access=access,
          id=f"task {action} {'+'.join(tags)} access={'on' if access else 'off'}")
      for action in ("secretsmanager:TagResource", "secretsmanager:CreateSecret")
      for tags in (READABLE, {f"{P}:AGENT-READABLE": "true"}, {**READABLE, "owner": "x"})
      for access in (True, False)],
    *[row(TASK, "secretsmanager:UntagResource", OWN_SECRET, READABLE, DENY, tag_keys=[f"{P}:agent-readable"],
          database_access=access, id=f"task untags agent-readable access={'on' if access else 'off'}")
      for access in (True, False)],
    row(TASK, "secretsmanager:TagResource", OWN_SECRET, None, IMPLICIT_DENY, request_tags={"owner": "x"},
        database_access=True, id="task tags a secret otherwise"),
    # Who may make a secret agent-readable: not a guarded principal, not by the operator policy.
    row(DEVELOPER, "secretsmanager:TagResource", OWN_SECRET, None, DENY, request_tags=READABLE,
        id="guarded makes a secret agent-readable"),
    row(OPERATOR, "secretsmanager:TagResource", OWN_SECRET, None, IMPLICIT_DENY, request_tags=READABLE,
        id="operator makes a secret agent-readable"),
    # The instance's database-access key is a control key.
    *[row(OPERATOR, "rds:AddTagsToResource", BILLING, STARTED, ALLOW, request_tags={f"{P}:database-access": v},
          id=f"operator sets database-access={v}") for v in ("master-secret", f"secret:{OWN_SECRET}")],
    row(OPERATOR, "rds:RemoveTagsFromResource", BILLING, STARTED, ALLOW, tag_keys=[f"{P}:database-access"],
        id="operator clears database-access"),
    row(DEVELOPER, "rds:AddTagsToResource", BILLING, STARTED, DENY, request_tags={f"{P}:database-access": "master-secret"},
        id="guarded sets database-access"),
    row(TASK, "rds:AddTagsToResource", BILLING, STARTED, IMPLICIT_DENY,
        request_tags={f"{P}:database-access": "master-secret"}, database_access=True, id="task sets database-access"),
]

TABLE = [
    # ---- an instance that never opted in: nothing destructive, none of the agent's keys
    *[row(TASK, a, ORDERS, NEVER, IMPLICIT_DENY, id=f"task {a} never-opted-in") for a in MUTATE_INSTANCE],
    *[row(TASK, a, ORDERS, {P: v}, IMPLICIT_DENY, id=f"task {a} trigger={v}")
      for a in MUTATE_INSTANCE for v in ("stopped", "Start", "true")],
    row(TASK, "rds:AddTagsToResource", ORDERS, NEVER, IMPLICIT_DENY, request_tags={f"{P}:marker": SOURCE_ID},
        id="task marks a never-opted-in instance"),
    row(TASK, "rds:AddTagsToResource", ORDERS, NEVER, IMPLICIT_DENY, request_tags={f"{P}:phase": "x"},
        id="task phase on a never-opted-in instance"),
    row(TASK, "rds:AddTagsToResource", ORDERS, NEVER, DENY, request_tags={f"{P}:source": SOURCE_ID},
        id="task :source on a non-writer name"),
    row(TASK, "rds:AddTagsToResource", ORDERS, NEVER, DENY, request_tags={f"{P}:migration": "m"},
        id="task :migration on a non-writer name"),
    # Tag-on-create of an instance named orders (RDS authorises Create*'s tags this way).
    row(TASK, "rds:AddTagsToResource", ORDERS, None, DENY, request_tags=OWN,
        id="task tag-on-create of db:orders"),
    row(TASK, "rds:AddTagsToResource", BILLING, STARTED, DENY, request_tags={f"{P}:source": SOURCE_ID},
        id="task :source on the opted-in source itself"),
    # ---- trigger = start: a person opted it in
    *[row(TASK, a, BILLING, STARTED, ALLOW, id=f"task {a} trigger=start") for a in MUTATE_INSTANCE],
    row(TASK, "rds:AddTagsToResource", BILLING, STARTED, ALLOW, request_tags={f"{P}:marker": SOURCE_ID},
        id="task marks a started instance"),
    # Preparing's first step marks the source and mirrors the phase in one request.
    row(TASK, "rds:AddTagsToResource", BILLING, STARTED, ALLOW,
        request_tags={f"{P}:marker": SOURCE_ID, f"{P}:phase": "preparing"},
        id="task marks a started instance and mirrors its phase at once"),
    row(TASK, "rds:AddTagsToResource", BILLING, STARTED, ALLOW, request_tags={f"{P}:phase": "replicating"},
        id="task phase on a started instance"),
    row(TASK, "rds:AddTagsToResource", BILLING, STARTED, IMPLICIT_DENY, request_tags={"owner": "agent"},
        id="task rewrites an owner's tag"),
    row(TASK, "rds:AddTagsToResource", BILLING, STARTED, IMPLICIT_DENY, request_tags={f"{P}:approve": "true"},
        id="task approves its own cutover"),
    # ---- the marker without the trigger (removed mid-migration), or an ended attempt
    *[row(TASK, a, BILLING, MARKED, ALLOW, id=f"task {a} marker, trigger removed") for a in MUTATE_INSTANCE],
    row(TASK, "rds:AddTagsToResource", BILLING, MARKED, ALLOW, request_tags={P: "stopped"},
        id="task writes stopped on a marked instance"),
    row(TASK, "rds:AddTagsToResource", BILLING, STOPPED, ALLOW, request_tags={f"{P}:phase": "stopped"},
        id="task phase on a stopped, marked instance"),
    row(TASK, "rds:RemoveTagsFromResource", BILLING, STARTED, DENY, tag_keys=[f"{P}:marker"],
        id="task removes a tag"),
    # ---- the agent's own resources
    *[row(TASK, a, WRITER, OWN, ALLOW, id=f"task {a} own writer")
      for a in ("rds:ModifyDBInstance", "rds:RebootDBInstance", "rds:DeleteDBInstance")],
    row(TASK, "rds:DeleteDBInstance", WRITER, None, IMPLICIT_DENY, id="task deletes a writer-named instance without :source"),
    row(TASK, "rds:DeleteDBInstance", f"{RDS}:db:orders-replica", OWN, IMPLICIT_DENY,
        id="task deletes a non-writer name carrying :source"),
    *[row(TASK, a, CLUSTER, OWN, ALLOW, id=f"task {a} own cluster")
      for a in ("rds:ModifyDBCluster", "rds:PromoteReadReplicaDBCluster", "rds:DeleteDBCluster")],
    row(TASK, "rds:DeleteDBCluster", CLUSTER, None, IMPLICIT_DENY, id="task deletes a derived-name cluster without :source"),
    row(TASK, "rds:DeleteDBCluster", f"{RDS}:cluster:analytics", OWN, IMPLICIT_DENY,
        id="task deletes another cluster carrying :source"),
    row(TASK, "rds:ModifyDBCluster", f"{RDS}:cluster:analytics", STARTED, IMPLICIT_DENY,
        id="task modifies a cluster with the trigger"),
    row(TASK, "rds:ModifyDBParameterGroup", PG, {f"{P}:source": "shared"}, ALLOW, id="task modifies own pg"),
    row(TASK, "rds:ModifyDBClusterParameterGroup", CPG, {f"{P}:source": "shared"}, ALLOW, id="task modifies own cluster-pg"),
    row(TASK, "rds:ModifyDBParameterGroup", f"{RDS}:pg:prod-params", {f"{P}:source": "shared"}, IMPLICIT_DENY,
        id="task modifies someone's pg carrying :source"),
    row(TASK, "rds:CreateDBParameterGroup", PG, None, ALLOW, request_tags={f"{P}:source": "shared"},
        id="task creates own pg"),
    row(TASK, "rds:CreateDBClusterParameterGroup", f"{RDS}:cluster-pg:prod", None, IMPLICIT_DENY,
        request_tags={f"{P}:source": "shared"}, id="task creates a cluster-pg outside its names"),
    row(TASK, "rds:CreateDBSnapshot", FINAL, None, ALLOW, id="task final snapshot"),
    row(TASK, "rds:CreateDBSnapshot", f"{RDS}:snapshot:orders-keep", None, IMPLICIT_DENY,
        id="task snapshot outside the final name"),
    # Tag on create of the derived names, and the phase mirror on them.
    *[row(TASK, "rds:AddTagsToResource", arn, None, ALLOW, request_tags=OWN, id=f"task tag-on-create {kind}")
      for kind, arn in (("writer", WRITER), ("cluster", CLUSTER), ("pg", PG), ("cluster-pg", CPG), ("snapshot", FINAL))],
    row(TASK, "rds:AddTagsToResource", WRITER, None, IMPLICIT_DENY, request_tags={**OWN, "owner": "x"},
        id="task tag-on-create with a foreign key"),
    row(TASK, "rds:AddTagsToResource", CLUSTER, OWN, ALLOW, request_tags={f"{P}:phase": "completed"},
        id="task phase on own cluster"),
    row(TASK, "rds:AddTagsToResource", CLUSTER, OWN, IMPLICIT_DENY, request_tags={f"{P}:marker": SOURCE_ID},
        id="task marks own cluster"),
    *[row(TASK, a, arn, None, ALLOW, request_tags=OWN, context=AURORA, id=f"task {a} (Aurora, tagged)")
      for a, arn in (("rds:CreateDBInstance", WRITER), ("rds:CreateDBCluster", CLUSTER))],
    *[row(TASK, a, arn, None, IMPLICIT_DENY, request_tags=OWN, context={"rds:DatabaseEngine": "postgres"},
          id=f"task {a} (not Aurora)") for a, arn in (("rds:CreateDBInstance", WRITER), ("rds:CreateDBCluster", CLUSTER))],
    row(TASK, "rds:CreateDBCluster", CLUSTER, None, IMPLICIT_DENY, context=AURORA, id="task creates an untagged cluster"),
    # ---- nothing the agent may do deletes a backup
    *[row(TASK, a, arn, OWN, DENY, id=f"task {a} {what}")
      for a in BACKUP_DELETES for what, arn in (("own final snapshot", FINAL),
                                                ("automated snapshot", f"{RDS}:snapshot:rds:billing-2024-05-01-03-00"),
                                                ("automated backup", f"{RDS}:auto-backup:ab-123"),
                                                ("cluster snapshot", f"{RDS}:cluster-snapshot:keep"))],
    # ---- operators: control keys only, never the agent's
    *[row(OPERATOR, "rds:AddTagsToResource", ORDERS, NEVER, ALLOW, request_tags={k: "true"}, id=f"operator sets {k}")
      for k in (P, f"{P}:approve", f"{P}:abort", f"{P}:rollback", f"{P}:ack-storage", f"{P}:cdc-drained",
                f"{P}:cdc-slots-created")],
    row(OPERATOR, "rds:RemoveTagsFromResource", BILLING, MARKED, ALLOW, tag_keys=[P], id="operator clears the trigger"),
    *[row(OPERATOR, action, BILLING, STARTED, DENY, request_tags={k: SOURCE_ID}, id=f"operator {action} {k}")
      for action in ("rds:AddTagsToResource", "rds:RemoveTagsFromResource")
      for k in (f"{P}:marker", f"{P}:source", f"{P}:migration", f"{P}:phase")],
    row(ADMIN, "rds:AddTagsToResource", ORDERS, NEVER, DENY, request_tags={f"{P}:marker": "x"},
        id="operator with rds:* elsewhere marks an instance"),
    row(OPERATOR, "rds:AddTagsToResource", ORDERS, NEVER, IMPLICIT_DENY, request_tags={f"{P}:cdc-consumers": "sg-1"},
        id="operator declares CDC consumers"),
    row(OPERATOR, "rds:AddTagsToResource", ORDERS, NEVER, IMPLICIT_DENY, request_tags={P: "start", "owner": "x"},
        id="operator sets a non-control key"),
    row(CDC_ADMIN, "rds:AddTagsToResource", BILLING, STARTED, ALLOW, request_tags={f"{P}:cdc-consumers": "sg-1"},
        id="cdc admin declares consumers"),
    row(CDC_ADMIN, "rds:AddTagsToResource", BILLING, STARTED, IMPLICIT_DENY, request_tags={P: "start"},
        id="cdc admin starts"),
    row(DEVELOPER, "rds:AddTagsToResource", ORDERS, NEVER, DENY, request_tags={P: "start"}, id="guarded starts"),
    row(DEVELOPER, "rds:RemoveTagsFromResource", BILLING, STARTED, DENY, tag_keys=[f"{P}:abort"], id="guarded clears"),
    row(DEVELOPER, "rds:AddTagsToResource", ORDERS, NEVER, ALLOW, request_tags={"owner": "x"}, id="guarded own tags"),
    *DATABASE_ROWS,
]


@pytest.mark.parametrize("principal,action,resource,tags,request_tags,tag_keys,context,database_access,expected",
                         TABLE)
def test_request_table(principal, action, resource, tags, request_tags, tag_keys, context, database_access, expected):
    assert decide(principal, action, resource, tags, request_tags, tag_keys, context, database_access) == expected


def test_database_access_adds_only_the_secrets_policy():
    """With DatabaseAccess=true the task role gains exactly one document, and every request of
    the table outside Secrets Manager and KMS is decided as without it."""
    assert len(POLICIES_DB[TASK]) == len(POLICIES[TASK]) + 1
    (extra,) = [d for d in POLICIES_DB[TASK] if d not in POLICIES[TASK]]
    assert {s["Sid"] for s in extra["Statement"]} == {"ReadAgentReadableSecrets", "DecryptThemThroughSecretsManager"}
    for p in TABLE:
        principal, action, resource, tags, request_tags, tag_keys, context, _, _ = p.values
        if not action.startswith(("secretsmanager:", "kms:")):
            assert (decide(principal, action, resource, tags, request_tags, tag_keys, context, False)
                    == decide(principal, action, resource, tags, request_tags, tag_keys, context, True)), p.id


class Secret:
    """A secret's tags, changed only by the tag calls the policies allow."""

    def __init__(self, arn, tags=None):
        self.arn, self.tags = arn, dict(tags or {})

    def tag(self, principal, tags) -> str:
        decision = decide(principal, "secretsmanager:TagResource", self.arn, self.tags, tags,
                          context=secret_ctx(self.tags), database_access=True)
        if decision == ALLOW:
            self.tags.update(tags)
        return decision

    def readable_by_the_agent(self) -> bool:
        return decide(TASK, "secretsmanager:GetSecretValue", self.arn, self.tags, context=secret_ctx(self.tags),
                      database_access=True) == ALLOW


def test_the_agent_cannot_make_a_master_secret_readable():
    master = Secret(MASTER_SECRET, {"aws:rds:primaryDBInstanceArn": BILLING})
    assert not master.readable_by_the_agent()
    for tags in (READABLE, {f"{P}:Agent-Readable": "true"}):
        assert master.tag(TASK, tags) == DENY
    assert master.tag(DEVELOPER, READABLE) == DENY
    assert not master.readable_by_the_agent()
    # Its owners tag it (here: someone with secretsmanager:TagResource from their own policies).
    POLICIES_DB[ADMIN] = [*POLICIES[ADMIN], {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "secretsmanager:TagResource", "Resource": f"{SM}:*"}]}]
    try:
        assert master.tag(ADMIN, READABLE) == ALLOW
    finally:
        POLICIES_DB[ADMIN] = POLICIES[ADMIN]
    assert master.readable_by_the_agent()


class Instance:
    """An instance's tags, changed only by the tag calls the policies allow."""

    def __init__(self, arn, tags):
        self.arn, self.tags = arn, dict(tags)

    def add(self, principal, tags) -> str:
        decision = decide(principal, "rds:AddTagsToResource", self.arn, self.tags, tags)
        if decision == ALLOW:
            self.tags.update(tags)
        return decision

    def remove(self, principal, keys) -> str:
        decision = decide(principal, "rds:RemoveTagsFromResource", self.arn, self.tags, tag_keys=keys)
        if decision == ALLOW:
            for k in keys:
                self.tags.pop(k, None)
        return decision

    def can(self, principal, action) -> bool:
        return decide(principal, action, self.arn, self.tags) == ALLOW


def test_an_operator_cannot_make_an_instance_the_agents():
    orders = Instance(ORDERS, NEVER)
    for principal in (OPERATOR, ADMIN):
        assert orders.add(principal, {f"{P}:source": SOURCE_ID}) == DENY
        assert orders.add(principal, {f"{P}:marker": SOURCE_ID}) == DENY
        assert orders.add(principal, {f"{P}:migration": "m"}) == DENY
    # The agent cannot do it either, in one call or two.
    assert orders.add(TASK, {f"{P}:source": SOURCE_ID}) == DENY
    assert orders.add(TASK, {f"{P}:marker": SOURCE_ID}) != ALLOW
    assert orders.tags == NEVER
    for action in MUTATE_INSTANCE:
        assert not orders.can(TASK, action), action


def test_removing_the_trigger_mid_migration_keeps_the_agents_hold():
    billing = Instance(BILLING, NEVER)
    assert billing.add(OPERATOR, {P: "start"}) == ALLOW
    assert billing.add(TASK, {f"{P}:marker": SOURCE_ID}) == ALLOW    # before any mutation
    assert billing.can(TASK, "rds:ModifyDBInstance")                  # quarantine
    assert billing.remove(OPERATOR, [P]) == ALLOW                     # e.g. an IaC apply
    assert billing.remove(OPERATOR, [f"{P}:marker"]) == DENY
    assert billing.remove(TASK, [f"{P}:marker"]) == DENY
    assert billing.tags == {**NEVER, f"{P}:marker": SOURCE_ID}
    assert billing.can(TASK, "rds:ModifyDBInstance")                  # restore its groups
    assert billing.add(TASK, {P: "stopped"}) == ALLOW
    assert billing.add(TASK, {f"{P}:phase": "rolledback"}) == ALLOW


def test_every_secrets_action_of_the_agent_is_in_the_table():
    in_table = {p.values[1] for p in TABLE if p.values[0] == TASK and p.values[7]}
    granted = set()
    for doc in POLICIES_DB[TASK]:
        for stmt in doc["Statement"]:
            if stmt["Effect"] == "Allow":
                actions = stmt["Action"] if isinstance(stmt["Action"], list) else [stmt["Action"]]
                granted |= {a for a in actions if a.startswith("secretsmanager:")}
    assert granted == {"secretsmanager:GetSecretValue"} and granted <= in_table


def test_every_agent_action_on_rds_is_in_the_table():
    """A new RDS mutation in the policy must come with rows here."""
    in_table = {p.values[1] for p in TABLE if p.values[0] == TASK}
    granted = set()
    for doc in POLICIES[TASK]:
        for stmt in doc["Statement"]:
            actions = stmt["Action"] if isinstance(stmt["Action"], list) else [stmt["Action"]]
            granted |= {a for a in actions if a.startswith("rds:") and not a.startswith(("rds:Describe", "rds:List"))}
    assert granted - in_table == set()


# ---------------------------------------------------------------- the queue
QUEUE = D.attrs["Queue.Arn"]
QUEUE_POLICY = D.policy_document("QueuePolicy")
RULES = [D.attrs[f"{k}.Arn"] for k, r in D.template["Resources"].items() if r["Type"] == "AWS::Events::Rule"]
ROLE_ARN = TASK


@pytest.mark.parametrize("principal,identity,context,expected", [
    *[pytest.param("events.amazonaws.com", [], {"aws:SourceArn": rule, "aws:SourceAccount": ACCOUNT}, ALLOW,
                   id=f"rule {rule.rsplit('/', 1)[1]}") for rule in RULES],
    pytest.param("events.amazonaws.com", [], {"aws:SourceArn": f"arn:aws:events:{REGION}:{ACCOUNT}:rule/other",
                                               "aws:SourceAccount": ACCOUNT}, DENY, id="another rule of this account"),
    pytest.param("events.amazonaws.com", [], {"aws:SourceArn": "arn:aws:events:us-east-1:210987654321:rule/x",
                                               "aws:SourceAccount": "210987654321"}, DENY, id="a rule of another account"),
    pytest.param("sns.amazonaws.com", [], {"aws:SourceArn": f"arn:aws:sns:{REGION}:{ACCOUNT}:t"}, DENY, id="a topic"),
    pytest.param(ROLE_ARN, POLICIES[TASK], {}, ALLOW, id="the task role"),
    pytest.param(ROLE_ARN, [], {}, ALLOW, id="the task role by the queue policy alone"),
    pytest.param(ADMIN, [ANYTHING], {}, DENY, id="this account's admin"),
    pytest.param(f"arn:aws:iam::{ACCOUNT}:role/aurora-migrator-task-eu-west-1", [ANYTHING], {}, DENY,
                 id="another Region's agent"),
    pytest.param(STRANGER, [ANYTHING], {}, DENY, id="another account"),
])
def test_only_the_rules_and_the_agent_send_to_the_queue(principal, identity, context, expected):
    req = request("sqs:SendMessage", QUEUE, principal, context=context)
    assert evaluate(req, identity, QUEUE_POLICY, ACCOUNT) == expected


def test_the_queue_deny_is_for_sending_only():
    for action in ("sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility", "sqs:GetQueueAttributes"):
        assert evaluate(request(action, QUEUE, TASK), POLICIES[TASK], QUEUE_POLICY, ACCOUNT) == ALLOW


# ---------------------------------------------------------------- the webhook's secrets
URL_SECRET = f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:aurora-migrator/webhook-url-AbCdEf"
SIGNING_SECRET = f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:aurora-migrator/webhook-signing-GhIjKl"


def test_execution_role_reads_exactly_the_webhook_secrets():
    dep = Deployment(parameters={"WebhookUrlSecretArn": URL_SECRET, "WebhookSigningSecretArn": SIGNING_SECRET})
    role = dep.attrs["ExecutionRole.Arn"]
    docs = dep.role_policies("ExecutionRole")
    get = lambda arn: evaluate(request("secretsmanager:GetSecretValue", arn, role), docs)
    assert get(URL_SECRET) == ALLOW and get(SIGNING_SECRET) == ALLOW
    assert get(URL_SECRET.replace("webhook-url", "db-password")) == IMPLICIT_DENY
    key = f"arn:aws:kms:{REGION}:{ACCOUNT}:key/1234abcd-12ab-34cd-56ef-1234567890ab"
    via = {"kms:ViaService": f"secretsmanager.{REGION}.amazonaws.com"}
    decrypt = lambda ctx: evaluate(request("kms:Decrypt", key, role, context=ctx), docs)
    assert decrypt({**via, "kms:EncryptionContext:SecretARN": SIGNING_SECRET}) == ALLOW
    assert decrypt({**via, "kms:EncryptionContext:SecretARN": URL_SECRET.replace("webhook-url", "x")}) == IMPLICIT_DENY
    assert decrypt({"kms:EncryptionContext:SecretARN": SIGNING_SECRET}) == IMPLICIT_DENY
    # Without a webhook the role has no inline policy at all.
    assert Deployment().role_policies("ExecutionRole") == []


def test_webhook_and_database_secrets_stay_apart():
    """With both on, the execution role reads only the webhook's two secrets (never by tag),
    and the task role reads no webhook secret it has not been given by tag."""
    dep = Deployment(parameters={"WebhookUrlSecretArn": URL_SECRET, "WebhookSigningSecretArn": SIGNING_SECRET,
                                 "DatabaseAccess": "true", "DatabaseEgressCidr": "10.20.0.0/16"})
    exec_role, task_role = dep.attrs["ExecutionRole.Arn"], dep.attrs["TaskRole.Arn"]
    exec_docs, task_docs = dep.role_policies("ExecutionRole"), dep.role_policies("TaskRole")
    readable = {"secretsmanager:ResourceTag/aurora-migration:agent-readable": "true"}
    get = lambda role, docs, arn, ctx=None: evaluate(
        request("secretsmanager:GetSecretValue", arn, role, context=ctx), docs)
    assert get(exec_role, exec_docs, MASTER_SECRET, readable) == IMPLICIT_DENY
    assert get(exec_role, exec_docs, SIGNING_SECRET) == ALLOW
    assert get(task_role, task_docs, SIGNING_SECRET) == IMPLICIT_DENY
    assert get(task_role, task_docs, URL_SECRET) == IMPLICIT_DENY
    assert get(task_role, task_docs, MASTER_SECRET, readable) == ALLOW
    assert "agent-readable" not in str(exec_docs)


# ---- the Route 53 router
ZONE = "Z0123456789ABC"
D_R53 = Deployment(parameters={"Route53HostedZoneId": ZONE, "Route53RecordNames": "*.db.internal.example.com"})
TASK_R53 = D_R53.role_policies("TaskRole")


def change(zone, *, actions=("UPSERT",), types=("CNAME",), names=("orders.db.internal.example.com",)):
    """A ChangeResourceRecordSets request as Route 53 builds its context: every change's action,
    type and normalized name (lower case, no trailing dot)."""
    return request("route53:ChangeResourceRecordSets", f"arn:aws:route53:::hostedzone/{zone}", TASK,
                   context={"route53:ChangeResourceRecordSetsActions": list(actions),
                            "route53:ChangeResourceRecordSetsRecordTypes": list(types),
                            "route53:ChangeResourceRecordSetsNormalizedRecordNames": list(names)})


@pytest.mark.parametrize("req,expected", [
    pytest.param(change(ZONE), ALLOW, id="UPSERT of a CNAME named by the pattern"),
    pytest.param(change(ZONE, names=("orders.db.internal.example.com", "billing.db.internal.example.com")),
                 ALLOW, id="two CNAMEs named by the pattern"),
    pytest.param(change(ZONE, actions=("DELETE",)), IMPLICIT_DENY, id="DELETE"),
    pytest.param(change(ZONE, actions=("CREATE",)), IMPLICIT_DENY, id="CREATE"),
    pytest.param(change(ZONE, actions=("UPSERT", "DELETE")), IMPLICIT_DENY, id="an UPSERT beside a DELETE"),
    pytest.param(change(ZONE, types=("A",)), IMPLICIT_DENY, id="an A record"),
    pytest.param(change(ZONE, types=("NS",), names=("db.internal.example.com",)), IMPLICIT_DENY,
                 id="the zone's NS"),
    pytest.param(change(ZONE, names=("www.internal.example.com",)), IMPLICIT_DENY, id="a name outside the pattern"),
    pytest.param(change(ZONE, names=("orders.db.internal.example.com", "www.internal.example.com")),
                 IMPLICIT_DENY, id="one name of two outside the pattern"),
    pytest.param(change("Z999OTHERZONE"), IMPLICIT_DENY, id="another zone"),
    pytest.param(request("route53:ListResourceRecordSets", f"arn:aws:route53:::hostedzone/{ZONE}", TASK),
                 ALLOW, id="read the zone's records"),
    pytest.param(request("route53:ListResourceRecordSets", "arn:aws:route53:::hostedzone/Z999OTHERZONE", TASK),
                 IMPLICIT_DENY, id="read another zone's records"),
    pytest.param(request("route53:GetChange", "arn:aws:route53:::change/C0123456789", TASK), ALLOW,
                 id="ask after a change"),
    pytest.param(request("route53:DeleteHostedZone", f"arn:aws:route53:::hostedzone/{ZONE}", TASK),
                 IMPLICIT_DENY, id="delete the zone"),
    pytest.param(request("route53:ChangeResourceRecordSets", f"arn:aws:route53:::hostedzone/{ZONE}", TASK,
                         context={"route53:ChangeResourceRecordSetsActions": ["UPSERT"],
                                  "route53:ChangeResourceRecordSetsRecordTypes": ["CNAME"],
                                  "route53:ChangeResourceRecordSetsNormalizedRecordNames":
                                      ["orders.db.internal.example.com.evil.example"]}),
                 IMPLICIT_DENY, id="a name that only starts like the pattern"),
])
def test_the_route53_router_may_upsert_only_its_cnames(req, expected):
    assert evaluate(req, TASK_R53, resource_account=ACCOUNT) == expected


def test_without_a_zone_the_task_role_has_no_route53_permission():
    assert evaluate(change(ZONE), POLICIES[TASK], resource_account=ACCOUNT) == IMPLICIT_DENY
    assert evaluate(request("route53:GetChange", "arn:aws:route53:::change/C1", TASK), POLICIES[TASK],
                    resource_account=ACCOUNT) == IMPLICIT_DENY
    assert len(TASK_R53) == len(POLICIES[TASK]) + 1


# ---- the RDS Proxy router
D_PROXY = Deployment(parameters={"RdsProxyRouter": "true"})
TASK_PROXY = D_PROXY.role_policies("TaskRole")
PROXY_ARN = f"arn:aws:rds:us-east-1:{ACCOUNT}:db-proxy:prx-0123456789abcdef0"
OPTED_IN = {"aurora-migration:router": "allow"}


@pytest.mark.parametrize("req,expected", [
    pytest.param(request("rds:RegisterDBProxyTargets", PROXY_ARN, TASK, resource_tags=OPTED_IN), ALLOW,
                 id="register on a proxy its owners opted in"),
    pytest.param(request("rds:DeregisterDBProxyTargets", PROXY_ARN, TASK, resource_tags=OPTED_IN), ALLOW,
                 id="deregister on a proxy its owners opted in"),
    pytest.param(request("rds:ModifyDBProxyTargetGroup",
                         f"arn:aws:rds:us-east-1:{ACCOUNT}:target-group:prx-tg-0123456789abcdef0", TASK),
                 IMPLICIT_DENY, id="change the target group's settings"),
    pytest.param(request("rds:CreateDBProxy", PROXY_ARN, TASK), IMPLICIT_DENY, id="create a proxy"),
    pytest.param(request("rds:RegisterDBProxyTargets",
                         f"arn:aws:rds:us-east-1:{ACCOUNT}:target-group:prx-tg-0123456789abcdef0", TASK), ALLOW,
                 id="the proxy's target group"),
    pytest.param(request("rds:DescribeDBProxyTargets", PROXY_ARN, TASK), ALLOW, id="read a proxy's targets"),
    pytest.param(request("rds:ModifyDBProxy", PROXY_ARN, TASK, resource_tags=OPTED_IN), IMPLICIT_DENY,
                 id="modify the proxy itself"),
    pytest.param(request("rds:DeleteDBProxy", PROXY_ARN, TASK, resource_tags=OPTED_IN), IMPLICIT_DENY,
                 id="delete the proxy"),
    pytest.param(request("rds:RegisterDBProxyTargets",
                         f"arn:aws:rds:us-east-1:999999999999:db-proxy:prx-0123456789abcdef0", TASK,
                         resource_tags=OPTED_IN), IMPLICIT_DENY, id="another account's proxy"),
])
def test_the_rds_proxy_router_may_only_move_proxy_targets(req, expected):
    assert evaluate(req, TASK_PROXY, resource_account=ACCOUNT) == expected


def test_without_the_parameter_the_task_role_has_no_rds_proxy_permission():
    req = request("rds:RegisterDBProxyTargets", PROXY_ARN, TASK, resource_tags=OPTED_IN)
    assert evaluate(req, POLICIES[TASK], resource_account=ACCOUNT) == IMPLICIT_DENY
    assert evaluate(request("rds:DescribeDBProxies", PROXY_ARN, TASK), POLICIES[TASK],
                    resource_account=ACCOUNT) == IMPLICIT_DENY
    assert len(TASK_PROXY) == len(POLICIES[TASK]) + 1
