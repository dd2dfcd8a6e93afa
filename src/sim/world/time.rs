//! Virtual time: advancing the world to a moment, the scheduled AWS operations finishing,
//! events delivered (late, twice or never as the seed says), and the `Clock` port.

use super::port::Delay;
use super::*;

impl State {
    // ----- time --------------------------------------------------------------------------

    /// Processes every world event due at or before `to`, in order, then moves time to `to`.
    pub fn advance(&mut self, to: Ms) {
        while let Some((&(t, s), _)) = self.scheduled.iter().next() {
            if t > to {
                break;
            }
            let ev = self.scheduled.remove(&(t, s)).expect("just seen");
            self.now = self.now.max(t);
            self.apply(ev);
        }
        self.now = self.now.max(to);
    }

    /// Integrates writes and replication of one source up to now, and checks that no write is
    /// acknowledged after its target was promoted.
    pub(super) fn sync(&mut self, id: &str) {
        let now = self.now;
        let Some(s) = self.sources.get_mut(id) else {
            return;
        };
        let dt = now - s.last_sync;
        if dt > 0 {
            if s.was_writable {
                s.writable_ms += dt as u64;
                s.acked = s.writable_ms * s.write_rate / 1000;
            }
            s.last_sync = now;
        }
        let acked = s.acked;
        let target = acked.saturating_sub(s.backlog(now));
        let apply = s.apply_rate * dt.max(0) as u64 / 1000;
        let arn = s.view.arn.clone();
        let promoted = s.promoted_seq;
        for c in self.clusters.values_mut() {
            if c.replicating && c.view.replication_source.as_deref() == Some(arn.as_str()) {
                if c.view.status == "creating" {
                    continue;
                }
                c.applied = c.applied.max(target.min(c.applied + apply));
            }
        }
        // Once traffic is on the promoted target, the source must never acknowledge another
        // write: it would exist on neither side after the move (split brain).
        let routed = self.sources.get(id).is_some_and(|s| s.routed_at.is_some());
        if let (Some(p), true) = (promoted, routed)
            && acked > p
        {
            let id = id.to_string();
            if let Some(s) = self.sources.get_mut(&id) {
                s.promoted_seq = Some(acked); // report once per burst
            }
            self.violation(format!(
                    "the source took writes after the target did: {id} acknowledged writes up to #{acked} after its traffic moved to a target holding up to #{p}"
                ));
        }
    }

    /// Re-reads the writability of a source after a change (the caller synced it first).
    pub(super) fn refresh(&mut self, id: &str) {
        let now = self.now;
        let Some(s) = self.sources.get_mut(id) else {
            return;
        };
        if s.reachable() {
            // The application's pool connects (again): new sessions from now on.
            if !s.sessions_open || s.lone_client {
                s.sessions_since = now;
                s.lone_client = false;
            }
            s.sessions_open = true;
        }
        s.period_sessions_any |= s.sessions_open && s.up();
        let w = s.writable();
        if w != s.was_writable {
            // Keep the backlog continuous across the change.
            let b = s.backlog(now);
            let d = s.repl_delay_ms;
            let ms = (b * 1000).checked_div(s.write_rate).unwrap_or(0) as Ms;
            s.changed_at = if w { now - ms } else { now - (d - ms) };
            s.was_writable = w;
        }
    }

