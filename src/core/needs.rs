//! What the driver must look at for a migration in its current phase.
//!
//! Observing costs API calls against a shared account budget, so each phase asks only for what
//! its decision reads. What a phase reads is written next to its rules, in its file under
//! `core::machine`; this file holds the shape of the answer.

use jiff::Timestamp;

use super::migration::Migration;
use super::observation::{MetricKey, Observed, SourceInstance};
use super::policy::Policy;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Needs {
    pub source: bool,
    pub target: bool,
    pub quarantine_group: bool,
    pub parameter_groups: bool,
    pub preflight: bool,
    pub quotas: bool,
    /// The final snapshot's describe, unless the source is `deleting` (see
    /// [`Needs::reads_final_snapshot`]).
    pub final_snapshot: bool,
    /// Describe the source and the target as RDS has them now, not from the fleet snapshot
    /// (up to the describe cache's TTL old): the phase waits, with writes down, on a change
    /// RDS applies by itself and announces with no event; or, for the source, the look that
    /// may ask for its deletion (the fence re-checked right before it). The target only when
    /// `target_from_snapshot` is not set.
    pub fresh: bool,
    /// The source and the target may come from the fleet snapshot up to three minutes old, in
    /// the cutover too, even when the agent changed them since (`aws::rds::cache`,
    /// `snapshot_will_do`): the look waits on something else and reads from them only what the
    /// agent never changes (the writer's endpoint, the guards' tags, whether they exist).
    /// Promoting on the database path while AWS promotes (`machine::cutover`).
    pub snapshot_will_do: bool,
    /// As `snapshot_will_do`, for the source alone: the target is described as it is now.
    /// Promoting on the metric path while AWS promotes, and Draining on it until CloudWatch
    /// shows the catch-up (`machine::cutover`).
    pub source_from_snapshot: bool,
    /// As `snapshot_will_do`, for the target alone: the look reads from it only the writer's
    /// endpoint (its SQL, the smoke test), its ARN (the phase mirror) and whether it exists.
    /// Draining on the database path (`machine::cutover`), Verifying and Decommissioning
    /// (`machine::soak`).
    pub target_from_snapshot: bool,
    /// The target absent from the fleet snapshot is taken as absent, not described directly
    /// (`aws::rds::cache::absence_will_do`): the look before the replica's cluster is created
    /// (CreatingReplica, nothing asked yet), whose creation meets a cluster created since; and
    /// a rollback's looks once the replica's deletion was asked for (`machine::rollback`).
    pub target_absence_from_snapshot: bool,
    /// As `target_absence_from_snapshot`, for the source: once the agent asked for its
    /// deletion, its absence from a snapshot taken after that request (the adapter's own
    /// request marks the name, `FleetCache::heard_since`) is the deletion done, as a direct
    /// describe would say (Decommissioning, `machine::soak`). Its final snapshot is still
    /// described before the source is recorded gone.
    pub source_absence_from_snapshot: bool,
    /// A scheduled look of a cutover wait that an RDS event ends (the metric path's reboot,
    /// AWS's promotion): its direct describes may wait a moment for other migrations' looks of
    /// the same grid time to share one request (`aws::rds::batch::gathered`). News never waits.
    pub gathers: bool,
    /// As `gathers`, for a cutover wait that no event ends, polled on a shared grid (the
    /// quarantine's group change): a shorter moment (`aws::rds::batch::gathered_quickly`).
    pub gathers_quickly: bool,
    /// DescribeEvents of the source since this time.
    pub events_since: Option<Timestamp>,
    /// DescribeEvents of the Aurora writer since this time.
    pub writer_events_since: Option<Timestamp>,
    /// CloudWatch series and the start of the window to read.
    pub metrics: Vec<(MetricKey, Timestamp)>,
    pub fleet_pause: bool,
    /// Client sessions on the source, by SQL (database-aware cutover).
    pub source_sessions: bool,
    /// The Aurora writer's replay position, by SQL (database-aware cutover).
    pub target_replay: bool,
    /// Fingerprints of the source and the promoted Aurora cluster, by SQL, within the policy's
    /// `consistency_check_budget` (the consistency check before routing).
    pub consistency: bool,
    /// Client sessions on the Aurora writer, by SQL (rollback after cutover: its fence).
    pub target_sessions: bool,
    /// A route accepted and propagating: its router and change, asked after
    /// (`machine::route`).
    pub route_change: Option<(crate::core::router::RouterChoice, String)>,
}

