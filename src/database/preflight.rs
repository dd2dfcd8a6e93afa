//! The SQL preflight: what the database itself says before a migration starts.
//!
//! Server-wide facts (version, background workers, logical slots, prepared and old
//! transactions, total size) are read once on the plan's database; per-database ones (unlogged
//! tables, extensions, pg_cron jobs) on every database the agent can connect to, one connection
//! each, one after the other (a server has few databases, and this runs once per migration).

use std::collections::BTreeSet;

use super::credentials::SecretSource;
use super::{PgDatabase, Session, sql};
use crate::core::database::{DbTarget, LogicalSlot, SqlPreflight};
use crate::ports::PortResult;

const OPERATION: &str = "postgres:preflight";

/// How much of a pg_cron job's command is kept.
const COMMAND_CHARS: usize = 80;

pub(super) async fn read<S: SecretSource>(
    db: &PgDatabase<S>,
    at: &DbTarget,
    old_after_s: u64,
) -> PortResult<SqlPreflight> {
    let main = db.open(at, &at.access.database, OPERATION).await?;
    let version: i32 = main.get(&main.one(sql::SERVER_VERSION_NUM, &[]).await?, 0)?;
    let mut out = SqlPreflight {
        server_version_num: u32::try_from(version).unwrap_or(0),
        ..SqlPreflight::default()
    };
    for row in main.query(sql::BACKGROUND_WORKERS, &[]).await? {
        out.background_workers.push(main.get(&row, 0)?);
    }
    for row in main.query(sql::LOGICAL_SLOTS, &[]).await? {
        let retained: i64 = main.get(&row, 3)?;
        out.logical_slots.push(LogicalSlot {
            name: main.get(&row, 0)?,
            plugin: main.get(&row, 1)?,
            active: main.get(&row, 2)?,
            retained_bytes: u64::try_from(retained).unwrap_or(0),
        });
    }
    for row in main.query(sql::PREPARED_TRANSACTIONS, &[]).await? {
        out.prepared_transactions.push(main.get(&row, 0)?);
    }
    let threshold = old_after_s as f64;
    for row in main.query(sql::OLD_TRANSACTIONS, &[&threshold]).await? {
        let age: i64 = main.get(&row, 1)?;
        out.old_transactions
            .push((main.get(&row, 0)?, u64::try_from(age).unwrap_or(0)));
    }
    let bytes: i64 = main.get(&main.one(sql::DATABASE_BYTES, &[]).await?, 0)?;
    out.database_bytes = u64::try_from(bytes).unwrap_or(0);

    let mut databases = Vec::new();
    for row in main.query(sql::DATABASES, &[]).await? {
        databases.push(main.get::<String>(&row, 0)?);
    }
    let mut extensions = BTreeSet::new();
    for name in &databases {
        if *name == at.access.database {
            per_database(&main, name, &mut out, &mut extensions).await?;
        } else {
            let s = db.open(at, name, OPERATION).await?;
            per_database(&s, name, &mut out, &mut extensions).await?;
            s.close().await;
        }
    }
    main.close().await;
    out.extensions = extensions.into_iter().collect();
    Ok(out)
}

/// Unlogged tables, extensions and active pg_cron jobs of the database `s` is connected to.
async fn per_database(
    s: &Session,
    database: &str,
    out: &mut SqlPreflight,
    extensions: &mut BTreeSet<(String, String)>,
) -> PortResult<()> {
    for row in s.query(sql::UNLOGGED_TABLES, &[]).await? {
        let table: String = s.get(&row, 0)?;
        out.unlogged_tables.push(format!("{database}.{table}"));
    }
    let mut cron_here = false;
    for row in s.query(sql::EXTENSIONS, &[]).await? {
        extensions.insert((s.get(&row, 0)?, s.get(&row, 1)?));
        cron_here |= s.get::<bool>(&row, 2)?;
    }
    if cron_here {
        for row in s.query(sql::CRON_JOBS, &[]).await? {
            let id: i64 = s.get(&row, 0)?;
            let schedule: String = s.get(&row, 1)?;
            let command: String = s.get(&row, 2)?;
            out.cron_jobs
                .push(format!("{id}: {schedule} {}", shorten(&command)));
        }
    }
    Ok(())
}

/// One line of at most [`COMMAND_CHARS`] characters.
fn shorten(command: &str) -> String {
    let line = command.split_whitespace().collect::<Vec<_>>().join(" ");
    if line.chars().count() <= COMMAND_CHARS {
        line
    } else {
        let mut s: String = line.chars().take(COMMAND_CHARS - 1).collect();
        s.push('…');
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cron_commands_are_shortened_to_one_line() {
        assert_eq!(shorten("VACUUM\n  ANALYZE   t"), "VACUUM ANALYZE t");
        let long = "x".repeat(200);
        let s = shorten(&long);
        assert_eq!(s.chars().count(), COMMAND_CHARS);
        assert!(s.ends_with('…'));
    }
}
