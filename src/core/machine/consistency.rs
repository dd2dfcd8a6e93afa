//! The consistency check before routing (database-aware cutover only): after promotion, before
//! the route is requested, the fenced source and the promoted Aurora cluster are compared on
//! what is cheap and telling (`core::database::Fingerprint`: every sequence's last value, exact
//! row counts of small tables, the newest rows by primary key of large ones, in the plan's
//! database), each side read at once within `Policy::consistency_check_budget`.
//!
//! Rules, once per attempt, the outcome recorded in `Progress::consistency` and told:
//! - Equal in everything both sides read: route.
//! - A difference: the lossless rollback (`RollbackCause::Failure`, naming each difference).
//!   Nothing was routed, so Aurora took no write and the source has every one; the rollback
//!   before routing gives the source its groups back and deletes the promoted cluster, as every
//!   rollback before routing does (`rollback.rs`: a cluster that took no write holds nothing a
//!   person needs; the notification names what differed).
//! - A side that cannot be read: tried again until `database_unreachable_after` has passed in
//!   Routing (right after promotion Aurora's writer may still be restarting), then route with a
//!   warning. The check is a cross-check: the WAL proof (Aurora replayed past a fence written
//!   after the last client session) already held, and holding the outage for a check that
//!   cannot run would trade a certain cost for no proof.
//! - What the budget did not reach is not compared, and the outcome says how much.

use super::*;
use crate::core::database::compare;
use crate::core::migration::Consistency;

/// Whether this step must read the fingerprints (see [`Stepper::consistency_holds`]).
/// Also read in Promoting once the writer has left recovery: the look that sees the promotion
/// done then routes on the same readings (`cutover::promoting`).
pub(super) fn needs_check(m: &Migration) -> bool {
    let promoted_by_sql =
        m.phase == Phase::Promoting && m.progress.writer_out_of_recovery_at.is_some();
    (m.phase == Phase::Routing || promoted_by_sql)
        && m.database_path()
        && m.progress.consistency.is_none()
        && m.progress.route_requested_at.is_none()
}

impl Stepper<'_> {
    /// Whether routing may go on as far as the consistency check is concerned. On a difference
    /// it has started the lossless rollback.
    pub(super) fn consistency_holds(&mut self) -> bool {
        if !self.database_path() || self.m.progress.route_requested_at.is_some() {
            return true;
        }
        if let Some(done) = &self.m.progress.consistency {
            return !matches!(done, Consistency::Differs(_));
        }
        let r = &self.obs.database;
        let (Some(source), Some(target)) =
            (r.source_fingerprint.clone(), r.target_fingerprint.clone())
        else {
            // Stepped with action results against an earlier look: nothing was read.
            self.wake_within(self.policy.database_poll);
            return false;
        };
        match (source, target) {
            (Ok(source), Ok(target)) => {
                let c = compare(&source, &target);
                if c.differences.is_empty() {
                    self.m.progress.consistency = Some(Consistency::Equal {
                        compared: c.compared,
                        not_compared: c.not_compared,
                    });
                    return true;
                }
                let outcome = Consistency::Differs(c.differences);
                self.m.progress.consistency = Some(outcome.clone());
                self.failure(format!(
                    "{outcome}. Nothing was routed: Aurora took no write and the source has every one, so the migration rolls back without loss"
                ));
                false
            }
            (Err(why), _) | (_, Err(why)) => {
                if self.since(self.m.phase_entered_at) < self.policy.database_unreachable_after {
                    self.wake_within(self.policy.database_poll);
                    return false;
                }
                let outcome = Consistency::Unreadable(why);
                self.alert_once(
                    "consistency-unreadable",
                    Severity::Warning,
                    "the consistency check could not run; routing anyway",
                    &format!(
                        "{outcome}. The catch-up proof held (Aurora replayed past the fence written after the last client session), so the cutover goes on without this cross-check"
                    ),
                );
                self.m.progress.consistency = Some(outcome);
                true
            }
        }
    }
}
