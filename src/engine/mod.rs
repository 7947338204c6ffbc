//! The engine: desired state, the pure plan, every condition's decision,
//! and the phased reconcile that both shells (controller and CLI) run.
//!
//! - [`reconcile`]: the phases in order, and [`Engine`] itself;
//! - [`infra`], [`volume_converge`], [`backups`], [`hosts`], [`smoke`]: one
//!   phase each ([`backups`] also holds its pure plan);
//! - [`plan`], [`network`], [`volume`], [`desired`]: pure plans and desired
//!   state; [`ami`]: the AMI each tier launches from (the resolved Ubuntu
//!   image when the spec names none) and the refusal of unusable images;
//! - [`conditions`]: where every condition's status, reason and message is
//!   decided;
//! - [`status`], [`host_keys`], [`addressing`]: what is recorded in status,
//!   which host key each host must present, and how each host is reached;
//! - [`worker_hold`]: when the worker is stopped between votes (postgres
//!   not answering or about to move);
//! - [`failure`]: why a reconcile failed (metrics and backoff);
//! - [`stop`]: how a running reconcile is stopped at a step boundary.

pub mod addressing;
pub mod ami;
pub mod backups;
pub mod conditions;
pub mod desired;
pub mod failure;
pub mod host_keys;
mod hosts;
pub mod infra;
pub mod network;
pub mod plan;
pub mod proxy;
pub mod reconcile;
mod smoke;
pub mod status;
pub mod stop;
pub mod volume;
mod volume_converge;
pub mod worker_hold;

pub use failure::Failure;
#[cfg(any(test, feature = "test-support"))]
pub use infra::converge_network;
pub use infra::{desired_key_pair, tear_down};
pub use reconcile::{Engine, EngineSettings, Outcome, Teardown};
pub use smoke::smoke_voter_id;
pub use status::{deleting_status, status_content};
pub use stop::{Stop, Stopped};
