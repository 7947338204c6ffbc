//! VotingStack: a Kubernetes operator and a CLI that deploy the three-tier
//! voting app on EC2 and keep it alive.
//!
//! - [`api`]: the VotingStack resource, its conditions and validation.
//! - [`engine`]: desired state, the pure plan, conditions, the reconcile.
//! - [`cloud`]: the EC2 side behind the [`cloud::Cloud`] trait.
//! - [`host`]: the SSH/Docker side behind the [`host::Hosts`] trait.
//! - [`controller`] and [`cli`]: the two shells.

pub mod api;
pub mod cloud;
pub mod engine;
pub mod host;

pub mod cli;
pub mod controller;
pub mod leader;
pub mod manifest;
pub mod metrics;
pub mod shell;
pub mod telemetry;
