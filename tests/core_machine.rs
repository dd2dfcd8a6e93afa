//! Table tests of the phase machine: each test is named for the rule it checks.

mod common;

use aurora_migrator::core::action::{Action, ActionError, ActionKey, ActionResult, ErrorKind};
use aurora_migrator::core::migration::{Migration, RollbackCause};
use aurora_migrator::core::notification::Severity;
use aurora_migrator::core::observation::*;
use aurora_migrator::core::policy::{CutoverPolicy, Policy};
use aurora_migrator::core::{Phase, step};
use common::*;
use jiff::{SignedDuration, Timestamp};

#[test]
fn happy_path_visits_every_phase_in_order_and_completes() {
    let mut model = Model::new();
    let mut m = migration();
    let phases = run_to_end(&mut model, &mut m, &policy(), 2000);
    let completed = Phase::ALL.iter().position(|p| *p == Phase::Completed);
    assert_eq!(phases, Phase::ALL[..=completed.unwrap()]);
    assert_eq!(model.clusters_created, 1);
    assert_eq!(model.promotions, 1);
    assert_eq!(model.reboots, 1);
    assert!(model.source.is_none(), "the source is deleted");
    assert!(model.snapshot.is_some(), "after a final snapshot");
    assert!(
        model.routed_to.as_deref().unwrap().contains("cluster"),
        "traffic goes to the cluster"
    );
    assert!(
        model.quarantine.is_none(),
        "the quarantine group is cleaned up"
    );
    let sent: Vec<Phase> = model.notifications.iter().map(|n| n.phase).collect();
    assert_eq!(
        &sent[..],
        &phases[1..],
        "one notification per phase change, in order"
    );
    // The phase mirror: on the source while it exists, on the cluster once the source is gone.
    assert_eq!(
        model.tags[ARN]["aurora-migration:phase"], "decommissioning",
        "the source's last phase before its deletion"
    );
    let cluster = model
        .tags
        .keys()
        .find(|arn| arn.contains(":cluster:"))
        .expect("the cluster is tagged");
    assert_eq!(model.tags[cluster]["aurora-migration:phase"], "completed");
    assert_eq!(
        model.mirrored[cluster],
        vec![Phase::Completed],
        "the cluster carries the phase once the source is gone, not before (the source shows it)"
    );
}

/// The phase mirror is written once per phase that lasts (`PHASE_MIRROR_AFTER`), never for
/// Requested, and never twice for one phase: a phase passed through within one message is an
/// RDS request nobody would see.
#[test]
fn the_phase_mirror_is_written_once_for_each_phase_that_lasts_and_not_for_one_passed_through() {
    let mut model = Model::new();
    let mut m = migration();
    run_to_end(&mut model, &mut m, &policy(), 2000);
    assert_eq!(m.phase, Phase::Completed);
    let source = &model.mirrored[ARN];
    let mut unique = source.clone();
    unique.dedup();
    assert_eq!(&unique, source, "each phase once");
    assert!(!source.contains(&Phase::Requested));
    // Requested → Preflight → Preparing in one message: Preflight is passed through.
    assert!(!source.contains(&Phase::Preflight), "{source:?}");
    for lasting in [
        Phase::Preparing,
        Phase::CreatingReplica,
        Phase::Replicating,
        Phase::Draining,
        Phase::Verifying,
        Phase::Decommissioning,
    ] {
        assert!(source.contains(&lasting), "{lasting}: {source:?}");
    }
}

/// The step that marks the source in Preparing mirrors the phase in the same tag write: one
/// AddTagsToResource with both keys (the marker and `preparing`), not two.
#[test]
fn the_source_is_marked_and_its_preparing_mirror_written_in_one_tag_write() {
    let (mut model, mut m) = advanced_to(&policy(), Phase::Preparing);
    let d = quiet_round(&mut model, &mut m, &policy());
    let tag_writes: Vec<&Action> = d
        .actions
        .iter()
        .filter(|a| matches!(a, Action::MarkSource { .. } | Action::MirrorPhaseTag { .. }))
        .collect();
    assert_eq!(
        tag_writes,
        vec![&Action::MarkSource {
            arn: ARN.to_string(),
            value: m.id.resource_id.clone(),
            phase: Some(Phase::Preparing),
        }],
        "{:?}",
        d.actions
    );
    assert_eq!(model.mirrored[ARN], vec![Phase::Preparing]);
    assert_eq!(
        model.source.as_ref().unwrap().tags["aurora-migration:marker"],
        m.id.resource_id
    );
}

/// RDS takes minutes to create the replica's cluster and its writer: the look after each
/// request comes `Policy::slow_change_first_look` later (when the fleet snapshot is newer than the request
/// and serves it), not a minute later to describe a resource that is only `creating`.
#[test]
fn the_look_after_a_creation_request_waits_for_the_creation_s_first_minutes() {
    let first_look = policy().slow_change_first_look();
    assert_eq!(first_look, SignedDuration::from_mins(3), "by default");
    let (mut model, mut m) = advanced_to(&policy(), Phase::CreatingReplica);
    let d = quiet_round(&mut model, &mut m, &policy());
    assert!(keys(&d.actions).contains(&ActionKey::CreateReplicaCluster));
    assert_eq!(d.wake_after, Some(first_look));
    // The cluster is there: the writer is asked for, with the same first look.
    model.now += first_look;
    let mut waits = Vec::new();
    for _ in 0..10 {
        let d = quiet_round(&mut model, &mut m, &policy());
        if keys(&d.actions).contains(&ActionKey::CreateWriterInstance) {
            waits.push(d.wake_after);
            break;
        }
        model.now += d.wake_after.unwrap_or(SignedDuration::from_mins(1));
    }
    assert_eq!(waits, vec![Some(first_look)]);
}

/// The look before the replica's cluster is created takes its absence from the fleet snapshot
/// (no direct describe: the creation meets a cluster created since, and checks it the same
/// way); once the creation was asked for, an absent cluster is described directly.
#[test]
fn the_look_before_the_replica_is_created_takes_its_absence_from_the_snapshot() {
    use aurora_migrator::core::needs::needs;
    let p = policy();
    let (model, m) = advanced_to(&p, Phase::CreatingReplica);
    let n = needs(&m, model.now, &p);
    assert!(n.target && n.target_absence_from_snapshot);
    let d = step(&m, &model.observe(&m, &p), model.now, &p);
    assert!(keys(&d.actions).contains(&ActionKey::CreateReplicaCluster));
    let later = model.now + p.slow_change_first_look();
    assert!(!needs(&d.next, later, &p).target_absence_from_snapshot);
}

#[test]
fn preflight_failure_ends_in_failed_without_any_mutation() {
    let mut model = Model::new();
    model.source.as_mut().unwrap().backup_retention_days = 0;
    let mut m = migration();
    run_to_end(&mut model, &mut m, &policy(), 50);
    assert_eq!(m.phase, Phase::Failed);
    assert_eq!(model.clusters_created, 0);
    assert!(model.quarantine.is_none() && !model.parameter_groups);
    let last = model.notifications.last().unwrap();
    assert_eq!(last.severity, Severity::Error);
    assert!(
        last.description.contains("automated backups are off"),
        "{}",
        last.description
    );
    assert_eq!(
        model.source.unwrap().tags["aurora-migration"],
        "stopped",
        "the trigger is reset"
    );
}

#[test]
fn manual_cutover_waits_for_the_approve_tag() {
    let policy = Policy {
        cutover: CutoverPolicy::ManualApproval,
        ..policy()
    };
    let (mut model, mut m) = advanced_to(&policy, Phase::AwaitingCutover);
    for _ in 0..30 {
        quiet_round(&mut model, &mut m, &policy);
        model.now += SignedDuration::from_mins(10);
    }
    assert_eq!(
        m.phase,
        Phase::AwaitingCutover,
        "no cutover without approval"
    );
    assert!(!model.quarantined());
    model.tag_source("aurora-migration:approve", "true");
    quiet_round(&mut model, &mut m, &policy);
    assert_eq!(m.phase, Phase::Quiescing);
}

#[test]
fn window_cutover_starts_only_inside_the_window() {
    // 2026-11-25 is a Wednesday; the window is Wednesday 12:00–13:00 UTC.
    let policy = Policy {
        cutover: CutoverPolicy::Window("wed:12:00-wed:13:00".parse().unwrap()),
        ..policy()
    };
    let (mut model, mut m) = advanced_to(&policy, Phase::AwaitingCutover);
    assert!(model.now < "2026-11-25T12:00:00Z".parse().unwrap());
    quiet_round(&mut model, &mut m, &policy);
    assert_eq!(m.phase, Phase::AwaitingCutover);
    model.now = "2026-11-25T12:00:30Z".parse().unwrap();
    quiet_round(&mut model, &mut m, &policy);
    assert_eq!(m.phase, Phase::Quiescing);
}

