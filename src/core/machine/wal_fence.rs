//! The database-aware cutover: Quiescing ends sessions instead of rebooting, and Draining's proof
//! is a WAL position instead of CloudWatch's view.
//!
//! The order, each step on what the agent read after the previous one took effect:
//! 1. The quarantine is active (Quiescing): new connections cannot reach the source, except the
//!    agent's own group on the database port (and declared CDC consumers).
//! 2. `EndSourceSessions`: every client session is terminated. Sessions survive a security group
//!    change (connection tracking), which is why the metric path reboots.
//! 3. No client session for `sessions_quiet_for`: then `WriteFence`, a durable barrier commit;
//!    its WAL position is at or after every write any client had acknowledged.
//! 4. Read after the fence was heard: still no client session (one that got in through a hole
//!    could have written past the fence: the fence is void, back to 2), and the Aurora writer's
//!    `pg_last_wal_replay_lsn()` at or past the fence. With the fence of the groups (`fence.rs`)
//!    and, with CDC, the consumers' drained slots: proven.
//!
//! Fallback to the reboot and the metric proof (`cutover.rs`), recorded once per attempt in
//! `Progress::database_fallback` and told to people: sessions that do not end within
//! `sessions_stuck_after`, the database unreachable for `database_unreachable_after`, an action
//! refused for good (a missing privilege).
//!
//! A client session that starts after the agent ended the sessions, with the quarantine active,
//! proves a hole in it (another group on the instance, a service sharing the agent's group):
//! the attempt rolls back at once, losslessly, naming the client ([`Stepper::quarantine_breached`]).
//! No reading can prove such a client stays out until the promotion: it can get in between the
//! last session read and the request, and what it writes then never reaches Aurora (the
//! simulator's client behind a hole did, on one seed in forty, when such sessions were only
//! ended again and the write budget decided). A reboot would not keep it out either.

use super::*;
use crate::core::action::{ActionOutput, ActionResult};
use crate::core::database::{ClientSession, DbTarget};

