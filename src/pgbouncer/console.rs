//! PgBouncer's admin console (the `pgbouncer` database) over tokio-postgres.
//!
//! The console speaks only the simple query protocol, so every command is a `simple_query`.
//! No TLS: the companion reaches the console on loopback, beside PgBouncer. Every command has a
//! deadline; a console that does not answer is an error, never a hang.

use std::time::Duration;

use tokio_postgres::{NoTls, SimpleQueryMessage};

use crate::config::Secret;

/// How to reach the console.
#[derive(Clone, Debug)]
pub struct AdminTarget {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Secret,
    /// For connecting, and for every command but PAUSE (which has its own).
    pub timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("PgBouncer admin console at {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error("PgBouncer admin console: {command}: {reason}")]
    Command { command: String, reason: String },
    /// PAUSE did not complete in time; the database was resumed (`resumed`) or the RESUME failed
    /// too (`resume_error`).
    #[error(
        "PAUSE {database} did not complete within {timeout_ms} ms: a transaction kept a server connection longer than the pause timeout; {}",
        match resume_error { None => "the database was resumed".to_string(), Some(e) => format!("and RESUME failed: {e}") }
    )]
    PauseTimeout {
        database: String,
        timeout_ms: u64,
        resume_error: Option<String>,
    },
    #[error("{0:?} is not a database name the companion passes to the admin console")]
    BadName(String),
}

/// One row of `SHOW DATABASES`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DatabaseRow {
    pub name: String,
    /// Empty in PgBouncer's output for a Unix socket: `None`.
    pub host: Option<String>,
    pub port: u16,
    pub database: String,
    pub paused: bool,
}

/// A connection to the console. The connection's task ends when this is dropped.
pub struct Console {
    client: tokio_postgres::Client,
    connection: tokio::task::JoinHandle<()>,
    target: AdminTarget,
}

impl Drop for Console {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

/// The name as the console's parser takes it: a plain word, else double-quoted.
fn quoted(name: &str) -> Result<String, ConsoleError> {
    if !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        Ok(name.to_string())
    } else if !name.is_empty()
        && name.len() <= 63
        && !name.chars().any(|c| c == '"' || c == ';' || c.is_control())
    {
        Ok(format!("\"{name}\""))
    } else {
        Err(ConsoleError::BadName(name.to_string()))
    }
}

/// The server's message of a tokio-postgres error (PgBouncer's ErrorResponse), else its text.
fn message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => db.message().to_string(),
        None => {
            let mut text = e.to_string();
            let mut cause = std::error::Error::source(e);
            while let Some(c) = cause {
                text.push_str(": ");
                text.push_str(&c.to_string());
                cause = c.source();
            }
            text
        }
    }
}

