//! Every tunable number of the phase machine, with its default and the reason for it.
//!
//! Policy is plain data: the configuration fills it from flags and environment variables, the
//! simulator and the tests build it directly.

use std::fmt;
use std::str::FromStr;

use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};

use super::phase::Phase;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Policy {
    /// The prefix of every tag the agent reads or writes. `aurora-migration`: the contract.
    pub tag_prefix: String,
    /// When the agent may start the cutover once the replica has caught up.
    pub cutover: CutoverPolicy,
    /// Replication is "caught up" when OldestReplicationSlotLag stays at or below this.
    /// 1 GiB: well above the 64 MiB WAL-segment oscillation, small enough to drain in seconds.
    pub max_slot_lag_bytes: f64,
    /// ... and RDSToAuroraPostgreSQLReplicaLag at or below this. 30 s: a replica that keeps up
    /// with a busy primary sits well inside it.
    pub max_replica_lag_s: f64,
    /// ... for at least this long, so one quiet minute is not mistaken for health. 15 min: three
    /// five-minute cycles of a typical batch load.
    pub lag_sustain: SignedDuration,
    /// Below this FreeStorageSpace on the source the replica is deleted (its slot holds WAL) and
    /// the migration fails. 10 GiB: room for a few minutes of heavy WAL on most instances.
    pub min_free_storage_bytes: f64,
    /// From the quarantine to the start of promotion; past it the agent rolls back by itself.
    /// 10 min: twice the typical reboot + drain, still a short outage (Blue/Green's switchover
    /// timeout defaults to 5 min for a simpler operation).
    pub write_unavailability_budget: SignedDuration,
    /// DatabaseConnections allowed on the quarantined source beyond declared CDC consumers
    /// (`MIGRATOR_MAX_IDLE_CONNECTIONS`, metric path only). 0: anything else may be a client the
    /// quarantine missed. AWS does not document whether RDS's own `rdsadmin` sessions or the
    /// Aurora replica's replication connection are counted; if they are on your instances the
    /// proof never holds and every cutover rolls back at the budget (safe, useless): then raise
    /// it by that many, or grant database access, which counts client backends exactly.
    pub max_idle_connections: f64,
    /// RDSToAuroraPostgreSQLReplicaLag that counts as "caught up" in Draining. 1 s: the metric's
    /// resolution.
    pub drained_replica_lag_s: f64,
    /// Soak time on the target before verification can pass. 30 min: long enough for the
    /// metric periods to show a regression.
    pub soak: SignedDuration,
    /// A target KPI fails verification when above baseline × this (and above the floor below).
    /// 2.0: Aurora differs from RDS; only a clear regression should fail.
    pub kpi_tolerance_ratio: f64,
    /// Whether Verifying runs the configured smoke test (a failing one fails verification).
    pub smoke_test: bool,
    /// Source TransactionLogsGeneration above this after cutover means someone writes to the old
    /// primary. 1 MiB/s: an idle PostgreSQL writes far less (checkpoints, archive_timeout).
    pub idle_wal_bytes_per_s: f64,
    /// How long the source is kept after verification before the final snapshot and deletion.
    /// 7 days: a week of business cycles to discover problems while rollback is cheap.
    pub retention: SignedDuration,
    /// Whether the agent may turn DeletionProtection off itself. Off: a person decides.
    pub allow_disable_deletion_protection: bool,
    /// Whether to give the source its original security groups back after cutover. Off: clients
    /// outside the data access layer would write to the old primary.
    pub restore_source_groups_after_cutover: bool,
    /// Failed attempts of one action (retryable or throttled) before the phase fails. 8: with the
    /// SDK's own three tries each, a fault lasting minutes is absorbed.
    pub max_action_retries: u32,
    /// How long an issued mutating request may stay unconfirmed by observation before it is
    /// issued again (covers a crash between persisting and executing). 3 min: RDS shows every
    /// request we make in its describe output within seconds.
    pub reissue_after: SignedDuration,
    /// The same during the cutover, where a lost request costs downtime. 30 s: RDS shows a
    /// security group change as `adding` and a promotion as `promoting` at once.
    pub cutover_reissue_after: SignedDuration,
    /// A reboot whose restart event does not appear is requested again after this. 10 min:
    /// reboots take 1–3 min.
    pub reboot_reissue_after: SignedDuration,
    /// A reboot that RDS never started (no "DB instance shutdown" or "restarted" event after
    /// the request, and the instance still `available`) is requested again after this: the
    /// request was lost (a crash between persisting and executing, a failure nobody heard).
    /// 90 s: RDS shows `rebooting` and the shutdown event within seconds of accepting one, and
    /// waiting for `reboot_reissue_after` would spend the whole write budget.
    pub reboot_unconfirmed_after: SignedDuration,
    /// The CloudWatch period the agent reads metrics at. 60 s: RDS publishes every minute, and
    /// standard-resolution metrics cannot be read finer (emulators may use 1–30 s).
    pub metric_period: SignedDuration,
    /// Poll interval of phases that wait for AWS. 60 s: CloudWatch's period.
    pub slow_poll: SignedDuration,
    /// Poll interval of the cutover phases. 5 s: every second of waiting is downtime.
    pub fast_poll: SignedDuration,
    /// Per-phase limits (see `timeout`).
    pub timeouts: Timeouts,
    /// The deployment allows database access (`MIGRATOR_DATABASE_ACCESS`); each instance still
    /// opts in by tag (`<prefix>:database-access`). Off by default: connecting to production
    /// databases is a decision the platform team takes once, knowingly.
    pub database_access: bool,
    /// The agent's own security group (`MIGRATOR_AGENT_SECURITY_GROUP`), admitted through the
    /// quarantine on the database port while database access is in use.
    pub agent_security_group: Option<String>,
    /// With database access: how long the source must show no client session before the fence
    /// is written. 1 s: a pooler or a retry loop that reconnects at once shows up within it,
    /// and one that comes later voids the fence anyway (the proof reads sessions after it, and
    /// again before every promotion request). 500 ms was tried: with the faster looks, the
    /// simulator's client behind a hole (back up to 1.5 s after its session ended) then got in
    /// after the last read and a promotion came before the replica had its write.
    pub sessions_quiet_for: SignedDuration,
    /// With database access: a session that was asked to end and is still there after this is
    /// stuck (a backend in an uninterruptible wait, one the role may not end), and the cutover
    /// falls back to the reboot. 30 s: `pg_terminate_backend` takes effect in milliseconds.
    pub sessions_stuck_after: SignedDuration,
    /// With database access, losing the connection for this long falls back to the reboot and
    /// the metric proof. 30 s: a reconnect through a brief network fault is cheaper.
    pub database_unreachable_after: SignedDuration,
    /// Poll interval of the database-aware Quiescing, Draining and Promoting. 500 ms: the proof
    /// is one query on each side, the promotion's end a query on the writer (then one direct
    /// describe), the quarantine's end one direct describe; the agent takes these waits
    /// in-process (`agent::follow_up`), so they are not rounded up to SQS's whole seconds.
    pub database_poll: SignedDuration,
    /// With database access: the poll interval of Promoting while AWS promotes (promotion
    /// requested, the writer still in recovery), and of Draining once the fence is written.
    /// 200 ms: each look is one SQL query on the Aurora writer (`pg_last_wal_replay_lsn()`,
    /// NULL once it has left recovery); the cluster comes from the fleet snapshot, and from RDS
    /// directly only in the describe cache's window after the request (measured: 11 more
    /// DescribeDBClusters per migration, 149 → 160). It is the last wait of the outage that is
    /// the agent's: half the poll is lost on average between the promotion's end and the look
    /// that sees it (the agent's share, fault free, 500 seeds: p50 4.2 → 4.0 s, p99 5.2 → 5.0 s
    /// against 500 ms).
    pub promotion_poll: SignedDuration,
    /// With database access: the time the consistency check before routing may take, each side
    /// read at once, connecting included (`core::machine::consistency`). 5 s: the check runs
    /// inside the write outage (the source is fenced, Aurora takes no traffic yet), so it must
    /// cost seconds, not minutes; a few thousand small tables and every sequence fit in it, and
    /// what does not fit is left uncompared (the WAL proof already held), not waited for.
    pub consistency_check_budget: SignedDuration,
    /// The router of instances without a `<prefix>:router` tag (`core::router`). Default
    /// `webhook`: what the agent did before routers were chosen.
    #[serde(default)]
    pub router: crate::core::router::RouterChoice,
    /// Most migrations in their cutover (writes stopped) at once in one agent
    /// (`agent::turns`); the others wait in AwaitingCutover, writes flowing.
    #[serde(default = "default_max_cutovers")]
    pub max_cutovers: usize,
    /// Most migrations in Preflight or Preparing at once in one agent (`agent::turns`); the
    /// others wait in Requested, which has no time limit.
    #[serde(default = "default_max_preparations")]
    pub max_preparations: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Timeouts {
    /// Preflight gathers answers from a dozen describe calls. 30 min.
    pub preflight: SignedDuration,
    /// Parameter and security groups are created in seconds. 30 min.
    pub preparing: SignedDuration,
    /// AWS quotes "several hours per TiB". 48 h.
    pub creating_replica: SignedDuration,
    /// Catching up after the initial copy. 24 h.
    pub replicating: SignedDuration,
    /// A manual approval or a window may take a while; the replica holds WAL meanwhile. 14 days.
    pub awaiting_cutover: SignedDuration,
    /// Promotion takes 1–5 min. 30 min, then the lossless rollback (nothing was routed).
    pub promoting: SignedDuration,
    /// Router calls and CDC slot creation. 15 min, then a person decides (the target may have
    /// been routed without us hearing back).
    pub routing: SignedDuration,
    /// Snapshot and deletion of the source. 24 h past the retention.
    pub decommissioning: SignedDuration,
    /// An approved rollback after cutover. 1 h.
    pub rolling_back: SignedDuration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            preflight: SignedDuration::from_mins(30),
            preparing: SignedDuration::from_mins(30),
            creating_replica: SignedDuration::from_hours(48),
            replicating: SignedDuration::from_hours(24),
            awaiting_cutover: SignedDuration::from_hours(24 * 14),
            promoting: SignedDuration::from_mins(30),
            routing: SignedDuration::from_mins(15),
            decommissioning: SignedDuration::from_hours(24),
            rolling_back: SignedDuration::from_hours(1),
        }
    }
}