#[test]
fn fleet_pause_holds_at_the_cutover_gate_and_resume_releases() {
    let mut model = Model::new();
    model.fleet_paused = true;
    let mut m = migration();
    advance_to(&mut model, &mut m, &policy(), Phase::Paused);
    for _ in 0..5 {
        quiet_round(&mut model, &mut m, &policy());
        model.now += SignedDuration::from_mins(5);
    }
    assert_eq!(m.phase, Phase::Paused);
    assert!(!model.quarantined(), "a paused migration never quarantines");
    model.fleet_paused = false;
    quiet_round(&mut model, &mut m, &policy());
    assert_eq!(m.phase, Phase::AwaitingCutover);
}

#[test]
fn a_migration_without_a_cutover_turn_waits_with_writes_flowing_and_enters_when_given_one() {
    let (mut model, mut m) = advanced_to(&policy(), Phase::AwaitingCutover);
    model.no_cutover_turn = true;
    let asked = model.now;
    for _ in 0..6 {
        let obs = model.observe(&m, &policy());
        let d = step(&m, &obs, model.now, &policy());
        assert_eq!(d.next.phase, Phase::AwaitingCutover, "no turn: no cutover");
        assert!(
            !keys(&d.actions).contains(&ActionKey::QuarantineSource),
            "no quarantine while it waits: {:?}",
            keys(&d.actions)
        );
        assert!(
            d.wake_after
                .is_some_and(|w| w <= SignedDuration::from_secs(10)),
            "it looks again soon for a turn given back: {:?}",
            d.wake_after
        );
        m = d.next;
        model.now += SignedDuration::from_secs(10);
    }
    assert!(!model.quarantined(), "writes still flow");
    assert_eq!(
        m.progress.cutover_turn_asked_at,
        Some(asked),
        "its place in line is the time it first asked"
    );
    model.no_cutover_turn = false;
    quiet_round(&mut model, &mut m, &policy());
    assert_eq!(m.phase, Phase::Quiescing);
    assert_eq!(m.progress.cutover_turn_asked_at, None);
}

#[test]
fn quiescing_records_original_groups_before_quarantining() {
    let (model, m) = advanced_to(&policy(), Phase::Quiescing);
    let obs = model.observe(&m, &policy());
    let d = step(&m, &obs, model.now, &policy());
    assert_eq!(
        d.next.progress.original_groups.as_deref(),
        Some(&["sg-app".to_string()][..])
    );
    assert!(keys(&d.actions).contains(&ActionKey::QuarantineSource));
    assert!(
        keys(&d.actions).contains(&ActionKey::EnsureHeartbeatAlarm),
        "the heartbeat alarm is created at quarantine"
    );
    assert!(
        !keys(&d.actions).contains(&ActionKey::RebootSource),
        "no reboot before the quarantine is active"
    );
}

/// An agent that took the lease from another (dead) agent process asks at once for what that
/// process recorded as in flight but may never have sent: the quarantine here, which would
/// otherwise wait for its 30 s reissue with the cutover under way.
#[test]
fn a_step_that_took_the_lease_from_another_agent_asks_again_at_once_for_what_was_in_flight() {
    let (model, m) = advanced_to(&policy(), Phase::Quiescing);
    let obs = model.observe(&m, &policy());
    let first = step(&m, &obs, model.now, &policy());
    assert!(keys(&first.actions).contains(&ActionKey::QuarantineSource));
    // The process that decided it died before sending it: AWS saw nothing.
    let m = first.next;
    let again = step(&m, &obs, model.now, &policy());
    assert!(
        !keys(&again.actions).contains(&ActionKey::QuarantineSource),
        "in flight: not asked again before its reissue period by the same agent"
    );
    let taken_over = Observation {
        taken_over: true,
        ..obs.clone()
    };
    let d = step(&m, &taken_over, model.now, &policy());
    assert!(keys(&d.actions).contains(&ActionKey::QuarantineSource));
}

#[test]
fn reboot_waits_until_quarantine_group_is_active() {
    let (mut model, mut m) = advanced_to(&policy(), Phase::Quiescing);
    quiet_round(&mut model, &mut m, &policy());
    model.source.as_mut().unwrap().security_groups[0].status = "adding".into();
    let d = step(&m, &model.observe(&m, &policy()), model.now, &policy());
    assert!(!keys(&d.actions).contains(&ActionKey::RebootSource));
    model.source.as_mut().unwrap().security_groups[0].status = "active".into();
    let d = step(&m, &model.observe(&m, &policy()), model.now, &policy());
    assert!(keys(&d.actions).contains(&ActionKey::RebootSource));
    assert_eq!(d.next.phase, Phase::Draining);
}

/// The looks for the quarantine's group change (RDS sends no event when it is applied) come on
/// the grid of the poll's multiples, whenever the step ran, and their describes gather: every
/// cutover in that wait looks at the same times, and one request serves them all. The metric
/// path polls every `fast_poll`; the next look is at least `MIN_WAKE` away.
#[test]
fn the_looks_for_the_group_change_come_on_a_shared_grid_and_gather() {
    use aurora_migrator::core::needs::needs;
    let p = policy();
    let (mut model, mut m) = advanced_to(&p, Phase::Quiescing);
    quiet_round(&mut model, &mut m, &p);
    model.source.as_mut().unwrap().security_groups[0].status = "adding".into();
    assert!(
        needs(&m, model.now, &p).gathers_quickly,
        "asked for: the wait gathers"
    );
    let poll = p.fast_poll.as_millis();
    for offset_ms in [0, 1_300, 4_950] {
        let now = model.now + SignedDuration::from_millis(offset_ms);
        let d = step(&m, &model.observe(&m, &p), now, &p);
        assert_eq!(d.next.phase, Phase::Quiescing);
        let wake = d.wake_after.expect("a look is scheduled");
        let at = (now + wake).as_millisecond() as i128;
        assert_eq!(
            at % poll,
            0,
            "on the grid (step {offset_ms} ms in): {wake:?}"
        );
        assert!(wake >= SignedDuration::from_millis(100) && wake.as_millis() <= poll + 100);
    }
    // Once applied, nothing is waited on any more: the looks that follow do not gather.
    model.source.as_mut().unwrap().security_groups[0].status = "active".into();
    let d = step(&m, &model.observe(&m, &p), model.now, &p);
    assert_eq!(d.next.phase, Phase::Draining);
    assert!(!needs(&d.next, model.now, &p).gathers_quickly);
}

/// Brings a migration to Draining with the reboot done, and returns the observation there.
fn draining() -> (Model, aurora_migrator::core::Migration) {
    advanced_to(&policy(), Phase::Draining)
}

/// Draining three minutes after the reboot: long enough for the drain proof when nothing is
/// wrong (see `draining_needs_a_slot_lag_period_starting_after_the_restart`).
fn draining_long_enough() -> (Model, aurora_migrator::core::Migration) {
    let (mut model, m) = draining();
    model.now += SignedDuration::from_mins(3);
    (model, m)
}

/// One step on `obs` leaves the migration in Draining: the drain is not proven.
fn assert_drain_not_proven(model: &Model, m: &aurora_migrator::core::Migration, obs: &Observation) {
    let d = step(m, obs, model.now, &policy());
    assert_eq!(d.next.phase, Phase::Draining);
}

#[test]
fn draining_needs_a_slot_lag_period_starting_after_the_restart() {
    let (mut model, m) = draining();
    let mut obs = model.observe(&m, &policy());
    // A 0 reading from before the restart proves nothing (it oscillates 0 ↔ 64 MiB when quiet).
    let before = model.restarted_at.unwrap() - SignedDuration::from_mins(5);
    obs.metrics
        .insert(MetricKey::SourceSlotLag, vec![point(before, 0.0)]);
    let d = step(&m, &obs, model.now, &policy());
    assert_eq!(d.next.phase, Phase::Draining);
    model.now += SignedDuration::from_mins(3);
    let obs = model.observe(&m, &policy());
    let d = step(&m, &obs, model.now, &policy());
    assert_eq!(d.next.phase, Phase::Promoting);
}

