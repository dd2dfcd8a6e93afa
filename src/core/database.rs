//! The database-aware cutover's vocabulary: where the agent connects, with which credentials,
//! and what it reads back (client sessions, WAL positions).
//!
//! Pure data. The adapter (`crate::database`) turns a [`DbTarget`] into a TLS connection with
//! credentials from Secrets Manager and runs the SQL; the phase machine only sees the answers.
//!
//! Why WAL positions: AWS's documented cutover for an Aurora read replica of an RDS instance is
//! "stop writes, read the source's WAL position, wait until the replica's
//! `pg_last_wal_replay_lsn()` has passed it, promote". The position the agent waits for is the
//! one of a durable barrier commit written after every client session has ended (see
//! `crate::ports::Database::write_fence`), never `pg_current_wal_lsn()` read alone: that is the
//! WAL *write* position, and an asynchronous commit (`synchronous_commit=off`) is acknowledged to
//! its client before its record is written, so it can lie past that position.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// A PostgreSQL WAL position (`pg_lsn`), ordered as the server orders them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct Lsn(pub u64);

impl fmt::Display for Lsn {
    /// PostgreSQL's own text form, `XXXXXXXX/XXXXXXXX` without leading zeros.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl FromStr for Lsn {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("`{s}` is not a WAL position (expected hex `X/X`)");
        let (hi, lo) = s.split_once('/').ok_or_else(bad)?;
        let hi = u32::from_str_radix(hi, 16).map_err(|_| bad())?;
        let lo = u32::from_str_radix(lo, 16).map_err(|_| bad())?;
        Ok(Lsn((u64::from(hi) << 32) | u64::from(lo)))
    }
}

impl From<Lsn> for String {
    fn from(l: Lsn) -> String {
        l.to_string()
    }
}

impl TryFrom<String> for Lsn {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

/// Where the credentials for a database come from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Credentials {
    /// A Secrets Manager secret (ARN or name) holding JSON with `username` and `password`: the
    /// instance's RDS-managed master secret (`MasterUserSecret`) or one an owner named by tag.
    Secret { secret_id: String },
    /// IAM database authentication as this database user (a token signed with the task role).
    IamUser { user: String },
}

impl fmt::Display for Credentials {
    /// Names the source of the credentials, never a credential.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::Secret { secret_id } => write!(f, "secret {secret_id}"),
            Credentials::IamUser { user } => write!(f, "IAM database authentication as {user}"),
        }
    }
}

/// The agent's access to one migration's databases, decided in Preflight and kept in the plan.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatabaseAccess {
    pub credentials: Credentials,
    /// The database to connect to (the instance's `DBName`, else `postgres`). Sessions are read
    /// server-wide from any database.
    pub database: String,
}

/// The tag suffix through which an instance's owners grant database access:
/// `<prefix>:database-access` = `master-secret` (the RDS-managed master secret,
/// `MasterUserSecret`), `secret:<name or ARN>` (a Secrets Manager secret with `username` and
/// `password`), or `iam:<database user>` (IAM database authentication).
pub const ACCESS_TAG: &str = "database-access";

/// The access an instance's tags grant, if the deployment allows database access at all
/// (`MIGRATOR_DATABASE_ACCESS`). `Ok(None)`: not asked for (the metric path, silently);
/// `Err`: asked for but unusable, with the reason (the metric path, and the preflight says why).
pub fn access_for(
    source: &super::observation::SourceInstance,
    policy: &super::policy::Policy,
) -> Result<Option<DatabaseAccess>, String> {
    let key = super::tags::key(&policy.tag_prefix, ACCESS_TAG);
    let Some(value) = source.tags.get(&key).map(|v| v.trim()) else {
        return Ok(None);
    };
    if !policy.database_access {
        return Err(format!(
            "{key} is set but this deployment does not allow database access (MIGRATOR_DATABASE_ACCESS)"
        ));
    }
    if policy.agent_security_group.is_none() {
        return Err(
            "MIGRATOR_AGENT_SECURITY_GROUP is not set: the quarantine could not admit the agent"
                .to_string(),
        );
    }
    let credentials = match value.split_once(':') {
        None if value == "master-secret" => match &source.master_user_secret_arn {
            Some(arn) => Credentials::Secret {
                secret_id: arn.clone(),
            },
            None => {
                return Err(format!(
                    "{key} = master-secret, but the instance has no RDS-managed master secret (MasterUserSecret)"
                ));
            }
        },
        Some(("secret", id)) if !id.trim().is_empty() => Credentials::Secret {
            secret_id: id.trim().to_string(),
        },
        Some(("iam", user)) if !user.trim().is_empty() => {
            if !source.iam_auth_enabled {
                return Err(format!(
                    "{key} = iam:{user}, but IAM database authentication is not enabled on the instance"
                ));
            }
            Credentials::IamUser {
                user: user.trim().to_string(),
            }
        }
        _ => {
            return Err(format!(
                "{key} = `{value}` is not one of `master-secret`, `secret:<name or ARN>`, `iam:<user>`"
            ));
        }
    };
    Ok(Some(DatabaseAccess {
        credentials,
        database: source
            .db_name
            .clone()
            .filter(|d| !d.is_empty())
            .unwrap_or_else(|| "postgres".to_string()),
    }))
}

