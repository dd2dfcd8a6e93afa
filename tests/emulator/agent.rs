//! The agent under test: in process (the runtime on a task, with the harness's short policy) or
//! as the real binary in a child process configured through its environment.

use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::Duration;

use aurora_migrator::agent::Agent;
use aurora_migrator::aws::{AwsSettings, AwsWorld, CallCounter};
use aurora_migrator::core::policy::{CutoverPolicy, Policy};
use aurora_migrator::runtime::{self, RunSummary, RuntimeSettings};
use jiff::SignedDuration;
use tokio_util::sync::CancellationToken;

use super::env::{Env, REGION};

pub fn policy() -> Policy {
    let s = SignedDuration::from_secs;
    Policy {
        cutover: CutoverPolicy::Automatic,
        lag_sustain: s(2),
        soak: s(3),
        retention: s(2),
        slow_poll: s(3),
        // 2 s, not 1: the driver truncates a wake-up's delay to whole seconds (1.99 s → 1 s).
        fast_poll: s(2),
        write_unavailability_budget: s(240),
        reissue_after: s(20),
        cutover_reissue_after: s(10),
        ..Policy::default()
    }
}

pub fn runtime_settings() -> RuntimeSettings {
    RuntimeSettings {
        concurrency: 8,
        wait_s: 1,
        batch: 10,
        visibility_timeout_s: 6,
        shutdown_budget: Duration::from_secs(10),
        heartbeat_interval: Duration::from_secs(5),
        heartbeat_file: None,
    }
}

/// The agent's runtime on a task, stopped by the returned token.
pub fn spawn_agent(
    agent: Arc<Agent<AwsWorld>>,
    settings: RuntimeSettings,
) -> (CancellationToken, tokio::task::JoinHandle<RunSummary>) {
    let stop = CancellationToken::new();
    let handle = tokio::spawn(runtime::run(agent, settings, stop.clone()));
    (stop, handle)
}

/// An in-process agent's runtime on a task, and the agent's AWS call counters.
pub struct RunningAgent {
    pub stop: CancellationToken,
    pub run: tokio::task::JoinHandle<RunSummary>,
    pub calls: CallCounter,
}

impl RunningAgent {
    /// Stops the runtime (as SIGTERM would) and waits for its summary.
    pub async fn finish(self) -> RunSummary {
        self.stop.cancel();
        self.run.await.unwrap()
    }
}

impl Env {
    pub async fn world(&self) -> AwsWorld {
        AwsWorld::connect(&self.settings).await.unwrap()
    }

    pub async fn agent(&self) -> Arc<Agent<AwsWorld>> {
        Arc::new(Agent::new(self.world().await, policy()))
    }

    /// The agent on the harness's policy and runtime settings, running.
    pub async fn run_agent(&self) -> RunningAgent {
        self.run_agent_with(&self.settings, policy(), runtime_settings())
            .await
    }

    /// The agent on these AWS settings, policy and runtime settings, running.
    pub async fn run_agent_with(
        &self,
        aws: &AwsSettings,
        policy: Policy,
        settings: RuntimeSettings,
    ) -> RunningAgent {
        let world = AwsWorld::connect(aws).await.unwrap();
        let calls = world.calls.clone();
        let (stop, run) = spawn_agent(Arc::new(Agent::new(world, policy)), settings);
        RunningAgent { stop, run, calls }
    }
}

/// The real agent binary (`aurora-migrator run`) as a child process, configured through its
/// environment as in production, with the harness's short policy. Killed (SIGKILL) on drop.
pub struct AgentProcess {
    child: Child,
    pub log: PathBuf,
}

impl AgentProcess {
    pub fn start(env: &Env, name: &str) -> AgentProcess {
        AgentProcess::start_with(env, name, &[])
    }

    /// With more environment variables (they win over the harness's).
    pub fn start_with(env: &Env, name: &str, extra: &[(&str, &str)]) -> AgentProcess {
        let log = std::env::temp_dir().join(format!(
            "aurora-migrator-{}-{name}.log",
            env.shim.endpoint.rsplit(':').next().unwrap_or("0")
        ));
        let out = std::fs::File::create(&log).unwrap();
        let child = AgentProcess::command(env, "run")
            .env("MIGRATOR_QUEUE_URL", &env.queue_url)
            .env("MIGRATOR_TOPIC_ARN", &env.settings.topic_arn)
            .env("MIGRATOR_CUTOVER", "automatic")
            .env("MIGRATOR_LAG_SUSTAIN", "2s")
            .env("MIGRATOR_SOAK", "3s")
            .env("MIGRATOR_RETENTION", "2s")
            .env("MIGRATOR_SLOW_POLL", "2s")
            .env("MIGRATOR_FAST_POLL", "1s")
            .env("MIGRATOR_METRIC_PERIOD", "1s")
            .env("MIGRATOR_WRITE_BUDGET", "4m")
            .env("MIGRATOR_RDS_RATE_LIMIT", "20")
            .env("MIGRATOR_MESSAGE_VISIBILITY", "6s")
            .env(
                "MIGRATOR_HEARTBEAT_FILE",
                std::env::temp_dir().join(format!("aurora-migrator-{name}.heartbeat")),
            )
            .env("MIGRATOR_LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .envs(extra.iter().copied())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("start the agent binary");
        AgentProcess { child, log }
    }

    /// The binary's `command`, with only the emulator's endpoint, credentials and table in its
    /// environment (nothing of the developer's AWS settings leaks in).
    fn command(env: &Env, command: &str) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_aurora-migrator"));
        c.arg(command)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("AWS_ENDPOINT_URL", &env.shim.endpoint)
            .env("AWS_REGION", REGION)
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("MIGRATOR_TABLE", &env.settings.table);
        c
    }

    /// SIGKILL: no shutdown path runs, in-flight work and messages are simply abandoned.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, then the exit status (the agent's graceful stop).
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        self.child.wait().unwrap()
    }

    /// The binary's `plan` command with these arguments against the emulator (no queue, topic
    /// or table needed), as an operator runs it: its whole output, exit status included.
    pub fn plan(env: &Env, args: &[&str]) -> std::process::Output {
        AgentProcess::operator(env, "plan", args)
    }

    /// The binary's operator `command` (`plan`, `ack`, `start`, …) with these arguments
    /// against the emulator, as an operator runs it: its whole output, exit status included.
    pub fn operator(env: &Env, command: &str, args: &[&str]) -> std::process::Output {
        AgentProcess::command(env, command)
            .args(args)
            .env("MIGRATOR_LOG_FORMAT", "text")
            .env("RUST_LOG", "error")
            .output()
            .unwrap()
    }

    /// The binary's `status` command against the same table.
    pub fn status(env: &Env) -> String {
        let out = AgentProcess::command(env, "status")
            .env("MIGRATOR_LOG_FORMAT", "text")
            .env("RUST_LOG", "error")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "status failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
