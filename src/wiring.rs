//! Wiring shared by the two shells: which Cloud and Hosts the engine runs
//! on, and the host event streams that wake a reconcile when a container dies.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::mpsc;

use crate::api::{Tier, VotingStackSpec};
use crate::cloud::ec2::Ec2Cloud;
use crate::cloud::Installation;
use crate::engine::{Engine, EngineSettings};
use crate::host::events::{DriftEvent, DriftWatcher};
use crate::host::{HostTarget, SshHosts, SshKey, SshOptions};

/// Hands out the engine for a stack: stacks in different regions (or with
/// different endpoints) get different EC2 clients.
#[async_trait]
pub trait Engines: Send + Sync {
    async fn for_spec(&self, spec: &VotingStackSpec) -> Engine;
}

/// One fixed engine for every stack (tests, single-region setups).
#[async_trait]
impl Engines for Engine {
    async fn for_spec(&self, _spec: &VotingStackSpec) -> Engine {
        self.clone()
    }
}

/// EC2 clients per region and endpoint, sharing one SSH session pool. All
/// stacks of a region share its client, and with it one look-up of the
/// region's inventory per window (see `cloud::ec2::inventory`).
pub struct RegionalEngines {
    hosts: Arc<SshHosts>,
    settings: EngineSettings,
    inventory_window: Duration,
    installation: Installation,
    cache: tokio::sync::Mutex<HashMap<(String, Option<String>), Engine>>,
}

impl RegionalEngines {
    pub fn new(hosts: Arc<SshHosts>, settings: EngineSettings) -> RegionalEngines {
        RegionalEngines {
            hosts,
            settings,
            inventory_window: Duration::ZERO,
            installation: Installation::default(),
            cache: Default::default(),
        }
    }

    /// The installation every EC2 client tags resources with and keeps to.
    pub fn with_installation(mut self, installation: Installation) -> RegionalEngines {
        self.installation = installation;
        self
    }

    /// How long one look-up of a region's inventory serves later observes.
    pub fn with_inventory_window(mut self, window: Duration) -> RegionalEngines {
        self.inventory_window = window;
        self
    }
}

#[async_trait]
impl Engines for RegionalEngines {
    async fn for_spec(&self, spec: &VotingStackSpec) -> Engine {
        let key = (spec.aws.region.clone(), spec.aws.endpoint.clone());
        let mut cache = self.cache.lock().await;
        if let Some(engine) = cache.get(&key) {
            return engine.clone();
        }
        let cloud = Ec2Cloud::from_env(&key.0, key.1.as_deref())
            .await
            .with_inventory_window(self.inventory_window)
            .with_installation(self.installation.clone());
        let engine = Engine::new(Arc::new(cloud), self.hosts.clone(), self.settings.clone());
        cache.insert(key, engine.clone());
        engine
    }
}

/// The SSH side every shell uses.
pub fn ssh_hosts() -> Arc<SshHosts> {
    Arc::new(SshHosts::new(SshOptions::default()))
}

/// The engine for one stack's spec (the CLI): EC2 in its region, for the
/// installation, SSH to its hosts.
pub async fn engine_for(
    spec: &VotingStackSpec,
    installation: &Installation,
    hosts: Arc<SshHosts>,
    settings: EngineSettings,
) -> Engine {
    Engine::new(Arc::new(cloud_for(spec, installation).await), hosts, settings)
}

/// EC2 in the spec's region (or endpoint), for the installation.
async fn cloud_for(spec: &VotingStackSpec, installation: &Installation) -> Ec2Cloud {
    Ec2Cloud::from_env(&spec.aws.region, spec.aws.endpoint.as_deref()).await.with_installation(installation.clone())
}

/// The engine `plan` runs on: [`engine_for`]'s, except that it leaves
/// resources an older operator created without the installation tag
/// untagged (they still count as the stack's), so a plan changes nothing.
pub async fn planner_for(
    spec: &VotingStackSpec,
    installation: &Installation,
    hosts: Arc<SshHosts>,
    settings: EngineSettings,
) -> Engine {
    Engine::new(Arc::new(cloud_for(spec, installation).await.with_adoption(false)), hosts, settings)
}

/// Keeps one `docker events` stream per stack and tier, following instance
/// replacements, and forwards what they see.
pub struct DriftHub {
    hosts: Arc<SshHosts>,
    events: mpsc::Sender<DriftEvent>,
    /// By stack and tier: the target a stream was started for, and the stream.
    watchers: Mutex<HashMap<(String, Tier), (HostTarget, DriftWatcher)>>,
}

impl DriftHub {
    pub fn new(hosts: Arc<SshHosts>, events: mpsc::Sender<DriftEvent>) -> DriftHub {
        DriftHub { hosts, events, watchers: Mutex::new(HashMap::new()) }
    }

    /// Makes sure a stream runs for each of `stack`'s targets (restarting
    /// one whose instance, address or pinned host key changed), and stops
    /// the stack's streams of tiers without a target: a terminated
    /// instance's stream would otherwise retry at an address a replacement
    /// may take. Cheap when nothing changed.
    pub fn ensure(&self, stack: &str, targets: &[HostTarget], key: &SshKey) {
        let mut watchers = self.watchers.lock().unwrap_or_else(|p| p.into_inner());
        watchers.retain(|(s, tier), _| s != stack || targets.iter().any(|t| t.tier == *tier));
        for target in targets.iter().filter(|t| t.stack == stack) {
            let slot = (target.stack.clone(), target.tier);
            let current = watchers.get(&slot).is_some_and(|(t, w)| t == target && !w.is_finished());
            if !current {
                let watcher = DriftWatcher::spawn(self.hosts.clone(), target.clone(), key.clone(), self.events.clone());
                watchers.insert(slot, (target.clone(), watcher));
            }
        }
    }

    /// Stops the streams of a stack (deleted or destroyed).
    pub fn forget(&self, stack: &str) {
        let mut watchers = self.watchers.lock().unwrap_or_else(|p| p.into_inner());
        watchers.retain(|(s, _), _| s != stack);
    }

    /// How many streams run.
    pub fn len(&self) -> usize {
        self.watchers.lock().map(|w| w.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
