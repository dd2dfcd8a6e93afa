//! The simulator's report: what a run found (violations, endings, write-unavailability
//! windows, calls per operation, peak RDS rate) and how it is printed. Deterministic for a
//! given set of seeds and options (`same_seed_same_report_bit_for_bit`), except the fleet's
//! wall-clock and memory, which are measured on this machine.

use super::*;

/// How many (phase, operation) pairs the fleet report lists, busiest first.
const PHASE_OPERATIONS_SHOWN: usize = 15;

/// The fleet figures: measured on this machine, so not part of the deterministic report.
#[derive(Clone, Debug)]
pub struct FleetFigures {
    pub migrations: usize,
    pub wall_ms: u128,
    pub peak_memory_kib: Option<u64>,
    pub outcome: SeedOutcome,
}

#[derive(Clone, Debug)]
pub struct SimReport {
    pub options: SimOptions,
    pub seeds_run: u64,
    pub migrations: u64,
    /// (seed, what).
    pub violations: Vec<(u64, String)>,
    pub phases: BTreeMap<String, u64>,
    pub permanent_faults: u64,
    /// Transient faults only, rolled back because the write-unavailability budget ran out.
    pub budget_rollbacks: Vec<(u64, String)>,
    pub windows_ms: Vec<Ms>,
    pub agent_ms: Vec<Ms>,
    /// The same figures per cutover path (of each source's latest attempt).
    pub by_path: BTreeMap<checks::CutoverPath, PathFigures>,
    /// Writes refused (held, for PgBouncer) per router: `[webhook, route53, rds proxy,
    /// pgbouncer]`.
    pub refused_by_router_ms: [Vec<Ms>; 4],
    /// The router taking the cutover's route into effect, per router as above (Route 53: UPSERT
    /// accepted → INSYNC; RDS Proxy: cluster registered → its writer target AVAILABLE).
    pub propagation_by_router_ms: [Vec<Ms>; 4],
    /// Fallbacks of the database-aware path to the reboot, by reason.
    pub fallbacks: BTreeMap<&'static str, u64>,
    /// Database faults injected, by kind.
    pub db_faults: BTreeMap<&'static str, u64>,
    pub calls: BTreeMap<&'static str, u64>,
    pub rds_peak_1s: u32,
    pub rds_peak_60s: f64,
    pub crashes: u64,
    /// How many seeds applied each scripted fault (indexed as `FaultPlan::scripted`).
    pub scripted_fired: Vec<u64>,
    pub decisions: u64,
    /// Saves refused on the record's version (`State::stale_saves`).
    pub stale_saves: u64,
    pub dlq: u64,
    /// Agent crash → another process took the lease (migrations in their cutover past
    /// Quiescing).
    pub takeovers_ms: Vec<Ms>,
    pub virtual_ms: i128,
    pub timeline: Vec<String>,
    pub fleet: Option<FleetFigures>,
}

/// One cutover path's figures.
#[derive(Clone, Debug, Default)]
pub struct PathFigures {
    pub migrations: u64,
    pub completed: u64,
    pub rolled_back: u64,
    /// Sources rebooted.
    pub reboots: u64,
    /// Quarantine request → traffic on the target, per cutover.
    pub windows_ms: Vec<Ms>,
    /// The same minus the promotion (AWS's PromoteReadReplicaDBCluster).
    pub beyond_promotion_ms: Vec<Ms>,
    /// Writes refused: from the quarantine's taking effect (clients kept writing on their open
    /// sessions, and new ones got in, while RDS applied the group change) to traffic on the
    /// target. The outage, measured as clients see it.
    pub refused_ms: Vec<Ms>,
    /// The same minus the promotion: the outage's part that is not AWS's promotion.
    pub beyond_aws_group_and_promotion_ms: Vec<Ms>,
    /// The window minus every part AWS took (group change, reboot, metric delay, promotion,
    /// the replica applying the fence).
    pub agent_ms: Vec<Ms>,
    /// Database-aware cutovers: where the time beyond the group change and the promotion goes
    /// (see `Ending::db_parts`).
    pub db_parts_ms: [Vec<Ms>; 4],
}

/// The reason a fallback happened, in a few words.
fn fallback_kind(why: &str) -> &'static str {
    if why.contains("did not end") {
        "sessions did not end"
    } else if why.contains("could not read") {
        "database unreachable"
    } else if why.contains("was refused") {
        "an SQL action refused"
    } else {
        "other"
    }
}

