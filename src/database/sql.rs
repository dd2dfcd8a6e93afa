//! Every SQL statement the agent runs, and why each is safe to run on a production database.
//!
//! Two write: [`END_CLIENT_SESSIONS`] (signals backends) and [`WRITE_FENCE`] (one WAL record,
//! no table). Everything else reads catalogs and statistics views. None takes a lock stronger
//! than a catalog read's `AccessShareLock`, and every session runs with `statement_timeout`.
//!
//! "The agent's own session" is `pg_backend_pid()`; RDS's own sessions are the `rdsadmin`
//! user's; replication connections are `walsender`s, never `client backend`s.

/// The client sessions: pid, user, application, client address (`NULL` over a Unix socket),
/// backend start in microseconds since the epoch. Read-only (`pg_stat_activity`; other users'
/// addresses need `pg_read_all_stats`, which RDS's master user has through `rds_superuser`).
pub const CLIENT_SESSIONS: &str = "\
SELECT pid, coalesce(usename::text, ''), coalesce(application_name, ''), host(client_addr), \
       (extract(epoch FROM backend_start) * 1000000)::int8 \
FROM pg_stat_activity \
WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() \
  AND usename IS DISTINCT FROM 'rdsadmin' \
ORDER BY pid";

/// Ends the same sessions as [`CLIENT_SESSIONS`]: `pg_terminate_backend` (SIGTERM) on each,
/// one row per session with whether the signal was sent. Writes nothing; each ended backend
/// rolls back its open transaction. Needs `pg_signal_backend` (RDS's master user has it), and
/// is refused (42501) for a superuser's session, which on RDS only `rdsadmin` has.
pub const END_CLIENT_SESSIONS: &str = "\
SELECT pid, pg_terminate_backend(pid) \
FROM pg_stat_activity \
WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() \
  AND usename IS DISTINCT FROM 'rdsadmin' \
ORDER BY pid";

/// The write fence, one simple-query round trip: a transaction that writes one WAL record and
/// commits with `synchronous_commit = on`, then the WAL flush position.
///
/// Writes one transactional logical decoding message (prefix `aurora-migrator`), no table.
/// Logical decoding consumers see it only if they ask for messages, and skip unknown prefixes.
///
/// Why a message and not `txid_current()` alone: PostgreSQL flushes WAL at commit only when the
/// transaction wrote WAL before its commit record (`RecordTransactionCommit`: "The transaction
/// can end up not writing any WAL, even if it has an xid […] asynchronous commit"); a
/// transaction that only took an xid commits asynchronously whatever `synchronous_commit` says,
/// and the flush position can stay behind an asynchronous commit acknowledged before it
/// (measured on PostgreSQL 15 with `wal_writer_delay = 10s`: flush 0/1516C30 after an async
/// commit ending at 0/1516CA0). A transactional message takes an xid and writes a record, so
/// the commit's `XLogFlush` covers every WAL record inserted before it, each acknowledged
/// asynchronous commit included. `pg_logical_emit_message` runs at `wal_level = replica` too and
/// is executable by any user by default.
pub const WRITE_FENCE: &str = "\
BEGIN; \
SET LOCAL synchronous_commit = on; \
SELECT pg_logical_emit_message(true, 'aurora-migrator', 'write fence'); \
COMMIT; \
SELECT pg_current_wal_flush_lsn()::text";

/// Whether the server is a replica, and its replay position (`NULL` on a primary). Read-only.
pub const REPLAY_LSN: &str = "SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()::text";

/// `server_version_num`. Read-only.
pub const SERVER_VERSION_NUM: &str = "SELECT current_setting('server_version_num')::int4";

/// The databases the preflight visits: every connectable non-template one the agent may connect
/// to, except RDS's own. Read-only (`pg_database`).
pub const DATABASES: &str = "\
SELECT datname::text FROM pg_database \
WHERE datallowconn AND NOT datistemplate AND datname <> 'rdsadmin' \
  AND has_database_privilege(oid, 'CONNECT') \
ORDER BY datname";

/// Unlogged tables (plain or partitioned) of the connected database (`schema.table`): their
/// rows are not in the WAL. Read-only (`pg_class`).
pub const UNLOGGED_TABLES: &str = "\
SELECT n.nspname::text || '.' || c.relname::text \
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
WHERE c.relpersistence = 'u' AND c.relkind IN ('r', 'p') \
  AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
ORDER BY 1";

/// Installed extensions of the connected database, and whether pg_cron's job table is here.
/// Read-only (`pg_extension`, `to_regclass`).
pub const EXTENSIONS: &str = "\
SELECT extname::text, extversion, to_regclass('cron.job') IS NOT NULL \
FROM pg_extension ORDER BY 1";

/// Active pg_cron jobs (only in the database where pg_cron is installed, where [`EXTENSIONS`]
/// found `cron.job`). Read-only. pg_cron's row security shows a non-superuser only its own
/// jobs: on RDS, the master user's.
pub const CRON_JOBS: &str = "\
SELECT jobid::int8, schedule, command FROM cron.job WHERE active ORDER BY jobid";

/// Backend types running that are neither PostgreSQL's own processes nor RDS's
/// (`rdsadmin`'s): extension background workers (pg_cron's launcher, …). Logical replication
/// apply workers are reported (not in the list): a subscription writes into the database from
/// a connection the agent's security groups do not cut. Read-only.
pub const BACKGROUND_WORKERS: &str = "\
SELECT DISTINCT backend_type \
FROM pg_stat_activity \
WHERE backend_type NOT IN ('client backend', 'autovacuum launcher', 'autovacuum worker', \
        'logical replication launcher', 'walsender', 'walwriter', 'walreceiver', \
        'checkpointer', 'background writer', 'startup', 'archiver', 'parallel worker', \
        'standalone backend', 'slotsync worker', 'walsummarizer', 'io worker') \
  AND usename IS DISTINCT FROM 'rdsadmin' \
ORDER BY 1";

/// Logical replication slots and the WAL each retains, bytes. Read-only
/// (`pg_replication_slots`; `pg_current_wal_lsn()` fails on a replica: run on the source).
pub const LOGICAL_SLOTS: &str = "\
SELECT slot_name::text, coalesce(plugin::text, ''), active, \
       coalesce(greatest(pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn), 0), 0)::int8 \
FROM pg_replication_slots WHERE slot_type = 'logical' ORDER BY slot_name";

/// Prepared transactions' `gid`s. Read-only (`pg_prepared_xacts`).
pub const PREPARED_TRANSACTIONS: &str = "SELECT gid FROM pg_prepared_xacts ORDER BY gid";

/// Client sessions (as [`CLIENT_SESSIONS`] counts them) with a transaction open longer than
/// `$1` seconds (`float8`): pid and age in whole seconds. Read-only.
pub const OLD_TRANSACTIONS: &str = "\
SELECT pid, extract(epoch FROM now() - xact_start)::int8 \
FROM pg_stat_activity \
WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() \
  AND usename IS DISTINCT FROM 'rdsadmin' \
  AND xact_start IS NOT NULL AND now() - xact_start > make_interval(secs => $1::float8) \
ORDER BY xact_start";

/// The size of every database the agent may size, bytes. Read-only (`pg_database_size` needs
/// `CONNECT` on each database, which RDS's `rdsadmin` database does not grant).
pub const DATABASE_BYTES: &str = "\
SELECT coalesce(sum(pg_database_size(oid)), 0)::int8 FROM pg_database \
WHERE datname <> 'rdsadmin' AND has_database_privilege(oid, 'CONNECT')";
