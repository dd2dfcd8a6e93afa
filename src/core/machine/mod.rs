//! The phase machine: `step(record, observation, now, policy) -> Decision`.
//!
//! # Expected flow
//! Each call looks at one observation of the world and moves the record at most one phase
//! forward, returning the actions that bring the world closer to what the phase wants. The shell
//! persists `next` before it runs any action, then schedules a wake-up after `wake_after`.
//!
//! # Layout
//! This file holds `step`, `Decision` and the stepper's shared rules (phase changes, requests
//! and their reissue, backoff, alerts, the guards that preempt every phase, terminal phases).
//! Each group of phases has all its rules in one file — what it needs observed (`needs`), its
//! guards, its proof and its actions: `preparation.rs` (preflight … paused), `cutover.rs`
//! (quiescing … routing, with the write-unavailability budget and the drain proof), `soak.rs`
//! (verifying, decommissioning) and `rollback.rs` (both rollbacks). `route.rs` and `hold.rs` are
//! the rules of routes in effect and of clients held around the cutover. `fence.rs` is the one check
//! of the quarantine the cutover, the re-checks and the deletion rely on; `results.rs` is the
//! one rule for which action results feed back into the record. `wal_fence.rs` and
//! `consistency.rs` hold the database-aware cutover's rules (the WAL proof, the check before
//! routing). Phase timeouts and poll
//! intervals are settings (`Policy::timeout`, `Policy::poll_interval`).
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
    Action, ActionError, ActionKey, ErrorKind, ParameterGroupsSpec, QuarantineGroupSpec,
    ReplicaClusterSpec, RouteRequest, WriterInstanceSpec,
};
use super::invariants;
use super::messages;
use super::migration::{Baseline, Migration, PhaseChange, Plan, Rollback, RollbackCause, Wake};
use super::needs::Needs;
use super::notification::Severity;
use super::observation::{
    Datapoint, InstanceEvent, InstanceEventKind, MetricKey, Observation, Observed, SecurityGroup,
    Snapshot, SourceInstance, TargetCluster, latest,
};
use super::phase::Phase;
use super::policy::{CutoverPolicy, Policy};
use super::preflight;
use super::tags::{self, ControlTags};

// One file per group of phases, each holding everything about its phases (see their docs).
mod consistency;
mod cutover;
mod fence;
mod hold;
mod preparation;
pub mod results;
mod rollback;
mod route;
mod soak;
pub use soak::SNAPSHOT_EXISTS;
mod wal_fence;

/// The shortest wait a step asks for (other than "look again at once"). Sub-second waits are
/// the database-aware cutover's (what is left of the quiet period, the replay poll); the agent
/// takes them in-process, on time, with a whole-second SQS tick as the backstop
/// (`agent::follow_up`). A floor keeps a rounding remainder from turning into a busy loop.
pub const MIN_WAKE: SignedDuration = SignedDuration::from_millis(100);

/// How often a migration with a quarantined source puts its heartbeat: three times in each of
/// the heartbeat alarm's 60 s periods, so one lost put never breaches it.
pub const HEARTBEAT_EVERY: SignedDuration = SignedDuration::from_secs(20);

/// The phase mirror tag (`<prefix>:phase`) is written for a phase once it lasts: when the step
/// that leaves the migration in it waits at least this long, or ends it (a terminal phase), or
/// on the first look this long after the phase began. A phase passed through in seconds
/// (Requested and Preflight within one message, Quiescing's group change, the database path's
/// Routing) is never written: nobody sees a tag that lasts seconds, and each write is an RDS
/// request from the account's shared budget (13.5 a migration in the simulator's
/// 1,000-migration fleet, every phase written). A phase that needs a person (Failed, Paused) is
/// written at once.
pub const PHASE_MIRROR_AFTER: SignedDuration = SignedDuration::from_secs(10);

