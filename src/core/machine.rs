//! The phase machine: `step(record, observation, now, policy) -> Decision`.
//!
//! # Expected flow
//! Each call looks at one observation of the world and moves the record at most one phase
//! forward, returning the actions that bring the world closer to what the phase wants. The shell
//! persists `next` before it runs any action, then schedules a wake-up after `wake_after`.
//!
//! # Guarantees
//! - Pure: no clock, no I/O, no randomness. Same inputs, same decision.
//! - Level-triggered: nothing depends on which message caused the call.
//! - The invariants in `invariants.rs` hold for every decision (checked in debug builds).
//! - A mutating action is asked for once; while it is in flight (`Migration::requested`) the
//!   same observation does not ask again. After `Policy::reissue_after` without confirmation it
//!   is asked again (a crash between persisting and executing loses nothing).

use jiff::{SignedDuration, Timestamp};

use super::action::{
    Action, ActionKey, ErrorKind, ParameterGroupsSpec, QuarantineGroupSpec, ReplicaClusterSpec,
    RouteRequest, WriterInstanceSpec,
};
use super::invariants;
use super::messages;
use super::migration::{Baseline, Migration, PhaseChange, Plan, Rollback, RollbackCause, Wake};
use super::notification::Severity;
use super::observation::{
    Datapoint, InstanceEvent, InstanceEventKind, MetricKey, Observation, Observed, SecurityGroup,
    Snapshot, SourceInstance, TargetCluster, latest,
};
use super::phase::Phase;
use super::policy::{CutoverPolicy, Policy};
use super::preflight;
use super::tags::{self, ControlTags};

#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    pub next: Migration,
    pub actions: Vec<Action>,
    /// When to look again; `None` for a terminal phase.
    pub wake_after: Option<SignedDuration>,
}

impl Decision {
    pub fn mutating(&self) -> impl Iterator<Item = &Action> {
        self.actions.iter().filter(|a| a.is_mutating())
    }
}

/// Advances one migration by one observation. See the module documentation.
pub fn step(m: &Migration, obs: &Observation, now: Timestamp, policy: &Policy) -> Decision {
    let mut s = Stepper {
        tags: obs
            .source
            .present()
            .map(|src| ControlTags::read(&policy.tag_prefix, &src.tags))
            .unwrap_or_default(),
        m: m.clone(),
        obs,
        now,
        policy,
        actions: Vec::new(),
        wake: None,
        entered: false,
    };
    s.run();
    let decision = s.finish();
    if cfg!(debug_assertions)
        && let Err(violation) = invariants::check(m, obs, &decision)
    {
        panic!("invariant violated by step in {}: {violation}", m.phase);
    }
    decision
}

/// Failed cluster states from which a replica will not recover.
const FAILED_CLUSTER_STATES: [&str; 5] = [
    "failed",
    "inaccessible-encryption-credentials",
    "incompatible-parameters",
    "incompatible-network",
    "incompatible-restore",
];

struct Stepper<'a> {
    m: Migration,
    obs: &'a Observation,
    now: Timestamp,
    policy: &'a Policy,
    tags: ControlTags,
    actions: Vec<Action>,
    wake: Option<SignedDuration>,
    /// A phase change happened in this step: observe again at once.
    entered: bool,
}

