//! The shell side of the host: the scripts the operator runs on a host, how
//! they are launched over one SSH exec, and how their output is read.
//!
//! Every script starts with `common.sh` (finds the Docker CLI, with
//! `sudo -n` when the login user is not in the docker group). Scripts travel
//! on the exec's stdin into a mode 0600 temporary file, so neither the script
//! nor anything it carries (container env) shows in process arguments.
//! Every value that reaches a shell goes through [`quote`].

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use serde::Deserialize;

use crate::api::{PullPolicy, Tier, CONFIG_HASH_LABEL, STACK_LABEL, TIER_LABEL};
use crate::engine::desired::{DesiredContainer, HOST_NETWORK};
use crate::engine::observed::{DockerState, ObservedContainer, ObservedHost};
use crate::engine::plan::Action;

use super::HostError;

const COMMON: &str = include_str!("common.sh");
const OBSERVE: &str = include_str!("observe.sh");
const APPLY_FUNCTIONS: &str = include_str!("apply.sh");
const EVENTS: &str = include_str!("events.sh");

/// Quotes `s` as one POSIX shell word.
pub fn quote(s: &str) -> String {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./:=@%+,".contains(&b)) {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        if c == '\'' {
            out.push_str("'\\''");
        } else {
            out.push(c);
        }
    }
    out.push('\'');
    out
}

/// A script to run on a host with its positional arguments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Script {
    /// What the script is for, in messages (`observe`, `apply`, ...).
    pub what: &'static str,
    /// The script text (sent on stdin; may carry container env).
    pub body: String,
    /// Positional arguments ($1, $2, ...): visible in `ps`, never secret.
    pub args: Vec<String>,
    /// Steps the script announces with `step:N` lines, by N.
    pub steps: Vec<Step>,
}

impl Script {
    /// The command line of the exec: reads the script from stdin into a
    /// private temporary file, runs it with the arguments, removes it.
    pub fn command(&self) -> String {
        let launcher = "umask 077; f=$(mktemp \"${TMPDIR:-/tmp}/votingstack.XXXXXX\") || exit 125; \
                        if ! cat >\"$f\"; then rm -f \"$f\"; exit 125; fi; \
                        sh \"$f\" \"$@\" </dev/null; rc=$?; rm -f \"$f\"; exit $rc";
        let mut cmd = format!("sh -c {} votingstack", quote(launcher));
        for a in &self.args {
            cmd.push(' ');
            cmd.push_str(&quote(a));
        }
        cmd
    }

    /// The command line of a long-lived exec whose stdin stays the channel:
    /// the script is passed inline (it must carry no secret).
    pub fn inline_command(&self) -> String {
        let mut cmd = format!("sh -c {} votingstack", quote(&self.body));
        for a in &self.args {
            cmd.push(' ');
            cmd.push_str(&quote(a));
        }
        cmd
    }

    /// Seconds the whole script may run: the per-command timeout for each
    /// announced step (a batch of pulls is several commands).
    pub fn timeout_secs(&self, per_command: u32) -> u32 {
        let steps = u32::try_from(self.steps.len().max(1)).unwrap_or(u32::MAX);
        per_command.max(1).saturating_mul(steps)
    }
}

/// One announced step of a script.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    pub what: String,
    /// Set for pulls: a failure is an image pull failure.
    pub image: Option<String>,
}

fn with_common(body: &str) -> String {
    format!("{COMMON}\n{body}")
}

// ------------------------------------------------------------ observe ----

/// The one-exec observation of a host.
pub fn observe_script(stack: &str, tier: Tier) -> Script {
    Script {
        what: "observe",
        body: with_common(OBSERVE),
        args: vec![stack.to_string(), tier.as_str().to_string()],
        steps: Vec::new(),
    }
}

#[derive(Deserialize)]
struct RawObservation {
    #[serde(default)]
    instance: String,
    docker: String,
    #[serde(default)]
    docker_why: String,
    #[serde(default)]
    containers: Vec<RawContainer>,
    #[serde(default)]
    list_error: String,
    #[serde(default)]
    probes: Vec<RawProbe>,
}

