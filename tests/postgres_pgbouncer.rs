//! The PgBouncer router for real: the applications connect only through a real PgBouncer
//! (1.18+, `pool_mode = transaction`) on loopback, in front of a real PostgreSQL primary (the
//! RDS instance); the real agent migrates it to a real streaming standby (the Aurora replica)
//! on the database-aware path while clients keep writing. The agent's PgBouncer router
//! (`pgbouncer::router`, signed requests) talks to the companion (`pgbouncer::companion`,
//! in-process here) that drives PgBouncer's admin console and rewrites its ini file.
//!
//! Proven: no acknowledged write is lost, no client sees an error (they are held by `PAUSE` from
//! before the quarantine until PgBouncer points at the standby and resumes), the rows written
//! after the cutover are on the standby; then the owners roll back: the clients are held again
//! before Aurora is fenced, PgBouncer goes back to the source, still without a client error;
//! the outage as clients see it (the longest gap between two acknowledgements) is reported.

mod postgres;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aurora_migrator::agent::Agent;
use aurora_migrator::config::Secret;
use aurora_migrator::core::Phase;
use aurora_migrator::core::policy::Policy;
use aurora_migrator::pgbouncer::companion::{Companion, CompanionSettings};
use aurora_migrator::pgbouncer::router::PgBouncerRouter;
use jiff::SignedDuration;
use tokio_util::sync::CancellationToken;

use postgres::server::{RunAs, SUPERUSER, TABLE, free_port};
use postgres::world::{AGENT_GROUP, APP_ROLE, PgWorld};
use postgres::{ENDS, assert_ended_in, drive, rows};

const SECRET: &str = "whsec_pgbouncer_cutover_7";
const ADMIN: &str = "pgb_admin";
/// Clients writing through PgBouncer, one insert per transaction.
const CLIENTS: usize = 4;

fn pgbouncer_binary() -> PathBuf {
    std::env::var_os("PATH")
        .and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("pgbouncer"))
                .find(|c| c.is_file())
        })
        .or_else(|| Some(PathBuf::from("/usr/sbin/pgbouncer")).filter(|p| p.is_file()))
        .expect(
            "pgbouncer not found on PATH nor at /usr/sbin/pgbouncer (scripts/install-pgbouncer)",
        )
}

