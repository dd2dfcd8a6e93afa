//! Every SQL statement the agent runs, and why each is safe to run on a production database.
//!
//! Two write: [`END_CLIENT_SESSIONS`] (signals backends) and [`WRITE_FENCE`] (one WAL record,
//! no table). Everything else reads catalogs and statistics views, and the consistency check's
//! reads of tables ([`count_rows`], [`newest_rows`]) run inside a `READ ONLY` transaction
//! ([`FINGERPRINT_BEGIN`]) where PostgreSQL itself refuses any write. None takes a lock stronger
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

/// How many of the given backends still exist: after [`END_CLIENT_SESSIONS`] the agent waits
/// (briefly) until the signalled backends have exited, so that its next look does not see
/// sessions that are already on their way out. Read-only. (`pg_terminate_backend(pid, timeout)`
/// would wait by itself, but only from PostgreSQL 14; RDS still runs 11–13.)
pub const LIVE_BACKENDS: &str = "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1)";

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

/// Opens the consistency check's transaction: `READ ONLY` (PostgreSQL refuses every write in
/// it), `REPEATABLE READ` (every read sees one snapshot), and output settings fixed so that a
/// row's text form does not depend on a server's defaults (Aurora's parameter group may set
/// another `TimeZone` or `DateStyle` than the source's). `statement_timeout` is set after it,
/// to what is left of the check's budget ([`FINGERPRINT_TIMEOUT`]).
pub const FINGERPRINT_BEGIN: &str = "\
BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; \
SET LOCAL TimeZone = 'UTC'; \
SET LOCAL DateStyle = 'ISO, YMD'; \
SET LOCAL IntervalStyle = 'postgres'; \
SET LOCAL extra_float_digits = 1; \
SET LOCAL bytea_output = 'hex'";

/// Bounds every following statement of the check's transaction to what is left of its budget,
/// milliseconds (`$1`, text). Reads nothing, writes nothing.
pub const FINGERPRINT_TIMEOUT: &str = "SELECT set_config('statement_timeout', $1, true)";

/// Every sequence of the connected database outside the system schemas: `schema.name` (quoted
/// as needed), whether the agent may read it, `last_value` (`NULL`: never used, or not
/// readable), `increment_by`, `cache_size`. Read-only (`pg_sequences`, no lock on the
/// sequences: `pg_sequence_last_value` reads the sequence's page).
pub const SEQUENCES: &str = "\
SELECT format('%I.%I', schemaname, sequencename), \
       has_sequence_privilege(format('%I.%I', schemaname, sequencename), 'USAGE, SELECT'), \
       last_value, increment_by, cache_size \
FROM pg_sequences \
WHERE schemaname NOT IN ('pg_catalog', 'information_schema') AND schemaname NOT LIKE 'pg\\_%' \
ORDER BY 1";

/// The tables the check reads: permanent plain tables and partitions (a partitioned parent
/// holds no rows of its own; unlogged ones are not replicated and the preflight named them)
/// outside the system schemas. `schema.name` and the primary key's columns, each quoted as
/// needed (`NULL`: no primary key); whether it is small (`reltuples` known and below `$1`
/// (`float8`), and under `$2` bytes (`int8`): stale statistics cannot make a big table look
/// small); whether the agent may read it. Read-only (`pg_class`, `pg_index`, `pg_attribute`).
pub const TABLES: &str = "\
SELECT format('%I.%I', n.nspname, c.relname), \
       (SELECT array_agg(quote_ident(a.attname::text) ORDER BY k.i) \
          FROM pg_index x \
          CROSS JOIN unnest(x.indkey::int2[]) WITH ORDINALITY AS k(attnum, i) \
          JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum \
          WHERE x.indrelid = c.oid AND x.indisprimary), \
       c.reltuples >= 0 AND c.reltuples < $1::float8 AND pg_relation_size(c.oid) < $2::int8, \
       has_table_privilege(c.oid, 'SELECT') \
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
WHERE c.relkind = 'r' AND c.relpersistence = 'p' \
  AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%' \
ORDER BY 1";

/// Exact row counts of small tables, one statement for a batch: `(i, count)` for the `i`th
/// table. `tables` are `schema.name` as [`TABLES`] quoted them (catalog names, never input).
/// Read-only: a sequential scan under `AccessShareLock`, inside the `READ ONLY` transaction.
pub fn count_rows(tables: &[&str]) -> String {
    tables
        .iter()
        .enumerate()
        .map(|(i, t)| format!("SELECT {i}::int4, count(*)::int8 FROM {t}"))
        .collect::<Vec<_>>()
        .join(" UNION ALL ")
}

/// Digests of the newest `limit` rows by primary key of large tables, one statement for a
/// batch: `(i, md5)` for the `i`th `(table, key columns)`, `''` for an empty table. The rows'
/// text forms (`ROW(r.*)`: a column named like the alias cannot stand in), newest first, joined
/// by newlines. Names as [`TABLES`] quoted them. Read-only: a
/// backward scan of the primary key's index that stops after `limit` rows, inside the
/// `READ ONLY` transaction.
pub fn newest_rows(tables: &[(&str, &[String])], limit: u32) -> String {
    tables
        .iter()
        .enumerate()
        .map(|(i, (t, key))| {
            let desc = |prefix: &str| {
                key.iter()
                    .map(|c| format!("{prefix}{c} DESC"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            format!(
                "(SELECT {i}::int4, coalesce(md5(string_agg(ROW(r.*)::text, E'\\n' ORDER BY {})), '') \
                 FROM (SELECT * FROM {t} ORDER BY {} LIMIT {limit}) r)",
                desc("r."),
                desc("")
            )
        })
        .collect::<Vec<_>>()
        .join(" UNION ALL ")
}