#[derive(Deserialize)]
struct RawContainer {
    name: String,
    image: String,
    state: String,
    #[serde(default)]
    exit_code: Option<i64>,
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
struct RawProbe {
    name: String,
    ok: bool,
    #[serde(default)]
    detail: String,
}

/// Why an observation could not be used.
#[derive(Debug, PartialEq, Eq)]
pub enum ObserveProblem {
    /// The output is not the expected JSON document.
    Unreadable(String),
    /// Docker answered but listing the stack's containers failed.
    ListFailed(String),
    /// Another instance answers at the address (the one named here).
    OtherInstance(String),
}

/// Reads the observe script's output. `stack` filters containers once more
/// (the label must match exactly); a host that names itself as another
/// instance than `instance_id` is refused.
pub fn parse_observation(
    stdout: &[u8],
    stack: &str,
    instance_id: &str,
    fingerprint: &str,
) -> Result<ObservedHost, ObserveProblem> {
    let text = String::from_utf8_lossy(stdout);
    // login scripts may print before the script does: the document is the last line
    let line = text.lines().rev().map(str::trim).find(|l| !l.is_empty()).unwrap_or("");
    let raw: RawObservation = serde_json::from_str(line).map_err(|e| {
        let shown: String = line.chars().take(200).collect();
        ObserveProblem::Unreadable(format!("{e} in {shown:?}"))
    })?;
    if !raw.instance.is_empty() && raw.instance != instance_id {
        return Err(ObserveProblem::OtherInstance(raw.instance));
    }
    let docker = match raw.docker.as_str() {
        "running" => DockerState::Running,
        "missing" => DockerState::Missing,
        "down" => DockerState::Down(if raw.docker_why.is_empty() {
            "the Docker engine does not answer".to_string()
        } else {
            raw.docker_why
        }),
        other => return Err(ObserveProblem::Unreadable(format!("unknown docker state {other:?}"))),
    };
    if !raw.list_error.is_empty() {
        return Err(ObserveProblem::ListFailed(raw.list_error));
    }
    let mut containers: Vec<ObservedContainer> = raw
        .containers
        .into_iter()
        .filter(|c| c.labels.as_ref().and_then(|l| l.get(STACK_LABEL)).is_some_and(|s| s == stack))
        .map(|c| {
            let running = c.state == "running" || c.state == "restarting";
            ObservedContainer {
                name: c.name.trim_start_matches('/').to_string(),
                image: c.image,
                config_hash: c.labels.as_ref().and_then(|l| l.get(CONFIG_HASH_LABEL)).cloned(),
                exit_code: if running { None } else { c.exit_code },
                state: c.state,
            }
        })
        .collect();
    containers.sort_by(|a, b| a.name.cmp(&b.name));
    let probes = raw
        .probes
        .into_iter()
        .map(|p| {
            let result = if p.ok {
                Ok(())
            } else if p.detail.trim().is_empty() {
                Err("no answer".to_string())
            } else {
                Err(p.detail.trim().to_string())
            };
            (p.name, result)
        })
        .collect();
    Ok(ObservedHost { docker, containers, probes, host_key_fingerprint: fingerprint.to_string() })
}

// -------------------------------------------------------------- apply ----

/// Why a batch of actions cannot be turned into a script.
#[derive(Debug, PartialEq, Eq)]
pub struct UnsafeValue(pub String);

fn check_env(c: &DesiredContainer) -> Result<(), UnsafeValue> {
    for (k, v) in &c.env {
        let key_ok = !k.is_empty()
            && !k.starts_with(|ch: char| ch.is_ascii_digit())
            && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !key_ok {
            return Err(UnsafeValue(format!("container {}: env name {k:?} is not a valid variable name", c.name)));
        }
        if v.contains(['\n', '\r', '\0']) {
            return Err(UnsafeValue(format!("container {}: env {k} holds a line break", c.name)));
        }
    }
    Ok(())
}

fn check_name(what: &str, name: &str) -> Result<(), UnsafeValue> {
    let ok = !name.is_empty()
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
        && name.as_bytes()[0].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(UnsafeValue(format!("{what} {name:?} is not a valid container name")))
    }
}

struct ScriptWriter {
    out: String,
    steps: Vec<Step>,
}

impl ScriptWriter {
    fn step(&mut self, what: impl Into<String>, image: Option<&str>) {
        let n = self.steps.len();
        self.steps.push(Step { what: what.into(), image: image.map(str::to_string) });
        let _ = writeln!(self.out, "vs_step {n}");
    }

