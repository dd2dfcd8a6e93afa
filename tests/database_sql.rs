//! The PostgreSQL adapter (`aurora_migrator::database`) against real PostgreSQL servers with
//! TLS on: a throwaway CA and a server certificate for `localhost`/`127.0.0.1` are made with the
//! `openssl` CLI, the servers run on loopback as an unprivileged user (`postgres/server.rs`),
//! and the agent logs in over TCP with SCRAM as a non-superuser holding what RDS's master user
//! has for these statements (`pg_signal_backend`, `pg_read_all_stats`). Its secret comes from a
//! fixed [`SecretSource`]: the Secrets Manager source is the AWS emulator tests' business.

#[allow(dead_code)]
#[path = "postgres/access.rs"]
mod access;
#[allow(dead_code)]
#[path = "postgres/server.rs"]
mod server;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use access::{Certs, FixedSecrets, make_certs};
use aurora_migrator::core::database::{Credentials, DatabaseAccess, DbTarget, Lsn};
use aurora_migrator::database::{DatabaseSettings, PgDatabase, RdsTls, sql};
use aurora_migrator::ports::{Database, ErrorKind};
use server::{Bins, PgServer, RunAs, TempRoot, connect};

const AGENT_PASSWORD: &str = "agent-Secret-7f3a9";
const APP_PASSWORD: &str = "app-Secret-51c2";
const SECRET_ID: &str = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:rds-db";

/// A primary with TLS on, SCRAM over TCP (TLS only) and trust on its socket, started; `extra`
/// settings appended.
fn tls_primary(root: &Path, name: &str, certs: &Certs, extra: &[&str]) -> PgServer {
    let (bins, run_as) = (Bins::locate(), RunAs::get());
    let s = PgServer::init_primary(root, name, &bins, run_as);
    let conf = s.data.join("postgresql.conf");
    let mut text = std::fs::read_to_string(&conf).unwrap();
    text.push_str(&format!(
        "ssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'\npassword_encryption = 'scram-sha-256'\n",
        certs.cert.display(),
        certs.key.display()
    ));
    for line in extra {
        text.push_str(line);
        text.push('\n');
    }
    std::fs::write(&conf, text).unwrap();
    write_hba(
        &s,
        "hostssl all all 127.0.0.1/32 scram-sha-256\nhostnossl all all 127.0.0.1/32 reject\n",
    );
    if let Err(e) = s.start() {
        panic!("{name} did not start: {e}\n{}", s.log_tail());
    }
    s
}

fn write_hba(s: &PgServer, tcp: &str) {
    let path = s.data.join("pg_hba.conf");
    std::fs::write(
        &path,
        format!(
            "local all all trust\nlocal replication all trust\nhost replication all 127.0.0.1/32 trust\n{tcp}"
        ),
    )
    .unwrap();
    s.run_as.chown(&path);
}

/// The agent's role (what RDS's master user has for these statements) and an application's.
async fn create_roles(s: &PgServer) {
    let su = connect(&s.local())
        .await
        .expect("superuser over the socket");
    su.batch_execute(&format!(
        "CREATE ROLE agent LOGIN PASSWORD '{AGENT_PASSWORD}'; \
         GRANT pg_signal_backend, pg_read_all_stats TO agent; \
         CREATE ROLE app LOGIN PASSWORD '{APP_PASSWORD}'; \
         CREATE TABLE writes (seq bigserial PRIMARY KEY, at timestamptz DEFAULT clock_timestamp()); \
         GRANT INSERT, SELECT ON writes TO app; GRANT USAGE ON SEQUENCE writes_seq_seq TO app;"
    ))
    .await
    .expect("create roles");
}

fn target(s: &PgServer, secret_id: &str) -> DbTarget {
    DbTarget {
        host: "127.0.0.1".into(),
        port: s.port,
        access: DatabaseAccess {
            credentials: Credentials::Secret {
                secret_id: secret_id.into(),
            },
            database: "postgres".into(),
        },
    }
}

fn database(bundle: &Path, secrets: &FixedSecrets) -> PgDatabase<FixedSecrets> {
    let tls = RdsTls::from_bundle_file(bundle).expect("the test CA bundle");
    PgDatabase::with_source(DatabaseSettings::new(tls), secrets.clone())
}

