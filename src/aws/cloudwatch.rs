//! CloudWatch: metrics read in GetMetricData batches (≤ 500 queries a call), the per-migration
//! heartbeat and its alarm, and the agent's own heartbeat.

use std::collections::BTreeMap;
use std::future::Future;

use aws_sdk_cloudwatch::Client;
use aws_sdk_cloudwatch::types::{
    ComparisonOperator, Dimension, Metric, MetricDataQuery, MetricDatum, MetricStat, StandardUnit,
    Statistic, builders::MetricDatumBuilder,
};
use jiff::Timestamp;

use super::call::{all_pages, boxed, call};
use super::classify::found;
use super::{AwsSettings, CallCounter, sdk_ts, ts};
use crate::core::observation::Datapoint;
use crate::ports::{MetricQuery, Metrics, PortResult};

/// GetMetricData's limit of queries per call.
pub const MAX_QUERIES_PER_CALL: usize = 500;
/// Each series is read as three statistics.
const STATS: [&str; 3] = ["Minimum", "Maximum", "Average"];

pub const HEARTBEAT_METRIC: &str = "MigrationHeartbeat";
pub const AGENT_HEARTBEAT_METRIC: &str = "AgentHeartbeat";

#[derive(Clone)]
pub struct AwsMetrics {
    client: Client,
    calls: CallCounter,
    namespace: String,
    topic_arn: String,
}

/// The dimension of a migration's heartbeat and its alarm.
fn migration_dimension(migration: &str) -> Dimension {
    Dimension::builder()
        .name("Migration")
        .value(migration)
        .build()
}

/// Rounds down to a multiple of `period_s` (CloudWatch aligns periods to the clock).
fn align_down(t: Timestamp, period_s: u32) -> Timestamp {
    let p = i64::from(period_s.max(1));
    Timestamp::from_second(t.as_second().div_euclid(p) * p).unwrap_or(t)
}

fn align_up(t: Timestamp, period_s: u32) -> Timestamp {
    let p = i64::from(period_s.max(1));
    let s = t.as_second() + i64::from(t.subsec_nanosecond() > 0);
    Timestamp::from_second((s + p - 1).div_euclid(p) * p).unwrap_or(t)
}

impl AwsMetrics {
    pub fn new(client: Client, calls: CallCounter, s: &AwsSettings) -> Self {
        AwsMetrics {
            client,
            calls,
            namespace: s.heartbeat_namespace.clone(),
            topic_arn: s.topic_arn.clone(),
        }
    }

    /// The agent-level heartbeat, put by the runtime every minute.
    pub async fn put_agent_heartbeat(&self) -> PortResult<()> {
        self.put_count(MetricDatum::builder().metric_name(AGENT_HEARTBEAT_METRIC))
            .await
    }

    /// Puts one count of 1 in the agent's namespace.
    async fn put_count(&self, datum: MetricDatumBuilder) -> PortResult<()> {
        let request = self
            .client
            .put_metric_data()
            .namespace(&self.namespace)
            .metric_data(datum.value(1.0).unit(StandardUnit::Count).build());
        call(&self.calls, "monitoring:PutMetricData", request.send())
            .await
            .map(drop)
    }

    /// Reads one window of many series: queries sharing the window go in calls of up to 500.
    async fn fetch_window(
        &self,
        start: Timestamp,
        end: Timestamp,
        queries: &[(usize, &MetricQuery)],
        out: &mut [Vec<Datapoint>],
    ) -> PortResult<()> {
        let per_call = MAX_QUERIES_PER_CALL / STATS.len();
        for chunk in queries.chunks(per_call) {
            let mut data_queries = Vec::new();
            for (n, (_, q)) in chunk.iter().enumerate() {
                let metric = Metric::builder()
                    .namespace("AWS/RDS")
                    .metric_name(q.key.metric_name())
                    .dimensions(
                        Dimension::builder()
                            .name("DBInstanceIdentifier")
                            .value(&q.instance)
                            .build(),
                    )
                    .build();
                for (s, stat) in STATS.iter().enumerate() {
                    data_queries.push(
                        MetricDataQuery::builder()
                            .id(format!("q{n}s{s}"))
                            .metric_stat(
                                MetricStat::builder()
                                    .metric(metric.clone())
                                    .period(q.period_s as i32)
                                    .stat(*stat)
                                    .build(),
                            )
                            .return_data(true)
                            .build(),
                    );
                }
            }
            // (series, stat) → timestamp → value
            let results = all_pages(|token| {
                let request = self
                    .client
                    .get_metric_data()
                    .start_time(sdk_ts(start))
                    .end_time(sdk_ts(end))
                    .set_metric_data_queries(Some(data_queries.clone()))
                    .set_next_token(token);
                async move {
                    let r = call(&self.calls, "monitoring:GetMetricData", request.send()).await?;
                    let next = r.next_token().map(str::to_string);
                    Ok((r.metric_data_results.unwrap_or_default(), next))
                }
            })
            .await?;
            let mut values: BTreeMap<(usize, usize), BTreeMap<i64, f64>> = BTreeMap::new();
            for result in &results {
                let Some(id) = result.id() else { continue };
                let Some((n, s)) = id
                    .strip_prefix('q')
                    .and_then(|rest| rest.split_once('s'))
                    .and_then(|(n, s)| Some((n.parse().ok()?, s.parse().ok()?)))
                else {
                    continue;
                };
                let series = values.entry((n, s)).or_default();
                for (t, v) in result.timestamps().iter().zip(result.values()) {
                    series.insert(ts(t).as_second(), *v);
                }
            }
            for (n, (index, q)) in chunk.iter().enumerate() {
                let min = values.remove(&(n, 0)).unwrap_or_default();
                let max = values.remove(&(n, 1)).unwrap_or_default();
                let avg = values.remove(&(n, 2)).unwrap_or_default();
                let from = align_down(q.start, q.period_s).as_second();
                out[*index] = min
                    .iter()
                    .filter(|(t, _)| **t >= from)
                    .filter_map(|(t, minimum)| {
                        Some(Datapoint {
                            start: Timestamp::from_second(*t).ok()?,
                            period_s: q.period_s,
                            minimum: *minimum,
                            maximum: *max.get(t).unwrap_or(minimum),
                            average: *avg.get(t).unwrap_or(minimum),
                        })
                    })
                    .collect();
            }
        }
        Ok(())
    }
}

