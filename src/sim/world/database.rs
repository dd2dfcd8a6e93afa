//! PostgreSQL inside the simulated sources and Aurora writers (the `Database` port), for the
//! sources whose owners granted database access by tag (the database-aware cutover).
//!
//! # Model
//! - Client sessions: the application's pool holds `clients` sessions on its source while the
//!   source is up and the pool can reach it, and keeps them across a security group change
//!   (connection tracking) until they are terminated or the source reboots. These are the
//!   world's `sessions_open`: the same sessions that let the source keep acknowledging writes
//!   behind the quarantine, so ending them is what stops the writes.
//! - WAL: a write's position is `WAL_BASE + seq × bytes_per_write` (`seq` is the world's
//!   sequence number of acknowledged writes), so the source's WAL advances with the
//!   application's writes and only while it can write. The fence's own commit record is taken
//!   as zero bytes long: its flush position is the position of the last acknowledged write.
//! - Replay: the Aurora writer's `pg_last_wal_replay_lsn()` is the position of the last write
//!   the replica applied (the world's replication model, `repl_delay_ms` behind the source);
//!   `None` once promoted (not in recovery).
//!
//! # Latencies (in-VPC, every call its own connection, as the adapter does)
//! TLS connect and password authentication 30–80 ms, then the query: reading sessions 2–10 ms,
//! `pg_terminate_backend` ~10 ms (5–15) with the backends exiting 5–50 ms later, the fence
//! 5–20 ms, the replay position 1–5 ms, the preflight's queries 50–300 ms.
//!
//! # Faults (`FaultIntensity::db_*`, scaled with the rest; the report counts them)
//! Per call, from the run's fault stream: the connection drops mid-call (`Retryable`; on a
//! mutating call half of the drops come after the statement ran, so it took effect and the
//! answer was lost), a slow connect (1–10 s), the agent process dying (as for AWS calls).
//! Per source, drawn when the source is created (or scripted, `FaultPlan::database`):
//! - the master secret cannot be read: every SQL call is refused (`Fatal`), so the preflight
//!   plans the metric path;
//! - one client reconnects once, 50 ms–1.5 s after its session was ended (a pool's retry; it
//!   writes until ended again: any fence written before it is void);
//! - rarer, a persistent hole: a client reconnects 50 ms–1.5 s after every end. The core must
//!   not promote and must roll back losslessly when the write budget runs out;
//! - stuck sessions: `pg_terminate_backend` answers but the backends never exit; the core
//!   falls back to the reboot, which ends them.
//!
//! Not modelled, because no check of sessions can see it: a client behind a hole that comes
//! back later than the agent's quiet period (it can arrive after the last session check, while
//! PromoteReadReplicaDBCluster is in flight, and write what Aurora never receives; an earlier
//! version of this model with 0.3–5 s reconnections found exactly that, seed 45), and a client
//! that connects, writes and disconnects by itself between two reads. Pools here hold their
//! sessions until they are ended. The metric path has the same exposure to a hole after the
//! reboot.

use super::port::Delay;
use super::*;
use std::time::Duration;

use crate::core::database::{
    ClientSession, DbTarget, Fingerprint, Lsn, SequenceState, SqlPreflight, TableFacts,
};
use crate::ports::Database;
use crate::sim::faults::DbFault;

/// Where the simulated WALs start (any position above the first segment).
const WAL_BASE: u64 = 0x16B_3748;
/// How many sessions a sessions reading lists at most (the pool's first ones; the core only
/// needs to know that there are some, and names them in alerts).
const SESSIONS_LISTED: u32 = 8;

/// A database-aware source's inside.
#[derive(Clone, Debug, Default)]
pub struct SourceDb {
    pub fault: Option<DbFault>,
    /// The one reconnection of `ReconnectOnce` has happened.
    reconnected_once: bool,
    /// Sessions terminated (`pg_terminate_backend` calls that found any) and fences written.
    pub ended: u32,
    pub fences: u32,
}

impl SourceDb {
    pub fn new(fault: Option<DbFault>) -> Self {
        SourceDb {
            fault,
            ..SourceDb::default()
        }
    }
}

/// The WAL position right after the write numbered `seq`.
fn lsn(seq: u64, bytes_per_write: u64) -> Lsn {
    Lsn(WAL_BASE + seq * bytes_per_write)
}

/// A dropped or refused connection.
fn refused(op: &str, why: &str) -> PortError {
    PortError::new(ErrorKind::Retryable, op, why)
}

/// What one SQL call suffers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DbCallFault {
    None,
    /// The connection dropped before the statement ran.
    DroppedBefore,
    /// The statement ran; the connection dropped before the answer arrived.
    DroppedAfter,
    Slow(Ms),
    CrashBefore,
    CrashAfter,
}

