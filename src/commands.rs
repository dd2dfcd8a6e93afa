//! The operator commands, written against the ports so that they run the same against AWS, the
//! emulator or the simulator.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use jiff::Timestamp;

use crate::core::observation::{Observed, SourceInstance};
use crate::core::readiness::ReadinessRow;
use crate::core::{Policy, preflight, tags};
use crate::ports::{PortError, Rds, StateStore, World};

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("no RDS instance named `{0}`")]
    NoInstance(String),
    /// `ack` names a check that cannot be acknowledged: a typo would write a tag the preflight
    /// never reads, and the operator would wait for an acknowledgement that never counts.
    #[error(
        "`{0}` is not a check the owners may acknowledge; these are: {known}",
        known = preflight::acknowledgeable_checks().collect::<Vec<_>>().join(", ")
    )]
    NotAcknowledgeable(String),
    #[error(transparent)]
    Port(#[from] PortError),
}

/// `plan <instance>`: the preflight report and what would be created. Changes nothing.
pub async fn plan<W: World>(
    world: &W,
    policy: &Policy,
    instance: &str,
) -> Result<String, CommandError> {
    let source = existing_source(world, instance).await?;
    let inputs = world.rds().preflight_inputs(&source).await?;
    let (report, plan) = preflight::run(&source, &inputs, policy);
    let mut out = report.render(&policy.tag_prefix);
    if let Some(plan) = plan {
        let names = crate::core::naming::target_names(&source.identifier, &source.resource_id, 1);
        let _ = writeln!(
            out,
            "\nPlan: cluster {} (Aurora PostgreSQL {}, {}), writer {} ({}), cluster parameter group {} ({} parameters), instance parameter group {} ({} parameters), quarantine group {}, router {}",
            names.cluster,
            plan.engine_version,
            plan.family,
            names.writer,
            plan.instance_class,
            plan.cluster_parameter_group,
            plan.cluster_parameters.len(),
            plan.instance_parameter_group,
            plan.instance_parameters.len(),
            names.quarantine_group,
            plan.router,
        );
    }
    Ok(out)
}

/// `plan --all`: the fleet readiness report (`core::readiness`), one row per RDS for PostgreSQL
/// instance of the Region. Read-only, as `plan <instance>`: one paged DescribeDBInstances (the
/// fleet snapshot), then each instance's preflight reads, every RDS request through the
/// adapter's rate limiter. Instances are assessed one after another: the RDS budget, not
/// latency, bounds the run (six RDS requests an instance when every answer fits a page; at the
/// default 5 a second, 500 instances take about 10 minutes). An instance whose preflight inputs cannot be read gets an
/// `error` row with the reason and the report goes on; only a failed listing fails the command.
pub async fn plan_all<W: World>(
    world: &W,
    policy: &Policy,
) -> Result<Vec<ReadinessRow>, CommandError> {
    let sources = world.rds().list_sources().await?;
    let mut rows = Vec::with_capacity(sources.len());
    for source in &sources {
        let row = match world.rds().preflight_inputs(source).await {
            Ok(inputs) => ReadinessRow::assess(source, &inputs, policy),
            Err(e) => {
                tracing::warn!(instance = %source.identifier, error = %e, "preflight inputs unreadable: an error row");
                ReadinessRow::error(source, e.to_string())
            }
        };
        rows.push(row);
    }
    Ok(rows)
}

