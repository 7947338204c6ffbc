//! The vocabulary the engine and its two adapters share: what observation
//! found ([`observed`]), what a host must run ([`desired`]), the network and
//! its steps ([`network`]), the teardown ([`teardown`]), the database's data
//! volume ([`volume`]) and its snapshots ([`snapshot`]), and the steps a plan holds ([`actions`]).
//!
//! This module depends on [`crate::api`] only. `cloud` and `host` speak it,
//! `engine` decides with it; nothing here calls out.

pub mod actions;
pub mod desired;
pub mod network;
pub mod observed;
pub mod snapshot;
pub mod teardown;
pub mod volume;

pub use actions::{Action, CreateReason, HostAction, InfraAction, InstanceLaunch, TerminateReason, UserData};
pub use desired::{DesiredContainer, Peers, PortMapping};
pub use network::{DesiredKeyPair, NetworkObservation, NetworkStep, ObservedNetwork, Rule, Source};
pub use observed::{
    DockerState, InstanceState, ObservedContainer, ObservedHost, ObservedInfra, ObservedInstance, StateReason,
};
pub use snapshot::{ObservedSnapshot, Slot, SnapshotAction, SnapshotState};
pub use teardown::{TeardownInventory, TeardownStep};
pub use volume::{
    AttachedVolume, AttachmentState, DataVolume, ObservedVolume, VolumeAttachment, VolumeState, VolumeStep,
};
