//! Carries out the phase machine's actions through the ports.
//!
//! Every action is idempotent at the adapter (see `ports`), so a repeat after a crash is safe.
//! Telling people and mirroring tags never stops a migration: their failures are logged and
//! counted, and the heartbeat alarm covers a silent agent.

use std::collections::BTreeMap;

use tracing::Instrument;

use crate::core::action::{Action, ActionError, ActionOutput, ActionResult};
use crate::core::invariants;
use crate::core::machine::results;
use crate::core::notification::Severity;
use crate::core::{Migration, Policy};
use crate::core::{messages, tags};
use crate::ports::{Database, Metrics, Network, Notifier, PortResult, Rds, Router, World};

/// Carries out one action; `Some` for the actions that answer (see `ActionOutput`).
pub async fn execute<W: World>(
    world: &W,
    policy: &Policy,
    action: &Action,
) -> PortResult<Option<ActionOutput>> {
    match action {
        Action::EndSourceSessions { on, .. } | Action::EndTargetSessions { on, .. } => world
            .database()
            .end_client_sessions(on)
            .await
            .map(|n| Some(ActionOutput::SessionsEnded(n))),
        Action::WriteFence { on, .. } => world
            .database()
            .write_fence(on)
            .await
            .map(|lsn| Some(ActionOutput::Fence(lsn))),
        Action::RouteTraffic(request) => world
            .router()
            .route(request)
            .await
            .map(|p| Some(ActionOutput::Route(p))),
        Action::HoldClients(request) => world.router().hold(request).await.map(|()| None),
        Action::ReleaseClients(request) => world.router().release(request).await.map(|()| None),
        other => execute_aws(world, policy, other).await.map(|()| None),
    }
}

async fn execute_aws<W: World>(world: &W, policy: &Policy, action: &Action) -> PortResult<()> {
    let rds = world.rds();
    match action {
        Action::EndSourceSessions { .. }
        | Action::EndTargetSessions { .. }
        | Action::WriteFence { .. }
        | Action::RouteTraffic(_)
        | Action::HoldClients(_)
        | Action::ReleaseClients(_) => {
            unreachable!("actions that answer are carried out by `execute`")
        }
        Action::EnsureParameterGroups(spec) => rds.ensure_parameter_groups(spec).await,
        Action::EnsureQuarantineGroup(spec) => world
            .network()
            .ensure_quarantine_group(spec)
            .await
            .map(|_| ()),
        Action::CreateReplicaCluster(spec) => rds.create_replica_cluster(spec).await,
        Action::CreateWriterInstance(spec) => rds.create_writer_instance(spec).await,
        Action::QuarantineSource { instance, group_id } => {
            rds.set_source_groups(instance, std::slice::from_ref(group_id))
                .await
        }
        Action::RebootSource { instance } => rds.reboot_instance(instance).await,
        Action::RebootTargetWriter { writer } => rds.reboot_instance(writer).await,
        Action::PromoteTarget { cluster } => rds.promote_target(cluster).await,
        Action::RunSmokeTest(request) => world.router().smoke_test(request).await,
        Action::QuarantineTarget { cluster, group_id } => {
            rds.set_target_groups(cluster, std::slice::from_ref(group_id))
                .await
        }
        Action::RestoreSourceGroups {
            instance,
            group_ids,
        } => rds.set_source_groups(instance, group_ids).await,
        Action::DeleteTarget { cluster, writer } => rds.delete_target(cluster, writer).await,
        Action::DisableDeletionProtection { instance } => {
            rds.disable_deletion_protection(instance).await
        }
        Action::DeleteSource {
            instance,
            final_snapshot,
        } => rds.delete_source(instance, final_snapshot).await,
        Action::DeleteQuarantineGroup { group_id } => world.network().delete_group(group_id).await,
        Action::EnsureHeartbeatAlarm { alarm, migration } => {
            world
                .metrics()
                .ensure_heartbeat_alarm(alarm, migration)
                .await
        }
        Action::DeleteHeartbeatAlarm { alarm } => world.metrics().delete_alarm(alarm).await,
        Action::MirrorPhaseTag { arns, phase } => {
            let t = one_tag(tags::phase_key(&policy.tag_prefix), phase.as_str());
            for arn in arns {
                rds.mirror_tags(arn, &t).await?;
            }
            Ok(())
        }
        Action::SetTriggerTag { arn, value } => {
            rds.set_tags(arn, &one_tag(policy.tag_prefix.clone(), value))
                .await
        }
        Action::MarkSource { arn, value, phase } => {
            let mut t = one_tag(tags::marker_key(&policy.tag_prefix), value);
            if let Some(phase) = phase {
                t.insert(
                    tags::phase_key(&policy.tag_prefix),
                    phase.as_str().to_string(),
                );
            }
            rds.set_tags(arn, &t).await
        }
        Action::PutHeartbeat { migration } => world.metrics().put_heartbeat(migration).await,
        Action::Notify(note) => world.notifier().publish(note).await,
    }
}

/// The one tag an agent-written key gets (the phase mirror, the trigger, the marker).
fn one_tag(key: String, value: &str) -> BTreeMap<String, String> {
    BTreeMap::from([(key, value.to_string())])
}

