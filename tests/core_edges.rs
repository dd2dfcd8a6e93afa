//! Table tests of the edges a security review looks at (issue 13): the fence from the catch-up
//! proof to the source's deletion, what decommissioning keeps, the guard on irreversible
//! actions, and preflight's word on instances it cannot fence. Each test is named for the rule
//! it checks, and each fails without the rule.

mod common;

use aurora_migrator::core::action::{Action, ActionKey, ErrorKind};
use aurora_migrator::core::invariants;
use aurora_migrator::core::needs::needs;
use aurora_migrator::core::notification::Severity;
use aurora_migrator::core::observation::*;
use aurora_migrator::core::policy::Policy;
use aurora_migrator::core::preflight::{self, Outcome, PreflightReport};
use aurora_migrator::core::{Migration, Phase, step};
use common::*;
use jiff::{SignedDuration, Timestamp};

fn alerted(model: &Model, event: &str) -> bool {
    model
        .notifications
        .iter()
        .any(|n| n.event == event && n.severity == Severity::Error)
}

/// What an IaC apply does: the source's original groups are back next to (or instead of) the
/// quarantine group.
fn iac_puts_the_groups_back(model: &mut Model) {
    model.source.as_mut().unwrap().security_groups = vec![active_group("sg-app")];
}

fn decommission_due(policy: &Policy) -> (Model, Migration) {
    let (mut model, mut m) = advanced_to(policy, Phase::Decommissioning);
    model.now += policy.retention + SignedDuration::from_mins(1);
    deletion_ready(&mut model, &mut m, policy);
    (model, m)
}

/// The look past the retention that reads the source from the fleet snapshot and finds
/// nothing holding the deletion back: it acts on nothing and looks again at once, as RDS has
/// the source now (`Progress::deletion_ready_at`).
fn deletion_ready(model: &mut Model, m: &mut Migration, policy: &Policy) {
    assert!(!needs(m, model.now, policy).fresh);
    let d = quiet_round(model, m, policy);
    assert!(keys(&d.actions).is_empty(), "{:?}", d.actions);
    assert_eq!(d.wake_after, Some(SignedDuration::ZERO));
    assert!(needs(m, model.now, policy).fresh);
}

/// The quarantine group's deletion refused for now (its network interfaces detaching): the
/// migration stays in Decommissioning after the source is gone.
fn group_busy(a: &Action) -> Option<ErrorKind> {
    matches!(a, Action::DeleteQuarantineGroup { .. }).then_some(ErrorKind::Retryable)
}

/// Decommissioning due, a round a minute until a look records the final snapshot as the
/// source's own (the group's deletion refused: the migration stays in the phase); and the source
/// as it was before its deletion.
fn deleted_with_its_final_snapshot(policy: &Policy) -> (Model, Migration, SourceInstance) {
    let (mut model, mut m) = decommission_due(policy);
    let before = model
        .source
        .clone()
        .expect("the source before its deletion");
    for _ in 0..4 {
        round(&mut model, &mut m, policy, &mut group_busy);
        model.now += SignedDuration::from_mins(1);
        if m.progress.final_snapshot_at.is_some() {
            break;
        }
    }
    assert!(m.progress.final_snapshot_at.is_some(), "recorded as ours");
    assert_eq!(m.phase, Phase::Decommissioning);
    (model, m, before)
}

#[test]
fn promotion_is_not_asked_for_when_the_fence_broke_after_the_proof() {
    let (mut model, mut m) = advanced_to(&policy(), Phase::Promoting);
    iac_puts_the_groups_back(&mut model);
    let d = quiet_round(&mut model, &mut m, &policy());
    assert!(!keys(&d.actions).contains(&ActionKey::PromoteTarget));
    assert_eq!(
        m.phase,
        Phase::Draining,
        "back to Draining: the proof starts over"
    );
    assert!(m.progress.drain_proven_at.is_none() && m.progress.restarted_at.is_none());
    assert_eq!(model.promotions, 0);
    // Draining puts the quarantine back, then reboots again before any new proof.
    let d = quiet_round(&mut model, &mut m, &policy());
    assert_eq!(keys(&d.actions), vec![ActionKey::QuarantineSource]);
    let reboots = model.reboots;
    run_to_end(&mut model, &mut m, &policy(), 200);
    assert_eq!(m.phase, Phase::Completed);
    assert!(
        model.reboots > reboots,
        "a new reboot after the quarantine was restored"
    );
    assert_eq!(model.promotions, 1);
}

/// Runs the migration to its end: it completes, on a catch-up proof whose restart came after
/// the quarantine was back (`back`).
fn completes_on_a_restart_after(
    model: &mut Model,
    m: &mut Migration,
    policy: &Policy,
    back: Timestamp,
) {
    run_to_end(model, m, policy, 500);
    assert_eq!(m.phase, Phase::Completed);
    assert!(
        m.progress.restarted_at.is_some_and(|r| r >= back),
        "the proof's restart ({:?}) is before the quarantine was back ({back})",
        m.progress.restarted_at
    );
}