/// The team's PgBouncer: `app` → the source, transaction pooling, clients trusted on loopback
/// (the servers trust loopback too: authentication is not what this test is about), an admin
/// user for the companion. Stopped by PID when dropped.
struct Bouncer {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Bouncer {
    fn start(root: &Path, run_as: RunAs, source_port: u16) -> (Bouncer, PathBuf) {
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
            format!("\"{ADMIN}\" \"\"\n\"{APP_ROLE}\" \"\"\n"),
        );
        let ini = write(
            "pgbouncer.ini",
            format!(
                "[databases]\n\
                 app = host=127.0.0.1 port={source_port} dbname=postgres\n\
                 \n\
                 [pgbouncer]\n\
                 listen_addr = 127.0.0.1\n\
                 listen_port = {port}\n\
                 unix_socket_dir =\n\
                 auth_type = trust\n\
                 auth_file = {root}/userlist.txt\n\
                 admin_users = {ADMIN}\n\
                 pool_mode = transaction\n\
                 pidfile = {root}/pgbouncer.pid\n\
                 max_client_conn = 100\n\
                 default_pool_size = 10\n\
                 server_login_retry = 1\n\
                 ignore_startup_parameters = extra_float_digits,options\n\
                 query_wait_timeout = 0\n",
                root = root.display(),
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
        let mut b = Bouncer { child, port, log };
        let deadline = Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = b.child.try_wait() {
                panic!("pgbouncer exited with {status}: {}", b.log_tail());
            }
            assert!(Instant::now() < deadline, "pgbouncer did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        (b, ini)
    }

    fn log_tail(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Bouncer {
    fn drop(&mut self) {
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

/// A client of PgBouncer: one connection, kept for the whole test (PgBouncer hands its
/// transactions to whichever server the pool has), one simple-protocol insert per transaction
/// (transaction pooling and named prepared statements do not mix on PgBouncer 1.18).
struct Client {
    acks: Arc<Mutex<Vec<(i64, Instant)>>>,
    errors: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Client {
    fn spawn(i: usize, port: u16, seq: Arc<AtomicI64>) -> Client {
        let acks: Arc<Mutex<Vec<(i64, Instant)>>> = Arc::default();
        let errors: Arc<Mutex<Vec<String>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn({
            let (acks, errors, stop) = (acks.clone(), errors.clone(), stop.clone());
            async move {
                let mut config = tokio_postgres::Config::new();
                config
                    .host("127.0.0.1")
                    .port(port)
                    .user(APP_ROLE)
                    .dbname("app")
                    .connect_timeout(Duration::from_secs(5));
                let (client, conn) = match config.connect(tokio_postgres::NoTls).await {
                    Ok(c) => c,
                    Err(e) => {
                        errors.lock().unwrap().push(format!("connect: {e}"));
                        return;
                    }
                };
                tokio::spawn(conn);
                while !stop.load(Ordering::Relaxed) {
                    let n = seq.fetch_add(1, Ordering::SeqCst);
                    let sql = format!("INSERT INTO {TABLE} (seq, writer) VALUES ({n}, 'pgb-{i}')");
                    match client.simple_query(&sql).await {
                        Ok(_) => acks.lock().unwrap().push((n, Instant::now())),
                        Err(e) => {
                            errors.lock().unwrap().push(format!("insert {n}: {e}"));
                            if client.is_closed() {
                                return;
                            }
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        });
        Client {
            acks,
            errors,
            stop,
            task,
        }
    }

    async fn stop(self) -> (Vec<(i64, Instant)>, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = tokio::time::timeout(Duration::from_secs(30), self.task).await;
        let acks = self.acks.lock().unwrap().clone();
        let errors = self.errors.lock().unwrap().clone();
        (acks, errors)
    }
}

fn policy() -> Policy {
    Policy {
        database_access: true,
        agent_security_group: Some(AGENT_GROUP.to_string()),
        ..postgres::fast_policy(SignedDuration::from_mins(2))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cutover_and_a_rollback_through_pgbouncer_lose_no_write_and_no_client_sees_an_error() {
    let mut world = PgWorld::start_with_database("pgbouncer", &[]).await;
    let shared = world.shared.clone();
    let source_port = shared.primary.port;
    let run_as = RunAs::get();
    let dir = shared.root.path.join("pgbouncer");
    fs::create_dir_all(&dir).unwrap();
    run_as.chown(&dir);
    let (bouncer, ini) = Bouncer::start(&dir, run_as, source_port);

    // The companion beside PgBouncer, and the agent's router to it.
    let mut settings = CompanionSettings::new(
        ini.clone(),
        Secret::from(String::new()),
        Secret::from(SECRET.to_string()),
    );
    // Named as the instance's tag names it: the agent's router addresses every request to it.
    let companion_port = free_port();
    settings.listen = format!("127.0.0.1:{companion_port}").parse().unwrap();
    settings.name = Some(format!("127.0.0.1:{companion_port}"));
    settings.admin_addr = format!("127.0.0.1:{}", bouncer.port);
    settings.admin_user = ADMIN.to_string();
    let companion = Companion::bind(settings).await.expect("the companion");
    let shutdown = CancellationToken::new();
    let served = tokio::spawn(companion.run(shutdown.clone()));
    world.router.pgbouncer = Some(Arc::new(PgBouncerRouter::new(
        Some(Secret::from(SECRET.to_string())),
        Duration::from_secs(30),
    )));
    shared.state.lock().unwrap().source_tags.insert(
        "aurora-migration:router".to_string(),
        format!("pgbouncer:127.0.0.1:{companion_port}:app"),
    );

    let seq = Arc::new(AtomicI64::new(1));
    let clients: Vec<Client> = (0..CLIENTS)
        .map(|i| Client::spawn(i, bouncer.port, seq.clone()))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    while clients.iter().any(|c| c.acks.lock().unwrap().is_empty()) {
        assert!(Instant::now() < deadline, "first writes through PgBouncer");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let agent = Agent::new(world, policy());
    let mut stop_at = ENDS.to_vec();
    stop_at.push(Phase::Verifying);
    let m = drive(&agent, &stop_at, Duration::from_secs(150)).await;
    assert_ended_in(&m, Phase::Verifying, "the cutover through PgBouncer");
    let standby = shared.standby().expect("the promoted standby");
    let target_port = i32::from(standby.port);
    // Writes go on through PgBouncer, now to the standby.
    let before = seq.load(Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(10);
    while seq.load(Ordering::SeqCst) < before + 100 {
        assert!(Instant::now() < deadline, "writes go on after the cutover");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let p = &m.progress;
    assert_eq!(
        p.database_fallback, None,
        "the database path, not the reboot"
    );
    let held = p.clients_held_at.expect("the clients were held");
    let quarantined = p.quarantine_active_at.expect("quarantined");
    assert!(
        held <= quarantined,
        "held before the fence: {held} vs {quarantined}"
    );
    let cutover_s = p.routed_at.unwrap().duration_since(held).as_secs_f64();
    let ini_now = fs::read_to_string(&ini).unwrap();
    assert!(
        ini_now.contains(&format!("port={}", standby.port)),
        "{ini_now}"
    );
    let on_target_after_cutover = rows(&standby.tcp(SUPERUSER)).await;
    let last_on_target = *on_target_after_cutover.keys().max().unwrap();
    assert_eq!(
        on_target_after_cutover
            .get(&last_on_target)
            .copied()
            .flatten(),
        Some(target_port),
        "the writes after the cutover are written on the standby"
    );

    // The owners roll back: PgBouncer's clients are held again before Aurora is fenced, and
    // the route back re-points PgBouncer at the source and resumes them.
    shared.state.lock().unwrap().source_tags.insert(
        "aurora-migration:rollback".to_string(),
        "approve".to_string(),
    );
    let m = drive(&agent, &ENDS, Duration::from_secs(120)).await;
    assert_ended_in(&m, Phase::RolledBack, "the rollback through PgBouncer");
    let p = &m.progress;
    let held_again = p.rollback_clients_held_at.expect("held again");
    let back_s = p
        .routed_back_at
        .unwrap()
        .duration_since(held_again)
        .as_secs_f64();
    let before = seq.load(Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(10);
    while seq.load(Ordering::SeqCst) < before + 100 {
        assert!(Instant::now() < deadline, "writes go on after the rollback");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut acks = Vec::new();
    let mut errors = Vec::new();
    for c in clients {
        let (a, e) = c.stop().await;
        acks.extend(a);
        errors.extend(e);
    }
    shutdown.cancel();
    let _ = served.await;

    assert!(
        errors.is_empty(),
        "no client saw an error: {errors:?}\n{}",
        bouncer.log_tail()
    );
    // Zero loss: every acknowledged insert is on the source (before the cutover, and after the
    // rollback) or on Aurora (in between: the rollback's notification counts those for a
    // person to reconcile, and Aurora is kept).
    let on_source = rows(&shared.primary.tcp(SUPERUSER)).await;
    // Aurora is fenced now: read it over the local socket, which the quarantine does not close.
    let on_target = rows(&standby.local()).await;
    let lost: Vec<i64> = acks
        .iter()
        .map(|(n, _)| *n)
        .filter(|n| !on_source.contains_key(n) && !on_target.contains_key(n))
        .collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged inserts on neither side: {:?}",
        lost.len(),
        &lost[..lost.len().min(20)]
    );
    let last = acks.iter().map(|(n, _)| *n).max().unwrap();
    assert_eq!(
        on_source.get(&last).copied().flatten(),
        Some(i32::from(source_port)),
        "the last insert was written on the source again"
    );
    let ini_now = fs::read_to_string(&ini).unwrap();
    assert!(
        ini_now.contains(&format!("port={source_port}")),
        "{ini_now}"
    );
    // The outage as clients see it: the longest wait between two acknowledgements.
    let mut at: Vec<Instant> = acks.iter().map(|(_, t)| *t).collect();
    at.sort();
    let gap = at
        .windows(2)
        .map(|w| w[1].duration_since(w[0]))
        .max()
        .unwrap();
    eprintln!(
        "pgbouncer cutover and rollback: {} inserts acknowledged by {CLIENTS} clients, 0 lost, 0 client errors; longest wait between acknowledgements {:.2} s; clients held → routed {cutover_s:.2} s at the cutover, held → routed back {back_s:.2} s at the rollback",
        acks.len(),
        gap.as_secs_f64(),
    );
}
