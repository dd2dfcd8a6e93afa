//! The handle the agent talks to (`SimPort`): every call counted, delayed and faulted as the
//! seed says, RDS requests through the agent process's real rate limiter (`adapter.rs`), the
//! virtual-time wait (`Delay`), and the `World` bundle.

use super::*;

impl State {
    // ----- calls -------------------------------------------------------------------------

    /// Counts a call and draws its latency and fault (at the call, before any rate-limiter
    /// wait).
    pub(super) fn begin_call(&mut self, op: &'static str, mutating: bool) -> (Ms, CallFault) {
        let scripted = self.count_call(op);
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
            // DynamoDB's single-item reads and writes: "for most atomic operations, such as
            // GetItem and PutItem, you can expect an average latency in single-digit
            // milliseconds" (AWS Knowledge Center, dynamodb-high-latency), plus the network
            // inside the Region.
            _ if matches!(
                op,
                "dynamodb:GetItem" | "dynamodb:PutItem" | "dynamodb:UpdateItem"
            ) =>
            {
                self.latency_rng.range(3, 25)
            }
            // Every other API call: describes, mutations, queries, publishes.
            _ => self.latency_rng.range(15, 250),
        };
        if fault != CallFault::None {
            self.log(|| format!("fault: {op} → {fault:?}"));
        }
        (latency, fault)
    }

    /// Counts a call of `op`; the fault scripted for this call, if any.
    pub(super) fn count_call(&mut self, op: &'static str) -> Option<CallFault> {
        *self.calls.entry(op).or_default() += 1;
        let n = {
            let c = self.op_counts.entry(op).or_default();
            *c += 1;
            *c
        };
        let scripted = &self.plan.scripted;
        self.scripted_counts.resize(scripted.len(), None);
        self.scripted_fired.resize(scripted.len(), false);
        let mut hit = None;
        for (i, (f, count)) in scripted
            .iter()
            .zip(self.scripted_counts.iter_mut())
            .enumerate()
        {
            let counted = match &f.after {
                None => Some(n),
                Some(after) => {
                    if after == op && count.is_none() {
                        *count = Some(0);
                    }
                    if f.operation == op {
                        count.as_mut().map(|c| {
                            *c += 1;
                            *c
                        })
                    } else {
                        None
                    }
                }
            };
            if f.operation == op && counted == Some(f.nth) && hit.is_none() {
                hit = Some(f.fault.clone());
                self.scripted_fired[i] = true;
            }
        }
        hit
    }
}

/// A handle on the shared world state and on one agent process's adapter memory; it implements
/// every port trait.
#[derive(Clone)]
pub struct SimPort {
    pub state: Arc<Mutex<State>>,
    /// What this agent process's RDS adapter holds in memory (rate limiter, describe caches).
    pub(super) rds: Arc<RdsAdapter>,
    /// The process's name on its leases (`Agent::holder`): whose calls these are.
    pub(super) process: Arc<str>,
}

impl SimPort {
    pub fn new(state: State) -> Self {
        let state = Arc::new(Mutex::new(state));
        SimPort {
            rds: Arc::new(RdsAdapter::new(&state)),
            state,
            process: Arc::from("agent-0.0"),
        }
    }

    /// The same world seen by a new agent process named `process` (its lease holder name): its
    /// adapter starts with an empty describe cache and a full rate limiter, as a restarted
    /// process's would.
    pub fn new_process(&self, process: &str) -> Self {
        SimPort {
            rds: Arc::new(RdsAdapter::new(&self.state)),
            state: self.state.clone(),
            process: Arc::from(process),
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
        self.call_after(op, mutating, true, f).await
    }

    /// [`Self::call`] of an `rds:` request that already had its turn at the rate limiter (a
    /// batched describe's leader waited for it: `aws::rds::batch`).
    pub(super) async fn call_past_limiter<T>(
        &self,
        op: &'static str,
        f: impl FnOnce(&mut State) -> PortResult<T>,
    ) -> PortResult<T> {
        self.call_after(op, false, false, f).await
    }

    async fn call_after<T>(
        &self,
        op: &'static str,
        mutating: bool,
        wait_for_limiter: bool,
        f: impl FnOnce(&mut State) -> PortResult<T>,
    ) -> PortResult<T> {
        if mutating {
            // The adapters' refusal (`aws::call::not_past_the_lease`), on virtual time.
            let now = {
                let s = self.lock();
                s.ts(s.now)
            };
            crate::aws::call::not_past_the_lease(op, now)?;
        }
        let (latency, fault) = {
            let mut s = self.lock();
            if mutating && let Some(v) = crate::sim::checks::leases::check(&s, &self.process, op) {
                s.violation(v);
            }
            s.begin_call(op, mutating)
        };
        if fault == CallFault::CrashBefore {
            return self.crash(op).await;
        }
        if op.starts_with("rds:") {
            // The adapter's `call`: wait for the account budget's limiter, then the request
            // leaves.
            if wait_for_limiter {
                self.rds.limiter.acquire().await;
            }
            let mut s = self.lock();
            let second = s.now / SEC;
            *s.rds_per_second.entry(second).or_default() += 1;
            if crate::aws::limit::cutover_lane() {
                s.rds_in_cutover_lane += 1;
            }
            let phase = crate::agent::stepping_phase().map_or("(no migration)", |p| p.as_str());
            *s.rds_by_phase.entry((phase, op)).or_default() += 1;
        }
        let until = self.lock().now + latency;
        Delay::until(&self.state, until).await;
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
                CallFault::ReceivedLate(late) => {
                    s.received_late_ms = late;
                    let answer = f(&mut s);
                    s.received_late_ms = 0;
                    Some(answer)
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
    state: &'a Mutex<State>,
    until: Ms,
}

impl<'a> Delay<'a> {
    pub(super) fn until(state: &'a Mutex<State>, until: Ms) -> Self {
        Delay { state, until }
    }
}

impl Future for Delay<'_> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if s.now >= self.until {
            Poll::Ready(())
        } else {
            let task = s.current_task;
            let until = self.until;
            // The earliest of the task's timers: futures joined inside one task (the agent's
            // concurrent describes) each register theirs, and the executor clears the entry
            // before it polls the task.
            let wake = s.task_wakes.entry(task).or_insert(until);
            *wake = (*wake).min(until);
            Poll::Pending
        }
    }
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
    type Database = SimPort;
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
    fn database(&self) -> &SimPort {
        &self.port
    }
    fn clock(&self) -> &SimPort {
        &self.port
    }
}