/// Most migrations in their cutover at once in one agent, by default (`MIGRATOR_MAX_CUTOVERS`).
/// Measured in the simulator's fleet runs at the default RDS rate (5 requests/s): see the
/// README's *Fleet* figures.
pub const DEFAULT_MAX_CUTOVERS: usize = 25;

fn default_max_cutovers() -> usize {
    DEFAULT_MAX_CUTOVERS
}

/// Most migrations in Preflight or Preparing at once in one agent, by default
/// (`MIGRATOR_MAX_PREPARATIONS`). A preparation is about a dozen RDS requests in the rate
/// limiter's other lane: 100 under way are about 1,200 requests, four to seven minutes of a
/// 5 requests/s budget, so each ends well inside its phases' 30-minute limits, and the
/// preparations still use all the budget the other lane gets (fewer left it idle while each
/// waited for its own looks).
pub const DEFAULT_MAX_PREPARATIONS: usize = 100;

fn default_max_preparations() -> usize {
    DEFAULT_MAX_PREPARATIONS
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            tag_prefix: super::tags::DEFAULT_PREFIX.to_string(),
            cutover: CutoverPolicy::ManualApproval,
            max_slot_lag_bytes: 1024.0 * 1024.0 * 1024.0,
            max_replica_lag_s: 30.0,
            lag_sustain: SignedDuration::from_mins(15),
            min_free_storage_bytes: 10.0 * 1024.0 * 1024.0 * 1024.0,
            write_unavailability_budget: SignedDuration::from_mins(10),
            max_idle_connections: 0.0,
            drained_replica_lag_s: 1.0,
            soak: SignedDuration::from_mins(30),
            kpi_tolerance_ratio: 2.0,
            smoke_test: false,
            idle_wal_bytes_per_s: 1024.0 * 1024.0,
            retention: SignedDuration::from_hours(24 * 7),
            allow_disable_deletion_protection: false,
            restore_source_groups_after_cutover: false,
            max_action_retries: 8,
            reissue_after: SignedDuration::from_mins(3),
            cutover_reissue_after: SignedDuration::from_secs(30),
            reboot_reissue_after: SignedDuration::from_mins(10),
            reboot_unconfirmed_after: SignedDuration::from_secs(90),
            metric_period: SignedDuration::from_secs(60),
            slow_poll: SignedDuration::from_secs(60),
            fast_poll: SignedDuration::from_secs(5),
            timeouts: Timeouts::default(),
            database_access: false,
            agent_security_group: None,
            sessions_quiet_for: SignedDuration::from_secs(1),
            sessions_stuck_after: SignedDuration::from_secs(30),
            database_unreachable_after: SignedDuration::from_secs(30),
            database_poll: SignedDuration::from_millis(500),
            promotion_poll: SignedDuration::from_millis(200),
            consistency_check_budget: SignedDuration::from_secs(5),
            router: crate::core::router::RouterChoice::Webhook,
            max_cutovers: DEFAULT_MAX_CUTOVERS,
            max_preparations: DEFAULT_MAX_PREPARATIONS,
        }
    }
}