impl Needs {
    /// Whether this look describes the final snapshot, given the source it observed: not while
    /// RDS is deleting the source. Decommissioning waits then and reads nothing but the source
    /// (`machine::soak`); the snapshot is read once the deletion was asked for, until it is
    /// recorded as ours (RDS itself refuses a deletion whose final snapshot's name is taken).
    /// A look every minute for the snapshot's minutes was the phase's most frequent RDS call
    /// (12 a migration in the simulator's 500-migration fleet).
    pub fn reads_final_snapshot(&self, source: &Observed<SourceInstance>) -> bool {
        self.final_snapshot && !matches!(source, Observed::Present(s) if s.status == "deleting")
    }

    /// Since when this look reads the source's events, given the source it observed: not
    /// while RDS says the source is `rebooting`. The restart event the metric path's Draining
    /// waits for comes as the reboot ends, and the looks during a reboot (1–3 minutes in the
    /// simulator, every `fast_poll`) read none: 11 DescribeEvents a migration on the metric
    /// path in the simulator's 300-migration fleet, most of them during the reboot. The
    /// restart's time is the event's, not the look's, so reading it on the look after the
    /// status changes loses nothing. Not on a look that read the source from the fleet snapshot
    /// (`source_from_snapshot`: the metric path's reboot wait, whose looks read the events for
    /// the restart): that status may be minutes old, and a snapshot taken during the reboot
    /// would keep the restart unread until the next refresh.
    pub fn reads_source_events(&self, source: &Observed<SourceInstance>) -> Option<Timestamp> {
        self.events_since.filter(|_| {
            self.source_from_snapshot
                || !matches!(source, Observed::Present(s) if s.status == "rebooting")
        })
    }
}

/// What to observe for `m` now: the source (every phase's guards read it) unless the agent has
/// deleted it ([`Migration::source_deleted`]: the looks after, the quarantine group's deletion
/// and the one that confirms Completed's notification, described an instance that is gone, one
/// request each), and what its phase's rules read, as the phase's own file says
/// (`machine::{preparation, cutover, soak, rollback}`).
pub fn needs(m: &Migration, now: Timestamp, policy: &Policy) -> Needs {
    let mut n = Needs {
        source: !m.source_deleted(),
        ..Needs::default()
    };
    super::machine::phase_needs(m, now, policy, &mut n);
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_final_snapshot_is_not_described_while_the_source_is_being_deleted() {
        let need = Needs {
            final_snapshot: true,
            ..Needs::default()
        };
        let source = |status: &str| {
            Observed::Present(SourceInstance {
                status: status.to_string(),
                ..SourceInstance::default()
            })
        };
        assert!(!need.reads_final_snapshot(&source("deleting")));
        assert!(
            need.reads_final_snapshot(&source("available")),
            "the look right after the request, before RDS shows the deletion: is it ours"
        );
        assert!(
            need.reads_final_snapshot(&Observed::Absent),
            "gone: is the snapshot ours"
        );
        assert!(need.reads_final_snapshot(&Observed::Unknown));
        assert!(!Needs::default().reads_final_snapshot(&source("available")));
    }

    #[test]
    fn the_source_events_are_not_read_while_the_source_is_rebooting() {
        let since = Timestamp::UNIX_EPOCH;
        let need = Needs {
            events_since: Some(since),
            ..Needs::default()
        };
        let source = |status: &str| {
            Observed::Present(SourceInstance {
                status: status.to_string(),
                ..SourceInstance::default()
            })
        };
        assert_eq!(need.reads_source_events(&source("rebooting")), None);
        assert_eq!(need.reads_source_events(&source("available")), Some(since));
        assert_eq!(need.reads_source_events(&Observed::Unknown), Some(since));
        assert_eq!(
            Needs::default().reads_source_events(&source("available")),
            None
        );
        // A snapshot's status may be minutes old: its `rebooting` does not hold the events back.
        let from_snapshot = Needs {
            source_from_snapshot: true,
            ..need
        };
        assert_eq!(
            from_snapshot.reads_source_events(&source("rebooting")),
            Some(since)
        );
    }
}
