//! Property tests of the phase machine: random sequences of observations (fresh, repeated,
//! stale), crashes between persisting and acting, and faults reported by actions.
//!
//! - Safety: whatever happens, no invariant breaks (checked on every step), the model world
//!   never sees a second replica, a promotion while the source takes writes, or a deletion
//!   without a snapshot, and every migration ends somewhere sensible.
//! - Liveness: when the world eventually cooperates (transient faults only), it ends Completed.

mod common;

use aurora_migrator::core::action::{Action, ErrorKind};
use aurora_migrator::core::notification::Severity;
use aurora_migrator::core::observation::Observation;
use aurora_migrator::core::{Migration, Phase, invariants, step};
use common::*;
use jiff::SignedDuration;
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Move {
    /// Observe now, step, act.
    Fresh,
    /// Step again on the last observation (a duplicate message answered from a cache).
    Repeat,
    /// Step on an older observation (an eventually consistent describe).
    Stale(usize),
    /// Every mutating action of this round fails with this kind.
    Fail(ErrorKind),
    /// Step and persist, then crash before acting.
    Crash,
    /// Time passes without a message.
    Wait(u32),
    /// The owners set the abort tag.
    Abort,
}

fn transient_move() -> impl Strategy<Value = Move> {
    prop_oneof![
        4 => Just(Move::Fresh),
        2 => Just(Move::Repeat),
        2 => (0usize..4).prop_map(Move::Stale),
        1 => prop_oneof![Just(ErrorKind::Retryable), Just(ErrorKind::Throttled)].prop_map(Move::Fail),
        1 => Just(Move::Crash),
        2 => (1u32..10).prop_map(Move::Wait),
    ]
}

fn any_move() -> impl Strategy<Value = Move> {
    prop_oneof![
        8 => transient_move(),
        1 => Just(Move::Fail(ErrorKind::Fatal)),
        1 => Just(Move::Fail(ErrorKind::NotFound)),
        1 => Just(Move::Fail(ErrorKind::Conflict)),
        1 => Just(Move::Abort),
        1 => (60u32..3600).prop_map(Move::Wait),
    ]
}

/// Steps `m` on `obs` (with the outcomes of the previous actions), checking the invariants and
/// the repeat rule, and applies the actions unless `crash` (which also loses their outcomes).
fn step_on(
    model: &mut Model,
    m: &mut Migration,
    obs: &Observation,
    fail: Option<ErrorKind>,
    crash: bool,
) {
    let policy = policy();
    let mut obs = obs.clone();
    obs.action_results = std::mem::take(&mut model.pending);
    let d = step(m, &obs, model.now, &policy);
    invariants::check(m, &obs, &d).expect("invariant");
    obs.action_results.clear();
    invariants::check_repeat(&d, &step(&d.next, &obs, model.now, &policy)).expect("repeat rule");
    *m = d.next.clone();
    if crash {
        return;
    }
    for a in &d.actions {
        let f = fail.filter(|_| a.is_mutating());
        if let Some(r) = model.apply(a, f) {
            model.pending.push(r);
        }
    }
}

/// Plays the moves, then lets the world cooperate until the migration ends.
fn play(moves: &[Move]) -> (Model, Migration) {
    let policy = policy();
    let mut model = Model::new();
    let mut m = migration();
    let mut history: Vec<Observation> = vec![];
    for mv in moves {
        if m.phase.is_terminal() && m.next_wake.is_none() {
            break;
        }
        let fresh = model.observe(&m, &policy);
        match mv {
            Move::Fresh => step_on(&mut model, &mut m, &fresh, None, false),
            Move::Repeat => {
                let last = history.last().cloned().unwrap_or(fresh.clone());
                step_on(&mut model, &mut m, &last, None, false)
            }
            Move::Stale(k) => {
                let old = history
                    .iter()
                    .rev()
                    .nth(*k)
                    .cloned()
                    .unwrap_or(fresh.clone());
                step_on(&mut model, &mut m, &old, None, false)
            }
            Move::Fail(kind) => step_on(&mut model, &mut m, &fresh, Some(*kind), false),
            Move::Crash => step_on(&mut model, &mut m, &fresh, None, true),
            Move::Wait(s) => model.now += SignedDuration::from_secs(i64::from(*s)),
            Move::Abort => {
                if let Some(s) = model.source.as_mut() {
                    s.tags
                        .insert("aurora-migration:abort".into(), "true".into());
                }
            }
        }
        history.push(fresh);
        model.now += SignedDuration::from_secs(1);
    }
    run_to_end(&mut model, &mut m, &policy, 5000);
    (model, m)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn no_sequence_of_observations_and_faults_breaks_safety(moves in proptest::collection::vec(any_move(), 0..60)) {
        let (model, m) = play(&moves);
        prop_assert!(m.phase.is_terminal(), "ended in {}", m.phase);
        prop_assert!(model.clusters_created <= 1);
        prop_assert!(model.promotions <= 1);
        match m.phase {
            Phase::Completed => {
                prop_assert!(model.source.is_none() && model.snapshot.is_some());
            }
            Phase::RolledBack | Phase::Aborted | Phase::Failed => {
                let routed = m.progress.route_requested_at.is_some();
                prop_assert!(routed || !model.quarantined(), "the source was left quarantined in {}", m.phase);
                if !routed && m.phase != Phase::Failed {
                    prop_assert!(model.target.is_none(), "the replica was left behind");
                }
            }
            _ => unreachable!(),
        }
        if matches!(m.phase, Phase::Failed) || matches!(m.rollback.as_ref().map(|r| &r.cause), Some(aurora_migrator::core::migration::RollbackCause::Failure(_))) {
            prop_assert!(model.notifications.iter().any(|n| n.severity == Severity::Error), "a failure without an error notification");
        }
    }

    #[test]
    fn every_sequence_where_the_world_cooperates_completes(moves in proptest::collection::vec(transient_move(), 0..40)) {
        let failures = moves.iter().filter(|m| matches!(m, Move::Fail(_))).count();
        prop_assume!(failures <= 4);
        let (model, m) = play(&moves);
        prop_assert_eq!(m.phase, Phase::Completed, "error: {:?}", m.last_error);
        prop_assert_eq!(model.clusters_created, 1);
        prop_assert_eq!(model.promotions, 1);
        prop_assert!(model.notifications.iter().all(|n| n.severity != Severity::Error));
        let phases: Vec<Phase> = m.history.iter().map(|h| h.phase).collect();
        prop_assert!(phases.windows(2).all(|w| w[0] != w[1]), "a phase change is recorded once");
    }
}

#[test]
fn every_action_kind_is_exercised_by_the_model() {
    // Guards the model above: if the machine gains an action, the model must learn it.
    let (model, m) = play(&[]);
    assert_eq!(m.phase, Phase::Completed);
    assert!(model.notifications.len() >= 12);
    let _ = Action::key;
}
