//! `aurora-migrator`: the agent and its operator commands.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use std::sync::Arc;

use aurora_migrator::agent::Agent;
use aurora_migrator::aws::{self, AwsSettings, AwsWorld};
use aurora_migrator::commands::{self, Control};
use aurora_migrator::config::{AwsArgs, DatabaseArgs, PolicyArgs, TelemetryArgs};
use aurora_migrator::core::Policy;
use aurora_migrator::core::readiness::{self, Format};
use aurora_migrator::inbound::Home;
use aurora_migrator::ports::{Clock, World};
use aurora_migrator::runtime::{self, RuntimeSettings};
use aurora_migrator::sim::{self, SimOptions};
use aurora_migrator::telemetry::{self, Instruments, LogFormat};
use tokio_util::sync::CancellationToken;

#[derive(Parser, Debug)]
#[command(
    name = "aurora-migrator",
    version,
    about = "Moves Amazon RDS for PostgreSQL instances to Amazon Aurora PostgreSQL by itself",
    long_about = "Moves Amazon RDS for PostgreSQL instances to Amazon Aurora PostgreSQL by itself.\n\nTag an instance `aurora-migration=start` and the agent builds an Aurora read replica, validates it, quiesces the source, proves catch-up, promotes, re-points traffic, verifies and decommissions, with a notification at every phase. Every setting is also an environment variable (shown in brackets)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    aws: AwsArgs,
    #[command(flatten)]
    policy: PolicyArgs,
    #[command(flatten)]
    telemetry: TelemetryArgs,
    #[command(flatten)]
    database: DatabaseArgs,
    /// Log format.
    #[arg(
        long,
        env = "MIGRATOR_LOG_FORMAT",
        value_enum,
        default_value = "json",
        global = true
    )]
    log_format: LogFormat,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the agent: read the queue and migrate tagged instances until SIGTERM.
    Run {
        /// Create the DynamoDB table if it does not exist (for local use).
        #[arg(long)]
        create_table: bool,
    },
    /// Print the preflight report for an instance and what would be created; with --all, the
    /// fleet readiness report of every RDS for PostgreSQL instance of the Region. Changes nothing.
    #[command(group(clap::ArgGroup::new("which").required(true).args(["instance", "all"])))]
    Plan {
        /// The instance (identifier or ARN).
        instance: Option<String>,
        /// Every RDS for PostgreSQL instance of the Region, one row each.
        #[arg(long)]
        all: bool,
        /// With --all: markdown (the default), csv or json.
        #[arg(long, conflicts_with = "instance")]
        format: Option<Format>,
        /// With --all: write the report to this file instead of standard output.
        #[arg(long, conflicts_with = "instance")]
        out: Option<std::path::PathBuf>,
    },
    /// List every migration in the table, finished ones included.
    Status,
    /// Tag an instance to start a migration (`<prefix>=start`).
    Start { instance: String },
    /// Approve a manual cutover (`<prefix>:approve=true`).
    Approve { instance: String },
    /// Abort before promotion, losslessly (`<prefix>:abort=true`).
    Abort { instance: String },
    /// Ask for a rollback after cutover (`<prefix>:rollback=approve`).
    Rollback { instance: String },
    /// Acknowledge a preflight finding (`<prefix>:ack-<check>=true`; for `restored-copy`, the
    /// instance's own resource id). An unknown check is refused, naming the ones there are.
    Ack { instance: String, check: String },
    /// Hold every migration at the cutover gate.
    Pause,
    /// Lift the fleet-wide pause.
    Resume,
    /// Run the deterministic simulator: migrations against an in-process AWS with virtual time
    /// and seeded faults, checking every safety rule; prints a report. Needs no AWS.
    Simulate {
        /// Seeds to run, starting at --seed.
        #[arg(long, default_value_t = 100)]
        seeds: u64,
        /// First seed (with --seeds 1 and --verbose: replay one seed with its timeline).
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Print the first seed's timeline (with --seeds 0 and --fleet: the fleet's).
        #[arg(long)]
        verbose: bool,
        /// Also run one seed with this many concurrent migrations in one agent.
        #[arg(long, default_value_t = 0)]
        fleet: usize,
        /// Scale of the fault mix (0: no faults).
        #[arg(long, default_value_t = 1.0)]
        faults: f64,
        /// Share of sources granting database access (the database-aware cutover), 0..=1; 0:
        /// every source takes the reboot and metric path.
        #[arg(long, default_value_t = 0.5)]
        database_share: f64,
        /// Share of sources that route through Route 53 (the rest use the webhook), 0..=1, with
        /// its faults (changes that take 2–60 s to sync, some that never do).
        #[arg(long, default_value_t = 0.0)]
        route53_share: f64,
        /// Share of the other sources that route through an RDS Proxy, 0..=1, with its faults
        /// (new targets REGISTERING 5–90 s, some never available).
        #[arg(long, default_value_t = 0.0)]
        rds_proxy_share: f64,
        /// Share of the remaining sources that route through PgBouncer, 0..=1, with its faults
        /// (a companion lost once the clients are held).
        #[arg(long, default_value_t = 0.0)]
        pgbouncer_share: f64,
        /// RDS requests per second the simulated agent allows itself (as
        /// MIGRATOR_RDS_RATE_LIMIT); a large value is an unlimited budget.
        #[arg(long, default_value_t = 5.0)]
        rds_rate_limit: f64,
        /// Most migrations in their cutover at once (as MIGRATOR_MAX_CUTOVERS), per agent.
        #[arg(long, default_value_t = aurora_migrator::core::policy::DEFAULT_MAX_CUTOVERS)]
        max_cutovers: usize,
        /// Most migrations in Preflight or Preparing at once (as MIGRATOR_MAX_PREPARATIONS), per
        /// agent.
        #[arg(long, default_value_t = aurora_migrator::core::policy::DEFAULT_MAX_PREPARATIONS)]
        max_preparations: usize,
        /// Agent processes on the one table and queue, 1 or 2 (two: high availability, each
        /// with half the RDS rate; crashes kill one at a time).
        #[arg(long, default_value_t = 1)]
        agents: usize,
        /// The only fault is the agent process dying (in 0.4 % of its calls, before or after
        /// AWS saw the call): what a second agent's takeover costs, alone.
        #[arg(long)]
        crashes_only: bool,
    },
    /// Run the PgBouncer companion beside a PgBouncer until SIGTERM: the agent asks it, signed
    /// with MIGRATOR_WEBHOOK_SECRET, to hold a database's clients (PAUSE) and re-point its
    /// pgbouncer.ini entry at the Aurora writer (rewrite, RELOAD, RESUME). Needs no AWS.
    PgbouncerCompanion(CompanionArgs),
    /// Exit 0 if the running agent touched its heartbeat file recently (container health check).
    Healthcheck {
        /// Oldest acceptable heartbeat, in seconds.
        #[arg(long, default_value_t = 120)]
        max_age_s: u64,
    },
}

