//! Real PostgreSQL servers for tests: binaries, an unprivileged user, temp dirs, free ports, and
//! a server handle that is stopped by PID when dropped (also when a test panics).
//!
//! PostgreSQL refuses to run as root. When the test runs as root (CI does), every server
//! command runs as the `pgtest` system user (created if missing, `nobody` as a fallback);
//! otherwise as the current user.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The database superuser created by `initdb -U`.
pub const SUPERUSER: &str = "postgres";
/// The table the writers fill.
pub const TABLE: &str = "writes";

/// Where the PostgreSQL programs are: the directory of `pg_ctl` on PATH (symlinks resolved),
/// else the newest `/usr/lib/postgresql/*/bin`.
#[derive(Clone, Debug)]
pub struct Bins {
    dir: PathBuf,
}

impl Bins {
    pub fn locate() -> Bins {
        let on_path = std::env::var_os("PATH").and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("pg_ctl"))
                .find(|c| c.is_file())
                .and_then(|c| fs::canonicalize(c).ok())
                .and_then(|c| c.parent().map(Path::to_path_buf))
        });
        let dir = on_path
            .filter(|d| d.join("initdb").is_file() && d.join("postgres").is_file())
            .or_else(|| {
                let mut dirs: Vec<PathBuf> = fs::read_dir("/usr/lib/postgresql")
                    .ok()?
                    .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
                    .filter(|d| d.join("pg_ctl").is_file() && d.join("initdb").is_file())
                    .collect();
                dirs.sort_by_key(|d| {
                    d.parent()
                        .and_then(|v| v.file_name()?.to_str()?.parse::<u32>().ok())
                        .unwrap_or(0)
                });
                dirs.pop()
            })
            .unwrap_or_else(|| {
                panic!(
                    "PostgreSQL server binaries not found: put initdb, pg_ctl and postgres on PATH \
                     or install them under /usr/lib/postgresql/<version>/bin \
                     (Debian: apt-get install postgresql)"
                )
            });
        for tool in ["pg_basebackup", "pg_dump"] {
            assert!(
                dir.join(tool).is_file() || which(tool).is_some(),
                "{tool} not found beside {} nor on PATH",
                dir.display()
            );
        }
        Bins { dir }
    }

    pub fn path(&self, tool: &str) -> PathBuf {
        let beside = self.dir.join(tool);
        if beside.is_file() {
            beside
        } else {
            which(tool).unwrap_or(beside)
        }
    }
}

fn which(tool: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(tool))
        .find(|c| c.is_file())
}

/// The user the servers run as: `None` when the test is not root (run as ourselves).
#[derive(Clone, Copy, Debug)]
pub struct RunAs {
    pub ids: Option<(u32, u32)>,
}

