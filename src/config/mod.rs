//! Settings: every one is a flag and an environment variable, with a documented default.
//!
//! Parsing is clap's; validation is ours, so that a bad value stops start-up with a message that
//! names the setting (`MIGRATOR_CUTOVER (--cutover): ...`), never a panic later.

use std::fmt;

use clap::Args;
use jiff::SignedDuration;

use crate::core::policy::{CutoverPolicy, Policy};
use crate::telemetry::{OtlpProtocol, OtlpSettings};

/// Where the agent's AWS resources are. Required by the commands that talk to AWS.
#[derive(Args, Clone, Debug, Default)]
pub struct AwsArgs {
    /// SQS queue the agent reads (EventBridge rules and its own ticks deliver there).
    #[arg(long, env = "MIGRATOR_QUEUE_URL", global = true)]
    pub queue_url: Option<String>,
    /// SNS topic for notifications (AWS Chatbot follows it into Slack).
    #[arg(long, env = "MIGRATOR_TOPIC_ARN", global = true)]
    pub topic_arn: Option<String>,
    /// DynamoDB table holding the migration records.
    #[arg(long, env = "MIGRATOR_TABLE", global = true)]
    pub table: Option<String>,
    /// An AWS endpoint to use instead of AWS's own (emulators such as moto).
    #[arg(long, env = "AWS_ENDPOINT_URL", global = true)]
    pub endpoint_url: Option<String>,
    /// The Region (the SDK's own default chain applies when unset).
    #[arg(long, env = "AWS_REGION", global = true)]
    pub region: Option<String>,
    /// RDS API requests per second the agent allows itself; the account's budget (~12/s
    /// sustained) is shared with consoles and IaC.
    #[arg(
        long,
        env = "MIGRATOR_RDS_RATE_LIMIT",
        default_value_t = 5.0,
        global = true
    )]
    pub rds_rate_limit: f64,
    /// Messages handled at once (each migration is only ever handled by one of them). A step
    /// mostly waits on AWS, so a fleet needs many in flight (see the simulator's fleet run).
    #[arg(
        long,
        env = "MIGRATOR_CONCURRENCY",
        default_value_t = 64,
        global = true
    )]
    pub concurrency: usize,
    /// Time allowed to finish in-flight work after SIGTERM (Fargate kills 30 s after it).
    #[arg(
        long,
        env = "MIGRATOR_SHUTDOWN_BUDGET",
        default_value = "25s",
        global = true
    )]
    pub shutdown_budget: String,
    /// How long a received message stays hidden from other receivers; extended every third of
    /// it while its step runs. Also how soon the message of an agent that died (SIGKILL, OOM,
    /// lost task) is seen again: short, because during a cutover every second counts. 15 s:
    /// the lease time, so that a second agent picks up a dead one's cutover within one lease
    /// either way (`agent::lease`).
    #[arg(
        long,
        env = "MIGRATOR_MESSAGE_VISIBILITY",
        default_value = "15s",
        global = true
    )]
    pub message_visibility: String,
    /// How long a migration's lease lasts unless renewed (`agent::lease`): one agent steps a
    /// migration at a time, and another takes over a dead one's migrations when their leases
    /// lapse. Renewed every third of it while a step runs. 5s to 2m.
    #[arg(long, env = "MIGRATOR_LEASE", default_value = "15s", global = true)]
    pub lease: String,
    /// Data-access-layer webhook told about the new endpoint at cutover (POST JSON, 2xx
    /// required, signed with --webhook-secret). `https://` (`http://` only to a loopback host).
    /// A secret: it may embed a token, so only its scheme and host are ever shown. Unset: the
    /// SNS "cutover" notification is the only signal.
    #[arg(
        long,
        env = "MIGRATOR_WEBHOOK_URL",
        global = true,
        hide_env_values = true
    )]
    pub webhook_url: Option<Secret>,
    /// Application smoke test run in Verifying (same request shape and signature as the
    /// webhook); a failure fails verification. Same rules as --webhook-url. Unset: no smoke test.
    #[arg(
        long,
        env = "MIGRATOR_SMOKE_TEST_URL",
        global = true,
        hide_env_values = true
    )]
    pub smoke_test_url: Option<Secret>,
    /// Key of the HMAC-SHA256 signature of every webhook and smoke-test request (header
    /// `X-Aurora-Migrator-Signature`); required when either URL is set. Never shown.
    #[arg(
        long,
        env = "MIGRATOR_WEBHOOK_SECRET",
        global = true,
        hide_env_values = true
    )]
    pub webhook_secret: Option<Secret>,
    /// PEM file of the CA certificate(s) that sign the PgBouncer companions' certificates,
    /// trusted for requests to the companions besides the public roots (companions run on
    /// private hosts, whose certificates a private CA usually signs). Unset: public roots only.
    #[arg(long, env = "MIGRATOR_COMPANION_CA_FILE", global = true)]
    pub companion_ca_file: Option<String>,
    /// File the agent touches while healthy; `healthcheck` reads its age.
    #[arg(
        long,
        env = "MIGRATOR_HEARTBEAT_FILE",
        default_value = "/tmp/aurora-migrator.heartbeat",
        global = true
    )]
    pub heartbeat_file: String,
}

