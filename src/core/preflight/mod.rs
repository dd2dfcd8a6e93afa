//! Preflight: named checks that decide, without changing anything, whether a source can move.
//!
//! Each check passes, warns or fails with a message a person can act on. A failing check blocks
//! the migration unless it is one the owners may acknowledge (`<prefix>:ack-<check>` = `true`)
//! and they did. `aurora-migrator plan <instance>` prints the same report.

mod database;
mod router;

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::migration::Plan;
use super::naming::parameter_group_name;
use super::observation::{KeyCheck, PreflightInputs, SourceInstance};

use super::parameters::{AuroraFamily, translate};
use super::policy::{CutoverPolicy, Policy};
use super::router::RouterChoice;
use super::tags::{self, ControlTags};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Pass,
    Warn,
    Fail,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckResult {
    /// Stable name; also the suffix of its acknowledgement tag.
    pub name: String,
    pub outcome: Outcome,
    pub message: String,
    /// A failure the owners acknowledged; it no longer blocks.
    pub acknowledged: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreflightReport {
    pub source: String,
    pub checks: Vec<CheckResult>,
}

impl PreflightReport {
    pub fn blocking(&self) -> Vec<&CheckResult> {
        self.checks
            .iter()
            .filter(|c| c.outcome == Outcome::Fail && !c.acknowledged)
            .collect()
    }

    /// Checks that passed with a warning a person should read.
    pub fn warnings(&self) -> usize {
        self.checks
            .iter()
            .filter(|c| c.outcome == Outcome::Warn)
            .count()
    }

    pub fn passed(&self) -> bool {
        self.blocking().is_empty()
    }

    /// The report as text for the CLI and notifications.
    pub fn render(&self, tag_prefix: &str) -> String {
        let mut out = format!("Preflight for {}\n", self.source);
        for c in &self.checks {
            let mark = match (c.outcome, c.acknowledged) {
                (Outcome::Pass, _) => "PASS",
                (Outcome::Warn, _) => "WARN",
                (Outcome::Fail, true) => "ACK ",
                (Outcome::Fail, false) => "FAIL",
            };
            let _ = writeln!(out, "  [{mark}] {:<24} {}", c.name, c.message);
        }
        let blocking = self.blocking();
        if blocking.is_empty() {
            out.push_str("Result: ready to migrate\n");
        } else {
            let _ = writeln!(out, "Result: blocked by {} check(s)", blocking.len());
            for c in blocking
                .iter()
                .filter(|c| ACKNOWLEDGEABLE.contains(&c.name.as_str()))
            {
                let _ = writeln!(
                    out,
                    "  to accept `{}`, tag the instance {tag_prefix}:ack-{}=true",
                    c.name, c.name
                );
            }
        }
        out
    }
}

/// Failures the owners may accept knowingly. Everything else must be fixed.
pub const ACKNOWLEDGEABLE: [&str; 7] = [
    "cdc-consumers",
    "database-writers",
    "extensions",
    "read-replicas",
    "in-database-writers",
    "logical-replication",
    "unlogged-tables",
];

/// The check of an instance that carries another instance's marker (a restore of a migrated
/// source): acknowledged by `<prefix>:ack-restored-copy` = the copy's own resource id, not
/// `true` ([`tag_checks`]).
pub const RESTORED_COPY: &str = "restored-copy";

/// Every check the owners may acknowledge: [`ACKNOWLEDGEABLE`]'s by `true`, the restored copy
/// by its own resource id.
pub fn acknowledgeable_checks() -> impl Iterator<Item = &'static str> {
    ACKNOWLEDGEABLE.into_iter().chain([RESTORED_COPY])
}

/// Whether the owners may acknowledge the check `name` ([`acknowledgeable_checks`]).
pub fn may_be_acknowledged(name: &str) -> bool {
    acknowledgeable_checks().any(|c| c == name)
}

