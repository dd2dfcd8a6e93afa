//! Preflight through the cutover gate: preflight, Preparing (parameter groups, quarantine
//! group, the agent's marker), CreatingReplica, Replicating (lag sustained, baseline, storage
//! guard), AwaitingCutover and Paused. Nothing here stops a write: every failure is a lossless
//! rollback.

use super::*;

/// How often a migration first in line for its cutover turn looks again: a turn given back is
/// taken within this (the looks read the fleet snapshot and CloudWatch, not the RDS budget).
pub const CUTOVER_TURN_LOOK: SignedDuration = SignedDuration::from_secs(10);

/// How often a migration first in line for its preparation turn looks again. Longer than the
/// cutover's: a preparation takes minutes, and a thousand migrations tagged at once each look
/// (a lease, a save, a tick) while they wait.
pub const PREPARATION_TURN_LOOK: SignedDuration = SignedDuration::from_secs(30);

/// When a migration waiting for a turn looks again: `first_in_line` while fewer than `max`
/// (the turns there are) wait ahead of it, once more for each further `max` ahead, up to the
/// phase's poll interval (`Stepper::wake_within`). One further back waits at least one whole
/// stretch (a cutover, a preparation: minutes) before its turn can come, so looking every
/// 10 s meanwhile was work for nothing (each look a lease, a save and a tick): in the
/// simulator's 1,000-migration fleet this took DynamoDB UpdateItem from 890 to 784 a migration.
pub fn turn_look(first_in_line: SignedDuration, ahead: usize, max: usize) -> SignedDuration {
    let generations = i32::try_from(ahead / max.max(1)).unwrap_or(i32::MAX);
    first_in_line
        .checked_mul(generations.saturating_add(1))
        .unwrap_or(SignedDuration::MAX)
}

/// How far back replication health is read: enough periods to see a trend.
const HEALTH_WINDOW: SignedDuration = SignedDuration::from_mins(10);

/// What Preflight … Paused read.
pub(super) fn needs(m: &Migration, now: Timestamp, n: &mut Needs) {
    use MetricKey::*;
    match m.phase {
        Phase::Preflight => n.preflight = true,
        Phase::Preparing => {
            n.parameter_groups = true;
            n.quarantine_group = true;
        }
        Phase::CreatingReplica => {
            n.target = true;
            // Entering the phase cleared what was asked: nothing is created yet.
            n.target_absence_from_snapshot =
                !m.requested.contains_key(&ActionKey::CreateReplicaCluster);
        }
        Phase::Replicating | Phase::AwaitingCutover | Phase::Paused => {
            n.target = true;
            n.fleet_pause = m.phase != Phase::Replicating;
            n.metrics = [
                SourceSlotLag,
                TargetReplicaLag,
                SourceFreeStorage,
                SourceCpu,
                SourceWriteLatency,
                SourceReadLatency,
            ]
            .into_iter()
            .map(|k| (k, now - HEALTH_WINDOW))
            .collect();
            // The database path needs the Aurora writer too: its route is tried before the
            // cutover, until it answered once.
            n.target_replay = m.database_path() && m.progress.target_reached_at.is_none();
        }
        _ => {}
    }
}

