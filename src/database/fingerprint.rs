//! The consistency check's reads ([`Database::fingerprint`](crate::ports::Database::fingerprint)):
//! one connection to the plan's database, one `READ ONLY` transaction, within a time budget.
//!
//! Contract: connecting counts against the budget; the server bounds every statement by it
//! (`statement_timeout`), the client by what is left of it. The catalog reads (sequences, the
//! list of tables) must finish, or the call fails; then tables are read in batches (one
//! statement each), the newest rows of large tables first (an index descent each), then the
//! counts of small ones; what the budget does not reach is counted in `unread`, not an error.

use std::time::{Duration, Instant};

use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;

use super::credentials::SecretSource;
use super::{PgDatabase, Session, errors, sql};
use crate::core::database::{
    DbTarget, Fingerprint, NEWEST_ROWS, SMALL_TABLE_BYTES, SMALL_TABLE_ROWS, SequenceState,
    TableFacts,
};
use crate::ports::PortResult;

const OPERATION: &str = "postgres:fingerprint";

/// Tables per statement: one round trip for many small reads, and a batch cut short by the
/// budget loses little.
const BATCH: usize = 50;

pub(super) async fn read<S: SecretSource>(
    db: &PgDatabase<S>,
    at: &DbTarget,
    budget: Duration,
) -> PortResult<Fingerprint> {
    let deadline = Instant::now() + budget;
    let target = format!("{}:{}/{}", at.host, at.port, at.access.database);
    let s = match tokio::time::timeout(budget, db.open(at, &at.access.database, OPERATION)).await {
        Ok(s) => s?,
        Err(_) => return Err(errors::connect_timed_out(OPERATION, &target, budget)),
    };
    let left = || deadline.saturating_duration_since(Instant::now());
    let failed = |stop: Stop| match stop {
        Stop::OutOfTime => errors::statement_timed_out(OPERATION, &target, budget),
        Stop::Failed(e) => e,
    };
    timed(&s, left(), Statement::Simple(sql::FINGERPRINT_BEGIN))
        .await
        .map_err(failed)?;
    let ms = left().as_millis().max(1).to_string();
    timed(
        &s,
        left(),
        Statement::Query(sql::FINGERPRINT_TIMEOUT, &[&ms]),
    )
    .await
    .map_err(failed)?;

    let mut out = Fingerprint {
        database: at.access.database.clone(),
        ..Fingerprint::default()
    };
    let rows = timed(&s, left(), Statement::Query(sql::SEQUENCES, &[]))
        .await
        .map_err(failed)?
        .rows();
    for row in rows {
        let readable: bool = s.get(&row, 1)?;
        out.sequences.insert(
            s.get(&row, 0)?,
            SequenceState {
                last_value: s.get(&row, 2)?,
                increment_by: s.get(&row, 3)?,
                cache_size: s.get(&row, 4)?,
                readable,
            },
        );
    }

    let small_rows = SMALL_TABLE_ROWS as f64;
    let small_bytes = SMALL_TABLE_BYTES as i64;
    let rows = timed(
        &s,
        left(),
        Statement::Query(sql::TABLES, &[&small_rows, &small_bytes]),
    )
    .await
    .map_err(failed)?
    .rows();
    let mut small: Vec<String> = Vec::new();
    let mut large: Vec<(String, Vec<String>)> = Vec::new();
    for row in rows {
        let name: String = s.get(&row, 0)?;
        let key: Option<Vec<String>> = s.get(&row, 1)?;
        let is_small: bool = s.get(&row, 2)?;
        let readable: bool = s.get(&row, 3)?;
        match key {
            _ if !readable => {
                out.tables
                    .insert(name, TableFacts::Skipped("no SELECT privilege".into()));
            }
            _ if is_small => small.push(name),
            Some(key) if !key.is_empty() => large.push((name, key)),
            _ => {
                out.tables.insert(
                    name,
                    TableFacts::Skipped("large, without a primary key".into()),
                );
            }
        }
    }

    // The newest rows of large tables first: an index descent each, however big the table.
    let mut pending = large.len() + small.len();
    let mut stopped = false;
    for batch in large.chunks(BATCH) {
        let refs: Vec<(&str, &[String])> = batch
            .iter()
            .map(|(t, k)| (t.as_str(), k.as_slice()))
            .collect();
        let statement = sql::newest_rows(&refs, NEWEST_ROWS);
        match timed(&s, left(), Statement::Query(&statement, &[])).await {
            Ok(answer) => {
                for row in answer.rows() {
                    let i: i32 = s.get(&row, 0)?;
                    let digest: String = s.get(&row, 1)?;
                    let (name, _) = &batch[usize::try_from(i).unwrap_or(usize::MAX)];
                    out.tables.insert(name.clone(), TableFacts::Newest(digest));
                }
                pending -= batch.len();
            }
            Err(Stop::OutOfTime) => {
                stopped = true;
                break;
            }
            Err(Stop::Failed(e)) => return Err(e),
        }
    }
    if !stopped {
        for batch in small.chunks(BATCH) {
            let refs: Vec<&str> = batch.iter().map(String::as_str).collect();
            let statement = sql::count_rows(&refs);
            match timed(&s, left(), Statement::Query(&statement, &[])).await {
                Ok(answer) => {
                    for row in answer.rows() {
                        let i: i32 = s.get(&row, 0)?;
                        let count: i64 = s.get(&row, 1)?;
                        let name = &batch[usize::try_from(i).unwrap_or(usize::MAX)];
                        out.tables.insert(name.clone(), TableFacts::Rows(count));
                    }
                    pending -= batch.len();
                }
                Err(Stop::OutOfTime) => break,
                Err(Stop::Failed(e)) => return Err(e),
            }
        }
    }
    out.unread = u32::try_from(pending).unwrap_or(u32::MAX);
    if pending == 0 {
        // Ends the read-only transaction; a session cut short is dropped instead, and the
        // server rolls it back.
        let _ = timed(&s, left(), Statement::Simple("COMMIT")).await;
        s.close().await;
    }
    Ok(out)
}

enum Statement<'a> {
    Simple(&'a str),
    Query(&'a str, &'a [&'a (dyn ToSql + Sync)]),
}

enum Answer {
    Done,
    Rows(Vec<tokio_postgres::Row>),
}

impl Answer {
    fn rows(self) -> Vec<tokio_postgres::Row> {
        match self {
            Answer::Done => Vec::new(),
            Answer::Rows(r) => r,
        }
    }
}

/// Why a statement did not answer.
enum Stop {
    /// The budget ran out, on the client's clock or the server's (`statement_timeout`).
    OutOfTime,
    Failed(crate::ports::PortError),
}

async fn timed(s: &Session, left: Duration, statement: Statement<'_>) -> Result<Answer, Stop> {
    if left.is_zero() {
        return Err(Stop::OutOfTime);
    }
    let answer = match statement {
        Statement::Simple(text) => tokio::time::timeout(left, s.client.batch_execute(text))
            .await
            .map(|r| r.map(|()| Answer::Done)),
        Statement::Query(text, params) => tokio::time::timeout(left, s.client.query(text, params))
            .await
            .map(|r| r.map(Answer::Rows)),
    };
    match answer {
        Err(_) => Err(Stop::OutOfTime),
        Ok(Err(e)) if e.code() == Some(&SqlState::QUERY_CANCELED) => Err(Stop::OutOfTime),
        Ok(Err(e)) => Err(Stop::Failed(errors::classify(s.operation, &s.target, &e))),
        Ok(Ok(a)) => Ok(a),
    }
}
