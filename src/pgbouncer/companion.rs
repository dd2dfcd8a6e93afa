//! The companion's HTTP server: the contract is in the module above ([`super`]).
//!
//! A minimal HTTP/1.1 server on tokio, one request per connection (`Connection: close`): the
//! head is read up to its blank line (16 KiB at most), the body by `Content-Length` (64 KiB at
//! most), both within [`READ_TIMEOUT`]. TLS (rustls, ring) when a certificate is configured;
//! without one the companion listens only on loopback. An operation, once its request is read,
//! runs to its end even if the caller hangs up: stopping half-way could leave clients held.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::console::{AdminTarget, Console, ConsoleError};
use super::{EntryInfo, Request, ini};
use crate::aws::router::{SIGNATURE_HEADER, signature};
use crate::config::Secret;

/// The longest a caller may take to send its request.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest request body.
pub const MAX_BODY: usize = 64 * 1024;
const MAX_HEAD: usize = 16 * 1024;
/// The largest distance between a signature's timestamp and now.
pub const MAX_SKEW_S: i64 = 300;
/// How soon a failed automatic RESUME (at the maximum hold) is tried again.
const AUTO_RESUME_RETRY: Duration = Duration::from_secs(5);

#[derive(Clone, Debug)]
pub struct CompanionSettings {
    pub listen: SocketAddr,
    /// PgBouncer's configuration file; its directory must be writable (the rewrite is a rename).
    pub ini: PathBuf,
    /// The admin console, `host:port`.
    pub admin_addr: String,
    pub admin_user: String,
    pub admin_password: Secret,
    /// The request signing key (`MIGRATOR_WEBHOOK_SECRET`).
    pub secret: Secret,
    /// How long PAUSE may wait for open transactions to end.
    pub pause_timeout: Duration,
    /// How long a hold lasts at most before the companion resumes by itself.
    pub max_hold: Duration,
    /// Certificate chain and private key, PEM files.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// The `<host>:<port>` the instances' router tags name this companion by
    /// (`MIGRATOR_COMPANION_NAME`): when set, a request addressed to another companion is
    /// refused, so one signed for another companion cannot be replayed here.
    pub name: Option<String>,
}

impl CompanionSettings {
    /// The defaults (10 s pause timeout, 900 s maximum hold, loopback, no TLS).
    pub fn new(ini: PathBuf, admin_password: Secret, secret: Secret) -> Self {
        CompanionSettings {
            listen: SocketAddr::from(([127, 0, 0, 1], 6480)),
            ini,
            admin_addr: "127.0.0.1:6432".into(),
            admin_user: "pgbouncer".into(),
            admin_password,
            secret,
            pause_timeout: Duration::from_secs(10),
            max_hold: Duration::from_secs(900),
            tls: None,
            name: None,
        }
    }

    fn admin_target(&self) -> anyhow::Result<AdminTarget> {
        let (host, port) = self
            .admin_addr
            .rsplit_once(':')
            .and_then(|(h, p)| Some((h.trim_matches(['[', ']']), p.parse::<u16>().ok()?)))
            .with_context(|| {
                format!(
                    "PGBOUNCER_ADMIN_ADDR: {:?} is not host:port",
                    self.admin_addr
                )
            })?;
        Ok(AdminTarget {
            host: host.to_string(),
            port,
            user: self.admin_user.clone(),
            password: self.admin_password.clone(),
            timeout: Duration::from_secs(5),
        })
    }
}

/// Binds and runs until `shutdown`: [`Companion::bind`] then [`Companion::run`].
pub async fn serve(settings: CompanionSettings, shutdown: CancellationToken) -> anyhow::Result<()> {
    Companion::bind(settings).await?.run(shutdown).await
}

/// A bound companion, not yet serving (so that a test can learn its address).
pub struct Companion {
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shared: Arc<Shared>,
}

