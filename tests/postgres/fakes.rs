//! The ports that need no database: EC2 security groups, SNS, SQS, DynamoDB, the data access
//! layer and the clock, in memory.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aurora_migrator::core::action::{QuarantineGroupSpec, RouteRequest};
use aurora_migrator::core::migration::{Migration, MigrationId};
use aurora_migrator::core::notification::Notification;
use aurora_migrator::core::observation::{GroupLocation, Observed, SecurityGroup};
use aurora_migrator::core::router::{RouteProgress, RouterChoice, RouterView};
use aurora_migrator::pgbouncer::router::PgBouncerRouter;
use aurora_migrator::ports::{
    Clock, Lease, LeaseError, Network, Notifier, PortResult, Queue, QueueMessage, Router,
    StateStore, StoreError,
};
use jiff::{SignedDuration, Timestamp};

use super::world::Shared;

// ----- EC2 ---------------------------------------------------------------------------------

#[derive(Clone, Default)]
pub struct MemNetwork {
    pub groups: Arc<Mutex<BTreeMap<String, SecurityGroup>>>,
}

impl Network for MemNetwork {
    async fn describe_group(
        &self,
        _vpc_id: &str,
        name: &str,
    ) -> PortResult<Observed<SecurityGroup>> {
        Ok(self.groups.lock().unwrap().get(name).cloned().into())
    }

    async fn ensure_quarantine_group(&self, spec: &QuarantineGroupSpec) -> PortResult<String> {
        let mut g = self.groups.lock().unwrap();
        let group = g.entry(spec.name.clone()).or_insert_with(|| SecurityGroup {
            id: format!("sg-quarantine-{}", spec.name.len()),
            name: spec.name.clone(),
            ingress_sources: vec![],
            egress_rules: 0,
        });
        group.ingress_sources = spec.allow_from.clone();
        group.egress_rules = 0;
        Ok(group.id.clone())
    }

    async fn delete_group(&self, group_id: &str) -> PortResult<()> {
        self.groups.lock().unwrap().retain(|_, g| g.id != group_id);
        Ok(())
    }

    /// This test declares no CDC consumers.
    async fn locate_groups(&self, _ids: &[String]) -> PortResult<Vec<GroupLocation>> {
        Ok(Vec::new())
    }
}

// ----- SNS, SQS, DynamoDB, the data access layer, the clock --------------------------------

#[derive(Clone, Default)]
pub struct MemNotifier {
    pub sent: Arc<Mutex<Vec<Notification>>>,
}

impl Notifier for MemNotifier {
    async fn publish(&self, note: &Notification) -> PortResult<()> {
        eprintln!("[sns] {}", note.subject());
        self.sent.lock().unwrap().push(note.clone());
        Ok(())
    }
}

#[derive(Debug)]
struct Queued {
    id: u64,
    body: String,
    visible_at: Instant,
    receive_count: u32,
}

/// A queue with SQS's delays; the test's loop takes messages in the order they become visible.
#[derive(Clone, Default)]
pub struct MemQueue {
    inner: Arc<Mutex<(u64, VecDeque<Queued>)>>,
}

impl MemQueue {
    fn push(&self, body: String, delay: Duration, receive_count: u32) {
        let mut q = self.inner.lock().unwrap();
        q.0 += 1;
        let id = q.0;
        q.1.push_back(Queued {
            id,
            body,
            visible_at: Instant::now() + delay,
            receive_count,
        });
    }

    /// Removes the message that becomes visible first and says when.
    pub fn take_next(&self) -> Option<(QueueMessage, Instant)> {
        let mut q = self.inner.lock().unwrap();
        let i = (0..q.1.len()).min_by_key(|i| q.1[*i].visible_at)?;
        let m = q.1.remove(i)?;
        Some((
            QueueMessage {
                id: m.id.to_string(),
                receipt: m.id.to_string(),
                body: m.body,
                receive_count: m.receive_count + 1,
            },
            m.visible_at,
        ))
    }

    /// A message the agent left: visible again after the visibility timeout.
    pub fn put_back(&self, m: &QueueMessage, after: Duration) {
        self.push(m.body.clone(), after, m.receive_count);
    }
}

impl Queue for MemQueue {
    async fn receive(
        &self,
        max: u32,
        _wait_s: u32,
        _visibility_s: u32,
    ) -> PortResult<Vec<QueueMessage>> {
        let now = Instant::now();
        let mut out = Vec::new();
        while out.len() < max as usize {
            match self.take_next() {
                Some((m, at)) if at <= now => out.push(m),
                Some((m, at)) => {
                    self.push(m.body, at - now, m.receive_count - 1);
                    break;
                }
                None => break,
            }
        }
        Ok(out)
    }

    async fn delete(&self, _receipt: &str) -> PortResult<()> {
        Ok(())
    }

    async fn extend_visibility(&self, _receipt: &str, _seconds: u32) -> PortResult<()> {
        Ok(())
    }

    async fn send(&self, body: &str, delay_s: u32) -> PortResult<()> {
        self.push(body.to_string(), Duration::from_secs(u64::from(delay_s)), 0);
        Ok(())
    }
}

/// Migration records with DynamoDB's conditional write on the version.
#[derive(Clone, Default)]
pub struct MemStore {
    pub records: Arc<Mutex<HashMap<MigrationId, Migration>>>,
    /// Each record's lease, as DynamoDB's item would hold it, under the rule the simulator's
    /// store and DynamoDB's conditions share (`Lease::take`, `Lease::set_expiry`).
    pub leases: Arc<Mutex<HashMap<MigrationId, Lease>>>,
}

