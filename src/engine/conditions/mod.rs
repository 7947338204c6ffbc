//! Where every condition and the phase are decided. Pure and unit-tested.
//!
//! Each part of the stack has its decisions in a file of its own, from typed
//! observations to a [`Finding`] (status, reason, message):
//! - [`infrastructure`]: EC2 failures, the network, the instances
//!   (`InfrastructureReady`);
//! - [`tiers`]: each host's Docker and containers, host failures, host keys,
//!   the web check (`DatabaseReady`, `BackendReady`, `FrontendReady`);
//! - [`data_volume`]: the database's data volume (in `DatabaseReady`);
//! - [`smoke`]: the smoke test's vote (`SmokeTestPassed`).
//!
//! [`Findings`] gathers what one reconcile found and decides the six
//! conditions and the phase from it (`Ready` aggregates the others).

pub mod data_volume;
pub mod infrastructure;
pub mod smoke;
pub mod tiers;

use std::collections::BTreeMap;

use crate::api::{ConditionType, ConditionUpdate, FieldError, Phase, Reason, Tier};

/// The state of one condition-worthy part of the stack.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub ok: bool,
    pub reason: Reason,
    pub message: String,
}

impl Finding {
    pub fn ok(reason: Reason, message: impl Into<String>) -> Finding {
        Finding { ok: true, reason, message: message.into() }
    }

    pub fn not(reason: Reason, message: impl Into<String>) -> Finding {
        Finding { ok: false, reason, message: message.into() }
    }
}

/// Everything one reconcile found, in the order it was found.
#[derive(Clone, Debug, Default)]
pub struct Findings {
    pub invalid: Vec<FieldError>,
    pub secret_problem: Option<String>,
    pub paused: bool,
    pub deleting: bool,
    pub infrastructure: Option<Finding>,
    pub tiers: BTreeMap<Tier, Finding>,
    pub smoke: Option<Finding>,
}

impl Findings {
    fn tier(&self, tier: Tier) -> Finding {
        self.tiers
            .get(&tier)
            .cloned()
            .unwrap_or_else(|| Finding::not(Reason::WaitingForInfrastructure, format!("the {tier} host is not up yet")))
    }

    fn infra(&self) -> Finding {
        self.infrastructure
            .clone()
            .unwrap_or_else(|| Finding::not(Reason::Provisioning, "infrastructure not observed yet"))
    }

    fn smoke(&self) -> Finding {
        self.smoke.clone().unwrap_or_else(|| Finding::not(Reason::WaitingForTiers, "waits for all three tiers"))
    }

    /// The aggregate Ready finding.
    pub fn ready(&self) -> Finding {
        if !self.invalid.is_empty() {
            let list: Vec<String> = self.invalid.iter().map(ToString::to_string).collect();
            return Finding::not(Reason::InvalidSpec, list.join("; "));
        }
        if let Some(problem) = &self.secret_problem {
            return Finding::not(Reason::SecretMissing, problem.clone());
        }
        if self.deleting {
            return Finding::not(Reason::Deleting, "the stack is being deleted");
        }
        let parts = [
            (ConditionType::InfrastructureReady, self.infra()),
            (ConditionType::DatabaseReady, self.tier(Tier::Database)),
            (ConditionType::BackendReady, self.tier(Tier::Backend)),
            (ConditionType::FrontendReady, self.tier(Tier::Frontend)),
            (ConditionType::SmokeTestPassed, self.smoke()),
        ];
        if let Some((t, f)) = parts.iter().find(|(_, f)| !f.ok && f.reason.is_terminal()) {
            return Finding::not(f.reason, format!("{t}: {}", f.message));
        }
        if self.paused {
            return Finding::not(Reason::Paused, "spec.paused is true: observing only");
        }
        match parts.iter().find(|(_, f)| !f.ok) {
            Some((t, f)) => Finding::not(Reason::Progressing, format!("{t} is False ({}): {}", f.reason, f.message)),
            None => Finding::ok(Reason::AllTiersReady, "all tiers are ready and a vote went through"),
        }
    }

