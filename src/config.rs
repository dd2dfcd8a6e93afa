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
    /// lost task) is seen again: short, because during a cutover every second counts.
    #[arg(
        long,
        env = "MIGRATOR_MESSAGE_VISIBILITY",
        default_value = "30s",
        global = true
    )]
    pub message_visibility: String,
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
        default_value = "aurora-migration",
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
}

impl Default for PolicyArgs {
    fn default() -> Self {
        PolicyArgs {
            tag_prefix: "aurora-migration".into(),
            cutover: "manual".into(),
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

/// A setting's value that is a secret (a signing key, a URL that may embed a token): its
/// `Debug` is `<redacted>` and it has no `Display`, so printing a configuration never shows it;
/// [`Secret::expose`] is the one way in.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Secret(s)
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Secret(s.to_string())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Where a URL points, for messages: `scheme://host[:port]`, never its path, query or userinfo
/// (they may carry a token).
pub fn url_origin(url: &str) -> String {
    match reqwest::Url::parse(url.trim()) {
        Ok(u) => match (u.host_str(), u.port()) {
            (Some(h), Some(p)) => format!("{}://{h}:{p}", u.scheme()),
            (Some(h), None) => format!("{}://{h}", u.scheme()),
            (None, _) => format!("a `{}:` URL without a host", u.scheme()),
        },
        Err(_) => "<not a URL>".to_string(),
    }
}

/// 127.0.0.0/8, ::1 or `localhost`.
fn is_loopback(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    match bare.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => bare.eq_ignore_ascii_case("localhost"),
    }
}

/// A URL the agent sends secrets-bearing requests to (the webhook, the smoke test): `https://`,
/// or `http://` to a loopback host (tests, a sidecar). The error names the setting and shows the
/// URL's scheme and host only.
pub fn check_private_url(setting: &'static str, url: &str) -> Result<(), ConfigError> {
    let u =
        reqwest::Url::parse(url.trim()).map_err(|e| bad(setting, format!("is not a URL ({e})")))?;
    let Some(host) = u.host_str() else {
        return Err(bad(setting, "is not an http(s) URL with a host"));
    };
    match u.scheme() {
        "https" => Ok(()),
        "http" if is_loopback(host) => Ok(()),
        "http" => Err(bad(
            setting,
            format!(
                "`{}`: must be https:// (http:// only to a loopback host: 127.0.0.0/8, ::1, localhost)",
                url_origin(url)
            ),
        )),
        other => Err(bad(setting, format!("a `{other}:` URL: must be https://"))),
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
        let second = SignedDuration::from_secs(1);
        let defaults = Policy::default();
        Ok(Policy {
            tag_prefix: self.tag_prefix.clone(),
            cutover,
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
        if let Some(u) = &self.endpoint_url
            && !(u.starts_with("https://") || u.starts_with("http://"))
        {
            return Err(bad(
                "AWS_ENDPOINT_URL (--endpoint-url)",
                format!("`{u}` is not an http(s) URL"),
            ));
        }
        check_router(
            self.webhook_url.as_ref(),
            self.smoke_test_url.as_ref(),
            self.webhook_secret.as_ref(),
        )
    }
}

/// The webhook and smoke-test settings: each URL private ([`check_private_url`]), and the
/// signing secret present when either is set. Also checked by the router itself.
pub fn check_router(
    webhook_url: Option<&Secret>,
    smoke_test_url: Option<&Secret>,
    secret: Option<&Secret>,
) -> Result<(), ConfigError> {
    const SECRET: &str = "MIGRATOR_WEBHOOK_SECRET (--webhook-secret)";
    for (setting, url) in [
        ("MIGRATOR_WEBHOOK_URL (--webhook-url)", webhook_url),
        ("MIGRATOR_SMOKE_TEST_URL (--smoke-test-url)", smoke_test_url),
    ] {
        let Some(url) = url else { continue };
        check_private_url(setting, url.expose())?;
        if secret.is_none_or(|s| s.expose().trim().is_empty()) {
            let (name, _) = setting.split_once(' ').unwrap_or((setting, ""));
            return Err(bad(
                SECRET,
                format!("is required when {name} is set (every request to it is signed)"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_in_every_unit_and_reject_junk() {
        assert_eq!(parse_duration("30s"), Ok(SignedDuration::from_secs(30)));
        assert_eq!(parse_duration("1h30m"), Ok(SignedDuration::from_mins(90)));
        assert_eq!(parse_duration("7d"), Ok(SignedDuration::from_hours(168)));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("ten minutes").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn a_bad_cutover_names_the_setting() {
        let args = PolicyArgs {
            cutover: "whenever".into(),
            ..PolicyArgs::default()
        };
        let e = args.policy().unwrap_err();
        assert!(
            e.to_string().starts_with("MIGRATOR_CUTOVER (--cutover): "),
            "{e}"
        );
    }

    #[test]
    fn defaults_match_the_core_policy() {
        let p = PolicyArgs::default().policy().unwrap();
        let d = Policy::default();
        assert_eq!(p, d);
    }

    #[test]
    fn missing_queue_names_the_setting() {
        let e = AwsArgs::default().require().unwrap_err();
        assert_eq!(e.setting, "MIGRATOR_QUEUE_URL (--queue-url)");
    }

    #[test]
    fn no_otlp_endpoint_means_no_export() {
        assert_eq!(TelemetryArgs::default().otlp_with(None), Ok(None));
        assert_eq!(
            TelemetryArgs::default().otlp_with(Some(" ".into())),
            Ok(None)
        );
    }

    #[test]
    fn the_migrator_endpoint_wins_over_the_standard_one() {
        let args = TelemetryArgs {
            otlp_endpoint: Some("http://localhost:4318".into()),
            otlp_protocol: "http/json".into(),
            otlp_metrics_interval: "10s".into(),
        };
        let s = args
            .otlp_with(Some("http://elsewhere:4318".into()))
            .unwrap()
            .unwrap();
        assert_eq!(s.endpoint, "http://localhost:4318");
        assert_eq!(s.protocol, OtlpProtocol::HttpJson);
        assert_eq!(s.metrics_interval, std::time::Duration::from_secs(10));
        let standard = TelemetryArgs::default()
            .otlp_with(Some("http://collector:4318".into()))
            .unwrap()
            .unwrap();
        assert_eq!(standard.endpoint, "http://collector:4318");
        assert_eq!(standard.protocol, OtlpProtocol::HttpProtobuf);
    }

    #[test]
    fn bad_telemetry_settings_name_the_setting() {
        let protocol = TelemetryArgs {
            otlp_protocol: "grpc".into(),
            ..TelemetryArgs::default()
        };
        assert_eq!(
            protocol.otlp_with(None).unwrap_err().setting,
            "MIGRATOR_OTLP_PROTOCOL (--otlp-protocol)"
        );
        let interval = TelemetryArgs {
            otlp_metrics_interval: "0s".into(),
            ..TelemetryArgs::default()
        };
        assert_eq!(
            interval.otlp_with(None).unwrap_err().setting,
            "MIGRATOR_OTLP_METRICS_INTERVAL (--otlp-metrics-interval)"
        );
        for endpoint in [
            "localhost:4318",
            "ftp://collector",
            "http://c:4318/v1/traces",
        ] {
            let args = TelemetryArgs {
                otlp_endpoint: Some(endpoint.into()),
                ..TelemetryArgs::default()
            };
            assert_eq!(
                args.otlp_with(None).unwrap_err().setting,
                "MIGRATOR_OTLP_ENDPOINT (--otlp-endpoint)",
                "{endpoint}"
            );
        }
        assert_eq!(
            TelemetryArgs::default()
                .otlp_with(Some("not a url".into()))
                .unwrap_err()
                .setting,
            "OTEL_EXPORTER_OTLP_ENDPOINT"
        );
    }

    #[test]
    fn a_tag_prefix_with_forbidden_characters_is_refused() {
        let args = PolicyArgs {
            tag_prefix: "migrate#now".into(),
            ..PolicyArgs::default()
        };
        assert_eq!(
            args.policy().unwrap_err().setting,
            "MIGRATOR_TAG_PREFIX (--tag-prefix)"
        );
    }

    fn with_router(webhook: Option<&str>, smoke: Option<&str>, secret: Option<&str>) -> AwsArgs {
        AwsArgs {
            webhook_url: webhook.map(Secret::from),
            smoke_test_url: smoke.map(Secret::from),
            webhook_secret: secret.map(Secret::from),
            shutdown_budget: "25s".into(),
            message_visibility: "30s".into(),
            rds_rate_limit: 5.0,
            concurrency: 64,
            ..AwsArgs::default()
        }
    }

    #[test]
    fn router_urls_must_be_https_or_loopback_http() {
        for url in [
            "https://dal.example.com/hooks/T0SECRET?token=abc",
            "https://dal.example.com:8443/",
            "http://127.0.0.1:8080/route",
            "http://127.9.9.9/route",
            "http://[::1]:9000/route",
            "http://localhost:9000/route",
            "http://LOCALHOST/route",
        ] {
            assert_eq!(
                with_router(Some(url), Some(url), Some("s")).validate(),
                Ok(()),
                "{url}"
            );
        }
        for (url, shown) in [
            (
                "http://dal.example.com/hooks/T0SECRET?token=abc",
                Some("http://dal.example.com"),
            ),
            (
                "http://user:T0SECRET@10.0.0.8:8080/hooks?token=abc",
                Some("http://10.0.0.8:8080"),
            ),
            (
                "http://localhost.example.com/hooks/T0SECRET?token=abc",
                Some("http://localhost.example.com"),
            ),
            ("ftp://dal.example.com/hooks/T0SECRET?token=abc", None),
            ("dal.example.com/hooks/T0SECRET?token=abc", None),
            ("mailto:T0SECRET@example.com?token=abc", None),
        ] {
            for (args, setting) in [
                (
                    with_router(Some(url), None, Some("s")),
                    "MIGRATOR_WEBHOOK_URL (--webhook-url)",
                ),
                (
                    with_router(None, Some(url), Some("s")),
                    "MIGRATOR_SMOKE_TEST_URL (--smoke-test-url)",
                ),
            ] {
                let e = args.validate().unwrap_err();
                assert_eq!(e.setting, setting, "{url}");
                let text = e.to_string();
                assert!(text.starts_with(&format!("{setting}: ")), "{text}");
                for secret in ["T0SECRET", "token", "hooks", "user"] {
                    assert!(!text.contains(secret), "`{secret}` shown: {text}");
                }
                if let Some(origin) = shown {
                    assert!(text.contains(origin), "{text}");
                }
            }
        }
    }

    #[test]
    fn a_router_url_needs_the_webhook_secret() {
        for (args, names) in [
            (
                with_router(Some("https://dal.example.com/x"), None, None),
                "MIGRATOR_WEBHOOK_URL",
            ),
            (
                with_router(None, Some("https://dal.example.com/x"), Some("  ")),
                "MIGRATOR_SMOKE_TEST_URL",
            ),
        ] {
            let e = args.validate().unwrap_err();
            assert_eq!(e.setting, "MIGRATOR_WEBHOOK_SECRET (--webhook-secret)");
            assert!(e.problem.contains(names), "{e}");
        }
        assert_eq!(with_router(None, None, None).validate(), Ok(()));
    }

    #[test]
    fn secrets_never_show_in_debug_output_or_help() {
        let args = with_router(
            Some("https://dal.example.com/hooks/T0SECRETPATH"),
            Some("https://dal.example.com/smoke/T0SECRETSMOKE"),
            Some("whsec_T0SECRETKEY"),
        );
        let printed = format!("{args:?}");
        for secret in ["T0SECRETPATH", "T0SECRETSMOKE", "T0SECRETKEY"] {
            assert!(!printed.contains(secret), "{printed}");
        }
        // `--help` shows the environment's values unless told not to.
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            aws: AwsArgs,
        }
        let command = <Cli as clap::CommandFactory>::command();
        for id in ["webhook_url", "smoke_test_url", "webhook_secret"] {
            let arg = command
                .get_arguments()
                .find(|a| a.get_id() == id)
                .unwrap_or_else(|| panic!("{id}"));
            assert!(arg.is_hide_env_values_set(), "{id}");
        }
    }
}