impl State {
    /// Gives `id` database access (called when the run creates its sources).
    pub fn grant_database_access(&mut self, id: &str, fault: Option<DbFault>) {
        let Some(s) = self.sources.get_mut(id) else {
            return;
        };
        s.view.tags.insert(
            "aurora-migration:database-access".to_string(),
            "master-secret".to_string(),
        );
        s.view.master_user_secret_arn = Some(format!(
            "arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:rds!db-{:04}-a1b2c3",
            s.index
        ));
        s.db = Some(SourceDb::new(fault));
        if let Some(f) = fault {
            self.db_fault(match f {
                DbFault::SecretUnreadable => "secret unreadable",
                DbFault::ReconnectOnce => "client reconnects once",
                DbFault::PersistentHole => "client keeps reconnecting (hole)",
                DbFault::StuckSessions => "sessions do not end",
            });
            self.log(|| format!("{id}: database fault {f:?}"));
        }
    }

    fn db_fault(&mut self, what: &'static str) {
        *self.db_faults.entry(what).or_default() += 1;
    }

    /// Counts a SQL call and draws its latency (connect + query) and fault.
    fn begin_db_call(
        &mut self,
        op: &'static str,
        mutating: bool,
        query: (Ms, Ms),
    ) -> (Ms, DbCallFault) {
        let scripted = self.count_call(op);
        let i = &self.plan.intensity;
        let r = &mut self.fault_rng;
        let fault = match scripted {
            Some(CallFault::CrashBefore) => DbCallFault::CrashBefore,
            Some(CallFault::CrashAfter) => DbCallFault::CrashAfter,
            Some(CallFault::LostAnswer) => DbCallFault::DroppedAfter,
            Some(CallFault::Error(_)) => DbCallFault::DroppedBefore,
            Some(CallFault::Slow(ms)) => DbCallFault::Slow(ms),
            Some(CallFault::None | CallFault::ReceivedLate(_)) => DbCallFault::None,
            None if r.chance(i.crash) => {
                if r.chance(0.5) {
                    DbCallFault::CrashBefore
                } else {
                    DbCallFault::CrashAfter
                }
            }
            None if r.chance(i.db_connection_drop) => {
                if mutating && r.chance(0.5) {
                    DbCallFault::DroppedAfter
                } else {
                    DbCallFault::DroppedBefore
                }
            }
            None if r.chance(i.slow) => DbCallFault::Slow(r.range(SEC, 10 * SEC)),
            None => DbCallFault::None,
        };
        let latency = match fault {
            DbCallFault::Slow(ms) => ms,
            _ => self.latency_rng.range(30, 80) + self.latency_rng.range(query.0, query.1),
        };
        if matches!(
            fault,
            DbCallFault::DroppedBefore | DbCallFault::DroppedAfter
        ) {
            self.db_fault("connection dropped");
        }
        if fault != DbCallFault::None {
            self.log(|| format!("fault: {op} → {fault:?}"));
        }
        (latency, fault)
    }

    /// The source whose endpoint is `host`, reachable by the agent with readable credentials.
    fn db_source(&mut self, op: &str, host: &str) -> PortResult<String> {
        let id = self
            .sources
            .iter()
            .find(|(_, s)| s.view.endpoint.as_ref().is_some_and(|e| e.address == host))
            .map(|(id, _)| id.clone())
            .ok_or_else(|| {
                refused(
                    op,
                    "could not translate host name: Name or service not known",
                )
            })?;
        self.sync(&id);
        let s = &self.sources[&id];
        let Some(db) = &s.db else {
            return Err(PortError::new(
                ErrorKind::Fatal,
                op,
                "password authentication failed for user \"postgres\"",
            ));
        };
        if db.fault == Some(DbFault::SecretUnreadable) {
            return Err(PortError::new(
                ErrorKind::Fatal,
                op,
                "secretsmanager:GetSecretValue: AccessDeniedException (the task role cannot read the master secret)",
            ));
        }
        if !s.up() {
            return Err(refused(
                op,
                &format!("connection refused (the instance is {})", s.view.status),
            ));
        }
        Ok(id)
    }

    fn client_sessions(&mut self, host: &str) -> PortResult<Vec<ClientSession>> {
        let id = self.db_source("postgres:client_sessions", host)?;
        let s = &self.sources[&id];
        if !s.sessions_open {
            return Ok(Vec::new());
        }
        let started = Some(self.ts(s.sessions_since));
        let pid_base = 10_000 + (s.sessions_since.rem_euclid(50_000)) as i32;
        Ok(if s.lone_client {
            vec![ClientSession {
                pid: pid_base,
                user: "orders_app".to_string(),
                application: "orders-worker".to_string(),
                client_addr: Some("10.9.0.7".to_string()),
                backend_start: started,
            }]
        } else {
            (0..s.clients.min(SESSIONS_LISTED))
                .map(|k| ClientSession {
                    pid: pid_base + k as i32,
                    user: "orders_app".to_string(),
                    application: "orders-api".to_string(),
                    client_addr: Some(format!("10.0.{}.{}", s.index % 250, 10 + k)),
                    backend_start: started,
                })
                .collect()
        })
    }

