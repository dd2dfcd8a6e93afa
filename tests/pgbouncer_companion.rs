//! The PgBouncer companion against a real PgBouncer (1.18+, `pool_mode = transaction`) in front
//! of real PostgreSQL servers: PgBouncer and PostgreSQL run as the unprivileged server user
//! (`postgres/server.rs`), the companion runs in-process and rewrites PgBouncer's ini file.
//!
//! PgBouncer is configured as `tests/support/moto_shim/local_pgbouncer.py` configures it:
//! scram-sha-256, users in userlist.txt (`auth_user = postgres` for the others), an admin user,
//! TCP only (`unix_socket_dir` empty), `server_login_retry = 1`, and the startup parameters
//! drivers send ignored.

#[path = "postgres/access.rs"]
#[allow(dead_code)]
mod access;
#[path = "postgres/server.rs"]
#[allow(dead_code)]
mod server;

use std::collections::BTreeSet;
use std::fs;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aurora_migrator::aws::router::{SIGNATURE_HEADER, signature};
use aurora_migrator::config::Secret;
use aurora_migrator::pgbouncer::client::CompanionClient;
use aurora_migrator::pgbouncer::companion::{Companion, CompanionSettings};
use aurora_migrator::pgbouncer::console::{AdminTarget, Console, DatabaseRow};
use aurora_migrator::ports::ErrorKind;
use serde_json::{Value, json};
use server::{Bins, PgServer, RunAs, SUPERUSER, TABLE, TempRoot, connect, free_port, tcp_config};
use tokio_util::sync::{CancellationToken, DropGuard};

const SECRET: &str = "whsec_companion_test_42";
const ADMIN: (&str, &str) = ("pgb_admin", "pgb-admin-pw");
const APP_PASSWORD: &str = "app-pw";
/// PgBouncer's `query_wait_timeout` here (its default is 120 s).
const QUERY_WAIT_TIMEOUT_S: u64 = 30;

fn pgbouncer_binary() -> PathBuf {
    std::env::var_os("PATH")
        .and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("pgbouncer"))
                .find(|c| c.is_file())
        })
        .or_else(|| Some(PathBuf::from("/usr/sbin/pgbouncer")).filter(|p| p.is_file()))
        .expect("pgbouncer not found on PATH nor at /usr/sbin/pgbouncer (Debian: apt-get install pgbouncer)")
}

/// A PgBouncer on 127.0.0.1, stopped by PID when dropped.
struct Bouncer {
    child: Child,
    port: u16,
    ini: PathBuf,
    log: PathBuf,
}