impl Companion {
    /// Checks the settings and binds `listen`. Refuses to listen beyond loopback without TLS,
    /// and to start without a signing secret.
    pub async fn bind(settings: CompanionSettings) -> anyhow::Result<Companion> {
        anyhow::ensure!(
            !settings.secret.expose().is_empty(),
            "MIGRATOR_WEBHOOK_SECRET: is required (the companion refuses unsigned requests)"
        );
        anyhow::ensure!(
            settings.tls.is_some() || settings.listen.ip().is_loopback(),
            "MIGRATOR_COMPANION_LISTEN: {} is not a loopback address: set MIGRATOR_COMPANION_TLS_CERT and MIGRATOR_COMPANION_TLS_KEY to listen beyond this host",
            settings.listen
        );
        anyhow::ensure!(
            !settings.pause_timeout.is_zero() && !settings.max_hold.is_zero(),
            "MIGRATOR_COMPANION_PAUSE_TIMEOUT_S and MIGRATOR_COMPANION_MAX_HOLD_S: must be positive"
        );
        std::fs::read_to_string(&settings.ini)
            .map(drop)
            .with_context(|| format!("PGBOUNCER_INI: cannot read {}", settings.ini.display()))?;
        let target = settings.admin_target()?;
        let tls = match &settings.tls {
            Some((cert, key)) => Some(acceptor(cert, key)?),
            None => None,
        };
        let listener = TcpListener::bind(settings.listen).await.with_context(|| {
            format!("MIGRATOR_COMPANION_LISTEN: cannot bind {}", settings.listen)
        })?;
        Ok(Companion {
            listener,
            tls,
            shared: Arc::new(Shared {
                settings,
                target,
                databases: std::sync::Mutex::new(HashMap::new()),
                ini_file: tokio::sync::Mutex::new(()),
            }),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Serves until `shutdown`; then waits for the operations under way and resumes every
    /// database still held.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let tracker = TaskTracker::new();
        tracing::info!(listen = %self.local_addr(), tls = self.tls.is_some(), ini = %self.shared.settings.ini.display(), admin = %self.shared.settings.admin_addr, "pgbouncer companion listening");
        loop {
            let (stream, peer) = tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = self.listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let shared = self.shared.clone();
            let tls = self.tls.clone();
            tracker.spawn(async move {
                match tls {
                    None => connection(stream, shared).await,
                    Some(acceptor) => {
                        match tokio::time::timeout(READ_TIMEOUT, acceptor.accept(stream)).await {
                            Ok(Ok(s)) => connection(s, shared).await,
                            Ok(Err(e)) => {
                                tracing::debug!(%peer, error = %e, "TLS handshake failed")
                            }
                            Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                        }
                    }
                }
            });
        }
        tracker.close();
        let budget = self.shared.settings.pause_timeout + Duration::from_secs(30);
        if tokio::time::timeout(budget, tracker.wait()).await.is_err() {
            tracing::warn!("operations still under way at shutdown");
        }
        self.shared.resume_all_held().await;
        tracing::info!("pgbouncer companion stopped");
        Ok(())
    }
}

fn acceptor(cert: &Path, key: &Path) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("MIGRATOR_COMPANION_TLS_CERT: {}", cert.display()))?;
    anyhow::ensure!(
        !certs.is_empty(),
        "MIGRATOR_COMPANION_TLS_CERT: {} holds no certificate",
        cert.display()
    );
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("MIGRATOR_COMPANION_TLS_KEY: {}", key.display()))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .context("MIGRATOR_COMPANION_TLS_CERT/KEY: the key does not fit the certificate")?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// An error answer: status and message (`{"error": message}`).
#[derive(Debug)]
struct Failure {
    status: u16,
    message: String,
}

fn fail(status: u16, message: impl Into<String>) -> Failure {
    Failure {
        status,
        message: message.into(),
    }
}

impl From<ConsoleError> for Failure {
    fn from(e: ConsoleError) -> Self {
        let status = match e {
            ConsoleError::PauseTimeout { .. } => 503,
            ConsoleError::BadName(_) => 400,
            _ => 502,
        };
        fail(status, e.to_string())
    }
}

/// One database's state in the companion.
#[derive(Default)]
struct DbState {
    /// Since when the companion holds it (its PAUSE completed).
    held_since: Option<Instant>,
    migration: Option<String>,
    /// Bumped by every hold, route and release: an automatic RESUME of an older generation
    /// does nothing.
    generation: u64,
    auto_resume: Option<tokio::task::JoinHandle<()>>,
}

