//! Safety and liveness checks beyond the ones the world runs inline.
//!
//! Inline (in `world.rs`, at the moment the fact is created): no acknowledged write lost at
//! promotion or after it; never two replica clusters per source; the source never deleted
//! without an available final snapshot and a passed verification of a routed target; traffic
//! never routed to an unpromoted replica; a target that took writes is never deleted; no store
//! write undoes a newer one.
//!
//! In their own files, at the call they judge: every call that changes AWS for a migration is
//! made by the holder of its lease (`leases`); no promotion before every acknowledged write was
//! replayed (`replayed_before_promotion`); no more migrations in their cutover or their
//! preparation than the agent's limits (`turns`); an attempt after the first begins only on a
//! `start` the agent has not reset (`attempts`).
//!
//! Here: every decision of the phase machine against `core::invariants` (through a wrapper
//! installed as the agent's `step`), the quarantine rule, and the end-of-run liveness rules.

pub mod attempts;
pub mod leases;
pub mod replayed_before_promotion;
pub mod turns;

use std::cell::RefCell;

use jiff::Timestamp;

use crate::core::action::Action;
use crate::core::invariants;
use crate::core::migration::RollbackCause;
use crate::core::notification::Severity;
use crate::core::{Decision, Migration, Observation, Phase, Policy};

use super::faults::{DbFault, PermanentFault};
use super::world::State;

/// A deliberately broken agent, to prove the simulator catches it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    /// The real agent.
    Correct,
    /// Goes straight from the reboot request to the promotion, skipping the Draining proof.
    PromoteWithoutDraining,
    /// Deletes the source as soon as Verifying starts.
    DeleteBeforeVerification,
    /// A store that ignores the version condition and serves stale (eventually consistent)
    /// reads, so a worker acts on an old record, as one restarted after a crash would.
    StaleRecord,
}

impl Variant {
    pub const BROKEN: [Variant; 3] = [
        Variant::PromoteWithoutDraining,
        Variant::DeleteBeforeVerification,
        Variant::StaleRecord,
    ];
}

struct DecisionCtx {
    variant: Variant,
    check: bool,
    violations: Vec<String>,
    decisions: u64,
}

thread_local! {
    static CTX: RefCell<DecisionCtx> = const {
        RefCell::new(DecisionCtx {
            variant: Variant::Correct,
            check: true,
            violations: Vec::new(),
            decisions: 0,
        })
    };
}

/// Arms the step wrapper for one run on this thread.
pub fn arm(variant: Variant, check: bool) {
    CTX.with(|c| {
        let mut c = c.borrow_mut();
        c.variant = variant;
        c.check = check;
        c.violations.clear();
        c.decisions = 0;
    });
}

/// The decision violations and the number of decisions since `arm`.
pub fn disarm() -> (Vec<String>, u64) {
    CTX.with(|c| {
        let mut c = c.borrow_mut();
        (std::mem::take(&mut c.violations), c.decisions)
    })
}

fn promote_without_draining(
    m: &Migration,
    obs: &Observation,
    now: Timestamp,
    policy: &Policy,
) -> Decision {
    let mut d = crate::core::step(m, obs, now, policy);
    if m.phase == Phase::Quiescing && d.next.phase == Phase::Draining {
        d.next.phase = Phase::Promoting;
        d.next.progress.promote_requested_at = Some(now);
        d.next
            .requested
            .insert(crate::core::ActionKey::PromoteTarget, now);
        d.actions.push(Action::PromoteTarget {
            cluster: m.names.cluster.clone(),
        });
    }
    d
}

fn delete_before_verification(
    m: &Migration,
    obs: &Observation,
    now: Timestamp,
    policy: &Policy,
) -> Decision {
    let mut d = crate::core::step(m, obs, now, policy);
    if m.phase == Phase::Verifying {
        d.actions.push(Action::DeleteSource {
            instance: m.source_identifier.clone(),
            final_snapshot: m.names.final_snapshot.clone(),
        });
    }
    d
}

