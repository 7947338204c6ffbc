//! The timeline of each instance's first contact: when the operator first
//! tried it, when SSH first answered there and when Docker's API did.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::SystemTime;

use super::HostTarget;
use crate::timeline::{self, Stage};

/// Instances remembered for the timeline at most; finished ones go first.
const FIRST_CONTACTS_KEPT: usize = 4096;

/// When the operator first tried an instance, and when SSH and Docker
/// first answered there.
#[derive(Clone, Copy, Debug)]
struct FirstContact {
    tried: SystemTime,
    ssh: Option<SystemTime>,
    docker: bool,
}

/// Per instance id: how far its first contact got.
#[derive(Default)]
pub(super) struct FirstContacts(Mutex<HashMap<String, FirstContact>>);

impl FirstContacts {
    /// An SSH connection to the target's instance is being tried (the
    /// first attempt starts its record).
    pub(super) fn tried(&self, target: &HostTarget) {
        self.update(target, |_| {});
    }

    /// SSH answered the target's instance: the first time, the timeline
    /// gets the phase from the first attempt to SSH.
    pub(super) fn ssh_answered(&self, target: &HostTarget) {
        self.update(target, |c| {
            if c.ssh.is_none() {
                c.ssh = Some(SystemTime::now());
                timeline::span(&target.stack, Stage::SshAnswering, target.tier.as_str(), c.tried);
            }
        });
    }

    /// The host's Docker API answered: the first time for an instance, the
    /// timeline gets the phase from SSH to Docker.
    pub(super) fn docker_answered(&self, target: &HostTarget) {
        self.update(target, |c| {
            if let (false, Some(ssh)) = (c.docker, c.ssh) {
                c.docker = true;
                timeline::span(&target.stack, Stage::DockerReady, target.tier.as_str(), ssh);
            }
        });
    }

    /// Updates the first-contact record of the target's instance (made at
    /// the first attempt).
    fn update(&self, target: &HostTarget, update: impl FnOnce(&mut FirstContact)) {
        let mut contacts = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if contacts.len() >= FIRST_CONTACTS_KEPT && !contacts.contains_key(&target.instance_id) {
            contacts.retain(|_, c| !c.docker);
            if contacts.len() >= FIRST_CONTACTS_KEPT {
                contacts.clear();
            }
        }
        let entry = contacts.entry(target.instance_id.clone()).or_insert(FirstContact {
            tried: SystemTime::now(),
            ssh: None,
            docker: false,
        });
        update(entry);
    }
}