#[test]
fn draining_is_not_proven_without_a_restart_event() {
    let (mut model, m) = draining_long_enough();
    model.events.clear();
    assert_drain_not_proven(&model, &m, &model.observe(&m, &policy()));
}

#[test]
fn draining_is_not_proven_while_connections_remain() {
    let (model, m) = draining_long_enough();
    let mut obs = model.observe(&m, &policy());
    set_reading(&mut obs, MetricKey::SourceConnections, 3.0);
    assert_drain_not_proven(&model, &m, &obs);
}

#[test]
fn draining_is_not_proven_when_the_quarantine_group_gained_a_rule() {
    let (mut model, m) = draining_long_enough();
    model.quarantine.as_mut().unwrap().egress_rules = 1;
    assert_drain_not_proven(&model, &m, &model.observe(&m, &policy()));
}

#[test]
fn draining_is_not_proven_when_iac_put_the_groups_back() {
    let (mut model, m) = draining_long_enough();
    let source = model.source.as_mut().unwrap();
    source.security_groups.push(active_group("sg-app"));
    assert_drain_not_proven(&model, &m, &model.observe(&m, &policy()));
}

#[test]
fn stale_slot_never_promotes_and_rolls_back_losslessly_when_the_budget_runs_out() {
    let (mut model, mut m) = advanced_to(&policy(), Phase::Draining);
    model.stale_slot = true;
    let phases = run_to_end(&mut model, &mut m, &policy(), 2000);
    assert!(!phases.contains(&Phase::Promoting));
    assert_eq!(model.promotions, 0);
    assert_eq!(m.phase, Phase::RolledBack);
    assert!(m.history.iter().any(|h| h.phase == Phase::RollingBack));
    assert_eq!(
        model.source.as_ref().unwrap().group_ids(),
        ["sg-app"],
        "the original groups are back"
    );
    assert!(model.target.is_none(), "the replica is deleted");
    let alerts: Vec<&str> = model
        .notifications
        .iter()
        .map(|n| n.event.as_str())
        .collect();
    assert!(
        alerts.contains(&"draining-slow"),
        "an alert before the budget runs out: {alerts:?}"
    );
    assert!(
        matches!(m.rollback.as_ref().unwrap().cause, RollbackCause::Failure(ref why) if why.contains("budget"))
    );
}

#[test]
fn abort_before_promotion_restores_groups_and_deletes_the_replica() {
    let (mut model, mut m) = draining();
    model.tag_source("aurora-migration:abort", "true");
    run_to_end(&mut model, &mut m, &policy(), 200);
    assert_eq!(m.phase, Phase::Aborted);
    assert_eq!(model.promotions, 0);
    assert_eq!(model.source.as_ref().unwrap().group_ids(), ["sg-app"]);
    assert!(model.target.is_none());
    assert!(model.quarantine.is_none());
}

/// A migration in Draining (the source fenced) aborted by its tag, stepped until RollingBack.
fn rolling_back_from_draining_on_abort(policy: &Policy) -> (Model, Migration) {
    let (mut model, mut m) = draining();
    model.tag_source("aurora-migration:abort", "true");
    let mut rounds = 0;
    while m.phase != Phase::RollingBack {
        // Nobody asked for the replica's deletion yet: its absence from the fleet snapshot
        // would not be its deletion (described directly).
        assert!(
            !aurora_migrator::core::needs::needs(&m, model.now, policy)
                .target_absence_from_snapshot
        );
        quiet_round(&mut model, &mut m, policy);
        rounds += 1;
        assert!(rounds < 10, "the abort starts the rollback");
    }
    (model, m)
}

/// A rollback before cutover looks every `fast_poll` while the source is fenced; once the
/// source has its groups back and takes writes, the replica's deletion (minutes at RDS) is
/// looked at every `slow_poll`: nobody's writes wait on it.
#[test]
fn a_rollback_looks_slowly_once_the_source_takes_writes_again() {
    let policy = policy();
    let (mut model, mut m) = rolling_back_from_draining_on_abort(&policy);
    let replica = model.target.clone().expect("the replica exists");
    // The step that asks for the groups back (and the replica's deletion) looks again soon.
    let d = quiet_round(&mut model, &mut m, &policy);
    assert!(
        m.source_quarantined(),
        "the groups are asked back, not yet seen"
    );
    assert!(
        d.wake_after.is_some_and(|w| w <= policy.fast_poll),
        "{:?}",
        d.wake_after
    );
    // Asked for its deletion, the replica's absence from a snapshot taken after the request is
    // its deletion done: the looks that wait for it need no request to find it gone.
    assert!(m.requested.contains_key(&ActionKey::DeleteTarget));
    let n = aurora_migrator::core::needs::needs(&m, model.now, &policy);
    assert!(n.target_absence_from_snapshot);
    // RDS deletes the replica for minutes.
    model.target = Some(TargetCluster {
        status: "deleting".into(),
        ..replica
    });
    let d = quiet_round(&mut model, &mut m, &policy);
    assert_eq!(m.phase, Phase::RollingBack);
    assert!(!m.source_quarantined(), "the source takes writes again");
    assert_eq!(d.wake_after, Some(policy.slow_poll));
    assert!(
        !aurora_migrator::agent::cutover_lane(&m),
        "its calls can wait"
    );
    model.target = None;
    run_to_end(&mut model, &mut m, &policy, 50);
    assert_eq!(m.phase, Phase::Aborted);
}

/// A rollback before cutover asks for the source's groups back and the replica's deletion on
/// one look; while the source waits for its groups (looks every `fast_poll`, writes stopped),
/// the replica whose deletion is in flight is not described: nothing waits on it until the
/// source takes writes again. A request in flight for longer than `reissue_after` (lost?) has
/// the replica read again, so that it is asked again.
#[test]
fn a_rollback_does_not_describe_the_replica_being_deleted_while_the_source_waits_for_its_groups() {
    use aurora_migrator::core::needs::needs;
    let policy = policy();
    let (mut model, mut m) = rolling_back_from_draining_on_abort(&policy);
    if !m.requested.contains_key(&ActionKey::DeleteTarget) {
        assert!(
            needs(&m, model.now, &policy).target,
            "the replica is read to be deleted"
        );
        let d = step(&m, &model.observe(&m, &policy), model.now, &policy);
        assert!(keys(&d.actions).contains(&ActionKey::DeleteTarget));
        m = d.next; // asked for; RDS has not applied the groups yet
    }
    assert!(
        m.source_quarantined(),
        "the groups are asked back, not yet seen"
    );
    for after in [1, 5, 30, 170] {
        let n = needs(&m, model.now + SignedDuration::from_secs(after), &policy);
        assert!(
            !n.target,
            "{after} s in: the replica being deleted is not described"
        );
        assert!(n.source && n.quarantine_group, "the source's groups are");
    }
    let lost = model.now + policy.reissue_after + SignedDuration::from_secs(1);
    assert!(
        needs(&m, lost, &policy).target,
        "in flight too long: read to ask again"
    );
    // RDS applies the groups: once the source takes writes again, the replica is looked at
    // (every `slow_poll`).
    model.source.as_mut().unwrap().security_groups = vec![active_group("sg-app")];
    let d = quiet_round(&mut model, &mut m, &policy);
    assert!(!m.source_quarantined(), "the source takes writes again");
    assert!(needs(&m, model.now, &policy).target);
    assert_eq!(d.wake_after, Some(policy.slow_poll));
    run_to_end(&mut model, &mut m, &policy, 50);
    assert_eq!(m.phase, Phase::Aborted);
    assert!(model.target.is_none(), "the replica was deleted");
}

#[test]
fn abort_in_preflight_ends_at_once_without_mutations() {
    let mut model = Model::new();
    model.tag_source("aurora-migration:abort", "true");
    let mut m = migration();
    run_to_end(&mut model, &mut m, &policy(), 20);
    assert_eq!(m.phase, Phase::Aborted);
    assert_eq!(model.clusters_created, 0);
    assert!(!model.parameter_groups);
}

#[test]
fn abort_after_routing_is_ignored_with_a_warning() {
    let (mut model, mut m) = advanced_to(&policy(), Phase::Verifying);
    model.tag_source("aurora-migration:abort", "true");
    quiet_round(&mut model, &mut m, &policy());
    assert_eq!(m.phase, Phase::Verifying);
    assert!(
        model
            .notifications
            .iter()
            .any(|n| n.event == "abort-ignored")
    );
}

