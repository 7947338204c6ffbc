//! When each phase of a deploy started and ended, per stack: the network,
//! each instance running, each host answering SSH, Docker answering, each
//! image pulled, each container started, each readiness check passing, and
//! the smoke test.
//!
//! The host and engine code mark phases as they finish ([`span`]). Every
//! mark goes to the sink the controller installs (a histogram per phase,
//! see `metrics`); marks of the stacks someone asked for ([`record`], the
//! CLI's `apply --wait --timeline`) are also kept until [`take`]n.
//! Wall-clock times, so a phase may start in one reconcile pass (an
//! instance's launch) and end in a later one.
//!
//! This module depends on nothing else in the crate: every layer may use it.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Mutex, OnceLock};
use std::time::SystemTime;

/// Marks kept per recorded stack at most (older ones are dropped).
const MAX_MARKS: usize = 512;

/// A stage of a deploy (a phase, in the CLI's words).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Stage {
    /// The VPC, subnets, gateways, groups and key pair.
    Network,
    /// RunInstances (EC2's launch time) until the instance is seen running.
    InstanceRunning,
    /// The first connection attempt to a host until SSH logs in.
    SshAnswering,
    /// SSH logged in until the Docker engine answers its API.
    DockerReady,
    /// One image pulled onto a host.
    ImagePulled,
    /// One container created and started.
    ContainerStarted,
    /// One container started until its readiness check passes.
    ReadinessPassed,
    /// A vote cast until postgres holds it.
    SmokeTest,
}

impl Stage {
    pub const ALL: [Stage; 8] = [
        Stage::Network,
        Stage::InstanceRunning,
        Stage::SshAnswering,
        Stage::DockerReady,
        Stage::ImagePulled,
        Stage::ContainerStarted,
        Stage::ReadinessPassed,
        Stage::SmokeTest,
    ];

    /// The name metrics and the CLI use.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Network => "network",
            Stage::InstanceRunning => "instance_running",
            Stage::SshAnswering => "ssh_answering",
            Stage::DockerReady => "docker_ready",
            Stage::ImagePulled => "image_pulled",
            Stage::ContainerStarted => "container_started",
            Stage::ReadinessPassed => "readiness_passed",
            Stage::SmokeTest => "smoke_test",
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One finished phase of one stack.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mark {
    pub phase: Stage,
    /// What the phase was about: a tier, `tier/image`, `tier/container`.
    pub subject: String,
    pub start: SystemTime,
    pub end: SystemTime,
}

impl Mark {
    pub fn seconds(&self) -> f64 {
        self.end.duration_since(self.start).map(|d| d.as_secs_f64()).unwrap_or(0.0)
    }
}

type Sink = Box<dyn Fn(Stage, f64) + Send + Sync>;

static SINK: OnceLock<Sink> = OnceLock::new();
static RECORDED: Mutex<Option<HashMap<String, Vec<Mark>>>> = Mutex::new(None);

/// Sends every mark's duration to `sink` (once per process; later calls are
/// ignored).
pub fn set_sink(sink: impl Fn(Stage, f64) + Send + Sync + 'static) {
    let _ = SINK.set(Box::new(sink));
}

/// Keeps the marks of `stack` (`namespace/name`) until [`take`].
pub fn record(stack: &str) {
    let mut recorded = RECORDED.lock().unwrap_or_else(|p| p.into_inner());
    recorded.get_or_insert_with(HashMap::new).entry(stack.to_string()).or_default();
}

/// The marks kept for `stack`, oldest start first; stops keeping them.
pub fn take(stack: &str) -> Vec<Mark> {
    let mut recorded = RECORDED.lock().unwrap_or_else(|p| p.into_inner());
    let mut marks = recorded.as_mut().and_then(|r| r.remove(stack)).unwrap_or_default();
    marks.sort_by_key(|m| (m.start, m.end, m.phase));
    marks
}

/// A phase of `stack` about `subject` ran from `start` until now.
pub fn span(stack: &str, phase: Stage, subject: impl Into<String>, start: SystemTime) {
    let mark = Mark { phase, subject: subject.into(), start, end: SystemTime::now().max(start) };
    if let Some(sink) = SINK.get() {
        sink(phase, mark.seconds());
    }
    let mut recorded = RECORDED.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(marks) = recorded.as_mut().and_then(|r| r.get_mut(stack)) {
        if marks.len() >= MAX_MARKS {
            marks.remove(0);
        }
        marks.push(mark);
    }
}

/// The marks as a table, times in seconds since `since`.
pub fn render(marks: &[Mark], since: SystemTime) -> String {
    let at = |t: SystemTime| t.duration_since(since).map(|d| d.as_secs_f64()).unwrap_or(0.0);
    let mut out = String::new();
    for m in marks {
        out.push_str(&format!(
            "  {:<18} {:<24} {:>7.2} → {:>7.2}  ({:.2} s)\n",
            m.phase.as_str(),
            m.subject,
            at(m.start),
            at(m.end),
            m.seconds()
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn only_recorded_stacks_keep_their_marks_until_taken() {
        let start = SystemTime::now() - Duration::from_secs(2);
        span("ns/not-recorded", Stage::Network, "", start);
        assert!(take("ns/not-recorded").is_empty());

        record("ns/recorded");
        span("ns/recorded", Stage::ImagePulled, "backend/redis", start + Duration::from_secs(1));
        span("ns/recorded", Stage::Network, "", start);
        let marks = take("ns/recorded");
        assert_eq!(marks.iter().map(|m| m.phase).collect::<Vec<_>>(), [Stage::Network, Stage::ImagePulled]);
        assert!(marks[0].seconds() >= 2.0 && marks[1].seconds() >= 1.0, "{marks:?}");
        assert!(take("ns/recorded").is_empty(), "taken once");
        let table = render(&marks, start);
        assert!(table.contains("image_pulled") && table.contains("backend/redis"), "{table}");
    }

    #[test]
    fn a_start_in_the_future_counts_as_zero() {
        record("ns/future");
        span("ns/future", Stage::SmokeTest, "", SystemTime::now() + Duration::from_secs(60));
        assert_eq!(take("ns/future")[0].seconds(), 0.0);
    }
}
