//! The [`Database`] port on PostgreSQL: the database-aware cutover's reads and its two writes.
//!
//! Contract (the port's, made concrete):
//! - Every call opens its own connection and drops it when done: TLS always, verified against
//!   the RDS CA bundle and the host name ([`tls`]; `sslmode=require`, so no plaintext
//!   fallback), a connect timeout (TCP, TLS and authentication together), `statement_timeout`
//!   on the session, `application_name=aurora-migrator`, so the agent's sessions are easy to
//!   tell apart in `pg_stat_activity` and never outlive a call.
//! - Credentials come from Secrets Manager, cached per secret ([`credentials`]); when the server
//!   refuses them (SQLSTATE 28P01/28000) the secret is fetched again and, if it changed (a
//!   rotation), the connection is tried once more.
//! - Every statement is in [`sql`], with why it is safe; the two that write are
//!   [`Database::end_client_sessions`] (signals) and [`Database::write_fence`] (one WAL record).
//! - [`Database::fingerprint`] runs within the budget it is given, connecting included
//!   ([`fingerprint`]), in a `READ ONLY` transaction.
//! - Every failure is classified in [`errors`]; operations are named `postgres:<method>`
//!   (and `secretsmanager:GetSecretValue`). No message carries a password.
//! - [`Database::preflight`] connects to every connectable database of the server for the
//!   per-database facts (unlogged tables, extensions, pg_cron jobs); unlogged tables are named
//!   `database.schema.table`.
//!
//! Whether the agent may connect at all is the deployment's choice (`MIGRATOR_DATABASE_ACCESS`,
//! off by default) and each instance's (its access in the plan): this module only connects
//! where it is asked to.

pub mod credentials;
pub mod errors;
mod fingerprint;
mod preflight;
pub mod sql;
pub mod tls;

use std::future::Future;
use std::time::Duration;

use jiff::Timestamp;
use tokio::task::JoinHandle;
use tokio_postgres::config::SslMode;
use tokio_postgres::types::{FromSql, ToSql};
use tokio_postgres::{Client, Row, SimpleQueryMessage};

use crate::aws::CallCounter;
use crate::aws::call::boxed;
use crate::core::database::{ClientSession, DbTarget, Fingerprint, Lsn, SqlPreflight};
use crate::ports::{Database, ErrorKind, PortError, PortResult};

pub use credentials::{
    CredentialCache, Login, SecretSource, SecretsManagerSource, Sensitive, parse_login,
};
pub use tls::RdsTls;

/// How long ending sessions waits for the signalled backends to exit.
const TERMINATION_WAIT: Duration = Duration::from_secs(1);

/// `application_name` of every session the agent opens.
pub const APPLICATION_NAME: &str = "aurora-migrator";

/// How the agent connects: the TLS trust and the time bounds.
#[derive(Clone, Debug)]
pub struct DatabaseSettings {
    pub tls: RdsTls,
    /// TCP, TLS and authentication together.
    pub connect_timeout: Duration,
    /// The session's `statement_timeout`; the client also gives up on a statement after it
    /// plus `connect_timeout` (a network that stopped answering).
    pub statement_timeout: Duration,
    /// How long a fetched secret is used.
    pub secret_ttl: Duration,
}

impl DatabaseSettings {
    /// 5 s to connect, 10 s per statement, secrets kept 5 minutes.
    pub fn new(tls: RdsTls) -> Self {
        DatabaseSettings {
            tls,
            connect_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(10),
            secret_ttl: credentials::SECRET_TTL,
        }
    }
}

/// PostgreSQL behind the [`Database`] port.
pub struct PgDatabase<S = SecretsManagerSource> {
    settings: DatabaseSettings,
    credentials: CredentialCache<S>,
}

impl PgDatabase<SecretsManagerSource> {
    /// The agent's: secrets from Secrets Manager, counted with the other AWS calls, and IAM
    /// authentication tokens signed with the same SDK configuration's credentials.
    pub fn new(
        settings: DatabaseSettings,
        sdk: &aws_config::SdkConfig,
        calls: CallCounter,
    ) -> Self {
        PgDatabase::with_source(settings, SecretsManagerSource::new(sdk, calls))
    }
}