#[test]
fn rollback_after_cutover_needs_the_approval_tag_and_fences_aurora_first() {
    let (mut model, mut m) = advanced_to(&policy(), Phase::Verifying);
    model.tag_source("aurora-migration:rollback", "approve");
    let first = quiet_round(&mut model, &mut m, &policy());
    assert_eq!(m.phase, Phase::RollingBack);
    assert!(m.rollback.as_ref().unwrap().after_cutover);
    assert!(
        keys(&first.actions).is_empty(),
        "entering the rollback changes nothing yet"
    );
    let d = quiet_round(&mut model, &mut m, &policy());
    assert_eq!(
        keys(&d.actions),
        vec![ActionKey::QuarantineTarget],
        "Aurora is fenced before anything else"
    );
    run_to_end(&mut model, &mut m, &policy(), 50);
    assert_eq!(m.phase, Phase::RolledBack);
    assert_eq!(
        model.routed_to.as_deref(),
        Some("orders-pg.abc.us-east-1.rds.amazonaws.com")
    );
    assert_eq!(model.source.as_ref().unwrap().group_ids(), ["sg-app"]);
    assert!(
        model.target.is_some(),
        "the Aurora cluster is kept for reconciliation"
    );
    assert!(
        model
            .notifications
            .iter()
            .any(|n| n.event == "writes-on-target" && n.severity == Severity::Error)
    );
}

#[test]
fn low_free_storage_deletes_the_replica_and_fails_with_an_alert() {
    let (mut model, mut m) = advanced_to(&policy(), Phase::Replicating);
    let mut obs = model.observe(&m, &policy());
    set_reading(&mut obs, MetricKey::SourceFreeStorage, 2.0 * GIB);
    let d = step(&m, &obs, model.now, &policy());
    assert_eq!(d.next.phase, Phase::RollingBack);
    m = d.next;
    run_to_end(&mut model, &mut m, &policy(), 50);
    assert_eq!(m.phase, Phase::RolledBack);
    assert!(model.target.is_none());
    assert!(m.last_error.as_deref().unwrap().contains("free storage"));
}

#[test]
fn replica_lag_must_stay_low_for_the_sustain_period() {
    let (mut model, mut m) = advanced_to(&policy(), Phase::Replicating);
    let entered = model.now;
    quiet_round(&mut model, &mut m, &policy());
    assert!(m.progress.lag_ok_since.is_some());
    // One bad reading resets the clock.
    let mut obs = model.observe(&m, &policy());
    set_reading(&mut obs, MetricKey::TargetReplicaLag, 120.0);
    let d = step(&m, &obs, model.now, &policy());
    assert!(d.next.progress.lag_ok_since.is_none());
    m = d.next;
    advance_to(&mut model, &mut m, &policy(), Phase::AwaitingCutover);
    assert!(model.now.duration_since(entered) >= policy().lag_sustain);
}

#[test]
fn transient_action_failures_are_retried_then_the_phase_fails() {
    let (mut model, mut m) = advanced_to(&policy(), Phase::CreatingReplica);
    let mut tries = 0;
    for _ in 0..200 {
        let d = round(&mut model, &mut m, &policy(), &mut |a| {
            (a.key() == ActionKey::CreateReplicaCluster).then(|| {
                tries += 1;
                ErrorKind::Throttled
            })
        });
        model.now += d.wake_after.unwrap().max(SignedDuration::from_secs(1));
        if m.phase != Phase::CreatingReplica {
            break;
        }
    }
    assert_eq!(tries, policy().max_action_retries + 1);
    assert_eq!(m.phase, Phase::RollingBack);
    assert!(
        m.last_error
            .as_deref()
            .unwrap()
            .contains("CreateReplicaCluster")
    );
}

#[test]
fn a_fatal_action_error_before_cutover_rolls_back() {
    let (mut model, mut m) = draining();
    model.now += SignedDuration::from_mins(3);
    quiet_round(&mut model, &mut m, &policy());
    assert_eq!(m.phase, Phase::Promoting);
    round(&mut model, &mut m, &policy(), &mut |a| {
        (a.key() == ActionKey::PromoteTarget).then_some(ErrorKind::Fatal)
    });
    quiet_round(&mut model, &mut m, &policy());
    assert_eq!(m.phase, Phase::RollingBack);
    assert_eq!(model.promotions, 0);
}

#[test]
fn a_cluster_with_our_name_that_is_not_ours_is_never_touched() {
    let (mut model, mut m) = advanced_to(&policy(), Phase::CreatingReplica);
    model.target = Some(TargetCluster {
        identifier: m.names.cluster.clone(),
        arn: "arn:aws:rds:us-east-1:123456789012:cluster:someone".into(),
        status: "available".into(),
        replication_source: None,
        ..TargetCluster::default()
    });
    let d = quiet_round(&mut model, &mut m, &policy());
    assert_eq!(m.phase, Phase::Failed);
    assert!(
        keys(&d.actions)
            .iter()
            .all(|k| *k != ActionKey::DeleteTarget && *k != ActionKey::CreateReplicaCluster)
    );
}

#[test]
fn routing_with_cdc_waits_for_the_slots_acknowledgement() {
    let mut model = Model::new();
    model.tag_source("aurora-migration:cdc-consumers", "sg-debezium");
    model.tag_source("aurora-migration:ack-cdc-consumers", "true");
    let mut m = migration();
    advance_to(&mut model, &mut m, &policy(), Phase::Draining);
    assert_eq!(
        model.quarantine.as_ref().unwrap().ingress_sources,
        ["sg-debezium"],
        "the consumers' exception"
    );
    model.now += SignedDuration::from_mins(3);
    quiet_round(&mut model, &mut m, &policy());
    assert_eq!(m.phase, Phase::Draining, "waits for the consumers to drain");
    model.tag_source("aurora-migration:cdc-drained", "true");
    advance_to(&mut model, &mut m, &policy(), Phase::Routing);
    for _ in 0..5 {
        quiet_round(&mut model, &mut m, &policy());
    }
    assert_eq!(m.phase, Phase::Routing);
    assert!(
        model.routed_to.is_none(),
        "no route before the slots exist on the target"
    );
    model.tag_source("aurora-migration:cdc-slots-created", "true");
    advance_to(&mut model, &mut m, &policy(), Phase::Verifying);
    assert!(
        m.plan
            .as_ref()
            .unwrap()
            .cluster_parameters
            .iter()
            .any(|p| p.name == "rds.logical_replication" && p.value == "1")
    );
}

#[test]
fn smoke_test_failure_fails_verification() {
    let policy = Policy {
        smoke_test: true,
        ..policy()
    };
    let (mut model, mut m) = advanced_to(&policy, Phase::Verifying);
    round(&mut model, &mut m, &policy, &mut |a| {
        (a.key() == ActionKey::RunSmokeTest).then_some(ErrorKind::Fatal)
    });
    model.now += SignedDuration::from_secs(60);
    quiet_round(&mut model, &mut m, &policy);
    quiet_round(&mut model, &mut m, &policy);
    assert_eq!(m.phase, Phase::Failed);
    assert!(m.last_error.as_deref().unwrap().contains("smoke test"));
}

#[test]
fn kpi_regression_fails_verification_and_offers_rollback() {
    let (mut model, m) = advanced_to(&policy(), Phase::Verifying);
    model.now += policy().soak + SignedDuration::from_mins(1);
    let mut obs = model.observe(&m, &policy());
    set_reading(&mut obs, MetricKey::TargetCpu, 95.0);
    let d = step(&m, &obs, model.now, &policy());
    assert_eq!(d.next.phase, Phase::Failed);
    let note = d
        .actions
        .iter()
        .find_map(|a| match a {
            Action::Notify(n) => Some(n),
            _ => None,
        })
        .unwrap();
    assert!(
        note.next_steps
            .iter()
            .any(|s| s.contains("rollback=approve"))
    );
    assert!(
        d.next.next_wake.is_some(),
        "a failed migration after cutover stays watched for a rollback approval"
    );
}

#[test]
fn writes_on_the_old_primary_after_cutover_raise_an_alert() {
    let (mut model, m) = advanced_to(&policy(), Phase::Verifying);
    model.now += SignedDuration::from_mins(5);
    let mut obs = model.observe(&m, &policy());
    obs.metrics.insert(
        MetricKey::SourceWalGeneration,
        vec![point(model.now - SignedDuration::from_mins(1), 9.0e6)],
    );
    let d = step(&m, &obs, model.now, &policy());
    assert!(d.actions.iter().any(|a| matches!(a, Action::Notify(n) if n.event == "source-writes" && n.severity == Severity::Error)));
}

