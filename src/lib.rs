//! VotingStack: a Kubernetes operator and a CLI that deploy the three-tier
//! voting app on EC2 and keep it alive.
//!
//! - [`api`]: the VotingStack resource, its conditions and validation.
//! - [`model`]: what cloud, hosts and engine say to each other: observations,
//!   desired containers, actions.
//! - [`engine`]: desired state, the pure plan, conditions, the reconcile.
//! - [`cloud`]: the EC2 side behind the [`cloud::Cloud`] trait.
//! - [`host`]: the SSH/Docker side behind the [`host::Hosts`] trait.
//! - [`controller`] and [`cli`]: the two shells; [`wiring`] connects them to
//!   EC2, SSH and the drift streams.
//!
//! The modules are layered: `api` → `model` → `cloud`, `host` → `engine` →
//! `wiring` → `controller`, `cli`. None imports one above it.
//! [`timeline`] (when each deploy phase started and ended) imports nothing
//! of the crate, and every layer marks its phases in it.

// Lets the test fixtures shared with tests/ name this crate the same way.
extern crate self as votingstack;

pub mod api;
pub mod cloud;
pub mod engine;
pub mod host;
pub mod model;
pub mod rbac;
pub mod timeline;

pub mod cli;
pub mod controller;
pub mod leader;
pub mod liveness;
pub mod manifest;
pub mod metrics;
pub mod telemetry;
pub mod wiring;

#[cfg(test)]
#[path = "../tests/it/fixtures.rs"]
pub(crate) mod fixtures;
