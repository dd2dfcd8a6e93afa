//! The routers (`core::router`): [`AwsRouter`] carries each route through the router the
//! migration chose, the webhook here or Route 53 (`route53.rs`).
//!
//! The webhook tells the data access layer where the database is now, and the optional smoke
//! test of Verifying is asked the same way. Both POST the same JSON, signed, and need a 2xx
//! answer: a webhook's route is in effect when it answers. Without a webhook URL the mode is
//! `none`: the SNS "cutover" notification is the route.
//!
//! Both URLs are secrets (they may embed a token): every error this module produces, and so
//! every log line, record `last_error` and notification made of it, names only
//! `scheme://host[:port]`. Every request carries [`SIGNATURE_HEADER`]:
//! `t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">` keyed with `MIGRATOR_WEBHOOK_SECRET`.

use std::future::Future;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use hmac::{Hmac, KeyInit, Mac};
use serde::Serialize;
use sha2::Sha256;

use super::AwsSettings;
use super::call::boxed;
use crate::config::{Secret, check_router, url_origin};
use crate::core::action::RouteRequest;
use crate::core::router::{RouteProgress, RouterChoice, RouterView};
use crate::ports::{ErrorKind, PortError, PortResult, Router};

/// The request signature's header.
pub const SIGNATURE_HEADER: &str = "X-Aurora-Migrator-Signature";

/// The header's value for `body` sent at `t` (unix seconds): `t=<t>,v1=<hex HMAC-SHA256 of
/// "<t>.<body>" keyed with `secret`>`. The receiver recomputes it over the raw body, compares
/// in constant time and refuses an old `t` (a replay).
pub fn signature(secret: &[u8], t: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let code = mac.finalize().into_bytes();
    let mut hex = String::with_capacity(code.len() * 2);
    for b in code {
        hex.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
        hex.push(char::from(b"0123456789abcdef"[usize::from(b & 0xf)]));
    }
    format!("t={t},v1={hex}")
}

/// Text safe to log and store about a request to `url`: the URL itself becomes its
/// `scheme://host[:port]`, and its path, long path segments, query and userinfo are replaced
/// wherever they appear (a receiver's error page may echo them).
pub(crate) fn scrub(text: &str, url: &str) -> String {
    let mut out = text.replace(url, &url_origin(url));
    let Ok(u) = reqwest::Url::parse(url) else {
        return out;
    };
    let mut secrets: Vec<String> = Vec::new();
    if u.path().len() > 1 {
        secrets.push(u.path().to_string());
    }
    secrets.extend(
        u.path_segments()
            .into_iter()
            .flatten()
            .filter(|s| s.len() >= 8)
            .map(str::to_string),
    );
    secrets.extend(u.query().map(str::to_string));
    if !u.username().is_empty() {
        secrets.push(u.username().to_string());
    }
    secrets.extend(u.password().map(str::to_string));
    // Longest first, so that a part of a longer secret does not leave the rest behind.
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    for s in secrets {
        out = out.replace(&s, "<redacted>");
    }
    out
}