    fn line(&mut self, s: &str) {
        self.out.push_str(s);
        self.out.push('\n');
    }
}

/// The `docker run` arguments of a container (after `docker run -d`),
/// without the env file.
pub fn run_args(stack: &str, c: &DesiredContainer) -> Vec<String> {
    let mut a: Vec<String> = vec![
        "--name".into(),
        c.name.clone(),
        "--restart".into(),
        "unless-stopped".into(),
        "--network".into(),
        HOST_NETWORK.into(),
        "--label".into(),
        format!("{STACK_LABEL}={stack}"),
        "--label".into(),
        format!("{TIER_LABEL}={}", c.tier.as_str()),
    ];
    if let Some(hash) = c.config_hash() {
        a.push("--label".into());
        a.push(format!("{CONFIG_HASH_LABEL}={hash}"));
    }
    for (name, ip) in &c.extra_hosts {
        if let Some(ip) = ip {
            a.push("--add-host".into());
            a.push(format!("{name}:{ip}"));
        }
    }
    for p in &c.ports {
        a.push("-p".into());
        a.push(format!("{}:{}", p.host, p.container));
    }
    for (volume, path) in &c.volumes {
        a.push("-v".into());
        a.push(format!("{volume}:{path}"));
    }
    a
}

/// Turns one tier's planned actions into one script. Removals run before
/// creations (an orphan may hold a port a new container needs); the rest
/// keeps the plan's order.
pub fn apply_script(stack: &str, actions: &[Action], pull: PullPolicy) -> Result<Script, UnsafeValue> {
    let mut w = ScriptWriter { out: with_common(APPLY_FUNCTIONS), steps: Vec::new() };
    w.line("vs_find_docker");

    let install = actions.iter().any(|a| matches!(a, Action::InstallDocker { .. }));
    let start = actions.iter().any(|a| matches!(a, Action::StartDocker { .. }));
    if install {
        w.step("install Docker (apt-get install docker.io)", None);
        w.line("vs_install_docker || exit 1");
        w.step("enable and start containerd and Docker", None);
        w.line("vs_start_docker || exit 1");
    } else if start {
        w.step("start Docker", None);
        w.line("vs_start_docker || exit 1");
    }

    let creates: Vec<&DesiredContainer> = actions
        .iter()
        .filter_map(|a| match a {
            Action::CreateContainer { container, .. } => Some(container),
            _ => None,
        })
        .collect();
    let needs_engine = actions.iter().any(|a| {
        matches!(a, Action::CreateContainer { .. } | Action::StartContainer { .. } | Action::RemoveContainer { .. })
    });
    if !needs_engine {
        return Ok(Script { what: "apply", body: w.out, args: vec![stack.to_string()], steps: w.steps });
    }
    w.step("reach the Docker engine", None);
    w.line("vs_need_docker || exit 1");

    for a in actions {
        if let Action::RemoveContainer { name, .. } = a {
            check_name("container", name)?;
            w.step(format!("remove container {name}"), None);
            w.line(&format!("$DOCKER rm -f {} >/dev/null || exit 1", quote(name)));
        }
    }

    if !creates.is_empty() {
        w.step(format!("create network {HOST_NETWORK}"), None);
        w.line(&format!(
            "$DOCKER network inspect {net} >/dev/null 2>&1 || $DOCKER network create --label {label} {net} >/dev/null || exit 1",
            net = quote(HOST_NETWORK),
            label = quote(&format!("{STACK_LABEL}={stack}")),
        ));
        let images: BTreeSet<&str> = creates.iter().map(|c| c.image.as_str()).collect();
        for image in images {
            let q = quote(image);
            match pull {
                PullPolicy::Always => {
                    w.step(format!("pull {image}"), Some(image));
                    w.line(&format!("$DOCKER pull -q {q} >/dev/null || exit 1"));
                }
                PullPolicy::IfNotPresent => {
                    w.step(format!("pull {image}"), Some(image));
                    w.line(&format!(
                        "$DOCKER image inspect {q} >/dev/null 2>&1 || $DOCKER pull -q {q} >/dev/null || exit 1"
                    ));
                }
                PullPolicy::Never => {
                    w.step(format!("find image {image} (pull policy Never)"), Some(image));
                    w.line(&format!(
                        "$DOCKER image inspect {q} >/dev/null 2>&1 || {{ echo 'the image is not on the host and imagePullPolicy is Never' >&2; exit 1; }}"
                    ));
                }
            }
        }
    }

    for a in actions {
        match a {
            Action::CreateContainer { container: c, .. } => {
                check_name("container", &c.name)?;
                check_env(c)?;
                w.step(format!("create container {}", c.name), None);
                w.line(&format!("$DOCKER rm -f {} >/dev/null 2>&1", quote(&c.name)));
                let mut run = String::from("$DOCKER run -d");
                for arg in run_args(stack, c) {
                    run.push(' ');
                    run.push_str(&quote(&arg));
                }
                if c.env.is_empty() {
                    run.push(' ');
                    run.push_str(&quote(&c.image));
                    for arg in &c.command {
                        run.push(' ');
                        run.push_str(&quote(arg));
                    }
                    w.line(&format!("{run} >/dev/null || exit 1"));
                } else {
                    // env through a private file, never in arguments
                    w.line("vs_private_file || exit 1");
                    w.line("vs_env=$vs_file");
                    w.line("cat >\"$vs_env\" <<'VS_ENV_END'");
                    for (k, v) in &c.env {
                        w.line(&format!("{k}={v}"));
                    }
                    w.line("VS_ENV_END");
                    run.push_str(" --env-file \"$vs_env\" ");
                    run.push_str(&quote(&c.image));
                    for arg in &c.command {
                        run.push(' ');
                        run.push_str(&quote(arg));
                    }
                    w.line(&format!("{run} >/dev/null; vs_rc=$?; rm -f \"$vs_env\"; [ \"$vs_rc\" = 0 ] || exit 1"));
                }
            }
            Action::StartContainer { name, .. } => {
                check_name("container", name)?;
                w.step(format!("start container {name}"), None);
                w.line(&format!("$DOCKER start {} >/dev/null || exit 1", quote(name)));
            }
            _ => {}
        }
    }
    w.line("exit 0");
    Ok(Script { what: "apply", body: w.out, args: vec![stack.to_string()], steps: w.steps })
}