/// The PgBouncer companion's settings (`pgbouncer::companion::CompanionSettings`).
#[derive(clap::Args, Debug)]
struct CompanionArgs {
    /// Address to listen on; beyond loopback only with TLS.
    #[arg(
        long,
        env = "MIGRATOR_COMPANION_LISTEN",
        default_value = "127.0.0.1:6480"
    )]
    listen: std::net::SocketAddr,
    /// PgBouncer's configuration file (its directory must be writable: the rewrite is a rename).
    #[arg(long, env = "PGBOUNCER_INI")]
    pgbouncer_ini: std::path::PathBuf,
    /// PgBouncer's admin console, host:port.
    #[arg(long, env = "PGBOUNCER_ADMIN_ADDR", default_value = "127.0.0.1:6432")]
    admin_addr: String,
    /// A user in PgBouncer's admin_users.
    #[arg(long, env = "PGBOUNCER_ADMIN_USER", default_value = "pgbouncer")]
    admin_user: String,
    /// The admin user's password.
    #[arg(long, env = "PGBOUNCER_ADMIN_PASSWORD", hide_env_values = true)]
    admin_password: aurora_migrator::config::Secret,
    /// TLS certificate chain (PEM); with --tls-key.
    #[arg(long, env = "MIGRATOR_COMPANION_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,
    /// TLS private key (PEM); with --tls-cert.
    #[arg(long, env = "MIGRATOR_COMPANION_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
    /// How long PAUSE may wait for open transactions to end, seconds.
    #[arg(long, env = "MIGRATOR_COMPANION_PAUSE_TIMEOUT_S", default_value_t = 10)]
    pause_timeout_s: u64,
    /// The longest hold before the companion resumes by itself, seconds.
    #[arg(long, env = "MIGRATOR_COMPANION_MAX_HOLD_S", default_value_t = 900)]
    max_hold_s: u64,
    /// The `<host>:<port>` the instances' `pgbouncer:` router tags name this companion by;
    /// when set, a request addressed to another companion is refused (recommended: one signing
    /// key reaches every companion).
    #[arg(long, env = "MIGRATOR_COMPANION_NAME")]
    name: Option<String>,
}