impl<S: SecretSource> PgDatabase<S> {
    /// Secrets from any source (tests: a fixed one).
    pub fn with_source(settings: DatabaseSettings, source: S) -> Self {
        let credentials = CredentialCache::with_ttl(source, settings.secret_ttl);
        PgDatabase {
            settings,
            credentials,
        }
    }

    /// A session on `database` of `at`, for `operation`.
    async fn open(
        &self,
        at: &DbTarget,
        database: &str,
        operation: &'static str,
    ) -> PortResult<Session> {
        let target = format!("{}:{}/{}", at.host, at.port, database);
        let login = self
            .credentials
            .login(&at.access.credentials, &at.host, at.port)
            .await?;
        let (client, connection) = match self.connect(at, database, &login).await {
            Ok(c) => c,
            Err(Failed::Postgres(e)) if errors::is_auth_failure(&e) => {
                // Perhaps rotated since it was cached: once more with the secret's current
                // value, if it has another.
                self.credentials.forget(&at.access.credentials);
                let fresh = self
                    .credentials
                    .login(&at.access.credentials, &at.host, at.port)
                    .await?;
                if *fresh == *login {
                    return Err(errors::classify(operation, &target, &e));
                }
                self.connect(at, database, &fresh)
                    .await
                    .map_err(|f| f.classify(operation, &target))?
            }
            Err(f) => return Err(f.classify(operation, &target)),
        };
        Ok(Session {
            client,
            connection,
            operation,
            target,
            bound: self.settings.statement_timeout + self.settings.connect_timeout,
        })
    }

    async fn connect(
        &self,
        at: &DbTarget,
        database: &str,
        login: &Login,
    ) -> Result<(Client, JoinHandle<()>), Failed> {
        let mut config = tokio_postgres::Config::new();
        config
            .host(&at.host)
            .port(at.port)
            .dbname(database)
            .user(&login.username)
            .password(login.password.expose())
            .application_name(APPLICATION_NAME)
            .ssl_mode(SslMode::Require)
            .connect_timeout(self.settings.connect_timeout)
            .options(format!(
                "-c statement_timeout={}",
                self.settings.statement_timeout.as_millis()
            ));
        // tokio-postgres's connect_timeout bounds the TCP connect only; this bounds the TLS
        // handshake and the authentication exchange too.
        let connecting = config.connect(self.settings.tls.clone());
        let (client, connection) = tokio::time::timeout(self.settings.connect_timeout, connecting)
            .await
            .map_err(|_| Failed::TimedOut(self.settings.connect_timeout))?
            .map_err(Failed::Postgres)?;
        // The connection runs until the client is dropped ([`Session::close`]).
        let connection = tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok((client, connection))
    }
}

/// Why a connection was not made.
enum Failed {
    Postgres(tokio_postgres::Error),
    TimedOut(Duration),
}

impl Failed {
    fn classify(&self, operation: &str, target: &str) -> PortError {
        match self {
            Failed::Postgres(e) => errors::classify(operation, target, e),
            Failed::TimedOut(after) => errors::connect_timed_out(operation, target, *after),
        }
    }
}

/// One call's connection: its statements are bounded and their failures classified.
struct Session {
    client: Client,
    connection: JoinHandle<()>,
    operation: &'static str,
    target: String,
    bound: Duration,
}

impl Session {
    /// Ends the session (Terminate) and waits, briefly, until the connection has sent it, so
    /// the next call's `pg_stat_activity` is unlikely to still show this one: its pid is not
    /// that call's own. A session dropped on an error path closes the same way, unwaited.
    async fn close(self) {
        drop(self.client);
        let _ = tokio::time::timeout(Duration::from_secs(1), self.connection).await;
    }