impl Stepper<'_> {
    fn run(&mut self) {
        self.take_action_results();
        if self.entered {
            return;
        }
        if self.m.phase.is_terminal() {
            self.terminal();
            return;
        }
        if self.guards() {
            return;
        }
        if self.m.source_quarantined() {
            self.actions.push(Action::PutHeartbeat {
                migration: self.m.id.to_string(),
            });
        }
        match self.m.phase {
            Phase::Requested => self.enter(Phase::Preflight, ""),
            Phase::Preflight => self.preflight(),
            Phase::Preparing => self.preparing(),
            Phase::CreatingReplica => self.creating_replica(),
            Phase::Replicating => self.replicating(),
            Phase::AwaitingCutover => self.awaiting_cutover(),
            Phase::Paused => self.paused(),
            Phase::Quiescing => self.quiescing(),
            Phase::Draining => self.draining(),
            Phase::Promoting => self.promoting(),
            Phase::Routing => self.routing(),
            Phase::Verifying => self.verifying(),
            Phase::Decommissioning => self.decommissioning(),
            Phase::RollingBack => self.rolling_back(),
            Phase::Completed | Phase::Failed | Phase::RolledBack | Phase::Aborted => {}
        }
    }

    fn finish(mut self) -> Decision {
        for note in &self.m.outbox {
            self.actions.push(Action::Notify(note.clone()));
        }
        let wake = if self.m.phase.is_terminal() && !self.terminal_needs_attention() {
            None
        } else if self.entered {
            Some(SignedDuration::ZERO)
        } else {
            Some(
                self.wake
                    .unwrap_or_else(|| self.policy.poll_interval(self.m.phase)),
            )
        };
        match wake {
            Some(after) => {
                self.m.wake_seq += 1;
                self.m.next_wake = Some(Wake {
                    at: self.now + after,
                    token: self.m.wake_seq,
                });
            }
            None => self.m.next_wake = None,
        }
        Decision {
            next: self.m,
            actions: self.actions,
            wake_after: wake,
        }
    }

    /// Failed after cutover stays observable: the owners may still approve a rollback.
    fn entered_rollback_possible(&self) -> bool {
        self.m.phase == Phase::Failed && self.cutover_started() && self.m.rollback.is_none()
    }

    /// A terminal record is still looked at while a rollback may be approved, while the
    /// trigger tag still says `start`, while notifications wait, and for a while after a
    /// rollback released the source.
    fn terminal_needs_attention(&self) -> bool {
        self.entered_rollback_possible()
            || self.trigger_needs_reset()
            || !self.m.outbox.is_empty()
            || self.release_watch()
    }

    /// After a rollback the source is watched for `RELEASE_WATCH`: a quarantine request still
    /// in flight when the rollback began, or a stale describe that showed the groups restored,
    /// would otherwise leave it fenced off with nobody looking.
    fn release_watch(&self) -> bool {
        matches!(self.m.phase, Phase::RolledBack | Phase::Aborted)
            && self.m.progress.quarantined_at.is_some()
            && self.since(self.m.phase_entered_at) < RELEASE_WATCH
    }

    /// The source still carries the quarantine group after the rollback: restore it again and
    /// say so.
    fn recheck_release(&mut self) {
        let (Some(source), Some(q), Some(original)) = (
            self.source().cloned(),
            self.quarantine_id(),
            self.m.progress.original_groups.clone(),
        ) else {
            return;
        };
        if source.group_ids().contains(&q) && !source.groups_exactly_active(&original) {
            self.alert_once(
                "source-still-quarantined",
                Severity::Error,
                "the source was still fenced off after the rollback",
                "a late quarantine change or a stale describe; the agent restores its security groups again",
            );
            self.request(Action::RestoreSourceGroups {
                instance: source.identifier.clone(),
                group_ids: original,
            });
        }
    }

    fn trigger_needs_reset(&self) -> bool {
        self.m.phase.is_terminal()
            && self.m.phase != Phase::Completed
            && self.m.trigger_reset_at.is_none()
            && !self.obs.source.is_absent()
    }

    // ----- building blocks -------------------------------------------------------------------

    fn plan(&self) -> Option<&Plan> {
        self.m.plan.as_ref()
    }

    fn source(&self) -> Option<&SourceInstance> {
        self.obs.source.present()
    }

    fn cutover_started(&self) -> bool {
        self.m.progress.route_requested_at.is_some()
    }

    fn since(&self, t: Timestamp) -> SignedDuration {
        self.now.duration_since(t)
    }

    /// Moves to `phase`, tells people, mirrors the tag, and asks to be stepped again at once.
    fn enter(&mut self, phase: Phase, detail: &str) {
        self.enter_with(phase, detail, "phase-change");
    }

    fn enter_with(&mut self, phase: Phase, detail: &str, event: &str) {
        let from = self.m.phase;
        self.m.phase = phase;
        self.m.phase_entered_at = self.now;
        self.m.history.push(PhaseChange {
            phase,
            at: self.now,
        });
        self.m.requested.clear();
        self.m.action_failures = 0;
        self.entered = true;
        let note = messages::phase_change(&self.m, from, detail, event, self.policy);
        self.m.outbox.push(note);
        let mut arns = vec![self.m.source_arn.clone()];
        if let Some(t) = self.obs.target.present() {
            arns.push(t.arn.clone());
        }
        self.actions.push(Action::MirrorPhaseTag { arns, phase });
        if self.trigger_needs_reset() {
            self.reset_trigger();
        }
    }

    /// Sets the trigger to `stopped`, so that only a new `start` begins another attempt.
    fn reset_trigger(&mut self) {
        self.request(Action::SetTriggerTag {
            arn: self.m.source_arn.clone(),
            value: tags::STOPPED.to_string(),
        });
    }

    /// Asks for a mutating action unless the same kind is already in flight. Returns whether it
    /// was asked for.
    fn request(&mut self, action: Action) -> bool {
        let key = action.key();
        let reissue = match key {
            ActionKey::RebootSource => self.policy.reboot_reissue_after,
            _ if self.m.phase.is_cutover() => self.policy.cutover_reissue_after,
            _ => self.policy.reissue_after,
        };
        if let Some(until) = self.m.requested.get(&key)
            && self.now < *until
        {
            let wait = until.duration_since(self.now);
            self.wake_within(wait);
            return false;
        }
        self.m.requested.insert(key, self.now + reissue);
        self.actions.push(action);
        true
    }

    /// Delay before a failed action is asked for again: short in the cutover (every second is
    /// downtime), longer otherwise, doubling with each failure in the phase, at most 5 minutes.
    fn backoff(&self, kind: ErrorKind) -> SignedDuration {
        let base = match (self.m.phase.is_cutover(), kind) {
            (true, _) => SignedDuration::from_secs(2),
            (false, ErrorKind::Throttled) => SignedDuration::from_secs(30),
            (false, _) => SignedDuration::from_secs(10),
        };
        let doublings = self.m.action_failures.min(8);
        (base * (1i32 << doublings)).min(SignedDuration::from_mins(5))
    }

    fn alert_once(&mut self, name: &str, severity: Severity, title: &str, detail: &str) {
        if self.m.alerts_sent.insert(name.to_string()) {
            let note = messages::alert(&self.m, name, severity, title, detail, self.policy);
            self.m.outbox.push(note);
        }
    }

    fn wake_within(&mut self, after: SignedDuration) {
        let after = after.max(SignedDuration::from_secs(1));
        self.wake = Some(match self.wake {
            Some(w) => w.min(after),
            None => after.min(self.policy.poll_interval(self.m.phase)),
        });
    }

    /// Something went wrong that the agent cannot fix by waiting. Before cutover: the lossless
    /// rollback. After it: stop and ask a person.
    fn failure(&mut self, reason: String) {
        self.m.last_error = Some(reason.clone());
        match self.m.phase {
            Phase::Requested | Phase::Preflight => self.enter(Phase::Failed, &reason),
            // A rollback is never abandoned: the source must get its groups back. Tell people
            // once and keep trying (the failed action backs off).
            Phase::RollingBack => self.alert_once(
                "rollback-error",
                Severity::Error,
                "the rollback hit an error; the agent keeps trying",
                &reason,
            ),
            _ if self.cutover_started() => self.enter(Phase::Failed, &reason),
            _ => self.start_rollback(RollbackCause::Failure(reason)),
        }
    }

    fn start_rollback(&mut self, cause: RollbackCause) {
        let after_cutover = self.cutover_started();
        let detail = match &cause {
            RollbackCause::Aborted => "aborted by the owners' tag".to_string(),
            RollbackCause::Approved => "rollback approved by the owners' tag".to_string(),
            RollbackCause::Failure(why) => why.clone(),
        };
        self.m.rollback = Some(Rollback {
            cause,
            started_at: self.now,
            after_cutover,
        });
        self.enter(Phase::RollingBack, &detail);
    }

    // ----- what applies in every phase -------------------------------------------------------

    fn take_action_results(&mut self) {
        for result in &self.obs.action_results {
            let Err(err) = &result.outcome else {
                match result.key {
                    ActionKey::RouteTraffic if self.m.phase == Phase::Routing => {
                        self.m.progress.routed_at.get_or_insert(self.now);
                    }
                    ActionKey::RunSmokeTest => self.m.progress.smoke_test_passed = Some(true),
                    ActionKey::SetTriggerTag => {
                        self.m.trigger_reset_at.get_or_insert(self.now);
                    }
                    ActionKey::Notify => {
                        if let Some(id) = &result.id {
                            self.m.outbox.retain(|n| n.id() != *id);
                        }
                    }
                    _ => {}
                }
                continue;
            };
            if result.key == ActionKey::Notify {
                continue; // stays in the outbox: offered again on the next step
            }
            let deletion = matches!(
                result.key,
                ActionKey::DeleteTarget
                    | ActionKey::DeleteSource
                    | ActionKey::DeleteQuarantineGroup
                    | ActionKey::DeleteHeartbeatAlarm
            );
            if deletion && err.kind == ErrorKind::NotFound {
                continue; // already gone is what we wanted
            }
            // Ask again after a backoff, not at once: the next observation decides.
            let backoff = self.backoff(err.kind);
            self.m.requested.insert(result.key, self.now + backoff);
            let what = format!(
                "{} failed ({}): {}",
                result.key,
                err.kind.as_str(),
                err.message
            );
            if self.m.phase.is_terminal() {
                continue; // clean-up after the end: keep the reason the attempt ended with
            }
            self.m.last_error = Some(what.clone());
            if result.key == ActionKey::RebootSource {
                // No reboot happened (or we cannot know): ask again after the backoff rather
                // than waiting for a restart that will not come.
                self.m.progress.reboot_requested_at = None;
            }
            if result.key == ActionKey::RunSmokeTest && err.kind == ErrorKind::Fatal {
                self.m.progress.smoke_test_passed = Some(false);
                continue;
            }
            let creates = matches!(
                result.key,
                ActionKey::CreateReplicaCluster | ActionKey::CreateWriterInstance
            );
            let give_up =
                err.kind == ErrorKind::Fatal || (creates && err.kind == ErrorKind::Conflict) || {
                    self.m.action_failures += 1;
                    self.m.action_failures > self.policy.max_action_retries
                };
            if give_up && !self.m.phase.is_terminal() && !self.entered {
                self.failure(what);
            }
        }
    }

    fn terminal(&mut self) {
        if self.release_watch() {
            self.recheck_release();
        }
        if self.entered_rollback_possible() && self.tags.rollback {
            self.start_rollback(RollbackCause::Approved);
        } else if self.trigger_needs_reset() {
            if self.obs.source.present().is_some_and(|_| !self.tags.start) {
                // Someone already changed the trigger: nothing to reset.
                self.m.trigger_reset_at = Some(self.now);
            } else if self.obs.source.present().is_some() {
                self.reset_trigger();
            }
        }
    }

    /// Checks that preempt the phase's own logic. Returns true when one acted.
    fn guards(&mut self) -> bool {
        let phase = self.m.phase;
        if self.obs.source.is_absent() && !matches!(phase, Phase::Decommissioning) {
            if phase == Phase::RollingBack && !self.m.source_quarantined() {
                return false; // nothing left to restore on the source; let the rollback finish
            }
            if phase < Phase::Routing || phase == Phase::Paused || phase == Phase::RollingBack {
                self.m.last_error = Some("the source instance no longer exists".to_string());
                self.enter(
                    Phase::Failed,
                    "the source instance was deleted outside the agent; anything created for it is left in place for inspection",
                );
                return true;
            }
            self.alert_once(
                "source-deleted",
                Severity::Warning,
                "the source was deleted outside the agent",
                "the old primary no longer exists: no final snapshot was taken by the agent",
            );
        }

        if self.tags.abort && self.m.rollback.is_none() {
            if self.cutover_started() {
                self.alert_once(
                    "abort-ignored",
                    Severity::Warning,
                    "abort ignored: traffic was already routed to Aurora",
                    &format!(
                        "a lossless abort is only possible before routing; to go back anyway tag {}:rollback=approve",
                        self.policy.tag_prefix
                    ),
                );
            } else if matches!(phase, Phase::Requested | Phase::Preflight) {
                self.enter(Phase::Aborted, "aborted before anything was created");
                return true;
            } else {
                self.start_rollback(RollbackCause::Aborted);
                return true;
            }
        }

        if self.tags.rollback
            && self.m.rollback.is_none()
            && self.cutover_started()
            && matches!(
                phase,
                Phase::Routing | Phase::Verifying | Phase::Decommissioning
            )
            && self.m.progress.source_delete_requested_at.is_none()
        {
            self.start_rollback(RollbackCause::Approved);
            return true;
        }

        if matches!(phase, Phase::Quiescing | Phase::Draining)
            && let Some(q) = self.m.progress.quarantined_at
        {
            let budget = self.policy.write_unavailability_budget;
            // At the boundary a holding proof wins: promoting ends the outage sooner than
            // rolling back does.
            let proven = phase == Phase::Draining && self.drain_proof_missing().is_empty();
            if self.since(q) > budget && !proven {
                let missing = if phase == Phase::Draining {
                    self.drain_proof_missing().join("; ")
                } else {
                    "the quarantine never became active".to_string()
                };
                self.failure(format!(
                        "the write-unavailability budget of {} ran out before promotion ({missing}); rolled back without loss",
                        human(budget)
                    ));
                return true;
            }
            self.wake_within(budget - self.since(q));
        }

        if let Some(limit) = self.policy.timeout(phase) {
            if self.since(self.m.phase_entered_at) > limit && phase == Phase::RollingBack {
                // A rollback is never abandoned: the source must get its groups back.
                self.alert_once(
                    "rollback-slow",
                    Severity::Error,
                    "the rollback is taking long",
                    &format!(
                        "rolling back for over {}; the agent keeps trying: check the source's security groups and the replica",
                        human(limit)
                    ),
                );
            } else if self.since(self.m.phase_entered_at) > limit {
                let reason = format!("{} did not finish within {}", phase, human(limit));
                self.failure(reason);
                return true;
            }
        }
        false
    }

    /// Replica health that matters in every phase that waits with a replica attached.
    fn replica_guards(&mut self) -> bool {
        if let Some(free) = latest(self.obs.metric(MetricKey::SourceFreeStorage))
            && free.minimum < self.policy.min_free_storage_bytes
        {
            self.failure(format!(
                    "the source's free storage fell to {:.1} GiB, below the floor of {:.1} GiB; the replica was deleted to release the WAL it held",
                    free.minimum / GIB,
                    self.policy.min_free_storage_bytes / GIB
                ));
            return true;
        }
        if let Some(t) = self.obs.target.present()
            && t.replication_source.is_none()
        {
            self.failure(
                    "the Aurora replica stopped replicating from the source (it has no replication source)"
                        .to_string(),
                );
            return true;
        }
        false
    }

    fn lag_ok(&self) -> bool {
        let slot = latest(self.obs.metric(MetricKey::SourceSlotLag));
        let replica = latest(self.obs.metric(MetricKey::TargetReplicaLag));
        matches!((slot, replica), (Some(s), Some(r))
            if s.maximum <= self.policy.max_slot_lag_bytes && r.maximum <= self.policy.max_replica_lag_s)
    }

    // ----- phases ----------------------------------------------------------------------------

    fn preflight(&mut self) {
        let (Some(source), Some(inputs)) = (self.source(), self.obs.preflight.as_ref()) else {
            return;
        };
        let (report, plan) = preflight::run(source, inputs, self.policy);
        let text = report.render(&self.policy.tag_prefix);
        self.m.preflight = Some(report);
        match plan {
            Some(plan) => {
                self.m.plan = Some(plan);
                self.enter(Phase::Preparing, &text);
            }
            None => {
                self.m.last_error = Some("preflight blocked the migration".to_string());
                self.enter(Phase::Failed, &text);
            }
        }
    }

    fn quarantine_exact(&self, group: &SecurityGroup) -> bool {
        let Some(plan) = self.plan() else {
            return false;
        };
        let mut have = group.ingress_sources.clone();
        let mut want = plan.cdc_consumers.clone();
        have.sort();
        want.sort();
        group.egress_rules == 0 && have == want
    }

    /// The fence as the Draining proof established it, re-checked before each step that relies
    /// on it (promotion, routing): the source's groups are exactly the quarantine group, active,
    /// and the group, described again, has no rules beyond the CDC exception. An IaC apply can
    /// put the old groups back at any moment, so a proof a minute old is not enough.
    fn fence_intact(&self) -> Result<(), String> {
        let Some(q) = self.quarantine_id() else {
            return Err("no quarantine group was recorded".to_string());
        };
        let Some(source) = self.source() else {
            return Err("the source was not observed".to_string());
        };
        if !source.groups_exactly_active(std::slice::from_ref(&q)) {
            return Err(format!(
                "the source's security groups are {:?}, not exactly the quarantine group {q}, active",
                source.group_ids()
            ));
        }
        match self.obs.quarantine_group.present() {
            Some(g) if self.quarantine_exact(g) => Ok(()),
            Some(_) => Err("the quarantine group has rules beyond the CDC exception".to_string()),
            None => Err("the quarantine group was not described".to_string()),
        }
    }

    fn preparing(&mut self) {
        let Some(plan) = self.plan().cloned() else {
            self.failure("no plan was recorded by preflight".to_string());
            return;
        };
        let groups_ready = match &self.obs.parameter_groups {
            Some(p) if p.cluster && p.instance => true,
            Some(_) => {
                self.request(Action::EnsureParameterGroups(ParameterGroupsSpec {
                    family: plan.family.clone(),
                    cluster_group: plan.cluster_parameter_group.clone(),
                    instance_group: plan.instance_parameter_group.clone(),
                    cluster_parameters: plan.cluster_parameters.clone(),
                    instance_parameters: plan.instance_parameters.clone(),
                    description: format!("aurora-migrator translation for {}", plan.family),
                }));
                false
            }
            None => false,
        };
        let quarantine_ready = match &self.obs.quarantine_group {
            Observed::Present(g) if self.quarantine_exact(g) => {
                self.m.progress.quarantine_group_id = Some(g.id.clone());
                true
            }
            Observed::Present(_) | Observed::Absent => {
                let mut tags = std::collections::BTreeMap::new();
                tags.insert(
                    tags::key(&self.policy.tag_prefix, "migration"),
                    self.m.id.to_string(),
                );
                tags.insert(
                    tags::key(&self.policy.tag_prefix, "source"),
                    self.m.source_identifier.clone(),
                );
                self.request(Action::EnsureQuarantineGroup(QuarantineGroupSpec {
                    name: self.m.names.quarantine_group.clone(),
                    vpc_id: plan.vpc_id.clone(),
                    allow_from: plan.cdc_consumers.clone(),
                    port: plan.port,
                    tags,
                }));
                false
            }
            Observed::Unknown => false,
        };
        // Before anything is done to the source, the agent takes hold of it with its own
        // marker: from here on its permissions on the source do not depend on the trigger tag,
        // which a person or an IaC apply may remove while the source is quarantined.
        let marked = match self.source() {
            Some(s) => {
                let key = tags::marker_key(&self.policy.tag_prefix);
                let value = self.m.id.resource_id.clone();
                if s.tags.get(&key) == Some(&value) {
                    true
                } else {
                    let arn = s.arn.clone();
                    self.request(Action::MarkSource { arn, value });
                    false
                }
            }
            None => false,
        };
        if groups_ready && quarantine_ready && marked {
            self.enter(Phase::CreatingReplica, "");
        }
    }

    /// The cluster is ours: it replicates from our source, or (after promotion) carries our tag.
    fn owned(&self, t: &TargetCluster) -> bool {
        t.replication_source.as_deref() == Some(self.m.source_arn.as_str())
            || t.tags.get(&tags::key(&self.policy.tag_prefix, "migration"))
                == Some(&self.m.id.to_string())
    }

    fn target_tags(&self) -> std::collections::BTreeMap<String, String> {
        let p = &self.policy.tag_prefix;
        let mut t = std::collections::BTreeMap::new();
        t.insert(tags::key(p, "migration"), self.m.id.to_string());
        t.insert(tags::key(p, "source"), self.m.source_identifier.clone());
        t
    }

    fn creating_replica(&mut self) {
        let Some(plan) = self.plan().cloned() else {
            self.failure("no plan was recorded by preflight".to_string());
            return;
        };
        match &self.obs.target {
            Observed::Unknown => {}
            Observed::Absent => {
                let others = self
                    .source()
                    .map(|s| s.aurora_replica_clusters.clone())
                    .unwrap_or_default();
                if !others.is_empty() {
                    self.failure(format!(
                        "the source already has another Aurora replica ({})",
                        others.join(", ")
                    ));
                    return;
                }
                if self.source().is_none() {
                    return;
                }
                self.request(Action::CreateReplicaCluster(ReplicaClusterSpec {
                    cluster: self.m.names.cluster.clone(),
                    source_arn: self.m.source_arn.clone(),
                    engine_version: plan.engine_version.clone(),
                    cluster_parameter_group: plan.cluster_parameter_group.clone(),
                    subnet_group: plan.subnet_group.clone(),
                    security_groups: plan.source_groups.clone(),
                    storage_encrypted: plan.storage_encrypted,
                    kms_key_id: plan.kms_key_id.clone(),
                    tags: self.target_tags(),
                }));
            }
            Observed::Present(t) => {
                if !self.owned(t) {
                    self.m.last_error = Some(format!(
                        "a cluster named {} exists and is not this migration's replica",
                        t.identifier
                    ));
                    self.enter(
                        Phase::Failed,
                        &format!(
                            "a cluster named {} already exists and is not this source's replica; it was left untouched",
                            t.identifier
                        ),
                    );
                    return;
                }
                if FAILED_CLUSTER_STATES.contains(&t.status.as_str()) {
                    self.failure(format!("the replica cluster is `{}`", t.status));
                    return;
                }
                if t.status != "available" {
                    return;
                }
                match t.writer(&self.m.names.writer) {
                    None => {
                        self.request(Action::CreateWriterInstance(WriterInstanceSpec {
                            instance: self.m.names.writer.clone(),
                            cluster: self.m.names.cluster.clone(),
                            instance_class: plan.instance_class.clone(),
                            parameter_group: plan.instance_parameter_group.clone(),
                            tags: self.target_tags(),
                        }));
                    }
                    Some(w) if w.status == "available" => {
                        self.m.progress.replica_ready_at.get_or_insert(self.now);
                        self.enter(Phase::Replicating, "");
                    }
                    Some(w) if w.status == "failed" => {
                        self.failure("the replica's writer instance failed".to_string());
                    }
                    Some(_) => {}
                }
            }
        }
    }

    fn replicating(&mut self) {
        if self.replica_guards() {
            return;
        }
        if !self.lag_ok() {
            self.m.progress.lag_ok_since = None;
            return;
        }
        let since = *self.m.progress.lag_ok_since.get_or_insert(self.now);
        if self.since(since) >= self.policy.lag_sustain {
            self.m.progress.baseline = Some(Baseline {
                cpu_percent: average(self.obs.metric(MetricKey::SourceCpu), None),
                write_latency_s: average(self.obs.metric(MetricKey::SourceWriteLatency), None),
                read_latency_s: average(self.obs.metric(MetricKey::SourceReadLatency), None),
            });
            self.enter(Phase::AwaitingCutover, "");
        } else {
            self.wake_within(self.policy.lag_sustain - self.since(since));
        }
    }

    fn cutover_allowed(&self) -> bool {
        match &self.policy.cutover {
            CutoverPolicy::Automatic => true,
            CutoverPolicy::ManualApproval => self.tags.approve,
            CutoverPolicy::Window(w) => w.contains(self.now),
        }
    }

    fn awaiting_cutover(&mut self) {
        if self.replica_guards() {
            return;
        }
        if self.obs.fleet_paused {
            self.enter(Phase::Paused, "the fleet-wide pause is on");
            return;
        }
        if self.cutover_allowed() && self.lag_ok() {
            self.enter(Phase::Quiescing, "");
        }
    }

    fn paused(&mut self) {
        if self.replica_guards() {
            return;
        }
        if !self.obs.fleet_paused {
            self.enter(Phase::AwaitingCutover, "the fleet-wide pause was lifted");
        }
    }

    fn quarantine_id(&self) -> Option<String> {
        self.m.progress.quarantine_group_id.clone()
    }

    fn quiescing(&mut self) {
        let (Some(source), Some(q)) = (self.source().cloned(), self.quarantine_id()) else {
            if self.quarantine_id().is_none() {
                self.failure("no quarantine group was recorded".to_string());
            }
            return;
        };
        if self.m.progress.original_groups.is_none() {
            let original: Vec<String> =
                source.group_ids().into_iter().filter(|g| *g != q).collect();
            self.m.progress.original_groups = Some(original);
        }
        self.request(Action::EnsureHeartbeatAlarm {
            alarm: self.m.names.heartbeat_alarm.clone(),
            migration: self.m.id.to_string(),
        });
        if !source.groups_exactly_active(std::slice::from_ref(&q)) {
            let only_q = source.group_ids() == [q.clone()];
            if !only_q {
                self.m.progress.quarantined_at.get_or_insert(self.now);
                self.request(Action::QuarantineSource {
                    instance: source.identifier.clone(),
                    group_id: q,
                });
            }
            return;
        }
        self.m.progress.quarantine_active_at.get_or_insert(self.now);
        if source.status != "available" {
            return;
        }
        if self.request(Action::RebootSource {
            instance: source.identifier.clone(),
        }) {
            self.m.progress.reboot_requested_at = Some(self.now);
            self.m.progress.restarted_at = None;
            self.enter(Phase::Draining, "");
        }
    }

    /// What the Draining proof still lacks (empty: proven). Records the restart when seen.
    fn drain_proof_missing(&mut self) -> Vec<String> {
        let mut missing = Vec::new();
        let Some(q) = self.quarantine_id() else {
            return vec!["no quarantine group recorded".to_string()];
        };
        let Some(source) = self.source().cloned() else {
            return vec!["source not observed".to_string()];
        };
        if !source.groups_exactly_active(std::slice::from_ref(&q)) {
            missing.push(
                "the source's security groups are not exactly the quarantine group, active"
                    .to_string(),
            );
        }
        match self.obs.quarantine_group.present() {
            Some(g) if self.quarantine_exact(g) => {}
            Some(_) => {
                missing.push("the quarantine group has rules beyond the CDC exception".to_string())
            }
            None => missing.push("the quarantine group was not described".to_string()),
        }
        if source.status != "available" {
            missing.push(format!("the source is `{}`", source.status));
        }
        if let Some(at) =
            first_restart(&self.obs.source_events, self.m.progress.reboot_requested_at)
        {
            self.m.progress.restarted_at.get_or_insert(at);
        }
        let Some(restarted) = self.m.progress.restarted_at else {
            missing.push(
                "no \"DB instance restarted\" event after the reboot request yet".to_string(),
            );
            return missing;
        };
        let after = |key: MetricKey| -> Vec<Datapoint> {
            self.obs
                .metric(key)
                .iter()
                .filter(|p| p.start >= restarted)
                .copied()
                .collect()
        };
        if !after(MetricKey::SourceSlotLag)
            .iter()
            .any(|p| p.minimum == 0.0)
        {
            missing.push(
                "no OldestReplicationSlotLag period after the restart with Minimum 0".to_string(),
            );
        }
        let consumers = self.plan().map_or(0, |p| p.cdc_consumers.len()) as f64;
        match latest(&after(MetricKey::SourceConnections)) {
            Some(p) if p.maximum <= self.policy.max_idle_connections + consumers => {}
            Some(p) => missing.push(format!(
                "{} connections on the quarantined source",
                p.maximum
            )),
            None => missing.push("no DatabaseConnections period after the restart".to_string()),
        }
        match latest(&after(MetricKey::TargetReplicaLag)) {
            Some(p) if p.maximum <= self.policy.drained_replica_lag_s => {}
            Some(p) => missing.push(format!("replica lag {} s", p.maximum)),
            None => missing
                .push("no RDSToAuroraPostgreSQLReplicaLag period after the restart".to_string()),
        }
        if consumers > 0.0 && !self.tags.cdc_drained {
            missing.push(format!(
                "waiting for the CDC consumers to drain their slots and tag {}:cdc-drained=true",
                self.policy.tag_prefix
            ));
        }
        missing
    }

    fn draining(&mut self) {
        let missing = self.drain_proof_missing();
        if missing.is_empty() {
            self.m.progress.drain_proven_at = Some(self.now);
            self.enter(Phase::Promoting, "");
            return;
        }
        // Back from Promoting after a drift, or changed under us: put the quarantine back. The
        // reboot below waits for it, or sessions could reconnect through the old groups.
        let fenced = match (self.source().cloned(), self.quarantine_id()) {
            (Some(source), Some(q)) => {
                let exact = source.groups_exactly_active(std::slice::from_ref(&q));
                if !exact && source.group_ids() != [q.clone()] {
                    self.request(Action::QuarantineSource {
                        instance: source.identifier.clone(),
                        group_id: q,
                    });
                }
                exact
            }
            _ => false,
        };
        if fenced && self.m.progress.restarted_at.is_none() {
            // No restart seen yet: ask for the reboot when none is in flight (a failed request
            // is forgotten, see `take_action_results`), or again when one produced no restart
            // for far longer than a reboot takes.
            let requested = self.m.progress.reboot_requested_at;
            let never_started = requested.is_some_and(|r| {
                self.since(r) > self.policy.reboot_unconfirmed_after
                    && self.source().is_some_and(|s| s.status == "available")
                    && !self.obs.source_events.iter().any(|e| {
                        e.at >= r
                            && matches!(
                                e.kind,
                                InstanceEventKind::Shutdown | InstanceEventKind::Restarted
                            )
                    })
            });
            if never_started {
                // Lost, not slow: nothing in flight to wait for.
                self.m.requested.remove(&ActionKey::RebootSource);
            }
            let due = never_started
                || requested.is_none_or(|r| self.since(r) > self.policy.reboot_reissue_after);
            if due
                && let Some(source) = self.source().map(|s| s.identifier.clone())
                && self.request(Action::RebootSource { instance: source })
            {
                self.m.progress.reboot_requested_at = Some(self.now);
            }
        }
        if let Some(q) = self.m.progress.quarantined_at
            && self.since(q) > self.policy.write_unavailability_budget / 2
        {
            self.alert_once(
                "draining-slow",
                Severity::Warning,
                "the catch-up proof is taking long",
                &format!(
                    "still missing: {}; the agent rolls back by itself when the budget runs out",
                    missing.join("; ")
                ),
            );
        }
    }

    fn promoting(&mut self) {
        let t = match &self.obs.target {
            Observed::Unknown => return,
            Observed::Absent => {
                self.failure("the replica cluster disappeared before promotion".to_string());
                return;
            }
            Observed::Present(t) => t.clone(),
        };
        if t.replication_source.is_none() && t.status == "available" {
            self.m.progress.promoted_at.get_or_insert(self.now);
            let detail = if self.plan().is_some_and(|p| !p.cdc_consumers.is_empty()) {
                format!(
                    "CDC consumers: create your replication slots on {} now, then tag the source {}:cdc-slots-created=true; nothing has been written to Aurora yet, so no change is missed",
                    t.writer_endpoint
                        .as_ref()
                        .map_or(t.identifier.as_str(), |e| e.address.as_str()),
                    self.policy.tag_prefix
                )
            } else {
                String::new()
            };
            self.enter(Phase::Routing, &detail);
            return;
        }
        if t.replication_source.is_some()
            && self.m.progress.promote_requested_at.is_none()
            && let Err(why) = self.fence_intact()
        {
            // The proof no longer holds: someone may have written since. Nothing is promoted;
            // the proof starts over (a new reboot after the quarantine is back).
            self.m.progress.drain_proven_at = None;
            self.m.progress.restarted_at = None;
            self.m.progress.reboot_requested_at = None;
            self.enter(
                Phase::Draining,
                &format!(
                    "the fence broke before promotion ({why}); the catch-up proof starts over"
                ),
            );
            return;
        }
        if t.replication_source.is_some()
            && self.request(Action::PromoteTarget {
                cluster: t.identifier.clone(),
            })
        {
            self.m.progress.promote_requested_at.get_or_insert(self.now);
        }
    }

    fn route_to(&self, endpoint: &super::observation::Endpoint) -> RouteRequest {
        RouteRequest {
            migration: self.m.id.to_string(),
            source: self.m.source_identifier.clone(),
            endpoint: endpoint.address.clone(),
            port: endpoint.port,
            phase: self.m.phase,
        }
    }

    fn routing(&mut self) {
        let Some(t) = self.obs.target.present().cloned() else {
            return;
        };
        if self.m.progress.routed_at.is_some() {
            let endpoint = t
                .writer_endpoint
                .as_ref()
                .map(|e| format!("{}:{}", e.address, e.port))
                .unwrap_or_default();
            self.enter_with(
                Phase::Verifying,
                &format!("traffic now goes to the Aurora writer {endpoint}"),
                "cutover",
            );
            return;
        }
        let cdc = self.plan().is_some_and(|p| !p.cdc_consumers.is_empty());
        if cdc && !self.tags.cdc_slots_created {
            return;
        }
        let Some(endpoint) = t.writer_endpoint.clone() else {
            return;
        };
        if self.m.progress.route_requested_at.is_none()
            && let Err(why) = self.fence_intact()
        {
            // Aurora is promoted but has taken no write; the source must not take one either
            // once traffic moves, or the two diverge. Hold until the fence holds again.
            self.alert_once(
                "fence-broken-before-routing",
                Severity::Error,
                "routing is on hold: the old primary is not fenced",
                &format!(
                    "{why}; clients could write to both sides after the cutover. Put the quarantine group back (only it) and the agent routes; or tag {}:abort=true to roll back losslessly",
                    self.policy.tag_prefix
                ),
            );
            return;
        }
        let route = self.route_to(&endpoint);
        if self.request(Action::RouteTraffic(route)) {
            self.m.progress.route_requested_at.get_or_insert(self.now);
        }
    }

    fn verifying(&mut self) {
        let Some(routed) = self.m.progress.routed_at else {
            self.failure("verification started without a confirmed route".to_string());
            return;
        };
        if self.m.progress.smoke_test_passed == Some(false) {
            let why = self.m.last_error.clone().unwrap_or_default();
            self.failure(format!("the smoke test failed: {why}"));
            return;
        }
        if self.policy.smoke_test
            && self.m.progress.smoke_test_passed.is_none()
            && let Some(e) = self
                .obs
                .target
                .present()
                .and_then(|t| t.writer_endpoint.clone())
        {
            let route = self.route_to(&e);
            self.request(Action::RunSmokeTest(route));
        }
        let settle = self.policy.slow_poll * 2;
        if self.since(routed) > settle {
            let wal = self
                .obs
                .metric(MetricKey::SourceWalGeneration)
                .iter()
                .filter(|p| p.start >= routed + settle)
                .map(|p| p.average)
                .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))));
            if wal.is_some_and(|w| w > self.policy.idle_wal_bytes_per_s) {
                self.alert_once(
                    "source-writes",
                    Severity::Error,
                    "someone is writing to the old primary",
                    "the source's TransactionLogsGeneration is above idle after cutover: a client outside the data access layer still writes there, and those writes are not on Aurora",
                );
            }
        }
        self.source_release_after_cutover();
        if self.since(routed) < self.policy.soak {
            self.wake_within(self.policy.soak - self.since(routed));
            return;
        }
        let regressions = self.kpi_regressions(routed);
        if !regressions.is_empty() {
            self.failure(format!("verification failed: {}", regressions.join("; ")));
            return;
        }
        if self.policy.smoke_test && self.m.progress.smoke_test_passed != Some(true) {
            return;
        }
        self.m.progress.verification_passed_at = Some(self.now);
        self.enter(Phase::Decommissioning, "");
    }

    /// After cutover the source stays quarantined unless the policy gives its groups back; a
    /// drift (IaC re-applying the groups) is reported.
    fn source_release_after_cutover(&mut self) {
        let (Some(source), Some(original), Some(q)) = (
            self.source().cloned(),
            self.m.progress.original_groups.clone(),
            self.quarantine_id(),
        ) else {
            return;
        };
        if self.policy.restore_source_groups_after_cutover {
            if source.groups_exactly_active(&original) {
                self.m.progress.source_released_at.get_or_insert(self.now);
            } else if self.m.progress.source_released_at.is_none() {
                self.request(Action::RestoreSourceGroups {
                    instance: source.identifier.clone(),
                    group_ids: original,
                });
            }
        } else if !source.groups_exactly_active(std::slice::from_ref(&q))
            && source.group_ids() != [q]
        {
            self.alert_once(
                "quarantine-drift",
                Severity::Error,
                "the old primary is reachable again",
                "the source's security groups were changed after cutover (an IaC apply?); clients could write to it: fix the groups",
            );
        }
    }

    fn kpi_regressions(&self, routed: Timestamp) -> Vec<String> {
        let Some(base) = self.m.progress.baseline.clone() else {
            return Vec::new();
        };
        let ratio = self.policy.kpi_tolerance_ratio;
        let checks = [
            ("CPU", base.cpu_percent, MetricKey::TargetCpu, 20.0, "%"),
            (
                "write latency",
                base.write_latency_s,
                MetricKey::TargetWriteLatency,
                0.005,
                " s",
            ),
            (
                "read latency",
                base.read_latency_s,
                MetricKey::TargetReadLatency,
                0.005,
                " s",
            ),
        ];
        checks
            .into_iter()
            .filter_map(|(name, baseline, key, floor, unit)| {
                let b = baseline?;
                let t = average(self.obs.metric(key), Some(routed))?;
                (t > b * ratio && t > floor).then(|| {
                    format!(
                        "{name} {t:.3}{unit} against a baseline of {b:.3}{unit} (limit ×{ratio})"
                    )
                })
            })
            .collect()
    }

    fn decommissioning(&mut self) {
        let Some(passed) = self.m.progress.verification_passed_at else {
            self.failure("decommissioning without a passed verification".to_string());
            return;
        };
        match self.obs.source.clone() {
            Observed::Unknown => {}
            Observed::Absent => self.source_gone(),
            Observed::Present(source) => {
                let due = passed + self.policy.retention;
                if self.now < due {
                    self.wake = Some(due.duration_since(self.now));
                    return;
                }
                if source.status == "deleting" {
                    // Our DeleteDBInstance was accepted (or someone else's): RDS is taking the
                    // final snapshot and then removes the instance.
                    return;
                }
                if !self.final_snapshot_name_free(&source) {
                    return;
                }
                let full = self.obs.quotas.as_ref().is_some_and(|qs| {
                    qs.iter()
                        .any(|q| q.name == "ManualSnapshots" && q.used >= q.max)
                });
                if full {
                    self.alert_once(
                        "snapshot-quota",
                        Severity::Error,
                        "no room for the final snapshot",
                        "the account's manual snapshot quota is reached; delete old snapshots or raise the quota, the agent waits",
                    );
                    return;
                }
                if source.deletion_protection {
                    if self.policy.allow_disable_deletion_protection {
                        self.request(Action::DisableDeletionProtection {
                            instance: source.identifier.clone(),
                        });
                    } else {
                        self.alert_once(
                            "deletion-protection",
                            Severity::Warning,
                            "waiting for DeletionProtection to be turned off",
                            &format!(
                                "turn DeletionProtection off on {} to let the agent delete it (with a final snapshot {}, automated backups kept)",
                                source.identifier, self.m.names.final_snapshot
                            ),
                        );
                    }
                    return;
                }
                if let Err(why) = self.fence_holds_for_deletion(&source) {
                    self.alert_once(
                        "fence-broken-before-delete",
                        Severity::Error,
                        "the old primary is not fenced: deletion is on hold",
                        &format!(
                            "{why}; it may have taken writes that are not on Aurora, so the agent does not delete it. Check who changed it, fence it again (or finish by hand), and the agent goes on"
                        ),
                    );
                    return;
                }
                if !source.read_replicas.is_empty() {
                    self.alert_once(
                        "read-replicas-promoted",
                        Severity::Warning,
                        "the source's read replicas become standalone instances",
                        &format!(
                            "deleting the source promotes {}: they were acknowledged in preflight",
                            source.read_replicas.join(", ")
                        ),
                    );
                }
                if self.request(Action::DeleteSource {
                    instance: source.identifier.clone(),
                    final_snapshot: self.m.names.final_snapshot.clone(),
                }) {
                    self.m
                        .progress
                        .source_delete_requested_at
                        .get_or_insert(self.now);
                }
            }
        }
    }

    /// The final snapshot's name must be free before the deletion asks for it: a snapshot of
    /// that name that is not the product of our own DeleteDBInstance (another instance's, or one
    /// taken before our request, e.g. by an earlier version of the agent that snapshotted
    /// separately) does not hold the source's last state, and RDS would refuse the deletion.
    fn final_snapshot_name_free(&mut self, source: &SourceInstance) -> bool {
        match &self.obs.final_snapshot {
            Observed::Unknown => false,
            Observed::Absent => true,
            Observed::Present(s) => {
                let ours = self.final_snapshot_is_ours(s);
                if !ours {
                    self.alert_once(
                        "final-snapshot-name-taken",
                        Severity::Error,
                        "the final snapshot's name is taken",
                        &format!(
                            "a snapshot named {} exists (of {}, created {}) that is not the last state of {}; delete or rename it and the agent deletes the source with a final snapshot of that name",
                            s.identifier,
                            s.instance,
                            s.created_at.map_or("at an unknown time".to_string(), |t| t.to_string()),
                            source.identifier
                        ),
                    );
                }
                // Ours: the deletion was accepted and the describe lags; wait for it.
                false
            }
        }
    }

    /// A snapshot carrying the final snapshot's name is ours only when it is of the source and
    /// was created after we asked for the deletion (RDS clocks and ours differ by seconds, so a
    /// minute of slack; an older snapshot cannot hold the last state).
    fn final_snapshot_is_ours(&self, s: &Snapshot) -> bool {
        let Some(requested) = self.m.progress.source_delete_requested_at else {
            return false;
        };
        s.instance.eq_ignore_ascii_case(&self.m.source_identifier)
            && s.created_at
                .is_none_or(|t| t >= requested - SignedDuration::from_mins(1))
    }

    /// The last check before the source is deleted: nobody can have written to it since the
    /// cutover. Either its groups are still exactly the quarantine group, or (when the policy
    /// gave its groups back) it generated no more WAL than an idle instance in every period of
    /// the last few minutes.
    fn fence_holds_for_deletion(&self, source: &SourceInstance) -> Result<(), String> {
        if !self.policy.restore_source_groups_after_cutover {
            let Some(q) = self.quarantine_id() else {
                return Err("no quarantine group was recorded".to_string());
            };
            return if source.groups_exactly_active(std::slice::from_ref(&q)) {
                Ok(())
            } else {
                Err(format!(
                    "its security groups are {:?}, not exactly the quarantine group {q}",
                    source.group_ids()
                ))
            };
        }
        let recent: Vec<&Datapoint> = self
            .obs
            .metric(MetricKey::SourceWalGeneration)
            .iter()
            .filter(|p| p.start >= self.now - DELETE_IDLE_WINDOW)
            .collect();
        if recent.is_empty() {
            return Err("no TransactionLogsGeneration period of the last minutes to show it takes no writes".to_string());
        }
        match recent
            .iter()
            .find(|p| p.maximum > self.policy.idle_wal_bytes_per_s)
        {
            Some(p) => Err(format!(
                "its groups were given back and it generated {:.0} bytes/s of WAL in the period from {}, above idle",
                p.maximum, p.start
            )),
            None => Ok(()),
        }
    }

    /// The source is gone: by our deletion (its final snapshot holds the last state) or by
    /// someone else's. Clean up what the agent made for it, then complete.
    fn source_gone(&mut self) {
        self.m.progress.source_released_at.get_or_insert(self.now);
        let ours = self.m.progress.source_delete_requested_at.is_some();
        if !ours {
            self.alert_once(
                "source-deleted",
                Severity::Warning,
                "the source was deleted outside the agent",
                "no final snapshot was taken by the agent",
            );
        } else {
            match &self.obs.final_snapshot {
                Observed::Unknown => return,
                Observed::Present(s) if self.final_snapshot_is_ours(s) => {
                    self.m.progress.final_snapshot_at.get_or_insert(self.now);
                }
                _ => self.alert_once(
                    "final-snapshot-missing",
                    Severity::Error,
                    "the source is deleted but its final snapshot is not there",
                    &format!(
                        "the snapshot {} of {} is missing or not of its last state; its automated backups were kept (DeleteAutomatedBackups=false): restore from them if needed",
                        self.m.names.final_snapshot, self.m.source_identifier
                    ),
                ),
            }
        }
        self.request(Action::DeleteHeartbeatAlarm {
            alarm: self.m.names.heartbeat_alarm.clone(),
        });
        match (&self.obs.quarantine_group, self.quarantine_id()) {
            (Observed::Present(g), _) => {
                let id = g.id.clone();
                self.request(Action::DeleteQuarantineGroup { group_id: id });
            }
            (Observed::Absent, _) | (_, None) => {
                let detail = if ours {
                    format!(
                        "the source is deleted; its final snapshot is {}, and its automated backups are kept until their retention ends",
                        self.m.names.final_snapshot
                    )
                } else {
                    "the source was deleted outside the agent".to_string()
                };
                self.enter(Phase::Completed, &detail);
            }
            (Observed::Unknown, Some(_)) => {}
        }
    }

    fn rolling_back(&mut self) {
        let Some(rollback) = self.m.rollback.clone() else {
            self.failure("rolling back without a recorded cause".to_string());
            return;
        };
        if rollback.after_cutover {
            self.rolling_back_after_cutover();
        } else {
            self.rolling_back_before_cutover(&rollback);
        }
    }

    /// Returns true when the source has its original groups back (or never lost them).
    fn restore_source(&mut self) -> bool {
        if !self.m.source_quarantined() {
            return true;
        }
        let Some(source) = self.source().cloned() else {
            return false;
        };
        let original = self.m.progress.original_groups.clone().unwrap_or_default();
        if source.groups_exactly_active(&original) {
            self.m.progress.source_released_at = Some(self.now);
            self.request(Action::DeleteHeartbeatAlarm {
                alarm: self.m.names.heartbeat_alarm.clone(),
            });
            return true;
        }
        self.request(Action::RestoreSourceGroups {
            instance: source.identifier.clone(),
            group_ids: original,
        });
        false
    }

    fn rolling_back_before_cutover(&mut self, rollback: &Rollback) {
        let released = self.restore_source();
        let target_gone = match &self.obs.target {
            Observed::Unknown => false,
            Observed::Absent => true,
            Observed::Present(t) if !self.owned(t) => true, // never ours to delete
            Observed::Present(t) => {
                if t.status != "deleting" {
                    self.request(Action::DeleteTarget {
                        cluster: t.identifier.clone(),
                        writer: self.m.names.writer.clone(),
                    });
                }
                false
            }
        };
        if !(released && target_gone) {
            return;
        }
        match &self.obs.quarantine_group {
            Observed::Present(g) => {
                let id = g.id.clone();
                self.request(Action::DeleteQuarantineGroup { group_id: id });
            }
            Observed::Absent => {
                let end = match rollback.cause {
                    RollbackCause::Aborted => Phase::Aborted,
                    _ => Phase::RolledBack,
                };
                self.enter(end, "the source has its security groups back and takes writes; the replica was deleted; nothing was lost");
            }
            Observed::Unknown => {}
        }
    }

    /// Rollback after cutover: Aurora is fenced the way the source was (exactly the quarantine
    /// group, then its writer rebooted, then no connection after the restart), and only then is
    /// what it took counted, the source given its groups back and traffic routed back. A group
    /// change alone leaves open sessions writing to Aurora after the count.
    fn rolling_back_after_cutover(&mut self) {
        let (Some(t), Some(q)) = (self.obs.target.present().cloned(), self.quarantine_id()) else {
            return;
        };
        if !t
            .security_groups
            .iter()
            .all(|g| g.id == q && g.status == "active")
            || t.security_groups.is_empty()
        {
            self.request(Action::QuarantineTarget {
                cluster: t.identifier.clone(),
                group_id: q,
            });
            return;
        }
        let Some(restarted) = self.target_fence_restart(&t) else {
            return;
        };
        // No session after the restart: the quarantine keeps new ones out, so nobody can write.
        // This, not WriteIOPS, is the gate: Aurora's storage reports writes of its own on an idle
        // writer, so WriteIOPS serves to count what clients wrote, not to prove they stopped.
        let conns = self
            .obs
            .metric(MetricKey::TargetConnections)
            .iter()
            .filter(|p| p.start >= restarted)
            .copied()
            .collect::<Vec<_>>();
        match latest(&conns) {
            Some(p) if p.maximum <= self.policy.max_idle_connections => {}
            _ => return,
        }
        // Counted at the end, over the published periods from the route request (Aurora may
        // take writes from then on) to the restart. CloudWatch publishes a period a minute or
        // two late; the rollback does not wait for it (both sides are fenced meanwhile), it
        // says plainly when the count is a lower bound and which span a person should read.
        let from = self
            .m
            .progress
            .route_requested_at
            .or(self.m.progress.routed_at)
            .unwrap_or(self.m.phase_entered_at);
        let mut periods: Vec<Datapoint> = self
            .obs
            .metric(MetricKey::TargetWriteIops)
            .iter()
            .filter(|p| period_end(p) > from && p.start < restarted)
            .copied()
            .collect();
        periods.sort_by_key(|p| p.start);
        let covered = covers(&periods, from, restarted);
        let writes: f64 = periods
            .iter()
            .map(|p| p.average * f64::from(p.period_s))
            .sum();
        let bound = if covered { "about" } else { "at least" };
        let gap = if covered {
            ""
        } else {
            " (CloudWatch had not published every period of that span yet: read the writer's WriteIOPS for it, the true number may be higher)"
        };
        let stays = format!(
            "{bound} {writes:.0} write operations were made on the Aurora cluster {} between {from} (cutover) and {restarted} (its writer restarted behind the quarantine){gap}; they stay on Aurora and are not on the source: reconcile them by hand. The cluster is kept, fenced off, for that",
            t.identifier
        );
        self.alert_once(
            "writes-on-target",
            Severity::Error,
            "rolling back after cutover: writes made on Aurora are not on the source",
            &stays,
        );
        if !self.restore_source() {
            return;
        }
        let Some(endpoint) = self.source().and_then(|s| s.endpoint.clone()) else {
            return;
        };
        let back = self
            .obs
            .action_results
            .iter()
            .any(|r| r.key == ActionKey::RouteTraffic && r.outcome.is_ok());
        if back {
            self.enter(
                Phase::RolledBack,
                &format!(
                    "traffic is routed back to the source {}:{}; {stays}",
                    endpoint.address, endpoint.port
                ),
            );
        } else {
            let route = self.route_to(&endpoint);
            self.request(Action::RouteTraffic(route));
        }
    }

    /// Reboots Aurora's writer once it has exactly the quarantine group, and returns when it
    /// restarted (a "DB instance restarted" event of the writer after the request), asking
    /// again when a reboot produced no restart for far longer than one takes.
    fn target_fence_restart(&mut self, t: &TargetCluster) -> Option<Timestamp> {
        if let Some(at) = self.m.progress.target_restarted_at {
            return Some(at);
        }
        let requested = self.m.progress.target_reboot_requested_at;
        if let Some(at) = first_restart(&self.obs.writer_events, requested) {
            self.m.progress.target_restarted_at = Some(at);
            return Some(at);
        }
        let due = requested.is_none_or(|r| self.since(r) > self.policy.reboot_reissue_after);
        if due
            && t.status == "available"
            && self.request(Action::RebootTargetWriter {
                writer: self.m.names.writer.clone(),
            })
        {
            self.m.progress.target_reboot_requested_at = Some(self.now);
        }
        None
    }
}

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