/// Back in Draining because the fence broke, someone else's reboot is under way while the
/// quarantine is put back: RDS restarted the source before the quarantine was in place, and a
/// look after it still describes the source `rebooting`. That restart let sessions in through
/// the original groups: it must not stand for the reboot the proof needs, even though the agent,
/// seeing `rebooting`, takes it for a request of its own whose answer was lost.
#[test]
fn a_restart_from_before_the_quarantine_was_back_does_not_prove_the_catch_up() {
    let policy = policy();
    let (mut model, mut m) = advanced_to(&policy, Phase::Promoting);
    iac_puts_the_groups_back(&mut model);
    quiet_round(&mut model, &mut m, &policy);
    assert_eq!(m.phase, Phase::Draining, "the fence broke before promotion");
    let broke = model.now;
    // Someone reboots the source, the quarantine not in place: down, then up again at once.
    model.source.as_mut().unwrap().status = "rebooting".into();
    for (secs, kind) in [
        (2, InstanceEventKind::Shutdown),
        (10, InstanceEventKind::Restarted),
    ] {
        model.events.push(InstanceEvent {
            at: broke + SignedDuration::from_secs(secs),
            kind,
        });
    }
    model.now = broke + SignedDuration::from_secs(20);
    let d = quiet_round(&mut model, &mut m, &policy);
    assert_eq!(keys(&d.actions), vec![ActionKey::QuarantineSource]);
    let back = model.now;
    // The describe still says `rebooting` on the looks after the quarantine is back.
    for _ in 0..3 {
        model.now += SignedDuration::from_secs(5);
        quiet_round(&mut model, &mut m, &policy);
    }
    model.source.as_mut().unwrap().status = "available".into();
    let reboots = model.reboots;
    completes_on_a_restart_after(&mut model, &mut m, &policy, back);
    assert_eq!(
        model.reboots,
        reboots + 1,
        "the agent rebooted the source itself"
    );
}

/// The fence broken in Draining, after the source restarted and CloudWatch showed the catch-up
/// (an IaC apply puts the original groups back): sessions that come in before the agent puts the quarantine back stay open
/// through it (a security group change ends no connection), and a client's next write after
/// the promotion is lost. The restart from before the break proves nothing any more: a new
/// reboot, after the quarantine is back, ends those sessions.
#[test]
fn a_fence_broken_in_draining_needs_a_new_reboot_after_the_quarantine_is_back() {
    let policy = policy();
    let (mut model, mut m) = advanced_to(&policy, Phase::Draining);
    assert!(!m.database_path());
    // Until CloudWatch shows the catch-up after the restart: the next look, at once, reads the
    // fence from RDS to prove the rest. The groups go back just before it.
    for _ in 0..100 {
        if m.progress.caught_up_in_metrics_at.is_some() {
            break;
        }
        let d = quiet_round(&mut model, &mut m, &policy);
        model.now += d.wake_after.unwrap_or_default();
    }
    assert!(m.progress.caught_up_in_metrics_at.is_some(), "caught up");
    assert_eq!(m.phase, Phase::Draining);
    iac_puts_the_groups_back(&mut model);
    let mut back = None;
    for _ in 0..100 {
        let d = quiet_round(&mut model, &mut m, &policy);
        if keys(&d.actions).contains(&ActionKey::QuarantineSource) {
            back = Some(model.now);
            break;
        }
        assert_eq!(model.promotions, 0, "promoted with the fence broken");
        model.now += d.wake_after.unwrap().max(SignedDuration::from_secs(1));
    }
    let back = back.expect("the agent put the quarantine back");
    completes_on_a_restart_after(&mut model, &mut m, &policy, back);
    assert_eq!(
        model.reboots, 2,
        "a second reboot after the quarantine was back"
    );
}

#[test]
fn promotion_is_not_asked_for_when_the_quarantine_group_gained_a_rule() {
    let (mut model, mut m) = advanced_to(&policy(), Phase::Promoting);
    model.quarantine.as_mut().unwrap().ingress_sources = vec!["sg-someone".into()];
    let d = quiet_round(&mut model, &mut m, &policy());
    assert!(!keys(&d.actions).contains(&ActionKey::PromoteTarget));
    assert_eq!(m.phase, Phase::Draining);
}

#[test]
fn routing_holds_and_alerts_when_the_fence_broke_after_promotion() {
    let (mut model, mut m) = advanced_to(&policy(), Phase::Routing);
    iac_puts_the_groups_back(&mut model);
    for _ in 0..3 {
        let d = quiet_round(&mut model, &mut m, &policy());
        assert!(!keys(&d.actions).contains(&ActionKey::RouteTraffic));
        model.now += SignedDuration::from_secs(5);
    }
    assert_eq!(m.phase, Phase::Routing);
    assert!(model.routed_to.is_none(), "no traffic moved");
    assert!(alerted(&model, "fence-broken-before-routing"));
    // The fence is put back by a person: routing goes on.
    model.source.as_mut().unwrap().security_groups = vec![active_group("sg-q")];
    let d = quiet_round(&mut model, &mut m, &policy());
    assert!(keys(&d.actions).contains(&ActionKey::RouteTraffic));
}

#[test]
fn the_source_is_deleted_with_its_final_snapshot_in_the_same_call() {
    let (mut model, mut m) = decommission_due(&policy());
    let d = quiet_round(&mut model, &mut m, &policy());
    assert_eq!(
        keys(&d.actions),
        vec![ActionKey::DeleteSource],
        "no separate snapshot that could predate the last write"
    );
    run_to_end(&mut model, &mut m, &policy(), 20);
    assert_eq!(m.phase, Phase::Completed);
    let snap = model.snapshot.as_ref().expect("final snapshot");
    assert_eq!(snap.identifier, m.names.final_snapshot);
    assert!(m.progress.final_snapshot_at.is_some());
}