    async fn query(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> PortResult<Vec<Row>> {
        match tokio::time::timeout(self.bound, self.client.query(sql, params)).await {
            Ok(answer) => answer.map_err(|e| errors::classify(self.operation, &self.target, &e)),
            Err(_) => Err(errors::statement_timed_out(
                self.operation,
                &self.target,
                self.bound,
            )),
        }
    }

    async fn one(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> PortResult<Row> {
        let mut rows = self.query(sql, params).await?;
        match rows.len() {
            1 => Ok(rows.remove(0)),
            n => Err(self.bug(format!("expected one row, got {n}"))),
        }
    }

    /// Statements in one simple-query message (one round trip); the rows' text values.
    async fn simple(&self, sql: &str) -> PortResult<Vec<Vec<Option<String>>>> {
        let answer = match tokio::time::timeout(self.bound, self.client.simple_query(sql)).await {
            Ok(answer) => answer.map_err(|e| errors::classify(self.operation, &self.target, &e))?,
            Err(_) => {
                return Err(errors::statement_timed_out(
                    self.operation,
                    &self.target,
                    self.bound,
                ));
            }
        };
        Ok(answer
            .iter()
            .filter_map(|m| match m {
                SimpleQueryMessage::Row(r) => {
                    Some((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect())
                }
                _ => None,
            })
            .collect())
    }

    /// Column `i` of `row`; a type the statement does not answer is a bug of this module.
    fn get<'r, T: FromSql<'r>>(&self, row: &'r Row, i: usize) -> PortResult<T> {
        row.try_get(i)
            .map_err(|e| self.bug(format!("column {i}: {e}")))
    }

    fn lsn(&self, text: &str) -> PortResult<Lsn> {
        text.parse().map_err(|e: String| self.bug(e))
    }

    fn bug(&self, what: String) -> PortError {
        PortError::new(
            ErrorKind::Fatal,
            self.operation,
            format!("{}: unexpected answer: {what}", self.target),
        )
    }
}

impl<S: SecretSource> Database for PgDatabase<S> {
    fn client_sessions(
        &self,
        at: &DbTarget,
    ) -> impl Future<Output = PortResult<Vec<ClientSession>>> + Send {
        boxed(async move {
            let s = self
                .open(at, &at.access.database, "postgres:client_sessions")
                .await?;
            let mut out = Vec::new();
            for row in s.query(sql::CLIENT_SESSIONS, &[]).await? {
                let started: Option<i64> = s.get(&row, 4)?;
                out.push(ClientSession {
                    pid: s.get(&row, 0)?,
                    user: s.get(&row, 1)?,
                    application: s.get(&row, 2)?,
                    client_addr: s.get(&row, 3)?,
                    backend_start: started.and_then(|us| Timestamp::from_microsecond(us).ok()),
                });
            }
            s.close().await;
            Ok(out)
        })
    }

    fn end_client_sessions(&self, at: &DbTarget) -> impl Future<Output = PortResult<u32>> + Send {
        boxed(async move {
            let s = self
                .open(at, &at.access.database, "postgres:end_client_sessions")
                .await?;
            let mut signalled: Vec<i32> = Vec::new();
            for row in s.query(sql::END_CLIENT_SESSIONS, &[]).await? {
                if s.get::<bool>(&row, 1)? {
                    signalled.push(s.get(&row, 0)?);
                }
            }
            // A backend exits within milliseconds of SIGTERM; wait for that (at most
            // `TERMINATION_WAIT`), so the next look sees the sessions gone rather than leaving.
            // One still there afterwards is the Draining rules' business (stuck, or back).
            let deadline = std::time::Instant::now() + TERMINATION_WAIT;
            while !signalled.is_empty() && std::time::Instant::now() < deadline {
                let live: i64 = s.get(&s.one(sql::LIVE_BACKENDS, &[&signalled]).await?, 0)?;
                if live == 0 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            s.close().await;
            Ok(signalled.len() as u32)
        })
    }

    fn write_fence(&self, at: &DbTarget) -> impl Future<Output = PortResult<Lsn>> + Send {
        boxed(async move {
            let s = self
                .open(at, &at.access.database, "postgres:write_fence")
                .await?;
            let rows = s.simple(sql::WRITE_FENCE).await?;
            // The last row is the flush position's (the message's own row comes first).
            let lsn = match rows.last().and_then(|r| r.first()).cloned().flatten() {
                Some(text) => s.lsn(&text)?,
                None => return Err(s.bug("no WAL flush position".into())),
            };
            s.close().await;
            Ok(lsn)
        })
    }

    fn replay_lsn(&self, at: &DbTarget) -> impl Future<Output = PortResult<Option<Lsn>>> + Send {
        boxed(async move {
            let s = self
                .open(at, &at.access.database, "postgres:replay_lsn")
                .await?;
            let row = s.one(sql::REPLAY_LSN, &[]).await?;
            let in_recovery: bool = s.get(&row, 0)?;
            let replayed: Option<String> = s.get(&row, 1)?;
            let lsn = match (in_recovery, replayed) {
                (true, Some(text)) => Some(s.lsn(&text)?),
                // A replica that has replayed nothing yet is behind every position.
                (true, None) => Some(Lsn(0)),
                (false, _) => None,
            };
            s.close().await;
            Ok(lsn)
        })
    }

    fn preflight(
        &self,
        at: &DbTarget,
        old_after_s: u64,
    ) -> impl Future<Output = PortResult<SqlPreflight>> + Send {
        boxed(preflight::read(self, at, old_after_s))
    }

    fn fingerprint(
        &self,
        at: &DbTarget,
        budget: Duration,
    ) -> impl Future<Output = PortResult<Fingerprint>> + Send {
        boxed(fingerprint::read(self, at, budget))
    }
}

/// The agent's database port: the adapter where the deployment allows database access
/// (`MIGRATOR_DATABASE_ACCESS`), refusals otherwise (the preflight never plans access then).
pub enum AgentDatabase<S = SecretsManagerSource> {
    Off,
    On(Box<PgDatabase<S>>),
}

impl<S: SecretSource> Database for AgentDatabase<S> {
    async fn client_sessions(&self, at: &DbTarget) -> PortResult<Vec<ClientSession>> {
        match self {
            AgentDatabase::Off => crate::ports::NoDatabase.client_sessions(at).await,
            AgentDatabase::On(db) => db.client_sessions(at).await,
        }
    }
    async fn end_client_sessions(&self, at: &DbTarget) -> PortResult<u32> {
        match self {
            AgentDatabase::Off => crate::ports::NoDatabase.end_client_sessions(at).await,
            AgentDatabase::On(db) => db.end_client_sessions(at).await,
        }
    }
    async fn write_fence(&self, at: &DbTarget) -> PortResult<Lsn> {
        match self {
            AgentDatabase::Off => crate::ports::NoDatabase.write_fence(at).await,
            AgentDatabase::On(db) => db.write_fence(at).await,
        }
    }
    async fn replay_lsn(&self, at: &DbTarget) -> PortResult<Option<Lsn>> {
        match self {
            AgentDatabase::Off => crate::ports::NoDatabase.replay_lsn(at).await,
            AgentDatabase::On(db) => db.replay_lsn(at).await,
        }
    }
    async fn preflight(&self, at: &DbTarget, old_after_s: u64) -> PortResult<SqlPreflight> {
        match self {
            AgentDatabase::Off => crate::ports::NoDatabase.preflight(at, old_after_s).await,
            AgentDatabase::On(db) => db.preflight(at, old_after_s).await,
        }
    }
    async fn fingerprint(&self, at: &DbTarget, budget: Duration) -> PortResult<Fingerprint> {
        match self {
            AgentDatabase::Off => crate::ports::NoDatabase.fingerprint(at, budget).await,
            AgentDatabase::On(db) => db.fingerprint(at, budget).await,
        }
    }
}
