//! `DatabaseReady`, `BackendReady`, `FrontendReady`: each host's Docker and
//! containers, what failed on a host, its host key, and the web check.

use crate::api::{Reason, Tier};
use crate::engine::plan::LaunchFailure;
use crate::host::{HostError, HostTarget};
use crate::model::{DesiredContainer, DockerState, ObservedHost, ObservedInstance, StateReason};

use super::Finding;

/// The reason a host failure shows as.
pub fn host_reason(e: &HostError) -> Reason {
    match e {
        HostError::Unreachable { .. } | HostError::AuthRefused { .. } | HostError::Timeout { .. } => {
            Reason::SshUnreachable
        }
        HostError::HostKeyMismatch { .. } => Reason::HostKeyMismatch,
        HostError::ImagePull { .. } => Reason::ImagePullFailed,
        HostError::CommandFailed { .. }
        | HostError::Docker { .. }
        | HostError::Parse { .. }
        | HostError::Busy { .. } => Reason::DeployFailed,
        HostError::Http { .. } => Reason::NotReady,
        HostError::DataVolumeUnusable { .. } => Reason::DataVolumeUnusable,
        HostError::UpdateFailed { .. } => Reason::UpdateFailed,
        HostError::UnsupportedOs { .. } => Reason::UnsupportedOperatingSystem,
    }
}

/// A host that could not be observed or changed.
pub fn host_failed(e: &HostError) -> Finding {
    Finding::not(host_reason(e), e.to_string())
}

#[cfg(test)]
mod unusable_volume_tests {
    use super::*;

    #[test]
    fn a_volume_the_host_will_not_format_is_a_terminal_data_volume_unusable() {
        let e = HostError::DataVolumeUnusable {
            host: "database host 10.0.0.4 (i-1)".into(),
            message: "data volume unusable: vol-1 (/dev/nvme1n1) is not formatted: blkid found no signature, but \
                      4096 of the first 8388608 bytes are not zero"
                .into(),
        };
        let f = host_failed(&e);
        assert_eq!(f.reason, Reason::DataVolumeUnusable);
        assert!(f.reason.is_terminal());
        assert!(f.message.contains("4096 of the first 8388608 bytes are not zero"), "{}", f.message);
    }

    #[test]
    fn a_host_that_cannot_install_docker_is_a_terminal_unsupported_operating_system() {
        let e = HostError::UnsupportedOs {
            host: "backend host 10.0.2.4 (i-2)".into(),
            os: "Amazon Linux 2023.9.20261118 (ID=amzn, VERSION_ID=2023) has no Docker and no apt-get to install it"
                .into(),
        };
        let f = host_failed(&e);
        assert_eq!(f.reason, Reason::UnsupportedOperatingSystem);
        assert!(f.reason.is_terminal());
        assert!(f.message.contains("ID=amzn") && f.message.contains("Debian or Ubuntu AMI"), "{}", f.message);
    }
}

/// The tier's instance exists but cannot be reached yet (no address, not
/// running).
pub fn instance_not_up(inst: &ObservedInstance) -> Finding {
    Finding::not(Reason::WaitingForInfrastructure, format!("instance {} is {}", inst.id, inst.state.as_str()))
}

/// A tier whose instance EC2 terminated at launch: AWS's reason code and
/// message, what to do about it, and that no launch follows until the spec
/// changes.
pub fn launch_failed(f: &LaunchFailure) -> Finding {
    let reason = StateReason { code: f.code.clone(), message: f.message.clone() };
    let said = if f.message.is_empty() {
        f.code.clone()
    } else if f.message.starts_with(&f.code) {
        f.message.clone()
    } else {
        format!("{}: {}", f.code, f.message)
    };
    let hint = reason.hint().map(|h| format!("; {h}")).unwrap_or_default();
    Finding::not(
        Reason::InstanceLaunchFailed,
        format!(
            "EC2 terminated the {} instance {} at launch ({said}){hint}; it is not launched again until the spec \
             changes",
            f.tier, f.instance_id
        ),
    )
}

/// The host answered but its state after acting was not read.
pub fn not_observed() -> Finding {
    Finding::not(Reason::NotReady, "the host was not observed")
}

/// A host-key mismatch of an instance never reached before, younger than
/// [`YOUNG_INSTANCE`](crate::engine::host_keys::YOUNG_INSTANCE), is most
/// likely the previous holder of its address: refused, but transient. Once
/// an instance has been reached (its key pinned), or once it is older, a
/// mismatch stays a mismatch.
pub fn host_key_mismatch(inst: &ObservedInstance, reached: bool, young: bool, mismatch: Finding) -> Finding {
    if reached || !young {
        return mismatch;
    }
    Finding::not(
        Reason::SshUnreachable,
        format!(
            "instance {} is not reachable yet: {} (refused; the address may still belong to its predecessor)",
            inst.id, mismatch.message
        ),
    )
}