#[test]
fn a_repeated_observation_asks_for_nothing_twice() {
    let (model, m) = advanced_to(&policy(), Phase::Quiescing);
    let obs = model.observe(&m, &policy());
    let first = step(&m, &obs, model.now, &policy());
    let second = step(&first.next, &obs, model.now, &policy());
    assert!(keys(&first.actions).contains(&ActionKey::QuarantineSource));
    assert!(keys(&second.actions).is_empty());
}

#[test]
fn an_unconfirmed_request_is_reissued_after_the_reissue_delay() {
    let (model, m) = advanced_to(&policy(), Phase::CreatingReplica);
    let obs = model.observe(&m, &policy());
    // The agent crashed after persisting: the request is recorded, never executed.
    let first = step(&m, &obs, model.now, &policy());
    assert_eq!(keys(&first.actions), vec![ActionKey::CreateReplicaCluster]);
    let soon = step(
        &first.next,
        &obs,
        model.now + SignedDuration::from_secs(30),
        &policy(),
    );
    assert!(keys(&soon.actions).is_empty());
    let later = step(
        &first.next,
        &obs,
        model.now + policy().reissue_after + SignedDuration::from_secs(1),
        &policy(),
    );
    assert_eq!(keys(&later.actions), vec![ActionKey::CreateReplicaCluster]);
}

#[test]
fn a_failed_result_is_retried_after_a_backoff_not_at_once() {
    let (model, m) = advanced_to(&policy(), Phase::CreatingReplica);
    let mut obs = model.observe(&m, &policy());
    let first = step(&m, &obs, model.now, &policy());
    obs.action_results = vec![ActionResult {
        key: ActionKey::CreateReplicaCluster,
        id: None,
        outcome: Err(ActionError {
            kind: ErrorKind::Retryable,
            message: "503".into(),
        }),
        output: None,
    }];
    let heard = step(&first.next, &obs, model.now, &policy());
    assert!(keys(&heard.actions).is_empty(), "not retried at once");
    assert_eq!(heard.next.action_failures, 1);
    let backoff = heard.next.requested[&ActionKey::CreateReplicaCluster].duration_since(model.now);
    assert!(
        backoff < policy().reissue_after,
        "retried sooner than a lost request: {backoff:?}"
    );
    obs.action_results.clear();
    let retried = step(&heard.next, &obs, model.now + backoff, &policy());
    assert_eq!(
        keys(&retried.actions),
        vec![ActionKey::CreateReplicaCluster]
    );
}

#[test]
fn phase_timeouts_fail_with_a_clear_reason() {
    let (mut model, mut m) = advanced_to(&policy(), Phase::CreatingReplica);
    // The cluster never becomes available.
    quiet_round(&mut model, &mut m, &policy());
    model.target.as_mut().unwrap().status = "creating".into();
    model.now += policy().timeouts.creating_replica + SignedDuration::from_secs(1);
    quiet_round(&mut model, &mut m, &policy());
    assert_eq!(m.phase, Phase::RollingBack);
    assert!(
        m.last_error
            .as_deref()
            .unwrap()
            .contains("creatingreplica did not finish within 2d"),
        "{:?}",
        m.last_error
    );
}

#[test]
fn the_source_disappearing_mid_migration_fails_with_an_alert() {
    let (mut model, mut m) = advanced_to(&policy(), Phase::Replicating);
    model.source = None;
    let d = quiet_round(&mut model, &mut m, &policy());
    assert_eq!(m.phase, Phase::Failed);
    assert!(
        d.actions
            .iter()
            .any(|a| matches!(a, Action::Notify(n) if n.severity == Severity::Error))
    );
}

#[test]
fn terminal_records_reset_the_trigger_once_then_sleep() {
    let mut model = Model::new();
    model.source.as_mut().unwrap().engine = "mysql".into();
    let mut m = migration();
    run_to_end(&mut model, &mut m, &policy(), 20);
    assert_eq!(m.phase, Phase::Failed);
    assert!(m.trigger_reset_at.is_some());
    assert!(m.next_wake.is_none(), "nothing left to watch");
}

#[test]
fn a_fatal_error_while_rolling_back_alerts_and_keeps_trying() {
    let (mut model, mut m) = draining();
    model.tag_source("aurora-migration:abort", "true");
    quiet_round(&mut model, &mut m, &policy());
    assert_eq!(m.phase, Phase::RollingBack);
    round(&mut model, &mut m, &policy(), &mut |a| {
        (a.key() == ActionKey::RestoreSourceGroups).then_some(ErrorKind::Fatal)
    });
    quiet_round(&mut model, &mut m, &policy());
    assert_eq!(m.phase, Phase::RollingBack, "a rollback is never abandoned");
    assert!(
        model
            .notifications
            .iter()
            .any(|n| n.event == "rollback-error" && n.severity == Severity::Error)
    );
    run_to_end(&mut model, &mut m, &policy(), 200);
    assert_eq!(m.phase, Phase::Aborted);
    assert_eq!(model.source.as_ref().unwrap().group_ids(), ["sg-app"]);
}

#[test]
fn a_failed_reboot_is_asked_again_after_a_short_backoff() {
    let (mut model, mut m) = advanced_to(&policy(), Phase::Quiescing);
    // The quarantine, then the reboot request, which fails (throttled): no reboot happened.
    quiet_round(&mut model, &mut m, &policy());
    round(&mut model, &mut m, &policy(), &mut |a| {
        (a.key() == ActionKey::RebootSource).then_some(ErrorKind::Throttled)
    });
    assert_eq!(m.phase, Phase::Draining);
    assert_eq!(model.reboots, 0);
    let mut waited = SignedDuration::ZERO;
    while model.reboots == 0 && waited < SignedDuration::from_mins(2) {
        let d = quiet_round(&mut model, &mut m, &policy());
        let step = d.wake_after.unwrap();
        model.now += step;
        waited += step;
    }
    assert_eq!(
        model.reboots, 1,
        "rebooted again within {waited:?}, well before the 10 min reissue delay"
    );
    run_to_end(&mut model, &mut m, &policy(), 500);
    assert_eq!(m.phase, Phase::Completed);
}

/// A reboot request whose answer was lost (a timeout) though RDS performed it: the look after
/// the backoff describes the source `rebooting` and waits for that reboot instead of asking
/// again, which RDS would refuse now and perform once the source is back: a second reboot.
#[test]
fn a_reboot_whose_answer_was_lost_is_waited_for_not_asked_again() {
    let policy = policy();
    let (mut model, mut m) = reboot_failed_with(&policy, ErrorKind::Retryable);
    // RDS performed it: the source restarts for two minutes.
    let began = rds_performed_the_lost_reboot(&mut model, true);
    wait_out_the_reboot(&mut model, &mut m, &policy, began);
    model.source.as_mut().unwrap().status = "available".into();
    restart_reported_then_completes_with_one_reboot(&mut model, &mut m, &policy);
}

/// RDS performed a reboot whose answer was lost, now: the source `rebooting`, its shutdown
/// event in the answers if `shutdown_seen`. Returns when it began.
fn rds_performed_the_lost_reboot(model: &mut Model, shutdown_seen: bool) -> Timestamp {
    let began = model.now;
    model.reboots += 1;
    model.source.as_mut().unwrap().status = "rebooting".into();
    if shutdown_seen {
        model.events.push(InstanceEvent {
            at: began,
            kind: InstanceEventKind::Shutdown,
        });
    }
    began
}

/// The looks of the two minutes RDS restarts the source from `began`: none asks for a reboot.
fn wait_out_the_reboot(model: &mut Model, m: &mut Migration, policy: &Policy, began: Timestamp) {
    while model.now < began + SignedDuration::from_mins(2) {
        let d = quiet_round(model, m, policy);
        assert!(
            !keys(&d.actions).contains(&ActionKey::RebootSource),
            "asked for a reboot while RDS is restarting the source"
        );
        model.now += d.wake_after.unwrap().max(SignedDuration::from_secs(1));
    }
}

/// The restart's event comes now; the migration completes on the one reboot.
fn restart_reported_then_completes_with_one_reboot(
    model: &mut Model,
    m: &mut Migration,
    policy: &Policy,
) {
    model.restarted_at = Some(model.now);
    model.events.push(InstanceEvent {
        at: model.now,
        kind: InstanceEventKind::Restarted,
    });
    run_to_end(model, m, policy, 500);
    assert_eq!(m.phase, Phase::Completed);
    assert_eq!(model.reboots, 1, "one reboot");
}