/// The phase machine's policy. Defaults and their reasons are in `core::policy`.
#[derive(Args, Clone, Debug)]
pub struct PolicyArgs {
    /// Prefix of every tag the agent reads or writes.
    #[arg(
        long,
        env = "MIGRATOR_TAG_PREFIX",
        default_value = crate::core::tags::DEFAULT_PREFIX,
        global = true
    )]
    pub tag_prefix: String,
    /// `manual` (approve with a tag), `automatic`, or `window:ddd:hh:mm-ddd:hh:mm` (UTC).
    #[arg(
        long,
        env = "MIGRATOR_CUTOVER",
        default_value = "manual",
        global = true
    )]
    pub cutover: String,
    /// The router for instances without a `<prefix>:router` tag: `webhook` (the signed
    /// webhook, or only the SNS "cutover" message without --webhook-url) or
    /// `route53:<hosted zone id>:<record name>` (the CNAME the applications connect to). A
    /// deployment of one database team sets its record here; a fleet tags each instance.
    #[arg(
        long,
        env = "MIGRATOR_ROUTER",
        default_value = "webhook",
        global = true
    )]
    pub router: String,
    /// Most OldestReplicationSlotLag (MiB) that counts as caught up before the cutover.
    #[arg(
        long,
        env = "MIGRATOR_MAX_SLOT_LAG_MIB",
        default_value_t = 1024.0,
        global = true
    )]
    pub max_slot_lag_mib: f64,
    /// Most RDSToAuroraPostgreSQLReplicaLag (seconds) that counts as caught up.
    #[arg(
        long,
        env = "MIGRATOR_MAX_REPLICA_LAG_SECONDS",
        default_value_t = 30.0,
        global = true
    )]
    pub max_replica_lag_seconds: f64,
    /// How long the lag must stay low before the cutover.
    #[arg(
        long,
        env = "MIGRATOR_LAG_SUSTAIN",
        default_value = "15m",
        global = true
    )]
    pub lag_sustain: String,
    /// FreeStorageSpace floor (GiB) on the source; below it the replica is deleted.
    #[arg(
        long,
        env = "MIGRATOR_MIN_FREE_STORAGE_GIB",
        default_value_t = 10.0,
        global = true
    )]
    pub min_free_storage_gib: f64,
    /// Longest write outage before promotion starts; past it the agent rolls back by itself.
    #[arg(
        long,
        env = "MIGRATOR_WRITE_BUDGET",
        default_value = "10m",
        global = true
    )]
    pub write_budget: String,
    /// Soak time on Aurora before verification can pass.
    #[arg(long, env = "MIGRATOR_SOAK", default_value = "30m", global = true)]
    pub soak: String,
    /// How long the source is kept after verification before its final snapshot and deletion.
    #[arg(long, env = "MIGRATOR_RETENTION", default_value = "7d", global = true)]
    pub retention: String,
    /// Let the agent turn DeletionProtection off at decommission.
    #[arg(
        long,
        env = "MIGRATOR_ALLOW_DISABLE_DELETION_PROTECTION",
        default_value_t = false,
        global = true
    )]
    pub allow_disable_deletion_protection: bool,
    /// Give the source its security groups back after cutover (clients outside the data access
    /// layer could then write to it).
    #[arg(
        long,
        env = "MIGRATOR_RESTORE_SOURCE_GROUPS",
        default_value_t = false,
        global = true
    )]
    pub restore_source_groups: bool,
    /// CloudWatch period the agent reads metrics at: 1, 5, 10, 30 s or a multiple of 60 s
    /// (RDS metrics are per minute; finer periods are for emulators).
    #[arg(
        long,
        env = "MIGRATOR_METRIC_PERIOD",
        default_value = "60s",
        global = true
    )]
    pub metric_period: String,
    /// Poll interval of the phases that wait for AWS.
    #[arg(long, env = "MIGRATOR_SLOW_POLL", default_value = "60s", global = true)]
    pub slow_poll: String,
    /// Poll interval of the cutover phases.
    #[arg(long, env = "MIGRATOR_FAST_POLL", default_value = "5s", global = true)]
    pub fast_poll: String,
    /// Metric path only: `DatabaseConnections` the quarantined, rebooted source may still show
    /// (beyond declared CDC consumers) for the catch-up proof to hold. 0 to 10.
    #[arg(
        long,
        env = "MIGRATOR_MAX_IDLE_CONNECTIONS",
        default_value_t = 0,
        global = true
    )]
    pub max_idle_connections: u32,
    /// Most migrations in their cutover (writes stopped) at once in one agent; the others wait,
    /// writes flowing, for a turn the RDS budget can carry. 1 to 1000.
    #[arg(
        long,
        env = "MIGRATOR_MAX_CUTOVERS",
        default_value_t = crate::core::policy::DEFAULT_MAX_CUTOVERS,
        global = true
    )]
    pub max_cutovers: usize,
    /// Most migrations in Preflight or Preparing at once in one agent; the others wait in
    /// Requested (no time limit) for a turn. 1 to 1000.
    #[arg(
        long,
        env = "MIGRATOR_MAX_PREPARATIONS",
        default_value_t = crate::core::policy::DEFAULT_MAX_PREPARATIONS,
        global = true
    )]
    pub max_preparations: usize,
}