impl DbState {
    fn cancel_auto_resume(&mut self) {
        self.generation += 1;
        if let Some(t) = self.auto_resume.take() {
            t.abort();
        }
    }
}

struct Shared {
    settings: CompanionSettings,
    target: AdminTarget,
    databases: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<DbState>>>>,
    /// Serializes every read-modify-write of the ini file (taken after a database's lock, in
    /// that order everywhere): two routes of different entries in one file must not each write
    /// back the text they read, undoing the other's change.
    ini_file: tokio::sync::Mutex<()>,
}

impl Shared {
    /// The lock that serializes the operations on `database`.
    fn database(&self, database: &str) -> Arc<tokio::sync::Mutex<DbState>> {
        self.databases
            .lock()
            .expect("not poisoned")
            .entry(database.to_string())
            .or_default()
            .clone()
    }

    async fn console(&self) -> Result<Console, Failure> {
        Ok(Console::connect(&self.target).await?)
    }

    /// The ini file's entry for `database`: 404 when it has none, 502 when unreadable.
    async fn ini_entry(&self, database: &str) -> Result<(String, ini::DbEntry), Failure> {
        let text = tokio::fs::read_to_string(&self.settings.ini)
            .await
            .map_err(|e| fail(502, format!("cannot read the PgBouncer ini file: {e}")))?;
        match ini::entry(&text, database) {
            Ok(Some(e)) => Ok((text, e)),
            Ok(None) => Err(fail(
                404,
                format!("the PgBouncer ini file has no [databases] entry {database:?}"),
            )),
            Err(e) => Err(fail(502, e.to_string())),
        }
    }

    async fn entry(&self, r: &Request) -> Result<Value, Failure> {
        let lock = self.database(&r.database);
        let _st = lock.lock().await;
        let (_, e) = self.ini_entry(&r.database).await?;
        let console = self.console().await?;
        let paused = console
            .database(&r.database)
            .await?
            .is_some_and(|row| row.paused);
        let query_wait_timeout_s = console
            .setting("query_wait_timeout")
            .await?
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map(|s| s as u64);
        Ok(json!(EntryInfo {
            database: r.database.clone(),
            host: e.host,
            port: e.port,
            paused,
            query_wait_timeout_s,
        }))
    }

    async fn hold(self: &Arc<Self>, r: &Request) -> Result<Value, Failure> {
        let lock = self.database(&r.database);
        let mut st = lock.lock().await;
        self.ini_entry(&r.database).await?;
        let console = self.console().await?;
        let started = Instant::now();
        if let Err(e) = console
            .pause(&r.database, self.settings.pause_timeout)
            .await
        {
            tracing::warn!(database = %r.database, migration = r.migration.as_deref().unwrap_or(""), error = %e, "hold failed");
            if matches!(
                e,
                ConsoleError::PauseTimeout {
                    resume_error: None,
                    ..
                }
            ) {
                // The console resumed the database: whatever this companion held is released.
                st.cancel_auto_resume();
                st.held_since = None;
            }
            return Err(e.into());
        }
        st.held_since.get_or_insert(started);
        st.migration = r.migration.clone();
        // A new hold restarts the maximum hold: the agent is alive.
        st.cancel_auto_resume();
        let generation = st.generation;
        let shared = self.clone();
        let database = r.database.clone();
        let max_hold = self.settings.max_hold;
        st.auto_resume = Some(tokio::spawn(async move {
            tokio::time::sleep(max_hold).await;
            // Until it is done: a console busy for a moment must not leave the clients held.
            while !shared.auto_resume(&database, generation).await {
                tokio::time::sleep(AUTO_RESUME_RETRY).await;
            }
        }));
        tracing::info!(database = %r.database, migration = r.migration.as_deref().unwrap_or(""), pause_ms = started.elapsed().as_millis() as u64, max_hold_s = max_hold.as_secs(), "held: PgBouncer holds the database's clients");
        Ok(json!(super::Held { held: true }))
    }