#[test]
fn deletion_holds_and_alerts_when_the_fence_broke_before_it() {
    let (mut model, mut m) = decommission_due(&policy());
    iac_puts_the_groups_back(&mut model);
    for _ in 0..3 {
        let d = quiet_round(&mut model, &mut m, &policy());
        assert!(!keys(&d.actions).contains(&ActionKey::DeleteSource));
        model.now += SignedDuration::from_mins(5);
    }
    assert!(model.source.is_some());
    assert!(alerted(&model, "fence-broken-before-delete"));
}

#[test]
fn deletion_holds_when_the_quarantine_group_gained_a_rule() {
    // The group alone admitting someone is a broken fence too: a client in that group could
    // have written since the cutover.
    let (mut model, mut m) = decommission_due(&policy());
    model.quarantine.as_mut().unwrap().ingress_sources = vec!["sg-someone".into()];
    for _ in 0..3 {
        let d = round(&mut model, &mut m, &policy(), &mut |_| None);
        assert!(!keys(&d.actions).contains(&ActionKey::DeleteSource));
        model.now += SignedDuration::from_mins(5);
    }
    assert!(model.source.is_some());
    assert!(alerted(&model, "fence-broken-before-delete"));
}

#[test]
fn with_groups_restored_deletion_needs_an_idle_source() {
    let mut p = policy();
    p.restore_source_groups_after_cutover = true;
    let (mut model, mut m) = decommission_due(&p);
    model.stray_writer = true;
    for _ in 0..3 {
        let d = quiet_round(&mut model, &mut m, &p);
        assert!(!keys(&d.actions).contains(&ActionKey::DeleteSource));
        model.now += SignedDuration::from_mins(5);
    }
    assert!(alerted(&model, "fence-broken-before-delete"));
    model.stray_writer = false;
    deletion_ready(&mut model, &mut m, &p);
    let d = quiet_round(&mut model, &mut m, &p);
    assert!(keys(&d.actions).contains(&ActionKey::DeleteSource));
}

/// RDS refuses a deletion whose final snapshot's name is taken, in the call that would take it:
/// nothing is deleted; the looks after read the snapshot, tell people once that it is not the
/// source's, and hold the deletion, never giving up (the database is on Aurora, only its old
/// copy waits); it goes through once the name is free. No snapshot is described before the
/// deletion is first asked for.
#[test]
fn a_snapshot_with_the_final_name_taken_before_the_deletion_holds_it() {
    let (mut model, mut m) = decommission_due(&policy());
    model.snapshot = Some(Snapshot {
        identifier: m.names.final_snapshot.clone(),
        status: "available".into(),
        instance: "orders-pg".into(),
        created_at: Some(model.now - SignedDuration::from_hours(48)),
    });
    assert!(
        !needs(&m, model.now, &policy()).final_snapshot,
        "the snapshot is not described before a deletion was asked for"
    );
    let mut asked = 0;
    for _ in 0..40 {
        let d = quiet_round(&mut model, &mut m, &policy());
        asked += usize::from(keys(&d.actions).contains(&ActionKey::DeleteSource));
        model.now += SignedDuration::from_mins(1);
    }
    assert!(model.source.is_some(), "nothing was deleted");
    assert_eq!(m.phase, Phase::Decommissioning, "still waiting, not failed");
    assert!(alerted(&model, "final-snapshot-name-taken"));
    assert_eq!(
        asked, 1,
        "asked once, refused, then held on the snapshot read"
    );
    model.snapshot = None;
    let freed_at = model.now;
    for _ in 0..10 {
        quiet_round(&mut model, &mut m, &policy());
        model.now += SignedDuration::from_mins(1);
    }
    assert!(model.source.is_none(), "deleted once the name is free");
    let last_state = model.snapshot.as_ref().expect("the final snapshot");
    assert!(
        last_state.created_at.is_some_and(|t| t >= freed_at),
        "the final snapshot is the deletion's own: {last_state:?}"
    );
}

/// A deletion RDS accepted while its describe still shows the source available is not asked
/// again: the looks after a request read the final snapshot, and one that is ours (of the
/// source, taken since the request) is waited for, with no "name taken" alarm; the source's
/// end is recorded as the agent's, with its final snapshot.
#[test]
fn a_deletion_whose_describe_lags_is_waited_for_on_its_own_final_snapshot() {
    let p = policy();
    let (mut model, mut m) = decommission_due(&p);
    let before = model.source.clone();
    let d = quiet_round(&mut model, &mut m, &p);
    assert!(keys(&d.actions).contains(&ActionKey::DeleteSource));
    for _ in 0..4 {
        // RDS took it; its describe lags and still shows the instance available.
        model.source = before.clone();
        model.now += p.reissue_after + SignedDuration::from_secs(1);
        let d = quiet_round(&mut model, &mut m, &p);
        assert!(!keys(&d.actions).contains(&ActionKey::DeleteSource));
    }
    model.source = None;
    for _ in 0..5 {
        model.now += SignedDuration::from_mins(1);
        quiet_round(&mut model, &mut m, &p);
    }
    assert!(!alerted(&model, "final-snapshot-name-taken"));
    assert!(!alerted(&model, "source-deleted"));
    assert!(m.progress.final_snapshot_at.is_some(), "recorded as ours");
}