impl Default for PolicyArgs {
    fn default() -> Self {
        PolicyArgs {
            tag_prefix: crate::core::tags::DEFAULT_PREFIX.into(),
            cutover: "manual".into(),
            router: "webhook".into(),
            max_slot_lag_mib: 1024.0,
            max_replica_lag_seconds: 30.0,
            lag_sustain: "15m".into(),
            min_free_storage_gib: 10.0,
            write_budget: "10m".into(),
            soak: "30m".into(),
            retention: "7d".into(),
            allow_disable_deletion_protection: false,
            restore_source_groups: false,
            metric_period: "60s".into(),
            slow_poll: "60s".into(),
            fast_poll: "5s".into(),
            max_idle_connections: 0,
            max_cutovers: crate::core::policy::DEFAULT_MAX_CUTOVERS,
            max_preparations: crate::core::policy::DEFAULT_MAX_PREPARATIONS,
        }
    }
}

/// Where the agent sends OpenTelemetry traces and metrics. No endpoint: nowhere, at no cost.
#[derive(Args, Clone, Debug)]
pub struct TelemetryArgs {
    /// OTLP/HTTP collector (ADOT or OpenTelemetry Collector sidecar), base URL such as
    /// `http://localhost:4318`; `/v1/traces` and `/v1/metrics` are appended. Unset (and
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` unset): no export. Only `run` exports.
    #[arg(long, env = "MIGRATOR_OTLP_ENDPOINT", global = true)]
    pub otlp_endpoint: Option<String>,
    /// `http/protobuf` or `http/json`.
    #[arg(
        long,
        env = "MIGRATOR_OTLP_PROTOCOL",
        default_value = "http/protobuf",
        global = true
    )]
    pub otlp_protocol: String,
    /// How often metrics are exported.
    #[arg(
        long,
        env = "MIGRATOR_OTLP_METRICS_INTERVAL",
        default_value = "60s",
        global = true
    )]
    pub otlp_metrics_interval: String,
}

impl Default for TelemetryArgs {
    fn default() -> Self {
        TelemetryArgs {
            otlp_endpoint: None,
            otlp_protocol: "http/protobuf".into(),
            otlp_metrics_interval: "60s".into(),
        }
    }
}

impl TelemetryArgs {
    /// The export settings, or `None` when no endpoint is set. `MIGRATOR_OTLP_ENDPOINT` wins
    /// over the standard `OTEL_EXPORTER_OTLP_ENDPOINT`; an empty value counts as unset.
    pub fn otlp(&self) -> Result<Option<OtlpSettings>, ConfigError> {
        self.otlp_with(std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok())
    }

    /// [`TelemetryArgs::otlp`] with the standard variable's value given.
    pub fn otlp_with(
        &self,
        standard_endpoint: Option<String>,
    ) -> Result<Option<OtlpSettings>, ConfigError> {
        // Checked even when off, so that a typo shows before the day export is turned on.
        let protocol: OtlpProtocol = self
            .otlp_protocol
            .parse()
            .map_err(|e| bad("MIGRATOR_OTLP_PROTOCOL (--otlp-protocol)", e))?;
        let interval = duration(
            "MIGRATOR_OTLP_METRICS_INTERVAL (--otlp-metrics-interval)",
            &self.otlp_metrics_interval,
            SignedDuration::from_secs(1),
        )?;
        let set = |v: &Option<String>| v.clone().filter(|s| !s.trim().is_empty());
        let (setting, endpoint) = match (set(&self.otlp_endpoint), set(&standard_endpoint)) {
            (Some(e), _) => ("MIGRATOR_OTLP_ENDPOINT (--otlp-endpoint)", e),
            (None, Some(e)) => ("OTEL_EXPORTER_OTLP_ENDPOINT", e),
            (None, None) => return Ok(None),
        };
        let url = reqwest::Url::parse(endpoint.trim())
            .map_err(|e| bad(setting, format!("`{endpoint}` is not a URL: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
            return Err(bad(
                setting,
                format!("`{endpoint}` is not an http(s) URL with a host"),
            ));
        }
        if url.query().is_some() || url.path().contains("/v1/") {
            return Err(bad(
                setting,
                format!(
                    "`{endpoint}`: give the collector's base URL (`http://localhost:4318`); the agent appends `/v1/traces` and `/v1/metrics`"
                ),
            ));
        }
        Ok(Some(OtlpSettings {
            endpoint: endpoint.trim().to_string(),
            protocol,
            metrics_interval: interval.unsigned_abs(),
        }))
    }
}