impl Console {
    pub async fn connect(target: &AdminTarget) -> Result<Console, ConsoleError> {
        let addr = format!("{}:{}", target.host, target.port);
        let mut config = tokio_postgres::Config::new();
        config
            .host(&target.host)
            .port(target.port)
            .user(&target.user)
            .password(target.password.expose())
            .dbname("pgbouncer")
            .application_name("aurora-migrator-companion")
            .connect_timeout(target.timeout);
        let connect = config.connect(NoTls);
        let (client, connection) = match tokio::time::timeout(target.timeout, connect).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                return Err(ConsoleError::Connect {
                    addr,
                    reason: message(&e),
                });
            }
            Err(_) => {
                return Err(ConsoleError::Connect {
                    addr,
                    reason: format!("no answer within {} ms", target.timeout.as_millis()),
                });
            }
        };
        let connection = tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Console {
            client,
            connection,
            target: target.clone(),
        })
    }

    /// Runs one command within `timeout`; its rows as (column, value) lists.
    async fn run(
        &self,
        command: &str,
        timeout: Duration,
    ) -> Result<Vec<Vec<(String, Option<String>)>>, ConsoleError> {
        let fail = |reason: String| ConsoleError::Command {
            command: command.to_string(),
            reason,
        };
        let messages = tokio::time::timeout(timeout, self.client.simple_query(command))
            .await
            .map_err(|_| fail(format!("no answer within {} ms", timeout.as_millis())))?
            .map_err(|e| fail(message(&e)))?;
        Ok(messages
            .into_iter()
            .filter_map(|m| match m {
                SimpleQueryMessage::Row(row) => Some(
                    row.columns()
                        .iter()
                        .enumerate()
                        .map(|(i, c)| (c.name().to_string(), row.get(i).map(str::to_string)))
                        .collect(),
                ),
                _ => None,
            })
            .collect())
    }

    /// `PAUSE <database>`: returns once every server connection of the database's pools is
    /// released (new transactions wait in PgBouncer meanwhile). When that takes longer than
    /// `timeout` (a transaction stays open), sends `RESUME` on a fresh connection, so that the
    /// clients are not left held, and answers [`ConsoleError::PauseTimeout`].
    pub async fn pause(&self, database: &str, timeout: Duration) -> Result<(), ConsoleError> {
        let command = format!("PAUSE {}", quoted(database)?);
        match tokio::time::timeout(timeout, self.client.simple_query(&command)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => {
                let reason = message(&e);
                // Already paused (by us before a restart, or by a person): the pause is in place.
                if reason.contains("already") && reason.contains("paused") {
                    Ok(())
                } else {
                    Err(ConsoleError::Command { command, reason })
                }
            }
            Err(_) => {
                // This connection still waits for the PAUSE; the RESUME must go on another.
                let resume_error = match Console::connect(&self.target).await {
                    Ok(fresh) => fresh.resume(database).await.err().map(|e| e.to_string()),
                    Err(e) => Some(e.to_string()),
                };
                Err(ConsoleError::PauseTimeout {
                    database: database.to_string(),
                    timeout_ms: timeout.as_millis() as u64,
                    resume_error,
                })
            }
        }
    }

    /// `RESUME <database>`. PgBouncer answers "database <name> is not paused" when there is
    /// nothing to resume: that is success here (resuming is idempotent).
    pub async fn resume(&self, database: &str) -> Result<(), ConsoleError> {
        let command = format!("RESUME {}", quoted(database)?);
        match self.run(&command, self.target.timeout).await {
            Ok(_) => Ok(()),
            Err(ConsoleError::Command { reason, .. }) if reason.contains("is not paused") => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// `RELOAD`: PgBouncer re-reads its ini file; a changed `[databases]` entry applies to new
    /// server connections, and idle connections to the old server are closed.
    pub async fn reload(&self) -> Result<(), ConsoleError> {
        self.run("RELOAD", self.target.timeout).await.map(|_| ())
    }

    /// `SHOW DATABASES`.
    pub async fn databases(&self) -> Result<Vec<DatabaseRow>, ConsoleError> {
        let rows = self.run("SHOW DATABASES", self.target.timeout).await?;
        Ok(rows
            .into_iter()
            .map(|row| {
                let get = |k: &str| {
                    row.iter()
                        .find(|(c, _)| c == k)
                        .and_then(|(_, v)| v.clone())
                        .unwrap_or_default()
                };
                let host = get("host");
                DatabaseRow {
                    name: get("name"),
                    host: (!host.is_empty()).then_some(host),
                    port: get("port").parse().unwrap_or(0),
                    database: get("database"),
                    paused: get("paused") == "1",
                }
            })
            .collect())
    }

    /// The `SHOW DATABASES` row of `database`, if PgBouncer knows it.
    pub async fn database(&self, database: &str) -> Result<Option<DatabaseRow>, ConsoleError> {
        Ok(self
            .databases()
            .await?
            .into_iter()
            .find(|r| r.name == database))
    }

    /// A setting's value from `SHOW CONFIG` (e.g. `query_wait_timeout`), if it exists.
    pub async fn setting(&self, name: &str) -> Result<Option<String>, ConsoleError> {
        let rows = self.run("SHOW CONFIG", self.target.timeout).await?;
        Ok(rows.into_iter().find_map(|row| {
            let key = row.iter().find(|(c, _)| c == "key")?.1.clone()?;
            (key == name)
                .then(|| row.iter().find(|(c, _)| c == "value")?.1.clone())
                .flatten()
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_words_or_quoted() {
        assert_eq!(quoted("app_1").unwrap(), "app_1");
        assert_eq!(quoted("my-app").unwrap(), "\"my-app\"");
        assert!(quoted("a\"; RESUME").is_err());
        assert!(quoted("").is_err());
    }
}
