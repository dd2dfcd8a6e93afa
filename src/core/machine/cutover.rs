//! The cutover: Quiescing (the quarantine, the reboot), Draining (the catch-up proof), Promoting
//! and Routing. The fence the proof established (`fence.rs`) is re-checked right before
//! promotion and before routing: a drift before promotion sends the migration back to Draining,
//! a drift after it holds routing with an alert.

use super::*;

/// What Quiescing … Routing read.
pub(super) fn needs(m: &Migration, now: Timestamp, policy: &Policy, n: &mut Needs) {
    use MetricKey::*;
    let p = &m.progress;
    match m.phase {
        Phase::Quiescing => {
            n.quarantine_group = true;
            // Once asked for, the group change is waited on with writes down, and RDS sends no
            // event when it is applied: every look reads it from RDS, not from a snapshot up
            // to the describe cache's TTL old.
            n.fresh = p.quarantined_at.is_some();
            // Those looks come on a grid (`Stepper::poll_on_the_grid`) and gather: one describe
            // serves every cutover waiting for its group change. One by one they were the
            // largest item of the 1,000-migration fleet's RDS calls (DescribeDBInstances in
            // Quiescing, 7.5 a migration on seed 2), with 2.2 cutovers in Quiescing on average
            // whenever one was.
            n.gathers_quickly = p.quarantined_at.is_some() && p.quarantine_active_at.is_none();
        }
        Phase::Draining if m.database_path() => {
            n.target = true;
            // The writer's endpoint, for its replay position by SQL: it never changes, and the
            // fleet snapshot has it. A direct describe every `database_poll` was 3.6 requests a
            // migration on the database path in the simulator's 300-migration fleet.
            n.target_from_snapshot = true;
            // The source too, for its endpoint and the guards' tags: the proof here is by SQL
            // and the fence is judged by Promoting's first look ([`reads_catch_up_only`]). A
            // direct describe every `database_poll`, then every `promotion_poll` while the
            // replica replays the fence, was 5 requests a migration in the 1,000-migration fleet.
            n.source_from_snapshot = reads_catch_up_only(m, now, policy);
            n.quarantine_group = !n.source_from_snapshot;
            n.source_sessions = true;
            n.target_replay = true;
        }
        Phase::Draining => {
            // The metric path's proof reads the source's events and CloudWatch (the replica's
            // lag among them), not the cluster: its describe was 6 RDS requests a migration in
            // the simulator's 500-migration fleet. Promoting describes it before asking.
            // From the restart until CloudWatch shows the catch-up (minutes: the first period
            // after the restart, then CloudWatch's delay), a look reads CloudWatch only: the
            // source comes from the fleet snapshot, for the guards' tags (a person's change to
            // them, an abort, is still described directly: `aws::rds::cache`), and neither it
            // nor the fence is judged on it. The look after the catch-up describes both as RDS
            // has them now and proves the rest ([`reads_catch_up_only`]). Those looks
            // were a describe of the source every `fast_poll`: a third of the metric path's
            // Draining calls in the simulator's fleets.
            // So do the looks while RDS restarts the source (1–3 minutes), which read its
            // events for the restart.
            n.source_from_snapshot = reads_catch_up_only(m, now, policy);
            n.quarantine_group = !n.source_from_snapshot;
            // Until the restart is known: the looks of the reboot's wait (on a grid of
            // `metric_period`s; of `Policy::event_poll`s for one that describes the source from
            // RDS) gather. The restart's time is the event's, so a look a moment later loses
            // none of the outage.
            n.gathers = p.restarted_at.is_none() && p.reboot_requested_at.is_some();
            // Events from a little before the request: clocks differ between us and RDS.
            let since = p.reboot_requested_at.unwrap_or(now) - SignedDuration::from_mins(1);
            // The events say when the source restarted; once that is recorded the proof reads
            // only CloudWatch (6.4 DescribeEvents a migration in the 1,000-migration fleet, most
            // after the restart was known).
            // Once RDS showed the shutdown, the restart comes after it: the events are read
            // from the shutdown's own time (RDS's clock), not the request's minute before, so
            // the Region's events that one request shares across the fleet's looks stay few.
            let began = p
                .reboot_began_at
                .filter(|b| p.reboot_requested_at.is_some_and(|r| *b >= r));
            n.events_since = p.restarted_at.is_none().then_some(began.unwrap_or(since));
            n.metrics = [SourceSlotLag, SourceConnections, TargetReplicaLag]
                .into_iter()
                .map(|k| (k, since))
                .collect();
        }
        Phase::Promoting | Phase::Routing => {
            n.target = true;
            // No client session may have got in since the fence, up to every promotion request
            // (one refused is asked again): read whenever a request is due.
            let asked = m.requested.get(&ActionKey::PromoteTarget);
            // A writer out of recovery has been promoted, whatever RDS says yet: nothing is due.
            let request_due =
                asked.is_none_or(|until| now >= *until) && p.writer_out_of_recovery_at.is_none();
            // A request asked for whose in-flight period has passed: RDS has most likely taken
            // it up (the database path's looks meanwhile read the cluster from the fleet
            // snapshot, minutes old, which cannot show `promoting` yet). This look asks RDS for
            // the cluster alone; only one that finds it still `available` (the request lost or
            // refused) has the fence and the sessions re-read before asking again
            // (`Stepper::promoting`). A full re-check here was a direct describe of the source
            // (with the group's and the sessions' reads) for a request RDS already had, one a
            // migration on the database path in the 1,000-migration fleet.
            let confirming = m.phase == Phase::Promoting && asked.is_some() && request_due;
            let recheck_due = request_due && !confirming;
            // The fence is re-checked right before every promotion request and before routing
            // (on the database path the route is asked on the look that sees the writer out of
            // recovery), not on every look while AWS promotes: that was one EC2 describe every
            // `promotion_poll` for minutes.
            n.quarantine_group = match m.phase {
                Phase::Promoting => {
                    recheck_due || (m.database_path() && p.writer_out_of_recovery_at.is_some())
                }
                _ => p.route_requested_at.is_none(),
            };
            n.source_sessions = m.phase == Phase::Promoting
                && p.writer_out_of_recovery_at.is_none()
                && recheck_due
                && m.database_path();
            n.consistency = consistency::needs_check(m);
            // Waiting for AWS's promotion on the database path: the writer says by SQL when
            // it has left recovery (no RDS request spent), and then RDS is asked directly
            // whether the promotion is done (its event may come seconds later, and a fleet
            // snapshot up to the describe cache's TTL late).
            let waiting = m.phase == Phase::Promoting
                && p.promote_requested_at.is_some()
                && m.database_path();
            n.target_replay |= waiting && p.writer_out_of_recovery_at.is_none();
            // Until then the look's describes carry only the writer's endpoint and the guards'
            // tags, which a snapshot up to a minute old has too: a direct describe of both every
            // `promotion_poll` was most of the 39 RDS requests a migration spent promoting in the
            // simulator's 500-migration fleet. Not when a request is due (the fence re-check
            // reads the source as RDS has it now).
            n.snapshot_will_do = waiting && p.writer_out_of_recovery_at.is_none() && !request_due;
            // The metric path waits on the cluster's status, described directly every
            // `fast_poll`; the source, fenced and restarted, is read only for the guards' tags,
            // which the snapshot has too (half of the 22 describes a migration made promoting
            // in the 500-migration fleet). Not when a request is due (the fence re-check).
            n.source_from_snapshot = m.phase == Phase::Promoting
                && p.promote_requested_at.is_some()
                && !m.database_path()
                && !request_due;
            // Those looks are the promotion's wait (`Policy::event_poll`): they gather.
            n.gathers = n.source_from_snapshot;
            // The confirming look reads the source from the snapshot too (the cluster as RDS
            // has it now: the look is not planned as one that may read a snapshot), and does
            // not gather: on the database path it also reads the writer's recovery state.
            n.source_from_snapshot |= confirming && p.writer_out_of_recovery_at.is_none();
            n.fresh |= waiting && p.writer_out_of_recovery_at.is_some();
        }
        _ => {}
    }
}

