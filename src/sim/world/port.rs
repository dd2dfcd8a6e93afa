//! The handle the agent talks to (`SimPort`): every call counted, delayed and faulted as the
//! seed says, RDS calls through the adapter's rate limiter and fleet describe cache, and the
//! `World` bundle.

use super::*;

impl State {
    // ----- calls -------------------------------------------------------------------------

    /// Counts a call and draws its latency and fault.
    pub(super) fn begin_call(&mut self, op: &'static str, mutating: bool) -> (Ms, CallFault) {
        *self.calls.entry(op).or_default() += 1;
        // RDS calls wait for the adapter's rate limiter before they leave.
        let queued = if op.starts_with("rds:") {
            let interval = SEC / RDS_REQUESTS_PER_SECOND;
            let start = self.now.max(self.rds_tat - (RDS_BURST - 1) * interval);
            self.rds_tat = self.rds_tat.max(start) + interval;
            *self.rds_per_second.entry(start / SEC).or_default() += 1;
            start - self.now
        } else {
            0
        };
        let n = {
            let c = self.op_counts.entry(op).or_default();
            *c += 1;
            *c
        };
        let scripted = self
            .plan
            .scripted
            .iter()
            .find(|f| f.operation == op && f.nth == n)
            .map(|f| f.fault.clone());
        let i = &self.plan.intensity;
        let r = &mut self.fault_rng;
        let fault = if let Some(f) = scripted {
            f
        } else if r.chance(i.crash) {
            if r.chance(0.5) {
                CallFault::CrashBefore
            } else {
                CallFault::CrashAfter
            }
        } else if r.chance(i.throttle) {
            CallFault::Error(ErrorKind::Throttled)
        } else if r.chance(i.server_error) {
            CallFault::Error(ErrorKind::Retryable)
        } else if mutating && r.chance(i.lost_answer) {
            CallFault::LostAnswer
        } else if r.chance(i.slow) {
            CallFault::Slow(r.range(2 * SEC, 25 * SEC))
        } else {
            CallFault::None
        };
        let latency = match fault {
            CallFault::Slow(ms) => ms,
            CallFault::LostAnswer => 30 * SEC,
            _ => self.latency_rng.range(15, 250),
        };
        if fault != CallFault::None {
            self.log(|| format!("fault: {op} → {fault:?}"));
        }
        (queued + latency, fault)
    }

    /// The agent process restarted: what its AWS adapter held in memory is gone.
    pub fn agent_restarted(&mut self) {
        self.fleet_snapshot_at.clear();
        self.touched.clear();
        self.fleet_refreshing.clear();
    }
}

/// A handle on the shared world state; it implements every port trait.
#[derive(Clone)]
pub struct SimPort {
    pub state: Arc<Mutex<State>>,
}

impl SimPort {
    pub fn new(state: State) -> Self {
        SimPort {
            state: Arc::new(Mutex::new(state)),
        }
    }

    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One call to the fake AWS: counts it, waits its latency in virtual time, applies the
    /// fault the plan draws for it, and runs `f` against the world when the request lands.
    pub(super) async fn call<T>(
        &self,
        op: &'static str,
        mutating: bool,
        f: impl FnOnce(&mut State) -> PortResult<T>,
    ) -> PortResult<T> {
        let (latency, fault, start) = {
            let mut s = self.lock();
            let (l, f) = s.begin_call(op, mutating);
            (l, f, s.now)
        };
        if fault == CallFault::CrashBefore {
            return self.crash(op).await;
        }
        Delay {
            port: self,
            until: start + latency,
        }
        .await;
        let answer = {
            let mut s = self.lock();
            match fault {
                CallFault::Error(kind) => Some(Err(PortError::new(kind, op, "injected fault"))),
                CallFault::LostAnswer => {
                    let _ = f(&mut s);
                    Some(Err(PortError::new(
                        ErrorKind::Retryable,
                        op,
                        "timed out waiting for the answer (the request was performed)",
                    )))
                }
                CallFault::CrashAfter => {
                    let _ = f(&mut s);
                    None
                }
                CallFault::None | CallFault::Slow(_) | CallFault::CrashBefore => Some(f(&mut s)),
            }
        };
        match answer {
            Some(a) => a,
            None => self.crash(op).await,
        }
    }