    pub(super) fn apply(&mut self, ev: Ev) {
        match ev {
            Ev::Minute => {
                self.close_period();
                self.schedule(MIN, Ev::Minute);
            }
            Ev::Resync => {
                let body = format!(
                    r#"{{"version":"0","id":"resync-{}","detail-type":"Scheduled Event","source":"aws.events","account":"{ACCOUNT}","time":"{}","region":"{REGION}","resources":[],"detail":{{}}}}"#,
                    self.now,
                    self.ts(self.now)
                );
                let now = self.now;
                self.queue.send(&body, now, 0);
                let every = self.resync_every_ms;
                self.schedule(every, Ev::Resync);
            }
            Ev::TagSet(id) => {
                let Some(s) = self.sources.get(&id) else {
                    return;
                };
                let arn = s.view.arn.clone();
                self.log(|| format!("{id}: tagged aurora-migration=start"));
                let body = format!(
                    r#"{{"version":"0","id":"tag-{id}","detail-type":"Tag Change on Resource","source":"aws.tag","account":"{ACCOUNT}","time":"{}","region":"{REGION}","resources":["{arn}"],"detail":{{"changed-tag-keys":["aurora-migration"],"service":"rds","resource-type":"db","version":1,"tags":{{"aurora-migration":"start"}}}}}}"#,
                    self.ts(self.now)
                );
                self.deliver(&body);
            }
            Ev::GroupsApplied(id) => {
                self.sync(&id);
                let now = self.now;
                let quarantine: BTreeSet<String> = self.quarantine_ids();
                if let Some(s) = self.sources.get_mut(&id)
                    && let Some(new) = s.pending_groups.take()
                {
                    s.view.security_groups = new
                        .iter()
                        .map(|g| GroupMembership {
                            id: g.clone(),
                            status: "active".to_string(),
                        })
                        .collect();
                    if s.view.status == "modifying" {
                        s.view.status = "available".to_string();
                    }
                    if new.iter().all(|g| quarantine.contains(g)) {
                        s.quarantine_applied_at.get_or_insert(now);
                    }
                }
                self.refresh(&id);
                self.log(|| format!("{id}: security group change applied"));
            }
            Ev::RebootDone(id) => {
                self.sync(&id);
                let now = self.now;
                let arn = match self.sources.get_mut(&id) {
                    Some(s) if s.deleted_at.is_none() => {
                        s.view.status = "available".to_string();
                        s.restarted_at.get_or_insert(now);
                        s.view.arn.clone()
                    }
                    _ => return,
                };
                self.refresh(&id);
                self.rds_event(&id, &arn, "DB instance restarted", "RDS-EVENT-0006", true);
            }
            Ev::ClusterCreated(name) => {
                let Some(c) = self.clusters.get_mut(&name) else {
                    return;
                };
                if c.view.status != "creating" {
                    return;
                }
                c.view.status = if c.fails { "failed" } else { "available" }.to_string();
                c.applied = c.snapshot_seq;
                let arn = c.view.arn.clone();
                let status = c.view.status.clone();
                self.log(|| format!("{name}: cluster {status}"));
                self.rds_event(&name, &arn, "DB cluster created", "RDS-EVENT-0170", false);
            }
            Ev::WriterCreated(name) => {
                let Some(c) = self.clusters.get_mut(&name) else {
                    return;
                };
                for m in &mut c.view.members {
                    m.status = "available".to_string();
                }
                c.view.writer_endpoint = Some(Endpoint {
                    address: format!("{name}.cluster-abc.{REGION}.rds.amazonaws.com"),
                    port: 5432,
                });
                self.log(|| format!("{name}: writer instance available"));
            }
            Ev::PromoteDone(name) => {
                let Some(c) = self.clusters.get(&name) else {
                    return;
                };
                if c.stuck || c.view.status != "promoting" {
                    return;
                }
                let src = c.source.clone();
                self.sync(&src);
                let now = self.now;
                let c = self.clusters.get_mut(&name).expect("seen above");
                c.view.status = "available".to_string();
                c.view.replication_source = None;
                let applied = c.applied;
                let arn = c.view.arn.clone();
                let acked = self.sources.get(&src).map_or(0, |s| s.acked);
                if let Some(s) = self.sources.get_mut(&src) {
                    s.promoted_seq = Some(applied);
                    s.promoted_at.get_or_insert(now);
                }
                self.log(|| format!("{name}: promoted (target holds writes up to #{applied}, source acknowledged #{acked})"));
                self.rds_event(
                    &name,
                    &arn,
                    "Promoted Read Replica cluster to a stand-alone database cluster",
                    "RDS-EVENT-0172",
                    false,
                );
            }
            Ev::ClusterDeleted(name) => {
                self.clusters.remove(&name);
                self.log(|| format!("{name}: cluster deleted"));
            }
            Ev::SnapshotDone(name) => {
                if let Some(s) = self.snapshots.get_mut(&name) {
                    s.1 = "available".to_string();
                }
                self.log(|| format!("{name}: snapshot available"));
            }
            Ev::ClientReconnects(id) => self.client_reconnects(&id),
            Ev::Route53InSync(change) => self.route53_in_sync(&change),
            Ev::ProxyTargetAvailable(source) => self.proxy_target_available(&source),
            Ev::SourceDeleted(id) => {
                self.sync(&id);
                let now = self.now;
                if let Some(s) = self.sources.get_mut(&id) {
                    s.deleted_at = Some(now);
                }
                self.refresh(&id);
                self.log(|| format!("{id}: source deleted"));
            }
        }
    }

    pub(super) fn quarantine_ids(&self) -> BTreeSet<String> {
        self.groups
            .values()
            .filter(|g| g.view.name.starts_with("aurora-migrator-quarantine"))
            .map(|g| g.view.id.clone())
            .collect()
    }

    /// Puts an EventBridge message on the queue, late, twice or never as the seed says.
    pub(super) fn deliver(&mut self, body: &str) {
        let i = self.plan.intensity.clone();
        let r = &mut self.fault_rng;
        if r.chance(i.event_lost) {
            self.log(|| "fault: event lost".to_string());
            return;
        }
        let late = if r.chance(i.event_late) {
            r.range(5 * SEC, 3 * MIN)
        } else {
            r.range(200, 2 * SEC)
        };
        let twice = r.chance(i.event_duplicated);
        let again = r.range(SEC, 2 * MIN);
        let now = self.now;
        self.queue.send(body, now, late);
        if twice {
            self.queue.send(body, now, again);
        }
    }

    pub(super) fn rds_event(
        &mut self,
        id: &str,
        arn: &str,
        message: &str,
        event_id: &str,
        instance: bool,
    ) {
        let now = self.now;
        let visible = now + self.world_rng.range(0, 20 * SEC);
        if instance {
            self.events
                .push((visible, now, id.to_string(), message.to_string()));
        }
        self.log(|| format!("{id}: event \"{message}\""));
        self.event_id += 1;
        let kind = if instance {
            "RDS DB Instance Event"
        } else {
            "RDS DB Cluster Event"
        };
        let body = format!(
            r#"{{"version":"0","id":"ev-{}","detail-type":"{kind}","source":"aws.rds","account":"{ACCOUNT}","time":"{t}","region":"{REGION}","resources":["{arn}"],"detail":{{"EventCategories":["notification"],"SourceType":"DB_INSTANCE","SourceArn":"{arn}","Date":"{t}","Message":"{message}","SourceIdentifier":"{id}","EventID":"{event_id}"}}}}"#,
            self.event_id,
            t = self.ts(now)
        );
        self.deliver(&body);
    }
}

impl Clock for SimPort {
    fn now(&self) -> Timestamp {
        let s = self.lock();
        s.ts(s.now)
    }

    async fn sleep(&self, d: std::time::Duration) {
        let until = self.lock().now + d.as_millis() as Ms;
        Delay::until(&self.state, until).await;
    }
}
