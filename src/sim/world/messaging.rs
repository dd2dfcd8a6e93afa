//! SNS, SQS and the data access layer: notifications, the queue, and routing (the `Notifier`,
//! `Queue` and `Router` ports).

use super::*;

impl State {
    pub(super) fn route(&mut self, request: &RouteRequest) -> PortResult<()> {
        let now = self.now;
        let Some(id) = self.find_source_id(&request.source) else {
            return Ok(());
        };
        self.sync(&id);
        let target = self
            .clusters
            .iter()
            .find(|(_, c)| {
                c.view
                    .writer_endpoint
                    .as_ref()
                    .is_some_and(|e| e.address == request.endpoint)
            })
            .map(|(n, c)| {
                (
                    n.clone(),
                    c.view.replication_source.is_some() || c.view.status != "available",
                    c.took_writes_at.is_some(),
                )
            });
        match target {
            Some((name, unpromoted, took_writes)) => {
                if unpromoted {
                    self.violation(format!(
                        "traffic of {id} routed to {name}, which is not a promoted cluster"
                    ));
                }
                // Every write the source acknowledged must be on the target that now takes the
                // traffic (a promoted target that is rolled back instead loses nothing).
                let acked = self.sources[&id].acked;
                if let Some(p) = self.sources[&id].promoted_seq
                    && acked > p
                    && !took_writes
                {
                    self.violation(format!(
                            "acknowledged write lost: {id} acknowledged writes up to #{acked}, the promoted target {name} that now takes its traffic holds only up to #{p}"
                        ));
                }
                let c = self.clusters.get_mut(&name).expect("found");
                c.took_writes_at.get_or_insert(now);
                let s = self.sources.get_mut(&id).expect("found");
                s.route_called_at.get_or_insert(now);
                s.routed_at.get_or_insert(now);
                self.log(|| format!("{id}: traffic routed to {name}"));
            }
            None => self.log(|| format!("{id}: traffic routed to {}", request.endpoint)),
        }
        Ok(())
    }
}

impl Notifier for SimPort {
    async fn publish(&self, note: &Notification) -> PortResult<()> {
        // The execution guard refused an irreversible action: the machine asked for something
        // unsafe. Nothing happened in the world, but it is a bug all the same.
        if note.event == "safety-refusal" {
            self.lock().violation(format!(
                "{}: refused at execution: {}",
                note.db_instance, note.description
            ));
        }
        self.call("sns:Publish", true, |s| {
            let now = s.now;
            if note.severity >= Severity::Warning || note.event != "phase-change" {
                let (sev, db, title) =
                    (note.severity, note.db_instance.clone(), note.title.clone());
                s.log(|| format!("{db}: notification [{}] {title}", sev.as_str()));
            }
            if note.severity == Severity::Error {
                s.error_notified.insert(note.db_instance.clone());
            }
            s.notes.push((now, note.clone()));
            Ok(())
        })
        .await
    }
}

impl Queue for SimPort {
    async fn receive(
        &self,
        _max: u32,
        _wait_s: u32,
        _visibility_s: u32,
    ) -> PortResult<Vec<QueueMessage>> {
        // The executor plays the agent's receive loop; the agent itself never receives.
        Ok(Vec::new())
    }

    async fn delete(&self, receipt: &str) -> PortResult<()> {
        self.call("sqs:DeleteMessage", true, |s| {
            s.queue.delete(receipt);
            Ok(())
        })
        .await
    }

    async fn extend_visibility(&self, receipt: &str, seconds: u32) -> PortResult<()> {
        self.call("sqs:ChangeMessageVisibility", true, |s| {
            let now = s.now;
            s.queue.extend(receipt, now, seconds);
            Ok(())
        })
        .await
    }

    async fn send(&self, body: &str, delay_s: u32) -> PortResult<()> {
        self.call("sqs:SendMessage", true, |s| {
            let now = s.now;
            let late = s.received_late_ms;
            s.queue
                .send(body, now, i64::from(delay_s.min(900)) * SEC + late);
            Ok(())
        })
        .await
    }
}

impl Router for SimPort {
    /// The webhook's data access layer takes a route at once; Route 53 accepts a change that
    /// traffic follows when it is in sync (`route53.rs`); an RDS Proxy's new target takes
    /// traffic when it is available (`rds_proxy.rs`); PgBouncer's companion re-points and
    /// resumes, and traffic follows at once (`pgbouncer.rs`).
    async fn route(&self, request: &RouteRequest) -> PortResult<RouteProgress> {
        match &request.router {
            RouterChoice::Webhook => self
                .call("router:Webhook", true, |s| s.route(request))
                .await
                .map(|()| RouteProgress::InEffect),
            RouterChoice::PgBouncer { .. } => self
                .call("pgbouncer:route", true, |s| s.pooler_route(request))
                .await
                .map(|()| RouteProgress::InEffect),
            RouterChoice::Route53 { .. } => {
                self.call("route53:ChangeResourceRecordSets", true, |s| {
                    s.route53_upsert(request)
                })
                .await
            }
            RouterChoice::RdsProxy { .. } => {
                self.call("rds:RegisterDBProxyTargets", true, |s| {
                    s.proxy_point(request)
                })
                .await
            }
        }
    }

    async fn view(&self, router: &RouterChoice) -> PortResult<Option<RouterView>> {
        match router {
            RouterChoice::Webhook => Ok(None),
            RouterChoice::PgBouncer { .. } => {
                self.call("pgbouncer:entry", false, |s| {
                    Ok(s.pooler_view(router).map(RouterView::Pooler))
                })
                .await
            }
            RouterChoice::Route53 { record, .. } => {
                self.call("route53:ListResourceRecordSets", false, |s| {
                    Ok(s.route53_record(record).map(RouterView::Dns))
                })
                .await
            }
            RouterChoice::RdsProxy { proxy } => {
                self.call("rds:DescribeDBProxies", false, |s| {
                    Ok(s.proxy_view(proxy).map(RouterView::Proxy))
                })
                .await
            }
        }
    }

    async fn route_status(&self, router: &RouterChoice, change: &str) -> PortResult<RouteProgress> {
        match router {
            RouterChoice::Webhook | RouterChoice::PgBouncer { .. } => Ok(RouteProgress::InEffect),
            RouterChoice::Route53 { .. } => {
                self.call("route53:GetChange", false, |s| s.route53_status(change))
                    .await
            }
            RouterChoice::RdsProxy { proxy } => {
                self.call("rds:DescribeDBProxyTargets", false, |s| {
                    s.proxy_status(proxy, change)
                })
                .await
            }
        }
    }

    /// PgBouncer's PAUSE (`pgbouncer.rs`; also proven against a real one,
    /// `tests/postgres_pgbouncer.rs`).
    async fn hold(&self, request: &RouteRequest) -> PortResult<()> {
        self.call("pgbouncer:hold", true, |s| s.pooler_hold(request))
            .await
    }

    async fn release(&self, request: &RouteRequest) -> PortResult<()> {
        self.call("pgbouncer:release", true, |s| s.pooler_release(request))
            .await
    }

    async fn smoke_test(&self, _request: &RouteRequest) -> PortResult<()> {
        self.call("router:SmokeTest", false, |_| Ok(())).await
    }
}