/// Libraries that run writers inside the database: after promotion they would write to the
/// target, and on the quarantined source they would keep WAL moving.
const IN_DATABASE_WRITERS: [&str; 3] = ["pg_cron", "pg_partman_bgw", "pglogical"];

/// Tag keys that show an infrastructure-as-code tool manages the instance; its next apply would
/// put back the security groups the quarantine removed.
const IAC_TAG_MARKERS: [&str; 4] = [
    "aws:cloudformation:stack-name",
    "terraform",
    "pulumi",
    "managed-by",
];

struct Checks<'a> {
    results: Vec<CheckResult>,
    tags: &'a ControlTags,
}

impl Checks<'_> {
    /// `name` passes with `pass` when `ok`; otherwise it gets `outcome` with the problem, which
    /// is only worded when there is one.
    fn check(
        &mut self,
        name: &str,
        ok: bool,
        pass: impl Into<String>,
        outcome: Outcome,
        problem: impl FnOnce() -> String,
    ) {
        if ok {
            self.add(name, Outcome::Pass, pass);
        } else {
            self.add(name, outcome, problem());
        }
    }

    fn add(&mut self, name: &str, outcome: Outcome, message: impl Into<String>) {
        let acknowledged = outcome == Outcome::Fail
            && ACKNOWLEDGEABLE.contains(&name)
            && self.tags.acknowledged.contains(name);
        self.results.push(CheckResult {
            name: name.to_string(),
            outcome,
            message: message.into(),
            acknowledged,
        });
    }
}

/// (major, minor) of a PostgreSQL version such as `15.4` or `16.1.2`.
pub fn parse_version(v: &str) -> Option<(u32, u32)> {
    let mut parts = v.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next().map(|m| m.parse().ok()).unwrap_or(Some(0))?;
    Some((major, minor))
}

/// The Aurora version to create: same major, the lowest minor at or above the source's (the
/// replica cannot be older than its source, and the smallest step changes the least).
pub fn choose_aurora_version<'a>(
    source_version: &str,
    offered: &'a [super::observation::EngineVersion],
) -> Option<&'a super::observation::EngineVersion> {
    let (major, minor) = parse_version(source_version)?;
    offered
        .iter()
        .filter_map(|v| parse_version(&v.version).map(|p| (p, v)))
        .filter(|((ma, mi), _)| *ma == major && *mi >= minor)
        .min_by_key(|(p, _)| *p)
        .map(|(_, v)| v)
}

/// Aurora PostgreSQL has no db.m* or small burstable classes: map to the closest it has.
pub fn map_instance_class(class: &str) -> (String, Option<String>) {
    let parts: Vec<&str> = class.split('.').collect();
    if parts.len() != 3 || parts[0] != "db" {
        return (class.to_string(), None);
    }
    let (family, size) = (parts[1], parts[2]);
    if let Some(generation) = family.strip_prefix('m') {
        // db.m6g.large → db.r6g.large: same vCPUs, twice the memory.
        let mapped = format!("db.r{generation}.{size}");
        let why = format!("Aurora has no {class}; using {mapped} (same vCPUs, more memory)");
        return (mapped, Some(why));
    }
    if family.starts_with('t') && matches!(size, "micro" | "small") {
        let mapped = "db.t4g.medium".to_string();
        let why = format!("Aurora's smallest class is db.t4g.medium; {class} maps to it");
        return (mapped, Some(why));
    }
    (class.to_string(), None)
}