/// A tier's finding from its host as observed: Docker, then each desired
/// container (present, running, current config, answering its probe).
pub fn tier_finding(target: &HostTarget, observed: &ObservedHost, desired: &[DesiredContainer]) -> Finding {
    let host = target.describe();
    match &observed.docker {
        DockerState::Missing => {
            return Finding::not(Reason::DockerMissing, format!("Docker is not installed on the {host}"))
        }
        DockerState::Down(why) => {
            return Finding::not(Reason::DockerDown, format!("Docker on the {host} does not answer: {why}"))
        }
        DockerState::Running => {}
    }
    let mut held = None;
    for want in desired {
        if let Some(why) = &want.held {
            held = Some((want, why));
            continue;
        }
        match observed.container(&want.name) {
            None => return Finding::not(Reason::NotReady, format!("container {} is missing on the {host}", want.name)),
            Some(c) if !c.is_running() => {
                let code = c.exit_code.map(|c| format!(" (exit code {c})")).unwrap_or_default();
                return Finding::not(Reason::ContainerExited, format!("container {} is {}{code}", c.name, c.state));
            }
            Some(c) if want.config_hash().is_some() && c.config_hash != want.config_hash() => {
                return Finding::not(Reason::NotReady, format!("container {} runs an outdated config", c.name));
            }
            Some(_) => {}
        }
        if let Some(Err(why)) = observed.probe(&want.name) {
            return Finding::not(Reason::NotReady, format!("{} is not ready: {why}", want.name));
        }
    }
    if let Some((want, why)) = held {
        let still = if observed.container(&want.name).is_some_and(|c| c.is_running()) { "to be " } else { "" };
        return Finding::not(
            Reason::WorkerPaused,
            format!("{} is {still}stopped between votes while {why}; votes wait in redis", want.name),
        );
    }
    let names: Vec<&str> = desired.iter().map(|d| d.name.as_str()).collect();
    Finding::ok(Reason::ContainersRunning, format!("{} running and answering", names.join(" and ")))
}

/// What one web page answered.
#[derive(Debug)]
pub struct WebAnswer {
    pub url: String,
    pub answer: Result<u16, HostError>,
}

/// `FrontendReady` after its containers run: vote and result must both
/// answer HTTP 200. None when they do (the containers' finding stands).
pub fn web_check(answers: &[WebAnswer]) -> Option<Finding> {
    answers.iter().find_map(|a| {
        let problem = match &a.answer {
            Ok(200) => return None,
            Ok(code) => format!("{} answered HTTP {code}", a.url),
            Err(e) => e.to_string(),
        };
        Some(Finding::not(Reason::NotReady, problem))
    })
}