#[test]
fn the_irreversible_actions_are_refused_on_a_record_that_does_not_allow_them() {
    let m = migration();
    let delete = Action::DeleteSource {
        instance: m.source_identifier.clone(),
        final_snapshot: m.names.final_snapshot.clone(),
    };
    assert!(invariants::irreversible_allowed(&m, &delete).is_err());
    let promote = Action::PromoteTarget {
        cluster: m.names.cluster.clone(),
    };
    assert!(invariants::irreversible_allowed(&m, &promote).is_err());

    let (_, m) = advanced_to(&policy(), Phase::Decommissioning);
    assert!(invariants::irreversible_allowed(&m, &delete).is_ok());
    let other = Action::DeleteSource {
        instance: "someone-elses-db".into(),
        final_snapshot: m.names.final_snapshot.clone(),
    };
    assert!(invariants::irreversible_allowed(&m, &other).is_err());
    let wrong_snapshot = Action::DeleteSource {
        instance: m.source_identifier.clone(),
        final_snapshot: "x".into(),
    };
    assert!(invariants::irreversible_allowed(&m, &wrong_snapshot).is_err());
    let replica = Action::DeleteTarget {
        cluster: m.names.cluster.clone(),
        writer: m.names.writer.clone(),
    };
    assert!(
        invariants::irreversible_allowed(&m, &replica).is_err(),
        "the replica took traffic"
    );
}

#[test]
fn an_instance_outside_a_vpc_fails_preflight_with_a_clear_message() {
    let mut model = Model::new();
    {
        let s = model.source.as_mut().unwrap();
        s.vpc_id = String::new();
        s.subnet_group = String::new();
    }
    let mut m = migration();
    run_to_end(&mut model, &mut m, &policy(), 20);
    assert_eq!(m.phase, Phase::Failed);
    assert!(model.quarantine.is_none() && model.clusters_created == 0);
    let report = m.preflight.as_ref().unwrap();
    let vpc = report.checks.iter().find(|c| c.name == "vpc").unwrap();
    assert!(vpc.message.contains("not in a VPC"), "{}", vpc.message);
}

#[test]
fn a_preflight_that_passes_with_warnings_is_notified_as_a_warning_with_the_count() {
    let mut model = Model::new();
    // db.m* classes do not exist on Aurora: mapped to db.r*, with a warning.
    model.source.as_mut().unwrap().instance_class = "db.m6g.large".into();
    let mut m = migration();
    advance_to(&mut model, &mut m, &policy(), Phase::Preparing);
    let warnings = m.preflight.as_ref().unwrap().warnings();
    assert!(warnings >= 1);
    let note = model
        .notifications
        .iter()
        .find(|n| n.phase == Phase::Preparing && n.event == "phase-change")
        .expect("the Preparing notification");
    assert_eq!(note.severity, Severity::Warning);
    let count = if warnings == 1 {
        "1 warning".to_string()
    } else {
        format!("{warnings} warnings")
    };
    assert!(note.title.contains(&count), "{}", note.title);
}

#[test]
fn the_source_is_marked_before_the_replica_is_created() {
    let (mut model, mut m) = advanced_to(&policy(), Phase::Preparing);
    // The tag write keeps failing: Preparing does not move on without the marker.
    let mut refuse_marker =
        |a: &Action| matches!(a, Action::MarkSource { .. }).then_some(ErrorKind::Throttled);
    for _ in 0..4 {
        round(&mut model, &mut m, &policy(), &mut refuse_marker);
        model.now += SignedDuration::from_secs(30);
    }
    assert_eq!(m.phase, Phase::Preparing);
    assert_eq!(model.clusters_created, 0);
    advance_to(&mut model, &mut m, &policy(), Phase::CreatingReplica);
    let tags = &model.source.as_ref().unwrap().tags;
    assert_eq!(
        tags.get("aurora-migration:marker"),
        Some(&m.id.resource_id),
        "marked with the source's resource id"
    );
}

fn with_cdc_consumers(
    consumers: &str,
    located: Vec<GroupLocation>,
) -> (SourceInstance, PreflightInputs) {
    let mut source = source();
    source
        .tags
        .insert("aurora-migration:cdc-consumers".into(), consumers.into());
    let mut inputs = preflight_inputs();
    inputs.cdc_consumer_groups = Some(located);
    (source, inputs)
}

fn located(id: &str, vpc: &str, owner: &str) -> GroupLocation {
    GroupLocation {
        id: id.into(),
        vpc_id: vpc.into(),
        owner_id: owner.into(),
    }
}

fn outcome(report: &PreflightReport, name: &str) -> (Outcome, bool) {
    let c = report.checks.iter().find(|c| c.name == name).unwrap();
    (c.outcome, c.acknowledged)
}

#[test]
fn cdc_consumer_groups_must_exist_in_the_sources_vpc_and_account() {
    let (source, inputs) = with_cdc_consumers(
        "sg-ok sg-gone sg-elsewhere sg-foreign",
        vec![
            located("sg-ok", "vpc-1", "123456789012"),
            located("sg-elsewhere", "vpc-2", "123456789012"),
            located("sg-foreign", "vpc-1", "999999999999"),
        ],
    );
    let (report, plan) = preflight::run(&source, &inputs, &policy());
    assert!(plan.is_none(), "blocked");
    let c = report
        .checks
        .iter()
        .find(|c| c.name == "cdc-consumer-groups")
        .unwrap();
    assert_eq!(c.outcome, Outcome::Fail);
    for problem in [
        "sg-gone does not exist",
        "sg-elsewhere is in vpc-2",
        "sg-foreign belongs to account 999999999999",
    ] {
        assert!(c.message.contains(problem), "{}", c.message);
    }
    assert!(!c.message.contains("sg-ok "), "{}", c.message);
}

