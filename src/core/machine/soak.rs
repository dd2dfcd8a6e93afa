//! After the cutover: Verifying (the soak against the baseline, the smoke test, writes on the old
//! primary) and Decommissioning (retention, the fence re-checked, the source deleted with its
//! final snapshot in the same call and its automated backups kept).

use super::*;

/// What Verifying and Decommissioning read.
pub(super) fn needs(m: &Migration, now: Timestamp, policy: &Policy, n: &mut Needs) {
    use MetricKey::*;
    let p = &m.progress;
    match m.phase {
        Phase::Verifying => {
            n.target = true;
            // Read for the writer's endpoint (the smoke test) and the cluster's ARN (a failure's
            // phase mirror): neither changes, so the fleet snapshot will do even when it is
            // older than the promotion (a direct describe of the just-promoted cluster until
            // the next snapshot was 1.7 requests a migration in the 1,000-migration fleet).
            // Nothing here judges the cluster's state: the soak reads CloudWatch.
            n.target_from_snapshot = true;
            let since = p.routed_at.unwrap_or(now);
            n.metrics = [
                TargetCpu,
                TargetWriteLatency,
                TargetReadLatency,
                SourceWalGeneration,
            ]
            .into_iter()
            .map(|k| (k, since))
            .collect();
        }
        Phase::Decommissioning => {
            // The cluster is looked at so that entering Completed mirrors the phase to its tag:
            // its ARN, which the fleet snapshot has (as in Verifying).
            n.target = true;
            n.target_from_snapshot = true;
            let due = p.verification_passed_at.map(|t| t + policy.retention);
            if due.is_some_and(|d| now >= d) {
                // Once the deletion was asked for, until the snapshot is recorded as ours: the
                // looks after that (the quarantine group's deletion, minutes while its network
                // interfaces detach) need it no more. Not before the request: RDS itself refuses
                // a deletion whose final snapshot's name is taken (`final_snapshot_name_taken`),
                // in the same call that would take it, where a describe first was a check that
                // could be stale by the time of the request (and 0.95 RDS requests a migration
                // in the simulator's 1,000-migration fleet).
                n.final_snapshot =
                    p.final_snapshot_at.is_none() && p.source_delete_requested_at.is_some();
                n.quotas = p.source_delete_requested_at.is_none();
                // The look that may act towards the deletion (DeletionProtection off, the
                // deletion) reads the source's groups as RDS has them now: the fence is
                // re-checked right before (`fence_holds_for_deletion`), and the fleet snapshot can
                // be minutes old, while RDS announces no change of an instance's groups. Only
                // that look: one from the snapshot finds the deletion ready first
                // (`deletion_ready_at`), so a deletion held (DeletionProtection left to a person,
                // the snapshot quota, the fence) costs no request a look. The cluster still comes
                // from the snapshot (its ARN).
                n.fresh = p.deletion_ready_at.is_some() && p.source_delete_requested_at.is_none();
                // After the request, the source leaves the fleet snapshot when RDS has deleted
                // it (`deleting` until then): a look that finds it gone there needs no request
                // to say so. Each such look described it directly: 1.2 DescribeDBInstances a
                // completed migration in the simulator's 1,000-migration fleet (seed 1).
                n.source_absence_from_snapshot = p.source_delete_requested_at.is_some();
                n.quarantine_group = true;
                if policy.restore_source_groups_after_cutover {
                    // With its groups given back, only its WAL can show the source takes no
                    // writes before it is deleted.
                    n.metrics = vec![(SourceWalGeneration, now - DELETE_IDLE_WINDOW)];
                }
            }
        }
        _ => {}
    }
}