/// The last `step:N` the script announced.
fn last_step(stdout: &[u8]) -> Option<usize> {
    String::from_utf8_lossy(stdout)
        .lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix("step:").and_then(|n| n.trim().parse().ok()))
}

/// The end of a command's stderr, for messages.
pub fn tail(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let lines: Vec<&str> = text.lines().map(str::trim_end).filter(|l| !l.is_empty()).collect();
    let start = lines.len().saturating_sub(8);
    let mut t = lines[start..].join("\n");
    if t.len() > 1500 {
        let mut cut = t.len() - 1500;
        while !t.is_char_boundary(cut) {
            cut += 1;
        }
        t = format!("…{}", &t[cut..]);
    }
    if t.is_empty() {
        "(no output)".to_string()
    } else {
        t
    }
}

/// The error for a script that exited with `code`.
pub fn script_failure(host: &str, script: &Script, code: u32, stdout: &[u8], stderr: &[u8]) -> HostError {
    let step = last_step(stdout).and_then(|n| script.steps.get(n));
    match step {
        Some(Step { image: Some(image), .. }) => {
            HostError::ImagePull { host: host.to_string(), image: image.clone(), message: tail(stderr) }
        }
        Some(step) => {
            HostError::CommandFailed { host: host.to_string(), step: step.what.clone(), code, stderr: tail(stderr) }
        }
        None => HostError::CommandFailed {
            host: host.to_string(),
            step: script.what.to_string(),
            code,
            stderr: tail(stderr),
        },
    }
}

// ---------------------------------------------------------- smoke test ----

