//! CloudWatch over the real servers: each series sampled when the agent reads it, except the
//! writer's WriteIOPS, which is read from the rows it committed (see `target_writes`).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use aurora_migrator::core::observation::{Datapoint, MetricKey};
use aurora_migrator::ports::{MetricQuery, Metrics, PortResult};
use jiff::Timestamp;

use super::rds::FREE_STORAGE;
use super::server::connect;
use super::world::{Shared, query_f64};

#[derive(Clone)]
pub struct PgMetrics {
    pub shared: Arc<Shared>,
    pub heartbeats: Arc<Mutex<u32>>,
}

impl PgMetrics {
    async fn sample(&self, key: MetricKey) -> Result<Option<f64>, String> {
        let (source_up, standby, writer_up) = {
            let s = self.shared.state.lock().unwrap();
            let up = !s.source_deleted && s.source_status == "available";
            let writer_up = s
                .target
                .as_ref()
                .and_then(|t| t.writer.as_ref())
                .is_some_and(|(_, status)| status == "available");
            (up, self.shared.standby(), writer_up)
        };
        let primary = &self.shared.primary;
        match key {
            // The oldest (only) slot's distance to the current WAL position. No slot, no data.
            MetricKey::SourceSlotLag if source_up => {
                query_f64(
                    primary,
                    "SELECT max(greatest(pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn), 0))::float8 FROM pg_replication_slots",
                )
                .await
            }
            // Client sessions, without walsenders, background workers and the agent's own samples
            // (CloudWatch does not connect; a closing monitoring session must not count).
            MetricKey::SourceConnections if source_up => {
                query_f64(
                    primary,
                    "SELECT count(*)::float8 FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() AND application_name <> 'aurora-migrator-monitor'",
                )
                .await
            }
            MetricKey::SourceWalGeneration if source_up => {
                let lsn = query_f64(
                    primary,
                    "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::float8",
                )
                .await?
                .unwrap_or(0.0);
                let now = Instant::now();
                let prev = self.shared.wal_sample.lock().unwrap().replace((now, lsn));
                Ok(prev.and_then(|(at, before)| {
                    let secs = now.duration_since(at).as_secs_f64();
                    (secs > 0.0).then(|| ((lsn - before) / secs).max(0.0))
                }))
            }
            MetricKey::SourceFreeStorage if source_up => Ok(Some(FREE_STORAGE)),
            MetricKey::SourceCpu | MetricKey::TargetCpu => Ok(Some(5.0)),
            MetricKey::SourceWriteLatency
            | MetricKey::SourceReadLatency
            | MetricKey::TargetWriteLatency
            | MetricKey::TargetReadLatency => Ok(Some(0.001)),
            // DatabaseConnections of the Aurora writer: its client sessions, counted like the
            // source's.
            MetricKey::TargetConnections if writer_up => {
                let Some(standby) = standby else {
                    return Ok(None);
                };
                query_f64(
                    &standby,
                    "SELECT count(*)::float8 FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() AND application_name <> 'aurora-migrator-monitor'",
                )
                .await
            }
            // Seconds behind: 0 when the standby has replayed everything the primary flushed,
            // else the age of its last replayed transaction. Only while it replicates.
            MetricKey::TargetReplicaLag if source_up => {
                let Some(standby) = standby else {
                    return Ok(None);
                };
                let flushed = query_f64(
                    primary,
                    "SELECT pg_wal_lsn_diff(pg_current_wal_flush_lsn(), '0/0')::float8",
                )
                .await?;
                let client = connect(&standby.local()).await?;
                let row = client
                    .query_one(
                        "SELECT pg_is_in_recovery(), pg_wal_lsn_diff(pg_last_wal_replay_lsn(), '0/0')::float8, \
                         extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8",
                        &[],
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                let in_recovery: bool = row.get(0);
                let replayed: Option<f64> = row.get(1);
                let age: Option<f64> = row.get(2);
                if !in_recovery {
                    return Ok(None);
                }
                Ok(Some(match (flushed, replayed) {
                    (Some(f), Some(r)) if r >= f => 0.0,
                    _ => age.unwrap_or(60.0).max(0.001),
                }))
            }
            _ => Ok(None),
        }
    }
}

impl PgMetrics {
    /// WriteIOPS of the Aurora writer over `[q.start, q.end)`, one datapoint per `q.period_s`
    /// (periods without a write are 0, as CloudWatch reports an idle writer): the rows of the
    /// writes table the writer itself committed (`server_port` is the port the client's insert
    /// came in on, so the writer's own; replicated rows carry the source's), bucketed by their
    /// `at` (`clock_timestamp()` of the insert), averaged per second.
    ///
    /// Why rows and not I/O: the writer's only writes are these inserts, and the agent's
    /// `writes-on-target` alert means to say how many writes Aurora took, so one committed row
    /// is one write. A real WriteIOPS counts storage operations, which is a different number
    /// (group commit makes it smaller, page and index writes larger); the test can then compare
    /// the alert's count with the rows exactly. Uncommitted inserts leave no row and are not
    /// counted (nothing of them is on Aurora).
    ///
    /// Simplification: periods start at `q.start` (the agent asks from `routed_at`), where
    /// CloudWatch aligns them to multiples of the period, so its first period would start
    /// before `routed_at`. Read over the local socket, which the quarantine does not close
    /// (CloudWatch does not go through security groups). While the writer restarts: no
    /// datapoints (a gap).
    async fn target_writes(&self, q: &MetricQuery) -> Result<Vec<Datapoint>, String> {
        let Some(standby) = self.shared.standby() else {
            return Ok(vec![]);
        };
        let period = i64::from(q.period_s.max(1));
        let client = connect(&standby.local()).await?;
        // Exact times: microseconds since the epoch, as PostgreSQL stores `at`.
        let (from, to) = (q.start.as_microsecond(), q.end.as_microsecond());
        let rows = client
            .query(
                &format!(
                    "WITH w AS (SELECT 'epoch'::timestamptz + $1::int8 * interval '1 microsecond' AS s, \
                                       'epoch'::timestamptz + $2::int8 * interval '1 microsecond' AS e) \
                     SELECT floor(extract(epoch FROM t.at - w.s) / $3::int8)::int8, count(*)::int8 \
                     FROM {} t, w WHERE t.server_port = $4::int4 AND t.at >= w.s AND t.at < w.e \
                     GROUP BY 1",
                    super::server::TABLE
                ),
                &[&from, &to, &period, &i32::from(standby.port)],
            )
            .await
            .map_err(|e| e.to_string())?;
        let counts: BTreeMap<i64, i64> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        let span = period * 1_000_000;
        let periods = ((to - from).max(0) + span - 1) / span;
        Ok((0..periods)
            .map(|k| {
                let avg = *counts.get(&k).unwrap_or(&0) as f64 / period as f64;
                Datapoint {
                    start: q.start + jiff::SignedDuration::from_secs(k * period),
                    period_s: q.period_s.max(1),
                    minimum: avg,
                    maximum: avg,
                    average: avg,
                }
            })
            .collect())
    }
}

impl Metrics for PgMetrics {
    async fn fetch(&self, queries: &[MetricQuery]) -> PortResult<Vec<Vec<Datapoint>>> {
        let mut out = Vec::with_capacity(queries.len());
        for q in queries {
            if q.key == MetricKey::TargetWriteIops {
                // Unreadable right now (restarting): no datapoints, as a CloudWatch gap.
                out.push(self.target_writes(q).await.unwrap_or_else(|e| {
                    eprintln!("[metrics] WriteIOPS of the writer: {e}");
                    vec![]
                }));
                continue;
            }
            let start = Timestamp::now();
            // A server that cannot be read right now has no datapoint (CloudWatch shows a gap).
            let value = self.sample(q.key).await.unwrap_or(None);
            out.push(
                value
                    .map(|v| Datapoint {
                        start,
                        period_s: 1,
                        minimum: v,
                        maximum: v,
                        average: v,
                    })
                    .into_iter()
                    .collect(),
            );
        }
        Ok(out)
    }

    async fn put_heartbeat(&self, _migration: &str) -> PortResult<()> {
        *self.heartbeats.lock().unwrap() += 1;
        Ok(())
    }

    async fn ensure_heartbeat_alarm(&self, _alarm: &str, _migration: &str) -> PortResult<()> {
        Ok(())
    }

    async fn delete_alarm(&self, _alarm: &str) -> PortResult<()> {
        Ok(())
    }
}
