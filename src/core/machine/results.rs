//! Action results: the one rule for which outcomes of the shell's actions the phase machine
//! hears (`feeds_back`, used by the agent's driver and by every test world), and how the
//! machine takes them (`take_action_results`): a failure is asked again after a backoff or ends
//! the phase, a success that no describe can show (a smoke test, a published notification, the
//! reset trigger) is recorded; a route's answer is read by the phase that asked (`route.rs`).

use super::*;

/// Outcomes the phase machine wants to hear about: every failure of a mutating action, and the
/// successes that no describe call can show.
pub fn feeds_back(key: ActionKey, ok: bool) -> bool {
    if ok {
        // A published notification leaves the record's outbox only when the machine hears it.
        matches!(
            key,
            ActionKey::RouteTraffic
                | ActionKey::HoldClients
                | ActionKey::ReleaseClients
                | ActionKey::RunSmokeTest
                | ActionKey::SetTriggerTag
                | ActionKey::Notify
                | ActionKey::EndSourceSessions
                | ActionKey::EndTargetSessions
                | ActionKey::WriteFence
        )
    } else {
        // A failed notification stays in the outbox and is offered again on the next step.
        !matches!(
            key,
            ActionKey::Notify | ActionKey::PutHeartbeat | ActionKey::MirrorPhaseTag
        )
    }
}

impl Stepper<'_> {
    pub(super) fn take_action_results(&mut self) {
        let results = self.obs.action_results.clone();
        for result in &results {
            if self.take_database_result(result) {
                continue;
            }
            let Err(err) = &result.outcome else {
                match result.key {
                    // A route's answer (in effect, or propagating) is the phase's to read
                    // (`route.rs`): a request accepted is not yet traffic moved.
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
            if result.key.done_despite(err.kind) {
                continue; // already gone is what we wanted
            }
            if result.key == ActionKey::DeleteSource && self.final_snapshot_name_taken(err) {
                // Waits for a person: asked again every few minutes, never given up on.
                self.m
                    .requested
                    .insert(result.key, self.now + soak::NAME_TAKEN_ASK_AGAIN);
                continue;
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
            if result.key == ActionKey::RestoreSourceGroups {
                // Not done (or not known to be): a look showing the original groups does not
                // release the source until the restore is asked for again (`restore_source`).
                self.m.progress.source_restore_requested_at = None;
            }
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
}