/// Installed as `Agent::step`: runs the variant's step and checks the decision.
pub fn checked_step(m: &Migration, obs: &Observation, now: Timestamp, policy: &Policy) -> Decision {
    let (variant, check) = CTX.with(|c| {
        let c = c.borrow();
        (c.variant, c.check)
    });
    let d = match variant {
        Variant::Correct | Variant::StaleRecord => crate::core::step(m, obs, now, policy),
        Variant::PromoteWithoutDraining => promote_without_draining(m, obs, now, policy),
        Variant::DeleteBeforeVerification => delete_before_verification(m, obs, now, policy),
    };
    let mut found = Vec::new();
    if check {
        if let Err(v) = invariants::check(m, obs, &d) {
            found.push(format!("decision in {} for {}: {v}", m.phase, m.label()));
        }
        if variant == Variant::Correct {
            // The same look again, right after: no mutation of a kind already asked for. (The
            // lease's takeover is news for the first look after it only: the agent gives it to
            // that one.)
            let mut again = obs.clone();
            again.action_results.clear();
            again.taken_over = false;
            let second = crate::core::step(&d.next, &again, now, policy);
            if let Err(v) = invariants::check_repeat(&d, &second) {
                found.push(format!(
                    "repeated decision in {} for {}: {v}",
                    d.next.phase,
                    m.label()
                ));
            }
        }
    }
    CTX.with(|c| {
        let mut c = c.borrow_mut();
        c.decisions += 1;
        c.violations.extend(found);
    });
    d
}

/// How one migration ended, for the report and the liveness rules.
#[derive(Clone, Debug, PartialEq)]
pub struct Ending {
    pub source: String,
    pub phase: Option<Phase>,
    pub permanent: Option<PermanentFault>,
    pub last_error: Option<String>,
    /// Quarantine request → traffic on the target, and what AWS took of it (the group change,
    /// the reboot, the metric delay, the promotion, the replica applying the fence).
    pub window_ms: Option<i64>,
    pub aws_ms: Option<i64>,
    /// Only transient faults, and rolled back (losslessly) because the write-unavailability
    /// budget ran out: the design's safety valve, counted apart from the violations.
    pub budget_rollback: bool,
    /// Rolled back (losslessly) at once because a client behind a hole in the quarantine got
    /// back in after its session was ended (`machine::wal_fence`).
    pub breach_rollback: bool,
    pub path: CutoverPath,
    /// Why the database-aware path fell back to the reboot.
    pub fallback: Option<String>,
    /// The source was rebooted (by this run's cutover or its fallback).
    pub rebooted: bool,
    /// AWS's share of the window, part by part: the group change and the promotion.
    pub group_change_ms: Option<i64>,
    pub promotion_ms: Option<i64>,
    /// Where a database-aware cutover's time beyond AWS's group change and promotion goes:
    /// quarantine active → first `pg_terminate_backend`; → promote call (the drain proof),
    /// without the replica applying the fence; the replica applying the fence (AWS's, not in
    /// the agent's share); promoted → traffic moved.
    pub db_parts: Option<[i64; 4]>,
    /// The router the source routes through (0 webhook, 1 Route 53, 2 RDS Proxy, 3 PgBouncer), and how long
    /// its route took to take effect (accepted → INSYNC or the target AVAILABLE; AWS's share).
    pub router: usize,
    pub propagation_ms: Option<i64>,
}

/// Which cutover the latest attempt ran.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum CutoverPath {
    /// Sessions ended, a fence replayed by Aurora, no reboot.
    Database,
    /// The reboot and CloudWatch's view (no database access).
    Metric,
    /// Planned on database access, then fell back to the reboot.
    FellBack,
}

impl CutoverPath {
    pub const ALL: [CutoverPath; 3] = [
        CutoverPath::Database,
        CutoverPath::Metric,
        CutoverPath::FellBack,
    ];

    pub fn of(m: &Migration) -> Self {
        match (
            m.plan.as_ref().is_some_and(|p| p.database.is_some()),
            &m.progress.database_fallback,
        ) {
            (true, None) => CutoverPath::Database,
            (true, Some(_)) => CutoverPath::FellBack,
            (false, _) => CutoverPath::Metric,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            CutoverPath::Database => "database-aware",
            CutoverPath::Metric => "metric (reboot)",
            CutoverPath::FellBack => "database-aware, fell back to the reboot",
        }
    }
}