/// Runs every check. Returns the report and, when nothing blocks, the plan for the target.
pub fn run(
    source: &SourceInstance,
    inputs: &PreflightInputs,
    policy: &Policy,
) -> (PreflightReport, Option<Plan>) {
    let tags = ControlTags::read(&policy.tag_prefix, &source.tags);
    let mut c = Checks {
        results: Vec::new(),
        tags: &tags,
    };

    if source.engine == "postgres" {
        c.add("engine", Outcome::Pass, "RDS for PostgreSQL");
    } else {
        c.add(
            "engine",
            Outcome::Fail,
            format!("engine is `{}`; only `postgres` instances can get an Aurora PostgreSQL read replica", source.engine),
        );
    }

    tag_checks(&mut c, source, policy);

    // The quarantine is a VPC security group and the replica is created in the source's DB
    // subnet group: an instance outside a VPC (EC2-Classic leftovers, or a describe without a
    // DBSubnetGroup) has neither, and would leave the agent waiting for a group forever.
    if source.vpc_id.is_empty() || source.subnet_group.is_empty() {
        c.add(
            "vpc",
            Outcome::Fail,
            "the instance is not in a VPC (DescribeDBInstances shows no DB subnet group): the agent fences the source with a VPC security group and creates the replica in its subnet group; move the instance into a VPC first",
        );
    } else {
        c.add(
            "vpc",
            Outcome::Pass,
            format!("{} (subnet group {})", source.vpc_id, source.subnet_group),
        );
    }

    let version = choose_aurora_version(&source.engine_version, &inputs.aurora_versions);
    match version {
        Some(v) => c.add(
            "aurora-version",
            Outcome::Pass,
            format!("source {} → Aurora PostgreSQL {} ({})", source.engine_version, v.version, v.family),
        ),
        None => c.add(
            "aurora-version",
            Outcome::Fail,
            format!(
                "no Aurora PostgreSQL version with the same major and the same or a higher minor than {} is offered here; upgrade the source's minor version or wait for Aurora to offer it",
                source.engine_version
            ),
        ),
    }

    if source.status == "available" {
        c.add("status", Outcome::Pass, "available");
    } else {
        c.add(
            "status",
            Outcome::Fail,
            format!(
                "status is `{}`; wait until it is `available`",
                source.status
            ),
        );
    }
    c.check(
        "pending-modifications",
        !source.has_pending_modifications,
        "none",
        Outcome::Fail,
        || "the instance has pending modifications; the cutover's reboot would apply them: apply or cancel them first".to_string(),
    );
    let pg = &source.parameter_group;
    c.check(
        "parameter-group-in-sync",
        pg.apply_status == "in-sync",
        format!("{} in-sync", pg.name),
        Outcome::Fail,
        || format!(
            "parameter group {} is `{}`; the cutover's reboot would apply pending parameter changes: reboot in a maintenance window first",
            pg.name, pg.apply_status
        ),
    );
    c.check(
        "automated-backups",
        source.backup_retention_days > 0,
        format!("retention {} days", source.backup_retention_days),
        Outcome::Fail,
        || format!(
            "automated backups are off; turning them on causes an outage, so the agent will not do it: in a maintenance window run `aws rds modify-db-instance --db-instance-identifier {} --backup-retention-period 7`",
            source.identifier
        ),
    );

    c.check(
        "existing-aurora-replica",
        source.aurora_replica_clusters.is_empty(),
        "none",
        Outcome::Fail,
        || format!(
            "the instance already has an Aurora read replica ({}); an instance can have only one: delete it or migrate by hand",
            source.aurora_replica_clusters.join(", ")
        ),
    );
    let region = source.region();
    let (cross_region, in_region): (Vec<&String>, Vec<&String>) = source
        .read_replicas
        .iter()
        .partition(|r| r.starts_with("arn:") && r.split(':').nth(3) != Some(region));
    c.check(
        "cross-region-replica",
        cross_region.is_empty(),
        "none",
        Outcome::Fail,
        || {
            format!(
                "cross-Region read replicas ({}) cannot follow the move; remove them first",
                join(&cross_region)
            )
        },
    );
    c.check(
        "read-replicas",
        in_region.is_empty(),
        "none",
        Outcome::Fail,
        || format!(
            "RDS read replicas ({}) would be promoted to standalone instances when the source is deleted; plan readers on Aurora, then acknowledge",
            join(&in_region)
        ),
    );

    match (source.storage_encrypted, &inputs.kms_key) {
        (false, _) => c.add("encryption", Outcome::Warn, "the source is not encrypted, so the replica cannot be either"),
        (true, KeyCheck::Unusable(why)) => c.add(
            "encryption",
            Outcome::Fail,
            format!(
                "the KMS key {} cannot encrypt the replica: {why}; the replica must use the source's key, so fix the key (or the agent role's kms:DescribeKey/kms:CreateGrant on it) and start again",
                source.kms_key_id.as_deref().unwrap_or("(unknown)")
            ),
        ),
        (true, _) => c.add(
            "encryption",
            Outcome::Pass,
            format!("encrypted with {}", source.kms_key_id.as_deref().unwrap_or("the default key")),
        ),
    }

    let (instance_class, class_note) = map_instance_class(&source.instance_class);
    match class_note {
        Some(why) => c.add("instance-class", Outcome::Warn, why),
        None => c.add("instance-class", Outcome::Pass, instance_class.clone()),
    }

    let family = version.map(|v| v.family.clone()).unwrap_or_default();
    let translation = translate(
        &inputs.source_parameters,
        &AuroraFamily {
            family: &family,
            cluster_parameters: &inputs.aurora_cluster_parameters,
            instance_parameters: &inputs.aurora_instance_parameters,
            static_parameters: &inputs.aurora_static_parameters,
        },
        tags.cdc_declared(),
    );
    if translation.dropped.is_empty() {
        c.add(
            "parameters",
            Outcome::Pass,
            format!(
                "{} cluster and {} instance parameters carried over",
                translation.cluster.len(),
                translation.instance.len()
            ),
        );
    } else {
        c.add(
            "parameters",
            Outcome::Warn,
            format!(
                "no Aurora equivalent, not carried over: {}",
                translation.dropped.join(", ")
            ),
        );
    }

    let preload = inputs
        .source_parameters
        .iter()
        .find(|p| p.name == "shared_preload_libraries")
        .map(|p| p.value.to_ascii_lowercase())
        .unwrap_or_default();
    let writers: Vec<&str> = IN_DATABASE_WRITERS
        .into_iter()
        .filter(|w| preload.split(',').any(|l| l.trim() == *w))
        .collect();
    if writers.is_empty() {
        c.add(
            "in-database-writers",
            Outcome::Pass,
            "none in shared_preload_libraries",
        );
    } else {
        c.add(
            "in-database-writers",
            Outcome::Fail,
            format!(
                "{} write inside the database; their jobs would run on the target after promotion: pause or move them, then acknowledge",
                writers.join(", ")
            ),
        );
    }

    if source.iam_auth_enabled {
        c.add(
            "iam-auth",
            Outcome::Warn,
            format!(
                "IAM database authentication is on; policies name rds-db:connect on {}: rewrite them for the cluster's resource id before routing",
                source.resource_id
            ),
        );
    } else {
        c.add("iam-auth", Outcome::Pass, "not used");
    }

    if source.deletion_protection && !policy.allow_disable_deletion_protection {
        c.add(
            "deletion-protection",
            Outcome::Warn,
            "DeletionProtection is on and the agent may not turn it off: decommissioning will wait for a person to do it",
        );
    } else {
        c.add(
            "deletion-protection",
            Outcome::Pass,
            if source.deletion_protection {
                "on; the agent turns it off at decommission"
            } else {
                "off"
            },
        );
    }

    let mut maintenance = Vec::new();
    if source.auto_minor_version_upgrade {
        maintenance.push("AutoMinorVersionUpgrade is on: a minor upgrade of the source during replication can break the replica; turn it off for the migration".to_string());
    }
    if !inputs.pending_maintenance.is_empty() {
        maintenance.push(format!(
            "pending maintenance: {}",
            inputs.pending_maintenance.join(", ")
        ));
    }
    if maintenance.is_empty() {
        c.add("maintenance", Outcome::Pass, "none pending");
    } else {
        c.add("maintenance", Outcome::Warn, maintenance.join("; "));
    }

    match inputs.free_storage_bytes {
        Some(free) if free < policy.min_free_storage_bytes => c.add(
            "storage-headroom",
            Outcome::Fail,
            format!(
                "{} free, below the floor of {}; WAL retained for the replica would fill the disk: add storage first",
                gib(free),
                gib(policy.min_free_storage_bytes)
            ),
        ),
        Some(free) if free < 2.0 * policy.min_free_storage_bytes => c.add(
            "storage-headroom",
            Outcome::Warn,
            format!("{} free; the replica is deleted if it falls below {}", gib(free), gib(policy.min_free_storage_bytes)),
        ),
        Some(free) => c.add("storage-headroom", Outcome::Pass, format!("{} free", gib(free))),
        None => c.add("storage-headroom", Outcome::Warn, "FreeStorageSpace has no recent datapoint"),
    }

    let mut quota_fail = Vec::new();
    let mut quota_warn = Vec::new();
    for q in &inputs.quotas {
        let full = q.used >= q.max;
        match q.name.as_str() {
            "DBClusters" | "DBInstances" if full => {
                quota_fail.push(format!("{} {}/{}", q.name, q.used, q.max))
            }
            "DBClusterParameterGroups" | "DBParameterGroups" | "ManualSnapshots" if full => {
                quota_warn.push(format!("{} {}/{}", q.name, q.used, q.max))
            }
            _ => {}
        }
    }
    if !quota_fail.is_empty() {
        c.add(
            "quotas",
            Outcome::Fail,
            format!(
                "account quota reached: {}; ask for an increase",
                quota_fail.join(", ")
            ),
        );
    } else if !quota_warn.is_empty() {
        c.add(
            "quotas",
            Outcome::Warn,
            format!("quota reached: {} (shared groups may already exist; the final snapshot needs room)", quota_warn.join(", ")),
        );
    } else {
        c.add(
            "quotas",
            Outcome::Pass,
            "room for a cluster, an instance and a snapshot",
        );
    }

    let logical = inputs
        .source_parameters
        .iter()
        .any(|p| p.name == "rds.logical_replication" && p.value.trim() == "1");
    match (logical, tags.cdc_declared()) {
        (false, false) => c.add("logical-replication", Outcome::Pass, "not in use"),
        (_, true) => c.add(
            "logical-replication",
            Outcome::Pass,
            format!("CDC consumers declared ({}): they will be asked to drain and to re-create their slots", tags.cdc_consumers.join(" ")),
        ),
        (true, false) => c.add(
            "logical-replication",
            Outcome::Fail,
            format!(
                "rds.logical_replication is on but no CDC consumers are declared: tag {}:cdc-consumers with their security groups, or acknowledge that no consumer needs the slots",
                policy.tag_prefix
            ),
        ),
    }

    if tags.cdc_declared() {
        cdc_consumer_checks(
            &mut c,
            source,
            inputs,
            &tags.cdc_consumers,
            &policy.tag_prefix,
        );
    }

    let database = database::database_checks(&mut c, source, inputs, policy, version);

    let iac: Vec<&String> = source
        .tags
        .keys()
        .filter(|k| {
            IAC_TAG_MARKERS
                .iter()
                .any(|m| k.to_ascii_lowercase().contains(m))
        })
        .collect();
    if iac.is_empty() {
        c.add("infrastructure-as-code", Outcome::Pass, "no IaC tags");
    } else {
        c.add(
            "infrastructure-as-code",
            Outcome::Warn,
            format!(
                "managed by IaC ({}): its next apply may restore the security groups; the agent re-checks them, but freeze applies during the cutover",
                join(&iac)
            ),
        );
    }

    // The router the cutover will use (`core::router`): a tag that does not parse is a typo
    // to fix before writes stop, not a surprise in the middle of the outage.
    let router = match RouterChoice::for_instance(&policy.tag_prefix, &source.tags, &policy.router)
    {
        Ok(r) => {
            let budget_s = policy.write_unavailability_budget.as_secs();
            let (outcome, what) = router::check(&r, source, inputs, budget_s, &policy.tag_prefix);
            c.add("router", outcome, format!("{r}: {what}"));
            r
        }
        Err(e) => {
            c.add("router", Outcome::Fail, e);
            RouterChoice::default()
        }
    };

    let report = PreflightReport {
        source: source.identifier.clone(),
        checks: c.results,
    };
    let plan = match (report.passed(), version, &source.endpoint) {
        (true, Some(v), endpoint) => Some(Plan {
            engine_version: v.version.clone(),
            family: v.family.clone(),
            instance_class,
            cluster_parameter_group: parameter_group_name(
                "cluster",
                &v.family,
                translation.cluster_hash,
            ),
            instance_parameter_group: parameter_group_name(
                "instance",
                &v.family,
                translation.instance_hash,
            ),
            cluster_parameters: translation.cluster,
            instance_parameters: translation.instance,
            subnet_group: source.subnet_group.clone(),
            vpc_id: source.vpc_id.clone(),
            port: endpoint.as_ref().map_or(5432, |e| e.port),
            source_groups: source.group_ids(),
            storage_encrypted: source.storage_encrypted,
            kms_key_id: source.kms_key_id.clone(),
            cdc_consumers: tags.cdc_consumers.clone(),
            agent_group: database.as_ref().and(policy.agent_security_group.clone()),
            database,
            router,
        }),
        _ => None,
    };
    (report, plan)
}