    /// The process dies: this future never completes; the executor drops every in-flight
    /// message handler and restarts the agent.
    pub(super) async fn crash<T>(&self, op: &'static str) -> T {
        {
            let mut s = self.lock();
            s.crashed = true;
            s.log(|| format!("CRASH of the agent process during {op}"));
        }
        std::future::pending().await
    }
}

/// Waits until virtual time reaches `until`; registers the wake-up with the executor.
pub(super) struct Delay<'a> {
    pub(super) port: &'a SimPort,
    pub(super) until: Ms,
}

impl Future for Delay<'_> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
        let mut s = self.port.lock();
        if s.now >= self.until {
            Poll::Ready(())
        } else {
            let task = s.current_task;
            let until = self.until;
            s.task_wakes.insert(task, until);
            Poll::Pending
        }
    }
}

impl SimPort {
    /// The adapter's shared describe (`FleetCache`): refreshes the fleet snapshot (every page
    /// of 100) when it is older than its TTL, then says whether it can answer for `name`: not
    /// when the agent changed `name` after the snapshot started.
    pub(super) async fn served_by_snapshot(
        &self,
        op: &'static str,
        name: &str,
    ) -> PortResult<bool> {
        loop {
            let (expired, refreshing, pages, now) = {
                let s = self.lock();
                let expired = s
                    .fleet_snapshot_at
                    .get(op)
                    .is_none_or(|at| s.now - at >= DESCRIBE_TTL);
                let items = if op == DESCRIBE_INSTANCES {
                    s.sources.len() + s.clusters.len()
                } else {
                    s.clusters.len()
                };
                let refreshing = s.fleet_refreshing.contains(op);
                (expired, refreshing, items.div_ceil(100).max(1), s.now)
            };
            if !expired {
                break;
            }
            if refreshing {
                Delay {
                    port: self,
                    until: now + 100,
                }
                .await;
                continue;
            }
            self.lock().fleet_refreshing.insert(op);
            let mut fetched = Ok(());
            for _ in 0..pages {
                fetched = self.call(op, false, |_| Ok(())).await;
                if fetched.is_err() {
                    break;
                }
            }
            let mut s = self.lock();
            s.fleet_refreshing.remove(op);
            fetched?;
            s.fleet_snapshot_at.insert(op, now);
            s.touched.retain(|(o, _), t| *o != op || *t >= now);
            break;
        }
        let s = self.lock();
        let at = s.fleet_snapshot_at.get(op).copied().unwrap_or(Ms::MAX);
        Ok(s.touched
            .get(&(op, resource_key(name)))
            .is_none_or(|t| *t < at))
    }

    /// A mutating RDS call; its resources are then described directly until the next snapshot.
    pub(super) async fn mutate<T>(
        &self,
        op: &'static str,
        names: &[&str],
        f: impl FnOnce(&mut State) -> PortResult<T>,
    ) -> PortResult<T> {
        let r = self.call(op, true, f).await;
        let mut s = self.lock();
        let now = s.now;
        for name in names {
            for describe in [DESCRIBE_INSTANCES, DESCRIBE_CLUSTERS] {
                s.touched.insert((describe, resource_key(name)), now);
            }
        }
        r
    }
}

/// `arn:…:db:orders-pg` and `orders-pg` name the same resource; RDS ignores case.
pub(super) fn resource_key(name: &str) -> String {
    name.rsplit(':').next().unwrap_or(name).to_ascii_lowercase()
}

/// The bundle the agent is generic over.
pub struct SimWorld {
    pub port: SimPort,
}

impl World for SimWorld {
    type Rds = SimPort;
    type Network = SimPort;
    type Metrics = SimPort;
    type Notifier = SimPort;
    type Queue = SimPort;
    type Store = SimPort;
    type Router = SimPort;
    type Clock = SimPort;
    fn rds(&self) -> &SimPort {
        &self.port
    }
    fn network(&self) -> &SimPort {
        &self.port
    }
    fn metrics(&self) -> &SimPort {
        &self.port
    }
    fn notifier(&self) -> &SimPort {
        &self.port
    }
    fn queue(&self) -> &SimPort {
        &self.port
    }
    fn store(&self) -> &SimPort {
        &self.port
    }
    fn router(&self) -> &SimPort {
        &self.port
    }
    fn clock(&self) -> &SimPort {
        &self.port
    }
}