    /// The maximum hold is over and nobody routed or released: resume. False when RESUME
    /// failed (asked again after `AUTO_RESUME_RETRY`).
    async fn auto_resume(&self, database: &str, generation: u64) -> bool {
        let lock = self.database(database);
        let mut st = lock.lock().await;
        if st.generation != generation || st.held_since.is_none() {
            return true;
        }
        let result = match self.console().await {
            Ok(c) => c.resume(database).await.map_err(|e| e.to_string()),
            Err(f) => Err(f.message),
        };
        match result {
            Ok(()) => {
                tracing::warn!(
                    database,
                    migration = st.migration.as_deref().unwrap_or(""),
                    max_hold_s = self.settings.max_hold.as_secs(),
                    "maximum hold reached without a route or release: resumed"
                );
                st.held_since = None;
                st.auto_resume = None;
                true
            }
            Err(e) => {
                tracing::error!(database, error = %e, retry_s = AUTO_RESUME_RETRY.as_secs(), "maximum hold reached and RESUME failed: asking again");
                false
            }
        }
    }

    async fn release(&self, r: &Request) -> Result<Value, Failure> {
        let lock = self.database(&r.database);
        let mut st = lock.lock().await;
        self.ini_entry(&r.database).await?;
        self.console().await?.resume(&r.database).await?;
        st.cancel_auto_resume();
        if let Some(since) = st.held_since.take() {
            tracing::info!(database = %r.database, held_ms = since.elapsed().as_millis() as u64, "released");
        }
        Ok(json!(super::Released { released: true }))
    }

    async fn route(&self, r: &Request) -> Result<Value, Failure> {
        let (Some(host), Some(port)) = (r.host.as_deref(), r.port) else {
            return Err(fail(400, "route needs \"host\" and \"port\""));
        };
        ini::check_host(host).map_err(|e| fail(400, e.to_string()))?;
        if port == 0 {
            return Err(fail(400, "port 0 is not a port"));
        }
        let migration = r.migration.as_deref().unwrap_or("");
        let lock = self.database(&r.database);
        let mut st = lock.lock().await;
        let _file = self.ini_file.lock().await;
        let (old, e) = self.ini_entry(&r.database).await?;
        let console = self.console().await?;
        let answer = |held_ms: u64| {
            json!(super::Routed {
                database: r.database.clone(),
                host: host.to_string(),
                port,
                held_ms,
            })
        };
        if e.host.as_deref() == Some(host) && e.port == port {
            // Already routed in the file (a retry): PgBouncer must serve it too before the
            // clients go on. If it still serves the old address (an earlier RELOAD failed),
            // the change happens now, paused as any route is, and is checked.
            let live = |row: Option<super::console::DatabaseRow>| {
                row.is_some_and(|row| row.host.as_deref() == Some(host) && row.port == port)
            };
            if !live(console.database(&r.database).await?) {
                console
                    .pause(&r.database, self.settings.pause_timeout)
                    .await?;
                st.held_since.get_or_insert_with(Instant::now);
                let applied = async {
                    console.reload().await?;
                    Ok::<_, Failure>(live(console.database(&r.database).await?))
                }
                .await;
                if !matches!(applied, Ok(true)) {
                    let resumed = console.resume(&r.database).await;
                    return Err(fail(
                        502,
                        format!(
                            "the ini file points {} at {host}:{port} but PgBouncer does not serve it after RELOAD; the database {}",
                            r.database,
                            if resumed.is_ok() {
                                "was resumed"
                            } else {
                                "could not be resumed"
                            }
                        ),
                    ));
                }
            }
            console.resume(&r.database).await?;
            st.cancel_auto_resume();
            let held_ms = st
                .held_since
                .take()
                .map_or(0, |s| s.elapsed().as_millis() as u64);
            tracing::info!(database = %r.database, migration, host, port, "route: the entry already points there; resumed");
            return Ok(answer(held_ms));
        }
        // PAUSE even when this companion holds the database: someone may have resumed it since,
        // and re-pointing under live transactions would let writes reach the old server.
        // PgBouncer answers at once when the pause is in place ("already suspended/paused").
        let started = Instant::now();
        if let Err(e) = console
            .pause(&r.database, self.settings.pause_timeout)
            .await
        {
            if matches!(
                e,
                ConsoleError::PauseTimeout {
                    resume_error: None,
                    ..
                }
            ) {
                st.cancel_auto_resume();
                st.held_since = None;
            }
            tracing::warn!(database = %r.database, migration, error = %e, "route: PAUSE failed");
            return Err(e.into());
        }
        st.held_since.get_or_insert(started);
        let since = st.held_since.expect("held");
        let switched = self.switch(&console, &r.database, &old, host, port).await;
        // Whatever happened, the clients go on (to the new server, or the old one).
        let resumed = console.resume(&r.database).await;
        match (switched, resumed) {
            (Ok(()), Ok(())) => {
                st.cancel_auto_resume();
                st.held_since = None;
                let held_ms = since.elapsed().as_millis() as u64;
                tracing::info!(database = %r.database, migration, host, port, from_host = e.host.as_deref().unwrap_or(""), from_port = e.port, held_ms, "routed");
                Ok(answer(held_ms))
            }
            (switched, Err(resume)) => {
                // The automatic RESUME stays armed when there is one (a hold came first).
                let what = match switched {
                    Ok(()) => "the entry was re-pointed".to_string(),
                    Err(f) => format!("the route failed ({})", f.message),
                };
                tracing::error!(database = %r.database, migration, error = %resume, "route: RESUME failed");
                Err(fail(502, format!("{what}, and RESUME failed: {resume}")))
            }
            (Err(f), Ok(())) => {
                st.cancel_auto_resume();
                st.held_since = None;
                tracing::warn!(database = %r.database, migration, error = %f.message, "route failed; the entry is unchanged and the database resumed");
                Err(fail(
                    502,
                    format!(
                        "{}; the entry is unchanged and the database resumed",
                        f.message
                    ),
                ))
            }
        }
    }