/// One server to connect to: an endpoint and the access that opens it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DbTarget {
    pub host: String,
    pub port: u16,
    pub access: DatabaseAccess,
}

/// A client session on the server (`pg_stat_activity`, `backend_type = 'client backend'`),
/// other than the agent's own connection and RDS's (`rdsadmin`). Replication connections
/// (walsenders: the Aurora replica, CDC consumers) are not client sessions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientSession {
    pub pid: i32,
    pub user: String,
    pub application: String,
    /// The client's address (`None` for a Unix-socket session: something on the server itself).
    pub client_addr: Option<String>,
    pub backend_start: Option<Timestamp>,
}

impl fmt::Display for ClientSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "pid {} ({} from {}",
            self.pid,
            self.user,
            self.client_addr.as_deref().unwrap_or("local socket")
        )?;
        if !self.application.is_empty() {
            write!(f, ", {}", self.application)?;
        }
        write!(f, ")")
    }
}

/// What the database itself says in Preflight (each list empty when there is nothing to say).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SqlPreflight {
    /// The server's `server_version_num` (e.g. 150007).
    pub server_version_num: u32,
    /// Unlogged tables (`database.schema.table`), in every database the agent can connect to: their
    /// rows are not in the WAL, so the replica has them empty.
    pub unlogged_tables: Vec<String>,
    /// Installed extensions (name, version), from every database.
    pub extensions: Vec<(String, String)>,
    /// pg_cron jobs that are active (`jobid: schedule command`, shortened): writers inside the
    /// database that the quarantine does not stop.
    pub cron_jobs: Vec<String>,
    /// Background workers that are not PostgreSQL's or RDS's own (`backend_type`).
    pub background_workers: Vec<String>,
    pub logical_slots: Vec<LogicalSlot>,
    /// Prepared transactions (`gid`): they hold locks and WAL, and commit only when asked.
    pub prepared_transactions: Vec<String>,
    /// Open transactions older than the threshold the adapter was asked about (pid, age s).
    pub old_transactions: Vec<(i32, u64)>,
    /// Sum of `pg_database_size` over every database, bytes.
    pub database_bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogicalSlot {
    pub name: String,
    pub plugin: String,
    pub active: bool,
    /// WAL retained for the slot (`pg_current_wal_lsn() - restart_lsn`), bytes.
    pub retained_bytes: u64,
}

/// Tables estimated (`pg_class.reltuples`) below this many rows, and small on disk, are counted
/// exactly (`count(*)`): a full scan of a small table takes milliseconds. 100 000 rows.
pub const SMALL_TABLE_ROWS: u64 = 100_000;

/// ... and below this size (`pg_relation_size`), bytes: `reltuples` may be stale or unknown
/// (`-1` before the first ANALYZE); the size keeps a full scan cheap anyway. 64 MiB.
pub const SMALL_TABLE_BYTES: u64 = 64 * 1024 * 1024;

/// How many of a large table's newest rows (by primary key, descending) are digested. 10: one
/// backward scan of the primary key's index, a few pages, whatever the table's size; the rows
/// written last are the ones a replication gap at the cutover would miss.
pub const NEWEST_ROWS: u32 = 10;

/// How far ahead of the primary a replica's sequence may be: PostgreSQL WAL-logs a sequence
/// `SEQ_LOG_VALS` (32) values, plus the sequence's cache, ahead of what `nextval` handed out,
/// so a replica (and a promoted one) shows the logged value, up to that many increments past
/// the primary's `last_value`. Never behind it.
pub const SEQUENCE_LOG_AHEAD: i64 = 32;

