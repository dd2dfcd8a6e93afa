//! What the driver must look at for a migration in its current phase.
//!
//! Observing costs API calls against a shared account budget, so each phase asks only for what
//! its decision reads.

use jiff::{SignedDuration, Timestamp};

use super::migration::Migration;
use super::observation::MetricKey;
use super::phase::Phase;
use super::policy::Policy;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Needs {
    pub source: bool,
    pub target: bool,
    pub quarantine_group: bool,
    pub parameter_groups: bool,
    pub preflight: bool,
    pub quotas: bool,
    pub final_snapshot: bool,
    /// DescribeEvents of the source since this time.
    pub events_since: Option<Timestamp>,
    /// DescribeEvents of the Aurora writer since this time.
    pub writer_events_since: Option<Timestamp>,
    /// CloudWatch series and the start of the window to read.
    pub metrics: Vec<(MetricKey, Timestamp)>,
    pub fleet_pause: bool,
}

/// How far back replication health is read: enough periods to see a trend.
const HEALTH_WINDOW: SignedDuration = SignedDuration::from_mins(10);

pub fn needs(m: &Migration, now: Timestamp, policy: &Policy) -> Needs {
    use MetricKey::*;
    let mut n = Needs {
        source: true,
        ..Needs::default()
    };
    let recent = now - HEALTH_WINDOW;
    let p = &m.progress;
    match m.phase {
        Phase::Requested => {}
        Phase::Preflight => {
            n.preflight = true;
        }
        Phase::Preparing => {
            n.parameter_groups = true;
            n.quarantine_group = true;
        }
        Phase::CreatingReplica => n.target = true,
        Phase::Replicating | Phase::AwaitingCutover | Phase::Paused => {
            n.target = true;
            n.fleet_pause = m.phase != Phase::Replicating;
            n.metrics = [
                SourceSlotLag,
                TargetReplicaLag,
                SourceFreeStorage,
                SourceCpu,
                SourceWriteLatency,
                SourceReadLatency,
            ]
            .into_iter()
            .map(|k| (k, recent))
            .collect();
        }
        Phase::Quiescing => n.quarantine_group = true,
        Phase::Draining => {
            n.target = true;
            n.quarantine_group = true;
            // Events from a little before the request: clocks differ between us and RDS.
            let since = p.reboot_requested_at.unwrap_or(now) - SignedDuration::from_mins(1);
            n.events_since = Some(since);
            n.metrics = [SourceSlotLag, SourceConnections, TargetReplicaLag]
                .into_iter()
                .map(|k| (k, since))
                .collect();
        }
        Phase::Promoting | Phase::Routing => {
            n.target = true;
            // The fence is re-checked right before promotion and before routing.
            n.quarantine_group = p.promote_requested_at.is_none() || p.route_requested_at.is_none();
        }
        Phase::Verifying => {
            n.target = true;
            let since = p.routed_at.unwrap_or(now);
            n.metrics = [
                TargetCpu,
                TargetWriteLatency,
                TargetReadLatency,
                SourceWalGeneration,
            ]
            .into_iter()
            .map(|k| (k, since))
            .collect();
        }
        Phase::Decommissioning => {
            // The cluster is looked at so that entering Completed mirrors the phase to its tag.
            n.target = true;
            let due = p.verification_passed_at.map(|t| t + policy.retention);
            if due.is_some_and(|d| now >= d) {
                n.final_snapshot = true;
                n.quotas = p.source_delete_requested_at.is_none();
                n.quarantine_group = true;
                if policy.restore_source_groups_after_cutover {
                    // With its groups given back, only its WAL can show the source takes no
                    // writes before it is deleted.
                    n.metrics = vec![(SourceWalGeneration, now - SignedDuration::from_mins(10))];
                }
            }
        }
        Phase::RollingBack => {
            n.target = true;
            n.quarantine_group = true;
            if m.rollback.as_ref().is_some_and(|r| r.after_cutover) {
                // From the period that holds the route request: Aurora may take writes from
                // then on, and CloudWatch's periods start on the minute, before it.
                let since =
                    p.route_requested_at.or(p.routed_at).unwrap_or(now) - policy.metric_period;
                n.metrics = vec![(TargetWriteIops, since)];
                if let Some(r) = p.target_reboot_requested_at {
                    // A minute early: clocks differ between us and RDS.
                    let since = r - SignedDuration::from_mins(1);
                    n.writer_events_since = Some(since);
                    n.metrics.push((TargetConnections, since));
                }
            }
        }
        Phase::Failed | Phase::Completed | Phase::RolledBack | Phase::Aborted => {}
    }
    n
}