/// The first "DB instance restarted" event at or after a reboot request: only a restart after
/// our request ends the sessions that were open when we asked.
fn first_restart(events: &[InstanceEvent], requested: Option<Timestamp>) -> Option<Timestamp> {
    let requested = requested?;
    events
        .iter()
        .filter(|e| e.kind == InstanceEventKind::Restarted && e.at >= requested)
        .map(|e| e.at)
        .min()
}

/// The end of a CloudWatch period.
fn period_end(p: &Datapoint) -> Timestamp {
    p.start + SignedDuration::from_secs(i64::from(p.period_s))
}

/// Whether `periods` (sorted by start) cover `[from, to]` without a gap.
fn covers(periods: &[Datapoint], from: Timestamp, to: Timestamp) -> bool {
    let Some(first) = periods.first() else {
        return false;
    };
    if first.start > from {
        return false;
    }
    let mut reached = period_end(first);
    for p in &periods[1..] {
        if p.start > reached {
            return false;
        }
        reached = reached.max(period_end(p));
    }
    reached >= to
}

/// How far back the source's WAL generation must be idle before it is deleted with its groups
/// given back: several CloudWatch periods, so one quiet minute is not mistaken for no writer.
const DELETE_IDLE_WINDOW: SignedDuration = SignedDuration::from_mins(5);