impl MemStore {
    pub fn latest_now(&self, resource_id: &str) -> Option<Migration> {
        self.records
            .lock()
            .unwrap()
            .values()
            .filter(|m| m.id.resource_id == resource_id)
            .max_by_key(|m| m.id.attempt)
            .cloned()
    }
}

impl StateStore for MemStore {
    async fn load(&self, id: &MigrationId) -> PortResult<Option<Migration>> {
        Ok(self.records.lock().unwrap().get(id).cloned())
    }

    async fn latest(&self, resource_id: &str) -> PortResult<Option<Migration>> {
        Ok(self.latest_now(resource_id))
    }

    async fn create(&self, m: &Migration) -> Result<u64, StoreError> {
        self.write(m)
    }

    async fn save(&self, m: &Migration, lease: &Lease) -> Result<u64, StoreError> {
        let ours = self
            .leases
            .lock()
            .unwrap()
            .get(&m.id)
            .is_some_and(|l| l.is_same_taking(lease));
        if !ours {
            return Err(StoreError::LeaseLost);
        }
        self.write(m)
    }

    async fn acquire_lease(
        &self,
        id: &MigrationId,
        holder: &str,
        now: Timestamp,
        ttl: SignedDuration,
    ) -> Result<Lease, LeaseError> {
        let mut leases = self.leases.lock().unwrap();
        let lease = Lease::take(id, leases.get(id), holder, now, ttl)?;
        leases.insert(id.clone(), lease.clone());
        Ok(lease)
    }

    async fn renew_lease(
        &self,
        lease: &Lease,
        now: Timestamp,
        ttl: SignedDuration,
    ) -> Result<Lease, LeaseError> {
        let mut leases = self.leases.lock().unwrap();
        Lease::set_expiry(leases.get_mut(&lease.id), lease, now + ttl)
    }

    async fn release_lease(&self, lease: &Lease) -> Result<(), LeaseError> {
        let mut leases = self.leases.lock().unwrap();
        Lease::set_expiry(leases.get_mut(&lease.id), lease, Timestamp::UNIX_EPOCH).map(drop)
    }

    async fn list(&self) -> PortResult<Vec<Migration>> {
        Ok(self.records.lock().unwrap().values().cloned().collect())
    }

    async fn fleet_paused(&self) -> PortResult<bool> {
        Ok(false)
    }

    async fn set_fleet_paused(&self, _paused: bool) -> PortResult<()> {
        Ok(())
    }
}

impl MemStore {
    /// The conditional write on the version.
    fn write(&self, m: &Migration) -> Result<u64, StoreError> {
        let mut r = self.records.lock().unwrap();
        let stored = r.get(&m.id).map_or(0, |x| x.version);
        if stored != m.version {
            return Err(StoreError::VersionConflict {
                expected: m.version,
            });
        }
        let mut next = m.clone();
        next.version = m.version + 1;
        r.insert(m.id.clone(), next);
        Ok(m.version + 1)
    }
}

/// The data access layer: where applications send their writes.
#[derive(Clone)]
pub struct MemRouter {
    /// Where each route is also written down, in order with the RDS mutations.
    pub shared: Arc<Shared>,
    pub endpoint: Arc<Mutex<(String, u16)>>,
    pub routes: Arc<Mutex<Vec<(Timestamp, RouteRequest)>>>,
    /// The agent's own PgBouncer router (to a real companion), for migrations that route
    /// through PgBouncer; every other route is the data access layer above.
    pub pgbouncer: Option<Arc<PgBouncerRouter>>,
}

impl MemRouter {
    /// The PgBouncer router, when `router` is one and the world has it.
    fn pgbouncer_for(&self, router: &RouterChoice) -> Option<&PgBouncerRouter> {
        matches!(router, RouterChoice::PgBouncer { .. })
            .then_some(())
            .and(self.pgbouncer.as_deref())
    }
}

impl Router for MemRouter {
    async fn route(&self, request: &RouteRequest) -> PortResult<RouteProgress> {
        eprintln!("[router] {}:{}", request.endpoint, request.port);
        if let Some(p) = self.pgbouncer_for(&request.router) {
            p.route(request).await?;
        }
        self.shared.log(format!(
            "route_traffic {}:{}",
            request.endpoint, request.port
        ));
        *self.endpoint.lock().unwrap() = (request.endpoint.clone(), request.port);
        self.routes
            .lock()
            .unwrap()
            .push((Timestamp::now(), request.clone()));
        Ok(RouteProgress::InEffect)
    }

    async fn view(&self, router: &RouterChoice) -> PortResult<Option<RouterView>> {
        match self.pgbouncer_for(router) {
            Some(p) => Ok(p.view(router).await?.map(RouterView::Pooler)),
            None => Ok(None),
        }
    }

    async fn route_status(
        &self,
        _router: &RouterChoice,
        _change: &str,
    ) -> PortResult<RouteProgress> {
        Ok(RouteProgress::InEffect)
    }

    async fn smoke_test(&self, _request: &RouteRequest) -> PortResult<()> {
        Ok(())
    }

    async fn hold(&self, request: &RouteRequest) -> PortResult<()> {
        self.shared.log("hold_clients".to_string());
        match self.pgbouncer_for(&request.router) {
            Some(p) => p.hold(request).await,
            None => Ok(()),
        }
    }

    async fn release(&self, request: &RouteRequest) -> PortResult<()> {
        self.shared.log("release_clients".to_string());
        match self.pgbouncer_for(&request.router) {
            Some(p) => p.release(request).await,
            None => Ok(()),
        }
    }
}

pub struct RealClock;

impl Clock for RealClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }

    async fn sleep(&self, d: Duration) {
        tokio::time::sleep(d).await
    }
}