/// A few cheap and telling facts of one database, read to cross-check a promoted Aurora cluster
/// against its fenced source before any traffic reaches it (`core::machine::consistency`).
/// Read within a time budget: what the budget did not allow is in neither map and counted in
/// `unread`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint {
    /// The database read (`DatabaseAccess::database`); other databases are not read.
    pub database: String,
    /// Sequences by `schema.name` (quoted where PostgreSQL would quote them).
    pub sequences: BTreeMap<String, SequenceState>,
    /// Tables (plain and partitions; not views, not foreign tables) by `schema.name`.
    pub tables: BTreeMap<String, TableFacts>,
    /// Tables and sequences listed but not read before the budget ran out.
    pub unread: u32,
}

/// A sequence as `pg_sequences` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SequenceState {
    /// `last_value`; `None` when never used (or, with `readable` false, not readable).
    pub last_value: Option<i64>,
    pub increment_by: i64,
    pub cache_size: i64,
    /// The agent may read it (`USAGE` or `SELECT`); an unreadable one is not compared.
    pub readable: bool,
}

/// What was read of one table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TableFacts {
    /// A small table's exact row count.
    Rows(i64),
    /// A large table's newest rows by primary key: `md5` of their text forms in key order
    /// (empty: no row), read with fixed output settings (UTC, ISO dates).
    Newest(String),
    /// Not compared, and why (no primary key, no privilege).
    Skipped(String),
}

/// What [`compare`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Comparison {
    /// Each difference, naming the table or sequence. Any one means the two databases do not
    /// hold the same data.
    pub differences: Vec<String>,
    /// How many sequences and tables were compared.
    pub compared: u32,
    /// How many were not (skipped, unread within the budget, or read differently on each side
    /// because their statistics differ).
    pub not_compared: u32,
}

/// Compares a fenced source's fingerprint with its promoted replica's (read after the source's
/// last write, before the replica took any). Pure.
///
/// - Sequences: the replica's `last_value` must be at or past the source's, and at most
///   `(SEQUENCE_LOG_AHEAD + cache) × increment` past it (see [`SEQUENCE_LOG_AHEAD`]); behind
///   means the replica missed WAL, and promoted it would hand out values already used.
/// - Tables read the same way on both sides: equal counts, equal digests.
/// - A table or sequence present on one side only, when the other side read everything of its
///   kind it listed, is a difference too (created or dropped after the fence).
pub fn compare(source: &Fingerprint, target: &Fingerprint) -> Comparison {
    let mut c = Comparison::default();
    let complete = source.unread == 0 && target.unread == 0;
    for (name, s) in &source.sequences {
        match target.sequences.get(name) {
            None if complete => c
                .differences
                .push(format!("sequence {name} exists on the source only")),
            None => c.not_compared += 1,
            Some(t) if !(s.readable && t.readable) => c.not_compared += 1,
            Some(t) => {
                c.compared += 1;
                if let Some(why) = sequence_differs(s, t) {
                    c.differences.push(format!("sequence {name}: {why}"));
                }
            }
        }
    }
    for name in target.sequences.keys() {
        if !source.sequences.contains_key(name) {
            if complete {
                c.differences
                    .push(format!("sequence {name} exists on Aurora only"));
            } else {
                c.not_compared += 1;
            }
        }
    }
    for (name, s) in &source.tables {
        match (s, target.tables.get(name)) {
            (_, None) if complete => c
                .differences
                .push(format!("table {name} exists on the source only")),
            (TableFacts::Rows(a), Some(TableFacts::Rows(b))) => {
                c.compared += 1;
                if a != b {
                    c.differences.push(format!(
                        "table {name}: {a} rows on the source, {b} on Aurora"
                    ));
                }
            }
            (TableFacts::Newest(a), Some(TableFacts::Newest(b))) => {
                c.compared += 1;
                if a != b {
                    c.differences.push(format!(
                        "table {name}: its newest {NEWEST_ROWS} rows by primary key differ"
                    ));
                }
            }
            _ => c.not_compared += 1,
        }
    }
    for name in target.tables.keys() {
        if !source.tables.contains_key(name) {
            if complete {
                c.differences
                    .push(format!("table {name} exists on Aurora only"));
            } else {
                c.not_compared += 1;
            }
        }
    }
    c.not_compared += source.unread.max(target.unread);
    c
}