    /// The six conditions. Before a valid spec and key are known only Ready is written.
    pub fn conditions(&self) -> Vec<ConditionUpdate> {
        let ready = self.ready();
        let mut out = Vec::new();
        if self.invalid.is_empty() && self.secret_problem.is_none() {
            let cond = |t, f: Finding| ConditionUpdate::new(t, f.ok, f.reason, f.message);
            out.push(cond(ConditionType::InfrastructureReady, self.infra()));
            for tier in Tier::ALL {
                out.push(cond(ConditionType::for_tier(tier), self.tier(tier)));
            }
            out.push(cond(ConditionType::SmokeTestPassed, self.smoke()));
        }
        out.push(ConditionUpdate::new(ConditionType::Ready, ready.ok, ready.reason, ready.message));
        out
    }

    /// The phase, given the phase before this reconcile.
    pub fn phase(&self, previous: Option<Phase>) -> Phase {
        let ready = self.ready();
        if self.deleting {
            return Phase::Deleting;
        }
        if ready.ok {
            return Phase::Ready;
        }
        if ready.reason.is_terminal() {
            return Phase::Failed;
        }
        if self.paused {
            return Phase::Paused;
        }
        if ready.reason == Reason::SecretMissing {
            return Phase::Pending;
        }
        if matches!(previous, Some(Phase::Ready) | Some(Phase::Degraded)) {
            return Phase::Degraded;
        }
        if self.infra().ok {
            Phase::Deploying
        } else {
            Phase::Provisioning
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_good() -> Findings {
        Findings {
            infrastructure: Some(Finding::ok(Reason::InstancesRunning, "3 running")),
            tiers: Tier::ALL.iter().map(|t| (*t, Finding::ok(Reason::ContainersRunning, "ok"))).collect(),
            smoke: Some(Finding::ok(Reason::VoteCounted, "counted")),
            ..Default::default()
        }
    }

    #[test]
    fn everything_ready_gives_ready_true() {
        let f = all_good();
        assert_eq!(f.ready().reason, Reason::AllTiersReady);
        assert_eq!(f.phase(None), Phase::Ready);
        assert_eq!(f.conditions().len(), 6);
        assert!(f.conditions().iter().all(|c| c.status));
    }

    #[test]
    fn invalid_spec_writes_only_ready_with_every_field() {
        let f = Findings {
            invalid: vec![
                FieldError { path: "spec.a".into(), message: "bad".into() },
                FieldError { path: "spec.b".into(), message: "worse".into() },
            ],
            ..Default::default()
        };
        let conds = f.conditions();
        assert_eq!(conds.len(), 1);
        assert_eq!(conds[0].reason, Reason::InvalidSpec);
        assert_eq!(conds[0].message, "spec.a: bad; spec.b: worse");
        assert_eq!(f.phase(None), Phase::Failed);
    }

    #[test]
    fn a_broken_tier_after_ready_is_degraded_and_named() {
        let mut f = all_good();
        f.tiers.insert(Tier::Backend, Finding::not(Reason::ContainerExited, "worker exited with 1"));
        let ready = f.ready();
        assert_eq!(ready.reason, Reason::Progressing);
        assert_eq!(ready.message, "BackendReady is False (ContainerExited): worker exited with 1");
        assert_eq!(f.phase(Some(Phase::Ready)), Phase::Degraded);
        assert_eq!(f.phase(Some(Phase::Provisioning)), Phase::Deploying);
    }

    #[test]
    fn terminal_problems_win_over_progress_and_pause() {
        let mut f = all_good();
        f.paused = true;
        f.tiers.insert(Tier::Frontend, Finding::not(Reason::HostKeyMismatch, "key changed"));
        assert_eq!(f.ready().reason, Reason::HostKeyMismatch);
        assert_eq!(f.phase(None), Phase::Failed);
    }

    #[test]
    fn nothing_observed_yet_is_provisioning() {
        let f = Findings::default();
        assert_eq!(f.ready().reason, Reason::Progressing);
        assert_eq!(f.phase(None), Phase::Provisioning);
        let paused = Findings { paused: true, ..Default::default() };
        assert_eq!(paused.phase(None), Phase::Paused);
        assert_eq!(paused.ready().reason, Reason::Paused);
    }
}