/// The default of a tier nothing was found for.
pub fn not_up_yet(tier: Tier) -> Finding {
    Finding::not(Reason::WaitingForInfrastructure, format!("the {tier} host is not up yet"))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::model::{InstanceState, ObservedContainer};

    pub(crate) fn instance(tier: Tier, state: InstanceState) -> ObservedInstance {
        crate::fixtures::instance(tier, &format!("i-{tier}"), state)
    }

    fn target() -> HostTarget {
        HostTarget { tier: Tier::Backend, ..crate::fixtures::host_target() }
    }

    fn host(docker: DockerState, containers: Vec<ObservedContainer>) -> ObservedHost {
        ObservedHost { docker, containers, probes: Vec::new(), host_key_fingerprint: "SHA256:x".into() }
    }

    fn unreachable() -> HostError {
        HostError::Unreachable { host: "backend host".into(), message: "No route to host".into() }
    }

    #[test]
    fn host_errors_map_to_reasons() {
        assert_eq!(host_reason(&unreachable()), Reason::SshUnreachable);
        let e = HostError::HostKeyMismatch { host: "h".into(), expected: "a".into(), presented: "b".into() };
        assert_eq!(host_reason(&e), Reason::HostKeyMismatch);
        let e = HostError::ImagePull { host: "h".into(), image: "i".into(), message: "m".into() };
        assert_eq!(host_reason(&e), Reason::ImagePullFailed);
        let e = HostError::Busy { host: "h".into(), seconds: 5 };
        assert_eq!(host_failed(&e).reason, Reason::DeployFailed);
        let e = HostError::Http { url: "u".into(), message: "m".into() };
        assert_eq!(host_reason(&e), Reason::NotReady);
    }

    #[test]
    fn docker_missing_or_down_is_said_before_the_containers() {
        let f = tier_finding(&target(), &host(DockerState::Missing, vec![]), &[]);
        assert_eq!(f.reason, Reason::DockerMissing);
        let f = tier_finding(&target(), &host(DockerState::Down("refused".into()), vec![]), &[]);
        assert_eq!(f.reason, Reason::DockerDown);
        assert!(f.message.ends_with("refused"), "{}", f.message);
    }

    #[test]
    fn no_desired_container_and_docker_running_is_ready() {
        let f = tier_finding(&target(), &host(DockerState::Running, vec![]), &[]);
        assert_eq!((f.ok, f.reason), (true, Reason::ContainersRunning));
    }

    #[test]
    fn a_young_unreached_instance_with_another_key_is_not_up_yet() {
        let inst = instance(Tier::Frontend, InstanceState::Running);
        let mismatch = Finding::not(Reason::HostKeyMismatch, "key changed");
        let f = host_key_mismatch(&inst, false, true, mismatch.clone());
        assert_eq!(f.reason, Reason::SshUnreachable);
        assert!(f.message.contains("predecessor"), "{}", f.message);
        assert_eq!(host_key_mismatch(&inst, true, true, mismatch.clone()), mismatch);
        assert_eq!(host_key_mismatch(&inst, false, false, mismatch.clone()), mismatch);
    }

    #[test]
    fn a_held_worker_is_said_once_the_other_containers_run() {
        use crate::engine::desired::desired_containers;
        use crate::engine::worker_hold::hold_worker;
        let mut desired = desired_containers(&crate::fixtures::spec(), Tier::Backend, Default::default());
        hold_worker(&mut desired, Some("postgres does not answer on the database host"));
        let redis = ObservedContainer {
            name: "redis".into(),
            image: "redis".into(),
            state: "running".into(),
            config_hash: desired[0].config_hash(),
            image_digest: None,
            exit_code: None,
        };
        let f = tier_finding(&target(), &host(DockerState::Running, vec![redis.clone()]), &desired);
        assert_eq!(f.reason, Reason::WorkerPaused);
        assert!(!f.ok && !f.reason.is_terminal());
        assert_eq!(
            f.message,
            "worker is stopped between votes while postgres does not answer on the database host; votes wait in redis"
        );
        let worker = ObservedContainer { name: "worker".into(), ..redis.clone() };
        let f = tier_finding(&target(), &host(DockerState::Running, vec![redis.clone(), worker]), &desired);
        assert!(f.message.starts_with("worker is to be stopped between votes"), "{}", f.message);
        let exited = ObservedContainer { state: "exited".into(), ..redis };
        let f = tier_finding(&target(), &host(DockerState::Running, vec![exited]), &desired);
        assert_eq!(f.reason, Reason::ContainerExited, "redis down is said first");
    }

    #[test]
    fn the_web_check_names_the_page_that_failed() {
        let ok = WebAnswer { url: "http://a/".into(), answer: Ok(200) };
        assert_eq!(web_check(std::slice::from_ref(&ok)), None);
        let bad = WebAnswer { url: "http://a:81/".into(), answer: Ok(502) };
        let f = web_check(&[ok, bad]).expect("a finding");
        assert_eq!(f.reason, Reason::NotReady);
        assert_eq!(f.message, "http://a:81/ answered HTTP 502");
        let down = WebAnswer { url: "http://a/".into(), answer: Err(unreachable()) };
        assert!(web_check(&[down]).is_some_and(|f| f.message.contains("No route")));
    }

    #[test]
    fn a_launch_failure_gives_aws_reason_and_the_way_out() {
        let f = LaunchFailure {
            tier: Tier::Database,
            instance_id: "i-0abc".into(),
            code: "Client.InternalError".into(),
            message: "Client.InternalError: Client error on launch".into(),
        };
        let finding = launch_failed(&f);
        assert_eq!(finding.reason, Reason::InstanceLaunchFailed);
        assert!(!finding.ok && finding.reason.is_terminal());
        assert!(
            finding.message.starts_with(
                "EC2 terminated the database instance i-0abc at launch (Client.InternalError: Client error on launch); \
                 the account's default EBS encryption key"
            ),
            "{}",
            finding.message
        );
        assert!(finding.message.contains("spec.instances.kmsKeyId"), "{}", finding.message);
        assert!(finding.message.ends_with("not launched again until the spec changes"), "{}", finding.message);
        let volumes = LaunchFailure { code: "Client.VolumeLimitExceeded".into(), message: "limit".into(), ..f };
        let finding = launch_failed(&volumes);
        assert!(
            finding.message.contains("(Client.VolumeLimitExceeded: limit); the account's EBS volume"),
            "{}",
            finding.message
        );
    }

    #[test]
    fn an_instance_without_an_address_waits() {
        let f = instance_not_up(&instance(Tier::Database, InstanceState::Stopping));
        assert_eq!(f.reason, Reason::WaitingForInfrastructure);
        assert_eq!(f.message, "instance i-database is stopping");
        assert_eq!(not_observed().reason, Reason::NotReady);
        assert_eq!(not_up_yet(Tier::Backend).message, "the backend host is not up yet");
    }
}