/// The end-of-run rules: every source's latest attempt ended as its faults allow, the source
/// is writable again unless it moved, and nobody is left uninformed.
pub fn endings(state: &State, settled: bool) -> (Vec<Ending>, Vec<String>) {
    let mut out = Vec::new();
    let mut violations = Vec::new();
    for (id, s) in &state.sources {
        let record = state
            .store
            .values()
            .filter(|m| m.id.resource_id == s.view.resource_id)
            .max_by_key(|m| m.id.attempt);
        let phase = record.map(|m| m.phase);
        let label = record.map_or(id.clone(), |m| m.id.to_string());
        let error_sent = state
            .notes
            .iter()
            .any(|(_, n)| n.db_instance == *id && n.severity == Severity::Error);
        let quarantined = s.deleted_at.is_none()
            && !s
                .view
                .security_groups
                .iter()
                .any(|g| s.client_groups.contains(&g.id));
        let window = match (s.quarantine_requested_at, s.routed_at) {
            (Some(q), Some(r)) => Some(r - q),
            _ => None,
        };
        let part = |a: Option<i64>, b: Option<i64>| match (a, b) {
            (Some(a), Some(b)) if b >= a => b - a,
            _ => 0,
        };
        // The replica applying the fence once it is written: the replication's time, not the
        // agent's (only where no reboot was asked for: the database path's proof).
        let replication = if s.reboot_requested_at.is_none() {
            part(s.fence_written_at, s.fence_replayable_at)
        } else {
            0
        };
        // Route 53 taking the change to every server (UPSERT accepted → INSYNC): AWS's.
        let propagation = part(s.route_accepted_at, s.routed_at);
        let aws = window.map(|_| {
            part(s.quarantine_requested_at, s.quarantine_applied_at)
                + part(s.reboot_requested_at, s.restarted_at)
                + part(s.restarted_at, s.first_metric_after_restart)
                + part(s.promote_called_at, s.promoted_at)
                + replication
                + propagation
        });
        let budget_rollback = s.permanent.is_none()
            && phase == Some(Phase::RolledBack)
            && record.and_then(|m| m.rollback.as_ref()).is_some_and(|r| {
                matches!(&r.cause, RollbackCause::Failure(why) if why.contains("write-unavailability budget"))
            });
        // A client behind a hole in the quarantine (`DbFault::PersistentHole`, `ReconnectOnce`)
        // that got back in after its session was ended: the attempt rolls back at once
        // (`machine::wal_fence`), as losslessly as on the budget.
        let behind_a_hole = s.db.as_ref().is_some_and(|db| {
            matches!(
                db.fault,
                Some(DbFault::PersistentHole | DbFault::ReconnectOnce)
            )
        });
        let breach_rollback = behind_a_hole
            && s.permanent.is_none()
            && phase == Some(Phase::RolledBack)
            && record.and_then(|m| m.rollback.as_ref()).is_some_and(|r| {
                matches!(&r.cause, RollbackCause::Failure(why) if why.contains("got past the quarantine"))
            });
        match (s.permanent, phase) {
            (_, None) => violations.push(format!("liveness: {id} was never admitted")),
            (None, Some(Phase::Completed)) => {}
            (None, Some(Phase::RolledBack)) if budget_rollback || breach_rollback => {
                if quarantined || !error_sent {
                    violations.push(format!(
                        "liveness: {label} rolled back on the budget but its source is not writable or nobody was told"
                    ));
                }
            }
            (None, Some(p)) => violations.push(format!(
                "liveness: {label} had only transient faults and ended in {p}: {}",
                record
                    .and_then(|m| m.last_error.clone())
                    .unwrap_or_default()
            )),
            // A route that never takes effect: Aurora is promoted and the route was asked for,
            // so nothing is undone by itself; the source must stay fenced (or clients would
            // write to both sides) and people must be told.
            (Some(PermanentFault::RouteNeverInSync), Some(Phase::Failed))
                if record.is_some_and(|m| m.progress.route_requested_at.is_some()) =>
            {
                if !quarantined {
                    violations.push(format!(
                        "{label}: its route never took effect and the source was unfenced: clients may write to both sides"
                    ));
                }
                if !error_sent {
                    violations.push(format!(
                        "liveness: {label} ended failed without an error notification"
                    ));
                }
            }
            (Some(_), Some(Phase::Failed | Phase::RolledBack)) => {
                if quarantined || s.deleted_at.is_some() {
                    violations.push(format!(
                        "liveness: {label} ended in {} with its source not writable",
                        phase.expect("matched")
                    ));
                }
                if !error_sent {
                    violations.push(format!(
                        "liveness: {label} ended in {} without an error notification",
                        phase.expect("matched")
                    ));
                }
            }
            (Some(f), Some(p)) => violations.push(format!(
                "liveness: {label} had a permanent fault ({f:?}) and ended in {p}"
            )),
        }
        if quarantined && !error_sent && phase.is_some_and(|p| p.is_terminal()) {
            violations.push(format!(
                "{label}: the source is left quarantined in {} without an alert",
                phase.expect("checked")
            ));
        }
        out.push(Ending {
            source: id.clone(),
            phase,
            permanent: s.permanent,
            last_error: record.and_then(|m| m.last_error.clone()),
            window_ms: window,
            aws_ms: aws,
            budget_rollback,
            breach_rollback,
            path: record.map_or(CutoverPath::Metric, CutoverPath::of),
            fallback: record.and_then(|m| m.progress.database_fallback.clone()),
            rebooted: s.reboot_requested_at.is_some(),
            group_change_ms: window
                .map(|_| part(s.quarantine_requested_at, s.quarantine_applied_at)),
            promotion_ms: window.map(|_| part(s.promote_called_at, s.promoted_at)),
            router: if s.route53_record.is_some() {
                1
            } else if s.rds_proxy.is_some() {
                2
            } else if s.pooler.is_some() {
                3
            } else {
                0
            },
            propagation_ms: window
                .filter(|_| s.route_accepted_at.is_some())
                .map(|_| propagation),
            db_parts: window
                .filter(|_| s.sessions_end_called_at.is_some() && s.reboot_requested_at.is_none())
                .map(|_| {
                    [
                        part(s.quarantine_applied_at, s.sessions_end_called_at),
                        part(s.sessions_end_called_at, s.promote_called_at) - replication,
                        replication,
                        part(s.promoted_at, s.routed_at),
                    ]
                }),
        });
    }
    if !settled {
        violations.push(format!(
            "liveness: not every migration settled within the run's bound of {}",
            super::fmt_ms(state.now)
        ));
    }
    (out, violations)
}