/// Whether the agent may connect to databases (the database-aware cutover), and how it trusts
/// them. Off by default: connecting needs credentials and network paths a deployment opts in to.
#[derive(Args, Clone, Debug)]
pub struct DatabaseArgs {
    /// Let the agent connect to the PostgreSQL databases of the instances it migrates (to end
    /// client sessions, fence writes and read WAL positions at cutover, and for the SQL
    /// preflight). Each instance still opts in with its own credentials.
    #[arg(
        long,
        env = "MIGRATOR_DATABASE_ACCESS",
        default_value_t = false,
        global = true
    )]
    pub database_access: bool,
    /// PEM bundle of the certificate authorities a database's certificate must chain to (the
    /// RDS CA bundle); read at start-up when database access is on.
    #[arg(
        long,
        env = "MIGRATOR_RDS_CA_BUNDLE",
        default_value = DEFAULT_RDS_CA_BUNDLE,
        global = true
    )]
    pub rds_ca_bundle: String,
    /// The agent's own security group (the ECS task's), admitted through the quarantine on the
    /// database port while database access is in use. Required with database access.
    #[arg(long, env = "MIGRATOR_AGENT_SECURITY_GROUP", global = true)]
    pub agent_security_group: Option<String>,
}

/// Where the Dockerfile puts the RDS CA bundle.
pub const DEFAULT_RDS_CA_BUNDLE: &str = "/etc/aurora-migrator/rds-ca-bundle.pem";

impl Default for DatabaseArgs {
    fn default() -> Self {
        DatabaseArgs {
            database_access: false,
            rds_ca_bundle: DEFAULT_RDS_CA_BUNDLE.into(),
            agent_security_group: None,
        }
    }
}