impl Stepper<'_> {
    /// Quiescing and Draining run on the write-unavailability budget, from the first step that
    /// asked for the quarantine: when it runs out without a held proof, roll back (lossless:
    /// nothing was promoted). True when it acted.
    pub(super) fn write_budget_spent(&mut self) -> bool {
        let phase = self.m.phase;
        if matches!(phase, Phase::Quiescing | Phase::Draining)
            && let Some(q) = self.m.progress.quarantined_at
        {
            let budget = self.policy.write_unavailability_budget;
            if self.since(q) > budget {
                // At the boundary a holding proof wins: promoting ends the outage sooner than
                // rolling back does.
                let missing = if phase == Phase::Draining {
                    self.drain_proof_missing()
                } else {
                    vec!["the quarantine never became active".to_string()]
                };
                if !missing.is_empty() {
                    self.failure(format!(
                        "the write-unavailability budget of {} ran out before promotion ({}); rolled back without loss",
                        human(budget),
                        missing.join("; ")
                    ));
                    return true;
                }
            }
            self.wake_within(budget - self.since(q));
        }
        false
    }

    pub(super) fn quiescing(&mut self) {
        self.assume_phase(Phase::Quiescing);
        // What the code below assumes (debug builds, as `assume_phase`).
        debug_assert!(
            self.m.progress.replica_ready_at.is_some(),
            "a cutover starts only from a caught-up replica"
        );
        if self.database_path() {
            // RDS applies the group change in seconds to tens of seconds; on the database path
            // nothing slower follows it, so its end is looked for every `database_poll`.
            self.wake_within(self.policy.database_poll);
        }
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
        // From here on writes may stop: the write budget runs from the first step that asks
        // for the hold or the quarantine or sees it (a request whose answer was lost still
        // took effect).
        self.m.progress.quarantined_at.get_or_insert(self.now);
        // Clients held first (PgBouncer), so that the fence meets no transaction in flight.
        if !self.clients_held(&source) {
            return;
        }
        if !self.quarantine_source(&source, &q) {
            // RDS applies the group change in seconds to tens of seconds and says so by no
            // event: looked for every `database_poll` on the database path (nothing slower
            // follows it), every `fast_poll` on the metric path.
            let poll = if self.database_path() {
                self.policy.database_poll
            } else {
                self.policy.fast_poll
            };
            self.poll_on_the_grid(poll);
            return;
        }
        self.m.progress.quarantine_active_at.get_or_insert(self.now);
        if source.status != "available" {
            return;
        }
        if self.database_path() {
            self.end_sessions_and_drain(&source);
            return;
        }
        if self.request(Action::RebootSource {
            instance: source.identifier.clone(),
        }) {
            self.m.progress.reboot_requested_at = Some(self.now);
            self.m.progress.restarted_at = None;
            self.m.progress.caught_up_in_metrics_at = None;
            self.enter(Phase::Draining, "");
        }
    }

    /// What the Draining proof still lacks (empty: proven), on this attempt's path.
    pub(super) fn drain_proof_missing(&mut self) -> Vec<String> {
        if self.database_path() {
            self.database_proof_missing()
        } else {
            self.metric_proof_missing()
        }
    }

    /// The metric path's proof: a restart after the reboot request, then CloudWatch periods
    /// after it. Records the restart when seen. On a look that reads the catch-up only
    /// ([`reads_catch_up_only`]), what it lacks of CloudWatch's part alone.
    fn metric_proof_missing(&mut self) -> Vec<String> {
        let mut missing = Vec::new();
        let Some(q) = self.quarantine_id() else {
            return vec!["no quarantine group was recorded".to_string()];
        };
        let Some(source) = self.source().cloned() else {
            return vec!["the source was not observed".to_string()];
        };
        let catch_up_only = reads_catch_up_only(&self.m, self.now, self.policy);
        if !catch_up_only {
            missing.extend(self.fence_breaks(&source, &q));
            if source.status != "available" {
                missing.push(format!("the source is `{}`", source.status));
            }
        }
        if let Some(at) = first_since(
            &self.obs.source_events,
            InstanceEventKind::Shutdown,
            self.m.progress.reboot_requested_at,
        ) {
            self.m.progress.reboot_began_at.get_or_insert(at);
        }
        if let Some(at) = first_since(
            &self.obs.source_events,
            InstanceEventKind::Restarted,
            self.m.progress.reboot_requested_at,
        ) {
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
        if consumers > 0.0 && !self.tags.cdc_drained && !catch_up_only {
            missing.push(format!(
                "waiting for the CDC consumers to drain their slots and tag {}:cdc-drained=true",
                self.policy.tag_prefix
            ));
        }
        missing
    }

    pub(super) fn draining(&mut self) {
        self.assume_phase(Phase::Draining);
        // What the code below assumes (debug builds, as `assume_phase`).
        debug_assert!(
            self.m.progress.quarantined_at.is_some(),
            "Draining follows the quarantine request"
        );
        if self.database_path() {
            self.database_draining();
        }
        let catch_up_only = reads_catch_up_only(&self.m, self.now, self.policy);
        if !catch_up_only && matches!(self.obs.quarantine_group, Observed::Unknown) {
            // This look was planned as one that reads the catch-up only (a moment ago the
            // reboot was not yet unconfirmed for `reboot_unconfirmed_after`): the source is
            // the fleet snapshot's and the fence was not read, so nothing is judged on it.
            self.look_again = true;
            return;
        }
        let missing = self.drain_proof_missing();
        if catch_up_only && !self.database_path() {
            // The source on this look is the fleet snapshot's: nothing is judged or repaired
            // on it. Caught up: the next look, at once, reads the source and the fence from
            // RDS and proves the rest.
            if missing.is_empty() {
                self.m.progress.caught_up_in_metrics_at = Some(self.now);
                self.look_again = true;
            } else if let Some(restarted) = self.m.progress.restarted_at {
                self.no_look_before(first_period_start_after(
                    restarted,
                    self.policy.metric_period,
                ));
            } else {
                // RDS is restarting the source and says when it is done with "DB instance
                // restarted", which steps the migration as it arrives: the looks meanwhile
                // read the source's events (one DescribeEvents shared by every migration's
                // look of the same grid time) for an event lost or late. Once a CloudWatch
                // period (`metric_period`) apart, not every `event_poll`: the restart's time
                // is the event's, not the look's, and the proof reads the first period that
                // starts after it, which CloudWatch shows only once that period has ended, so
                // a restart read within a period of it costs the proof nothing. At every
                // `event_poll` these looks' DescribeEvents were the metric path's most
                // frequent RDS call in Draining in the simulator's 1,000-migration fleet.
                self.look_on_the_grid(self.policy.metric_period);
            }
            self.alert_if_draining_slow(&missing);
            return;
        }
        if missing.is_empty() {
            self.m.progress.drain_proven_at = Some(self.now);
            let how = match (
                self.m.progress.fence_lsn,
                self.m.progress.fence_replayed_lsn,
            ) {
                (Some(fence), Some(replayed)) if self.database_path() => format!(
                    "no client session on the source; Aurora replayed {replayed}, past the fence {fence}"
                ),
                _ => String::new(),
            };
            // The promotion is asked for on the next look, after one more read of the sessions
            // (Promoting): asking on this one was tried, and the simulator's client behind a
            // hole, reconnecting up to 1.5 s after its session was ended, then got in after the
            // last read and wrote what Aurora never received (caught by the consistency check,
            // but after a promotion). The look costs about half a second of outage.
            self.enter(Phase::Promoting, &how);
            return;
        }
        if catch_up_only {
            // The database path's source is the fleet snapshot's: nothing is judged or repaired
            // on it (Promoting's first look judges the fence from RDS).
            self.alert_if_draining_slow(&missing);
            return;
        }
        if !self.database_path()
            && (self.m.progress.reboot_requested_at.is_some()
                || self.m.progress.restarted_at.is_some())
            && let Err(why) = self.fence_intact()
        {
            // The fence broke after the reboot was asked for: a session that came in through
            // the original groups stays open once the quarantine is back (a security group
            // change ends no connection), and CloudWatch's last period may predate it. The
            // restart proves nothing any more: the proof starts over, with a new reboot once
            // the quarantine is back. (The database path ends sessions and reads them by SQL.)
            self.start_the_proof_over(format!("the fence broke while draining ({why})"));
            return;
        }
        // Back from Promoting after a drift, or changed under us: put the quarantine back. The
        // reboot below waits for it, or sessions could reconnect through the old groups.
        let fenced = match (self.source().cloned(), self.quarantine_id()) {
            (Some(source), Some(q)) => self.quarantine_source(&source, &q),
            _ => false,
        };
        if fenced
            && self.m.progress.restarted_at.is_none()
            && self.m.progress.reboot_requested_at.is_none()
            && !self.database_path()
            && self.source().is_some_and(|s| s.status == "rebooting")
        {
            // A reboot request whose answer was lost (a timeout: `take_action_results` forgot
            // it) that RDS performed: RDS is restarting the source, as this look describes it
            // now (RDS shows `rebooting` as it accepts a reboot). Waited for from here, not asked
            // for again: RDS would refuse a request now and perform the next one once the source
            // is back, a second reboot (1–3 minutes more of the write budget; the simulator's
            // fleet rolled back cutovers on it).
            // As asked for when this Draining began, not at this look: the restart's proof
            // counts events from the request's time, and a shutdown or restart RDS reported
            // before this look would not count. With the restart's event late in an events
            // answer, the wait then took the source back `available` for a reboot that never
            // started and asked for a second one (the simulator's fleet: 2 min 19 s more, and
            // the write budget ran out); with the look behind the restart itself (a describe
            // still `rebooting` after it), it waited for a restart already reported until the
            // budget rolled the cutover back.
            // Sound only for the Draining the step that asked for the reboot entered, from
            // Quiescing with the quarantine active: every request of it, the lost one too, came
            // at or after that, so no restart counted from there let a session in past the
            // quarantine (the proof's CloudWatch part still reads the source's connections
            // after the restart). A Draining entered again because the fence broke (from
            // Promoting) began with the quarantine not in place, and a reboot this look sees
            // may be someone else's, begun before the quarantine was back: there the request
            // counts from this look, and a restart not reported after it is taken for a
            // reboot that never started (a second one is asked for), as before.
            let entered_fenced = self
                .m
                .history
                .iter()
                .rev()
                .nth(1)
                .is_some_and(|c| c.phase == Phase::Quiescing);
            if entered_fenced {
                let requested = self.m.phase_entered_at.min(self.now);
                self.m.progress.reboot_requested_at = Some(requested);
                // RDS was seen taking it up: the request is not lost, whatever the events say
                // (an events answer may predate the shutdown, and later the restart), so the
                // looks wait for the restart (`awaits_restart`) instead of judging it never
                // started.
                self.m.progress.reboot_began_at = Some(requested);
            } else {
                self.m.progress.reboot_requested_at = Some(self.now);
            }
        }
        if fenced && self.m.progress.restarted_at.is_none() && !self.database_path() {
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
        if fenced
            && !self.database_path()
            && self.m.progress.restarted_at.is_none()
            && self.m.progress.reboot_requested_at.is_some()
            && self.source().is_some_and(|s| s.status == "rebooting")
        {
            // RDS is restarting the source (1–3 minutes) and says when it is done with "DB
            // instance restarted", which steps the migration as it arrives: the looks meanwhile
            // are for an event lost or late (`Policy::event_poll`). They were a describe every
            // `fast_poll`, most of the metric path's Draining calls. Once the source is
            // `available` again the looks come every `fast_poll` until the restart is among
            // its events (DescribeEvents shows it seconds after the EventBridge event).
            self.look_on_the_event_grid();
        }
        if fenced
            && !self.database_path()
            && let Some(restarted) = self.m.progress.restarted_at
        {
            // No look can find the proof before the first CloudWatch period that starts after
            // the restart has begun (the proof reads only periods starting after it): the looks
            // every `fast_poll` until then read the source, the fence and CloudWatch for nothing
            // (Draining was the phase with the most RDS calls after Promoting in the
            // simulator's fleets). Not until that period has *ended*: RDS samples once a
            // minute at an offset of its own and CloudWatch bins the sample by its timestamp,
            // so the period's datapoint may be readable well before its end (moto's is at
            // once), and waiting for the end would add up to a period to the outage. The fence
            // is re-read before the promotion is asked for, so a change to it meanwhile is not
            // missed.
            self.no_look_before(first_period_start_after(
                restarted,
                self.policy.metric_period,
            ));
        }
        self.alert_if_draining_slow(&missing);
    }

    /// The catch-up proof no longer holds (the fence broke, `why`): everything it gathered
    /// is dropped and Draining begins again, from which the quarantine is put back and a new
    /// reboot (or, on the database path, a new fence) proves the catch-up. A Draining begun
    /// this way is not one the quarantine was active at the start of (see the recognition of
    /// a lost-answer reboot in [`Self::draining`]).
    fn start_the_proof_over(&mut self, why: String) {
        self.m.progress.forget_the_catch_up_proof();
        self.m.progress.drain_proven_at = None;
        self.m.progress.fence_broke_at.get_or_insert(self.now);
        self.enter(
            Phase::Draining,
            &format!("{why}; the catch-up proof starts over"),
        );
    }

    /// The next look of a wait that an RDS event ends: on the grid of `event_poll`'s multiples
    /// (since the epoch), at least `fast_poll` from now, so that every migration in such a wait
    /// looks at the same times and their looks share one describe (`Needs::gathers`); on
    /// average `event_poll` apart, as a look every `event_poll` would be.
    fn look_on_the_event_grid(&mut self) {
        self.look_on_the_grid(self.policy.event_poll());
    }

    /// The next look of a wait that no event ends, polled every `period`: the next of
    /// `period`'s multiples (since the epoch), at least [`MIN_WAKE`] from now (a look every
    /// `period` while a look takes less than that), so that every migration in the same wait
    /// looks at the same times and their looks share one describe (`Needs::gathers`). It
    /// replaces the step's poll; the write budget's end still comes first. (The only other
    /// wake-up a Quiescing step sets is an in-flight request's re-ask, seconds or more away: a
    /// re-ask due within the grid's wait is asked at the grid's look.)
    fn poll_on_the_grid(&mut self, period: SignedDuration) {
        let grid = first_period_start_after(self.now + MIN_WAKE, period);
        let mut wait = grid.duration_since(self.now);
        if let Some(q) = self.m.progress.quarantined_at {
            wait = wait.min(self.policy.write_unavailability_budget - self.since(q));
        }
        self.wake = Some(wait.max(MIN_WAKE));
    }

    /// As [`Self::look_on_the_event_grid`], on the grid of `period`'s multiples.
    fn look_on_the_grid(&mut self, period: SignedDuration) {
        let grid = first_period_start_after(self.now + self.policy.fast_poll, period);
        self.no_look_before(grid);
    }

    /// Half the write budget spent without the proof: people are told what it lacks, once.
    fn alert_if_draining_slow(&mut self, missing: &[String]) {
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

    pub(super) fn promoting(&mut self) {
        self.assume_phase(Phase::Promoting);
        if self.database_path() && self.m.progress.promote_requested_at.is_some() {
            // Writes are down until the promotion is seen and routed: on the database path
            // nothing else is slow any more, so AWS's promotion is looked for every
            // `promotion_poll` (the writer's recovery state by SQL, the cluster from the fleet
            // snapshot; the metric path keeps `fast_poll`).
            self.wake_within(self.policy.promotion_poll);
            if self.m.progress.writer_out_of_recovery_at.is_none()
                && matches!(self.obs.database.target_replay, Some(Ok(None)))
            {
                // Out of recovery: the next look reads the cluster from RDS itself, at once.
                self.m.progress.writer_out_of_recovery_at = Some(self.now);
                self.look_again = true;
            }
        }
        // What the code below assumes (debug builds, as `assume_phase`).
        debug_assert!(
            self.m.progress.drain_proven_at.is_some()
                && (self.m.progress.restarted_at.is_some()
                    || self.m.progress.fence_replayed_lsn >= self.m.progress.fence_lsn
                        && self.m.progress.fence_lsn.is_some()),
            "Promoting follows a held Draining proof"
        );
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
            if self.database_path() && self.obs.database.source_fingerprint.is_some() {
                // This look read both sides' fingerprints and the groups (the writer had left
                // recovery): it is the look Routing would take first, so the route is asked
                // for on it. The outage ends when traffic moves; a look saved here is a look
                // clients do not wait for.
                self.routing();
            }
            return;
        }
        if t.replication_source.is_some() && t.status == "promoting" {
            // RDS has taken a request up: it stays in flight while RDS says so, so the looks
            // while AWS promotes (minutes) neither ask again nor read the fence and the
            // sessions again for a request that is not due (`needs`). For `reissue_after`
            // from each look that saw it so, not `cutover_reissue_after`: the looks meanwhile
            // read the cluster from the fleet snapshot (the database path) or read nothing of
            // the fence (the metric path), so only a look with the request due reads RDS's
            // status again, and every 30 s that was a direct describe of both the source and
            // the cluster (with the fence's group) for a request RDS already had. A request
            // RDS takes up is not lost; if AWS's promotion fails, the cluster shows `available`
            // again and the promotion is asked for again once `reissue_after` has passed since
            // a look last saw it under way.
            let until = self.now + self.policy.reissue_after;
            self.m.requested.insert(ActionKey::PromoteTarget, until);
            if !self.database_path() {
                // AWS promotes for minutes and says when it is done with a cluster event,
                // which steps the migration as it arrives: the looks meanwhile are for an event
                // lost or late (`Policy::event_poll`). A describe of the cluster every
                // `fast_poll` was the metric path's most frequent call while promoting. (The
                // database path asks the writer by SQL every `promotion_poll` instead.)
                self.look_on_the_event_grid();
            }
        }
        // Before every promotion request (the first, or one asked again after a refusal), while
        // RDS has not taken one up: the fence and the proof still hold.
        let in_flight = self
            .m
            .requested
            .get(&ActionKey::PromoteTarget)
            .is_some_and(|until| self.now < *until);
        // Once the writer has left recovery (read by SQL, the database path) the promotion has
        // taken effect in the database: a describe that still shows a replica, `available`, is
        // RDS's status lagging, waited out every `promotion_poll` (above). Taken for a request
        // due, it was a look again at once, over and over: the fence's group, both sides
        // described and both fingerprints read with no wait between.
        let request_due = t.replication_source.is_some()
            && t.status == "available"
            && !in_flight
            && self.m.progress.writer_out_of_recovery_at.is_none();
        let unread = matches!(self.obs.quarantine_group, Observed::Unknown)
            || (self.database_path() && self.obs.database.source_sessions.is_none());
        if request_due && unread {
            // The request came due after this look was planned, or this look confirmed that a
            // request whose in-flight period passed was not taken up (`needs`): the fence (and
            // the sessions) were not read. The next look reads them, as for a first request.
            self.m.requested.remove(&ActionKey::PromoteTarget);
            self.look_again = true;
            return;
        }
        if request_due
            && self.database_path()
            && let Some(Ok(sessions)) = &self.obs.database.source_sessions
            && !sessions.is_empty()
        {
            // Sessions were ended and stayed away for the quiet period before the fence: these
            // came in since, past the quarantine.
            let arrived: Vec<String> = sessions.iter().map(ToString::to_string).collect();
            self.quarantine_breached(&arrived, true);
            return;
        }
        if request_due
            && let Err(why) = self
                .fence_intact()
                .and_then(|()| self.no_session_since_fence())
        {
            // The proof no longer holds: someone may have written since. Nothing is promoted.
            self.start_the_proof_over(format!("the fence broke before promotion ({why})"));
            return;
        }
        // Only a replica RDS reports `available` is asked (again): one it reports `promoting`
        // has taken a request up, and asking again every `cutover_reissue_after` while AWS
        // promotes (minutes) was five PromoteReadReplicaDBCluster a migration, each one sending
        // the cluster's next describes past the fleet snapshot. A lost or refused request leaves
        // it `available`, so it is asked again.
        if request_due
            && self.request(Action::PromoteTarget {
                cluster: t.identifier.clone(),
            })
        {
            self.m.progress.promote_requested_at.get_or_insert(self.now);
        }
    }

    pub(super) fn routing(&mut self) {
        self.assume_phase(Phase::Routing);
        // What the code below assumes (debug builds, as `assume_phase`).
        debug_assert!(
            self.m.progress.drain_proven_at.is_some() && self.m.progress.promoted_at.is_some(),
            "nothing is routed to a replica that was not promoted"
        );
        if self.m.progress.routed_at.is_none() && self.route_in_effect() {
            self.m.progress.routed_at = Some(self.now);
        }
        let Some(t) = self.obs.target.present().cloned() else {
            return;
        };
        if self.m.progress.routed_at.is_some() {
            let endpoint = t
                .writer_endpoint
                .as_ref()
                .map(|e| format!("{}:{}", e.address, e.port))
                .unwrap_or_default();
            let checked = self
                .m
                .progress
                .consistency
                .as_ref()
                .map(|c| format!("; {c}"))
                .unwrap_or_default();
            self.enter_with(
                Phase::Verifying,
                &format!("traffic now goes to the Aurora writer {endpoint}{checked}"),
                "cutover",
            );
            return;
        }
        // Before anything else can reach Aurora: the source and it hold the same data.
        if !self.consistency_holds() {
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
        if self.m.progress.route_change.is_some() {
            return; // accepted and propagating: asked after, not asked again (`route.rs`)
        }
        let route = self.route_to(&endpoint);
        if self.request(Action::RouteTraffic(route)) {
            self.m.progress.route_requested_at.get_or_insert(self.now);
        }
    }
}

/// Whether a look of `m` in Draining reads only the catch-up, not the fence: the source comes
/// from the fleet snapshot (for its endpoint and the guards' tags), and neither the fence nor
/// the source's status is judged or repaired on it.
/// - The metric path: while RDS restarts the source ([`awaits_restart`]), and from the restart
///   until CloudWatch shows the catch-up. The look after CloudWatch shows it reads the source
///   and the fence from RDS and proves the rest.
/// - The database path: unless Promoting found the fence broken on this attempt
///   (`fence_broke_at`). The proof here is by SQL (no client session through the quiet period,
///   the fence written, the replica past it); Promoting's first look, which reads the source
///   and the quarantine group from RDS and the sessions again right before it asks for the
///   promotion (as it always did), judges the fence, and sends the migration back here if it
///   broke, from where every look reads RDS and repairs it. The proving look's SQL read of the
///   source's sessions is also what shows it up and accepting connections (its status, which
///   the fresh looks judged, is not read).
pub(super) fn reads_catch_up_only(m: &Migration, now: Timestamp, policy: &Policy) -> bool {
    let p = &m.progress;
    m.phase == Phase::Draining
        && if m.database_path() {
            p.fence_broke_at.is_none()
        } else if p.restarted_at.is_some() {
            p.caught_up_in_metrics_at.is_none()
        } else {
            awaits_restart(m, now, policy)
        }
}

/// Whether the metric path's Draining waits for RDS to restart the source it asked to reboot:
/// the request made, no restart among the source's events yet, and RDS seen taking it up (the
/// "DB instance shutdown" event after the request) or the request younger than
/// `reboot_unconfirmed_after` (RDS shows the shutdown within seconds of accepting a reboot).
/// The looks of that wait read the source's events, and the source from the fleet snapshot
/// (for the guards' tags): the quarantine was applied and read from RDS before the reboot was
/// asked for (Quiescing), and is read from RDS again, with the source, by the look after
/// CloudWatch shows the catch-up and by Promoting's first look, before anything is promoted.
/// Past `reboot_unconfirmed_after` with no shutdown seen, the looks describe the source as RDS
/// has it, to tell a lost request (the source `available`, no event) from a slow one. These
/// looks were a direct describe of the source and of the quarantine group every
/// `Policy::event_poll`: 6.5 DescribeDBInstances a migration in Draining, the metric path's
/// most frequent RDS call, in the simulator's 1,000-migration fleet.
fn awaits_restart(m: &Migration, now: Timestamp, policy: &Policy) -> bool {
    let p = &m.progress;
    let Some(requested) = p.reboot_requested_at else {
        return false;
    };
    p.restarted_at.is_none()
        && (p.reboot_began_at.is_some_and(|began| began >= requested)
            || now.duration_since(requested) <= policy.reboot_unconfirmed_after)
}

/// The start of the first CloudWatch period of `period` at or after `at` (CloudWatch aligns
/// periods of a minute or more on multiples of the period since the epoch, and timestamps each
/// by its start).
fn first_period_start_after(at: Timestamp, period: SignedDuration) -> Timestamp {
    let p = period.as_millis().max(1);
    let ms = at.as_millisecond() as i128;
    let start = ms + (p - ms.rem_euclid(p)) % p;
    Timestamp::from_millisecond(start as i64).unwrap_or(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_period_after_a_restart_starts_on_the_next_multiple_of_the_period() {
        let minute = SignedDuration::from_mins(1);
        let at = |s: &str| s.parse::<Timestamp>().unwrap();
        assert_eq!(
            first_period_start_after(at("2026-12-06T01:00:17Z"), minute),
            at("2026-12-06T01:01:00Z")
        );
        assert_eq!(
            first_period_start_after(at("2026-12-06T01:01:00Z"), minute),
            at("2026-12-06T01:01:00Z"),
            "a period starting at the restart is after it"
        );
    }
}
