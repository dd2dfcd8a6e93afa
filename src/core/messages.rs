//! The words people read: what each phase change and alert says, and what to do next.

use super::migration::{Migration, RollbackCause};
use super::notification::{Notification, Severity};
use super::phase::Phase;
use super::policy::{CutoverPolicy, Policy};

fn base(m: &Migration, event: &str, severity: Severity, title: String) -> Notification {
    let mut related = vec![m.source_arn.clone()];
    if m.plan.is_some() {
        related.push(m.names.cluster.clone());
    }
    Notification {
        migration: m.id.to_string(),
        db_instance: m.source_identifier.clone(),
        phase: m.phase,
        severity,
        event: event.to_string(),
        title,
        description: String::new(),
        next_steps: Vec::new(),
        related_resources: related,
    }
}

/// The notification for entering `m.phase` from `from`.
pub fn phase_change(
    m: &Migration,
    from: Phase,
    detail: &str,
    event: &str,
    policy: &Policy,
) -> Notification {
    let p = &policy.tag_prefix;
    let cluster = &m.names.cluster;
    let (severity, title, text, steps): (Severity, String, String, Vec<String>) = match m.phase {
        Phase::Requested => (Severity::Info, "migration requested".into(), String::new(), vec![]),
        Phase::Preflight => (
            Severity::Info,
            "preflight checks started".into(),
            "Checking the instance, its parameters, replicas, encryption and the account's quotas. Nothing is changed.".into(),
            vec![],
        ),
        Phase::Preparing => (
            // Warnings (a mapped instance class, a dropped parameter, short backups) are
            // decisions someone should see: a Slack filter on severity must catch them.
            match m.preflight.as_ref().map_or(0, |r| r.warnings()) {
                0 => Severity::Info,
                _ => Severity::Warning,
            },
            match m.preflight.as_ref().map_or(0, |r| r.warnings()) {
                0 => "preflight passed; preparing the target".into(),
                1 => "preflight passed with 1 warning; preparing the target".into(),
                n => format!("preflight passed with {n} warnings; preparing the target"),
            },
            "Creating the Aurora parameter groups and the quarantine security group.".into(),
            vec![format!("To stop now, tag the instance {p}:abort=true")],
        ),
        Phase::CreatingReplica => (
            Severity::Info,
            "creating the Aurora read replica".into(),
            format!("Creating cluster {cluster} as a read replica of the instance. AWS takes from minutes to hours per TiB."),
            vec![],
        ),
        Phase::Replicating => (
            Severity::Info,
            "replica created; waiting for it to catch up".into(),
            format!(
                "The replica streams WAL from the source. The cutover waits until the lag stays within {:.0} MiB and {:.0} s for {}.",
                policy.max_slot_lag_bytes / (1024.0 * 1024.0),
                policy.max_replica_lag_s,
                super::machine::human(policy.lag_sustain)
            ),
            vec![],
        ),
        Phase::AwaitingCutover => {
            let how = match &policy.cutover {
                CutoverPolicy::Automatic => "The cutover starts at once.".to_string(),
                CutoverPolicy::ManualApproval => format!(
                    "The cutover waits for approval: tag the instance {p}:approve=true when writes may stop for a few minutes."
                ),
                CutoverPolicy::Window(w) => format!("The cutover starts in the next window {w} (UTC)."),
            };
            (
                Severity::Info,
                "replica caught up; ready for cutover".into(),
                how,
                vec![
                    format!("Approve: tag {p}:approve=true"),
                    format!("Abort: tag {p}:abort=true"),
                ],
            )
        }
        Phase::Paused => (
            Severity::Warning,
            "held by the fleet-wide pause".into(),
            "The replica keeps streaming; the cutover waits until the pause is lifted.".into(),
            vec!["Lift it with `aurora-migrator resume`".into()],
        ),
        Phase::Quiescing => (
            Severity::Warning,
            "cutover started: writes to the source stop now".into(),
            format!(
                "The source gets a security group with no rules and {}, so no session survives. If promotion has not started within {}, the agent rolls back by itself.",
                if m.database_path() {
                    "its client sessions are ended (database access)"
                } else {
                    "is rebooted"
                },
                super::machine::human(policy.write_unavailability_budget)
            ),
            vec![],
        ),
        Phase::Draining => {
            let cdc = m.plan.as_ref().is_some_and(|pl| !pl.cdc_consumers.is_empty());
            let mut steps = vec![];
            if cdc {
                steps.push(format!(
                    "CDC consumers: read your slots to the end, then tag the source {p}:cdc-drained=true and stop"
                ));
            }
            if m.database_path() {
                (
                    Severity::Warning,
                    "sessions ended; proving the replica has every write".into(),
                    "Waiting for no client session on the source, a fence written after the last one, and Aurora's replay position at or past it.".into(),
                    steps,
                )
            } else {
                (
                    Severity::Warning,
                    "source rebooted; proving the replica has every write".into(),
                    "Waiting for the restart event, a replication-slot lag of 0 after it, no connections and a replica lag of 0.".into(),
                    steps,
                )
            }
        }
        Phase::Promoting => (
            Severity::Warning,
            "catch-up proven; promoting Aurora".into(),
            format!("Every write acknowledged by the source is on {cluster}. Promoting it to a standalone cluster."),
            vec![],
        ),
        Phase::Routing => (
            Severity::Warning,
            "Aurora promoted; routing traffic".into(),
            "Telling the data access layer to send traffic to the Aurora writer.".into(),
            vec![],
        ),
        Phase::Verifying => (
            Severity::Info,
            "cutover complete: traffic is on Aurora".into(),
            format!(
                "Comparing Aurora's KPIs with the source's baseline for {}. The source stays quarantined.",
                super::machine::human(policy.soak)
            ),
            vec![
                "Check your application's error rates".into(),
                format!("To go back (writes made on Aurora will need reconciling): tag {p}:rollback=approve"),
            ],
        ),
        Phase::Decommissioning => (
            Severity::Info,
            "verification passed".into(),
            format!(
                "The source is kept for {}, then a final snapshot is taken and it is deleted.",
                super::machine::human(policy.retention)
            ),
            vec![format!("To go back before then: tag {p}:rollback=approve")],
        ),
        Phase::Completed => (
            Severity::Info,
            "migration completed".into(),
            format!("{} now runs on Aurora cluster {cluster}.", m.source_identifier),
            vec![],
        ),
        Phase::Failed => {
            let mut steps = vec![];
            if m.progress.route_requested_at.is_some() {
                steps.push("Traffic may already be on Aurora: check the data access layer".to_string());
                steps.push(format!("To go back to the source: tag {p}:rollback=approve"));
            } else {
                steps.push(format!("Fix the cause, then tag the instance {p}=start to try again"));
            }
            (Severity::Error, "migration failed".into(), String::new(), steps)
        }
        Phase::RollingBack => {
            let severity = rollback_severity(m);
            (
                severity,
                "rolling back".into(),
                if m.progress.route_requested_at.is_some() {
                    "Fencing off Aurora, then giving the source its security groups back and routing traffic to it.".into()
                } else {
                    "Giving the source its security groups back and deleting the replica. Nothing is lost: Aurora never took writes.".into()
                },
                vec![],
            )
        }
        Phase::RolledBack => {
            let severity = rollback_severity(m);
            (
                severity,
                "rolled back; the source takes writes again".into(),
                String::new(),
                vec![format!("Fix the cause, then tag the instance {p}=start to try again")],
            )
        }
        Phase::Aborted => (
            Severity::Warning,
            "aborted".into(),
            "The migration was aborted by the owners; what was created is removed.".into(),
            vec![format!("Tag the instance {p}=start to try again")],
        ),
    };
    let mut n = base(m, event, severity, title);
    let mut description = text;
    if !detail.is_empty() {
        if !description.is_empty() {
            description.push_str("\n\n");
        }
        description.push_str(detail);
    }
    if let Some(err) = m
        .last_error
        .as_ref()
        .filter(|_| severity == Severity::Error)
        && !description.contains(err.as_str())
    {
        description.push_str(&format!("\n\nCause: {err}"));
    }
    if description.is_empty() {
        description = format!("{} → {}", from, m.phase);
    }
    n.description = description;
    n.next_steps = steps;
    n
}

pub fn alert(
    m: &Migration,
    name: &str,
    severity: Severity,
    title: &str,
    detail: &str,
    _policy: &Policy,
) -> Notification {
    let mut n = base(m, name, severity, title.to_string());
    n.description = detail.to_string();
    n
}

/// A rollback after a failure is an error; one that was asked for (abort, approval) a warning.
fn rollback_severity(m: &Migration) -> Severity {
    match m.rollback.as_ref().map(|r| &r.cause) {
        Some(RollbackCause::Failure(_)) => Severity::Error,
        _ => Severity::Warning,
    }
}