impl DatabaseArgs {
    /// The deployment's opt-in and the agent's group, into the phase machine's policy.
    pub fn apply_to(&self, policy: &mut Policy) {
        policy.database_access = self.database_access;
        policy.agent_security_group = self
            .agent_security_group
            .as_deref()
            .map(str::trim)
            .filter(|g| !g.is_empty())
            .map(str::to_string);
    }

    /// The connection settings, or `None` when database access is off (the bundle is then not
    /// read). A bundle that cannot be read or holds no certificate stops start-up.
    pub fn settings(&self) -> Result<Option<crate::database::DatabaseSettings>, ConfigError> {
        if !self.database_access {
            return Ok(None);
        }
        match self.agent_security_group.as_deref().map(str::trim) {
            Some(g) if g.starts_with("sg-") => {}
            Some(g) => {
                return Err(bad(
                    "MIGRATOR_AGENT_SECURITY_GROUP (--agent-security-group)",
                    format!("`{g}` is not a security group id (sg-…)"),
                ));
            }
            None => {
                return Err(bad(
                    "MIGRATOR_AGENT_SECURITY_GROUP (--agent-security-group)",
                    "is required with MIGRATOR_DATABASE_ACCESS=true: the quarantine admits the agent by its group",
                ));
            }
        }
        let tls =
            crate::database::RdsTls::from_bundle_file(std::path::Path::new(&self.rds_ca_bundle))
                .map_err(|e| bad("MIGRATOR_RDS_CA_BUNDLE (--rds-ca-bundle)", e))?;
        Ok(Some(crate::database::DatabaseSettings::new(tls)))
    }
}

/// A setting that cannot be used, named as the operator set it.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("{setting}: {problem}")]
pub struct ConfigError {
    pub setting: &'static str,
    pub problem: String,
}

fn bad(setting: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError {
        setting,
        problem: problem.into(),
    }
}

/// `30s`, `15m`, `2h`, `7d`, or combinations such as `1h30m`.
pub fn parse_duration(text: &str) -> Result<SignedDuration, String> {
    let mut total: i64 = 0;
    let mut number = String::new();
    let t = text.trim();
    if t.is_empty() {
        return Err("empty duration".into());
    }
    for c in t.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            ' ' => continue,
            _ => return Err(format!("`{text}`: unknown unit `{c}` (use s, m, h, d)")),
        };
        let n: i64 = number
            .parse()
            .map_err(|_| format!("`{text}`: a number must come before `{c}`"))?;
        total = total
            .checked_add(
                n.checked_mul(unit)
                    .ok_or_else(|| format!("`{text}` is too long"))?,
            )
            .ok_or_else(|| format!("`{text}` is too long"))?;
        number.clear();
    }
    if !number.is_empty() {
        return Err(format!("`{text}`: `{number}` has no unit (use s, m, h, d)"));
    }
    Ok(SignedDuration::from_secs(total))
}

fn duration(
    setting: &'static str,
    text: &str,
    min: SignedDuration,
) -> Result<SignedDuration, ConfigError> {
    let d = parse_duration(text).map_err(|e| bad(setting, e))?;
    if d < min {
        return Err(bad(
            setting,
            format!("`{text}` is shorter than the minimum of {}s", min.as_secs()),
        ));
    }
    Ok(d)
}

fn positive(setting: &'static str, v: f64) -> Result<f64, ConfigError> {
    if v.is_finite() && v > 0.0 {
        Ok(v)
    } else {
        Err(bad(setting, format!("{v} must be a positive number")))
    }
}

/// The largest `MIGRATOR_MAX_CUTOVERS` (and `MIGRATOR_MAX_PREPARATIONS`) accepted: more at once
/// than the RDS budget can look after is the queue at the rate limiter that admission exists to
/// avoid.
const MAX_CUTOVERS_LIMIT: usize = 1000;

/// A limit on turns (`agent::turns`): 1 to [`MAX_CUTOVERS_LIMIT`].
fn turn_limit(setting: &'static str, v: usize) -> Result<usize, ConfigError> {
    if (1..=MAX_CUTOVERS_LIMIT).contains(&v) {
        Ok(v)
    } else {
        Err(bad(
            setting,
            format!("{v} is not between 1 and {MAX_CUTOVERS_LIMIT}"),
        ))
    }
}