#[test]
fn declaring_cdc_consumers_needs_the_owners_acknowledgement() {
    let (mut source, inputs) =
        with_cdc_consumers("sg-cdc", vec![located("sg-cdc", "vpc-1", "123456789012")]);
    let (report, plan) = preflight::run(&source, &inputs, &policy());
    assert_eq!(outcome(&report, "cdc-consumer-groups").0, Outcome::Pass);
    assert_eq!(outcome(&report, "cdc-consumers"), (Outcome::Fail, false));
    assert!(plan.is_none(), "not without the acknowledgement");
    source
        .tags
        .insert("aurora-migration:ack-cdc-consumers".into(), "true".into());
    let (report, plan) = preflight::run(&source, &inputs, &policy());
    assert_eq!(outcome(&report, "cdc-consumers"), (Outcome::Fail, true));
    assert_eq!(plan.unwrap().cdc_consumers, vec!["sg-cdc".to_string()]);
}

#[test]
fn a_reboot_that_never_started_is_asked_again_long_before_the_budget_runs_out() {
    let p = policy();
    let (mut model, mut m) = advanced_to(&p, Phase::Quiescing);
    // The agent dies between persisting Draining and sending the reboot: the request is lost.
    for _ in 0..20 {
        if m.phase == Phase::Draining {
            break;
        }
        let obs = model.observe(&m, &p);
        let d = aurora_migrator::core::step(&m, &obs, model.now, &p);
        m = d.next.clone();
        for a in d
            .actions
            .iter()
            .filter(|a| !matches!(a, Action::RebootSource { .. }))
        {
            if let Some(r) = model.apply(a, None) {
                model.pending.push(r);
            }
        }
        model.now += SignedDuration::from_secs(5);
    }
    assert_eq!(m.phase, Phase::Draining);
    assert_eq!(model.reboots, 0, "the reboot was lost");
    let lost_at = m.progress.reboot_requested_at.unwrap();
    // Not asked again while RDS could still be starting it.
    model.now = lost_at + SignedDuration::from_secs(30);
    let d = quiet_round(&mut model, &mut m, &p);
    assert!(!keys(&d.actions).contains(&ActionKey::RebootSource));
    // Then asked again: no shutdown or restart event, the instance still `available`.
    model.now = lost_at + p.reboot_unconfirmed_after + SignedDuration::from_secs(5);
    let d = quiet_round(&mut model, &mut m, &p);
    assert!(keys(&d.actions).contains(&ActionKey::RebootSource));
    assert!(p.reboot_unconfirmed_after < p.write_unavailability_budget / 4);
    run_to_end(&mut model, &mut m, &p, 200);
    assert_eq!(m.phase, Phase::Completed, "no budget rollback");
    assert_eq!(model.reboots, 1);
}

#[test]
fn decommission_waits_for_the_retention_then_deletes_with_a_final_snapshot() {
    let (mut model, mut m) = advanced_to(&policy(), Phase::Decommissioning);
    let d = quiet_round(&mut model, &mut m, &policy());
    assert!(keys(&d.actions).is_empty(), "nothing before the retention");
    assert!(d.wake_after.unwrap() > SignedDuration::from_hours(24));
    model.now += policy().retention;
    deletion_ready(&mut model, &mut m, &policy());
    let d = quiet_round(&mut model, &mut m, &policy());
    let deletes: Vec<&Action> = d.actions.iter().filter(|a| a.is_mutating()).collect();
    assert_eq!(
        deletes,
        vec![&Action::DeleteSource {
            instance: "orders-pg".into(),
            final_snapshot: m.names.final_snapshot.clone(),
        }],
        "one call: the deletion carries the final snapshot, no separate CreateDBSnapshot"
    );
}

#[test]
fn deletion_protection_is_left_to_a_person_unless_the_policy_allows() {
    let mut model = Model::new();
    model.source.as_mut().unwrap().deletion_protection = true;
    let mut m = migration();
    advance_to(&mut model, &mut m, &policy(), Phase::Decommissioning);
    model.now += policy().retention;
    for _ in 0..5 {
        quiet_round(&mut model, &mut m, &policy());
    }
    assert!(model.source.is_some(), "not deleted");
    assert!(
        model
            .notifications
            .iter()
            .any(|n| n.event == "deletion-protection")
    );
    let allow = Policy {
        allow_disable_deletion_protection: true,
        ..policy()
    };
    run_to_end(&mut model, &mut m, &allow, 20);
    assert_eq!(m.phase, Phase::Completed);
}

#[test]
fn the_snapshot_quota_blocks_decommission_with_an_alert() {
    let (mut model, m) = advanced_to(&policy(), Phase::Decommissioning);
    model.now += policy().retention;
    let mut obs = model.observe(&m, &policy());
    obs.quotas = Some(vec![Quota {
        name: "ManualSnapshots".into(),
        used: 100,
        max: 100,
    }]);
    let d = step(&m, &obs, model.now, &policy());
    assert!(keys(&d.actions).is_empty());
    assert!(
        d.actions
            .iter()
            .any(|a| matches!(a, Action::Notify(n) if n.event == "snapshot-quota"))
    );
}

