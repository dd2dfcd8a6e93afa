//! Turns the phase's needs into calls and the answers into one `Observation`.

use crate::core::needs::{Needs, needs};
use crate::core::observation::{Observation, Observed};
use crate::core::{Migration, Policy};
use crate::ports::{Clock, MetricQuery, Metrics, Network, PortResult, Rds, StateStore, World};

pub async fn observe<W: World>(
    world: &W,
    m: &Migration,
    policy: &Policy,
) -> PortResult<Observation> {
    let now = world.clock().now();
    let need: Needs = needs(m, now, policy);
    let rds = world.rds();
    let mut obs = Observation::default();
    if need.source {
        obs.source = match rds.describe_source(&m.source_identifier).await? {
            // An identifier can be reused by a new instance: only the resource id is ours.
            Observed::Present(s) if s.resource_id != m.id.resource_id => Observed::Absent,
            other => other,
        };
    }
    if need.target {
        obs.target = rds.describe_target(&m.names.cluster).await?;
    }
    if need.quarantine_group
        && let Some(plan) = &m.plan
    {
        obs.quarantine_group = world
            .network()
            .describe_group(&plan.vpc_id, &m.names.quarantine_group)
            .await?;
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
        obs.preflight = Some(inputs);
    }
    if need.quotas {
        obs.quotas = Some(rds.account_quotas().await?);
    }
    if need.final_snapshot {
        obs.final_snapshot = rds.describe_snapshot(&m.names.final_snapshot).await?;
    }
    if let Some(since) = need.events_since {
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