impl Stepper<'_> {
    /// This attempt's cutover runs on database access (planned, and not fallen back from).
    pub(super) fn database_path(&self) -> bool {
        self.m.database_path()
    }

    /// The source, as the agent connects to it.
    pub(super) fn source_db(&self) -> Option<DbTarget> {
        source_db(&self.m, self.source())
    }

    /// Gives up the database-aware path for this attempt: the reboot and the metric proof take
    /// over, from a clean slate.
    pub(super) fn fall_back_to_reboot(&mut self, why: String) {
        if self.m.progress.database_fallback.is_some() {
            return;
        }
        let p = &mut self.m.progress;
        p.database_fallback = Some(why.clone());
        p.forget_the_catch_up_proof();
        p.database_unreachable_since = None;
        self.alert_once(
            "database-fallback",
            Severity::Warning,
            "the cutover falls back to a reboot",
            &format!(
                "{why}; the agent reboots the source and proves catch-up from CloudWatch instead (slower, just as safe)"
            ),
        );
    }

    /// Before the cutover, on the database path: the agent must reach the Aurora writer too
    /// (preflight could only try the source; the cluster did not exist yet). Records the first
    /// answer; until then every look tries again.
    pub(super) fn note_aurora_route(&mut self) {
        if !self.database_path() || self.m.progress.target_reached_at.is_some() {
            return;
        }
        if let Some(Ok(Some(_))) = &self.obs.database.target_replay {
            self.m.progress.target_reached_at = Some(self.now);
        }
    }

    /// At the start of the cutover: without an answer from the Aurora writer, the proof by WAL
    /// position could not be read, so this attempt takes the metric path from the start rather
    /// than find out with writes stopped.
    pub(super) fn aurora_route_or_fall_back(&mut self) {
        if !self.database_path() || self.m.progress.target_reached_at.is_some() {
            return;
        }
        let why = match &self.obs.database.target_replay {
            Some(Err(e)) => e.clone(),
            Some(Ok(None)) => "the Aurora writer is not replicating".to_string(),
            _ => "no answer yet".to_string(),
        };
        self.fall_back_to_reboot(format!(
            "the agent never reached the Aurora writer by SQL before the cutover ({why})"
        ));
    }

    /// Database-aware Quiescing, once the quarantine is active and the source available.
    pub(super) fn end_sessions_and_drain(&mut self, source: &SourceInstance) {
        let Some(on) = self.source_db() else {
            return;
        };
        if self.request(Action::EndSourceSessions {
            instance: source.identifier.clone(),
            on,
        }) {
            self.m.progress.sessions_end_requested_at = Some(self.now);
            self.enter(Phase::Draining, "");
        }
    }

    /// Takes this step's SQL readings into the record and asks for what comes next (end the
    /// sessions again, write the fence). Falls back to the reboot where the path cannot hold.
    pub(super) fn database_draining(&mut self) {
        let readings = self.obs.database.clone();
        let Some(read_at) = readings.read_at else {
            return; // stepped with results against an earlier look: nothing new was read
        };
        let reachable = matches!(readings.source_sessions, Some(Ok(_)))
            && !matches!(readings.target_replay, Some(Err(_)));
        if reachable {
            self.m.progress.database_unreachable_since = None;
        } else {
            let why = match (&readings.source_sessions, &readings.target_replay) {
                (Some(Err(e)), _) | (_, Some(Err(e))) => e.clone(),
                _ => "no reading".to_string(),
            };
            let since = *self
                .m
                .progress
                .database_unreachable_since
                .get_or_insert(self.now);
            if self.since(since) > self.policy.database_unreachable_after {
                self.fall_back_to_reboot(format!(
                    "the agent could not read the databases for {}: {why}",
                    human(self.since(since))
                ));
            }
            return;
        }
        if let Some(Ok(sessions)) = &readings.source_sessions {
            if sessions.is_empty() {
                self.m.progress.sessions_clear_since.get_or_insert(read_at);
            } else {
                self.sessions_remain(sessions);
                return;
            }
        }
        let p = &self.m.progress;
        let quiet = p
            .sessions_clear_since
            .is_some_and(|t| self.since(t) >= self.policy.sessions_quiet_for);
        match (p.fence_lsn, p.fence_written_at) {
            (None, _) if quiet => {
                if let Some(on) = self.source_db()
                    && let Some(source) = self.source().map(|s| s.identifier.clone())
                {
                    self.request(Action::WriteFence {
                        instance: source,
                        on,
                    });
                }
            }
            (None, _) => {
                let waited = p
                    .sessions_clear_since
                    .map_or(SignedDuration::ZERO, |t| self.since(t));
                self.wake_within(self.policy.sessions_quiet_for - waited);
            }
            (Some(fence), Some(written)) if read_at > written => {
                if let Some(Ok(Some(replayed))) = readings.target_replay
                    && replayed >= fence
                {
                    self.m.progress.fence_replayed_lsn = Some(replayed);
                }
            }
            _ => {}
        }
        if self.m.progress.fence_written_at.is_some() {
            // The fence is written: the replica usually has it within a second, and every
            // poll from here is time clients wait (the quiet period before the fence is what
            // keeps a reconnecting client from slipping past the last session read).
            self.wake_within(self.policy.promotion_poll);
        }
        self.wake_within(self.policy.database_poll);
    }

    /// Client sessions are on the fenced source: end them (again); a fence written before they
    /// appeared no longer bounds what was written. Sessions that outlive their termination are
    /// stuck: fall back to the reboot.
    fn sessions_remain(&mut self, sessions: &[ClientSession]) {
        let p = &mut self.m.progress;
        p.sessions_clear_since = None;
        let voided = p.fence_lsn.take();
        p.fence_written_at = None;
        p.fence_replayed_lsn = None;
        let asked = p.sessions_end_requested_at;
        // A session that started before our last request to end them, and is still there long
        // after: terminating it does not work.
        let stuck: Vec<String> = sessions
            .iter()
            .filter(|s| {
                asked.is_some_and(|a| {
                    s.backend_start.is_some_and(|b| b < a)
                        && self.since(a) > self.policy.sessions_stuck_after
                })
            })
            .map(ToString::to_string)
            .collect();
        if !stuck.is_empty() {
            self.fall_back_to_reboot(format!(
                "client sessions did not end when terminated: {}",
                stuck.join(", ")
            ));
            return;
        }
        let arrived: Vec<String> = sessions
            .iter()
            .filter(|s| asked.is_some_and(|a| s.backend_start.is_none_or(|b| b >= a)))
            .map(ToString::to_string)
            .collect();
        if !arrived.is_empty() {
            self.quarantine_breached(&arrived, voided.is_some());
            return;
        }
        if let (Some(on), Some(source)) = (
            self.source_db(),
            self.source().map(|s| s.identifier.clone()),
        ) && self.request(Action::EndSourceSessions {
            instance: source,
            on,
        }) {
            // The first request stays the reference: sessions older than it that outlive
            // `sessions_stuck_after` are stuck; younger ones came in past the quarantine.
            self.m
                .progress
                .sessions_end_requested_at
                .get_or_insert(self.now);
        }
        self.wake_within(self.policy.database_poll);
    }

    /// Client sessions started after the agent ended the sessions, with the quarantine active:
    /// something reaches the source past it. This attempt cannot promote without risking what
    /// such a client writes after the last read (module doc): it rolls back now, losslessly
    /// (nothing was promoted), and people are told who got in.
    pub(super) fn quarantine_breached(&mut self, arrived: &[String], after_fence: bool) {
        self.alert_once(
            "client-reconnected",
            Severity::Error,
            "a client got past the quarantine",
            &format!(
                "{}{}: something reaches the source past the quarantine (another security group on it, a service sharing the agent's group); the migration rolls back without loss",
                arrived.join(", "),
                if after_fence {
                    " after the fence was written"
                } else {
                    ""
                }
            ),
        );
        self.failure(format!(
            "a client got past the quarantine after its session was ended ({}); nothing was promoted, so the migration rolls back without loss. Find how it reaches the source before the next attempt",
            arrived.join(", ")
        ));
    }

    /// What the database-aware proof still lacks (empty: proven). Reads only.
    pub(super) fn database_proof_missing(&self) -> Vec<String> {
        let mut missing = Vec::new();
        let (Some(q), Some(source)) = (self.quarantine_id(), self.source()) else {
            return vec!["the source or its quarantine group was not observed".to_string()];
        };
        // A look that reads the catch-up only has the source from the fleet snapshot: the
        // fence is judged by Promoting's first look (`cutover::reads_catch_up_only`).
        if !super::cutover::reads_catch_up_only(&self.m, self.now, self.policy) {
            missing.extend(self.fence_breaks(source, &q));
            if source.status != "available" {
                missing.push(format!("the source is `{}`", source.status));
            }
        }
        let p = &self.m.progress;
        let r = &self.obs.database;
        match (p.fence_lsn, p.fence_written_at, p.fence_replayed_lsn) {
            (None, ..) => {
                missing.push("no fence written with every client session ended yet".into())
            }
            (Some(fence), Some(written), replayed) => {
                let fresh = r.read_at.is_some_and(|t| t > written);
                if !fresh {
                    missing.push("nothing read since the fence was written".into());
                } else if !matches!(&r.source_sessions, Some(Ok(s)) if s.is_empty()) {
                    missing.push("a client session is on the source after the fence".into());
                }
                if replayed.is_none_or(|l| l < fence) {
                    missing.push(format!("Aurora has not replayed the fence {fence} yet"));
                }
            }
            (Some(_), None, _) => missing.push("the fence has no time".into()),
        }
        let consumers = self.plan().map_or(0, |p| p.cdc_consumers.len());
        if consumers > 0 && !self.tags.cdc_drained {
            missing.push(format!(
                "waiting for the CDC consumers to drain their slots and tag {}:cdc-drained=true",
                self.policy.tag_prefix
            ));
        }
        missing
    }

    /// Right before promotion on the database path: the source still shows no client session
    /// (read in this step, after the proof).
    pub(super) fn no_session_since_fence(&self) -> Result<(), String> {
        if !self.database_path() {
            return Ok(());
        }
        match &self.obs.database.source_sessions {
            Some(Ok(s)) if s.is_empty() => Ok(()),
            Some(Ok(s)) => Err(format!(
                "client sessions reached the source after the fence: {}",
                s.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
            Some(Err(e)) => Err(format!("the source's sessions could not be read: {e}")),
            None => Err("the source's sessions were not read".to_string()),
        }
    }

    /// Results of the database actions: the fence's position is recorded (and looked at
    /// again at once: the proof needs a reading taken after it); a success lets the action be
    /// asked again at once; a refusal for good leaves the database path.
    pub(super) fn take_database_result(&mut self, result: &ActionResult) -> bool {
        if !matches!(
            result.key,
            ActionKey::EndSourceSessions | ActionKey::WriteFence | ActionKey::EndTargetSessions
        ) {
            return false;
        }
        match &result.outcome {
            Ok(()) => {
                self.m.requested.remove(&result.key);
                if let Some(ActionOutput::Fence(lsn)) = result.output
                    && self.m.phase == Phase::Draining
                    && self.database_path()
                {
                    self.m.progress.fence_lsn = Some(lsn);
                    self.m.progress.fence_written_at = Some(self.now);
                    self.m.progress.fence_replayed_lsn = None;
                }
                self.look_again = true;
            }
            Err(err)
                if err.kind == ErrorKind::Fatal && result.key == ActionKey::EndTargetSessions =>
            {
                self.target_fence_falls_back(format!(
                    "{} was refused: {}",
                    result.key, err.message
                ));
            }
            Err(err) if err.kind == ErrorKind::Fatal && self.m.phase.is_cutover() => {
                self.fall_back_to_reboot(format!("{} was refused: {}", result.key, err.message));
            }
            Err(err) => {
                // Asked again after the cutover's backoff; the unreachable timer decides.
                self.m
                    .requested
                    .insert(result.key, self.now + self.backoff(err.kind));
            }
        }
        true
    }
}

/// The source's endpoint with the planned access.
pub(super) fn source_db(m: &Migration, source: Option<&SourceInstance>) -> Option<DbTarget> {
    let access = m.plan.as_ref()?.database.clone()?;
    let e = source?.endpoint.as_ref()?;
    Some(DbTarget {
        host: e.address.clone(),
        port: e.port,
        access,
    })
}