    /// Rewrites the entry, RELOADs and checks PgBouncer took it; on failure puts the old file
    /// back (and RELOADs it) before answering.
    async fn switch(
        &self,
        console: &Console,
        database: &str,
        old: &str,
        host: &str,
        port: u16,
    ) -> Result<(), Failure> {
        let new = ini::repoint(old, database, host, port).map_err(|e| fail(502, e.to_string()))?;
        write_atomic(&self.settings.ini, &new)
            .await
            .map_err(|e| fail(502, format!("cannot write the PgBouncer ini file: {e}")))?;
        let applied = async {
            console.reload().await?;
            let shown = console.database(database).await?;
            match shown {
                Some(row) if row.host.as_deref() == Some(host) && row.port == port => Ok(()),
                other => Err(fail(
                    502,
                    format!(
                        "after RELOAD, SHOW DATABASES shows {database} at {}",
                        other.map_or("nothing".to_string(), |r| format!(
                            "{}:{}",
                            r.host.unwrap_or_default(),
                            r.port
                        ))
                    ),
                )),
            }
        }
        .await;
        if let Err(f) = applied {
            let restored = match write_atomic(&self.settings.ini, old).await {
                Ok(()) => console.reload().await.map_err(|e| e.to_string()),
                Err(e) => Err(format!("cannot restore the ini file: {e}")),
            };
            return Err(match restored {
                Ok(()) => f,
                Err(e) => fail(
                    502,
                    format!("{}; restoring the old entry failed: {e}", f.message),
                ),
            });
        }
        Ok(())
    }

    /// At shutdown: nobody would resume these after us.
    async fn resume_all_held(&self) {
        let all: Vec<(String, Arc<tokio::sync::Mutex<DbState>>)> = self
            .databases
            .lock()
            .expect("not poisoned")
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (database, lock) in all {
            let mut st = lock.lock().await;
            if st.held_since.is_none() {
                continue;
            }
            st.cancel_auto_resume();
            let result = match self.console().await {
                Ok(c) => c.resume(&database).await.map_err(|e| e.to_string()),
                Err(f) => Err(f.message),
            };
            match result {
                Ok(()) => {
                    st.held_since = None;
                    tracing::warn!(database, "stopping: resumed a held database");
                }
                Err(e) => tracing::error!(database, error = %e, "stopping: RESUME failed"),
            }
        }
    }
}