/// The largest `MIGRATOR_MAX_IDLE_CONNECTIONS` accepted: RDS's own sessions are a handful; more
/// than that allowed would let client sessions through the proof.
const MAX_IDLE_CONNECTIONS_LIMIT: u32 = 10;

/// CloudWatch accepts 1, 5, 10, 30 s (high resolution) or a multiple of 60 s.
fn metric_period(text: &str) -> Result<SignedDuration, ConfigError> {
    let setting = "MIGRATOR_METRIC_PERIOD (--metric-period)";
    let d = duration(setting, text, SignedDuration::from_secs(1))?;
    let s = d.as_secs();
    if [1, 5, 10, 30].contains(&s) || s % 60 == 0 {
        Ok(d)
    } else {
        Err(bad(
            setting,
            format!("`{text}`: CloudWatch periods are 1, 5, 10, 30 s or a multiple of 60 s"),
        ))
    }
}

/// RDS tag keys: letters, digits, spaces and `_ . : / = + - @`, at most 128 characters, not
/// starting with `aws:`.
fn valid_tag_prefix(p: &str) -> bool {
    !p.is_empty()
        && p.len() <= 100
        && !p.to_ascii_lowercase().starts_with("aws:")
        && p.chars()
            .all(|c| c.is_ascii_alphanumeric() || " _.:/=+-@".contains(c))
}

impl PolicyArgs {
    pub fn policy(&self) -> Result<Policy, ConfigError> {
        if !valid_tag_prefix(&self.tag_prefix) {
            return Err(bad(
                "MIGRATOR_TAG_PREFIX (--tag-prefix)",
                format!("`{}` is not a valid RDS tag key prefix", self.tag_prefix),
            ));
        }
        let cutover: CutoverPolicy = self
            .cutover
            .parse()
            .map_err(|e| bad("MIGRATOR_CUTOVER (--cutover)", e))?;
        let router = self
            .router
            .parse()
            .map_err(|e| bad("MIGRATOR_ROUTER (--router)", e))?;
        let second = SignedDuration::from_secs(1);
        let defaults = Policy::default();
        Ok(Policy {
            tag_prefix: self.tag_prefix.clone(),
            cutover,
            router,
            max_slot_lag_bytes: positive(
                "MIGRATOR_MAX_SLOT_LAG_MIB (--max-slot-lag-mib)",
                self.max_slot_lag_mib,
            )? * 1024.0
                * 1024.0,
            max_replica_lag_s: positive(
                "MIGRATOR_MAX_REPLICA_LAG_SECONDS (--max-replica-lag-seconds)",
                self.max_replica_lag_seconds,
            )?,
            lag_sustain: duration(
                "MIGRATOR_LAG_SUSTAIN (--lag-sustain)",
                &self.lag_sustain,
                SignedDuration::ZERO,
            )?,
            min_free_storage_bytes: positive(
                "MIGRATOR_MIN_FREE_STORAGE_GIB (--min-free-storage-gib)",
                self.min_free_storage_gib,
            )? * 1024.0
                * 1024.0
                * 1024.0,
            write_unavailability_budget: duration(
                "MIGRATOR_WRITE_BUDGET (--write-budget)",
                &self.write_budget,
                10 * second,
            )?,
            soak: duration("MIGRATOR_SOAK (--soak)", &self.soak, SignedDuration::ZERO)?,
            retention: duration(
                "MIGRATOR_RETENTION (--retention)",
                &self.retention,
                SignedDuration::ZERO,
            )?,
            allow_disable_deletion_protection: self.allow_disable_deletion_protection,
            restore_source_groups_after_cutover: self.restore_source_groups,
            metric_period: metric_period(&self.metric_period)?,
            slow_poll: duration("MIGRATOR_SLOW_POLL (--slow-poll)", &self.slow_poll, second)?,
            fast_poll: duration("MIGRATOR_FAST_POLL (--fast-poll)", &self.fast_poll, second)?,
            max_idle_connections: if self.max_idle_connections <= MAX_IDLE_CONNECTIONS_LIMIT {
                f64::from(self.max_idle_connections)
            } else {
                return Err(bad(
                    "MIGRATOR_MAX_IDLE_CONNECTIONS (--max-idle-connections)",
                    format!(
                        "{} is more than {MAX_IDLE_CONNECTIONS_LIMIT}: with that many sessions allowed the proof no longer says the source is fenced",
                        self.max_idle_connections
                    ),
                ));
            },
            max_cutovers: turn_limit("MIGRATOR_MAX_CUTOVERS (--max-cutovers)", self.max_cutovers)?,
            max_preparations: turn_limit(
                "MIGRATOR_MAX_PREPARATIONS (--max-preparations)",
                self.max_preparations,
            )?,
            ..defaults
        })
    }
}