/// The final snapshot is described until a look records it as the source's own, and not on the
/// looks after (the quarantine group's deletion can take minutes while its network interfaces
/// detach): nothing is read or said about it again.
/// The source's deletion with its final snapshot takes RDS minutes: the look after the request
/// comes `Policy::slow_change_first_look` later, not a minute later to describe it `deleting`.
#[test]
fn the_look_after_the_source_s_deletion_request_waits_for_its_first_minutes() {
    let policy = policy();
    let (mut model, mut m) = decommission_due(&policy);
    let d = quiet_round(&mut model, &mut m, &policy);
    assert!(
        keys(&d.actions).contains(&ActionKey::DeleteSource),
        "{:?}",
        d.actions
    );
    assert_eq!(d.wake_after, Some(policy.slow_change_first_look()));
}

/// Once the source is seen gone with its final snapshot ours, the looks that finish the
/// phase (the quarantine group's deletion, minutes) and confirm Completed describe it no more
/// (each was a request for an instance that is gone), and an instance created meanwhile under
/// the freed identifier is neither read nor tagged with the phase mirror.
#[test]
fn a_source_seen_deleted_with_its_final_snapshot_is_not_described_or_tagged_again() {
    let policy = policy();
    let (mut model, mut m, old_source) = deleted_with_its_final_snapshot(&policy);
    let need = aurora_migrator::core::needs::needs(&m, model.now, &policy);
    assert!(!need.source, "the deleted source is not described again");
    assert!(
        need.quarantine_group,
        "the group's deletion is still followed"
    );
    // Someone creates a new instance under the freed identifier (with the trigger tag even):
    // not the source, and nothing of this migration reads or tags it.
    let mut newcomer = old_source;
    newcomer.status = "available".into();
    model.source = Some(newcomer);
    round(&mut model, &mut m, &policy, &mut group_busy);
    assert_eq!(m.phase, Phase::Decommissioning, "still deleting the group");
    let mut tagged = Vec::new();
    for _ in 0..20 {
        let d = quiet_round(&mut model, &mut m, &policy);
        for a in &d.actions {
            if let Action::MirrorPhaseTag { arns, .. } = a {
                tagged.extend(arns.iter().cloned());
            }
            assert!(
                !matches!(
                    a,
                    Action::DeleteSource { .. } | Action::SetTriggerTag { .. }
                ),
                "{a:?}"
            );
        }
        model.now += d.wake_after.unwrap_or(SignedDuration::from_mins(1));
        if m.phase.is_terminal() && m.next_wake.is_none() {
            break;
        }
    }
    assert_eq!(m.phase, Phase::Completed);
    assert!(
        !tagged.contains(&m.source_arn),
        "the mirror went to the freed identifier: {tagged:?}"
    );
    assert!(
        tagged.iter().any(|a| a.contains(":cluster:")),
        "Completed is mirrored on the cluster: {tagged:?}"
    );
}

#[test]
fn the_final_snapshot_is_read_until_it_is_recorded_as_ours_and_not_after() {
    let policy = policy();
    let (mut model, mut m, _) = deleted_with_its_final_snapshot(&policy);
    assert!(model.source.is_none(), "deleted");
    let need = aurora_migrator::core::needs::needs(&m, model.now, &policy);
    assert!(!need.final_snapshot, "not described again");
    // Even a snapshot gone since (someone deleted it) is not looked for again by this attempt.
    model.snapshot = None;
    round(&mut model, &mut m, &policy, &mut group_busy);
    assert!(!alerted(&model, "final-snapshot-missing"));
    // The group goes: completed.
    run_to_end(&mut model, &mut m, &policy, 20);
    assert_eq!(m.phase, Phase::Completed);
}

/// A rollback before cutover releases the source only on a look after it asked RDS for the
/// source's groups back: a describe that lags (or a snapshot from before the quarantine) shows
/// the original groups while the source is still fenced, and once ended the rollback with the
/// source quarantined (found by `core_properties`, regression file).
#[test]
fn a_rollback_does_not_take_a_lagging_describe_for_the_source_released() {
    let p = policy();
    let (mut model, mut m) = reboot_failed_with(&p, ErrorKind::Fatal);
    quiet_round(&mut model, &mut m, &p);
    assert_eq!(m.phase, Phase::RollingBack);
    assert!(model.quarantined(), "the source is still fenced");
    let original = m.progress.original_groups.clone().expect("recorded");
    // A look that lags: the source with its groups from before the quarantine.
    let mut obs = model.observe(&m, &p);
    obs.action_results = std::mem::take(&mut model.pending);
    if let Observed::Present(s) = &mut obs.source {
        s.security_groups = original.iter().map(|g| active_group(g)).collect();
    }
    let d = step(&m, &obs, model.now, &p);
    assert_eq!(d.next.progress.source_released_at, None);
    assert!(
        keys(&d.actions).contains(&ActionKey::RestoreSourceGroups),
        "{:?}",
        d.actions
    );
    // Once asked, the rollback ends with the source writable.
    m = d.next;
    for a in &d.actions {
        if let Some(r) = model.apply(a, None) {
            model.pending.push(r);
        }
    }
    run_to_end(&mut model, &mut m, &p, 200);
    assert_eq!(m.phase, Phase::RolledBack);
    assert!(!model.quarantined(), "the source takes writes again");
}

/// An instance restored from a snapshot of a migrated source: RDS copied the source's tags to
/// the snapshot (the start tag and the agent's marker among them) and the restore took them.
fn restored_copy() -> SourceInstance {
    let mut s = source();
    s.identifier = "orders-pg-recovered".into();
    s.resource_id = "db-RESTORED0000000001".into();
    s.tags
        .insert("aurora-migration:marker".into(), RESOURCE_ID.into());
    s
}