/// Replaces `path` with `text` atomically: a temporary file in the same directory with the same
/// mode and owner, fsync, rename, fsync of the directory. PgBouncer's RELOAD never reads a
/// half-written file, and a crash leaves the old or the new one.
async fn write_atomic(path: &Path, text: &str) -> std::io::Result<()> {
    let path = path.to_path_buf();
    let text = text.to_string();
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
        let meta = std::fs::metadata(&path)?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        let tmp = dir.join(format!(".{name}.companion-{}", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        let written = (|| {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(meta.mode() & 0o7777)
                .open(&tmp)?;
            f.write_all(text.as_bytes())?;
            // The umask applied to `mode`: set it exactly.
            f.set_permissions(std::fs::Permissions::from_mode(meta.mode() & 0o7777))?;
            let mine = f.metadata()?;
            if (mine.uid(), mine.gid()) != (meta.uid(), meta.gid()) {
                std::os::unix::fs::fchown(&f, Some(meta.uid()), Some(meta.gid()))?;
            }
            f.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            std::fs::File::open(dir)?.sync_all()
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written
    })
    .await
    .map_err(std::io::Error::other)?
}

/// Checks `X-Aurora-Migrator-Signature: t=<unix s>,v1=<hex>` over the raw body.
fn verify(secret: &[u8], header: Option<&str>, body: &[u8], now: i64) -> Result<(), &'static str> {
    let header = header.ok_or("the request is not signed")?;
    let mut t = None;
    let mut v1 = None;
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => t = v.parse::<i64>().ok(),
            Some(("v1", v)) => v1 = Some(v),
            _ => {}
        }
    }
    let (Some(t), Some(v1)) = (t, v1) else {
        return Err("the signature header is malformed");
    };
    if (now - t).abs() > MAX_SKEW_S {
        return Err("the signature's timestamp is more than 300 s away");
    }
    let expected = signature(secret, t, body);
    let expected = expected
        .rsplit_once("v1=")
        .map_or("", |(_, h)| h)
        .as_bytes();
    let given = v1.as_bytes();
    // Constant time over the expected length: no early exit on the first differing byte.
    let mut diff = u8::from(expected.len() != given.len());
    for (i, e) in expected.iter().enumerate() {
        diff |= e ^ given.get(i).copied().unwrap_or(0);
    }
    if diff == 0 {
        Ok(())
    } else {
        Err("the signature does not match")
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Payload Too Large",
        431 => "Request Header Fields Too Large",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

async fn respond<S: AsyncWrite + Unpin>(stream: &mut S, status: u16, body: &Value) {
    let body = body.to_string();
    let head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        reason(status),
        body.len()
    );
    let write = async {
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body.as_bytes()).await?;
        stream.flush().await?;
        stream.shutdown().await
    };
    let _ = tokio::time::timeout(READ_TIMEOUT, write).await;
}

/// A request as read: path, signature header, body.
struct HttpRequest {
    method: String,
    path: String,
    signature: Option<String>,
    body: Vec<u8>,
}

