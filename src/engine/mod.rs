//! The engine: desired state, observation types, the pure plan, conditions,
//! and the phased reconcile that both shells run.

pub mod conditions;
pub mod desired;
pub mod network;
pub mod plan;
pub mod reconcile;
pub mod volume;

pub use reconcile::{converge_network, tear_down, Engine, EngineSettings, ErrorKind, Outcome, Teardown};