impl Stepper<'_> {
    /// Replica health that matters in every phase that waits with a replica attached.
    pub(super) fn replica_guards(&mut self) -> bool {
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

    pub(super) fn lag_ok(&self) -> bool {
        let slot = latest(self.obs.metric(MetricKey::SourceSlotLag));
        let replica = latest(self.obs.metric(MetricKey::TargetReplicaLag));
        matches!((slot, replica), (Some(s), Some(r))
            if s.maximum <= self.policy.max_slot_lag_bytes && r.maximum <= self.policy.max_replica_lag_s)
    }

    // ----- phases ----------------------------------------------------------------------------

    /// Requested: the preflight starts when the agent has a preparation turn for it
    /// (`agent::turns`); until then it waits here, where no time limit runs, so a fleet tagged at
    /// once is not timed out by the agent's own queue.
    pub(super) fn requested(&mut self) {
        self.assume_phase(Phase::Requested);
        if self.obs.no_preparation_turn {
            self.wake_within(turn_look(
                PREPARATION_TURN_LOOK,
                self.obs.turns_ahead,
                self.policy.max_preparations,
            ));
            return;
        }
        self.enter(Phase::Preflight, "");
    }

    pub(super) fn preflight(&mut self) {
        self.assume_phase(Phase::Preflight);
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

    pub(super) fn preparing(&mut self) {
        self.assume_phase(Phase::Preparing);
        let Some(plan) = self.recorded_plan() else {
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
                    allow_from: plan.quarantine_admits(),
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
                    self.request(Action::MarkSource {
                        arn,
                        value,
                        phase: None,
                    });
                    false
                }
            }
            None => false,
        };
        if groups_ready && quarantine_ready && marked {
            self.enter(Phase::CreatingReplica, "");
        }
    }

    pub(super) fn target_tags(&self) -> std::collections::BTreeMap<String, String> {
        let p = &self.policy.tag_prefix;
        let mut t = std::collections::BTreeMap::new();
        t.insert(tags::key(p, "migration"), self.m.id.to_string());
        t.insert(tags::key(p, "source"), self.m.source_identifier.clone());
        t
    }

    pub(super) fn creating_replica(&mut self) {
        self.assume_phase(Phase::CreatingReplica);
        let Some(plan) = self.recorded_plan() else {
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
                let asked = self.request(Action::CreateReplicaCluster(ReplicaClusterSpec {
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
                if asked {
                    self.no_look_before(self.now + self.policy.slow_change_first_look());
                }
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
                        let asked =
                            self.request(Action::CreateWriterInstance(WriterInstanceSpec {
                                instance: self.m.names.writer.clone(),
                                cluster: self.m.names.cluster.clone(),
                                instance_class: plan.instance_class.clone(),
                                parameter_group: plan.instance_parameter_group.clone(),
                                tags: self.target_tags(),
                            }));
                        if asked {
                            self.no_look_before(self.now + self.policy.slow_change_first_look());
                        }
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

    pub(super) fn replicating(&mut self) {
        self.assume_phase(Phase::Replicating);
        if self.replica_guards() {
            return;
        }
        self.note_aurora_route();
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

    pub(super) fn cutover_allowed(&self) -> bool {
        match &self.policy.cutover {
            CutoverPolicy::Automatic => true,
            CutoverPolicy::ManualApproval => self.tags.approve,
            CutoverPolicy::Window(w) => w.contains(self.now),
        }
    }

    pub(super) fn awaiting_cutover(&mut self) {
        self.assume_phase(Phase::AwaitingCutover);
        if self.replica_guards() {
            return;
        }
        self.note_aurora_route();
        if self.obs.fleet_paused {
            self.m.progress.cutover_turn_asked_at = None;
            self.enter(Phase::Paused, "the fleet-wide pause is on");
            return;
        }
        if self.cutover_allowed() && self.lag_ok() {
            // Writes stop only when the agent can carry the cutover through at its pace: a
            // migration without a turn waits here, writes flowing, never inside the
            // quarantine with its write budget running.
            if self.obs.no_cutover_turn {
                self.m
                    .progress
                    .cutover_turn_asked_at
                    .get_or_insert(self.now);
                self.wake_within(turn_look(
                    CUTOVER_TURN_LOOK,
                    self.obs.turns_ahead,
                    self.policy.max_cutovers,
                ));
                return;
            }
            self.m.progress.cutover_turn_asked_at = None;
            self.aurora_route_or_fall_back();
            self.enter(Phase::Quiescing, "");
        } else {
            // Not ready any more (lag, window, approval withdrawn): it gives its place up.
            self.m.progress.cutover_turn_asked_at = None;
        }
    }

    pub(super) fn paused(&mut self) {
        self.assume_phase(Phase::Paused);
        if self.replica_guards() {
            return;
        }
        if !self.obs.fleet_paused {
            self.enter(Phase::AwaitingCutover, "the fleet-wide pause was lifted");
        }
    }
}

/// Failed cluster states from which a replica will not recover.
const FAILED_CLUSTER_STATES: [&str; 5] = [
    "failed",
    "inaccessible-encryption-credentials",
    "incompatible-parameters",
    "incompatible-network",
    "incompatible-restore",
];