impl SimReport {
    pub fn path(&self, path: checks::CutoverPath) -> PathFigures {
        self.by_path.get(&path).cloned().unwrap_or_default()
    }

    pub fn count(&self, phase: Phase) -> u64 {
        self.phases.get(phase.as_str()).copied().unwrap_or(0)
    }
}

impl SimReport {
    pub(super) fn absorb(&mut self, out: &SeedOutcome) {
        self.seeds_run += 1;
        self.migrations += out.endings.len() as u64;
        for v in &out.violations {
            self.violations.push((out.seed, v.clone()));
        }
        for e in &out.endings {
            let phase = e.phase.map_or("never started", |p| p.as_str());
            *self.phases.entry(phase.to_string()).or_default() += 1;
            if e.permanent.is_some() {
                self.permanent_faults += 1;
            }
            if e.budget_rollback {
                self.budget_rollbacks.push((out.seed, e.source.clone()));
            }
            let p = self.by_path.entry(e.path).or_default();
            p.migrations += 1;
            p.completed += u64::from(e.phase == Some(Phase::Completed));
            p.rolled_back += u64::from(e.phase == Some(Phase::RolledBack));
            p.reboots += u64::from(e.rebooted);
            if let (Some(w), Some(a)) = (e.window_ms, e.aws_ms) {
                self.windows_ms.push(w);
                self.agent_ms.push(w - a);
                let promotion = e.promotion_ms.unwrap_or(0);
                let group = e.group_change_ms.unwrap_or(0);
                p.windows_ms.push(w);
                p.agent_ms.push(w - a);
                p.beyond_promotion_ms.push(w - promotion);
                p.refused_ms.push(w - group);
                self.refused_by_router_ms[e.router].push(w - group);
                if let Some(ms) = e.propagation_ms {
                    self.propagation_by_router_ms[e.router].push(ms);
                }
                p.beyond_aws_group_and_promotion_ms
                    .push(w - promotion - group);
                if let Some(parts) = e.db_parts {
                    for (k, v) in parts.iter().enumerate() {
                        p.db_parts_ms[k].push(*v);
                    }
                }
            }
            if let Some(why) = &e.fallback {
                *self.fallbacks.entry(fallback_kind(why)).or_default() += 1;
            }
        }
        for (op, n) in &out.calls {
            *self.calls.entry(op).or_default() += n;
        }
        for (kind, n) in &out.db_faults {
            *self.db_faults.entry(kind).or_default() += n;
        }
        self.rds_peak_1s = self.rds_peak_1s.max(out.rds_peak_1s);
        self.rds_peak_60s = self.rds_peak_60s.max(out.rds_peak_60s);
        self.crashes += u64::from(out.crashes);
        let fired = &mut self.scripted_fired;
        fired.resize(fired.len().max(out.scripted_fired.len()), 0);
        for (n, f) in fired.iter_mut().zip(&out.scripted_fired) {
            *n += u64::from(*f);
        }
        self.decisions += out.decisions;
        self.stale_saves += out.stale_saves;
        self.dlq += out.dlq as u64;
        self.takeovers_ms.extend(&out.takeovers_ms);
        self.virtual_ms += i128::from(out.end_ms);
    }
}

/// The `p` quantile of `values` (nearest rank, as every figure of the report is taken).
pub fn percentile(values: &[Ms], p: f64) -> Option<Ms> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_unstable();
    let i = ((v.len() - 1) as f64 * p).round() as usize;
    Some(v[i])
}

fn secs(ms: Option<Ms>) -> String {
    ms.map_or("-".to_string(), |m| format!("{:.1} s", m as f64 / 1000.0))
}