impl Policy {
    /// The limit on time spent in a phase, if it has one. Quiescing and Draining are bounded by
    /// the write-unavailability budget instead; Verifying by the soak; terminal phases and
    /// Paused by nothing.
    pub fn timeout(&self, phase: Phase) -> Option<SignedDuration> {
        let t = &self.timeouts;
        match phase {
            // Requested ends at the migration's first step, which only moves it to Preflight:
            // a record still in it waits for the agent itself (its handlers, its rate limiter
            // behind a fleet's start), never for AWS. Timed, it failed migrations the agent had
            // not yet looked at (the simulator's 500-migration fleet, seed 1: "requested did not
            // finish within 30m").
            Phase::Requested => None,
            Phase::Preflight => Some(t.preflight),
            Phase::Preparing => Some(t.preparing),
            Phase::CreatingReplica => Some(t.creating_replica),
            Phase::Replicating => Some(t.replicating),
            Phase::AwaitingCutover => Some(t.awaiting_cutover),
            Phase::Promoting => Some(t.promoting),
            Phase::Routing => Some(t.routing),
            Phase::Decommissioning => Some(self.retention + t.decommissioning),
            Phase::RollingBack => Some(t.rolling_back),
            Phase::Quiescing
            | Phase::Draining
            | Phase::Verifying
            | Phase::Completed
            | Phase::Paused
            | Phase::Failed
            | Phase::RolledBack
            | Phase::Aborted => None,
        }
    }

