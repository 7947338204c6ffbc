//! The integration tests, one binary with one module per area.

mod apiserver;
mod argocd;
mod backups;
mod cli;
mod controller;
mod crd;
mod deploy;
mod diagrams;
mod e2e;
mod ec2;
mod ec2_images;
mod ec2_installation;
mod ec2_owner;
mod engine;
mod fakes;
mod fixtures;
mod host;
mod inventory;
mod kube;
mod moto;
mod scripted;
mod world;