/// The same lost answer, and the restart's event late: an events answer from before it (the
/// Region's events are read once for the whole fleet) while the source is described `available`
/// again. The shutdown RDS reported counts for the request: recorded as asked for when the look
/// recognised the reboot, after that shutdown, the wait took the restart for a reboot that never
/// started and asked for a second one (the simulator's 1,000-migration fleet, seed 2,
/// `orders-db-0378`: a second reboot, 2 min 19 s more, and the write budget ran out).
/// With the shutdown's event late too (not in the answer of the look that saw the source
/// `rebooting`, as in that fleet run), the status is what says RDS took the request up.
#[test]
fn a_lost_answer_reboots_late_restart_event_does_not_ask_for_a_second_reboot() {
    for shutdown_seen in [true, false] {
        lost_answer_reboot_with_late_events(shutdown_seen);
    }
}

fn lost_answer_reboot_with_late_events(shutdown_seen: bool) {
    let policy = policy();
    let (mut model, mut m) = reboot_failed_with(&policy, ErrorKind::Retryable);
    // RDS performed it at once: the shutdown precedes the look that recognises it, after the
    // failure's backoff.
    let began = rds_performed_the_lost_reboot(&mut model, shutdown_seen);
    model.now += SignedDuration::from_secs(3);
    wait_out_the_reboot(&mut model, &mut m, &policy, began);
    // Restarted, the event not in the answers yet.
    model.source.as_mut().unwrap().status = "available".into();
    model.now = began + policy.reboot_unconfirmed_after + SignedDuration::from_secs(60);
    let d = quiet_round(&mut model, &mut m, &policy);
    assert!(
        !keys(&d.actions).contains(&ActionKey::RebootSource),
        "a second reboot asked for while the restart's event is late (shutdown seen {shutdown_seen})"
    );
    restart_reported_then_completes_with_one_reboot(&mut model, &mut m, &policy);
}

/// The same lost answer, recognised late: RDS restarted the source before the look that first
/// sees it `rebooting` (a describe behind the reboot by some seconds), and that look read no
/// shutdown. The restart's event, read by a later look, is timestamped before the recognising
/// look. Recorded as asked for at that look, the restart did not count: the looks waited for
/// one already reported, until the write budget rolled the cutover back. Counted from the step
/// that asked for the reboot (it entered Draining, with the quarantine active), the restart is
/// this request's: one reboot, and the cutover completes.
#[test]
fn a_lost_answer_reboot_recognised_after_its_restart_counts_that_restart() {
    let policy = policy();
    let (mut model, mut m) = reboot_failed_with(&policy, ErrorKind::Retryable);
    let began = rds_performed_the_lost_reboot(&mut model, false);
    let restarted = began + SignedDuration::from_secs(40);
    model.restarted_at = Some(restarted);
    // The first look after the failure's backoff: still described `rebooting`, no event read.
    model.now = began + SignedDuration::from_secs(60);
    for _ in 0..3 {
        // One look, or two where the first was planned to read the snapshot only.
        let d = quiet_round(&mut model, &mut m, &policy);
        assert!(!keys(&d.actions).contains(&ActionKey::RebootSource));
    }
    assert!(
        m.progress.reboot_requested_at.is_some(),
        "the look recognised RDS performing the reboot"
    );
    // The next looks: the source `available`, the shutdown and the restart reported.
    model.source.as_mut().unwrap().status = "available".into();
    for (at, kind) in [
        (began, InstanceEventKind::Shutdown),
        (restarted, InstanceEventKind::Restarted),
    ] {
        model.events.push(InstanceEvent { at, kind });
    }
    let phases = run_to_end(&mut model, &mut m, &policy, 500);
    assert_eq!(m.phase, Phase::Completed, "went through {phases:?}");
    assert_eq!(model.reboots, 1, "one reboot");
    assert_eq!(
        m.progress.restarted_at,
        Some(restarted),
        "the restart RDS reported is the proof's"
    );
}

#[test]
fn a_cluster_reported_promoting_is_not_asked_to_promote_again() {
    let policy = policy();
    let (mut model, mut m) = advanced_to(&policy, Phase::Promoting);
    let need = aurora_migrator::core::needs::needs(&m, model.now, &policy);
    assert!(
        !need.source_from_snapshot,
        "the look that asks for the promotion re-reads the fence from RDS"
    );
    let d = quiet_round(&mut model, &mut m, &policy);
    assert!(keys(&d.actions).contains(&ActionKey::PromoteTarget));
    // AWS took the request up and promotes for minutes: still a replica, `promoting`.
    let t = model.target.as_mut().unwrap();
    t.replication_source = Some(m.source_arn.clone());
    t.status = "promoting".into();
    for _ in 0..10 {
        model.now += policy.cutover_reissue_after + SignedDuration::from_secs(1);
        let d = quiet_round(&mut model, &mut m, &policy);
        assert!(
            !keys(&d.actions).contains(&ActionKey::PromoteTarget),
            "asked again while RDS reports the promotion under way"
        );
        assert_eq!(m.phase, Phase::Promoting);
        let need = aurora_migrator::core::needs::needs(&m, model.now, &policy);
        assert!(
            !need.quarantine_group,
            "the fence is re-read for a request that is not due"
        );
        // The metric path waits on the cluster's status as RDS has it now; the source (fenced,
        // restarted) may come from the fleet snapshot.
        assert!(!m.database_path());
        assert!(need.target && !need.snapshot_will_do);
        assert!(need.source_from_snapshot);
    }
    assert_eq!(model.promotions, 1);
    let t = model.target.as_mut().unwrap();
    t.replication_source = None;
    t.status = "available".into();
    quiet_round(&mut model, &mut m, &policy);
    assert_eq!(m.phase, Phase::Routing);
}

#[test]
fn draining_on_the_metric_path_proves_catch_up_without_describing_the_cluster() {
    let policy = policy();
    let (mut model, mut m) = advanced_to(&policy, Phase::Draining);
    assert!(!m.database_path());
    let need = aurora_migrator::core::needs::needs(&m, model.now, &policy);
    assert!(
        !need.target,
        "the metric path's proof reads events and CloudWatch"
    );
    assert!(need.events_since.is_some() && !need.metrics.is_empty());
    // The model answers only what is asked for: the proof holds without the cluster.
    let phases = run_to_end(&mut model, &mut m, &policy, 200);
    assert!(phases.contains(&Phase::Promoting));
    assert_eq!(m.phase, Phase::Completed);
}

/// A fleet tagged at once waits for the agent's own handlers and rate limiter before each
/// migration's first step: that wait is not the migration's failure.
#[test]
fn a_migration_far_back_in_line_for_a_turn_looks_less_often() {
    let policy = policy();
    let wake = |phase: Phase, ahead: usize| {
        let (mut model, m) = if phase == Phase::Requested {
            (Model::new(), migration())
        } else {
            advanced_to(&policy, phase)
        };
        model.no_cutover_turn = true;
        model.no_preparation_turn = true;
        model.turns_ahead = ahead;
        let obs = model.observe(&m, &policy);
        let d = step(&m, &obs, model.now, &policy);
        assert_eq!(d.next.phase, phase, "no turn: it waits");
        d.wake_after.expect("it looks again")
    };
    let max = policy.max_cutovers;
    assert_eq!(
        wake(Phase::AwaitingCutover, 0),
        SignedDuration::from_secs(10)
    );
    assert_eq!(
        wake(Phase::AwaitingCutover, max - 1),
        SignedDuration::from_secs(10)
    );
    assert_eq!(
        wake(Phase::AwaitingCutover, max),
        SignedDuration::from_secs(20)
    );
    assert_eq!(
        wake(Phase::AwaitingCutover, 40 * max),
        policy.slow_poll,
        "never longer than the phase's poll"
    );
    assert_eq!(wake(Phase::Requested, 0), SignedDuration::from_secs(30));
    assert_eq!(
        wake(Phase::Requested, usize::MAX),
        policy.slow_poll,
        "no overflow far back"
    );
}