    fn end_client_sessions(&mut self, host: &str) -> PortResult<u32> {
        let id = self.db_source("postgres:end_client_sessions", host)?;
        let now = self.now;
        let s = self.sources.get_mut(&id).expect("found");
        s.sessions_end_called_at.get_or_insert(now);
        if !s.sessions_open {
            return Ok(0);
        }
        let n = if s.lone_client { 1 } else { s.clients };
        let db = s.db.as_mut().expect("checked by db_source");
        db.ended += 1;
        if db.fault == Some(DbFault::StuckSessions) {
            // pg_terminate_backend returns true; the backends never exit.
            return Ok(n);
        }
        // The adapter waits for the signalled backends to exit (5–50 ms, in the call's latency):
        // by the time the call returns they are gone.
        self.sessions_ended(&id);
        Ok(n)
    }

    /// Terminated backends exit: the source stops acknowledging writes unless the pool can
    /// reach it (then it reconnects at once, as a pool does). A client behind a hole comes back.
    pub(super) fn sessions_ended(&mut self, id: &str) {
        self.sync(id);
        let Some(s) = self.sources.get_mut(id) else {
            return;
        };
        if !s.sessions_open {
            return;
        }
        s.sessions_open = false;
        let comes_back = match s.db.as_mut() {
            Some(db) if db.fault == Some(DbFault::PersistentHole) => true,
            Some(db) if db.fault == Some(DbFault::ReconnectOnce) && !db.reconnected_once => {
                db.reconnected_once = true;
                true
            }
            _ => false,
        };
        self.refresh(id);
        self.log(|| format!("{id}: client sessions ended"));
        if comes_back {
            // A pool retries at once or after a short backoff (50 ms–1.5 s): often within the
            // agent's quiet period (`sessions_quiet_for`, 1 s), otherwise after the fence,
            // which the proof's and the promotion's session reads then void.
            let after = self.world_rng.range(50, 1500);
            self.schedule(after, Ev::ClientReconnects(id.to_string()));
        }
    }

    /// A client gets in past the quarantine and writes until its session is ended.
    pub(super) fn client_reconnects(&mut self, id: &str) {
        self.sync(id);
        let now = self.now;
        let Some(s) = self.sources.get_mut(id) else {
            return;
        };
        if s.sessions_open || !s.up() {
            return;
        }
        s.sessions_open = true;
        s.lone_client = true;
        s.sessions_since = now;
        self.refresh(id);
        self.log(|| format!("{id}: a client reconnected past the quarantine"));
    }

    fn write_fence(&mut self, host: &str) -> PortResult<Lsn> {
        let id = self.db_source("postgres:write_fence", host)?;
        let now = self.now;
        let s = self.sources.get_mut(&id).expect("found");
        s.db.as_mut().expect("checked by db_source").fences += 1;
        let at = lsn(s.acked, s.bytes_per_write);
        // With no writes since `changed_at`, the replica holds every one `repl_delay_ms` later
        // (`Source::backlog`); while writes go on, a fence is void anyway.
        s.fence_written_at = Some(now);
        s.fence_replayable_at = Some(if s.was_writable {
            now + s.repl_delay_ms
        } else {
            now.max(s.changed_at + s.repl_delay_ms)
        });
        self.log(|| format!("{id}: fence written at {at}"));
        Ok(at)
    }

    fn replay_lsn(&mut self, host: &str) -> PortResult<Option<Lsn>> {
        let op = "postgres:replay_lsn";
        let Some((name, src)) = self
            .clusters
            .iter()
            .find(|(_, c)| {
                c.view
                    .writer_endpoint
                    .as_ref()
                    .is_some_and(|e| e.address == host)
            })
            .map(|(n, c)| (n.clone(), c.source.clone()))
        else {
            return Err(refused(
                op,
                "could not translate host name: Name or service not known",
            ));
        };
        self.sync(&src);
        let bytes_per_write = self.sources.get(&src).map_or(1, |s| s.bytes_per_write);
        if self.sources.get(&src).and_then(|s| s.db.as_ref()).is_none() {
            return Err(PortError::new(
                ErrorKind::Fatal,
                op,
                "password authentication failed",
            ));
        }
        let c = &self.clusters[&name];
        if c.view.status == "deleting" {
            return Err(refused(
                op,
                "connection refused (the cluster is being deleted)",
            ));
        }
        // In recovery until promotion finishes; the position stays where replication stopped.
        Ok(c.view
            .replication_source
            .is_some()
            .then(|| lsn(c.applied, bytes_per_write)))
    }