/// `status`: every migration in the table, finished ones included.
pub async fn status<W: World>(world: &W, now: Timestamp) -> Result<String, CommandError> {
    let mut records = world.store().list().await?;
    records.sort_by_key(|a| a.created_at);
    let mut out = format!(
        "{:<32} {:>7} {:<16} {:>10} {:>10}  {:<40}  {}\n",
        "SOURCE", "ATTEMPT", "PHASE", "AGE", "IN PHASE", "TRAFFIC", "LAST ERROR"
    );
    for m in &records {
        let _ = writeln!(
            out,
            "{:<32} {:>7} {:<16} {:>10} {:>10}  {:<40}  {}",
            m.source_identifier,
            m.id.attempt,
            m.phase.as_str(),
            crate::core::machine::human(now.duration_since(m.created_at)),
            crate::core::machine::human(now.duration_since(m.phase_entered_at)),
            traffic(m),
            m.last_error.as_deref().unwrap_or("-"),
        );
    }
    if records.is_empty() {
        out.push_str("(no migrations)\n");
    }
    Ok(out)
}

/// Where the migration's traffic points, as far as the agent has routed it, and through which
/// router.
pub fn traffic(m: &crate::core::Migration) -> String {
    let p = &m.progress;
    let router = m
        .plan
        .as_ref()
        .map(|p| p.router.clone())
        .unwrap_or_default();
    let after_cutover = m.rollback.as_ref().is_some_and(|r| r.after_cutover);
    if after_cutover {
        if p.routed_back_at.is_some() {
            format!("source (routed back, {router})")
        } else {
            format!("Aurora, routing back ({router})")
        }
    } else if p.routed_at.is_some() {
        format!("Aurora ({router})")
    } else if p.route_requested_at.is_some() {
        format!("moving to Aurora ({router})")
    } else {
        "source".to_string()
    }
}

/// The control tags an operator can set from the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Control {
    Start,
    Approve,
    Abort,
    Rollback,
    Acknowledge(String),
}

impl Control {
    pub fn tag(&self, prefix: &str) -> (String, String) {
        match self {
            Control::Start => (prefix.to_string(), tags::START.to_string()),
            Control::Approve => (tags::key(prefix, "approve"), "true".into()),
            Control::Abort => (tags::key(prefix, "abort"), "true".into()),
            Control::Rollback => (tags::key(prefix, "rollback"), "approve".into()),
            Control::Acknowledge(check) => {
                (tags::key(prefix, &format!("ack-{check}")), "true".into())
            }
        }
    }
}

/// `start`, `approve`, `abort`, `rollback`, `ack`: set the control tag on the instance. The
/// agent reacts to the tag (through events or the resync), exactly as if a person had set it.
pub async fn set_control<W: World>(
    world: &W,
    policy: &Policy,
    instance: &str,
    control: &Control,
) -> Result<String, CommandError> {
    if let Control::Acknowledge(check) = control
        && !preflight::may_be_acknowledged(check)
    {
        return Err(CommandError::NotAcknowledgeable(check.clone()));
    }
    let source = existing_source(world, instance).await?;
    let (key, mut value) = control.tag(&policy.tag_prefix);
    if matches!(control, Control::Acknowledge(check) if check == preflight::RESTORED_COPY) {
        // A restored copy's acknowledgement names the copy: a `true` would travel on with its
        // tags to its own snapshots and let a restore of it through (`core::preflight`).
        value = source.resource_id.clone();
    }
    let mut t = BTreeMap::new();
    t.insert(key.clone(), value.clone());
    world.rds().set_tags(&source.arn, &t).await?;
    Ok(format!("tagged {} {key}={value}", source.identifier))
}

/// `pause` / `resume`: the fleet-wide switch that holds every migration at the cutover gate.
pub async fn set_paused<W: World>(world: &W, paused: bool) -> Result<String, CommandError> {
    world.store().set_fleet_paused(paused).await?;
    Ok(if paused {
        "fleet paused: migrations wait at the cutover gate".to_string()
    } else {
        "fleet resumed".to_string()
    })
}

/// The instance a command names, or the error that says RDS does not know it.
async fn existing_source<W: World>(
    world: &W,
    instance: &str,
) -> Result<SourceInstance, CommandError> {
    match world.rds().describe_source(instance).await? {
        Observed::Present(source) => Ok(source),
        _ => Err(CommandError::NoInstance(instance.to_string())),
    }
}