/// Reads the vote postgres holds for a voter: prints `vote:<value>`,
/// `none`, or fails.
pub fn recorded_vote_script(voter_id: &str) -> Script {
    let sql = format!("SELECT vote FROM votes WHERE id = '{}'", voter_id.replace('\'', "''"));
    let body = with_common(
        r#"vs_find_docker
if [ "$DOCKER_STATE" != running ]; then
  echo "Docker does not answer ($DOCKER_STATE): $DOCKER_WHY" >&2
  exit 3
fi
if ! vs_out=$(vs_timeout 30 $DOCKER exec db psql -U postgres -tAc "$1" 2>&1 </dev/null); then
  case "$vs_out" in
    *'relation "votes" does not exist'*) echo none; exit 0 ;;
  esac
  printf '%s\n' "$vs_out" >&2
  exit 1
fi
vs_vote=$(printf '%s\n' "$vs_out" | head -n 1 | tr -d '\r')
if [ -z "$vs_vote" ]; then echo none; else printf 'vote:%s\n' "$vs_vote"; fi
"#,
    );
    Script { what: "read the smoke test's vote from postgres", body, args: vec![sql], steps: Vec::new() }
}

/// Reads the output of [`recorded_vote_script`].
pub fn parse_recorded_vote(stdout: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(stdout);
    let line = text.lines().rev().map(str::trim).find(|l| !l.is_empty())?;
    line.strip_prefix("vote:").map(|v| v.trim().to_string())
}

// -------------------------------------------------------------- events ----