impl AwsArgs {
    /// The three resources `run` cannot do without.
    pub fn require(&self) -> Result<(String, String, String), ConfigError> {
        let need = |v: &Option<String>, setting: &'static str| {
            v.clone()
                .filter(|s| !s.trim().is_empty())
                .ok_or_else(|| bad(setting, "is required (set the variable or pass the flag)"))
        };
        Ok((
            need(&self.queue_url, "MIGRATOR_QUEUE_URL (--queue-url)")?,
            need(&self.topic_arn, "MIGRATOR_TOPIC_ARN (--topic-arn)")?,
            need(&self.table, "MIGRATOR_TABLE (--table)")?,
        ))
    }

    pub fn shutdown_budget(&self) -> Result<SignedDuration, ConfigError> {
        duration(
            "MIGRATOR_SHUTDOWN_BUDGET (--shutdown-budget)",
            &self.shutdown_budget,
            SignedDuration::ZERO,
        )
    }

    /// How long a lease lasts unless renewed, 5 s to 2 min.
    pub fn lease(&self) -> Result<SignedDuration, ConfigError> {
        let setting = "MIGRATOR_LEASE (--lease)";
        let (min, max) = crate::agent::lease::LEASE_TTL_RANGE;
        let d = duration(setting, &self.lease, min)?;
        if d > max {
            return Err(bad(
                setting,
                "is longer than 2m: a dead agent's cutover would wait that long",
            ));
        }
        Ok(d)
    }

    /// Whole seconds, 6 s (three extensions a step can count on) to SQS's 12 h maximum.
    pub fn message_visibility_s(&self) -> Result<u32, ConfigError> {
        let setting = "MIGRATOR_MESSAGE_VISIBILITY (--message-visibility)";
        let d = duration(
            setting,
            &self.message_visibility,
            SignedDuration::from_secs(6),
        )?;
        if d > SignedDuration::from_hours(12) {
            return Err(bad(setting, "SQS allows at most 12h"));
        }
        Ok(d.as_secs() as u32)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        positive(
            "MIGRATOR_RDS_RATE_LIMIT (--rds-rate-limit)",
            self.rds_rate_limit,
        )?;
        if self.concurrency == 0 {
            return Err(bad(
                "MIGRATOR_CONCURRENCY (--concurrency)",
                "must be at least 1",
            ));
        }
        self.shutdown_budget()?;
        self.message_visibility_s()?;
        self.lease()?;
        if let Some(u) = &self.endpoint_url
            && !(u.starts_with("https://") || u.starts_with("http://"))
        {
            return Err(bad(
                "AWS_ENDPOINT_URL (--endpoint-url)",
                format!("`{u}` is not an http(s) URL"),
            ));
        }
        self.companion_ca()?;
        check_router(
            self.webhook_url.as_ref(),
            self.smoke_test_url.as_ref(),
            self.webhook_secret.as_ref(),
        )
    }

    /// The companions' CA bundle (`MIGRATOR_COMPANION_CA_FILE`), read and checked to hold at
    /// least one PEM certificate.
    pub fn companion_ca(&self) -> Result<Option<Vec<u8>>, ConfigError> {
        const SETTING: &str = "MIGRATOR_COMPANION_CA_FILE (--companion-ca-file)";
        let Some(path) = &self.companion_ca_file else {
            return Ok(None);
        };
        let pem =
            std::fs::read(path).map_err(|e| bad(SETTING, format!("cannot read `{path}`: {e}")))?;
        if reqwest::Certificate::from_pem_bundle(&pem).map_or(true, |c| c.is_empty()) {
            return Err(bad(SETTING, format!("`{path}` holds no PEM certificate")));
        }
        Ok(Some(pem))
    }
}

mod urls;
pub use urls::{Secret, check_private_url, check_router, url_origin};

#[cfg(test)]
mod tests;