async fn read_request<S: AsyncRead + Unpin>(stream: &mut S) -> Result<HttpRequest, Failure> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if buf.len() > MAX_HEAD {
            return Err(fail(431, "the request head is too large"));
        }
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| fail(400, format!("reading the request: {e}")))?;
        if n == 0 {
            return Err(fail(400, "the request ended early"));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = std::str::from_utf8(&buf[..head_end])
        .map_err(|_| fail(400, "the request head is not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or_default().split(' ');
    let method = first.next().unwrap_or_default().to_string();
    let path = first.next().unwrap_or_default().to_string();
    let mut length = None;
    let mut signature_value = None;
    for line in lines {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let (k, v) = (k.trim(), v.trim());
        if k.eq_ignore_ascii_case("content-length") {
            length = Some(
                v.parse::<usize>()
                    .map_err(|_| fail(400, "Content-Length is not a number"))?,
            );
        } else if k.eq_ignore_ascii_case(SIGNATURE_HEADER) {
            signature_value = Some(v.to_string());
        } else if k.eq_ignore_ascii_case("transfer-encoding") {
            return Err(fail(411, "send the body with a Content-Length"));
        }
    }
    if method != "POST" {
        return Ok(HttpRequest {
            method,
            path,
            signature: signature_value,
            body: Vec::new(),
        });
    }
    let length = length.ok_or_else(|| fail(411, "a Content-Length is required"))?;
    if length > MAX_BODY {
        return Err(fail(413, "the body is larger than 64 KiB"));
    }
    let mut body = buf[head_end + 4..].to_vec();
    if body.len() > length {
        return Err(fail(400, "more bytes than Content-Length"));
    }
    let mut rest = vec![0u8; length - body.len()];
    stream
        .read_exact(&mut rest)
        .await
        .map_err(|e| fail(400, format!("reading the body: {e}")))?;
    body.extend_from_slice(&rest);
    Ok(HttpRequest {
        method,
        path,
        signature: signature_value,
        body,
    })
}

async fn connection<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, shared: Arc<Shared>) {
    let request = match tokio::time::timeout(READ_TIMEOUT, read_request(&mut stream)).await {
        Ok(Ok(r)) => r,
        Ok(Err(f)) => return respond(&mut stream, f.status, &json!({"error": f.message})).await,
        Err(_) => {
            return respond(
                &mut stream,
                408,
                &json!({"error": "the request took too long to arrive"}),
            )
            .await;
        }
    };
    let (status, body) = match handle(&shared, &request).await {
        Ok(v) => (200, v),
        Err(f) => (f.status, json!({"error": f.message})),
    };
    respond(&mut stream, status, &body).await;
}

async fn handle(shared: &Arc<Shared>, request: &HttpRequest) -> Result<Value, Failure> {
    if request.method != "POST" {
        return Err(fail(405, "every request is a POST"));
    }
    let now = jiff::Timestamp::now().as_second();
    verify(
        shared.settings.secret.expose().as_bytes(),
        request.signature.as_deref(),
        &request.body,
        now,
    )
    .map_err(|e| {
        tracing::warn!(path = %request.path, reason = e, "refused a request");
        fail(401, e)
    })?;
    let r: Request = serde_json::from_slice(&request.body)
        .map_err(|e| fail(400, format!("the body is not the expected JSON: {e}")))?;
    if let Some(name) = &shared.settings.name
        && r.companion.as_deref() != Some(name.as_str())
    {
        tracing::warn!(path = %request.path, to = r.companion.as_deref().unwrap_or(""), "refused a request addressed to another companion");
        return Err(fail(401, "the request was addressed to another companion"));
    }
    if r.op != request.path {
        // Signed for another operation (or by a client that does not bind it): a replay.
        tracing::warn!(path = %request.path, op = %r.op, "refused a request signed for another operation");
        return Err(fail(401, "the request was signed for another operation"));
    }
    if r.database.is_empty() {
        return Err(fail(400, "\"database\" is empty"));
    }
    match request.path.as_str() {
        "/v1/entry" => shared.entry(&r).await,
        "/v1/hold" => shared.hold(&r).await,
        "/v1/route" => shared.route(&r).await,
        "/v1/release" => shared.release(&r).await,
        _ => Err(fail(404, "no such endpoint")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_checked() {
        let body = br#"{"database":"app"}"#;
        let now = 1_700_000_000;
        let good = signature(b"k", now, body);
        assert_eq!(verify(b"k", Some(&good), body, now + 299), Ok(()));
        assert!(verify(b"k", None, body, now).is_err());
        assert!(verify(b"other", Some(&good), body, now).is_err());
        assert!(verify(b"k", Some(&good), b"{}", now).is_err());
        assert!(verify(b"k", Some(&good), body, now + 301).is_err(), "stale");
        assert!(verify(b"k", Some(&signature(b"k", now - 400, body)), body, now).is_err());
        assert!(verify(b"k", Some("t=1700000000,v1="), body, now).is_err());
        assert!(verify(b"k", Some("garbage"), body, now).is_err());
    }
}
