//! The agent's client of the companion ([`super`] states the contract).
//!
//! Errors are [`PortError`]s classified like the webhook router's: no answer or 5xx →
//! `Retryable` (a 503 is a PAUSE that timed out: the database was resumed, trying again later
//! may succeed), 404 → `NotFound` (no entry for the database), 400/401/403 and other 4xx →
//! `Fatal`. The base URL may embed a token: every message names only its `scheme://host[:port]`.
//! One attempt per call: the caller's step decides when to try again.

use std::time::Duration;

use serde::de::DeserializeOwned;

use super::{EntryInfo, Held, Released, Request, Routed};
use crate::aws::router::{SIGNATURE_HEADER, describe, scrub, signature};
use crate::config::{Secret, url_origin};
use crate::ports::{ErrorKind, PortError, PortResult};

pub struct CompanionClient {
    client: reqwest::Client,
    base_url: Secret,
    secret: Secret,
    /// The companion's name, put in every request (`Request::companion`).
    name: Option<String>,
}

impl CompanionClient {
    /// `base_url` is the companion's `scheme://host:port` (a path prefix is kept);
    /// `timeout` bounds each request, and should exceed the companion's pause timeout.
    pub fn new(base_url: &str, secret: Secret, timeout: Duration) -> Result<Self, PortError> {
        CompanionClient::with_roots(base_url, secret, timeout, None)
    }

    /// As [`CompanionClient::new`], also trusting the CA certificates in `ca_pem` (a private
    /// CA that signs the companion's certificate).
    pub fn with_roots(
        base_url: &str,
        secret: Secret,
        timeout: Duration,
        ca_pem: Option<&[u8]>,
    ) -> Result<Self, PortError> {
        let refuse = |what: String| PortError::new(ErrorKind::Fatal, "pgbouncer:client", what);
        let mut builder = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .user_agent(concat!("aurora-migrator/", env!("CARGO_PKG_VERSION")));
        if let Some(pem) = ca_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| refuse(format!("the companions' CA bundle: {}", describe(e))))?;
            for c in certs {
                builder = builder.add_root_certificate(c);
            }
        }
        let client = builder.build().map_err(|e| {
            PortError::new(
                ErrorKind::Fatal,
                "pgbouncer:client",
                format!("HTTP client: {}", describe(e)),
            )
        })?;
        Ok(CompanionClient {
            client,
            base_url: Secret::from(base_url.trim_end_matches('/')),
            secret,
            name: None,
        })
    }

    /// Addresses every request to the companion named `name` (`<host>:<port>`, as the router
    /// tag names it), inside the signed body.
    pub fn for_companion(mut self, name: &str) -> Self {
        self.name = Some(name.to_string());
        self
    }

    /// Where the entry points now, and whether PgBouncer holds it.
    pub async fn entry(&self, database: &str) -> PortResult<EntryInfo> {
        self.post(
            "pgbouncer:entry",
            "/v1/entry",
            &request(database, "/v1/entry"),
        )
        .await
    }

    /// PAUSE the database's clients (until routed, released, or the companion's maximum hold).
    pub async fn hold(&self, database: &str, migration: &str) -> PortResult<Held> {
        let mut r = request(database, "/v1/hold");
        r.migration = Some(migration.to_string());
        self.post("pgbouncer:hold", "/v1/hold", &r).await
    }

    /// Re-point the entry at `host:port` and resume its clients.
    pub async fn route(
        &self,
        database: &str,
        host: &str,
        port: u16,
        migration: &str,
    ) -> PortResult<Routed> {
        let r = Request {
            op: "/v1/route".to_string(),
            companion: None,
            database: database.to_string(),
            migration: Some(migration.to_string()),
            host: Some(host.to_string()),
            port: Some(port),
        };
        self.post("pgbouncer:route", "/v1/route", &r).await
    }

    /// Resume the database's clients (idempotent).
    pub async fn release(&self, database: &str) -> PortResult<Released> {
        self.post(
            "pgbouncer:release",
            "/v1/release",
            &request(database, "/v1/release"),
        )
        .await
    }

    async fn post<T: DeserializeOwned>(
        &self,
        operation: &str,
        path: &str,
        body: &Request,
    ) -> PortResult<T> {
        let base = self.base_url.expose();
        let url = format!("{base}{path}");
        let origin = url_origin(base);
        let fail = |kind, text: String| PortError::new(kind, operation, scrub(&text, base));
        let mut body = body.clone();
        body.companion = self.name.clone();
        let body = serde_json::to_vec(&body)
            .map_err(|e| fail(ErrorKind::Fatal, format!("request body: {e}")))?;
        let t = jiff::Timestamp::now().as_second();
        let r = self
            .client
            .post(&url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(
                SIGNATURE_HEADER,
                signature(self.secret.expose().as_bytes(), t, &body),
            )
            .body(body)
            .send()
            .await
            .map_err(|e| {
                let kind = if e.is_builder() {
                    ErrorKind::Fatal
                } else {
                    ErrorKind::Retryable
                };
                fail(kind, format!("POST {origin}: {}", describe(e)))
            })?;
        let status = r.status();
        let text = r.text().await.map_err(|e| {
            fail(
                ErrorKind::Retryable,
                format!("POST {origin}: reading the answer: {}", describe(e)),
            )
        })?;
        if status.is_success() {
            return serde_json::from_str(&text).map_err(|e| {
                fail(
                    ErrorKind::Fatal,
                    format!("POST {origin} answered {status} with unexpected JSON: {e}"),
                )
            });
        }
        let error = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v.get("error")?.as_str().map(str::to_string))
            .unwrap_or_else(|| text.chars().take(300).collect());
        let kind = match status.as_u16() {
            429 => ErrorKind::Throttled,
            408 | 500..=599 => ErrorKind::Retryable,
            409 => ErrorKind::Conflict,
            404 => ErrorKind::NotFound,
            _ => ErrorKind::Fatal,
        };
        Err(fail(
            kind,
            format!("POST {origin} answered {status}: {error}"),
        ))
    }
}

fn request(database: &str, op: &str) -> Request {
    Request {
        op: op.to_string(),
        database: database.to_string(),
        ..Request::default()
    }
}