/// [`PHASE_MIRROR_AFTER`] for the cutover's phases (Quiescing … Routing): a minute. Their tag
/// writes take turns at the RDS budget with the cutovers' own looks, which are write
/// downtime, and during the outage people follow the notification of every phase, not a tag;
/// a cutover phase that lasts (the metric path's reboot and catch-up, AWS's promotion: minutes)
/// is still written. The database path's Quiescing (RDS's group change, 5–40 s), Draining and
/// Routing (seconds) were 0.9 of the 8.8 tag writes a migration in the simulator's
/// 1,000-migration fleet.
pub const PHASE_MIRROR_AFTER_IN_CUTOVER: SignedDuration = SignedDuration::from_secs(60);

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
        look_again: false,
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
    /// Something this step heard needs a fresh look at once (the fence was written).
    look_again: bool,
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
        self.heartbeat_if_due();
        match self.m.phase {
            Phase::Requested => self.requested(),
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
        } else if self.entered || self.look_again {
            Some(SignedDuration::ZERO)
        } else {
            Some(
                self.wake
                    .unwrap_or_else(|| self.policy.poll_interval(self.m.phase)),
            )
        };
        self.mirror_phase_if_it_lasts(wake);
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

    /// Writes the phase mirror for the current phase if it is not written yet and lasts
    /// ([`PHASE_MIRROR_AFTER`], [`PHASE_MIRROR_AFTER_IN_CUTOVER`]); `wake` is when this step
    /// looks again.
    fn mirror_phase_if_it_lasts(&mut self, wake: Option<SignedDuration>) {
        let phase = self.m.phase;
        // Requested is never written: the trigger tag a person set says it, and a migration
        // waiting there for a preparation turn asks nothing of AWS.
        if self.m.progress.mirrored_phase == Some(phase) || phase == Phase::Requested {
            return;
        }
        let after = if phase.is_cutover() {
            PHASE_MIRROR_AFTER_IN_CUTOVER
        } else {
            PHASE_MIRROR_AFTER
        };
        let lasts = wake.is_none_or(|w| w >= after)
            || self.since(self.m.phase_entered_at) >= after
            || phase == Phase::Paused
            || phase.is_terminal();
        if !lasts {
            return;
        }
        let mut arns = self.phase_mirror_arns(phase);
        // The source's mirror rides on the marker's write when this step asks for one.
        if let Some(Action::MarkSource {
            arn, phase: with, ..
        }) = self
            .actions
            .iter_mut()
            .find(|a| matches!(a, Action::MarkSource { .. }))
            && arns.contains(arn)
        {
            *with = Some(phase);
            let arn = arn.clone();
            arns.retain(|a| *a != arn);
        }
        if !arns.is_empty() {
            // First: the step's own requests may remove where it goes (the source's deletion).
            self.actions
                .insert(0, Action::MirrorPhaseTag { arns, phase });
        }
        self.m.progress.mirrored_phase = Some(phase);
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

    /// The heartbeat alarm wants a datapoint in each of its 60 s periods while the source is
    /// fenced: one every `HEARTBEAT_EVERY`, not one a step (a cutover steps twice a second).
    fn heartbeat_if_due(&mut self) {
        let due = self
            .m
            .progress
            .heartbeat_at
            .is_none_or(|at| self.since(at) >= HEARTBEAT_EVERY);
        if self.m.source_quarantined() && due {
            self.m.progress.heartbeat_at = Some(self.now);
            self.actions.push(Action::PutHeartbeat {
                migration: self.m.id.to_string(),
            });
        }
    }

    /// People are told, once an attempt, that the source was renamed and what that holds.
    fn tell_renamed(&mut self, renamed: &str) {
        let old = self.m.source_identifier.clone();
        let fenced = if self.m.source_quarantined() {
            "; it is still fenced, so it takes no writes until then"
        } else {
            ""
        };
        let what = format!(
            "{old} is now named {renamed} (the same instance, resource id {}). The agent knows the source by its name: it does nothing to it under another and reads no tag on it (an abort or a rollback approval waits too){fenced}. Rename it back to {old} and the migration goes on",
            self.m.id.resource_id
        );
        self.alert_once(
            "source-renamed",
            Severity::Error,
            "the source was renamed: the migration holds",
            &what,
        );
        self.m.last_error = Some(format!("the source was renamed to {renamed}"));
    }

    fn trigger_needs_reset(&self) -> bool {
        self.m.phase.is_terminal()
            && self.m.phase != Phase::Completed
            && self.m.trigger_reset_at.is_none()
            && !self.obs.source.is_absent()
    }

    // ----- building blocks -------------------------------------------------------------------

    /// What a phase handler assumes first: `run` dispatched it for its own phase (debug builds;
    /// the release-build guard is on the irreversible actions, `invariants::irreversible_allowed`).
    fn assume_phase(&self, phase: Phase) {
        debug_assert_eq!(
            self.m.phase, phase,
            "the {phase} handler was called in another phase"
        );
    }

    /// The plan Preflight recorded; a phase after it without one fails the migration (the record
    /// was damaged: nothing safe can be decided without the plan).
    fn recorded_plan(&mut self) -> Option<Plan> {
        let plan = self.plan().cloned();
        if plan.is_none() {
            self.failure("no plan was recorded by preflight".to_string());
        }
        plan
    }

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
        if self.trigger_needs_reset() {
            self.reset_trigger();
        }
    }

    /// Where the phase mirror (`<prefix>:phase`) goes: where a person looks for the database,
    /// once. The source while it exists (the migration's phases up to Decommissioning all
    /// happen while it does); the Aurora cluster once the source is gone (Completed, or
    /// Decommissioning seen after someone else deleted it), and whenever a person must act
    /// (Failed, Paused), on both. Each tag write is an RDS request from the account's shared
    /// budget and a CloudTrail event: mirroring every phase on both was 18 requests a migration
    /// in the simulator's 500-migration fleet; Verifying and Decommissioning on the cluster as
    /// well as on the source were 1.5 more a migration in the 1,000-migration fleet, for two
    /// phases whose tag the source already shows.
    fn phase_mirror_arns(&self, phase: Phase) -> Vec<String> {
        let mut arns = Vec::new();
        let source_carries_it =
            !matches!(self.obs.source, Observed::Absent) && !self.m.source_deleted();
        if source_carries_it {
            arns.push(self.m.source_arn.clone());
        }
        let on_target = match phase {
            Phase::Failed | Phase::Paused => true,
            Phase::Verifying | Phase::Decommissioning | Phase::Completed => !source_carries_it,
            _ => false,
        };
        if on_target && let Some(t) = self.obs.target.present() {
            arns.push(t.arn.clone());
        }
        arns
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
        let lost_with_its_agent = self.obs.taken_over && key != ActionKey::RebootSource;
        if let Some(until) = self.m.requested.get(&key)
            && self.now < *until
            && !lost_with_its_agent
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

    /// The next look comes no earlier than `at`, unless a look is due sooner for the write
    /// budget (its deadline, `write_budget_spent`): for a wait whose end is known, on which a
    /// look every poll would learn nothing, or one that an event the agent receives ends
    /// (`Policy::event_poll`).
    fn no_look_before(&mut self, at: Timestamp) {
        if at <= self.now {
            return;
        }
        let mut wait = at.duration_since(self.now);
        // The write budget runs in Quiescing and Draining only (`write_budget_spent`).
        if matches!(self.m.phase, Phase::Quiescing | Phase::Draining)
            && let Some(q) = self.m.progress.quarantined_at
        {
            wait = wait.min(self.policy.write_unavailability_budget - self.since(q));
        }
        let poll = self.policy.poll_interval(self.m.phase);
        self.wake = Some(self.wake.unwrap_or(poll).max(wait).max(MIN_WAKE));
    }

    fn wake_within(&mut self, after: SignedDuration) {
        let after = after.max(MIN_WAKE);
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
        // The route back is a new route: a change of the cutover's still propagating is not
        // its progress, and the cutover's request does not hold it back.
        self.m.progress.route_change = None;
        self.m.requested.remove(&ActionKey::RouteTraffic);
        self.enter(Phase::RollingBack, &detail);
    }

    // ----- what applies in every phase -------------------------------------------------------

    fn terminal(&mut self) {
        if let Some(renamed) = self.obs.source_renamed_to.clone() {
            // Its trigger is reset (and, after a rollback, its release re-checked) once it has
            // its name back; until then a look every quarter of an hour (two describes each),
            // not every `slow_poll`: nothing here is urgent, and the record is kept looking so
            // that a resync does not take the renamed instance's `start` for a new attempt.
            self.tell_renamed(&renamed);
            self.wake = Some(RENAMED_TERMINAL_LOOK);
            return;
        }
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
        if let Some(renamed) = self.obs.source_renamed_to.clone() {
            // Renamed, not deleted: nothing is done to it under a name the record does not
            // know (the guards of the irreversible actions compare names), and the migration
            // holds, its source as it is (fenced or not), until a person renames it back. The
            // write budget is not judged meanwhile: a rollback could give the groups back, but
            // no client reaches the source under its new name (its endpoint changed with it),
            // and the look after the name is back rolls back at once if the budget is spent.
            // The heartbeat goes on: the agent is alive.
            self.tell_renamed(&renamed);
            self.heartbeat_if_due();
            self.wake = Some(self.policy.slow_poll);
            return true;
        }
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

        // The cutover's write-unavailability budget (its rule is in cutover.rs).
        if self.write_budget_spent() {
            return true;
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

    /// The cluster is ours: it replicates from our source, or (after promotion) carries our tag.
    fn owned(&self, t: &TargetCluster) -> bool {
        t.replication_source.as_deref() == Some(self.m.source_arn.as_str())
            || t.tags.get(&tags::key(&self.policy.tag_prefix, "migration"))
                == Some(&self.m.id.to_string())
    }

    fn route_to(&self, endpoint: &super::observation::Endpoint) -> RouteRequest {
        RouteRequest {
            migration: self.m.id.to_string(),
            source: self.m.source_identifier.clone(),
            endpoint: endpoint.address.clone(),
            port: endpoint.port,
            phase: self.m.phase,
            router: self.router(),
            cluster: self.m.names.cluster.clone(),
            back_to_source: self.m.phase == Phase::RollingBack,
        }
    }

    /// The router the plan chose (records planned before routers: the webhook).
    fn router(&self) -> super::router::RouterChoice {
        self.plan().map(|p| p.router.clone()).unwrap_or_default()
    }
}

/// What `m`'s phase reads, from the file that holds the phase's rules.
pub(crate) fn phase_needs(m: &Migration, now: Timestamp, policy: &Policy, n: &mut Needs) {
    match m.phase {
        Phase::Requested
        | Phase::Preflight
        | Phase::Preparing
        | Phase::CreatingReplica
        | Phase::Replicating
        | Phase::AwaitingCutover
        | Phase::Paused => preparation::needs(m, now, n),
        Phase::Quiescing | Phase::Draining | Phase::Promoting => cutover::needs(m, now, policy, n),
        Phase::Routing => {
            cutover::needs(m, now, policy, n);
            route::needs(m, n);
        }
        Phase::Verifying | Phase::Decommissioning => soak::needs(m, now, policy, n),
        Phase::RollingBack => {
            rollback::needs(m, now, policy, n);
            route::needs(m, n);
        }
        Phase::Failed | Phase::Completed | Phase::RolledBack | Phase::Aborted => {}
    }
}

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

/// The first event of `kind` at or after a reboot request: only a restart ("DB instance
/// restarted") after our request ends the sessions that were open when we asked, and a
/// shutdown ("DB instance shutdown") after it shows that RDS took the request up.
fn first_since(
    events: &[InstanceEvent],
    kind: InstanceEventKind,
    requested: Option<Timestamp>,
) -> Option<Timestamp> {
    let requested = requested?;
    events
        .iter()
        .filter(|e| e.kind == kind && e.at >= requested)
        .map(|e| e.at)
        .min()
}

/// How long a rolled-back source is watched for a late quarantine. 15 min: far longer than RDS
/// takes to apply and show a security group change.
const RELEASE_WATCH: SignedDuration = SignedDuration::from_mins(15);

/// How often a finished migration whose source was renamed looks whether it has its name back
/// (`Stepper::terminal`).
const RENAMED_TERMINAL_LOOK: SignedDuration = SignedDuration::from_mins(15);

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