impl Bouncer {
    /// `app` → 127.0.0.1:`app_port`, database `postgres`.
    fn start(root: &Path, run_as: RunAs, app_port: u16) -> Bouncer {
        let port = free_port();
        let write = |name: &str, text: String| {
            let path = root.join(name);
            fs::write(&path, text).unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
            run_as.chown(&path);
            path
        };
        write(
            "userlist.txt",
            format!(
                "\"{}\" \"{}\"\n\"{SUPERUSER}\" \"{APP_PASSWORD}\"\n",
                ADMIN.0, ADMIN.1
            ),
        );
        let ini = write(
            "pgbouncer.ini",
            format!(
                ";; the team's PgBouncer configuration\n\
                 [databases]\n\
                 # the application's database\n\
                 app = host=127.0.0.1 port={app_port} dbname=postgres\n\
                 other = host=127.0.0.1 port=1 dbname=postgres\n\
                 \n\
                 [pgbouncer]\n\
                 listen_addr = 127.0.0.1\n\
                 listen_port = {port}\n\
                 unix_socket_dir =\n\
                 auth_type = scram-sha-256\n\
                 auth_file = {root}/userlist.txt\n\
                 auth_user = {SUPERUSER}\n\
                 admin_users = {admin}\n\
                 pool_mode = transaction\n\
                 pidfile = {root}/pgbouncer.pid\n\
                 max_client_conn = 100\n\
                 default_pool_size = 10\n\
                 server_login_retry = 1\n\
                 ignore_startup_parameters = extra_float_digits,options\n\
                 query_wait_timeout = {QUERY_WAIT_TIMEOUT_S}\n",
                root = root.display(),
                admin = ADMIN.0,
            ),
        );
        let log = root.join("pgbouncer.log");
        let out = fs::File::create(&log).unwrap();
        let child = run_as
            .command(&pgbouncer_binary(), root)
            .arg(&ini)
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("start pgbouncer");
        let mut b = Bouncer {
            child,
            port,
            ini,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = b.child.try_wait() {
                panic!("pgbouncer exited with {status}: {}", b.log_tail());
            }
            assert!(
                Instant::now() < deadline,
                "pgbouncer did not listen within 15 s: {}",
                b.log_tail()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        b
    }

    fn log_tail(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for Bouncer {
    fn drop(&mut self) {
        // SIGTERM by PID (the child runs as another user: `kill` as root reaches it), then KILL.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Options {
    servers: usize,
    pause_timeout: Duration,
    max_hold: Duration,
    /// The companion's admin port instead of PgBouncer's (unreachable console).
    admin_port: Option<u16>,
    /// The companion serves TLS with a certificate of a test CA (`access::make_certs`).
    tls: bool,
    /// `MIGRATOR_COMPANION_NAME`.
    name: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            servers: 0,
            pause_timeout: Duration::from_secs(5),
            max_hold: Duration::from_secs(60),
            admin_port: None,
            tls: false,
            name: None,
        }
    }
}

/// PostgreSQL A (and B), PgBouncer with `app` → A, the companion. Dropped in field order.
struct World {
    _companion: DropGuard,
    bouncer: Bouncer,
    a: Option<PgServer>,
    b: Option<PgServer>,
    /// Where `app` points at first (A's port, or a closed port without servers).
    app_port: u16,
    addr: SocketAddr,
    /// The test CA, a CA that did not sign the companion's certificate, and that certificate.
    certs: Option<access::Certs>,
    _root: TempRoot,
}

impl World {
    async fn start(o: Options) -> World {
        let run_as = RunAs::get();
        let root = TempRoot::new("pgb", run_as);
        let servers: Vec<PgServer> = if o.servers == 0 {
            Vec::new()
        } else {
            let bins = Bins::locate();
            let path = root.path.clone();
            tokio::task::spawn_blocking(move || {
                std::thread::scope(|s| {
                    let handles: Vec<_> = ["a", "b"][..o.servers]
                        .iter()
                        .map(|name| {
                            let (path, bins) = (&path, &bins);
                            s.spawn(move || {
                                let pg = PgServer::init_primary(path, name, bins, run_as);
                                pg.start().unwrap_or_else(|e| panic!("start {name}: {e}"));
                                pg
                            })
                        })
                        .collect();
                    handles.into_iter().map(|h| h.join().unwrap()).collect()
                })
            })
            .await
            .unwrap()
        };
        for pg in &servers {
            let c = connect(&pg.tcp(SUPERUSER)).await.unwrap();
            c.batch_execute(&format!("CREATE TABLE {TABLE} (n bigint PRIMARY KEY)"))
                .await
                .unwrap();
        }
        let mut servers = servers.into_iter();
        let (a, b) = (servers.next(), servers.next());
        let app_port = a.as_ref().map_or_else(free_port, |a| a.port);
        let bouncer = Bouncer::start(&root.path, run_as, app_port);
        let mut s = CompanionSettings::new(bouncer.ini.clone(), ADMIN.1.into(), SECRET.into());
        s.listen = "127.0.0.1:0".parse().unwrap();
        s.admin_addr = format!("127.0.0.1:{}", o.admin_port.unwrap_or(bouncer.port));
        s.admin_user = ADMIN.0.into();
        s.pause_timeout = o.pause_timeout;
        s.max_hold = o.max_hold;
        let certs = o.tls.then(|| access::make_certs(&root.path, run_as));
        s.tls = certs.as_ref().map(|c| (c.cert.clone(), c.key.clone()));
        s.name = o.name.clone();
        let companion = Companion::bind(s).await.unwrap();
        let addr = companion.local_addr();
        let token = CancellationToken::new();
        tokio::spawn(companion.run(token.clone()));
        World {
            _companion: token.drop_guard(),
            bouncer,
            a,
            b,
            app_port,
            addr,
            certs,
            _root: root,
        }
    }

    fn client(&self) -> CompanionClient {
        CompanionClient::new(
            &format!("http://{}", self.addr),
            SECRET.into(),
            Duration::from_secs(30),
        )
        .unwrap()
    }

    /// An application's connection through PgBouncer.
    async fn app(&self) -> tokio_postgres::Client {
        let mut c = tcp_config(self.bouncer.port, SUPERUSER);
        c.dbname("app").password(APP_PASSWORD);
        connect(&c).await.unwrap()
    }

    /// What PgBouncer shows for `app`, asked on its console.
    async fn shown(&self) -> DatabaseRow {
        let console = Console::connect(&AdminTarget {
            host: "127.0.0.1".into(),
            port: self.bouncer.port,
            user: ADMIN.0.into(),
            password: ADMIN.1.into(),
            timeout: Duration::from_secs(5),
        })
        .await
        .unwrap();
        console.database("app").await.unwrap().expect("app shown")
    }

    fn ini(&self) -> String {
        fs::read_to_string(&self.bouncer.ini).unwrap()
    }

    /// A raw POST: the status and the JSON answer. `sign`: the signing key and the timestamp's
    /// age in seconds.
    async fn post(&self, path: &str, body: &Value, sign: Option<(&str, i64)>) -> (u16, Value) {
        // Bound to its operation, as the agent's client binds it, unless the body names one.
        let mut body = body.clone();
        if body.get("op").is_none() {
            body["op"] = json!(path);
        }
        let body = body.to_string();
        let mut r = reqwest::Client::new()
            .post(format!("http://{}{path}", self.addr))
            .body(body.clone());
        if let Some((key, age)) = sign {
            let t = jiff::Timestamp::now().as_second() - age;
            r = r.header(
                SIGNATURE_HEADER,
                signature(key.as_bytes(), t, body.as_bytes()),
            );
        }
        let r = r.send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap())
    }
}

/// The `n`s in `writes` on a server.
async fn written(pg: &PgServer) -> BTreeSet<i64> {
    let c = connect(&pg.tcp(SUPERUSER)).await.unwrap();
    c.query(&format!("SELECT n FROM {TABLE}"), &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<_, i64>(0))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_under_writes_loses_no_acknowledged_insert_and_clients_see_no_error() {
    let w = World::start(Options {
        servers: 2,
        ..Options::default()
    })
    .await;
    let (a, b) = (w.a.as_ref().unwrap(), w.b.as_ref().unwrap());
    struct Ack {
        n: i64,
        sent: Instant,
        acked: Instant,
    }
    let acks = Arc::new(Mutex::new(Vec::<Ack>::new()));
    let errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = CancellationToken::new();
    let app = w.app().await;
    let writer = tokio::spawn({
        let (acks, errors, stop) = (acks.clone(), errors.clone(), stop.clone());
        async move {
            let mut n = 0i64;
            while !stop.is_cancelled() {
                n += 1;
                let sent = Instant::now();
                // The simple protocol: PgBouncer 1.18 in transaction mode keeps no prepared
                // statements. One insert, one transaction.
                match app
                    .simple_query(&format!("INSERT INTO {TABLE} (n) VALUES ({n})"))
                    .await
                {
                    Ok(_) => acks.lock().unwrap().push(Ack {
                        n,
                        sent,
                        acked: Instant::now(),
                    }),
                    Err(e) => errors.lock().unwrap().push(format!("insert {n}: {e}")),
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let client = w.client();
    let owner = |p: &Path| {
        use std::os::unix::fs::MetadataExt;
        let m = fs::metadata(p).unwrap();
        (m.uid(), m.gid(), m.mode())
    };
    let owner_before = owner(&w.bouncer.ini);
    let t0 = Instant::now();
    assert!(client.hold("app", "db-TEST/1").await.unwrap().held);
    let hold_ms = t0.elapsed().as_millis();
    // Stands for the agent's promotion and proofs between its hold and its route.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let b_port = b.port;
    let routed = client
        .route("app", "127.0.0.1", b_port, "db-TEST/1")
        .await
        .unwrap();
    let routed_at = Instant::now();
    assert_eq!((routed.host.as_str(), routed.port), ("127.0.0.1", b_port));
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.cancel();
    writer.await.unwrap();

    let errors = errors.lock().unwrap().clone();
    assert!(errors.is_empty(), "clients saw errors: {errors:?}");
    let acks = std::mem::take(&mut *acks.lock().unwrap());
    let (on_a, on_b) = (written(a).await, written(b).await);
    for ack in &acks {
        assert!(
            on_a.contains(&ack.n) || on_b.contains(&ack.n),
            "acknowledged insert {} is on neither server",
            ack.n
        );
        assert!(!(on_a.contains(&ack.n) && on_b.contains(&ack.n)));
        if ack.sent >= routed_at {
            assert!(
                on_b.contains(&ack.n),
                "insert {} after the route is not on B",
                ack.n
            );
        }
    }
    let after = acks.iter().filter(|a| a.sent >= routed_at).count();
    assert!(after >= 10, "only {after} inserts after the route");
    assert!(!on_a.is_empty(), "nothing was written to A before the hold");
    let gap = acks
        .windows(2)
        .map(|p| p[1].acked - p[0].acked)
        .max()
        .unwrap();
    eprintln!(
        "{} inserts acknowledged ({} on A, {} on B), no error; hold answered in {hold_ms} ms, held_ms {} (100 ms of it the stand-in promotion); longest gap between acknowledgements {} ms",
        acks.len(),
        on_a.len(),
        on_b.len(),
        routed.held_ms,
        gap.as_millis()
    );
    assert!(gap < Duration::from_secs(3), "gap {gap:?}");

    // The file, PgBouncer and the entry agree; the other entry and the rest are untouched.
    let shown = w.shown().await;
    assert_eq!(
        (shown.host.as_deref(), shown.port, shown.paused),
        (Some("127.0.0.1"), b_port, false)
    );
    let ini = w.ini();
    assert_eq!(
        owner(&w.bouncer.ini),
        owner_before,
        "the rewrite keeps owner and mode"
    );
    let leftovers: Vec<_> = fs::read_dir(w.bouncer.ini.parent().unwrap())
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.contains("companion"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    assert!(ini.contains(&format!(
        "app = host=127.0.0.1 port={b_port} dbname=postgres\n"
    )));
    assert!(ini.contains("other = host=127.0.0.1 port=1 dbname=postgres\n"));
    assert!(ini.starts_with(
        ";; the team's PgBouncer configuration\n[databases]\n# the application's database\n"
    ));
    // A retry of the route: already there, nothing held.
    let again = client
        .route("app", "127.0.0.1", b_port, "db-TEST/1")
        .await
        .unwrap();
    assert_eq!(again.held_ms, 0);
    assert_eq!(w.ini(), ini);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_blocked_by_an_open_transaction_answers_503_and_leaves_the_database_resumed() {
    let pause_timeout = Duration::from_secs(1);
    let w = World::start(Options {
        servers: 1,
        pause_timeout,
        ..Options::default()
    })
    .await;
    let before = w.ini();
    let open = w.app().await;
    open.simple_query(&format!("BEGIN; INSERT INTO {TABLE} (n) VALUES (1)"))
        .await
        .unwrap();
    let t0 = Instant::now();
    let (status, answer) = w
        .post(
            "/v1/hold",
            &json!({"database": "app", "migration": "m"}),
            Some((SECRET, 0)),
        )
        .await;
    let took = t0.elapsed();
    assert_eq!(status, 503, "{answer}");
    let error = answer["error"].as_str().unwrap();
    assert!(
        error.contains("a transaction kept a server connection longer than the pause timeout")
            && error.contains("resumed"),
        "{error}"
    );
    assert!(
        took < pause_timeout + Duration::from_secs(3),
        "answered after {took:?}"
    );
    assert!(!w.shown().await.paused, "left paused");
    assert_eq!(w.ini(), before);
    // The agent's client sees a retryable failure with the same reason.
    let e = w.client().hold("app", "m").await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Retryable, "{e:?}");
    assert!(
        e.message.contains("503") && e.message.contains("pause timeout"),
        "{}",
        e.message
    );
    assert!(!w.shown().await.paused, "left paused");
    // The clients go on: the open transaction commits, another client's query runs at once.
    open.simple_query("COMMIT").await.unwrap();
    let other = w.app().await;
    tokio::time::timeout(Duration::from_secs(2), other.simple_query("SELECT 1"))
        .await
        .expect("a new query is not held")
        .unwrap();
    assert_eq!(w.ini(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_admin_console_answers_502_and_leaves_the_ini_unchanged() {
    let w = World::start(Options {
        admin_port: Some(free_port()),
        ..Options::default()
    })
    .await;
    let before = w.ini();
    let body = json!({"database": "app", "host": "10.1.2.3", "port": 5432, "migration": "m"});
    let (status, answer) = w.post("/v1/route", &body, Some((SECRET, 0))).await;
    assert_eq!(status, 502, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("admin console"),
        "{answer}"
    );
    assert!(!answer.to_string().contains(ADMIN.1));
    assert_eq!(w.ini(), before);
    let e = w
        .client()
        .route("app", "10.1.2.3", 5432, "m")
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Retryable, "{e:?}");
    assert_eq!(w.ini(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsigned_stale_and_replayed_requests_get_401_and_an_unknown_database_404() {
    let w = World::start(Options::default()).await;
    let before = w.ini();
    let route = json!({"database": "app", "host": "10.1.2.3", "port": 5432, "migration": "m"});
    for (what, sign) in [
        ("unsigned", None),
        ("stale", Some((SECRET, 600))),
        ("wrong key", Some(("not-the-secret", 0))),
    ] {
        for path in ["/v1/route", "/v1/hold"] {
            let (status, answer) = w.post(path, &route, sign).await;
            assert_eq!(status, 401, "{what} {path}: {answer}");
            assert!(answer["error"].is_string(), "{answer}");
            assert!(!answer.to_string().contains(SECRET));
        }
    }
    assert_eq!(w.ini(), before);
    // A request signed for one operation, replayed to another (an entry read as a release, a
    // route as a hold): refused.
    let entry = json!({"op": "/v1/entry", "database": "app"});
    for path in ["/v1/release", "/v1/hold"] {
        let (status, answer) = w.post(path, &entry, Some((SECRET, 0))).await;
        assert_eq!(status, 401, "{path}: {answer}");
    }
    assert!(!w.shown().await.paused);
    let unknown = json!({"database": "nope", "host": "10.1.2.3", "port": 5432, "migration": "m"});
    for path in ["/v1/route", "/v1/hold", "/v1/entry", "/v1/release"] {
        let (status, answer) = w.post(path, &unknown, Some((SECRET, 0))).await;
        assert_eq!(status, 404, "{path}: {answer}");
    }
    let e = w.client().entry("nope").await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotFound, "{e:?}");
    let wrong = CompanionClient::new(
        &format!("http://{}/secret-path-token", w.addr),
        Secret::from("wrong"),
        Duration::from_secs(5),
    )
    .unwrap();
    let e = wrong.hold("app", "m").await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Fatal, "{e:?}");
    assert!(!e.message.contains("secret-path-token"), "{}", e.message);
    assert_eq!(w.ini(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_after_hold_lets_a_blocked_client_complete() {
    let w = World::start(Options {
        servers: 1,
        ..Options::default()
    })
    .await;
    let app = w.app().await;
    app.simple_query("SELECT 1").await.unwrap();
    let client = w.client();
    client.hold("app", "m").await.unwrap();
    assert!(client.hold("app", "m").await.unwrap().held, "idempotent");
    let blocked = tokio::spawn(async move {
        app.simple_query(&format!("INSERT INTO {TABLE} (n) VALUES (7)"))
            .await
            .map(|_| ())
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!blocked.is_finished(), "the client was not held");
    assert!(w.shown().await.paused);
    client.release("app").await.unwrap();
    tokio::time::timeout(Duration::from_secs(3), blocked)
        .await
        .expect("the held client did not complete after the release")
        .unwrap()
        .unwrap();
    assert!(!w.shown().await.paused);
    assert!(written(w.a.as_ref().unwrap()).await.contains(&7));
    assert!(client.release("app").await.unwrap().released, "idempotent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_is_resumed_by_itself_after_max_hold() {
    let w = World::start(Options {
        max_hold: Duration::from_secs(1),
        ..Options::default()
    })
    .await;
    let client = w.client();
    client.hold("app", "m").await.unwrap();
    assert!(client.entry("app").await.unwrap().paused);
    let t0 = Instant::now();
    while w.shown().await.paused {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "still paused 5 s after a 1 s maximum hold"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "resumed by itself {} ms after the hold answered",
        t0.elapsed().as_millis()
    );
    assert!(!client.entry("app").await.unwrap().paused);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entry_reports_host_port_and_paused() {
    let w = World::start(Options::default()).await;
    let client = w.client();
    let e = client.entry("app").await.unwrap();
    assert_eq!(e.database, "app");
    assert_eq!((e.host.as_deref(), e.port), (Some("127.0.0.1"), w.app_port));
    assert!(!e.paused);
    assert_eq!(e.query_wait_timeout_s, Some(QUERY_WAIT_TIMEOUT_S));
    client.hold("app", "m").await.unwrap();
    assert!(client.entry("app").await.unwrap().paused);
    let other = client.entry("other").await.unwrap();
    assert_eq!((other.port, other.paused), (1, false), "only app is held");
    client.release("app").await.unwrap();
    assert!(!client.entry("app").await.unwrap().paused);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_without_a_hold_pauses_by_itself_and_changes_only_its_entry() {
    let w = World::start(Options::default()).await;
    let before = w.ini();
    let port = free_port();
    let routed = w
        .client()
        .route("app", "localhost", port, "m")
        .await
        .unwrap();
    assert_eq!((routed.host.as_str(), routed.port), ("localhost", port));
    let shown = w.shown().await;
    assert_eq!(
        (shown.host.as_deref(), shown.port, shown.paused),
        (Some("localhost"), port, false)
    );
    let expected = before.replace(
        &format!("app = host=127.0.0.1 port={}", w.app_port),
        &format!("app = host=localhost port={port}"),
    );
    assert_ne!(expected, before);
    assert_eq!(w.ini(), expected, "every other byte is kept");
    // A host that is not a plain name is refused before anything happens.
    let (status, answer) = w
        .post(
            "/v1/route",
            &json!({"database": "app", "host": "x dbname=evil", "port": 5432, "migration": "m"}),
            Some((SECRET, 0)),
        )
        .await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(w.ini(), expected);
}

#[tokio::test]
async fn the_companion_refuses_to_listen_beyond_loopback_without_tls() {
    let ini = std::env::temp_dir().join(format!("companion-refusal-{}.ini", std::process::id()));
    fs::write(&ini, "[databases]\napp = host=h\n").unwrap();
    let mut s = CompanionSettings::new(ini.clone(), "pw".into(), SECRET.into());
    s.listen = "0.0.0.0:0".parse().unwrap();
    let e = Companion::bind(s.clone()).await.err().expect("refused");
    assert!(e.to_string().contains("MIGRATOR_COMPANION_LISTEN"), "{e}");
    assert!(e.to_string().contains("MIGRATOR_COMPANION_TLS_CERT"), "{e}");
    s.listen = "127.0.0.1:0".parse().unwrap();
    s.secret = Secret::default();
    let e = Companion::bind(s).await.err().expect("refused");
    assert!(e.to_string().contains("MIGRATOR_WEBHOOK_SECRET"), "{e}");
    let _ = fs::remove_file(&ini);
}

/// Over TLS (a companion beyond loopback must serve it), the agent's client trusts the
/// companion's certificate only with the CA given to it (`MIGRATOR_COMPANION_CA_FILE`): not
/// with the public roots alone, not with another CA, and plain HTTP gets no answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_the_companion_is_trusted_only_with_its_ca() {
    let w = World::start(Options {
        tls: true,
        ..Options::default()
    })
    .await;
    let certs = w.certs.as_ref().unwrap();
    let url = format!("https://{}", w.addr);
    let client = |ca: Option<&std::path::Path>| {
        let pem = ca.map(|p| fs::read(p).unwrap());
        CompanionClient::with_roots(&url, SECRET.into(), Duration::from_secs(10), pem.as_deref())
            .unwrap()
    };
    let e = client(Some(&certs.ca)).entry("app").await.unwrap();
    assert_eq!((e.database.as_str(), e.port), ("app", w.app_port));
    for (what, ca) in [
        ("the public roots alone", None),
        ("another CA", Some(certs.other_ca.as_path())),
    ] {
        let err = client(ca).entry("app").await.unwrap_err();
        assert_eq!(err.kind, ErrorKind::Retryable, "{what}: {err}");
        assert!(
            err.to_string().to_lowercase().contains("certificate"),
            "{what}: {err}"
        );
    }
    let plain = CompanionClient::new(
        &format!("http://{}", w.addr),
        SECRET.into(),
        Duration::from_secs(10),
    )
    .unwrap();
    assert!(
        plain.entry("app").await.is_err(),
        "plain HTTP to the TLS port"
    );
}

/// Two routes of different entries of one ini file at the same time (two migrations behind one
/// PgBouncer): each keeps the other's change; neither writes back a stale copy of the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_routes_of_two_entries_keep_both_changes() {
    let w = World::start(Options::default()).await;
    for round in 0..5u16 {
        let (p1, p2) = (free_port(), free_port());
        let (c1, c2) = (w.client(), w.client());
        let (a, b) = tokio::join!(
            c1.route("app", "localhost", p1, "m1"),
            c2.route("other", "localhost", p2, "m2")
        );
        a.unwrap();
        b.unwrap();
        let ini = w.ini();
        assert!(
            ini.contains(&format!("app = host=localhost port={p1}"))
                && ini.contains(&format!("other = host=localhost port={p2}")),
            "round {round}: both changes kept:\n{ini}"
        );
    }
}

/// A companion that knows its name (`MIGRATOR_COMPANION_NAME`) refuses a request addressed to
/// another companion (one signed for a companion an attacker named in their own router tag,
/// replayed here), and one that names none; the agent's client names the companion it sends to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_named_companion_refuses_requests_addressed_to_another() {
    let w = World::start(Options {
        name: Some("pgb-1.internal:443".into()),
        ..Options::default()
    })
    .await;
    let named = |name: &str| w.client().for_companion(name);
    named("pgb-1.internal:443").entry("app").await.unwrap();
    for (what, client) in [
        ("another companion", named("evil.example.com:443")),
        ("no companion", w.client()),
    ] {
        let e = client.hold("app", "m").await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::Fatal, "{what}: {e}");
        assert!(e.message.contains("another companion"), "{what}: {e}");
    }
    assert!(!w.shown().await.paused, "nothing was held");
}