    /// The consistency check's view: one table of the application's writes and its sequence,
    /// as many rows as the side has (acknowledged on the source, applied on Aurora).
    fn fingerprint(&mut self, host: &str) -> PortResult<Fingerprint> {
        let op = "postgres:fingerprint";
        let rows = match self.db_source(op, host) {
            Ok(id) => self.sources[&id].acked,
            Err(e) => {
                let cluster = self.clusters.values().find(|c| {
                    c.view
                        .writer_endpoint
                        .as_ref()
                        .is_some_and(|e| e.address == host)
                });
                match cluster {
                    Some(c) if c.view.status != "deleting" => c.applied,
                    _ => return Err(e),
                }
            }
        };
        let n = i64::try_from(rows).unwrap_or(i64::MAX);
        Ok(Fingerprint {
            database: "postgres".to_string(),
            sequences: BTreeMap::from([(
                "public.orders_id_seq".to_string(),
                SequenceState {
                    last_value: (n > 0).then_some(n),
                    increment_by: 1,
                    cache_size: 1,
                    readable: true,
                },
            )]),
            tables: BTreeMap::from([("public.orders".to_string(), TableFacts::Rows(n))]),
            unread: 0,
        })
    }

    fn sql_preflight(&mut self, host: &str) -> PortResult<SqlPreflight> {
        let id = self.db_source("postgres:preflight", host)?;
        let s = &self.sources[&id];
        let (major, minor) = s
            .view
            .engine_version
            .split_once('.')
            .and_then(|(a, b)| Some((a.parse::<u32>().ok()?, b.parse::<u32>().ok()?)))
            .unwrap_or((15, 0));
        Ok(SqlPreflight {
            server_version_num: major * 10_000 + minor,
            extensions: vec![("plpgsql".to_string(), "1.0".to_string())],
            database_bytes: u64::from(s.view.allocated_storage_gib) * (GIB as u64) / 3,
            ..SqlPreflight::default()
        })
    }
}

impl SimPort {
    /// One SQL call: counted, delayed by connect + query, faulted as the plan draws, and run
    /// against the world when the statement lands.
    async fn db_call<T>(
        &self,
        op: &'static str,
        mutating: bool,
        query: (Ms, Ms),
        f: impl FnOnce(&mut State) -> PortResult<T>,
    ) -> PortResult<T> {
        let (latency, fault) = self.lock().begin_db_call(op, mutating, query);
        if fault == DbCallFault::CrashBefore {
            return self.crash(op).await;
        }
        let until = self.lock().now + latency;
        Delay::until(&self.state, until).await;
        let answer = {
            let mut s = self.lock();
            match fault {
                DbCallFault::DroppedBefore => Some(Err(refused(
                    op,
                    "server closed the connection unexpectedly",
                ))),
                DbCallFault::DroppedAfter => {
                    let _ = f(&mut s);
                    Some(Err(refused(
                        op,
                        "connection reset by peer while reading the answer",
                    )))
                }
                DbCallFault::CrashAfter => {
                    let _ = f(&mut s);
                    None
                }
                DbCallFault::None | DbCallFault::Slow(_) | DbCallFault::CrashBefore => {
                    Some(f(&mut s))
                }
            }
        };
        match answer {
            Some(a) => a,
            None => self.crash(op).await,
        }
    }
}

impl Database for SimPort {
    async fn client_sessions(&self, at: &DbTarget) -> PortResult<Vec<ClientSession>> {
        self.db_call("postgres:client_sessions", false, (2, 10), |s| {
            s.client_sessions(&at.host)
        })
        .await
    }

    async fn end_client_sessions(&self, at: &DbTarget) -> PortResult<u32> {
        self.db_call("postgres:end_client_sessions", true, (10, 65), |s| {
            s.end_client_sessions(&at.host)
        })
        .await
    }

    async fn write_fence(&self, at: &DbTarget) -> PortResult<Lsn> {
        self.db_call("postgres:write_fence", true, (5, 20), |s| {
            s.write_fence(&at.host)
        })
        .await
    }

    async fn replay_lsn(&self, at: &DbTarget) -> PortResult<Option<Lsn>> {
        self.db_call("postgres:replay_lsn", false, (1, 5), |s| {
            s.replay_lsn(&at.host)
        })
        .await
    }

    async fn fingerprint(&self, at: &DbTarget, _budget: Duration) -> PortResult<Fingerprint> {
        self.db_call("postgres:fingerprint", false, (60, 200), |s| {
            s.fingerprint(&at.host)
        })
        .await
    }

    async fn preflight(&self, at: &DbTarget, _old_after_s: u64) -> PortResult<SqlPreflight> {
        self.db_call("postgres:preflight", false, (50, 300), |s| {
            s.sql_preflight(&at.host)
        })
        .await
    }
}