impl fmt::Display for SimReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let o = &self.options;
        writeln!(
            f,
            "simulation: seeds {}..={} ({} run), {}–{} migrations per seed, fault intensity {}, variant {:?}, {} workers",
            o.start_seed,
            o.start_seed + o.seeds.saturating_sub(1),
            self.seeds_run,
            o.migrations_min,
            o.migrations_max,
            o.fault_intensity,
            o.variant,
            o.workers
        )?;
        writeln!(
            f,
            "migrations: {} ({} with a permanent fault); completed {}, rolled back {}, failed {}, other {}",
            self.migrations,
            self.permanent_faults,
            self.count(Phase::Completed),
            self.count(Phase::RolledBack),
            self.count(Phase::Failed),
            self.migrations
                - self.count(Phase::Completed)
                - self.count(Phase::RolledBack)
                - self.count(Phase::Failed)
        )?;
        writeln!(
            f,
            "agent: {} decisions checked, {} saves refused on a changed record, {} crashes and restarts, {} messages redriven to the DLQ, {:.1} h of virtual time",
            self.decisions,
            self.stale_saves,
            self.crashes,
            self.dlq,
            self.virtual_ms as f64 / 3_600_000.0
        )?;
        if !self.takeovers_ms.is_empty() {
            let p = |q| secs(percentile(&self.takeovers_ms, q));
            writeln!(
                f,
                "lease takeovers (an agent died holding the lease of a migration in its cutover: its step due → another process took the lease): {}, p50 {}, p99 {}, max {}",
                self.takeovers_ms.len(),
                p(0.5),
                p(0.99),
                p(1.0)
            )?;
        }
        writeln!(
            f,
            "budget rollbacks (transient faults only; lossless, by the design's write-unavailability budget): {}{}",
            self.budget_rollbacks.len(),
            self.budget_rollbacks
                .iter()
                .take(8)
                .map(|(seed, src)| format!(" [seed {seed} {src}]"))
                .collect::<String>()
        )?;
        writeln!(f, "violations: {}", self.violations.len())?;
        for (seed, v) in self.violations.iter().take(20) {
            writeln!(f, "  seed {seed}: {v}")?;
        }
        if self.violations.len() > 20 {
            writeln!(f, "  … {} more", self.violations.len() - 20)?;
        }
        writeln!(
            f,
            "write unavailability (quarantine request → traffic on the target), {} cutovers: p50 {}, p99 {}, max {}",
            self.windows_ms.len(),
            secs(percentile(&self.windows_ms, 0.5)),
            secs(percentile(&self.windows_ms, 0.99)),
            secs(self.windows_ms.iter().max().copied())
        )?;
        writeln!(
            f,
            "  the agent's share (minus AWS's group change, reboot, metric delay, promotion and the replica applying the fence): p50 {}, p99 {}",
            secs(percentile(&self.agent_ms, 0.5)),
            secs(percentile(&self.agent_ms, 0.99))
        )?;
        writeln!(
            f,
            "per cutover path (each source's latest attempt; database share {}, Route 53 share {}, RDS Proxy share {}, PgBouncer share {}):",
            o.database_share, o.route53_share, o.rds_proxy_share, o.pgbouncer_share
        )?;
        for path in checks::CutoverPath::ALL {
            let p = self.path(path);
            writeln!(
                f,
                "  {}: {} migrations ({} completed, {} rolled back, {} sources rebooted), {} cutovers",
                path.as_str(),
                p.migrations,
                p.completed,
                p.rolled_back,
                p.reboots,
                p.windows_ms.len()
            )?;
            if p.windows_ms.is_empty() {
                continue;
            }
            writeln!(
                f,
                "    write unavailability p50 {}, p99 {}, max {}; minus the promotion p50 {}, p99 {}",
                secs(percentile(&p.windows_ms, 0.5)),
                secs(percentile(&p.windows_ms, 0.99)),
                secs(p.windows_ms.iter().max().copied()),
                secs(percentile(&p.beyond_promotion_ms, 0.5)),
                secs(percentile(&p.beyond_promotion_ms, 0.99)),
            )?;
            writeln!(
                f,
                "    writes refused (quarantine in effect → traffic on the target) p50 {}, p99 {}, max {}; beyond the promotion p50 {}, p99 {}",
                secs(percentile(&p.refused_ms, 0.5)),
                secs(percentile(&p.refused_ms, 0.99)),
                secs(p.refused_ms.iter().max().copied()),
                secs(percentile(&p.beyond_aws_group_and_promotion_ms, 0.5)),
                secs(percentile(&p.beyond_aws_group_and_promotion_ms, 0.99)),
            )?;
            writeln!(
                f,
                "    the agent's share p50 {}, p99 {}",
                secs(percentile(&p.agent_ms, 0.5)),
                secs(percentile(&p.agent_ms, 0.99))
            )?;
            if !p.db_parts_ms[0].is_empty() {
                let [a, b, r, c] = &p.db_parts_ms;
                writeln!(
                    f,
                    "    beyond the group change and the promotion: quarantine active → sessions ended p50 {}, p99 {}; → promote call (the fence proof) p50 {}, p99 {}, plus the replica applying the fence (AWS's) p50 {}, p99 {}; promoted → traffic moved p50 {}, p99 {}",
                    secs(percentile(a, 0.5)),
                    secs(percentile(a, 0.99)),
                    secs(percentile(b, 0.5)),
                    secs(percentile(b, 0.99)),
                    secs(percentile(r, 0.5)),
                    secs(percentile(r, 0.99)),
                    secs(percentile(c, 0.5)),
                    secs(percentile(c, 0.99)),
                )?;
            }
        }
        if self.refused_by_router_ms[1..].iter().any(|r| !r.is_empty()) {
            let [webhook, route53, proxy, pooler] = &self.refused_by_router_ms;
            let [_, route53_effect, proxy_effect, _] = &self.propagation_by_router_ms;
            write!(
                f,
                "per router: webhook {} cutovers, writes refused p50 {}, p99 {}",
                webhook.len(),
                secs(percentile(webhook, 0.5)),
                secs(percentile(webhook, 0.99)),
            )?;
            if !route53.is_empty() {
                write!(
                    f,
                    "; route53 {} cutovers, writes refused p50 {}, p99 {}, of which Route 53 taking the change to every server p50 {}, p99 {}",
                    route53.len(),
                    secs(percentile(route53, 0.5)),
                    secs(percentile(route53, 0.99)),
                    secs(percentile(route53_effect, 0.5)),
                    secs(percentile(route53_effect, 0.99)),
                )?;
            }
            if !proxy.is_empty() {
                write!(
                    f,
                    "; rds-proxy {} cutovers, writes refused p50 {}, p99 {}, of which the proxy's new target becoming available p50 {}, p99 {}",
                    proxy.len(),
                    secs(percentile(proxy, 0.5)),
                    secs(percentile(proxy, 0.99)),
                    secs(percentile(proxy_effect, 0.5)),
                    secs(percentile(proxy_effect, 0.99)),
                )?;
            }
            if !pooler.is_empty() {
                write!(
                    f,
                    "; pgbouncer {} cutovers, writes held p50 {}, p99 {}",
                    pooler.len(),
                    secs(percentile(pooler, 0.5)),
                    secs(percentile(pooler, 0.99)),
                )?;
            }
            writeln!(f)?;
        }
        writeln!(
            f,
            "fallbacks to the reboot: {}{}",
            self.fallbacks.values().sum::<u64>(),
            self.fallbacks
                .iter()
                .map(|(k, n)| format!(" [{k}: {n}]"))
                .collect::<String>()
        )?;
        writeln!(
            f,
            "database faults injected: {}{}",
            self.db_faults.values().sum::<u64>(),
            self.db_faults
                .iter()
                .map(|(k, n)| format!(" [{k}: {n}]"))
                .collect::<String>()
        )?;
        let per = self.migrations.max(1) as f64;
        writeln!(f, "API calls per migration (mean):")?;
        let mut total_rds = 0.0;
        for (op, n) in &self.calls {
            let mean = *n as f64 / per;
            if op.starts_with("rds:") {
                total_rds += mean;
            }
            writeln!(f, "  {op:<44} {mean:>8.1}")?;
        }
        writeln!(f, "  {:<44} {total_rds:>8.1}", "all rds:*")?;
        writeln!(
            f,
            "RDS request rate: peak {} req in one second, peak {:.2} req/s over 60 s (budget 12 req/s)",
            self.rds_peak_1s, self.rds_peak_60s
        )?;
        if let Some(fl) = &self.fleet {
            let out = &fl.outcome;
            let done = out
                .endings
                .iter()
                .filter(|e| e.phase == Some(Phase::Completed))
                .count();
            let windows: Vec<Ms> = out.endings.iter().filter_map(|e| e.window_ms).collect();
            let rds: u64 = out
                .calls
                .iter()
                .filter(|(k, _)| k.starts_with("rds:"))
                .map(|(_, n)| n)
                .sum();
            writeln!(
                f,
                "fleet: {} concurrent migrations in {} (seed {}): {} completed, {} violations, {} of virtual time",
                fl.migrations,
                if self.options.agents > 1 {
                    "two agents, each with half the RDS rate"
                } else {
                    "one agent"
                },
                out.seed,
                done,
                out.violations.len(),
                fmt_ms(out.end_ms)
            )?;
            writeln!(
                f,
                "  write unavailability p50 {}, p99 {}; {:.0} RDS calls per migration; RDS peak {} req in one second, {:.2} req/s over 60 s (limit {}, the account's budget 12)",
                secs(percentile(&windows, 0.5)),
                secs(percentile(&windows, 0.99)),
                rds as f64 / fl.migrations.max(1) as f64,
                out.rds_peak_1s,
                out.rds_peak_60s,
                self.options.rds_rate_limit
            )?;
            let rollbacks = Rollbacks::of(&out.endings);
            writeln!(
                f,
                "  rolled back: {} with a permanent fault, {} with a hole in the quarantine (a client got past it: the proof fails, losslessly), {} with only transient faults ({} of them by the write budget); failed {}, other {}",
                rollbacks.permanent,
                rollbacks.hole,
                rollbacks.transient,
                rollbacks.budget,
                out.endings
                    .iter()
                    .filter(|e| e.phase == Some(Phase::Failed))
                    .count(),
                out.endings
                    .iter()
                    .filter(|e| !matches!(
                        e.phase,
                        Some(Phase::Completed | Phase::RolledBack | Phase::Failed)
                    ))
                    .count(),
            )?;
            // Why each budget rollback ran out: the proof's missing part on its last look (its
            // path says which wait it was), so a fleet's pacing can be told from a fault.
            for e in out.endings.iter().filter(|e| e.budget_rollback) {
                writeln!(
                    f,
                    "    by the write budget: {} ({:?} path): {}",
                    e.source,
                    e.path,
                    e.last_error.as_deref().unwrap_or("")
                )?;
            }
            let completed_cutovers: Vec<Ms> = out
                .endings
                .iter()
                .filter(|e| e.phase == Some(Phase::Completed))
                .filter_map(|e| e.window_ms)
                .collect();
            writeln!(
                f,
                "  most in Preflight or Preparing at once: {} (limit {})",
                out.peak_preparations.0, out.peak_preparations.1
            )?;
            writeln!(
                f,
                "  completed migrations' write unavailability p50 {}, p99 {}, max {}; {:.1} RDS calls per completed migration",
                secs(percentile(&completed_cutovers, 0.5)),
                secs(percentile(&completed_cutovers, 0.99)),
                secs(completed_cutovers.iter().max().copied()),
                rds as f64 / done.max(1) as f64,
            )?;
            writeln!(
                f,
                "  RDS calls per migration, by operation ({:.1} of them in the cutover lane):",
                out.rds_in_cutover_lane as f64 / fl.migrations.max(1) as f64
            )?;
            let mut rds_ops: Vec<(&str, u64)> = out
                .calls
                .iter()
                .filter(|(op, _)| op.starts_with("rds:"))
                .map(|(op, n)| (*op, *n))
                .collect();
            rds_ops.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
            for (op, n) in &rds_ops {
                writeln!(
                    f,
                    "    {op:<42} {:>8.1}",
                    *n as f64 / fl.migrations.max(1) as f64
                )?;
            }
            let mut phases: BTreeMap<&str, u64> = BTreeMap::new();
            for ((p, _), n) in &out.rds_by_phase {
                *phases.entry(p).or_default() += n;
            }
            let mut by_phase: Vec<(&str, u64)> = phases.into_iter().collect();
            by_phase.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
            writeln!(
                f,
                "  RDS calls per migration, by the phase that made them: {}",
                by_phase
                    .iter()
                    .map(|(p, n)| format!("{p} {:.1}", *n as f64 / fl.migrations.max(1) as f64))
                    .collect::<Vec<_>>()
                    .join(", ")
            )?;
            // How much of the describing is shared: a snapshot page serves every migration, a
            // batch the looks that fell due together (`aws::rds::batch`).
            writeln!(
                f,
                "  RDS describes shared across migrations, per migration: {}",
                out.rds_shared
                    .iter()
                    .map(|((op, kind), (requests, looks))| {
                        let per = *requests as f64 / fl.migrations.max(1) as f64;
                        let op = op.trim_start_matches("rds:");
                        if kind.contains("batch") {
                            format!(
                                "{op} {kind} {per:.1} ({:.2} looks a request)",
                                *looks as f64 / (*requests).max(1) as f64
                            )
                        } else {
                            format!("{op} {kind} pages {per:.1}")
                        }
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            )?;
            // Where each phase's calls go: what a change to a phase's looks would save.
            let mut pairs: Vec<(&(&str, &str), &u64)> = out.rds_by_phase.iter().collect();
            pairs.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
            writeln!(
                f,
                "  RDS calls per migration, busiest phase and operation: {}",
                pairs
                    .iter()
                    .take(PHASE_OPERATIONS_SHOWN)
                    .map(|((p, op), n)| format!(
                        "{p} {} {:.1}",
                        op.trim_start_matches("rds:"),
                        **n as f64 / fl.migrations.max(1) as f64
                    ))
                    .collect::<Vec<_>>()
                    .join(", ")
            )?;
            let mut busiest: Vec<(&str, u64)> = out
                .calls
                .iter()
                .filter(|(op, _)| !op.starts_with("rds:"))
                .map(|(op, n)| (*op, *n))
                .collect();
            busiest.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
            writeln!(f, "  other API calls per migration, busiest first:")?;
            for (op, n) in busiest.iter().take(8) {
                writeln!(
                    f,
                    "    {op:<42} {:>8.1}",
                    *n as f64 / fl.migrations.max(1) as f64
                )?;
            }
            writeln!(
                f,
                "  simulator: {:.2} s wall-clock, peak memory (VmHWM) {}",
                fl.wall_ms as f64 / 1000.0,
                fl.peak_memory_kib
                    .map_or("unknown".to_string(), |k| format!(
                        "{:.1} MiB",
                        k as f64 / 1024.0
                    ))
            )?;
        }
        if !self.timeline.is_empty() {
            writeln!(f, "timeline of seed {}:", o.start_seed)?;
            for line in &self.timeline {
                writeln!(f, "  {line}")?;
            }
        }
        Ok(())
    }
}