/// An application session over TCP and TLS (it verifies the server like the agent does).
async fn app_over_tls(s: &PgServer, certs: &Certs, name: &str) -> tokio_postgres::Client {
    let mut c = tokio_postgres::Config::new();
    c.host("127.0.0.1")
        .port(s.port)
        .user("app")
        .password(APP_PASSWORD)
        .dbname("postgres")
        .application_name(name)
        .ssl_mode(tokio_postgres::config::SslMode::Require);
    let (client, conn) = c
        .connect(RdsTls::from_bundle_file(&certs.ca).unwrap())
        .await
        .expect("the application connects over TLS");
    tokio::spawn(conn);
    client
}

/// An application session over the Unix socket (no client address).
async fn app_over_socket(s: &PgServer, name: &str) -> tokio_postgres::Client {
    let mut c = s.local();
    c.user("app").application_name(name);
    connect(&c)
        .await
        .expect("the application connects over the socket")
}

async fn lsn_of(client: &tokio_postgres::Client, sql: &str) -> Lsn {
    let text: String = client.query_one(sql, &[]).await.unwrap().get(0);
    text.parse().unwrap()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Sessions listed are the applications' (TCP with its address, socket without), never the
/// agent's own nor replication; ending them ends them and counts them; the fence's position
/// covers an asynchronous commit acknowledged before it, and the standby replays up to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_end_and_the_fence_covers_an_async_commit_the_standby_then_replays() {
    let run_as = RunAs::get();
    let root = TempRoot::new("db-fence", run_as);
    let certs = make_certs(&root.path, run_as);
    // The WAL writer flushes asynchronous commits every wal_writer_delay (10 s at most): long
    // enough that only the fence's own flush can cover the asynchronous commit below.
    let primary = tls_primary(
        &root.path,
        "primary",
        &certs,
        &["wal_writer_delay = 10000ms"],
    );
    create_roles(&primary).await;
    {
        let su = connect(&primary.local()).await.unwrap();
        su.batch_execute("SELECT pg_create_physical_replication_slot('standby')")
            .await
            .unwrap();
    }
    let standby = PgServer::standby_layout(&root.path, "standby", &Bins::locate(), run_as);
    standby
        .base_backup_from(&primary, "standby")
        .unwrap_or_else(|e| panic!("base backup: {e}"));
    if let Err(e) = standby.start() {
        panic!("the standby did not start: {e}\n{}", standby.log_tail());
    }

    let secrets = FixedSecrets::default();
    secrets.set(SECRET_ID, "agent", AGENT_PASSWORD);
    let db = database(&certs.ca, &secrets);
    let at = target(&primary, SECRET_ID);

    let tcp = app_over_tls(&primary, &certs, "app-tcp").await;
    let sock = app_over_socket(&primary, "app-socket").await;
    let tcp_pid: i32 = tcp
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let sock_pid: i32 = sock
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let expected: BTreeSet<i32> = [tcp_pid, sock_pid].into();

    // The superuser's setup sessions have closed; the walreceiver's walsender stays.
    let mut timings = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    let sessions = loop {
        let t = Instant::now();
        let sessions = db.client_sessions(&at).await.expect("client_sessions");
        timings.push(t.elapsed());
        let pids: BTreeSet<i32> = sessions.iter().map(|s| s.pid).collect();
        if pids == expected || Instant::now() > deadline {
            break sessions;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for _ in 0..4 {
        let t = Instant::now();
        let again = db.client_sessions(&at).await.expect("client_sessions");
        timings.push(t.elapsed());
        assert!(
            again.iter().all(|s| s.application != "aurora-migrator"),
            "the agent's own sessions are not client sessions: {again:?}"
        );
    }
    eprintln!(
        "client_sessions (connect + TLS + SCRAM + one query): median {:?} of {}",
        median(timings.clone()),
        timings.len()
    );
    assert_eq!(
        sessions.iter().map(|s| s.pid).collect::<BTreeSet<_>>(),
        expected,
        "{sessions:?}"
    );
    let by_tcp = sessions.iter().find(|s| s.pid == tcp_pid).unwrap();
    assert_eq!(by_tcp.user, "app");
    assert_eq!(by_tcp.application, "app-tcp");
    assert_eq!(by_tcp.client_addr.as_deref(), Some("127.0.0.1"));
    let started = by_tcp.backend_start.expect("backend_start");
    let age = jiff::Timestamp::now().duration_since(started);
    assert!(
        age.as_secs_f64() >= 0.0 && age.as_secs() < 120,
        "backend_start {started}"
    );
    let by_socket = sessions.iter().find(|s| s.pid == sock_pid).unwrap();
    assert_eq!(by_socket.client_addr, None);

    // Ending them: both counted, and each one's next query fails.
    let ended = db
        .end_client_sessions(&at)
        .await
        .expect("end_client_sessions");
    assert_eq!(ended, 2);
    assert!(
        tcp.simple_query("SELECT 1").await.is_err(),
        "the TCP session still answers"
    );
    assert!(
        sock.simple_query("SELECT 1").await.is_err(),
        "the socket session still answers"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = db.client_sessions(&at).await.unwrap();
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "sessions left after ending them: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // An asynchronous commit, acknowledged; then the fence.
    let writer = app_over_socket(&primary, "app-async").await;
    writer
        .batch_execute("SET synchronous_commit = off; INSERT INTO writes DEFAULT VALUES")
        .await
        .unwrap();
    let acknowledged = lsn_of(&writer, "SELECT pg_current_wal_insert_lsn()::text").await;
    let flushed_before = lsn_of(&writer, "SELECT pg_current_wal_flush_lsn()::text").await;
    eprintln!("async commit ends by {acknowledged}; flushed before the fence: {flushed_before}");
    let t = Instant::now();
    let fence = db.write_fence(&at).await.expect("write_fence");
    let fence_time = t.elapsed();
    eprintln!("write_fence: {fence} in {fence_time:?} (connect + one round trip)");
    assert!(
        fence >= acknowledged,
        "the fence {fence} is before the acknowledged asynchronous commit ({acknowledged})"
    );
    let flushed_after = lsn_of(&writer, "SELECT pg_current_wal_flush_lsn()::text").await;
    assert!(flushed_after >= fence);
    // The fence's statements alone, on an open connection: its round trip and flush.
    let mut round_trips = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        writer.simple_query(sql::WRITE_FENCE).await.unwrap();
        round_trips.push(t.elapsed());
    }
    eprintln!(
        "the fence's round trip alone: median {:?} of 5",
        median(round_trips)
    );

    assert_eq!(
        db.replay_lsn(&at).await.unwrap(),
        None,
        "the primary is not in recovery"
    );
    let at_standby = target(&standby, SECRET_ID);
    let deadline = Instant::now() + Duration::from_secs(20);
    let replayed = loop {
        let r = db
            .replay_lsn(&at_standby)
            .await
            .expect("replay_lsn on the standby")
            .expect("the standby is in recovery");
        if r >= fence || Instant::now() > deadline {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        replayed >= fence,
        "the standby replayed {replayed}, short of {fence}"
    );
}

/// The preflight finds an unlogged table in a second database, the extensions of every
/// database, a logical slot and the WAL it holds, a prepared transaction and an old one, the
/// version and the size; and no background worker on a server that runs only PostgreSQL's own.
/// (pg_cron is not installed here: its jobs are not exercised.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preflight_finds_unlogged_tables_slots_prepared_and_old_transactions() {
    let run_as = RunAs::get();
    let root = TempRoot::new("db-preflight", run_as);
    let certs = make_certs(&root.path, run_as);
    let primary = tls_primary(
        &root.path,
        "primary",
        &certs,
        &["wal_level = logical", "max_prepared_transactions = 4"],
    );
    create_roles(&primary).await;
    let su = connect(&primary.local()).await.unwrap();
    su.batch_execute("CREATE DATABASE second").await.unwrap();
    {
        let mut c = primary.local();
        c.dbname("second");
        let second = connect(&c).await.unwrap();
        second
            .batch_execute(
                "CREATE UNLOGGED TABLE public.scratch (x int); \
                 CREATE TABLE public.kept (x int); \
                 CREATE EXTENSION citext;",
            )
            .await
            .unwrap();
    }
    // The slot first: creating one waits for every transaction open at the time.
    su.batch_execute(
        "SELECT pg_create_logical_replication_slot('cdc', 'pgoutput'); \
         INSERT INTO writes SELECT FROM generate_series(1, 1000);",
    )
    .await
    .unwrap();
    su.batch_execute(
        "BEGIN; INSERT INTO writes DEFAULT VALUES; PREPARE TRANSACTION 'aurora-test-prepared';",
    )
    .await
    .unwrap();
    let old = app_over_socket(&primary, "app-old").await;
    old.batch_execute("BEGIN; SELECT txid_current();")
        .await
        .unwrap();
    let old_pid: i32 = old
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let young = app_over_socket(&primary, "app-young").await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    young
        .batch_execute("BEGIN; SELECT txid_current();")
        .await
        .unwrap();

    let secrets = FixedSecrets::default();
    secrets.set(SECRET_ID, "agent", AGENT_PASSWORD);
    let db = database(&certs.ca, &secrets);
    let t = Instant::now();
    let p = db
        .preflight(&target(&primary, SECRET_ID), 2)
        .await
        .expect("preflight");
    eprintln!("preflight over 2 databases: {:?}", t.elapsed());
    eprintln!("{p:#?}");

    assert!(
        (150_000..160_000).contains(&p.server_version_num),
        "{}",
        p.server_version_num
    );
    assert_eq!(p.unlogged_tables, vec!["second.public.scratch".to_string()]);
    let names: BTreeSet<&str> = p.extensions.iter().map(|(n, _)| n.as_str()).collect();
    assert!(
        names.contains("citext") && names.contains("plpgsql"),
        "{names:?}"
    );
    assert_eq!(p.logical_slots.len(), 1);
    let slot = &p.logical_slots[0];
    assert_eq!(
        (slot.name.as_str(), slot.plugin.as_str(), slot.active),
        ("cdc", "pgoutput", false)
    );
    assert!(
        slot.retained_bytes > 0,
        "the slot holds the inserts' WAL: {slot:?}"
    );
    assert_eq!(
        p.prepared_transactions,
        vec!["aurora-test-prepared".to_string()]
    );
    assert_eq!(p.old_transactions.len(), 1, "{:?}", p.old_transactions);
    assert_eq!(p.old_transactions[0].0, old_pid);
    assert!(p.old_transactions[0].1 >= 2);
    assert!(p.cron_jobs.is_empty());
    assert!(
        p.background_workers.is_empty(),
        "{:?}",
        p.background_workers
    );
    assert!(p.database_bytes > 3 * 1024 * 1024, "{}", p.database_bytes);
    su.batch_execute("COMMIT PREPARED 'aurora-test-prepared'")
        .await
        .unwrap();
}

/// TLS is verified and never skipped: a server certificate from another CA is refused, and a
/// server without TLS is refused although it would take the password in plaintext. A wrong
/// password is Fatal and its text is nowhere in the error; a rotated secret is fetched again
/// and the connection retried; nothing listening is Retryable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_is_verified_never_skipped_and_credential_failures_are_classified() {
    let run_as = RunAs::get();
    let root = TempRoot::new("db-tls", run_as);
    let certs = make_certs(&root.path, run_as);
    let primary = tls_primary(&root.path, "primary", &certs, &[]);
    create_roles(&primary).await;
    let secrets = FixedSecrets::default();
    secrets.set(SECRET_ID, "agent", AGENT_PASSWORD);
    let at = target(&primary, SECRET_ID);

    // Another CA: the handshake fails, Fatal, and the message says why.
    let e = database(&certs.other_ca, &secrets)
        .client_sessions(&at)
        .await
        .expect_err("a certificate from another CA was accepted");
    eprintln!("another CA: {e}");
    assert_eq!(e.kind, ErrorKind::Fatal, "{e}");
    assert_eq!(e.operation, "postgres:client_sessions");
    assert!(
        e.message
            .contains("invalid peer certificate: UnknownIssuer"),
        "{e}"
    );

    // The right CA, timed: connect + TLS + SCRAM + one query.
    let db = database(&certs.ca, &secrets);
    let t = Instant::now();
    db.client_sessions(&at).await.expect("the right CA");
    eprintln!(
        "first call (connect + TLS + SCRAM + query): {:?}",
        t.elapsed()
    );

    // A wrong password: Fatal, and the password is not in the error nor its Debug.
    let wrong = "Not-The-Password-4411";
    secrets.set("wrong", "agent", wrong);
    let e = db
        .client_sessions(&target(&primary, "wrong"))
        .await
        .expect_err("a wrong password was accepted");
    eprintln!("wrong password: {e}");
    assert_eq!(e.kind, ErrorKind::Fatal, "{e}");
    assert!(e.message.contains("password authentication failed"), "{e}");
    for shown in [e.to_string(), format!("{e:?}")] {
        assert!(!shown.contains(wrong), "{shown}");
    }

    // Rotation: the cached login is refused, the secret is fetched again, the retry succeeds.
    secrets.set("rotating", "agent", AGENT_PASSWORD);
    let rotating = target(&primary, "rotating");
    db.client_sessions(&rotating)
        .await
        .expect("before rotation");
    let fetched = secrets.fetches();
    db.client_sessions(&rotating).await.expect("cached");
    assert_eq!(
        secrets.fetches(),
        fetched,
        "a fresh secret is used from the cache"
    );
    let su = connect(&primary.local()).await.unwrap();
    su.batch_execute("ALTER ROLE agent PASSWORD 'Rotated-Secret-9d1e'")
        .await
        .unwrap();
    secrets.set("rotating", "agent", "Rotated-Secret-9d1e");
    db.client_sessions(&rotating)
        .await
        .expect("after rotation, with the secret fetched again");
    assert_eq!(secrets.fetches(), fetched + 1);

    // Nothing listening: Retryable.
    let mut nowhere = at.clone();
    nowhere.port = server::free_port();
    let e = db.client_sessions(&nowhere).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Retryable, "{e}");

    // A server without TLS, which would take the password in plaintext: refused, Fatal.
    su.batch_execute("ALTER SYSTEM SET ssl = off")
        .await
        .unwrap();
    write_hba(&primary, "host all all 127.0.0.1/32 scram-sha-256\n");
    su.batch_execute("SELECT pg_reload_conf()").await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut plain = primary.tcp("agent");
    plain.password("Rotated-Secret-9d1e");
    connect(&plain)
        .await
        .expect("the server takes plaintext logins now");
    let e = db
        .client_sessions(&rotating)
        .await
        .expect_err("the agent connected without TLS");
    eprintln!("no TLS: {e}");
    assert_eq!(e.kind, ErrorKind::Fatal, "{e}");
    assert!(e.message.contains("TLS"), "{e}");

    // IAM authentication is not built: Fatal, saying so.
    let mut iam = at.clone();
    iam.access.credentials = Credentials::IamUser {
        user: "migrator".into(),
    };
    let e = db.client_sessions(&iam).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Fatal);
    assert!(e.message.contains("needs AWS credentials"), "{e}");
}