/// The long-lived `docker events` stream of a stack's die/stop/destroy
/// events, one JSON object a line; it ends when the channel closes.
pub fn events_script(stack: &str) -> Script {
    Script { what: "docker events", body: with_common(EVENTS), args: vec![stack.to_string()], steps: Vec::new() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::fixtures::spec;
    use crate::engine::desired::{desired_containers, Peers};
    use crate::engine::plan::CreateReason;
    use std::net::Ipv4Addr;

    fn peers() -> Peers {
        Peers { backend: Some(Ipv4Addr::new(10, 42, 1, 5)), database: Some(Ipv4Addr::new(10, 42, 1, 4)) }
    }

    fn sh(script: &str, args: &[&str]) -> std::process::Output {
        std::process::Command::new("sh").arg("-c").arg(script).arg("t").args(args).output().expect("sh runs")
    }

    #[test]
    fn quoting_survives_a_real_shell() {
        let nasty = ["plain", "", "it's", "a b", "$(touch /tmp/x)", "`id`", "\"q\"", "back\\slash", "new\nline", "*"];
        for s in nasty {
            let out = sh(&format!("printf '%s' {}", quote(s)), &[]);
            assert_eq!(String::from_utf8_lossy(&out.stdout), s, "{s:?}");
        }
        assert_eq!(quote("default/demo"), "default/demo");
        assert_eq!(quote("a b"), "'a b'");
    }

    #[test]
    fn observation_json_is_read() {
        let out = br#"motd line
{"docker":"running","docker_why":"","containers":[{"name":"/db","image":"postgres:15-alpine","image_id":"sha256:1","state":"running","exit_code":0,"labels":{"votingstack.dev/stack":"default/demo","votingstack.dev/config-hash":"abc"}},{"name":"/x","image":"i","image_id":"","state":"exited","exit_code":137,"labels":{"votingstack.dev/stack":"default/demo"}},{"name":"/other","image":"i","state":"running","exit_code":0,"labels":null}],"list_error":"","probes":[{"name":"db","ok":false,"detail":"psql: error"}]}
"#;
        let o = parse_observation(out, "default/demo", "i-1", "SHA256:x").unwrap();
        assert_eq!(o.docker, DockerState::Running);
        assert_eq!(o.containers.len(), 2);
        let db = o.container("db").unwrap();
        assert_eq!(db.config_hash.as_deref(), Some("abc"));
        assert_eq!(db.exit_code, None);
        assert_eq!(o.container("x").unwrap().exit_code, Some(137));
        assert_eq!(o.probe("db"), Some(&Err("psql: error".to_string())));
        assert_eq!(o.host_key_fingerprint, "SHA256:x");
    }

    #[test]
    fn a_host_naming_another_instance_is_refused() {
        let doc = br#"{"instance":"i-old","docker":"running","containers":[],"list_error":"","probes":[]}"#;
        assert!(
            matches!(parse_observation(doc, "s", "i-new", "f"), Err(ObserveProblem::OtherInstance(i)) if i == "i-old")
        );
        assert!(parse_observation(doc, "s", "i-old", "f").is_ok());
    }

    #[test]
    fn docker_down_and_missing_are_told_apart() {
        let o = parse_observation(
            br#"{"docker":"down","docker_why":"Cannot connect","containers":[],"list_error":"","probes":[]}"#,
            "s",
            "i-1",
            "f",
        )
        .unwrap();
        assert_eq!(o.docker, DockerState::Down("Cannot connect".into()));
        let o = parse_observation(
            br#"{"docker":"missing","docker_why":"","containers":[],"list_error":"","probes":[]}"#,
            "s",
            "i-1",
            "f",
        )
        .unwrap();
        assert_eq!(o.docker, DockerState::Missing);
        assert!(matches!(parse_observation(b"garbage", "s", "i-1", "f"), Err(ObserveProblem::Unreadable(_))));
        assert!(matches!(
            parse_observation(br#"{"docker":"running","list_error":"permission denied"}"#, "s", "i-1", "f"),
            Err(ObserveProblem::ListFailed(_))
        ));
    }

    /// Runs the observe script against a fake `docker` on PATH.
    #[test]
    fn observe_script_prints_json_with_a_fake_docker() {
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("docker");
        std::fs::write(
            &fake,
            r#"#!/bin/sh
case "$1" in
  version) echo 24.0.0 ;;
  ps) echo aaa; echo bbb ;;
  inspect) echo '{"name":"/redis","image":"redis:alpine","image_id":"sha256:r","state":"running","exit_code":0,"labels":{"votingstack.dev/stack":"ns/a b"}}'
           echo '{"name":"/worker","image":"w","image_id":"sha256:w","state":"exited","exit_code":1,"labels":{"votingstack.dev/stack":"ns/a b","votingstack.dev/config-hash":"h"}}' ;;
  exec) echo PONG ;;
esac
"#,
        )
        .unwrap();
        std::process::Command::new("chmod").arg("+x").arg(&fake).status().unwrap();
        let s = observe_script("ns/a b", Tier::Backend);
        let path = format!("{}:{}", dir.path().display(), std::env::var("PATH").unwrap_or_default());
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(&s.body)
            .arg("t")
            .args(&s.args)
            .env("PATH", path)
            .output()
            .unwrap();
        let o = parse_observation(&out.stdout, "ns/a b", "i-1", "fp")
            .unwrap_or_else(|e| panic!("{e:?}: {}", String::from_utf8_lossy(&out.stdout)));
        assert_eq!(o.containers.len(), 2);
        assert_eq!(o.probe("redis"), Some(&Ok(())));
        assert_eq!(o.container("worker").unwrap().exit_code, Some(1));
    }

    #[test]
    fn observe_script_says_missing_without_docker() {
        let dir = tempfile::tempdir().unwrap();
        let s = observe_script("ns/x", Tier::Database);
        // a PATH with the basic tools but no docker
        let tools = ["sh", "tr", "cut", "awk", "head", "tail", "grep", "id", "timeout", "printf"];
        for t in tools {
            if let Ok(p) = which(t) {
                let _ = std::os::unix::fs::symlink(p, dir.path().join(t));
            }
        }
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(&s.body)
            .arg("t")
            .args(&s.args)
            .env("PATH", dir.path())
            .output()
            .unwrap();
        let o = parse_observation(&out.stdout, "ns/x", "i-1", "fp").unwrap();
        assert_eq!(o.docker, DockerState::Missing);
        assert!(o.probes.is_empty());
    }

    fn which(tool: &str) -> Result<std::path::PathBuf, ()> {
        for d in ["/usr/bin", "/bin", "/usr/sbin", "/sbin"] {
            let p = std::path::Path::new(d).join(tool);
            if p.exists() {
                return Ok(p);
            }
        }
        Err(())
    }

    fn create(c: DesiredContainer) -> Action {
        Action::CreateContainer { container: c, reason: CreateReason::Missing }
    }

    #[test]
    fn apply_script_runs_env_through_a_private_file() {
        let mut s = spec();
        s.app.option_a = "it's $(rm -rf /)".into();
        let front = desired_containers(&s, Tier::Frontend, peers());
        let actions: Vec<Action> = front.into_iter().map(create).collect();
        let script = apply_script("default/demo", &actions, PullPolicy::IfNotPresent).unwrap();
        // env is only in the heredoc, never on a docker command line
        for line in script.body.lines().filter(|l| l.contains("$DOCKER run")) {
            assert!(!line.contains("OPTION_A"), "{line}");
            assert!(line.contains("--env-file \"$vs_env\""), "{line}");
            assert!(line.contains("--restart unless-stopped"), "{line}");
            assert!(line.contains("--add-host"), "{line}");
        }
        assert!(script.body.contains("OPTION_A=it's $(rm -rf /)\nOPTION_B=Dogs\nVS_ENV_END"));
        let hash = desired_containers(&s, Tier::Frontend, peers())[0].config_hash().unwrap();
        assert!(script.body.contains(&format!("votingstack.dev/config-hash={hash}")));
        assert!(script.body.contains("--add-host redis:10.42.1.5 -p 80:80"));
        let what: Vec<&str> = script.steps.iter().map(|s| s.what.as_str()).collect();
        assert_eq!(
            what,
            [
                "reach the Docker engine",
                "create network votingstack",
                "pull dockersamples/examplevotingapp_result",
                "pull dockersamples/examplevotingapp_vote",
                "create container vote",
                "create container result"
            ]
        );
        let out = sh(&format!("sh -n -c {}", quote(&script.body)), &[]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }

    #[test]
    fn removals_come_first_and_pull_policy_is_honoured() {
        let db = desired_containers(&spec(), Tier::Database, peers()).remove(0);
        let actions = vec![
            create(db.clone()),
            Action::StartContainer { tier: Tier::Database, name: "db".into(), state: "exited".into() },
            Action::RemoveContainer { tier: Tier::Database, name: "old".into() },
        ];
        let script = apply_script("s", &actions, PullPolicy::Never).unwrap();
        let rm = script.body.find("$DOCKER rm -f old").unwrap();
        let run = script.body.find("$DOCKER run -d").unwrap();
        assert!(rm < run);
        assert!(!script.body.contains("$DOCKER pull"));
        assert!(script.body.contains("-v votingstack-db-data:/var/lib/postgresql/data"));
        let always = apply_script("s", &[create(db)], PullPolicy::Always).unwrap();
        assert!(always.body.contains("$DOCKER pull -q postgres:15-alpine"));
    }

    #[test]
    fn bad_values_are_refused_before_any_shell() {
        let mut c = desired_containers(&spec(), Tier::Database, peers()).remove(0);
        c.env.insert("X".into(), "line\nbreak".into());
        assert!(apply_script("s", &[create(c.clone())], PullPolicy::Never).is_err());
        c.env.remove("X");
        c.name = "db; rm -rf /".into();
        assert!(apply_script("s", &[create(c)], PullPolicy::Never).is_err());
    }

    #[test]
    fn failures_name_the_step_or_the_image() {
        let db = desired_containers(&spec(), Tier::Database, peers()).remove(0);
        let script = apply_script("s", &[create(db)], PullPolicy::Always).unwrap();
        let e = script_failure("h", &script, 1, b"step:0\nstep:1\nstep:2\n", b"x\nmanifest unknown\n");
        assert!(
            matches!(&e, HostError::ImagePull { image, message, .. } if image == "postgres:15-alpine" && message.contains("manifest unknown")),
            "{e}"
        );
        let e = script_failure("h", &script, 1, b"step:0\nstep:1\nstep:2\nstep:3\n", b"port is already allocated");
        assert!(matches!(&e, HostError::CommandFailed { step, .. } if step == "create container db"), "{e}");
    }

    #[test]
    fn the_launcher_runs_a_script_from_stdin_and_cleans_up() {
        let script = Script {
            what: "t",
            body: "printf '%s|%s\\n' \"$1\" \"$2\"; exit 3".into(),
            args: vec!["a b".into(), "it's".into()],
            steps: vec![],
        };
        let mut child = std::process::Command::new("sh")
            .arg("-c")
            .arg(script.command())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(script.body.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(3));
        assert_eq!(String::from_utf8_lossy(&out.stdout), "a b|it's\n");
    }

    #[test]
    fn recorded_vote_quotes_the_voter() {
        let s = recorded_vote_script("x' OR '1'='1");
        assert_eq!(s.args[0], "SELECT vote FROM votes WHERE id = 'x'' OR ''1''=''1'");
        assert_eq!(parse_recorded_vote(b"vote:a\n"), Some("a".into()));
        assert_eq!(parse_recorded_vote(b"none\n"), None);
    }
}