    pub fn poll_interval(&self, phase: Phase) -> SignedDuration {
        if phase.is_followed_closely() {
            self.fast_poll
        } else {
            self.slow_poll
        }
    }

    /// Poll interval of a cutover wait that RDS ends with an event the agent receives (the
    /// metric path's reboot: "DB instance restarted"; AWS's promotion of the cluster): the
    /// event steps the migration as it arrives, and the looks every `event_poll` are for an
    /// event lost or late (EventBridge delivers RDS events best effort). [`EVENT_POLL_FACTOR`]
    /// times `fast_poll`: 15 s by default.
    pub fn event_poll(&self) -> SignedDuration {
        self.fast_poll * EVENT_POLL_FACTOR
    }

    /// The first look after the agent asked RDS for a change that takes it minutes: the
    /// replica's cluster or its writer created (`machine::preparation`), the source deleted with
    /// its final snapshot (`machine::soak`). [`SLOW_CHANGE_FIRST_LOOK_FACTOR`] times `slow_poll`:
    /// 3 minutes by default. The look a minute after the request only saw the resource
    /// `creating` or `deleting`, and described it directly (the agent had just changed it, so
    /// the fleet snapshot from before the request could not say); three minutes on, the
    /// snapshot (refreshed every two minutes at most, `aws::rds::cache::MANY_PAGES_TTL`) is
    /// newer than the request and serves the look. RDS's event for the end of a creation steps
    /// the migration when it comes; a failed request is seen on that look (its result), and
    /// nothing waits on it with writes down.
    pub fn slow_change_first_look(&self) -> SignedDuration {
        self.slow_poll * SLOW_CHANGE_FIRST_LOOK_FACTOR
    }
}

/// `slow_change_first_look` is this many `slow_poll`s.
pub const SLOW_CHANGE_FIRST_LOOK_FACTOR: i32 = 3;

/// `event_poll` is this many `fast_poll`s. 3: in the simulator (events lost 15 %, late 30 %,
/// else delivered in 0.2–2 s) the mean wait from the change to the look that sees it stays
/// about what a look every `fast_poll` gave (2.5 s: 0.6 × ~1 s on the event, 0.4 × 7.5 s on
/// the poll), for a third of the looks; on AWS, where most events come in seconds, it is
/// shorter. Those looks were a third of a metric-path migration's RDS calls (the reboot's
/// 1–3 minutes, the promotion's 1–5, each a describe every 5 s).
pub const EVENT_POLL_FACTOR: i32 = 3;

/// When the cutover may begin.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CutoverPolicy {
    /// As soon as the replica has caught up.
    Automatic,
    /// When the owners set `<prefix>:approve` = `true`.
    ManualApproval,
    /// Inside a weekly UTC window, like RDS maintenance windows.
    Window(WeeklyWindow),
}

impl fmt::Display for CutoverPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CutoverPolicy::Automatic => f.write_str("automatic"),
            CutoverPolicy::ManualApproval => f.write_str("manual"),
            CutoverPolicy::Window(w) => write!(f, "window:{w}"),
        }
    }
}

impl FromStr for CutoverPolicy {
    type Err = String;
    /// `automatic`, `manual`, or `window:ddd:hh:mm-ddd:hh:mm`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "automatic" => Ok(CutoverPolicy::Automatic),
            "manual" => Ok(CutoverPolicy::ManualApproval),
            _ => match s.strip_prefix("window:") {
                Some(w) => w.parse().map(CutoverPolicy::Window),
                None => Err(format!(
                    "`{s}` is not a cutover policy: use `automatic`, `manual` or `window:ddd:hh:mm-ddd:hh:mm`"
                )),
            },
        }
    }
}

