//! Both rollbacks. Before cutover: restore the source's groups, delete the replica, lossless.
//! After cutover (approved): fence Aurora the way the source was fenced (groups, writer reboot,
//! no session after the restart), count what it took, restore the source, route back.

use super::*;

/// What RollingBack reads.
pub(super) fn needs(m: &Migration, now: Timestamp, policy: &Policy, n: &mut Needs) {
    use MetricKey::*;
    let p = &m.progress;
    n.target = true;
    n.quarantine_group = true;
    if m.rollback.as_ref().is_some_and(|r| r.after_cutover) {
        // From the period that holds the route request: Aurora may take writes from then on,
        // and CloudWatch's periods start on the minute, before it.
        let since = p.route_requested_at.or(p.routed_at).unwrap_or(now) - policy.metric_period;
        n.metrics = vec![(TargetWriteIops, since)];
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

    pub(super) fn rolling_back_before_cutover(&mut self, rollback: &Rollback) {
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
    pub(super) fn rolling_back_after_cutover(&mut self) {
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
    pub(super) fn target_fence_restart(&mut self, t: &TargetCluster) -> Option<Timestamp> {
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