fn id_of(user: &str, flag: &str) -> Option<u32> {
    let out = Command::new("id").arg(flag).arg(user).output().ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

impl RunAs {
    pub fn get() -> RunAs {
        static RUN_AS: OnceLock<RunAs> = OnceLock::new();
        *RUN_AS.get_or_init(|| {
            let euid = fs::metadata("/proc/self").map(|m| m.uid()).unwrap_or(0);
            if euid != 0 {
                return RunAs { ids: None };
            }
            let user = "pgtest";
            if id_of(user, "-u").is_none() {
                let _ = Command::new("useradd")
                    .args(["--system", "--no-create-home", "--shell", "/usr/sbin/nologin"])
                    .arg(user)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
            let pick = |u: &str| Some((id_of(u, "-u")?, id_of(u, "-g")?));
            let ids = pick(user)
                .or_else(|| pick("nobody"))
                .expect("running as root, and neither a `pgtest` user (useradd failed) nor `nobody` exists to run PostgreSQL as");
            RunAs { ids: Some(ids) }
        })
    }

    /// A command that runs as the server user, in `cwd`, with no PG* variables inherited.
    pub fn command(&self, program: &Path, cwd: &Path) -> Command {
        let mut c = Command::new(program);
        c.current_dir(cwd).env("LC_ALL", "C").stdin(Stdio::null());
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("PG") {
                c.env_remove(k);
            }
        }
        if let Some((uid, gid)) = self.ids {
            c.uid(uid).gid(gid);
        }
        c
    }

    pub fn chown(&self, path: &Path) {
        if let Some((uid, gid)) = self.ids {
            std::os::unix::fs::chown(path, Some(uid), Some(gid))
                .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
        }
    }
}

/// Runs a command to completion; panics with its output when it fails.
pub fn run(mut c: Command, what: &str) -> Output {
    let out = c
        .output()
        .unwrap_or_else(|e| panic!("{what}: could not start {c:?}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Like [`run`], returning the failure as text instead of panicking.
pub fn try_run(mut c: Command) -> Result<Output, String> {
    let out = c
        .output()
        .map_err(|e| format!("could not start {c:?}: {e}"))?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(format!(
            "{c:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// A free TCP port on loopback (bound then released; the server binds it a moment later).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

/// A unique directory owned by the server user, removed on drop.
pub struct TempRoot {
    pub path: PathBuf,
}

impl TempRoot {
    pub fn new(label: &str, run_as: RunAs) -> TempRoot {
        static N: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        // The server user must be able to reach it: a private TMPDIR of root's would not do.
        let base = if run_as.ids.is_some() {
            PathBuf::from("/tmp")
        } else {
            std::env::temp_dir()
        };
        let path = base.join(format!(
            "aurora-pg-{label}-{}-{}-{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&path).expect("create temp dir");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o700)).expect("chmod temp dir");
        run_as.chown(&path);
        TempRoot { path }
    }
}

impl Drop for TempRoot {
    fn drop(&mut self) {
        if std::env::var_os("AURORA_PG_KEEP").is_none() {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// One PostgreSQL server (a data directory and the postmaster running on it).
pub struct PgServer {
    pub name: String,
    pub data: PathBuf,
    pub sock_dir: PathBuf,
    pub port: u16,
    pub log: PathBuf,
    pub bins: Bins,
    pub run_as: RunAs,
    pub root: PathBuf,
}

impl PgServer {
    fn layout(root: &Path, name: &str, port: u16, bins: &Bins, run_as: RunAs) -> PgServer {
        let sock_dir = root.join(format!("{name}-sock"));
        fs::create_dir_all(&sock_dir).expect("socket dir");
        fs::set_permissions(&sock_dir, fs::Permissions::from_mode(0o755)).expect("chmod");
        run_as.chown(&sock_dir);
        PgServer {
            name: name.to_string(),
            data: root.join(name),
            sock_dir,
            port,
            log: root.join(format!("{name}.log")),
            bins: bins.clone(),
            run_as,
            root: root.to_path_buf(),
        }
    }

    fn cmd(&self, tool: &str) -> Command {
        self.run_as.command(&self.bins.path(tool), &self.root)
    }

    /// `initdb` a new primary with WAL for streaming replication and an open pg_hba.conf.
    pub fn init_primary(root: &Path, name: &str, bins: &Bins, run_as: RunAs) -> PgServer {
        let s = PgServer::layout(root, name, free_port(), bins, run_as);
        let mut c = s.cmd("initdb");
        c.arg("-D")
            .arg(&s.data)
            .args(["-U", SUPERUSER, "--auth=trust", "-E", "UTF8", "--locale=C"])
            .arg("--no-sync");
        run(c, "initdb");
        s.append_conf(&[
            "listen_addresses = '127.0.0.1'",
            "wal_level = replica",
            "max_wal_senders = 8",
            "max_replication_slots = 8",
            // Copied to the standby by pg_basebackup: quick feedback and quick reconnects.
            "wal_receiver_status_interval = 1",
            "wal_retrieve_retry_interval = '500ms'",
            "hot_standby = on",
            "shared_buffers = 32MB",
            "max_connections = 40",
            "log_min_messages = warning",
        ]);
        s.write_hba(&HbaMode::Open);
        s
    }

    /// The layout of a standby whose data directory `pg_basebackup` will create.
    pub fn standby_layout(root: &Path, name: &str, bins: &Bins, run_as: RunAs) -> PgServer {
        PgServer::layout(root, name, free_port(), bins, run_as)
    }

    /// `pg_basebackup -R -S <slot>` from `primary` into this server's data directory, then gives
    /// it its own port and socket directory.
    pub fn base_backup_from(&self, primary: &PgServer, slot: &str) -> Result<(), String> {
        let mut c = self.cmd("pg_basebackup");
        c.arg("-D")
            .arg(&self.data)
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &primary.port.to_string(),
                "-U",
                SUPERUSER,
            ])
            .args(["-R", "-S", slot, "-X", "stream", "-c", "fast", "--no-sync"]);
        try_run(c)?;
        self.append_conf(&[]);
        Ok(())
    }

    /// Appends settings (and always this server's own port and socket dir) to postgresql.conf.
    pub fn append_conf(&self, lines: &[&str]) {
        let path = self.data.join("postgresql.conf");
        let mut text = fs::read_to_string(&path).expect("read postgresql.conf");
        text.push_str("\n# aurora-migrator test\n");
        for l in lines {
            text.push_str(l);
            text.push('\n');
        }
        text.push_str(&format!(
            "port = {}\nunix_socket_directories = '{}'\n",
            self.port,
            self.sock_dir.display()
        ));
        fs::write(&path, text).expect("write postgresql.conf");
    }

    pub fn write_hba(&self, mode: &HbaMode) {
        let mut text = String::from(
            "# The Unix socket stands for the agent's own view of the instance (CloudWatch):\n\
             local all all trust\n\
             local replication all trust\n\
             # Replication stands for Aurora's storage-level stream, which security groups do not cut.\n\
             host replication all 127.0.0.1/32 trust\n",
        );
        match mode {
            HbaMode::Open => text.push_str("host all all 127.0.0.1/32 trust\n"),
            HbaMode::Quarantined { leaks, admitted } => {
                for role in leaks {
                    text.push_str(&format!(
                        "# a path the security groups do not show\nhost all {role} 127.0.0.1/32 trust\n"
                    ));
                }
                for role in admitted {
                    text.push_str(&format!(
                        "# the agent's group, admitted by the quarantine group (TLS, password)\nhostssl all {role} 127.0.0.1/32 scram-sha-256\n"
                    ));
                }
                text.push_str("host all all 127.0.0.1/32 reject\n");
            }
        }
        let path = self.data.join("pg_hba.conf");
        fs::write(&path, text).expect("write pg_hba.conf");
        self.run_as.chown(&path);
    }

    /// `pg_ctl <action> -D <data>`, with the server log (`-l`) when `logged`, and `args`.
    fn pg_ctl(&self, action: &str, logged: bool, args: &[&str]) -> Result<(), String> {
        let mut c = self.cmd("pg_ctl");
        c.arg(action).arg("-D").arg(&self.data);
        if logged {
            c.arg("-l").arg(&self.log);
        }
        c.args(args);
        try_run(c).map(|_| ())
    }

    pub fn start(&self) -> Result<(), String> {
        self.pg_ctl("start", true, &["-w", "-t", "120"])
    }

    /// [`PgServer::start`], on another free port when the one picked was taken meanwhile
    /// ([`free_port`] releases it before the server binds it, and a parallel test may bind it
    /// first: "could not bind ... Address already in use"). For a server nothing else has been
    /// told the port of yet.
    pub fn start_on_a_free_port(&mut self) -> Result<(), String> {
        let mut tries = 0;
        loop {
            match self.start() {
                Err(_) if tries < 5 && self.log_tail().contains("Address already in use") => {
                    tries += 1;
                    self.port = free_port();
                    // The last `port` line of postgresql.conf wins.
                    self.append_conf(&[]);
                }
                other => return other,
            }
        }
    }

    /// `pg_ctl restart -m fast`: ends every session, like an RDS reboot.
    pub fn restart_fast(&self) -> Result<(), String> {
        self.pg_ctl("restart", true, &["-m", "fast", "-w", "-t", "120"])
    }

    pub fn promote(&self) -> Result<(), String> {
        self.pg_ctl("promote", false, &["-w", "-t", "120"])
    }

    pub fn stop_fast(&self) -> Result<(), String> {
        self.pg_ctl("stop", false, &["-m", "fast", "-w", "-t", "60"])
    }

    /// `pg_dump --data-only` of the writes table, as a plain SQL file.
    pub fn dump_writes(&self, file: &Path) -> Result<(), String> {
        let mut c = self.cmd("pg_dump");
        c.arg("-h")
            .arg(&self.sock_dir)
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                SUPERUSER,
                "-d",
                "postgres",
            ])
            .args(["--data-only", "-t", TABLE, "-f"])
            .arg(file);
        try_run(c).map(|_| ())
    }

    /// The postmaster's PID from postmaster.pid, if it is running.
    pub fn pid(&self) -> Option<u32> {
        let text = fs::read_to_string(self.data.join("postmaster.pid")).ok()?;
        let pid: u32 = text.lines().next()?.trim().parse().ok()?;
        Path::new(&format!("/proc/{pid}")).exists().then_some(pid)
    }

    /// Stops the postmaster by PID: SIGQUIT (immediate shutdown, children exit with it), then
    /// SIGKILL if it lingers.
    pub fn kill(&self) {
        let Some(pid) = self.pid() else { return };
        let signal = |sig: &str| {
            let _ = Command::new("kill")
                .args([sig, &pid.to_string()])
                .stderr(Stdio::null())
                .status();
        };
        signal("-QUIT");
        let deadline = Instant::now() + Duration::from_secs(5);
        while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if Path::new(&format!("/proc/{pid}")).exists() {
            signal("-KILL");
        }
    }

    /// A client configuration over TCP (what applications use).
    pub fn tcp(&self, user: &str) -> tokio_postgres::Config {
        tcp_config(self.port, user)
    }

    /// A client configuration over the Unix socket (the agent's monitoring path).
    pub fn local(&self) -> tokio_postgres::Config {
        let mut c = tokio_postgres::Config::new();
        c.host_path(&self.sock_dir)
            .port(self.port)
            .user(SUPERUSER)
            .dbname("postgres")
            .application_name("aurora-migrator-monitor")
            .connect_timeout(Duration::from_secs(3));
        c
    }

    /// The last lines of the server log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn tcp_config(port: u16, user: &str) -> tokio_postgres::Config {
    let mut c = tokio_postgres::Config::new();
    c.host("127.0.0.1")
        .port(port)
        .user(user)
        .dbname("postgres")
        .connect_timeout(Duration::from_secs(2));
    c
}

pub enum HbaMode {
    /// The original security groups: applications connect over TCP.
    Open,
    /// Only the quarantine group: TCP clients are rejected, except `leaks` (roles on a path the
    /// security groups do not show, for the negative test) and `admitted` (the roles of the
    /// groups the quarantine group admits: the agent's, with database access).
    Quarantined {
        leaks: Vec<String>,
        admitted: Vec<String>,
    },
}

/// Connects and runs the connection on the runtime; returns the client.
pub async fn connect(config: &tokio_postgres::Config) -> Result<tokio_postgres::Client, String> {
    let (client, conn) = config
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}