/// Checked as the run goes: a quarantined source is moving (a record in a cutover or cleanup
/// phase with a wake-up) or someone was told.
pub fn quarantine_has_a_path(state: &State) -> Vec<String> {
    let mut latest: std::collections::BTreeMap<&str, &Migration> =
        std::collections::BTreeMap::new();
    for m in state.store.values() {
        let e = latest.entry(m.id.resource_id.as_str()).or_insert(m);
        if m.id.attempt > e.id.attempt {
            *e = m;
        }
    }
    let mut out = Vec::new();
    for (id, s) in &state.sources {
        let quarantined = s.deleted_at.is_none()
            && s.quarantine_applied_at.is_some()
            && !s
                .view
                .security_groups
                .iter()
                .any(|g| s.client_groups.contains(&g.id));
        if !quarantined {
            continue;
        }
        let record = latest.get(s.view.resource_id.as_str());
        let moving = record.is_some_and(|m| m.next_wake.is_some() && !m.phase.is_terminal());
        // An error notification decided and persisted in the record's outbox is being told:
        // the agent offers it on every step until SNS takes it.
        let telling = record.is_some_and(|m| {
            m.next_wake.is_some()
                && m.outbox
                    .iter()
                    .any(|n| n.severity == crate::core::notification::Severity::Error)
        });
        let told = state.error_notified.contains(id);
        if !(moving || telling || told) {
            out.push(format!(
                "{id} is quarantined with no path forward (record {}) and no alert",
                record.map_or("missing".to_string(), |m| m.phase.to_string())
            ));
        }
    }
    out
}
