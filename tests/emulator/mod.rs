//! The emulator tests: the harness (moto behind the project's shim, the AWS resources the agent
//! needs, the agent in process or as its binary, the CloudWatch player, the webhook) and the
//! tests, one file per subject.
#![allow(dead_code)]

mod agent;
mod cloudwatch;
mod env;
mod shim;
mod state;
mod webhook;

pub use agent::*;
pub use cloudwatch::*;
pub use env::*;
pub use shim::*;
pub use state::*;
pub use webhook::*;

mod cdc_and_kms;
mod commands;
mod crashes;
mod database;
mod faults;
mod fleet;
mod happy_path;
mod messages;
mod plan_all;
mod rds_proxy;
mod routers;
mod telemetry;
mod two_agents;