/// What the instance's tags say about where they came from, before anything else is read from
/// them: a start tag copied from another instance, and control tags left from an earlier attempt.
fn tag_checks(c: &mut Checks<'_>, source: &SourceInstance, policy: &Policy) {
    let prefix = &policy.tag_prefix;
    // The marker is the agent's alone (the operator policies deny it, `infra/`) and holds the
    // resource id of the instance it was written on. On another instance it came with the tags
    // of a snapshot or a copy: RDS copies an instance's tags to its snapshots (CopyTagsToSnapshot,
    // the final snapshot among them) and a restore given no tags of its own takes the
    // snapshot's. The start tag came with it, so a restore someone made to recover data would
    // be quarantined, rebooted and re-pointed like a source an owner tagged.
    //
    // Migrating a copy knowingly takes an acknowledgement that names it: `ack-restored-copy`
    // set to the copy's own resource id, not `true`, since a `true` would itself be copied to
    // the copy's snapshots and let a restore of the copy through.
    let marker = source.tags.get(&tags::marker_key(prefix));
    let ack_key = tags::key(prefix, &format!("ack-{RESTORED_COPY}"));
    let acknowledged = source.tags.get(&ack_key) == Some(&source.resource_id);
    match marker {
        Some(m) if *m != source.resource_id && !acknowledged => c.add(
            RESTORED_COPY,
            Outcome::Fail,
            format!(
                "the instance carries the agent's marker of another instance ({m}): its tags, the start tag among them, were copied from an instance the agent has migrated, most likely by a restore from one of its snapshots; a restore is usually someone's recovery, not a source to migrate. To migrate this copy anyway, tag it {ack_key}={}",
                source.resource_id
            ),
        ),
        Some(m) if *m != source.resource_id => c.add(
            RESTORED_COPY,
            Outcome::Pass,
            format!("a copy of {m}, to be migrated: {ack_key} names this instance"),
        ),
        _ => c.add(
            RESTORED_COPY,
            Outcome::Pass,
            "the instance carries no other instance's marker",
        ),
    }
    // Tags that answer a question the agent asks in the middle of an attempt: none is asked
    // before the attempt starts, so one present now was left by an earlier attempt (the agent's
    // role cannot remove tags), and this attempt would take it for today's answer.
    // Read as the phases read them (`ControlTags::read`), so the check sees what they would.
    let read = c.tags;
    let stale: Vec<(String, &str)> = [
        (
            read.rollback,
            "rollback",
            "approve",
            "roll the cutover back the moment traffic is routed",
        ),
        (
            read.cdc_drained,
            "cdc-drained",
            "true",
            "let the cutover pass before the consumers read their slots to the end",
        ),
        (
            read.cdc_slots_created,
            "cdc-slots-created",
            "true",
            "route before the consumers' slots exist on this attempt's Aurora cluster",
        ),
    ]
    .into_iter()
    .filter(|(set, ..)| *set)
    .map(|(_, suffix, value, would)| (format!("{}={value}", tags::key(prefix, suffix)), would))
    .collect();
    let approved_already = policy.cutover == CutoverPolicy::ManualApproval && read.approve;
    if !stale.is_empty() {
        let each: Vec<String> = stale
            .iter()
            .map(|(tag, would)| format!("{tag} would {would}"))
            .collect();
        c.add(
            "leftover-tags",
            Outcome::Fail,
            format!(
                "tags left from an earlier attempt: {}. Remove them; the owners and the consumers set them again when this attempt asks",
                each.join("; ")
            ),
        );
    } else if approved_already {
        c.add(
            "leftover-tags",
            Outcome::Warn,
            format!(
                "{}=true is already set: the cutover starts without a new approval as soon as the replica is ready; remove it if it was left from an earlier attempt",
                tags::key(prefix, "approve")
            ),
        );
    } else {
        c.add(
            "leftover-tags",
            Outcome::Pass,
            "no answer left from an earlier attempt",
        );
    }
}