#[test]
fn a_requested_migration_without_a_preparation_turn_waits_untimed_and_starts_when_given_one() {
    let policy = policy();
    let mut model = Model::new();
    let mut m = migration();
    model.no_preparation_turn = true;
    // Longer than Preflight's and Preparing's limits together: waiting for a turn is not timed.
    let waited = policy.timeouts.preflight + policy.timeouts.preparing;
    let until = model.now + waited;
    while model.now < until {
        let obs = model.observe(&m, &policy);
        let d = step(&m, &obs, model.now, &policy);
        assert_eq!(d.next.phase, Phase::Requested, "no turn: no preflight");
        assert!(
            d.actions.is_empty() || d.actions.iter().all(|a| matches!(a, Action::Notify(_))),
            "nothing is asked of AWS while it waits: {:?}",
            keys(&d.actions)
        );
        assert!(
            d.wake_after
                .is_some_and(|w| w <= SignedDuration::from_secs(30)),
            "it looks again for a turn given back: {:?}",
            d.wake_after
        );
        m = d.next;
        model.now += SignedDuration::from_secs(30);
    }
    assert_eq!(m.last_error, None);
    model.no_preparation_turn = false;
    quiet_round(&mut model, &mut m, &policy);
    assert_eq!(m.phase, Phase::Preflight);
    let phases = run_to_end(&mut model, &mut m, &policy, 500);
    assert_eq!(m.phase, Phase::Completed, "{phases:?}");
}

#[test]
fn a_migration_first_stepped_long_after_it_was_requested_goes_on_to_preflight() {
    let policy = policy();
    let mut model = Model::new();
    let mut m = migration();
    assert_eq!(m.phase, Phase::Requested);
    model.now = m.phase_entered_at + policy.timeouts.preflight * 3;
    quiet_round(&mut model, &mut m, &policy);
    assert_eq!(m.phase, Phase::Preflight, "{:?}", m.last_error);
    // Preflight's own limit counts from here.
    let phases = run_to_end(&mut model, &mut m, &policy, 500);
    assert_eq!(m.phase, Phase::Completed, "{phases:?}");
}

/// Once the restart is known, no look can find the metric path's proof before the first
/// CloudWatch period that starts after it has begun: the next look is then (not every
/// `fast_poll`), and the source's events are no longer read. Not at that period's end: its
/// datapoint may be readable before it ends, and waiting longer would lengthen the outage.
#[test]
fn draining_after_the_restart_looks_again_when_a_period_after_it_has_begun_and_reads_no_events() {
    let policy = policy();
    let (model, m) = draining();
    assert!(!m.database_path());
    let obs = model.observe(&m, &policy);
    let d = step(&m, &obs, model.now, &policy);
    assert_eq!(d.next.phase, Phase::Draining);
    let restarted = d
        .next
        .progress
        .restarted_at
        .expect("the restart event was read");
    let period_ms = policy.metric_period.as_millis() as i64;
    let ms = restarted.as_millisecond();
    let first_start = (ms + period_ms - 1).div_euclid(period_ms) * period_ms;
    let ready = jiff::Timestamp::from_millisecond(first_start).unwrap();
    assert!(
        ready > model.now + policy.fast_poll,
        "the fixture's restart is early in its period"
    );
    let wake = d.wake_after.expect("Draining looks again");
    assert_eq!(
        model.now + wake,
        ready,
        "when the period has begun, not later"
    );
    let need = aurora_migrator::core::needs::needs(&d.next, model.now, &policy);
    assert!(need.events_since.is_none(), "the restart is known");
    assert!(!need.metrics.is_empty(), "CloudWatch is still read");
}

/// The next look of an event wait: on the grid of `event_poll`'s multiples, `fast_poll` to
/// `fast_poll + event_poll` from now, and it may gather with the others' (`Needs::gathers`).
fn assert_looks_on_the_event_grid(
    d: &aurora_migrator::core::Decision,
    now: jiff::Timestamp,
    policy: &Policy,
) {
    assert_looks_on_the_grid(d, now, policy, policy.event_poll());
}

/// The next look of a wait on the grid of `period`'s multiples, `fast_poll` to
/// `fast_poll + period` from now, that may gather with the others' (`Needs::gathers`).
fn assert_looks_on_the_grid(
    d: &aurora_migrator::core::Decision,
    now: jiff::Timestamp,
    policy: &Policy,
    period: SignedDuration,
) {
    let wake = d.wake_after.expect("looks again");
    let at = now + wake;
    let grid = period.as_millis() as i64;
    assert_eq!(at.as_millisecond().rem_euclid(grid), 0, "{at} on the grid");
    assert!(
        wake >= policy.fast_poll && wake < policy.fast_poll + period,
        "{wake:?}"
    );
    assert!(aurora_migrator::core::needs::needs(&d.next, now, policy).gathers);
}

/// While RDS restarts the source (the metric path's reboot) and while AWS promotes the cluster,
/// the wait ends with an RDS event the agent receives and acts on as it arrives: the looks
/// meanwhile come every `event_poll` (for an event lost or late), not every `fast_poll`, on a
/// grid of times every such migration shares (their describes share a request). The reboot's
/// looks read the source's events for the restart, and the source only from the fleet snapshot:
/// they stay on a grid until the restart is among the events, a CloudWatch period apart (the
/// proof reads the first period after the restart, readable only once it has ended).
#[test]
fn the_metric_path_waits_for_the_reboot_and_the_promotion_on_their_events() {
    let policy = policy();
    assert!(policy.event_poll() > policy.fast_poll);
    // Draining, the reboot asked for, RDS restarting the source.
    let (mut model, mut m) = draining();
    assert!(!m.database_path());
    model.events.clear();
    m.progress.restarted_at = None;
    m.progress.reboot_requested_at = Some(model.now - SignedDuration::from_secs(20));
    let restarting = model.source.clone().expect("the source exists");
    model.source = Some(SourceInstance {
        status: "rebooting".into(),
        ..restarting.clone()
    });
    let d = step(&m, &model.observe(&m, &policy), model.now, &policy);
    assert_eq!(d.next.phase, Phase::Draining);
    assert!(d.actions.iter().all(|a| a.key() != ActionKey::RebootSource));
    assert_looks_on_the_grid(&d, model.now, &policy, policy.metric_period);
    // Back up, the event not yet readable: the looks stay on the grid, reading the events.
    model.source = Some(SourceInstance {
        status: "available".into(),
        ..restarting
    });
    let d = step(&m, &model.observe(&m, &policy), model.now, &policy);
    assert_eq!(d.next.phase, Phase::Draining);
    assert_looks_on_the_grid(&d, model.now, &policy, policy.metric_period);
    let need = aurora_migrator::core::needs::needs(&d.next, model.now, &policy);
    assert!(need.events_since.is_some() && need.source_from_snapshot && !need.quarantine_group);

    // Promoting: the request is made, then RDS shows the cluster `promoting`.
    let (mut model, m) = advanced_to(&policy, Phase::Promoting);
    assert!(!m.database_path());
    let d = step(&m, &model.observe(&m, &policy), model.now, &policy);
    assert!(
        d.actions
            .iter()
            .any(|a| matches!(a, Action::PromoteTarget { .. })),
        "{:?}",
        d.actions
    );
    let m = d.next;
    model.now += SignedDuration::from_secs(1);
    let replica = model.target.clone().expect("the replica exists");
    model.target = Some(TargetCluster {
        status: "promoting".into(),
        ..replica
    });
    let d = step(&m, &model.observe(&m, &policy), model.now, &policy);
    assert_eq!(d.next.phase, Phase::Promoting);
    assert_looks_on_the_event_grid(&d, model.now, &policy);
}

