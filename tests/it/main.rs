//! The integration tests, one binary with one module per area.

mod argocd;
mod cli;
mod crd;
mod deploy;
mod diagrams;
mod ec2;
mod engine;
mod fakes;
mod moto;