impl Stepper<'_> {
    pub(super) fn verifying(&mut self) {
        self.assume_phase(Phase::Verifying);
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
    pub(super) fn source_release_after_cutover(&mut self) {
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

    pub(super) fn kpi_regressions(&self, routed: Timestamp) -> Vec<String> {
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

    pub(super) fn decommissioning(&mut self) {
        self.assume_phase(Phase::Decommissioning);
        // What the code below assumes (debug builds, as `assume_phase`).
        debug_assert!(
            self.m.progress.routed_at.is_some(),
            "decommissioning follows a confirmed route"
        );
        let Some(passed) = self.m.progress.verification_passed_at else {
            self.failure("decommissioning without a passed verification".to_string());
            return;
        };
        if self.m.source_deleted() {
            // Seen gone with its final snapshot ours on an earlier look: not described again.
            self.source_gone();
            return;
        }
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
                // Every hold below clears the readiness, and the looks go back to the snapshot.
                let fresh = self.m.progress.deletion_ready_at.is_some();
                self.m.progress.deletion_ready_at = None;
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
                // The fence first: with it broken nothing is done towards the deletion, not even
                // turning DeletionProtection off, which a source someone took back into service
                // would then lack.
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
                if source.deletion_protection {
                    if self.policy.allow_disable_deletion_protection {
                        if fresh {
                            self.request(Action::DisableDeletionProtection {
                                instance: source.identifier.clone(),
                            });
                        }
                        // Turned off on a look as RDS has the source now; the deletion's look
                        // after it is one too.
                        self.m.progress.deletion_ready_at = Some(self.now);
                        self.look_again |= !fresh;
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
                if !fresh {
                    // Nothing holds it on the snapshot's word: look again at once, as RDS has
                    // the source now, and act on that.
                    self.m.progress.deletion_ready_at = Some(self.now);
                    self.look_again = true;
                    return;
                }
                if self.request(Action::DeleteSource {
                    instance: source.identifier.clone(),
                    final_snapshot: self.m.names.final_snapshot.clone(),
                }) {
                    self.m
                        .progress
                        .source_delete_requested_at
                        .get_or_insert(self.now);
                    // Its final snapshot alone takes RDS minutes.
                    self.no_look_before(self.now + self.policy.slow_change_first_look());
                }
            }
        }
    }

    /// Whether the deletion may be asked for, as far as the final snapshot's name goes. The
    /// snapshot is not described before the first request (`needs`): RDS refuses a deletion
    /// whose final snapshot's name is taken in the very call that would take it
    /// ([`Self::final_snapshot_name_taken`]). After a request it is read, and a snapshot of that
    /// name holds the deletion: ours (of the source, created after our first request: RDS
    /// accepted a deletion whose answer or describe lags), it is waited for; not ours (another
    /// instance's, or one a person took), people are told, with its details, and the deletion
    /// waits for them to delete or rename it.
    pub(super) fn final_snapshot_name_free(&mut self, source: &SourceInstance) -> bool {
        match &self.obs.final_snapshot {
            // Not read: no deletion asked for yet.
            Observed::Unknown => true,
            Observed::Absent => true,
            Observed::Present(s) => {
                if !self.final_snapshot_is_ours(s) {
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
                false
            }
        }
    }

    /// RDS refused the deletion because a snapshot with the final snapshot's name exists (its
    /// `DBSnapshotAlreadyExists`). Nothing was deleted. Whose snapshot it is decides the next
    /// look, which reads it ([`Self::final_snapshot_name_free`]): a repeat of a deletion RDS
    /// had already accepted meets the snapshot that deletion is taking, and is no cause for an
    /// alert. Not a failure that ends the attempt (the database is on Aurora; only its old copy
    /// waits): asked again no sooner than [`NAME_TAKEN_ASK_AGAIN`]. True when `err` was that.
    pub(super) fn final_snapshot_name_taken(&mut self, err: &ActionError) -> bool {
        err.kind == ErrorKind::Conflict && err.message.starts_with(SNAPSHOT_EXISTS)
    }

    /// A snapshot carrying the final snapshot's name is ours only when it is of the source and
    /// was created after we asked for the deletion (RDS clocks and ours differ by seconds, so a
    /// minute of slack; an older snapshot cannot hold the last state).
    pub(super) fn final_snapshot_is_ours(&self, s: &Snapshot) -> bool {
        let Some(requested) = self.m.progress.source_delete_requested_at else {
            return false;
        };
        s.instance.eq_ignore_ascii_case(&self.m.source_identifier)
            && s.created_at
                .is_none_or(|t| t >= requested - SignedDuration::from_mins(1))
    }

    /// The last check before the source is deleted: nobody can have written to it since the
    /// cutover. Either the fence still holds (`fence.rs`: its groups exactly the quarantine
    /// group, the group without rules beyond the CDC exception), or (when the policy gave its
    /// groups back) it generated no more WAL than an idle instance in every period of the last
    /// few minutes.
    pub(super) fn fence_holds_for_deletion(&self, source: &SourceInstance) -> Result<(), String> {
        if !self.policy.restore_source_groups_after_cutover {
            let Some(q) = self.quarantine_id() else {
                return Err("no quarantine group was recorded".to_string());
            };
            let breaks = self.fence_breaks(source, &q);
            return if breaks.is_empty() {
                Ok(())
            } else {
                Err(breaks.join("; "))
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
    pub(super) fn source_gone(&mut self) {
        self.m.progress.source_released_at.get_or_insert(self.now);
        let ours = self.m.progress.source_delete_requested_at.is_some();
        if self.m.progress.final_snapshot_at.is_some() {
            // Seen ours on an earlier look: not read again.
        } else if !ours {
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
}

/// The error code RDS answers a deletion whose final snapshot's name is taken with (the AWS
/// adapter's and the simulator's messages start with the code).
pub const SNAPSHOT_EXISTS: &str = "DBSnapshotAlreadyExists";

/// How often a deletion RDS refused for the final snapshot's name is asked again while people
/// free the name: each ask is one refused RDS request.
pub(super) const NAME_TAKEN_ASK_AGAIN: SignedDuration = SignedDuration::from_mins(5);

/// How far back the source's WAL generation must be idle before it is deleted with its groups
/// given back: several CloudWatch periods, so one quiet minute is not mistaken for no writer.
const DELETE_IDLE_WINDOW: SignedDuration = SignedDuration::from_mins(5);