impl Metrics for AwsMetrics {
    fn fetch(
        &self,
        queries: &[MetricQuery],
    ) -> impl Future<Output = PortResult<Vec<Vec<Datapoint>>>> + Send {
        boxed(async move {
            let mut out = vec![Vec::new(); queries.len()];
            // One window per period: from the earliest start to the latest end, aligned to the
            // period; each series then keeps only its own points.
            let mut by_period: BTreeMap<u32, Vec<(usize, &MetricQuery)>> = BTreeMap::new();
            for (i, q) in queries.iter().enumerate() {
                by_period.entry(q.period_s).or_default().push((i, q));
            }
            for (period, qs) in by_period {
                let start = qs.iter().map(|(_, q)| q.start).min().unwrap_or_default();
                let end = qs.iter().map(|(_, q)| q.end).max().unwrap_or_default();
                let (start, end) = (align_down(start, period), align_up(end, period));
                if start >= end {
                    continue;
                }
                self.fetch_window(start, end, &qs, &mut out).await?;
            }
            Ok(out)
        })
    }

    fn put_heartbeat(&self, migration: &str) -> impl Future<Output = PortResult<()>> + Send {
        boxed(async move {
            self.put_count(
                MetricDatum::builder()
                    .metric_name(HEARTBEAT_METRIC)
                    .dimensions(migration_dimension(migration)),
            )
            .await
        })
    }

    fn ensure_heartbeat_alarm(
        &self,
        alarm: &str,
        migration: &str,
    ) -> impl Future<Output = PortResult<()>> + Send {
        boxed(async move {
            // PutMetricAlarm creates or overwrites: idempotent by name.
            let request = self.client
            .put_metric_alarm()
            .alarm_name(alarm)
            .alarm_description(format!(
                "aurora-migrator: migration {migration} has a quarantined source and its agent stopped reporting; the source takes no writes until someone acts (see the runbook: restore its security groups or restart the agent)"
            ))
            .namespace(&self.namespace)
            .metric_name(HEARTBEAT_METRIC)
            .dimensions(migration_dimension(migration))
            .statistic(Statistic::SampleCount)
            .period(60)
            .evaluation_periods(5)
            .datapoints_to_alarm(5)
            .threshold(1.0)
            .comparison_operator(ComparisonOperator::LessThanThreshold)
            .treat_missing_data("breaching")
            .alarm_actions(&self.topic_arn)
            .ok_actions(&self.topic_arn);
            call(&self.calls, "monitoring:PutMetricAlarm", request.send())
                .await
                .map(drop)
        })
    }

    fn delete_alarm(&self, alarm: &str) -> impl Future<Output = PortResult<()>> + Send {
        boxed(async move {
            let request = self.client.delete_alarms().alarm_names(alarm);
            // Already gone: deleted.
            found(call(&self.calls, "monitoring:DeleteAlarms", request.send()).await).map(drop)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_align_to_the_period() {
        let t: Timestamp = "2026-11-25T10:00:30.5Z".parse().unwrap();
        assert_eq!(align_down(t, 60).to_string(), "2026-11-25T10:00:00Z");
        assert_eq!(align_up(t, 60).to_string(), "2026-11-25T10:01:00Z");
        let exact: Timestamp = "2026-11-25T10:01:00Z".parse().unwrap();
        assert_eq!(align_up(exact, 60), exact);
    }
}