/// A weekly window in UTC, `ddd:hh:mm-ddd:hh:mm` (e.g. `sat:03:00-sat:05:00`). It may wrap
/// around the end of the week (`sun:23:00-mon:01:00`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WeeklyWindow {
    /// Minutes since Monday 00:00 UTC.
    pub start_minute: u32,
    pub end_minute: u32,
}

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
const MINUTES_PER_WEEK: u32 = 7 * 24 * 60;

impl WeeklyWindow {
    pub fn contains(&self, at: Timestamp) -> bool {
        // 1970-01-01 was a Thursday: three days after a Monday.
        let since_monday = at.as_second().div_euclid(60) + 3 * 24 * 60;
        let minute = since_monday.rem_euclid(i64::from(MINUTES_PER_WEEK)) as u32;
        if self.start_minute <= self.end_minute {
            (self.start_minute..self.end_minute).contains(&minute)
        } else {
            minute >= self.start_minute || minute < self.end_minute
        }
    }
}

fn parse_point(s: &str) -> Option<u32> {
    let mut parts = s.split(':');
    let (d, h, m) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || h.len() != 2 || m.len() != 2 {
        return None;
    }
    let day = DAYS.iter().position(|x| x.eq_ignore_ascii_case(d))? as u32;
    let hour: u32 = h.parse().ok().filter(|h| *h < 24)?;
    let minute: u32 = m.parse().ok().filter(|m| *m < 60)?;
    Some(day * 24 * 60 + hour * 60 + minute)
}

fn format_point(f: &mut fmt::Formatter<'_>, minute: u32) -> fmt::Result {
    let day = DAYS[(minute / (24 * 60)) as usize % 7];
    write!(f, "{day}:{:02}:{:02}", (minute / 60) % 24, minute % 60)
}

impl fmt::Display for WeeklyWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        format_point(f, self.start_minute)?;
        f.write_str("-")?;
        format_point(f, self.end_minute)
    }
}

impl FromStr for WeeklyWindow {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || {
            format!(
                "`{s}` is not a window: use ddd:hh:mm-ddd:hh:mm in UTC, e.g. sat:03:00-sat:05:00"
            )
        };
        let (a, b) = s.split_once('-').ok_or_else(bad)?;
        let start_minute = parse_point(a).ok_or_else(bad)?;
        let end_minute = parse_point(b).ok_or_else(bad)?;
        if start_minute == end_minute {
            return Err(format!("`{s}` is an empty window"));
        }
        debug_assert!(start_minute < MINUTES_PER_WEEK && end_minute < MINUTES_PER_WEEK);
        Ok(WeeklyWindow {
            start_minute,
            end_minute,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn a_window_contains_its_start_and_not_its_end() {
        let w: WeeklyWindow = "sat:03:00-sat:05:00".parse().unwrap();
        // 2026-11-28 is a Saturday.
        assert!(w.contains(at("2026-11-28T03:00:00Z")));
        assert!(w.contains(at("2026-11-28T04:59:59Z")));
        assert!(!w.contains(at("2026-11-28T05:00:00Z")));
        assert!(!w.contains(at("2026-11-27T04:00:00Z")));
        assert_eq!(w.to_string(), "sat:03:00-sat:05:00");
    }

    #[test]
    fn a_window_may_wrap_around_the_end_of_the_week() {
        let w: WeeklyWindow = "sun:23:00-mon:01:00".parse().unwrap();
        assert!(w.contains(at("2026-11-29T23:30:00Z"))); // Sunday
        assert!(w.contains(at("2026-11-30T00:30:00Z"))); // Monday
        assert!(!w.contains(at("2026-11-30T01:00:00Z")));
    }

    #[test]
    fn malformed_windows_are_refused_with_the_expected_form() {
        for bad in [
            "sat:3:00-sat:05:00",
            "sat:03:00",
            "fri:25:00-sat:01:00",
            "xyz:01:00-sat:01:00",
            "sat:03:00-sat:03:00",
        ] {
            assert!(bad.parse::<WeeklyWindow>().is_err(), "{bad}");
        }
        assert!(
            "window:sat:03:00-sat:05:00"
                .parse::<CutoverPolicy>()
                .is_ok()
        );
        assert!(
            "sometimes"
                .parse::<CutoverPolicy>()
                .unwrap_err()
                .contains("automatic")
        );
    }
}