/// A reqwest error without its URL (which it embeds in full), with its causes.
pub(crate) fn describe(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(&e);
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

pub struct HttpRouter {
    client: reqwest::Client,
    webhook_url: Option<Secret>,
    smoke_test_url: Option<Secret>,
    secret: Secret,
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
    /// Refuses a URL that is not private (`https://`, or `http://` to loopback) and a URL without
    /// the signing secret, as the configuration does.
    pub fn new(s: &AwsSettings) -> Result<Self, String> {
        check_router(
            s.webhook_url.as_ref(),
            s.smoke_test_url.as_ref(),
            s.webhook_secret.as_ref(),
        )
        .map_err(|e| e.to_string())?;
        let client = reqwest::Client::builder()
            .timeout(s.http_timeout)
            .connect_timeout(s.http_timeout.min(Duration::from_secs(5)))
            .user_agent(concat!("aurora-migrator/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("HTTP client: {}", describe(e)))?;
        Ok(HttpRouter {
            client,
            webhook_url: s.webhook_url.clone(),
            smoke_test_url: s.smoke_test_url.clone(),
            secret: s.webhook_secret.clone().unwrap_or_default(),
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

    /// [`Self::post`] to `url`, if there is one.
    async fn post_to(
        &self,
        operation: &str,
        url: Option<&Secret>,
        request: &RouteRequest,
    ) -> PortResult<()> {
        match url {
            Some(url) => self.post(operation, url, request).await,
            None => Ok(()),
        }
    }

    async fn post(&self, operation: &str, url: &Secret, request: &RouteRequest) -> PortResult<()> {
        let url = url.expose();
        let origin = url_origin(url);
        let body = serde_json::to_vec(&Body {
            migration: &request.migration,
            source: &request.source,
            endpoint: &request.endpoint,
            port: request.port,
            phase: request.phase.as_str(),
        })
        .map_err(|e| PortError::new(ErrorKind::Fatal, operation, format!("request body: {e}")))?;
        let fail = |kind, text: String| PortError::new(kind, operation, scrub(&text, url));
        let once = || async {
            // Signed at each attempt: a retry carries a fresh timestamp.
            let t = jiff::Timestamp::now().as_second();
            let r = self
                .client
                .post(url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .header(
                    SIGNATURE_HEADER,
                    signature(self.secret.expose().as_bytes(), t, &body),
                )
                .body(body.clone())
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
            Err(fail(
                kind,
                format!("POST {origin} answered {status}: {text}"),
            ))
        };
        once.retry(
            ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(200))
                .with_max_delay(Duration::from_secs(5))
                .with_max_times(self.attempts - 1)
                .with_jitter(),
        )
        .when(|e: &PortError| e.kind.is_transient())
        .notify(|e: &PortError, after: Duration| {
            tracing::warn!(error = %e, retry_in_ms = after.as_millis() as u64, "router call failed, retrying");
        })
        .await
    }
}

/// Every router the agent can route through; each request names the one its migration chose.
pub struct AwsRouter {
    pub webhook: HttpRouter,
    pub route53: super::route53::Route53,
    pub rds_proxy: super::rds_proxy::RdsProxy,
    /// The PgBouncer router: requests to the companion beside each PgBouncer.
    pub pgbouncer: crate::pgbouncer::router::PgBouncerRouter,
}

impl Router for AwsRouter {
    fn route(
        &self,
        request: &RouteRequest,
    ) -> impl Future<Output = PortResult<RouteProgress>> + Send {
        boxed(async move {
            match &request.router {
                RouterChoice::Webhook => {
                    self.webhook.route(request).await?;
                    Ok(RouteProgress::InEffect)
                }
                RouterChoice::Route53 {
                    hosted_zone,
                    record,
                } => {
                    tracing::info!(migration = %request.migration, record = %record, endpoint = %request.endpoint, "route53: pointing the record at the endpoint");
                    self.route53
                        .point(hosted_zone, record, &request.endpoint)
                        .await
                }
                RouterChoice::RdsProxy { proxy } => {
                    tracing::info!(migration = %request.migration, proxy = %proxy, to_source = request.back_to_source, "rds proxy: moving the default target group");
                    self.rds_proxy.point(proxy, request).await
                }
                RouterChoice::PgBouncer { .. } => {
                    // The companion answers once PgBouncer shows the new address and has
                    // resumed: new server connections go there.
                    self.pgbouncer.route(request).await?;
                    Ok(RouteProgress::InEffect)
                }
            }
        })
    }

    fn view(
        &self,
        router: &RouterChoice,
    ) -> impl Future<Output = PortResult<Option<RouterView>>> + Send {
        boxed(async move {
            match router {
                RouterChoice::Webhook => Ok(None),
                RouterChoice::Route53 {
                    hosted_zone,
                    record,
                } => Ok(self
                    .route53
                    .record(hosted_zone, record)
                    .await?
                    .map(RouterView::Dns)),
                RouterChoice::RdsProxy { proxy } => {
                    Ok(self.rds_proxy.view(proxy).await?.map(RouterView::Proxy))
                }
                RouterChoice::PgBouncer { .. } => {
                    Ok(self.pgbouncer.view(router).await?.map(RouterView::Pooler))
                }
            }
        })
    }

    fn route_status(
        &self,
        router: &RouterChoice,
        change: &str,
    ) -> impl Future<Output = PortResult<RouteProgress>> + Send {
        boxed(async move {
            match router {
                RouterChoice::Webhook => Ok(RouteProgress::InEffect),
                RouterChoice::Route53 { .. } => self.route53.change(change).await,
                RouterChoice::RdsProxy { proxy } => self.rds_proxy.status(proxy, change).await,
                RouterChoice::PgBouncer { .. } => Ok(RouteProgress::InEffect),
            }
        })
    }

    fn smoke_test(&self, request: &RouteRequest) -> impl Future<Output = PortResult<()>> + Send {
        self.webhook.smoke_test(request)
    }

    fn hold(&self, request: &RouteRequest) -> impl Future<Output = PortResult<()>> + Send {
        boxed(self.pgbouncer.hold(request))
    }

    fn release(&self, request: &RouteRequest) -> impl Future<Output = PortResult<()>> + Send {
        boxed(self.pgbouncer.release(request))
    }
}

impl HttpRouter {
    /// POSTs the route to the webhook (nothing without one: the SNS message is the route).
    pub fn route(&self, request: &RouteRequest) -> impl Future<Output = PortResult<()>> + Send {
        boxed(async move {
            if self.webhook_url.is_none() {
                tracing::info!(migration = %request.migration, endpoint = %request.endpoint, "router mode none: the SNS cutover notification is the route");
            }
            self.post_to("router:webhook", self.webhook_url.as_ref(), request)
                .await
        })
    }

    /// POSTs the same request to the smoke test (nothing without one).
    pub fn smoke_test(
        &self,
        request: &RouteRequest,
    ) -> impl Future<Output = PortResult<()>> + Send {
        boxed(self.post_to("router:smoke-test", self.smoke_test_url.as_ref(), request))
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpListener;
    use std::sync::mpsc;

    use super::*;
    use crate::core::Phase;

    const SECRET: &str = "whsec_test_0123456789";
    const BODY: &str = r#"{"migration":"db-ABC/1","source":"orders-pg","endpoint":"orders-pg-aurora.cluster-c1.us-east-1.rds.amazonaws.com","port":5432,"phase":"routing"}"#;

    #[test]
    fn the_signature_matches_a_known_vector() {
        // python3 -c 'import hmac,hashlib; print(hmac.new(b"whsec_test_0123456789",
        //   b"1700000000." + BODY, hashlib.sha256).hexdigest())'
        assert_eq!(
            signature(SECRET.as_bytes(), 1_700_000_000, BODY.as_bytes()),
            "t=1700000000,v1=e6c62adcae9c2cbb3b9a795c2065c5365b35e39f07d6c3a7dfd36fcb5b315ad6"
        );
    }

    fn request() -> RouteRequest {
        RouteRequest {
            migration: "db-ABC/1".into(),
            source: "orders-pg".into(),
            endpoint: "orders-pg-aurora.cluster-c1.us-east-1.rds.amazonaws.com".into(),
            port: 5432,
            phase: Phase::Routing,
            router: RouterChoice::Webhook,
            cluster: "orders-pg-aurora".into(),
            back_to_source: false,
        }
    }

    fn router(webhook: &str, smoke: Option<&str>) -> HttpRouter {
        let mut s = AwsSettings::new("", "", "");
        s.webhook_url = Some(webhook.into());
        s.smoke_test_url = smoke.map(Secret::from);
        s.webhook_secret = Some(SECRET.into());
        s.http_attempts = 1;
        s.http_timeout = Duration::from_secs(5);
        HttpRouter::new(&s).unwrap()
    }

    /// One request as the server saw it.
    struct Seen {
        head: String,
        body: Vec<u8>,
    }

    /// A loopback HTTP server on its own thread: answers `answers` requests with `status` and
    /// `page`, and hands each request over.
    fn serve(answers: usize, status: &'static str, page: String) -> (u16, mpsc::Receiver<Seen>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for stream in listener.incoming().take(answers) {
                let mut stream = stream.unwrap();
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut head = String::new();
                loop {
                    let mut line = String::new();
                    reader.read_line(&mut line).unwrap();
                    if line == "\r\n" || line.is_empty() {
                        break;
                    }
                    head.push_str(&line);
                }
                let len = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse::<usize>().ok())?
                    })
                    .unwrap_or(0);
                let mut body = vec![0; len];
                reader.read_exact(&mut body).unwrap();
                let answer = format!(
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{page}",
                    page.len()
                );
                stream.write_all(answer.as_bytes()).unwrap();
                let _ = tx.send(Seen { head, body });
            }
        });
        (port, rx)
    }

    /// The receiver's side, written from the recipe (not with [`signature`]): split the header,
    /// recompute HMAC-SHA256 over `<t>.<raw body>`, compare in constant time, refuse an old `t`.
    fn verify(header: &str, body: &[u8], secret: &[u8]) -> Result<(), String> {
        let mut t = None;
        let mut v1 = None;
        for part in header.split(',') {
            match part.split_once('=') {
                Some(("t", v)) => t = v.parse::<i64>().ok(),
                Some(("v1", v)) => v1 = Some(v.to_string()),
                _ => {}
            }
        }
        let (t, v1) = (t.ok_or("no t")?, v1.ok_or("no v1")?);
        if (jiff::Timestamp::now().as_second() - t).abs() > 300 {
            return Err(format!("t={t} is more than 5 minutes away"));
        }
        let expected: Vec<u8> = (0..v1.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(v1.get(i..i + 2).unwrap_or("zz"), 16))
            .collect::<Result<_, _>>()
            .map_err(|e| e.to_string())?;
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
        mac.update(format!("{t}.").as_bytes());
        mac.update(body);
        mac.verify_slice(&expected).map_err(|e| e.to_string())
    }

    fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
        head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    #[tokio::test]
    async fn every_request_is_signed_and_verifies_at_the_receiver() {
        let (port, seen) = serve(2, "200 OK", String::new());
        let base = format!("http://127.0.0.1:{port}");
        let r = router(
            &format!("{base}/hooks/route?token=abc"),
            Some(&format!("{base}/smoke")),
        );
        r.route(&request()).await.unwrap();
        r.smoke_test(&request()).await.unwrap();
        for _ in 0..2 {
            let Seen { head, body } = seen.recv().unwrap();
            let sig = header(&head, SIGNATURE_HEADER).expect("a signature header");
            verify(sig, &body, SECRET.as_bytes()).unwrap();
            // The wrong key, or a changed body, does not verify.
            assert!(verify(sig, &body, b"another secret").is_err());
            assert!(verify(sig, &[&body[..], b" "].concat(), SECRET.as_bytes()).is_err());
            assert_eq!(header(&head, "content-type"), Some("application/json"));
            let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(json["endpoint"], request().endpoint);
            assert_eq!(json["port"], 5432);
        }
    }

    const PATH: &str = "/hooks/T0SECRETPATH";
    const QUERY: &str = "token=SECRETQUERY";

    fn assert_redacted(e: &PortError, port: u16) {
        let text = e.to_string();
        for secret in ["SECRETPATH", "SECRETQUERY", "hooks", "userpw"] {
            assert!(!text.contains(secret), "`{secret}` in: {text}");
        }
        assert!(text.contains(&format!("http://127.0.0.1:{port}")), "{text}");
    }

    #[tokio::test]
    async fn a_refused_connection_errors_without_the_secret_url() {
        let port = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        }; // closed: connection refused
        let url = format!("http://user:userpw@127.0.0.1:{port}{PATH}?{QUERY}");
        let e = router(&url, Some(&url))
            .route(&request())
            .await
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::Retryable);
        assert_redacted(&e, port);
    }

    #[tokio::test]
    async fn an_error_answer_errors_without_the_secret_url_even_when_echoed() {
        // Receivers' error pages often echo the path (`Cannot POST /hooks/...`).
        let page = format!("Cannot POST {PATH}?{QUERY} (http://127.0.0.1{PATH})");
        let (port, _seen) = serve(2, "500 Internal Server Error", page);
        let url = format!("http://127.0.0.1:{port}{PATH}?{QUERY}");
        let r = router(&url, Some(&url));
        for e in [
            r.route(&request()).await.unwrap_err(),
            r.smoke_test(&request()).await.unwrap_err(),
        ] {
            assert!(e.to_string().contains("500"), "{e}");
            assert_redacted(&e, port);
        }
    }

    #[test]
    fn the_router_refuses_a_public_http_url_or_a_missing_secret() {
        let mut s = AwsSettings::new("", "", "");
        s.webhook_url = Some("http://example.com/hooks/T0SECRETPATH".into());
        s.webhook_secret = Some(SECRET.into());
        let e = HttpRouter::new(&s).err().unwrap();
        assert!(
            e.starts_with("MIGRATOR_WEBHOOK_URL (--webhook-url): "),
            "{e}"
        );
        assert!(!e.contains("SECRETPATH"), "{e}");
        s.webhook_url = Some("https://example.com/hooks/T0SECRETPATH".into());
        s.webhook_secret = None;
        let e = HttpRouter::new(&s).err().unwrap();
        assert!(
            e.starts_with("MIGRATOR_WEBHOOK_SECRET (--webhook-secret): "),
            "{e}"
        );
    }
}
