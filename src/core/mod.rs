//! The pure core: the migration record, what is observed, what is decided, and the rules.
//!
//! Nothing here is async, reads a clock, draws a random number or touches the network; time comes
//! in as an argument. That is what lets the simulator run thousands of migrations in virtual time
//! and the property tests explore every order of events.

pub mod action;
pub mod admission;
pub mod database;
pub mod invariants;
pub mod machine;
pub mod messages;
pub mod migration;
pub mod naming;
pub mod needs;
pub mod notification;
pub mod observation;
pub mod parameters;
pub mod phase;
pub mod policy;
pub mod preflight;
pub mod readiness;
pub mod router;
pub mod tags;

pub use action::{Action, ActionError, ActionKey, ActionResult, ErrorKind};
pub use machine::{Decision, step};
pub use migration::{Migration, MigrationId};
pub use observation::{Observation, Observed};
pub use phase::Phase;
pub use policy::Policy;