/// Why a replica's sequence does not match its source's, if it does not.
fn sequence_differs(s: &SequenceState, t: &SequenceState) -> Option<String> {
    let (a, b) = match (s.last_value, t.last_value) {
        (None, None) => return None,
        (Some(a), Some(b)) => (a, b),
        (a, b) => {
            let show = |v: Option<i64>| v.map_or("never used".to_string(), |v| v.to_string());
            return Some(format!("{} on the source, {} on Aurora", show(a), show(b)));
        }
    };
    // In the sequence's direction: how far the replica is past the source.
    let ahead = (i128::from(b) - i128::from(a)) * i128::from(s.increment_by.signum());
    let allowed = (i128::from(SEQUENCE_LOG_AHEAD) + i128::from(s.cache_size.max(1)))
        * i128::from(s.increment_by).abs();
    if (0..=allowed).contains(&ahead) {
        None
    } else {
        Some(format!("last value {a} on the source, {b} on Aurora"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_parses_and_prints_like_postgres_and_orders_by_position() {
        let a: Lsn = "0/16B3748".parse().unwrap();
        let b: Lsn = "1/0".parse().unwrap();
        assert_eq!(a.0, 0x16B_3748);
        assert_eq!(b.0, 1 << 32);
        assert!(a < b);
        assert_eq!(a.to_string(), "0/16B3748");
        assert_eq!(b.to_string(), "1/0");
        assert!("16B3748".parse::<Lsn>().is_err());
        assert!("0/xyz".parse::<Lsn>().is_err());
        let json = serde_json::to_string(&a).unwrap();
        assert_eq!(json, "\"0/16B3748\"");
        assert_eq!(serde_json::from_str::<Lsn>(&json).unwrap(), a);
    }

    fn seq(last: Option<i64>) -> SequenceState {
        SequenceState {
            last_value: last,
            increment_by: 1,
            cache_size: 1,
            readable: true,
        }
    }

    fn fp(seqs: &[(&str, Option<i64>)], tables: &[(&str, TableFacts)]) -> Fingerprint {
        Fingerprint {
            database: "app".into(),
            sequences: seqs.iter().map(|(n, v)| (n.to_string(), seq(*v))).collect(),
            tables: tables
                .iter()
                .map(|(n, f)| (n.to_string(), f.clone()))
                .collect(),
            unread: 0,
        }
    }

    #[test]
    fn compare_names_each_difference_and_allows_a_replica_sequence_logged_ahead() {
        let source = fp(
            &[("public.a_seq", Some(100)), ("public.b_seq", Some(7))],
            &[
                ("public.a", TableFacts::Rows(3)),
                ("public.big", TableFacts::Newest("x".into())),
                ("public.nokey", TableFacts::Skipped("no primary key".into())),
            ],
        );
        // A replica shows a sequence up to 32 + cache values ahead: not a difference (33 here);
        // 34 ahead is.
        let same = fp(
            &[("public.a_seq", Some(132)), ("public.b_seq", Some(7))],
            &[
                ("public.a", TableFacts::Rows(3)),
                ("public.big", TableFacts::Newest("x".into())),
                ("public.nokey", TableFacts::Skipped("no primary key".into())),
            ],
        );
        let c = compare(&source, &same);
        assert_eq!(c.differences, Vec::<String>::new());
        assert_eq!((c.compared, c.not_compared), (4, 1));

        let other = fp(
            &[("public.a_seq", Some(99)), ("public.b_seq", Some(41))],
            &[
                ("public.a", TableFacts::Rows(4)),
                ("public.big", TableFacts::Newest("y".into())),
                ("public.nokey", TableFacts::Skipped("no primary key".into())),
                ("public.new", TableFacts::Rows(0)),
            ],
        );
        let c = compare(&source, &other);
        let all = c.differences.join("\n");
        for name in [
            "public.a_seq",
            "public.b_seq",
            "public.a",
            "public.big",
            "public.new",
        ] {
            assert!(all.contains(name), "{name} not named in:\n{all}");
        }
        assert_eq!(c.differences.len(), 5, "{all}");
    }

    #[test]
    fn compare_does_not_call_unread_or_differently_read_tables_differences() {
        let source = fp(&[], &[("public.a", TableFacts::Rows(3))]);
        let mut target = fp(&[], &[("public.a", TableFacts::Newest("x".into()))]);
        let c = compare(&source, &target);
        assert!(c.differences.is_empty());
        assert_eq!(c.not_compared, 1);
        // Cut short by the budget: a table missing on one side is not a difference.
        target.tables.clear();
        target.unread = 1;
        let c = compare(&source, &target);
        assert!(c.differences.is_empty(), "{:?}", c.differences);
        target.unread = 0;
        assert_eq!(compare(&source, &target).differences.len(), 1);
    }
}
