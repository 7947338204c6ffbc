//! The integration tests, one binary with one module per area.

mod argocd;
mod deploy;
mod diagrams;
