//! The engine: desired state, observation types, the pure plan, conditions,
//! and the phased reconcile that both shells run.

pub mod conditions;
pub mod desired;
pub mod network;
pub mod plan;
pub mod reconcile;

pub use reconcile::{Engine, EngineSettings, ErrorKind, Outcome, Teardown};
