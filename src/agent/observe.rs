//! Turns the phase's needs into calls and the answers into one `Observation`.

use crate::core::database::{self, DbTarget};
use crate::core::needs::{Needs, needs};
use crate::core::observation::{
    DatabaseReadings, Observation, Observed, SourceInstance, TargetCluster,
};
use crate::core::router::RouterChoice;
use crate::core::{Migration, Policy};
use crate::ports::{
    Clock, Database, MetricQuery, Metrics, Network, PortResult, Rds, Router, StateStore, World,
};

/// One look at `m`: what its phase needs (`core::needs`). `may_gather`: a scheduled look, which
/// may wait a moment for other migrations' looks to share its describes where its phase says
/// so (`Needs::gathers`, `aws::rds::batch::gathered`).
pub async fn observe<W: World>(
    world: &W,
    m: &Migration,
    policy: &Policy,
    may_gather: bool,
) -> PortResult<Observation> {
    let now = world.clock().now();
    let need: Needs = needs(m, now, policy);
    // Boxed: the look's future is large (a debug build's fleet in the simulator ran out of
    // stack with it inline in the task-local's).
    let (gathers, quickly) = (
        may_gather && need.gathers,
        may_gather && need.gathers_quickly,
    );
    let look = Box::pin(observe_needs(world, m, policy, now, need));
    if quickly {
        crate::aws::rds::batch::gathered_quickly(look).await
    } else if gathers {
        crate::aws::rds::batch::gathered(look).await
    } else {
        look.await
    }
}