#[test]
fn a_restore_carrying_another_instances_marker_is_never_touched_unless_acknowledged_by_its_own_id()
{
    // Driven from Requested as the agent would: preflight fails and nothing is changed on it
    // but the trigger, which goes from `start` to `stopped`.
    let mut model = Model::new();
    model.source = Some(restored_copy());
    let mut m = Migration::new(
        aurora_migrator::core::MigrationId {
            resource_id: "db-RESTORED0000000001".into(),
            attempt: 1,
        },
        "orders-pg-recovered",
        ARN,
        t0(),
    );
    run_to_end(&mut model, &mut m, &policy(), 50);
    assert_eq!(m.phase, Phase::Failed);
    assert_eq!(model.clusters_created, 0);
    assert!(model.quarantine.is_none() && !model.parameter_groups);
    let tags = &model.source.as_ref().unwrap().tags;
    assert_eq!(
        tags["aurora-migration:marker"], RESOURCE_ID,
        "not taken over"
    );
    assert_eq!(tags["aurora-migration"], "stopped");
    let last = model.notifications.last().unwrap();
    assert!(
        last.description.contains("marker of another instance"),
        "{}",
        last.description
    );

    // `true` is not an acknowledgement: it would be copied to this copy's own snapshots.
    let mut s = restored_copy();
    s.tags
        .insert("aurora-migration:ack-restored-copy".into(), "true".into());
    let (report, plan) = preflight::run(&s, &preflight_inputs(), &policy());
    assert_eq!(outcome(&report, "restored-copy").0, Outcome::Fail);
    assert!(plan.is_none());
    s.tags.insert(
        "aurora-migration:ack-restored-copy".into(),
        "db-RESTORED0000000001".into(),
    );
    let (report, plan) = preflight::run(&s, &preflight_inputs(), &policy());
    assert_eq!(outcome(&report, "restored-copy").0, Outcome::Pass);
    assert!(plan.is_some(), "{}", report.render("aurora-migration"));
    // The source itself, retried (attempt 2 keeps its own marker), passes.
    let mut own = source();
    own.tags
        .insert("aurora-migration:marker".into(), RESOURCE_ID.into());
    let (report, _) = preflight::run(&own, &preflight_inputs(), &policy());
    assert_eq!(outcome(&report, "restored-copy").0, Outcome::Pass);
}

#[test]
fn answers_left_from_an_earlier_attempt_block_the_next_one_at_preflight() {
    for (key, value) in [
        ("aurora-migration:rollback", "approve"),
        ("aurora-migration:cdc-drained", "true"),
        ("aurora-migration:cdc-slots-created", "true"),
    ] {
        let mut s = source();
        s.tags.insert(key.into(), value.into());
        let (report, plan) = preflight::run(&s, &preflight_inputs(), &policy());
        assert_eq!(
            outcome(&report, "leftover-tags"),
            (Outcome::Fail, false),
            "{key}"
        );
        assert!(plan.is_none(), "{key}");
        let c = report
            .checks
            .iter()
            .find(|c| c.name == "leftover-tags")
            .unwrap();
        assert!(
            c.message.contains(&format!("{key}={value}")),
            "{}",
            c.message
        );
    }
    // An approval already given for a manual cutover counts, with a warning.
    let manual = Policy {
        cutover: aurora_migrator::core::policy::CutoverPolicy::ManualApproval,
        ..policy()
    };
    let mut s = source();
    s.tags
        .insert("aurora-migration:approve".into(), "true".into());
    let (report, plan) = preflight::run(&s, &preflight_inputs(), &manual);
    assert_eq!(outcome(&report, "leftover-tags").0, Outcome::Warn);
    assert!(plan.is_some());
    let (report, _) = preflight::run(&source(), &preflight_inputs(), &manual);
    assert_eq!(outcome(&report, "leftover-tags").0, Outcome::Pass);
}

#[test]
fn deletion_protection_is_not_turned_off_while_the_fence_is_broken() {
    let allow = Policy {
        allow_disable_deletion_protection: true,
        ..policy()
    };
    let (mut model, mut m) = decommission_due(&allow);
    model.source.as_mut().unwrap().deletion_protection = true;
    iac_puts_the_groups_back(&mut model);
    for _ in 0..3 {
        let d = quiet_round(&mut model, &mut m, &allow);
        assert!(
            !d.actions
                .iter()
                .any(|a| matches!(a, Action::DisableDeletionProtection { .. })),
            "{:?}",
            d.actions
        );
        model.now += SignedDuration::from_mins(1);
    }
    assert!(model.source.as_ref().unwrap().deletion_protection);
    assert!(alerted(&model, "fence-broken-before-delete"));
}

