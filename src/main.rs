//! `aurora-migrator`: the agent and its operator commands.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use aurora_migrator::config::{AwsArgs, PolicyArgs};
use aurora_migrator::telemetry::{self, LogFormat};

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
    /// Print the preflight report for an instance and what would be created. Changes nothing.
    Plan { instance: String },
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
    /// Acknowledge a preflight finding (`<prefix>:ack-<check>=true`).
    Ack { instance: String, check: String },
    /// Hold every migration at the cutover gate.
    Pause,
    /// Lift the fleet-wide pause.
    Resume,
    /// Exit 0 if the running agent touched its heartbeat file recently (container health check).
    Healthcheck {
        /// Oldest acceptable heartbeat, in seconds.
        #[arg(long, default_value_t = 120)]
        max_age_s: u64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init(cli.log_format);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("aurora-migrator: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let policy = cli.policy.policy()?;
    cli.aws.validate()?;
    match cli.command {
        Command::Healthcheck { max_age_s } => healthcheck(&cli.aws.heartbeat_file, max_age_s),
        _ => {
            let _ = policy;
            anyhow::bail!(
                "this build has no AWS adapters yet: `{}` needs them (see the README's status section)",
                command_name(&cli.command)
            )
        }
    }
}

fn command_name(c: &Command) -> &'static str {
    match c {
        Command::Run { .. } => "run",
        Command::Plan { .. } => "plan",
        Command::Status => "status",
        Command::Start { .. } => "start",
        Command::Approve { .. } => "approve",
        Command::Abort { .. } => "abort",
        Command::Rollback { .. } => "rollback",
        Command::Ack { .. } => "ack",
        Command::Pause => "pause",
        Command::Resume => "resume",
        Command::Healthcheck { .. } => "healthcheck",
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