/// Runs the actions and returns the results the machine must see, in the actions' order.
///
/// Two lanes run at once: the migration's own actions, one after the other in the order asked
/// for, and the bookkeeping (heartbeat, phase mirror, notifications), also in order. Why: the next
/// look waits for every action of the step, and in the cutover a notification or a tag write
/// (a rate-limited RDS call) is a few hundred milliseconds of write outage that nothing needs
/// to wait for. Nothing orders the two lanes: a notification tells of the record's new state,
/// which is saved before either lane starts.
///
/// `leased`: whether this process still holds the migration's lease (`agent::lease`), asked
/// before each action. An action is not run without it (as if the process had died after the
/// save): the agent that holds it now looks afresh.
pub async fn execute_all<W: World>(
    world: &W,
    m: &Migration,
    policy: &Policy,
    actions: &[Action],
    leased: &(dyn Fn() -> bool + Sync),
) -> Vec<ActionResult> {
    let (bookkeeping, own): (Vec<_>, Vec<_>) = actions
        .iter()
        .enumerate()
        .partition(|(_, a)| is_bookkeeping(a));
    let (mut own, bookkeeping) = tokio::join!(
        execute_in_order(world, m, policy, own, leased),
        execute_in_order(world, m, policy, bookkeeping, leased),
    );
    own.extend(bookkeeping);
    own.sort_by_key(|(i, _)| *i);
    own.into_iter().map(|(_, r)| r).collect()
}

/// Actions that only tell (people, the alarm, the console) and change no resource.
fn is_bookkeeping(action: &Action) -> bool {
    matches!(
        action,
        Action::PutHeartbeat { .. } | Action::MirrorPhaseTag { .. } | Action::Notify(_)
    )
}

/// One lane of [`execute_all`]: each action after the one before, each result with the
/// action's place in the step's list.
async fn execute_in_order<W: World>(
    world: &W,
    m: &Migration,
    policy: &Policy,
    actions: Vec<(usize, &Action)>,
    leased: &(dyn Fn() -> bool + Sync),
) -> Vec<(usize, ActionResult)> {
    let mut results = Vec::new();
    for (place, action) in actions {
        let key = action.key();
        if !leased() {
            tracing::warn!(migration = %m.id, action = %key, "not run: this agent's lease on the migration lapsed");
            break;
        }
        // The last line of defence before an irreversible call, in release builds too: the
        // record that asked for it must satisfy its preconditions. A refusal changes nothing:
        // no call, no result fed back (the record stays as it is), and people are told.
        if let Err(violation) = invariants::irreversible_allowed(m, action) {
            refuse(world, m, policy, action, &violation.to_string()).await;
            continue;
        }
        // One span per action (a child of `reconcile` in traces), its outcome line inside it.
        // `otel.status_code`: a failed action's span is an error span in the trace backend.
        let span = tracing::info_span!(
            "action",
            kind = %key,
            migration = %m.id,
            otel.status_code = tracing::field::Empty,
            otel.status_message = tracing::field::Empty,
        );
        let outcome = async {
            let outcome = execute(world, policy, action).await;
            match &outcome {
                Ok(_) => tracing::info!(migration = %m.id, action = %key, "action done"),
                // Not a failure, so not a warning: the phase takes it as done (`results.rs`).
                Err(e) if key.done_despite(e.kind) => {
                    tracing::info!(migration = %m.id, action = %key, error = %e, "action done: already gone")
                }
                Err(e) => {
                    let span = tracing::Span::current();
                    span.record("otel.status_code", "ERROR");
                    span.record("otel.status_message", e.to_string());
                    tracing::warn!(migration = %m.id, action = %key, error = %e, kind = e.kind.as_str(), "action failed")
                }
            }
            outcome
        }
        .instrument(span)
        .await;
        let (outcome, output) = match outcome {
            Ok(output) => (Ok(()), output),
            Err(e) => (Err(e), None),
        };
        if results::feeds_back(key, outcome.is_ok()) {
            results.push((
                place,
                ActionResult {
                    key,
                    id: match action {
                        Action::Notify(note) => Some(note.id()),
                        _ => None,
                    },
                    outcome: outcome.map_err(|e| ActionError {
                        kind: e.kind,
                        message: e.to_string(),
                    }),
                    output,
                },
            ));
        }
    }
    results
}

/// Refuses an irreversible action whose preconditions do not hold: logs it and publishes an
/// error alert directly (not through the outbox: the record is deliberately left untouched).
async fn refuse<W: World>(world: &W, m: &Migration, policy: &Policy, action: &Action, why: &str) {
    let key = action.key();
    tracing::error!(migration = %m.id, action = %key, violation = why, "irreversible action refused");
    let note = messages::alert(
        m,
        "safety-refusal",
        Severity::Error,
        &format!("refused {key}: a safety rule does not hold"),
        &format!(
            "the agent asked for {key} in {} but {why}; nothing was done and the record is kept as it is. This is a bug or a tampered record: look at the migration before anything else",
            m.phase
        ),
        policy,
    );
    if let Err(e) = world.notifier().publish(&note).await {
        tracing::error!(migration = %m.id, error = %e, "the safety refusal could not be published");
    }
}