#[test]
fn the_look_that_may_ask_for_the_deletion_reads_the_source_as_rds_has_it_now() {
    let p = policy();
    let (mut model, mut m) = advanced_to(&p, Phase::Decommissioning);
    // During the retention, and on the first look past it, the looks read the fleet snapshot.
    assert!(!needs(&m, model.now, &p).fresh);
    model.now += p.retention + SignedDuration::from_mins(1);
    // That look finds the deletion ready and looks again at once, as RDS has the source now.
    deletion_ready(&mut model, &mut m, &p);
    let n = needs(&m, model.now, &p);
    assert!(
        n.fresh && n.source,
        "the deletion's look describes the source now"
    );
    assert!(
        n.target_from_snapshot,
        "the cluster's ARN still from the snapshot"
    );
    // RDS has the fence broken (the snapshot did not show it): nothing is deleted, and the
    // looks go back to the snapshot while the deletion is held.
    iac_puts_the_groups_back(&mut model);
    let d = quiet_round(&mut model, &mut m, &p);
    assert!(keys(&d.actions).is_empty(), "{:?}", d.actions);
    assert!(alerted(&model, "fence-broken-before-delete"));
    assert!(
        !needs(&m, model.now, &p).fresh,
        "a held deletion costs no request a look"
    );
    // Fenced again: ready on the snapshot's word, then deleted on RDS's.
    model.source.as_mut().unwrap().security_groups = vec![active_group("sg-q")];
    model.now += SignedDuration::from_mins(1);
    deletion_ready(&mut model, &mut m, &p);
    let d = quiet_round(&mut model, &mut m, &p);
    assert!(keys(&d.actions).contains(&ActionKey::DeleteSource));
    // Once asked, the looks that wait for RDS to finish do not describe it now, and its
    // absence from a snapshot taken after the request is its deletion done (no request).
    let n = needs(&m, model.now, &p);
    assert!(!n.fresh);
    assert!(n.source_absence_from_snapshot);
}

/// Before the agent asked for the source's deletion, its absence from the fleet snapshot is
/// never taken as gone (it would be someone else's deletion, or a rename: described directly,
/// then looked up by resource id); after the request, a snapshot without it says RDS finished.
#[test]
fn only_the_agent_s_own_deletion_lets_the_snapshot_say_the_source_is_gone() {
    let p = policy();
    // The happy path's phases (the exits, RollingBack and Paused, sort after Completed).
    for phase in Phase::ALL.into_iter().filter(|ph| *ph < Phase::Completed) {
        let (model, m) = advanced_to(&p, phase);
        assert!(
            !needs(&m, model.now, &p).source_absence_from_snapshot,
            "{phase}: no deletion asked for"
        );
    }
    let (mut model, mut m) = decommission_due(&p);
    assert!(!needs(&m, model.now, &p).source_absence_from_snapshot);
    let d = quiet_round(&mut model, &mut m, &p);
    assert!(keys(&d.actions).contains(&ActionKey::DeleteSource));
    assert!(needs(&m, model.now, &p).source_absence_from_snapshot);
}

#[test]
fn a_source_renamed_in_the_cutover_holds_the_migration_and_is_told_not_failed() {
    let p = policy();
    let (mut model, mut m) = advanced_to(&p, Phase::Draining);
    assert!(m.source_quarantined());
    let mut obs = model.observe(&m, &p);
    obs.source = Observed::Unknown;
    obs.source_renamed_to = Some("orders-pg-old".into());
    let d = step(&m, &obs, model.now, &p);
    assert_eq!(d.next.phase, Phase::Draining, "held, not failed");
    assert!(keys(&d.actions).is_empty(), "{:?}", d.actions);
    let told = d
        .actions
        .iter()
        .find_map(|a| match a {
            Action::Notify(n) if n.event == "source-renamed" => Some(n),
            _ => None,
        })
        .expect("people are told");
    assert_eq!(told.severity, Severity::Error);
    assert!(
        told.description.contains("orders-pg-old") && told.description.contains("still fenced")
    );
    assert_eq!(d.wake_after, Some(p.slow_poll));
    // The heartbeat goes on (the agent is alive), and the write budget waits for the name.
    let mut later = obs.clone();
    later.action_results.clear();
    let held_for = p.write_unavailability_budget + SignedDuration::from_mins(1);
    let d = step(&d.next, &later, model.now + held_for, &p);
    assert_eq!(d.next.phase, Phase::Draining);
    assert!(keys(&d.actions).is_empty(), "{:?}", d.actions);
    assert!(
        d.actions
            .iter()
            .any(|a| matches!(a, Action::PutHeartbeat { .. }))
    );
    // Found under its name again, the budget spent: the proof, which holds in this world,
    // wins at the boundary (`write_budget_spent`), and the migration goes on to the end.
    m = d.next;
    model.now += held_for;
    run_to_end(&mut model, &mut m, &p, 500);
    assert_eq!(m.phase, Phase::Completed);

    // Renamed after the attempt ended, before its trigger was reset: told, and looked at every
    // quarter of an hour, not every slow_poll.
    let mut ended = m.clone();
    ended.phase = Phase::RolledBack;
    ended.trigger_reset_at = None;
    ended.alerts_sent.clear();
    let mut obs = model.observe(&ended, &p);
    obs.source = Observed::Unknown;
    obs.source_renamed_to = Some("orders-pg-old".into());
    let d = step(&ended, &obs, model.now + SignedDuration::from_hours(1), &p);
    assert!(keys(&d.actions).is_empty(), "{:?}", d.actions);
    assert!(
        d.actions
            .iter()
            .any(|a| matches!(a, Action::Notify(n) if n.event == "source-renamed"))
    );
    assert_eq!(d.wake_after, Some(SignedDuration::from_mins(15)));
    // The looks go on at that pace until the name is back and the trigger reset.
    let d = step(&d.next, &obs, model.now + SignedDuration::from_hours(2), &p);
    assert!(keys(&d.actions).is_empty(), "{:?}", d.actions);
    assert_eq!(d.wake_after, Some(SignedDuration::from_mins(15)));
}
