//! The agent's PgBouncer router (`core::router::RouterChoice::PgBouncer`): each request goes to
//! the companion named by the migration's router choice, signed with the agent's key.
//!
//! `https://<host>:<port>`, or `http://` when the host is loopback (a companion beside an agent
//! run locally), as for the webhook. The companion answers a route only once PgBouncer shows the
//! new address and has resumed, so a route is in effect when it answers.

use std::time::Duration;

use super::client::CompanionClient;
use crate::config::Secret;
use crate::core::action::RouteRequest;
use crate::core::router::{PoolerEntry, RouterChoice};
use crate::ports::{ErrorKind, PortError, PortResult};

pub struct PgBouncerRouter {
    /// The companions' signing key (`MIGRATOR_WEBHOOK_SECRET`; none: every request is refused,
    /// so preflight fails naming it).
    secret: Option<Secret>,
    /// How long one request may take: a PAUSE waits for the pool's transactions, up to the
    /// companion's pause timeout (10 s by default).
    timeout: Duration,
    /// PEM certificates of the CA(s) that sign the companions' certificates
    /// (`MIGRATOR_COMPANION_CA_FILE`), trusted besides the public roots.
    ca: Option<Vec<u8>>,
}

impl PgBouncerRouter {
    pub fn new(secret: Option<Secret>, timeout: Duration) -> Self {
        PgBouncerRouter {
            secret,
            timeout,
            ca: None,
        }
    }

    /// Also trusts the CA certificates in `pem` for the companions' TLS.
    pub fn trusting(mut self, pem: Option<Vec<u8>>) -> Self {
        self.ca = pem;
        self
    }

    /// The companion and database of a PgBouncer choice, and its client.
    fn client<'a>(&self, router: &'a RouterChoice) -> PortResult<(CompanionClient, &'a str)> {
        let RouterChoice::PgBouncer {
            companion,
            database,
        } = router
        else {
            return Err(PortError::new(
                ErrorKind::Fatal,
                "router:pgbouncer",
                format!("{router} is not a PgBouncer router"),
            ));
        };
        let secret = self.secret.clone().ok_or_else(|| {
            PortError::new(
                ErrorKind::Fatal,
                "router:pgbouncer",
                "MIGRATOR_WEBHOOK_SECRET is not set: the PgBouncer companion accepts signed requests only",
            )
        })?;
        let host = companion
            .rsplit_once(':')
            .map_or(companion.as_str(), |(h, _)| h);
        let scheme = if matches!(host, "127.0.0.1" | "localhost" | "::1") {
            "http"
        } else {
            "https"
        };
        let client = CompanionClient::with_roots(
            &format!("{scheme}://{companion}"),
            secret,
            self.timeout,
            self.ca.as_deref(),
        )?
        .for_companion(companion);
        Ok((client, database))
    }

    /// The entry as the companion reads it (`None`: PgBouncer has no such entry).
    pub async fn view(&self, router: &RouterChoice) -> PortResult<Option<PoolerEntry>> {
        let (client, database) = self.client(router)?;
        match client.entry(database).await {
            Ok(e) => Ok(Some(PoolerEntry {
                database: e.database,
                host: e.host.unwrap_or_default(),
                port: e.port,
                paused: e.paused,
                query_wait_timeout_s: e.query_wait_timeout_s,
            })),
            Err(e) if e.kind == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Points the entry at the request's endpoint and resumes.
    pub async fn route(&self, request: &RouteRequest) -> PortResult<()> {
        let (client, database) = self.client(&request.router)?;
        tracing::info!(migration = %request.migration, router = %request.router, endpoint = %request.endpoint, "pgbouncer: re-pointing the database entry");
        client
            .route(
                database,
                &request.endpoint,
                request.port,
                &request.migration,
            )
            .await
            .map(|_| ())
    }

    /// Holds the entry's clients (`PAUSE`).
    pub async fn hold(&self, request: &RouteRequest) -> PortResult<()> {
        let (client, database) = self.client(&request.router)?;
        tracing::info!(migration = %request.migration, router = %request.router, "pgbouncer: holding the clients");
        client.hold(database, &request.migration).await.map(|_| ())
    }

    /// Releases the entry's clients where they were (`RESUME`).
    pub async fn release(&self, request: &RouteRequest) -> PortResult<()> {
        let (client, database) = self.client(&request.router)?;
        tracing::info!(migration = %request.migration, router = %request.router, "pgbouncer: releasing the clients");
        client.release(database).await.map(|_| ())
    }
}