/// Waits until `standby` has replayed everything `primary` has written so far.
async fn caught_up(
    db: &PgDatabase<FixedSecrets>,
    primary: &tokio_postgres::Client,
    standby: &DbTarget,
) {
    let written = lsn_of(primary, "SELECT pg_current_wal_lsn()::text").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let replayed = db.replay_lsn(standby).await.unwrap().unwrap();
        if replayed >= written {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the standby is stuck at {replayed}, short of {written}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The consistency check's fingerprint: a primary and its caught-up standby match (sequences
/// logged ahead on the standby included); with replay paused, a row inserted on the primary
/// names its table (a small one by its count, a large one by its newest rows) and a sequence
/// advanced names the sequence; resumed, they match again. Each read stays within the budget,
/// and a budget too short to connect fails fast.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fingerprints_of_a_primary_and_its_standby_match_and_a_missed_write_is_named() {
    use aurora_migrator::core::database::{TableFacts, compare};
    let run_as = RunAs::get();
    let root = TempRoot::new("db-fingerprint", run_as);
    let certs = make_certs(&root.path, run_as);
    let primary = tls_primary(&root.path, "primary", &certs, &[]);
    create_roles(&primary).await;
    let su = connect(&primary.local()).await.unwrap();
    // The agent reads every table as RDS's master user would read the application's.
    su.batch_execute(
        "GRANT pg_read_all_data TO agent; \
         SELECT pg_create_physical_replication_slot('standby'); \
         CREATE TABLE small_t (id serial PRIMARY KEY, v text, at timestamptz DEFAULT now()); \
         INSERT INTO small_t (v) SELECT 'row ' || i FROM generate_series(1, 3000) i; \
         CREATE TABLE big_t (id bigint PRIMARY KEY, payload text, at timestamptz DEFAULT now()); \
         INSERT INTO big_t (id, payload) SELECT i, md5(i::text) FROM generate_series(1, 120000) i; \
         CREATE TABLE nokey (x int); \
         INSERT INTO nokey SELECT generate_series(1, 120000); \
         CREATE TABLE \"Odd, name\" (\"key, part\" text, n int, PRIMARY KEY (\"key, part\", n)); \
         INSERT INTO \"Odd, name\" VALUES ('a', 1), ('b', 2); \
         CREATE SEQUENCE standalone_seq; SELECT nextval('standalone_seq'); \
         ANALYZE;",
    )
    .await
    .unwrap();
    let standby = PgServer::standby_layout(&root.path, "standby", &Bins::locate(), run_as);
    standby
        .base_backup_from(&primary, "standby")
        .unwrap_or_else(|e| panic!("base backup: {e}"));
    if let Err(e) = standby.start() {
        panic!("the standby did not start: {e}\n{}", standby.log_tail());
    }
    let secrets = FixedSecrets::default();
    secrets.set(SECRET_ID, "agent", AGENT_PASSWORD);
    let db = database(&certs.ca, &secrets);
    let (at_primary, at_standby) = (target(&primary, SECRET_ID), target(&standby, SECRET_ID));
    let budget = Duration::from_secs(5);
    caught_up(&db, &su, &at_standby).await;

    let timed = |at: DbTarget| {
        let db = &db;
        async move {
            let t = Instant::now();
            let f = db.fingerprint(&at, budget).await.expect("fingerprint");
            (f, t.elapsed())
        }
    };
    let (source, t_source) = timed(at_primary.clone()).await;
    let (replica, t_replica) = timed(at_standby.clone()).await;
    eprintln!(
        "fingerprint of {} sequences and {} tables (3 000 + 120 000 + 120 000 rows): primary {t_source:?}, standby {t_replica:?}",
        source.sequences.len(),
        source.tables.len()
    );
    eprintln!("{source:#?}\n{replica:#?}");
    assert!(t_source < budget && t_replica < budget);
    assert_eq!(source.unread, 0);
    assert_eq!(source.tables["public.small_t"], TableFacts::Rows(3000));
    assert!(matches!(&source.tables["public.big_t"], TableFacts::Newest(d) if d.len() == 32));
    assert!(matches!(
        &source.tables["public.nokey"],
        TableFacts::Skipped(_)
    ));
    assert_eq!(source.tables["public.\"Odd, name\""], TableFacts::Rows(2));
    let c = compare(&source, &replica);
    assert_eq!(c.differences, Vec::<String>::new());
    assert_eq!(c.not_compared, 1, "the large table without a key");
    assert!(c.compared >= 7, "{c:?}");

    // Replay paused: the primary takes a row in each table and advances a sequence.
    let standby_su = connect(&standby.local()).await.unwrap();
    standby_su
        .batch_execute("SELECT pg_wal_replay_pause()")
        .await
        .unwrap();
    su.batch_execute(
        "INSERT INTO small_t (v) VALUES ('missed'); \
         INSERT INTO big_t (id, payload) VALUES (120001, 'missed'); \
         SELECT nextval('standalone_seq') FROM generate_series(1, 100);",
    )
    .await
    .unwrap();
    let (source, _) = timed(at_primary.clone()).await;
    let (replica, _) = timed(at_standby.clone()).await;
    let c = compare(&source, &replica);
    let all = c.differences.join("\n");
    eprintln!("with replay paused:\n{all}");
    for name in [
        "table public.small_t: 3001 rows on the source, 3000 on Aurora",
        "table public.big_t: its newest 10 rows by primary key differ",
        "sequence public.standalone_seq",
    ] {
        assert!(all.contains(name), "`{name}` not in:\n{all}");
    }

    // Resumed and caught up: the same again.
    standby_su
        .batch_execute("SELECT pg_wal_replay_resume()")
        .await
        .unwrap();
    caught_up(&db, &su, &at_standby).await;
    let (source, _) = timed(at_primary.clone()).await;
    let (replica, _) = timed(at_standby.clone()).await;
    assert_eq!(compare(&source, &replica).differences, Vec::<String>::new());

    // A budget too short to even connect: an error, at once.
    let t = Instant::now();
    let e = db
        .fingerprint(&at_primary, Duration::from_millis(1))
        .await
        .expect_err("read within 1 ms");
    eprintln!("1 ms budget: {e} after {:?}", t.elapsed());
    assert!(t.elapsed() < Duration::from_millis(500));
}
