//! Both rollbacks. Before cutover (before the route was requested, promoted or not): restore the
//! source's groups, delete the replica (it took no write), lossless.
//! After cutover (approved): fence Aurora the way the source was fenced, then count what it
//! took, restore the source, route back. The fence is exactly the quarantine group, then no
//! client session left: with database access its sessions are ended by SQL and read until none
//! remains (`EndTargetSessions`); without it, or when that fails (sessions that outlive their
//! termination by `sessions_stuck_after`, the writer unreadable for
//! `database_unreachable_after`, the action refused for good), its writer is rebooted and
//! DatabaseConnections must show none after the restart.

use super::*;
use crate::core::database::DbTarget;

/// What RollingBack reads.
pub(super) fn needs(m: &Migration, now: Timestamp, policy: &Policy, n: &mut Needs) {
    use MetricKey::*;
    let p = &m.progress;
    // Before the cutover the replica's deletion is asked for on the first look, beside the
    // source's groups; while the source waits for them (looks every `fast_poll`, in the
    // cutover lane, which reads no snapshot older than a few seconds) a replica whose deletion
    // is in flight is not described: nothing waits on it until the source takes writes again
    // (then it is looked at every `slow_poll`), and a request lost or refused is asked again
    // once its in-flight period has passed. Each of those looks described it directly: 7
    // DescribeDBClusters a rollback in the simulator's 1,000-migration fleet.
    let deletion_in_flight = m
        .requested
        .get(&ActionKey::DeleteTarget)
        .is_some_and(|until| now < *until);
    let after_cutover = m.rollback.as_ref().is_some_and(|r| r.after_cutover);
    n.target = after_cutover || !(m.source_quarantined() && deletion_in_flight);
    // Once its deletion was asked for, the replica leaves the fleet snapshot when RDS has
    // deleted it (`deleting` until then): a snapshot taken after the request (the adapter's own
    // request marks the name) that does not hold it says so, as a direct describe would. Each
    // look that found it gone there described it directly: 0.6 DescribeDBClusters a completed
    // migration in the simulator's 1,000-migration fleet (seed 1), 2.8 a rollback. After the
    // cutover Aurora is fenced and kept, never deleted.
    n.target_absence_from_snapshot =
        !after_cutover && m.requested.contains_key(&ActionKey::DeleteTarget);
    n.quarantine_group = true;
    if after_cutover {
        // From the period that holds the route request: Aurora may take writes from then on,
        // and CloudWatch's periods start on the minute, before it.
        let since = p.route_requested_at.or(p.routed_at).unwrap_or(now) - policy.metric_period;
        n.metrics = vec![(TargetWriteIops, since)];
        n.target_sessions = target_sessions_path(m)
            && p.target_sessions_end_requested_at.is_some()
            && p.target_sessions_ended_at.is_none();
        if let Some(r) = p.target_reboot_requested_at {
            // A minute early: clocks differ between us and RDS.
            let since = r - SignedDuration::from_mins(1);
            n.writer_events_since = Some(since);
            n.metrics.push((TargetConnections, since));
        }
    }
}