/// Runs the companion until SIGTERM or Ctrl-C.
fn companion(
    args: CompanionArgs,
    secret: Option<aurora_migrator::config::Secret>,
) -> anyhow::Result<()> {
    use aurora_migrator::pgbouncer::companion::{self, CompanionSettings};
    let mut settings = CompanionSettings::new(
        args.pgbouncer_ini,
        args.admin_password,
        secret.unwrap_or_default(),
    );
    settings.listen = args.listen;
    settings.admin_addr = args.admin_addr;
    settings.admin_user = args.admin_user;
    settings.pause_timeout = std::time::Duration::from_secs(args.pause_timeout_s);
    settings.max_hold = std::time::Duration::from_secs(args.max_hold_s);
    settings.tls = args.tls_cert.zip(args.tls_key);
    settings.name = args.name.map(|n| n.trim().to_ascii_lowercase());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        let on_signal = shutdown.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("SIGTERM: stopping");
            on_signal.cancel();
        });
        companion::serve(settings, shutdown).await
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The simulator logs every step of thousands of migrations under injected faults: errors
    // only, by default (the report is the output).
    let level = if matches!(cli.command, Command::Simulate { .. }) {
        "error"
    } else {
        "info"
    };
    // Only the agent exports traces and metrics: the operator commands and the container health
    // check (every 30 s, with the agent's environment) are short and would each start a pipeline
    // and flush it on exit.
    let otlp = match cli.telemetry.otlp() {
        Ok(o) => o.filter(|_| matches!(cli.command, Command::Run { .. })),
        Err(e) => {
            eprintln!("aurora-migrator: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Dropped at the end of `main`, after the runtime: the flush blocks, bounded.
    let telemetry = match telemetry::init(cli.log_format, level, otlp.as_ref()) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("aurora-migrator: {e}");
            return ExitCode::FAILURE;
        }
    };
    match run(cli, telemetry.instruments()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("aurora-migrator: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli, instruments: Instruments) -> anyhow::Result<()> {
    // The companion runs beside PgBouncer: no AWS, policy or database settings apply to it.
    if let Command::PgbouncerCompanion(args) = cli.command {
        return companion(args, cli.aws.webhook_secret);
    }
    let mut policy = cli.policy.policy()?;
    cli.aws.validate()?;
    // Checked at start-up (the bundle read, the agent's group) before anything connects.
    let database = cli.database.settings()?;
    cli.database.apply_to(&mut policy);
    match cli.command {
        Command::Healthcheck { max_age_s } => healthcheck(&cli.aws.heartbeat_file, max_age_s),
        Command::Simulate {
            seeds,
            seed,
            verbose,
            fleet,
            faults,
            database_share,
            route53_share,
            rds_proxy_share,
            pgbouncer_share,
            rds_rate_limit,
            max_cutovers,
            max_preparations,
            agents,
            crashes_only,
        } => {
            anyhow::ensure!((1..=2).contains(&agents), "--agents is 1 or 2");
            anyhow::ensure!(
                rds_rate_limit.is_finite() && rds_rate_limit > 0.0,
                "--rds-rate-limit is a positive number of requests per second"
            );
            anyhow::ensure!(max_cutovers >= 1, "--max-cutovers is at least 1");
            anyhow::ensure!(max_preparations >= 1, "--max-preparations is at least 1");
            anyhow::ensure!(
                (0.0..=1.0).contains(&database_share),
                "--database-share is a share between 0 and 1"
            );
            anyhow::ensure!(
                (0.0..=1.0).contains(&route53_share),
                "--route53-share is a share between 0 and 1"
            );
            anyhow::ensure!(
                (0.0..=1.0).contains(&rds_proxy_share),
                "--rds-proxy-share is a share between 0 and 1"
            );
            anyhow::ensure!(
                (0.0..=1.0).contains(&pgbouncer_share),
                "--pgbouncer-share is a share between 0 and 1"
            );
            let report = sim::run(&SimOptions {
                seeds,
                start_seed: seed,
                verbose,
                fleet,
                fault_intensity: faults,
                database_share,
                route53_share,
                rds_proxy_share,
                pgbouncer_share,
                rds_rate_limit,
                max_cutovers,
                max_preparations,
                agents,
                plan: crashes_only
                    .then(|| sim::FaultPlan::random(sim::FaultIntensity::crashes_only())),
                ..SimOptions::default()
            });
            println!("{report}");
            anyhow::ensure!(
                report.violations.is_empty(),
                "the simulation found violations"
            );
            Ok(())
        }
        command => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            runtime.block_on(with_aws(command, &cli.aws, policy, database, instruments))
        }
    }
}

/// The commands that talk to AWS.
async fn with_aws(
    command: Command,
    args: &AwsArgs,
    policy: Policy,
    database: Option<aurora_migrator::database::DatabaseSettings>,
    instruments: Instruments,
) -> anyhow::Result<()> {
    let settings = |require_all: bool| -> anyhow::Result<AwsSettings> {
        let (queue, topic, table) = if require_all {
            args.require()?
        } else {
            (
                args.queue_url.clone().unwrap_or_default(),
                args.topic_arn.clone().unwrap_or_default(),
                args.table.clone().unwrap_or_default(),
            )
        };
        let mut s = AwsSettings::new(&queue, &topic, &table);
        s.endpoint_url = args.endpoint_url.clone();
        s.region = args.region.clone();
        s.tag_prefix = policy.tag_prefix.clone();
        s.rds_requests_per_second = args.rds_rate_limit;
        s.webhook_url = args.webhook_url.clone();
        s.smoke_test_url = args.smoke_test_url.clone();
        s.webhook_secret = args.webhook_secret.clone();
        s.companion_ca = args.companion_ca()?;
        s.instruments = instruments.clone();
        s.database = database.clone();
        Ok(s)
    };
    // Commands that only touch RDS tags or read the instance need no queue, topic or table.
    let rds_only = async |s: &AwsSettings| -> anyhow::Result<Agent<AwsWorld>> {
        let config = aws::sdk_config(s).await;
        Ok(Agent::new(
            AwsWorld::from_config(s, &config)?,
            policy.clone(),
        ))
    };
    let with_table = async |s: &AwsSettings| -> anyhow::Result<Agent<AwsWorld>> {
        if s.table.is_empty() {
            anyhow::bail!(
                "MIGRATOR_TABLE (--table): is required (set the variable or pass the flag)"
            );
        }
        Ok(Agent::new(AwsWorld::connect(s).await?, policy.clone()))
    };
    let control = |instance: String, control: Control| (instance, control);
    let (instance, control) = match command {
        Command::Run { create_table } => {
            let s = settings(true)?;
            if create_table {
                aws::create_table(&s).await?;
            }
            let agent = with_table(&s)
                .await?
                .with_instruments(instruments.clone())
                .with_lease(
                    aurora_migrator::agent::lease::process_holder(),
                    args.lease()?,
                );
            let home = Home {
                account: aws::sqs::account_from_queue_url(&s.queue_url),
                region: agent.world.region.clone(),
            };
            if home.account.is_none() {
                tracing::warn!(
                    "MIGRATOR_QUEUE_URL names no account (`https://sqs.<region>.amazonaws.com/<account>/<name>`): events are not filtered on account"
                );
            }
            if home.region.is_none() {
                tracing::warn!("no Region configured: events are not filtered on Region");
            }
            let agent = Arc::new(agent.with_home(home.clone()));
            let runtime_settings = RuntimeSettings {
                concurrency: args.concurrency,
                shutdown_budget: std::time::Duration::from_secs(
                    args.shutdown_budget()?.as_secs().max(0) as u64,
                ),
                heartbeat_file: Some(args.heartbeat_file.clone().into()),
                visibility_timeout_s: args.message_visibility_s()?,
                ..RuntimeSettings::default()
            };
            let shutdown = CancellationToken::new();
            let on_signal = shutdown.clone();
            tokio::spawn(async move {
                wait_for_signal().await;
                tracing::info!("SIGTERM: stopping");
                on_signal.cancel();
            });
            tracing::info!(queue = %s.queue_url, table = %s.table, cutover = %policy.cutover, account = home.account.as_deref().unwrap_or("any"), region = home.region.as_deref().unwrap_or("any"), "agent started");
            let summary = runtime::run(agent.clone(), runtime_settings, shutdown).await;
            tracing::info!(?summary, calls = %agent.world.calls.render(), "agent stopped");
            return Ok(());
        }
        Command::Plan {
            instance: Some(instance),
            ..
        } => {
            let agent = rds_only(&settings(false)?).await?;
            print!(
                "{}",
                commands::plan(&agent.world, &policy, &instance).await?
            );
            return Ok(());
        }
        Command::Plan {
            instance: None,
            format,
            out,
            ..
        } => {
            let agent = rds_only(&settings(false)?).await?;
            let rows = commands::plan_all(&agent.world, &policy).await?;
            let report = readiness::render(&rows, format.unwrap_or_default());
            match out {
                Some(path) => std::fs::write(&path, report)
                    .map_err(|e| anyhow::anyhow!("--out {}: {e}", path.display()))?,
                None => print!("{report}"),
            }
            return Ok(());
        }
        Command::Status => {
            let agent = with_table(&settings(false)?).await?;
            print!(
                "{}",
                commands::status(&agent.world, agent.world.clock().now()).await?
            );
            return Ok(());
        }
        Command::Pause | Command::Resume => {
            let paused = matches!(command, Command::Pause);
            let agent = with_table(&settings(false)?).await?;
            println!("{}", commands::set_paused(&agent.world, paused).await?);
            return Ok(());
        }
        Command::Start { instance } => control(instance, Control::Start),
        Command::Approve { instance } => control(instance, Control::Approve),
        Command::Abort { instance } => control(instance, Control::Abort),
        Command::Rollback { instance } => control(instance, Control::Rollback),
        Command::Ack { instance, check } => control(instance, Control::Acknowledge(check)),
        Command::Healthcheck { .. } | Command::Simulate { .. } | Command::PgbouncerCompanion(_) => {
            unreachable!("handled without AWS")
        }
    };
    let agent = rds_only(&settings(false)?).await?;
    println!(
        "{}",
        commands::set_control(&agent.world, &policy, &instance, &control).await?
    );
    Ok(())
}

/// SIGTERM (ECS stopping the task) or Ctrl-C.
async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// The container health check: the agent's loop touches the file; a stale or missing file means
/// the loop is stuck or dead.
fn healthcheck(path: &str, max_age_s: u64) -> anyhow::Result<()> {
    let modified = std::fs::metadata(path)
        .and_then(|m| m.modified())
        .map_err(|e| anyhow::anyhow!("no heartbeat at {path}: {e}"))?;
    let age = modified.elapsed().unwrap_or_default();
    anyhow::ensure!(
        age.as_secs() <= max_age_s,
        "heartbeat at {path} is {}s old (limit {max_age_s}s)",
        age.as_secs()
    );
    Ok(())
}