/// Declared CDC consumers get database-port ingress into the quarantined source, the one hole
/// in the fence: each group must exist in the source's VPC and account (a typo or a foreign
/// group is never admitted), and the declaration itself is acknowledged by the owners.
fn cdc_consumer_checks(
    c: &mut Checks<'_>,
    source: &SourceInstance,
    inputs: &PreflightInputs,
    declared: &[String],
    prefix: &str,
) {
    // arn:aws:rds:<region>:<account>:db:<name>
    let account = source.arn.split(':').nth(4).unwrap_or_default();
    let found = inputs.cdc_consumer_groups.as_deref().unwrap_or_default();
    let problems: Vec<String> = declared
        .iter()
        .filter_map(|id| match found.iter().find(|g| g.id == *id) {
            None => Some(format!("{id} does not exist")),
            Some(g) if g.vpc_id != source.vpc_id => Some(format!(
                "{id} is in {}, not in the source's {}",
                g.vpc_id, source.vpc_id
            )),
            Some(g) if !account.is_empty() && g.owner_id != account => Some(format!(
                "{id} belongs to account {}, not {account}",
                g.owner_id
            )),
            Some(_) => None,
        })
        .collect();
    if inputs.cdc_consumer_groups.is_none() {
        c.add(
            "cdc-consumer-groups",
            Outcome::Fail,
            "the declared CDC consumers' security groups could not be looked up",
        );
    } else if problems.is_empty() {
        c.add(
            "cdc-consumer-groups",
            Outcome::Pass,
            format!(
                "{} in {} (account {account})",
                declared.join(" "),
                source.vpc_id
            ),
        );
    } else {
        c.add(
            "cdc-consumer-groups",
            Outcome::Fail,
            format!(
                "{}: fix {prefix}:cdc-consumers; only groups of the source's VPC and account are admitted through the quarantine",
                problems.join("; ")
            ),
        );
    }
    c.add(
        "cdc-consumers",
        Outcome::Fail,
        format!(
            "{} will be admitted through the quarantine on the database port while writes are stopped: confirm they are the CDC consumers and nothing else, then acknowledge",
            declared.join(" ")
        ),
    );
}

fn join(items: &[&String]) -> String {
    items
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn gib(bytes: f64) -> String {
    format!("{:.1} GiB", bytes / (1024.0 * 1024.0 * 1024.0))
}