impl Stepper<'_> {
    pub(super) fn rolling_back(&mut self) {
        self.assume_phase(Phase::RollingBack);
        // What the code below assumes (debug builds, as `assume_phase`).
        debug_assert!(self.m.rollback.is_some(), "a rollback has a recorded cause");
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
    pub(super) fn restore_source(&mut self) -> bool {
        if !self.m.source_quarantined() {
            return true;
        }
        let Some(source) = self.source().cloned() else {
            return false;
        };
        let original = self.m.progress.original_groups.clone().unwrap_or_default();
        // The original groups release the source only once the restore was asked for (and has
        // not failed since): a look that lags, or reads a snapshot from before the quarantine,
        // shows them too while the source is still fenced. Asking for groups it already has is
        // harmless, so a source seen with them before any request is asked once, and the next
        // look confirms.
        if source.groups_exactly_active(&original)
            && self.m.progress.source_restore_requested_at.is_some()
        {
            self.m.progress.source_released_at = Some(self.now);
            self.request(Action::DeleteHeartbeatAlarm {
                alarm: self.m.names.heartbeat_alarm.clone(),
            });
            return true;
        }
        if self.request(Action::RestoreSourceGroups {
            instance: source.identifier.clone(),
            group_ids: original,
        }) {
            self.m.progress.source_restore_requested_at = Some(self.now);
        }
        false
    }

    pub(super) fn rolling_back_before_cutover(&mut self, rollback: &Rollback) {
        // Held clients go back to the source once it takes writes again.
        let released = self.restore_source() && self.clients_released();
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
        if released && !target_gone {
            // The source takes writes again: nobody waits on what is left (RDS deleting the
            // replica takes minutes), so it is looked at every `slow_poll`, not every
            // `fast_poll` (RollingBack was 7 RDS requests a migration in the simulator's
            // 1,000-migration fleet, most of them looks at a replica being deleted).
            // Whatever else this step waits on (the fenced source's heartbeat, an action's
            // retry) waits as long: none of it is urgent once writes flow.
            self.wake = Some(self.policy.slow_poll);
        }
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
    pub(super) fn rolling_back_after_cutover(&mut self) {
        let (Some(t), Some(q)) = (self.obs.target.present().cloned(), self.quarantine_id()) else {
            return;
        };
        // PgBouncer's clients held first, so that fencing Aurora and ending its sessions
        // meets no transaction (`hold.rs`).
        if !self.clients_held_on_target(&t) {
            return;
        }
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
        let (restarted, how) = if target_sessions_path(&self.m) {
            let Some(ended) = self.end_target_sessions(&t) else {
                return;
            };
            (
                ended,
                "its client sessions were ended behind the quarantine",
            )
        } else {
            let Some(restarted) = self.target_fence_restart(&t) else {
                return;
            };
            // No session after the restart: the quarantine keeps new ones out, so nobody can
            // write. This, not WriteIOPS, is the gate: Aurora's storage reports writes of its
            // own on an idle writer, so WriteIOPS serves to count what clients wrote, not to
            // prove they stopped.
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
            (restarted, "its writer restarted behind the quarantine")
        };
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
            "{bound} {writes:.0} write operations were made on the Aurora cluster {} between {from} (cutover) and {restarted} ({how}){gap}; they stay on Aurora and are not on the source: reconcile them by hand. The cluster is kept, fenced off, for that",
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
        if self.m.progress.routed_back_at.is_none() && self.route_in_effect() {
            self.m.progress.routed_back_at = Some(self.now);
        }
        if self.m.progress.routed_back_at.is_some() {
            self.enter(
                Phase::RolledBack,
                &format!(
                    "traffic is routed back to the source {}:{} (router {}); {stays}",
                    endpoint.address,
                    endpoint.port,
                    self.router()
                ),
            );
        } else if self.m.progress.route_change.is_none() {
            let route = self.route_to(&endpoint);
            self.request(Action::RouteTraffic(route));
        }
    }

    /// Ends Aurora's client sessions by SQL once it has exactly the quarantine group, and
    /// returns when a reading taken after the request showed none left. Falls back to the
    /// reboot (`Progress::target_fence_fallback`) where that does not work.
    fn end_target_sessions(&mut self, t: &TargetCluster) -> Option<Timestamp> {
        if let Some(at) = self.m.progress.target_sessions_ended_at {
            return Some(at);
        }
        let on = match (
            self.plan().and_then(|p| p.database.clone()),
            &t.writer_endpoint,
        ) {
            (Some(access), Some(e)) => DbTarget {
                host: e.address.clone(),
                port: e.port,
                access,
            },
            _ => {
                self.target_fence_falls_back("the Aurora cluster has no writer endpoint".into());
                return None;
            }
        };
        let writer = self.m.names.writer.clone();
        let Some(asked) = self.m.progress.target_sessions_end_requested_at else {
            if self.request(Action::EndTargetSessions { writer, on }) {
                self.m.progress.target_sessions_end_requested_at = Some(self.now);
            }
            return None;
        };
        self.wake_within(self.policy.database_poll);
        let r = &self.obs.database;
        let Some(read_at) = r.read_at.filter(|at| *at > asked) else {
            return None; // nothing read since the request
        };
        match r.target_sessions.clone() {
            Some(Ok(sessions)) if sessions.is_empty() => {
                self.m.progress.target_sessions_ended_at = Some(read_at);
                Some(read_at)
            }
            Some(Ok(sessions)) => {
                // Older than the request and still there long after: terminating does not work.
                let stuck: Vec<String> = sessions
                    .iter()
                    .filter(|s| {
                        s.backend_start.is_none_or(|b| b < asked)
                            && self.since(asked) > self.policy.sessions_stuck_after
                    })
                    .map(ToString::to_string)
                    .collect();
                if stuck.is_empty() {
                    // Slow to end, or new ones through the quarantine: end them (again).
                    self.request(Action::EndTargetSessions { writer, on });
                } else {
                    self.target_fence_falls_back(format!(
                        "client sessions on Aurora did not end when terminated: {}",
                        stuck.join(", ")
                    ));
                }
                None
            }
            Some(Err(why)) if self.since(asked) > self.policy.database_unreachable_after => {
                self.target_fence_falls_back(format!(
                    "the agent could not read Aurora's sessions for {}: {why}",
                    human(self.since(asked))
                ));
                None
            }
            Some(Err(_)) | None => None,
        }
    }

    /// Aurora's fence falls back to the writer's reboot, once, and people are told why.
    pub(super) fn target_fence_falls_back(&mut self, why: String) {
        if self.m.progress.target_fence_fallback.is_some() {
            return;
        }
        self.m.progress.target_fence_fallback = Some(why.clone());
        self.alert_once(
            "target-fence-fallback",
            Severity::Warning,
            "Aurora's fence falls back to a reboot of its writer",
            &format!("{why}; the agent reboots Aurora's writer instead (slower, just as safe)"),
        );
    }

    /// Reboots Aurora's writer once it has exactly the quarantine group, and returns when it
    /// restarted (a "DB instance restarted" event of the writer after the request), asking
    /// again when a reboot produced no restart for far longer than one takes.
    pub(super) fn target_fence_restart(&mut self, t: &TargetCluster) -> Option<Timestamp> {
        if let Some(at) = self.m.progress.target_restarted_at {
            return Some(at);
        }
        let requested = self.m.progress.target_reboot_requested_at;
        if let Some(at) = first_since(
            &self.obs.writer_events,
            InstanceEventKind::Restarted,
            requested,
        ) {
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

/// Aurora's fence in a rollback after cutover ends its sessions by SQL: database access is
/// planned, the cutover did not fall back from it, and neither did this fence.
fn target_sessions_path(m: &Migration) -> bool {
    m.rollback.as_ref().is_some_and(|r| r.after_cutover)
        && m.database_path()
        && m.progress.target_fence_fallback.is_none()
        && m.progress.target_reboot_requested_at.is_none()
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
