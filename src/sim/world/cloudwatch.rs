//! CloudWatch: the periods each source and writer publish (late, as RDS does), and the
//! `Metrics` port (GetMetricData, the heartbeat and its alarm).

use super::*;

impl State {
    // ----- CloudWatch ----------------------------------------------------------------------

    pub(super) fn close_period(&mut self) {
        let end = self.now;
        let start = end - MIN;
        let ids: Vec<String> = self
            .sources
            .iter()
            .filter(|(_, s)| s.deleted_at.is_none())
            .map(|(k, _)| k.clone())
            .collect();
        for id in ids {
            self.sync(&id);
            self.refresh(&id);
            let delay = self.world_rng.range(20 * SEC, 2 * MIN);
            let coin = self.world_rng.chance(0.5);
            let noise = self.world_rng.unit();
            let s = self.sources.get(&id).expect("listed");
            let writes = s.acked - s.period_acked_start;
            let replica = self.clusters.values().find(|c| {
                c.replicating && c.view.replication_source.as_deref() == Some(&s.view.arn)
            });
            let lag_writes = replica.map_or(0, |c| s.acked.saturating_sub(c.applied));
            let (slot_min, slot_max) = if s.permanent == Some(PermanentFault::StaleLogicalSlot) {
                let stale = 3.0 * GIB + (end / MIN) as f64 * 1e6;
                (stale, stale)
            } else if replica.is_none() {
                (0.0, 0.0)
            } else if writes == 0 && lag_writes == 0 {
                (0.0, if coin { 64.0 * MIB as f64 } else { 0.0 })
            } else {
                let b = (lag_writes.max(1) * s.bytes_per_write) as f64;
                (b, b + 64.0 * MIB as f64)
            };
            let conns = if s.period_sessions_any {
                f64::from(s.clients)
            } else {
                0.0
            };
            let free = f64::from(s.view.allocated_storage_gib) * GIB * 0.6 - slot_max;
            let wal = (writes * s.bytes_per_write) as f64 / 60.0;
            let rate = s.write_rate.max(1) as f64;
            let lag_s = lag_writes as f64 / rate;
            let cpu = 20.0 + 10.0 * noise;
            let restarted = s.restarted_at;
            let mut points: Vec<(String, MetricKey, f64, f64)> = vec![
                (id.clone(), MetricKey::SourceSlotLag, slot_min, slot_max),
                (id.clone(), MetricKey::SourceConnections, conns, conns),
                (id.clone(), MetricKey::SourceFreeStorage, free, free),
                (id.clone(), MetricKey::SourceWalGeneration, wal, wal),
                (id.clone(), MetricKey::SourceCpu, cpu, cpu),
                (id.clone(), MetricKey::SourceWriteLatency, 0.002, 0.002),
                (id.clone(), MetricKey::SourceReadLatency, 0.001, 0.001),
            ];
            for c in self.clusters.values().filter(|c| c.source == id) {
                let Some(w) = c.view.members.first() else {
                    continue;
                };
                if w.status != "available" || c.view.status == "deleting" {
                    continue;
                }
                let name = w.identifier.clone();
                if c.replicating {
                    points.push((name.clone(), MetricKey::TargetReplicaLag, lag_s, lag_s));
                }
                let iops = if c.took_writes_at.is_some() {
                    rate
                } else {
                    0.0
                };
                points.push((name.clone(), MetricKey::TargetCpu, cpu * 0.9, cpu * 0.9));
                points.push((name.clone(), MetricKey::TargetWriteLatency, 0.002, 0.002));
                points.push((name.clone(), MetricKey::TargetReadLatency, 0.001, 0.001));
                // Clients reach Aurora only while it is not fenced by the quarantine group.
                let fenced = c
                    .view
                    .security_groups
                    .iter()
                    .all(|g| g.id.starts_with("sg-q"));
                let target_conns = if c.took_writes_at.is_some() && !fenced {
                    20.0
                } else {
                    0.0
                };
                points.push((name.clone(), MetricKey::TargetWriteIops, iops, iops));
                points.push((
                    name,
                    MetricKey::TargetConnections,
                    target_conns,
                    target_conns,
                ));
            }
            for (inst, key, lo, hi) in points {
                let series = self.metrics.entry((inst, key)).or_default();
                series.push_back((
                    end + delay,
                    Datapoint {
                        start: self.epoch + SignedDuration::from_millis(start),
                        period_s: 60,
                        minimum: lo,
                        maximum: hi,
                        average: (lo + hi) / 2.0,
                    },
                ));
                if series.len() > SERIES_KEPT {
                    series.pop_front();
                }
            }
            let s = self.sources.get_mut(&id).expect("listed");
            if restarted.is_some_and(|r| start >= r) && s.first_metric_after_restart.is_none() {
                s.first_metric_after_restart = Some(end + delay);
            }
            s.period_acked_start = s.acked;
            s.period_sessions_any = s.sessions_open && s.up();
        }
    }
}

impl Metrics for SimPort {
    async fn fetch(&self, queries: &[MetricQuery]) -> PortResult<Vec<Vec<Datapoint>>> {
        for _ in 1..queries.len().div_ceil(500) {
            self.call("cloudwatch:GetMetricData", false, |_| Ok(()))
                .await?;
        }
        self.call("cloudwatch:GetMetricData", false, |s| {
            let now = s.now;
            Ok(queries
                .iter()
                .map(|q| {
                    s.metrics
                        .get(&(q.instance.clone(), q.key))
                        .map(|series| {
                            series
                                .iter()
                                .filter(|(vis, p)| {
                                    *vis <= now && p.start >= q.start && p.start < q.end
                                })
                                .map(|(_, p)| *p)
                                .collect()
                        })
                        .unwrap_or_default()
                })
                .collect())
        })
        .await
    }

    async fn put_heartbeat(&self, _migration: &str) -> PortResult<()> {
        self.call("cloudwatch:PutMetricData", true, |_| Ok(()))
            .await
    }

    async fn ensure_heartbeat_alarm(&self, alarm: &str, _migration: &str) -> PortResult<()> {
        self.call("cloudwatch:PutMetricAlarm", true, |s| {
            s.alarms.insert(alarm.to_string());
            Ok(())
        })
        .await
    }

    async fn delete_alarm(&self, alarm: &str) -> PortResult<()> {
        self.call("cloudwatch:DeleteAlarms", true, |s| {
            s.alarms.remove(alarm);
            Ok(())
        })
        .await
    }
}
