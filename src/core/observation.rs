//! What the driver saw of the world for one migration, at one moment.
//!
//! The phase machine decides only from this (level-triggered): an inbound message merely says
//! which migration to look at. Each field is either looked at or not (`Observed::Unknown`), so a
//! partial observation can never be mistaken for "the resource is gone".

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::action::ActionResult;
use super::database::{ClientSession, Fingerprint, Lsn, SqlPreflight};

/// A resource as seen by one describe call.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub enum Observed<T> {
    /// Not looked at this time: decide nothing from it.
    #[default]
    Unknown,
    /// Looked for and not there.
    Absent,
    Present(T),
}

impl<T> From<Option<T>> for Observed<T> {
    /// A describe call that was made: `None` means not found.
    fn from(found: Option<T>) -> Self {
        match found {
            Some(t) => Observed::Present(t),
            None => Observed::Absent,
        }
    }
}

impl<T> Observed<T> {
    pub fn present(&self) -> Option<&T> {
        match self {
            Observed::Present(t) => Some(t),
            _ => None,
        }
    }
    pub fn is_absent(&self) -> bool {
        matches!(self, Observed::Absent)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Observation {
    pub source: Observed<SourceInstance>,
    pub target: Observed<TargetCluster>,
    pub quarantine_group: Observed<SecurityGroup>,
    pub parameter_groups: Option<ParameterGroupsPresent>,
    /// Gathered only in Preflight (the calls are many and the answers change rarely).
    pub preflight: Option<PreflightInputs>,
    /// Gathered in Decommissioning: the manual snapshot quota.
    pub quotas: Option<Vec<Quota>>,
    pub final_snapshot: Observed<Snapshot>,
    /// Events of the source instance since the migration's reboot request (DescribeEvents).
    pub source_events: Vec<InstanceEvent>,
    /// Events of the Aurora writer since its fence's reboot request (rollback after cutover).
    pub writer_events: Vec<InstanceEvent>,
    pub metrics: BTreeMap<MetricKey, Vec<Datapoint>>,
    /// The fleet-wide pause switch.
    pub fleet_paused: bool,
    /// The agent has no cutover turn for this migration now: as many cutovers as the RDS
    /// budget carries are under way (`agent::turns`). Read in AwaitingCutover only;
    /// `false` (the default) is a turn.
    #[serde(default)]
    pub no_cutover_turn: bool,
    /// The agent has no preparation turn for this migration now: as many preflights and
    /// preparations as it runs at once are under way (`agent::turns`). Read in Requested only;
    /// `false` (the default) is a turn.
    #[serde(default)]
    pub no_preparation_turn: bool,
    /// With `no_cutover_turn` or `no_preparation_turn`: how many migrations asked before this
    /// one and wait for a turn too (the further back, the less often it looks).
    #[serde(default)]
    pub turns_ahead: usize,
    /// This step's agent has just taken the migration's lease from another agent process
    /// (`agent::lease`), which died or lost it: what that process recorded as in flight
    /// (`Migration::requested`) may never have been sent, so it is asked for again now rather
    /// than after its reissue period (a reboot's aside: a second reboot is more outage).
    #[serde(default)]
    pub taken_over: bool,
    /// The source is not found under its name but RDS has its resource id under this one: a
    /// person renamed it. The source is then `Unknown`, not `Absent`: it was not deleted, and
    /// the agent, which knows it by its name, does nothing to it until it has that name again
    /// (`machine::guards`).
    #[serde(default)]
    pub source_renamed_to: Option<String>,
    /// What the agent read inside the databases (database-aware cutover only).
    pub database: DatabaseReadings,
    /// Outcomes of the actions the driver just executed for this migration.
    pub action_results: Vec<ActionResult>,
    /// The progress of a propagating route (`Needs::route_change`); a failed read is an `Err`
    /// with the reason, reported and asked again, not a failed route.
    #[serde(default)]
    pub route_status: Option<Result<crate::core::router::RouteProgress, String>>,
}

/// Readings taken by SQL. A failed read is an `Err` with the reason, not a failed observation:
/// losing database access sends the cutover to the metric path, it does not stop it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DatabaseReadings {
    /// When these readings were taken (the driver's clock, before the first read). The catch-up
    /// proof only counts readings taken after its fence was written.
    pub read_at: Option<Timestamp>,
    /// Client sessions on the source.
    pub source_sessions: Option<Result<Vec<ClientSession>, String>>,
    /// `pg_last_wal_replay_lsn()` on the Aurora writer (`None` inside: not in recovery).
    pub target_replay: Option<Result<Option<Lsn>, String>>,
    /// The consistency check's facts of the source and of the Aurora writer, read at once.
    #[serde(default)]
    pub source_fingerprint: Option<Result<Fingerprint, String>>,
    #[serde(default)]
    pub target_fingerprint: Option<Result<Fingerprint, String>>,
    /// Client sessions on the Aurora writer (rollback after cutover).
    #[serde(default)]
    pub target_sessions: Option<Result<Vec<ClientSession>, String>>,
}

impl Observation {
    pub fn metric(&self, key: MetricKey) -> &[Datapoint] {
        self.metrics.get(&key).map(Vec::as_slice).unwrap_or(&[])
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SourceInstance {
    pub identifier: String,
    pub arn: String,
    /// `DbiResourceId`: stable across renames; the migration's key.
    pub resource_id: String,
    pub engine: String,
    pub engine_version: String,
    /// `DBInstanceStatus`, e.g. `available`, `modifying`, `rebooting`.
    pub status: String,
    pub instance_class: String,
    pub allocated_storage_gib: u32,
    pub has_pending_modifications: bool,
    pub parameter_group: ParameterGroupMembership,
    pub backup_retention_days: u32,
    /// In-Region RDS read replicas (identifiers) and cross-Region ones (ARNs).
    pub read_replicas: Vec<String>,
    pub aurora_replica_clusters: Vec<String>,
    pub storage_encrypted: bool,
    pub kms_key_id: Option<String>,
    pub iam_auth_enabled: bool,
    /// The RDS-managed master secret (`MasterUserSecret.SecretArn`), when RDS manages it.
    #[serde(default)]
    pub master_user_secret_arn: Option<String>,
    /// `DBName`: the database created with the instance, if any.
    #[serde(default)]
    pub db_name: Option<String>,
    pub deletion_protection: bool,
    pub auto_minor_version_upgrade: bool,
    pub security_groups: Vec<GroupMembership>,
    pub vpc_id: String,
    pub subnet_group: String,
    pub endpoint: Option<Endpoint>,
    pub multi_az: bool,
    pub tags: BTreeMap<String, String>,
}

impl SourceInstance {
    /// The region, from the ARN (`arn:aws:rds:<region>:...`).
    pub fn region(&self) -> &str {
        self.arn.split(':').nth(3).unwrap_or("")
    }

    pub fn group_ids(&self) -> Vec<String> {
        self.security_groups.iter().map(|g| g.id.clone()).collect()
    }

    /// The instance's groups are exactly `ids`, every one `active`.
    pub fn groups_exactly_active(&self, ids: &[String]) -> bool {
        let mut have: Vec<&str> = self.security_groups.iter().map(|g| g.id.as_str()).collect();
        let mut want: Vec<&str> = ids.iter().map(String::as_str).collect();
        have.sort_unstable();
        want.sort_unstable();
        have == want && self.security_groups.iter().all(|g| g.status == "active")
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ParameterGroupMembership {
    pub name: String,
    /// `in-sync`, `pending-reboot` or `applying`.
    pub apply_status: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupMembership {
    pub id: String,
    /// `adding`, `active` or `removing`.
    pub status: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub address: String,
    pub port: u16,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TargetCluster {
    pub identifier: String,
    pub arn: String,
    pub status: String,
    /// Set while the cluster replicates from the source: the source's ARN.
    pub replication_source: Option<String>,
    pub tags: BTreeMap<String, String>,
    pub writer_endpoint: Option<Endpoint>,
    pub security_groups: Vec<GroupMembership>,
    pub members: Vec<ClusterMember>,
}

impl TargetCluster {
    pub fn writer(&self, identifier: &str) -> Option<&ClusterMember> {
        self.members.iter().find(|m| m.identifier == identifier)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterMember {
    pub identifier: String,
    pub status: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecurityGroup {
    pub id: String,
    pub name: String,
    /// Security groups (ids) allowed in; CIDR rules are reported as their CIDR text.
    pub ingress_sources: Vec<String>,
    /// Any egress rule at all is reported here (a new group allows all egress by default).
    pub egress_rules: usize,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParameterGroupsPresent {
    pub cluster: bool,
    pub instance: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PreflightInputs {
    /// Aurora PostgreSQL versions offered in the Region (DescribeDBEngineVersions).
    pub aurora_versions: Vec<EngineVersion>,
    /// The source parameter group's parameters with `Source = user`.
    pub source_parameters: Vec<Parameter>,
    /// Parameter names the Aurora family accepts at cluster and at instance level.
    pub aurora_cluster_parameters: Vec<String>,
    pub aurora_instance_parameters: Vec<String>,
    /// Static (reboot-to-apply) Aurora parameters, for the apply method of translated ones.
    pub aurora_static_parameters: Vec<String>,
    pub pending_maintenance: Vec<String>,
    pub quotas: Vec<Quota>,
    /// Whether RDS can use the source's KMS key for the replica.
    pub kms_key: KeyCheck,
    /// Latest FreeStorageSpace of the source, bytes.
    pub free_storage_bytes: Option<f64>,
    /// The declared CDC consumers' security groups that exist (EC2), where they live; `None`
    /// when none are declared or they were not looked up.
    pub cdc_consumer_groups: Option<Vec<GroupLocation>>,
    /// What the database said (the SQL preflight), where the instance grants access: `Err` with
    /// the reason when the agent could not connect or read. `None`: access not granted.
    #[serde(default)]
    pub database: Option<Result<SqlPreflight, String>>,
    /// The extensions the Aurora family offers: the `AllowedValues` of `rds.allowed_extensions`
    /// in the family's engine-default cluster parameters. `None` when RDS does not give them
    /// (the parameter or its `AllowedValues` is absent).
    #[serde(default)]
    pub aurora_extensions: Option<Vec<String>>,
    /// What the instance's router sends where (Route 53's record, the RDS Proxy and its
    /// targets, the PgBouncer entry): `Ok(None)` when there is no such record, proxy or entry,
    /// `Err` when it could not be read. `None`: the webhook, which has nothing to read.
    #[serde(default)]
    pub router_view: Option<Result<Option<crate::core::router::RouterView>, String>>,
}

/// Where a security group lives: a consumer admitted through the quarantine must be in the
/// source's VPC and account.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupLocation {
    pub id: String,
    pub vpc_id: String,
    pub owner_id: String,
}

/// What DescribeKey said of the source's KMS key.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyCheck {
    /// Not encrypted, or not looked at.
    #[default]
    Unchecked,
    /// Enabled, for encryption and decryption.
    Usable,
    /// Why RDS could not use it (disabled, pending deletion, not found, access denied).
    Unusable(String),
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineVersion {
    pub version: String,
    /// e.g. `aurora-postgresql15`
    pub family: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Parameter {
    pub name: String,
    pub value: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quota {
    /// DescribeAccountAttributes names: `DBClusters`, `DBInstances`, `DBClusterParameterGroups`,
    /// `DBParameterGroups`, `ManualSnapshots`.
    pub name: String,
    pub used: u64,
    pub max: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub identifier: String,
    pub status: String,
    /// The instance it was taken of (`DBInstanceIdentifier`).
    pub instance: String,
    /// `SnapshotCreateTime`; absent while RDS has not started it.
    pub created_at: Option<Timestamp>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceEvent {
    pub at: Timestamp,
    pub kind: InstanceEventKind,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum InstanceEventKind {
    Shutdown,
    Restarted,
    Other(String),
}

impl InstanceEventKind {
    /// DescribeEvents carries no event id, only the message: match it loosely (AWS samples
    /// differ in case and trailing period).
    pub fn from_message(message: &str) -> Self {
        let m = message.trim().trim_end_matches('.').to_ascii_lowercase();
        match m.as_str() {
            "db instance restarted" => InstanceEventKind::Restarted,
            "db instance shutdown" => InstanceEventKind::Shutdown,
            _ => InstanceEventKind::Other(message.to_string()),
        }
    }
}

/// The CloudWatch series the phase machine reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum MetricKey {
    /// AWS/RDS OldestReplicationSlotLag of the source, bytes.
    SourceSlotLag,
    SourceConnections,
    SourceFreeStorage,
    /// TransactionLogsGeneration of the source, bytes/s.
    SourceWalGeneration,
    SourceCpu,
    SourceWriteLatency,
    SourceReadLatency,
    /// RDSToAuroraPostgreSQLReplicaLag of the Aurora writer, seconds.
    TargetReplicaLag,
    TargetCpu,
    TargetWriteLatency,
    TargetReadLatency,
    TargetWriteIops,
    /// DatabaseConnections of the Aurora writer: 0 after its fence's reboot.
    TargetConnections,
}

impl MetricKey {
    pub const ALL: [MetricKey; 13] = [
        MetricKey::SourceSlotLag,
        MetricKey::SourceConnections,
        MetricKey::SourceFreeStorage,
        MetricKey::SourceWalGeneration,
        MetricKey::SourceCpu,
        MetricKey::SourceWriteLatency,
        MetricKey::SourceReadLatency,
        MetricKey::TargetReplicaLag,
        MetricKey::TargetCpu,
        MetricKey::TargetWriteLatency,
        MetricKey::TargetReadLatency,
        MetricKey::TargetWriteIops,
        MetricKey::TargetConnections,
    ];

    /// The AWS/RDS metric name.
    pub fn metric_name(self) -> &'static str {
        match self {
            MetricKey::SourceSlotLag => "OldestReplicationSlotLag",
            MetricKey::SourceConnections | MetricKey::TargetConnections => "DatabaseConnections",
            MetricKey::SourceFreeStorage => "FreeStorageSpace",
            MetricKey::SourceWalGeneration => "TransactionLogsGeneration",
            MetricKey::SourceCpu | MetricKey::TargetCpu => "CPUUtilization",
            MetricKey::SourceWriteLatency | MetricKey::TargetWriteLatency => "WriteLatency",
            MetricKey::SourceReadLatency | MetricKey::TargetReadLatency => "ReadLatency",
            MetricKey::TargetReplicaLag => "RDSToAuroraPostgreSQLReplicaLag",
            MetricKey::TargetWriteIops => "WriteIOPS",
        }
    }

    /// Source metrics are read on the instance, target ones on the Aurora writer instance.
    pub fn on_source(self) -> bool {
        matches!(
            self,
            MetricKey::SourceSlotLag
                | MetricKey::SourceConnections
                | MetricKey::SourceFreeStorage
                | MetricKey::SourceWalGeneration
                | MetricKey::SourceCpu
                | MetricKey::SourceWriteLatency
                | MetricKey::SourceReadLatency
        )
    }
}

/// One CloudWatch period of one metric.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Datapoint {
    /// The start of the period (CloudWatch timestamps a period by its start).
    pub start: Timestamp,
    pub period_s: u32,
    pub minimum: f64,
    pub maximum: f64,
    pub average: f64,
}

/// The datapoint with the latest start, if any.
pub fn latest(points: &[Datapoint]) -> Option<&Datapoint> {
    points.iter().max_by_key(|p| p.start)
}