/// How a fleet's rolled-back migrations divide by cause, as the fleet report prints them.
///
/// A hole in the quarantine (`DbFault::ReconnectOnce`, `PersistentHole`) is counted apart from
/// the transient faults: a client that reconnects after the agent ended its session came through
/// a path the quarantine does not close (security groups stop new connections only; another
/// group on the source, a service sharing the agent's group), and that path stays until a
/// person closes it, however often the client uses it. The attempt's proof fails and it rolls
/// back without loss (`machine::wal_fence`), as any failed proof does; the next attempt is a
/// person's `start`. So "every migration without a permanent fault completes" reads
/// `transient == 0`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Rollbacks {
    /// Rolled back with one of the simulator's permanent AWS faults.
    permanent: usize,
    /// Rolled back because a client got past the quarantine (`Ending::breach_rollback`).
    hole: usize,
    /// Rolled back with neither: only transient faults (the agent's own pacing among them).
    transient: usize,
    /// Of `transient`, those the write-unavailability budget ended.
    budget: usize,
}

impl Rollbacks {
    fn of(endings: &[checks::Ending]) -> Self {
        let mut r = Rollbacks::default();
        for e in endings
            .iter()
            .filter(|e| e.phase == Some(Phase::RolledBack))
        {
            if e.permanent.is_some() {
                r.permanent += 1;
            } else if e.breach_rollback {
                r.hole += 1;
            } else {
                r.transient += 1;
                r.budget += usize::from(e.budget_rollback);
            }
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ending(phase: Phase, permanent: bool, budget: bool, breach: bool) -> checks::Ending {
        checks::Ending {
            source: "orders-db".into(),
            phase: Some(phase),
            permanent: permanent.then_some(faults::PermanentFault::PromotionStuck),
            last_error: None,
            window_ms: None,
            aws_ms: None,
            budget_rollback: budget,
            breach_rollback: breach,
            path: checks::CutoverPath::Database,
            fallback: None,
            rebooted: false,
            group_change_ms: None,
            promotion_ms: None,
            db_parts: None,
            router: 0,
            propagation_ms: None,
        }
    }

    #[test]
    fn a_hole_in_the_quarantine_is_counted_apart_from_the_transient_faults() {
        let endings = [
            ending(Phase::Completed, false, false, false),
            ending(Phase::RolledBack, true, false, false),
            ending(Phase::RolledBack, false, false, true),
            ending(Phase::RolledBack, false, false, true),
            ending(Phase::RolledBack, false, true, false),
            ending(Phase::RolledBack, false, false, false),
            ending(Phase::Failed, false, false, false),
        ];
        assert_eq!(
            Rollbacks::of(&endings),
            Rollbacks {
                permanent: 1,
                hole: 2,
                transient: 2,
                budget: 1
            }
        );
    }
}