/// How long a rolled-back source is watched for a late quarantine. 15 min: far longer than RDS
/// takes to apply and show a security group change.
const RELEASE_WATCH: SignedDuration = SignedDuration::from_mins(15);

/// Mean of the period averages, optionally only periods starting at or after `from`.
fn average(points: &[Datapoint], from: Option<Timestamp>) -> Option<f64> {
    let vals: Vec<f64> = points
        .iter()
        .filter(|p| from.is_none_or(|f| p.start >= f))
        .map(|p| p.average)
        .collect();
    (!vals.is_empty()).then(|| vals.iter().sum::<f64>() / vals.len() as f64)
}

/// `1h 30m`-style text for notifications.
pub fn human(d: SignedDuration) -> String {
    let secs = d.as_secs();
    let (h, m, s) = (secs / 3600, (secs % 3600) / 60, secs % 60);
    match (h, m, s) {
        (0, 0, s) => format!("{s}s"),
        (0, m, 0) => format!("{m}m"),
        (0, m, s) => format!("{m}m {s}s"),
        (h, 0, _) if h % 24 == 0 => format!("{}d", h / 24),
        (h, m, _) => format!("{h}h {m}m"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn period(start_s: i64) -> Datapoint {
        Datapoint {
            start: Timestamp::from_second(start_s).unwrap(),
            period_s: 60,
            minimum: 0.0,
            maximum: 0.0,
            average: 1.0,
        }
    }

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap()
    }

    #[test]
    fn covers_needs_periods_from_before_the_start_to_past_the_end_without_a_gap() {
        let all = [period(0), period(60), period(120)];
        assert!(covers(&all, at(30), at(170)));
        assert!(!covers(&all, at(30), at(190)), "ends before the restart");
        assert!(
            !covers(&all[1..], at(30), at(170)),
            "starts after the cutover"
        );
        assert!(!covers(&[period(0), period(120)], at(30), at(170)), "a gap");
        assert!(!covers(&[], at(30), at(170)));
    }
}
