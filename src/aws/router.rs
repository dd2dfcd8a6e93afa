//! The cutover router: tells the data access layer where the database is now (a webhook), and
//! the optional smoke test of Verifying. Both POST the same JSON and need a 2xx answer.
//!
//! Without a webhook URL the mode is `none`: the SNS "cutover" notification is the route.

use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use serde::Serialize;

use super::AwsSettings;
use crate::core::action::RouteRequest;
use crate::ports::{ErrorKind, PortError, PortResult, Router};

pub struct HttpRouter {
    client: reqwest::Client,
    webhook_url: Option<String>,
    smoke_test_url: Option<String>,
    attempts: usize,
}

#[derive(Serialize)]
struct Body<'a> {
    migration: &'a str,
    source: &'a str,
    endpoint: &'a str,
    port: u16,
    phase: &'a str,
}

impl HttpRouter {
    pub fn new(s: &AwsSettings) -> Result<Self, String> {
        let client = reqwest::Client::builder()
            .timeout(s.http_timeout)
            .connect_timeout(s.http_timeout.min(Duration::from_secs(5)))
            .user_agent(concat!("aurora-migrator/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        Ok(HttpRouter {
            client,
            webhook_url: s.webhook_url.clone(),
            smoke_test_url: s.smoke_test_url.clone(),
            attempts: s.http_attempts.max(1),
        })
    }

    /// `webhook` or `none`.
    pub fn mode(&self) -> &'static str {
        if self.webhook_url.is_some() {
            "webhook"
        } else {
            "none"
        }
    }

    async fn post(&self, operation: &str, url: &str, request: &RouteRequest) -> PortResult<()> {
        let body = Body {
            migration: &request.migration,
            source: &request.source,
            endpoint: &request.endpoint,
            port: request.port,
            phase: request.phase.as_str(),
        };
        let once = || async {
            let r = self
                .client
                .post(url)
                .json(&body)
                .send()
                .await
                .map_err(|e| {
                    let kind = if e.is_builder() {
                        ErrorKind::Fatal
                    } else {
                        ErrorKind::Retryable
                    };
                    PortError::new(kind, operation, format!("POST {url}: {e}"))
                })?;
            let status = r.status();
            if status.is_success() {
                return Ok(());
            }
            let text: String = r
                .text()
                .await
                .unwrap_or_default()
                .chars()
                .take(300)
                .collect();
            let kind = match status.as_u16() {
                429 => ErrorKind::Throttled,
                408 | 500..=599 => ErrorKind::Retryable,
                409 => ErrorKind::Conflict,
                404 => ErrorKind::NotFound,
                _ => ErrorKind::Fatal,
            };
            Err(PortError::new(
                kind,
                operation,
                format!("POST {url} answered {status}: {text}"),
            ))
        };
        once.retry(
            ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(200))
                .with_max_delay(Duration::from_secs(5))
                .with_max_times(self.attempts - 1)
                .with_jitter(),
        )
        .when(|e: &PortError| matches!(e.kind, ErrorKind::Retryable | ErrorKind::Throttled))
        .notify(|e: &PortError, after: Duration| {
            tracing::warn!(error = %e, retry_in_ms = after.as_millis() as u64, "router call failed, retrying");
        })
        .await
    }
}

impl Router for HttpRouter {
    fn route(
        &self,
        request: &RouteRequest,
    ) -> impl std::future::Future<Output = PortResult<()>> + Send {
        Box::pin(async move {
            match &self.webhook_url {
                Some(url) => self.post("router:webhook", url, request).await,
                None => {
                    tracing::info!(migration = %request.migration, endpoint = %request.endpoint, "router mode none: the SNS cutover notification is the route");
                    Ok(())
                }
            }
        })
    }

    fn smoke_test(
        &self,
        request: &RouteRequest,
    ) -> impl std::future::Future<Output = PortResult<()>> + Send {
        Box::pin(async move {
            match &self.smoke_test_url {
                Some(url) => self.post("router:smoke-test", url, request).await,
                None => Ok(()),
            }
        })
    }
}