/// While RDS restarts the source, a metric-path look reads the source's events and the source
/// from the fleet snapshot: it judges nothing on that source (a snapshot from before the
/// quarantine shows the old groups) and repairs or reboots nothing. Once RDS showed the shutdown,
/// the wait lasts until the restart event; with no shutdown seen for `reboot_unconfirmed_after`,
/// the looks describe the source and the fence from RDS again (to tell a lost request from a
/// slow one), and a look that was planned a moment before that, on the snapshot, judges nothing
/// and looks again at once.
#[test]
fn the_reboot_s_wait_reads_the_events_and_judges_no_fence_on_the_snapshot() {
    let policy = policy();
    let (mut model, mut m) = draining();
    assert!(!m.database_path());
    model.events.clear();
    m.progress.restarted_at = None;
    let requested = model.now - SignedDuration::from_secs(20);
    m.progress.reboot_requested_at = Some(requested);
    let now_seen = model.source.clone().expect("the source exists");
    // The fleet snapshot from before the quarantine: the application's group, `available`.
    let stale = SourceInstance {
        security_groups: vec![GroupMembership {
            id: "sg-app".into(),
            status: "active".into(),
        }],
        ..now_seen.clone()
    };
    let need = aurora_migrator::core::needs::needs(&m, model.now, &policy);
    assert!(need.source_from_snapshot && !need.quarantine_group && need.gathers);
    assert!(need.events_since.is_some_and(|t| t <= requested));
    let mut obs = model.observe(&m, &policy);
    assert!(matches!(obs.quarantine_group, Observed::Unknown));
    obs.source = Observed::Present(stale.clone());
    let d = step(&m, &obs, model.now, &policy);
    assert_eq!(d.next.phase, Phase::Draining);
    assert!(
        d.actions.iter().all(|a| !a.is_mutating()),
        "nothing repaired or rebooted on a snapshot: {:?}",
        d.actions
    );
    assert_looks_on_the_grid(&d, model.now, &policy, policy.metric_period);

    // No shutdown seen for `reboot_unconfirmed_after`: the look describes the source and the fence.
    let late = requested + policy.reboot_unconfirmed_after + SignedDuration::from_secs(1);
    let need = aurora_migrator::core::needs::needs(&m, late, &policy);
    assert!(!need.source_from_snapshot && need.quarantine_group);
    // A look planned on the snapshot just before, stepped just after: nothing judged, look again.
    let d = step(&m, &obs, late, &policy);
    assert!(
        d.actions.iter().all(|a| !a.is_mutating()),
        "{:?}",
        d.actions
    );
    assert_eq!(d.wake_after, Some(SignedDuration::ZERO));

    // RDS showed the shutdown: the wait on the snapshot lasts until the restart event.
    model.events.push(InstanceEvent {
        at: requested + SignedDuration::from_secs(2),
        kind: InstanceEventKind::Shutdown,
    });
    let mut obs = model.observe(&m, &policy);
    obs.source = Observed::Present(stale);
    let d = step(&m, &obs, model.now, &policy);
    assert!(d.actions.iter().all(|a| !a.is_mutating()));
    let m = d.next;
    assert_eq!(
        m.progress.reboot_began_at,
        Some(requested + SignedDuration::from_secs(2))
    );
    let need = aurora_migrator::core::needs::needs(&m, late, &policy);
    assert!(need.source_from_snapshot && !need.quarantine_group);
    // The restart comes after the shutdown: the events are read from the shutdown on.
    assert_eq!(
        need.events_since,
        Some(requested + SignedDuration::from_secs(2))
    );
    // The restart among the events: recorded at the event's time, the catch-up awaited.
    model.events.push(InstanceEvent {
        at: requested + SignedDuration::from_secs(70),
        kind: InstanceEventKind::Restarted,
    });
    model.now = late;
    let d = step(&m, &model.observe(&m, &policy), model.now, &policy);
    assert_eq!(
        d.next.progress.restarted_at,
        Some(requested + SignedDuration::from_secs(70))
    );
    assert!(d.actions.iter().all(|a| !a.is_mutating()));
}

/// From the restart until CloudWatch shows the catch-up, a metric-path look reads CloudWatch
/// and the source from the fleet snapshot (minutes old: here from before the quarantine, still
/// `rebooting`), judges nothing on that source and repairs nothing; once the periods after the
/// restart show the catch-up, the next look, at once, describes the source and the fence from
/// RDS and proves the rest.
#[test]
fn draining_judges_the_fence_only_on_a_source_described_after_cloudwatch_shows_the_catch_up() {
    let policy = policy();
    let (mut model, m) = draining();
    assert!(!m.database_path());
    let d = step(&m, &model.observe(&m, &policy), model.now, &policy);
    let m = d.next;
    assert!(m.progress.restarted_at.is_some());
    let need = aurora_migrator::core::needs::needs(&m, model.now, &policy);
    assert!(need.source_from_snapshot && !need.quarantine_group);
    // A snapshot from before the quarantine: the old groups, the source restarting.
    let now_seen = model.source.clone().expect("the source exists");
    let stale = SourceInstance {
        status: "rebooting".into(),
        security_groups: vec![GroupMembership {
            id: "sg-app".into(),
            status: "active".into(),
        }],
        ..now_seen
    };
    let snapshot_look = |model: &Model, m: &aurora_migrator::core::Migration| {
        let mut obs = model.observe(m, &policy);
        obs.source = Observed::Present(stale.clone());
        obs
    };
    // Before the periods after the restart exist: no proof, nothing asked for.
    let d = step(&m, &snapshot_look(&model, &m), model.now, &policy);
    assert_eq!(d.next.phase, Phase::Draining);
    assert_eq!(d.next.progress.caught_up_in_metrics_at, None);
    assert!(
        d.actions
            .iter()
            .all(|a| a.key() != ActionKey::QuarantineSource),
        "nothing repaired on a snapshot: {:?}",
        d.actions
    );
    let m = d.next;
    // Three minutes on, CloudWatch shows the catch-up: the source is read from RDS next, at once.
    model.now += SignedDuration::from_mins(3);
    let d = step(&m, &snapshot_look(&model, &m), model.now, &policy);
    assert_eq!(d.next.phase, Phase::Draining, "not proven on a snapshot");
    assert_eq!(d.next.progress.caught_up_in_metrics_at, Some(model.now));
    assert_eq!(d.wake_after, Some(SignedDuration::ZERO));
    assert!(
        d.actions
            .iter()
            .all(|a| a.key() != ActionKey::QuarantineSource)
    );
    let m = d.next;
    let need = aurora_migrator::core::needs::needs(&m, model.now, &policy);
    assert!(!need.source_from_snapshot && need.quarantine_group);
    // That look, on the source as RDS has it, proves the catch-up.
    let d = step(&m, &model.observe(&m, &policy), model.now, &policy);
    assert_eq!(d.next.phase, Phase::Promoting, "{:?}", d.next.last_error);
}

/// Once RDS shows the cluster `promoting`, the request stays in flight for `reissue_after`, not
/// `cutover_reissue_after`: the looks while AWS promotes read neither the fence nor RDS's status
/// of the source for a request that is not due (every 30 s they did: a direct describe of
/// both, for a request RDS already had). After it, one look reads them again.
#[test]
fn a_promotion_rds_has_taken_up_is_not_re_read_for_a_request_every_cutover_reissue() {
    let policy = policy();
    assert!(policy.reissue_after > policy.cutover_reissue_after * 2);
    let (mut model, mut m) = advanced_to(&policy, Phase::Promoting);
    let d = quiet_round(&mut model, &mut m, &policy);
    assert!(keys(&d.actions).contains(&ActionKey::PromoteTarget));
    let t = model.target.as_mut().unwrap();
    t.replication_source = Some(m.source_arn.clone());
    t.status = "promoting".into();
    model.now += SignedDuration::from_secs(2);
    quiet_round(&mut model, &mut m, &policy);
    let seen = model.now;
    for after in [
        policy.cutover_reissue_after + SignedDuration::from_secs(1),
        policy.reissue_after - SignedDuration::from_secs(1),
    ] {
        let need = aurora_migrator::core::needs::needs(&m, seen + after, &policy);
        assert!(
            !need.quarantine_group && need.source_from_snapshot,
            "{after:?} after RDS showed it promoting: not due"
        );
    }
    // Past it, one look asks RDS for the cluster alone (`needs`' confirming look): still
    // promoting, the request stays in flight and nothing is re-read for it.
    model.now = seen + policy.reissue_after + SignedDuration::from_secs(1);
    let need = aurora_migrator::core::needs::needs(&m, model.now, &policy);
    assert!(need.target && !need.snapshot_will_do && !need.fresh);
    assert!(!need.quarantine_group && need.source_from_snapshot && !need.gathers);
    let d = quiet_round(&mut model, &mut m, &policy);
    assert!(!keys(&d.actions).contains(&ActionKey::PromoteTarget));
    let need = aurora_migrator::core::needs::needs(&m, model.now, &policy);
    assert!(!need.quarantine_group, "in flight again");
    // A request RDS lost (the cluster `available` again, still a replica) is asked again only
    // from a look that re-read the fence.
    model.now += policy.reissue_after + SignedDuration::from_secs(1);
    model.target.as_mut().unwrap().status = "available".into();
    let d = step(&m, &model.observe(&m, &policy), model.now, &policy);
    assert!(!keys(&d.actions).contains(&ActionKey::PromoteTarget));
    assert_eq!(
        d.wake_after,
        Some(SignedDuration::ZERO),
        "looks again at once"
    );
    let m = d.next;
    let need = aurora_migrator::core::needs::needs(&m, model.now, &policy);
    assert!(need.quarantine_group && !need.source_from_snapshot);
    let d = step(&m, &model.observe(&m, &policy), model.now, &policy);
    assert!(keys(&d.actions).contains(&ActionKey::PromoteTarget));
}