async fn observe_needs<W: World>(
    world: &W,
    m: &Migration,
    policy: &Policy,
    now: jiff::Timestamp,
    need: Needs,
) -> PortResult<Observation> {
    let rds = world.rds();
    let mut obs = Observation::default();
    // The three describes at once: every look of the cutover waits for all of them, and none
    // needs another's answer.
    // A look that can wait on a snapshot reads it (no request), even in the cutover lane.
    let maybe_snapshot = |f| async move {
        if need.snapshot_will_do {
            crate::aws::rds::cache::snapshot_will_do(f).await
        } else {
            f.await
        }
    };
    let source = async {
        if !need.source {
            return Ok(Observed::Unknown);
        }
        let found = if need.fresh {
            rds.describe_source_now(&m.source_identifier).await?
        } else {
            rds.describe_source(&m.source_identifier).await?
        };
        Ok(match found {
            // An identifier can be reused by a new instance: only the resource id is ours.
            Observed::Present(s) if s.resource_id != m.id.resource_id => Observed::Absent,
            other => other,
        })
    };
    let source = async {
        if need.source_from_snapshot {
            crate::aws::rds::cache::snapshot_will_do(source).await
        } else if need.source_absence_from_snapshot {
            crate::aws::rds::cache::absence_will_do(source).await
        } else {
            source.await
        }
    };
    let target = async {
        match (need.target, need.fresh && !need.target_from_snapshot) {
            (false, _) => Ok(Observed::Unknown),
            (true, true) => rds.describe_target_now(&m.names.cluster).await,
            (true, false) => rds.describe_target(&m.names.cluster).await,
        }
    };
    let target = async {
        if need.target_from_snapshot {
            crate::aws::rds::cache::snapshot_will_do(target).await
        } else if need.target_absence_from_snapshot {
            crate::aws::rds::cache::absence_will_do(target).await
        } else {
            target.await
        }
    };
    let group = async {
        match &m.plan {
            Some(plan) if need.quarantine_group => {
                world
                    .network()
                    .describe_group(&plan.vpc_id, &m.names.quarantine_group)
                    .await
            }
            _ => Ok(Observed::Unknown),
        }
    };
    // The SQL readings need the endpoints the describes give (from the fleet snapshot, at once,
    // in the cutover's looks), not the group: they run while the group is described.
    let instances = async {
        let (source, target) = tokio::join!(source, target);
        let (source, target): (Observed<_>, Observed<_>) = (source?, target?);
        let sql =
            need.source_sessions || need.target_replay || need.consistency || need.target_sessions;
        let database = if sql {
            Some(read_databases(world, m, policy, &source, &target, &need).await)
        } else {
            None
        };
        Ok::<_, crate::ports::PortError>((source, target, database))
    };
    // Boxed too: the describes' futures, each wrapped for the snapshot, are large.
    let (instances, group) = tokio::join!(Box::pin(maybe_snapshot(instances)), group);
    let (source, target, database) = instances?;
    let (source, renamed) = renamed_or_absent(rds, m, source).await?;
    obs.source = source;
    obs.source_renamed_to = renamed;
    obs.target = target;
    obs.quarantine_group = group?;
    if let Some(database) = database {
        obs.database = database;
    }
    if need.parameter_groups
        && let Some(plan) = &m.plan
    {
        obs.parameter_groups = Some(
            rds.parameter_groups_present(
                &plan.cluster_parameter_group,
                &plan.instance_parameter_group,
            )
            .await?,
        );
    }
    if need.preflight
        && let Observed::Present(source) = &obs.source
    {
        let mut inputs = rds.preflight_inputs(source).await?;
        let declared = crate::core::tags::ControlTags::read(&policy.tag_prefix, &source.tags);
        if declared.cdc_declared() {
            inputs.cdc_consumer_groups = Some(
                world
                    .network()
                    .locate_groups(&declared.cdc_consumers)
                    .await?,
            );
        }
        // The SQL preflight, where the instance grants access: a failure is an answer (the
        // metric path, and the report says why), not a failed observation.
        if let Ok(Some(access)) = database::access_for(source, policy)
            && let Some(e) = &source.endpoint
        {
            let at = DbTarget {
                host: e.address.clone(),
                port: e.port,
                access,
            };
            // An open transaction older than the write budget is one the cutover would end
            // long before it could finish by itself: worth a warning.
            let old_after_s = policy.write_unavailability_budget.as_secs().max(0) as u64;
            inputs.database = Some(
                world
                    .database()
                    .preflight(&at, old_after_s)
                    .await
                    .map_err(|e| e.to_string()),
            );
        }
        // What the instance's router sends where (Route 53's record, the proxy, the PgBouncer
        // entry): preflight checks it before writes ever stop (a typo found mid-cutover is
        // outage).
        if let Ok(router) =
            RouterChoice::for_instance(&policy.tag_prefix, &source.tags, &policy.router)
            && router != RouterChoice::Webhook
        {
            // A transient failure is a failed look (asked again); one that will not pass by
            // itself (no permission, no such zone) is the check's answer.
            inputs.router_view = Some(match world.router().view(&router).await {
                Ok(record) => Ok(record),
                Err(e) if e.kind.is_transient() => {
                    return Err(e);
                }
                Err(e) => Err(e.to_string()),
            });
        }
        obs.preflight = Some(inputs);
    }
    if let Some((router, change)) = &need.route_change {
        // A failed read is an answer (reported, asked again), not a failed look: the phase's
        // other readings still count.
        obs.route_status = Some(
            world
                .router()
                .route_status(router, change)
                .await
                .map_err(|e| e.to_string()),
        );
    }
    if need.quotas {
        obs.quotas = Some(rds.account_quotas().await?);
    }
    if need.reads_final_snapshot(&obs.source) {
        obs.final_snapshot = rds.describe_snapshot(&m.names.final_snapshot).await?;
    }
    if let Some(since) = need.reads_source_events(&obs.source) {
        obs.source_events = rds.instance_events(&m.source_identifier, since).await?;
    }
    if let Some(since) = need.writer_events_since {
        obs.writer_events = rds.instance_events(&m.names.writer, since).await?;
    }
    if !need.metrics.is_empty() {
        let queries: Vec<MetricQuery> = need
            .metrics
            .iter()
            .map(|(key, since)| MetricQuery {
                key: *key,
                instance: if key.on_source() {
                    m.source_identifier.clone()
                } else {
                    m.names.writer.clone()
                },
                start: *since,
                end: now,
                period_s: policy.metric_period.as_secs().clamp(1, i64::from(u32::MAX)) as u32,
            })
            .collect();
        let series = world.metrics().fetch(&queries).await?;
        for (q, points) in queries.iter().zip(series) {
            obs.metrics.insert(q.key, points);
        }
    }
    if need.fleet_pause {
        obs.fleet_paused = world.store().fleet_paused().await?;
    }
    Ok(obs)
}

