//! The safety rules, as code. `step` checks them on every decision in debug builds; the property
//! tests and the simulator check them on every step they take.

use std::fmt;

use super::action::Action;
use super::machine::Decision;
use super::migration::Migration;
use super::notification::Severity;
use super::observation::Observation;
use super::phase::Phase;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation(pub String);

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(Violation(format!($($msg)+)));
        }
    };
}

/// Phase changes the machine may make in one step.
pub fn transition_allowed(from: Phase, to: Phase) -> bool {
    use Phase::*;
    if from == to {
        return true;
    }
    if from.is_terminal() {
        // Only an approved rollback after cutover leaves a terminal phase.
        return from == Failed && to == RollingBack;
    }
    let forward = matches!(
        (from, to),
        (Requested, Preflight)
            | (Preflight, Preparing)
            | (Preparing, CreatingReplica)
            | (CreatingReplica, Replicating)
            | (Replicating, AwaitingCutover)
            | (AwaitingCutover, Quiescing)
            | (AwaitingCutover, Paused)
            | (Paused, AwaitingCutover)
            | (Quiescing, Draining)
            | (Draining, Promoting)
            | (Promoting, Draining)
            | (Promoting, Routing)
            | (Routing, Verifying)
            | (Verifying, Decommissioning)
            | (Decommissioning, Completed)
            | (RollingBack, RolledBack)
            | (RollingBack, Aborted)
    );
    forward || matches!(to, Failed | RollingBack | Aborted)
}

/// The preconditions of the irreversible actions, on the record that asks for one (the
/// decision's `next`, as persisted). `check` applies them to every decision where decisions are
/// checked (debug builds, tests, the simulator); the shell applies them again right before it
/// executes such an action, in every build (`agent::execute`), so a bug elsewhere in the machine
/// or a corrupted record cannot promote, delete the source or delete a replica.
pub fn irreversible_allowed(m: &Migration, action: &Action) -> Result<(), Violation> {
    let p = &m.progress;
    match action {
        Action::PromoteTarget { cluster } => {
            // The sessions that were open at the quarantine ended one of two ways: the reboot
            // (a restart seen after the request), or terminated with a fence written after the
            // last one and replayed by Aurora.
            let rebooted = p.reboot_requested_at.is_some() && p.restarted_at.is_some();
            let fenced_by_wal = p.sessions_end_requested_at.is_some()
                && p.fence_written_at.is_some()
                && p.fence_lsn.is_some()
                && p.fence_replayed_lsn >= p.fence_lsn;
            ensure!(
                m.phase == Phase::Promoting
                    && p.quarantined_at.is_some()
                    && p.quarantine_active_at.is_some()
                    && (rebooted || fenced_by_wal)
                    && p.drain_proven_at.is_some(),
                "promotion asked for without Quiescing and Draining completed for this attempt"
            );
            ensure!(
                *cluster == m.names.cluster,
                "promotion of {cluster}, which is not this attempt's replica {}",
                m.names.cluster
            );
        }
        Action::DeleteSource {
            instance,
            final_snapshot,
        } => {
            ensure!(
                m.phase == Phase::Decommissioning && p.verification_passed_at.is_some(),
                "source deletion asked for without a passed verification"
            );
            ensure!(
                *final_snapshot == m.names.final_snapshot && !final_snapshot.is_empty(),
                "source deletion without this attempt's final snapshot"
            );
            ensure!(
                instance.eq_ignore_ascii_case(&m.source_identifier),
                "deletion of {instance}, which is not this migration's source"
            );
        }
        Action::DeleteTarget { cluster, writer } => {
            ensure!(
                p.route_requested_at.is_none() && p.routed_at.is_none(),
                "deleting a target that may have taken writes"
            );
            ensure!(
                *cluster == m.names.cluster && *writer == m.names.writer,
                "deleting {cluster}/{writer}, which is not this attempt's replica"
            );
        }
        _ => {}
    }
    Ok(())
}

/// Checks one decision against the state it was made from.
pub fn check(prev: &Migration, obs: &Observation, d: &Decision) -> Result<(), Violation> {
    let next = &d.next;
    ensure!(
        next.id == prev.id,
        "the decision changed the migration's identity"
    );
    ensure!(
        transition_allowed(prev.phase, next.phase),
        "transition {} → {} is not allowed",
        prev.phase,
        next.phase
    );
    let p = &next.progress;
    for action in &d.actions {
        match action {
            Action::PromoteTarget { .. }
            | Action::DeleteSource { .. }
            | Action::DeleteTarget { .. } => irreversible_allowed(next, action)?,
            Action::CreateReplicaCluster(_) => {
                let no_other = obs
                    .source
                    .present()
                    .is_some_and(|s| s.aurora_replica_clusters.is_empty());
                ensure!(
                    obs.target.is_absent() && no_other,
                    "a replica cluster was asked for while one exists or was not looked for"
                );
            }
            Action::RouteTraffic(r) if next.phase != Phase::RollingBack => {
                ensure!(
                    p.promoted_at.is_some() && r.endpoint != next.source_identifier,
                    "traffic routed to a target that was not promoted"
                );
            }
            _ => {}
        }
    }
    if next.source_quarantined() {
        let moving = matches!(
            next.phase,
            Phase::Quiescing
                | Phase::Draining
                | Phase::Promoting
                | Phase::Routing
                | Phase::Verifying
                | Phase::Decommissioning
                | Phase::RollingBack
        );
        let alerted = d
            .actions
            .iter()
            .any(|a| matches!(a, Action::Notify(n) if n.severity == Severity::Error));
        ensure!(
            moving || alerted || prev.phase == next.phase,
            "the source was left quarantined in {} without an alert",
            next.phase
        );
    }
    Ok(())
}

/// The same observation, seen again right after a decision, must not produce a mutating action
/// of a kind the first decision already asked for.
pub fn check_repeat(first: &Decision, second: &Decision) -> Result<(), Violation> {
    for a in second.mutating() {
        ensure!(
            !first.mutating().any(|b| b.key() == a.key()),
            "a repeated observation asked again for {:?}",
            a.key()
        );
    }
    Ok(())
}