/// The SQL readings of the database-aware cutover: the fingerprints of both sides, read at once
/// within the consistency check's budget; the Aurora writer's client sessions; the Aurora
/// writer's replay position, then the source's client sessions. That order is the proof's:
/// the sessions are read after the replay position reached the fence, so a look that proves
/// catch-up has also seen, after it, that no client got back in, and the promotion can be
/// asked for on that same look (`machine::cutover::draining`). Read failures are answers,
/// with their reason.
async fn read_databases<W: World>(
    world: &W,
    m: &Migration,
    policy: &Policy,
    source: &Observed<SourceInstance>,
    target: &Observed<TargetCluster>,
    need: &Needs,
) -> DatabaseReadings {
    let mut r = DatabaseReadings {
        read_at: Some(world.clock().now()),
        ..DatabaseReadings::default()
    };
    let Some(access) = m.plan.as_ref().and_then(|p| p.database.clone()) else {
        return r;
    };
    let db = world.database();
    let source_at = source
        .present()
        .and_then(|s| s.endpoint.as_ref())
        .map(|e| DbTarget {
            host: e.address.clone(),
            port: e.port,
            access: access.clone(),
        });
    let writer_at = target
        .present()
        .and_then(|t| t.writer_endpoint.as_ref())
        .map(|e| DbTarget {
            host: e.address.clone(),
            port: e.port,
            access: access.clone(),
        });
    if need.consistency {
        let budget = std::time::Duration::try_from(policy.consistency_check_budget)
            .unwrap_or(std::time::Duration::from_secs(5));
        let read = |at: Option<&DbTarget>, missing: &'static str| {
            let at = at.cloned();
            async move {
                match at {
                    Some(at) => db.fingerprint(&at, budget).await.map_err(|e| e.to_string()),
                    None => Err(missing.to_string()),
                }
            }
        };
        // Both sides at once: the check's time is one budget, not two.
        let (source, target) = tokio::join!(
            read(source_at.as_ref(), "the source has no endpoint"),
            read(
                writer_at.as_ref(),
                "the Aurora cluster has no writer endpoint"
            ),
        );
        r.source_fingerprint = Some(source);
        r.target_fingerprint = Some(target);
    }
    if need.target_sessions {
        r.target_sessions = Some(match &writer_at {
            Some(at) => db.client_sessions(at).await.map_err(|e| e.to_string()),
            None => Err("the Aurora cluster has no writer endpoint".to_string()),
        });
    }
    if need.target_replay {
        r.target_replay = Some(match &writer_at {
            Some(at) => db.replay_lsn(at).await.map_err(|e| e.to_string()),
            None => Err("the Aurora cluster has no writer endpoint yet".to_string()),
        });
    }
    if need.source_sessions {
        r.source_sessions = Some(match &source_at {
            Some(at) => db.client_sessions(at).await.map_err(|e| e.to_string()),
            None => Err("the source has no endpoint".to_string()),
        });
    }
    r
}

/// A source not found under its name while it should exist is looked for by its resource id:
/// a person may have renamed it, and a renamed source is not a deleted one. Taken for deleted, a
/// source renamed mid-cutover ended the migration Failed with the source still fenced. Found
/// under another name, it is `Unknown` with the new name beside it
/// (`Observation::source_renamed_to`).
///
/// The fleet snapshot answers first (it holds every instance's resource id, and costs no
/// request within its TTL): not in it, the source was gone when it was taken (resource ids are
/// never reused), so it is absent; under another name, renamed. Only a snapshot that still shows
/// it under its own name (older than the change) is checked with RDS directly, one request
/// (`dbi-resource-id`). Not once the agent asked for the source's deletion (below).
async fn renamed_or_absent<R: Rds>(
    rds: &R,
    m: &Migration,
    source: Observed<SourceInstance>,
) -> PortResult<(Observed<SourceInstance>, Option<String>)> {
    // Once the agent asked for the source's deletion, its absence is most likely that
    // deletion (the first look after it, minutes later, finds it so in nearly every migration
    // of a fleet): not looked into, not even in the fleet snapshot, whose refreshes a look
    // would otherwise pay for. A rename after a refused deletion is then taken for the
    // deletion: `source_gone` finds no final snapshot of ours and says so (an error).
    if !source.is_absent() || m.progress.source_delete_requested_at.is_some() {
        return Ok((source, None));
    }
    let rid = &m.id.resource_id;
    let seen = rds
        .list_sources()
        .await?
        .into_iter()
        .find(|s| s.resource_id == *rid)
        .map(|s| s.identifier);
    let now = match seen {
        None => None,
        Some(name) if name != m.source_identifier => Some(name),
        Some(_) => rds.source_identifier_of(rid).await?,
    };
    Ok(match now {
        None => (source, None),
        // Under its own name after all: the name's look raced a change. Looked at again.
        Some(name) if name == m.source_identifier => (Observed::Unknown, None),
        Some(name) => (Observed::Unknown, Some(name)),
    })
}
