//! The bootstrap script (`bootstrap.sh`) and its steps on a host: install
//! and start Docker, read the host's facts (`facts`), mount the data volume.
//! These are the shell steps of [`crate::host`]'s list; each step is one
//! [`SshHosts::exec`].
//!
//! The script travels on the exec's stdin into a mode 0600 temporary file,
//! so nothing it carries shows in process arguments. Its text is wrapped
//! in a function called on the last line: an upload cut short is a syntax
//! error, not half a script.

use serde::Deserialize;
use tracing::{debug, info};

use super::hosts::SshHosts;
use super::ssh::ExecOutput;
use super::{HostError, HostTarget, SshKey};
use crate::model::DataVolume;

const BOOTSTRAP: &str = include_str!("bootstrap.sh");

/// Limit of the mount step on the host: up to a minute for the disk to show
/// after EC2 attached it, then a format of a blank volume or, once, the move
/// of an earlier release's postgres data onto the volume (a copy and a
/// comparison: some GiB at EBS speeds). A move cut short is started afresh.
const MOUNT_SECONDS: u32 = 900;

/// Exit code of the mount step for a volume it will neither format nor
/// mount (its stderr says what it found).
const UNUSABLE_EXIT: u32 = 3;

/// Exit code of the install step on a host with neither Docker nor apt-get.
const UNSUPPORTED_OS_EXIT: u32 = 4;

/// What the script is asked to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Print the host's facts as one JSON line.
    Facts,
    /// Install Docker from the distribution's packages, then start it.
    Install,
    /// Start Docker and wait until its API answers.
    Start,
    /// Find the data volume by id, format it when blank, mount it.
    MountVolume,
}

impl Step {
    fn arg(self) -> &'static str {
        match self {
            Step::Facts => "facts",
            Step::Install => "install",
            Step::Start => "start",
            Step::MountVolume => "mount-volume",
        }
    }

    /// What the step does, for messages.
    pub fn describe(self) -> &'static str {
        match self {
            Step::Facts => "read the host's facts",
            Step::Install => "install Docker (apt-get install docker.io)",
            Step::Start => "start Docker",
            Step::MountVolume => "mount the data volume",
        }
    }
}

/// The text sent on stdin: the script inside a function, called last.
pub fn script_text() -> String {
    format!("vs_main() {{\n{BOOTSTRAP}\n}}\nvs_main \"$@\"\n")
}

/// The exec's command line: reads the script from stdin into a private
/// temporary file, runs it with `step` for at most `seconds` (then the host
/// kills it and whatever it started, so a timed-out step never runs on
/// unwatched), removes it.
pub fn command(step: Step, seconds: u32) -> String {
    launcher(step, "", seconds)
}

/// [`command`] with arguments after the step; None when one is not made
/// only of letters, digits and `/._-` (the command line is shell text, and
/// the arguments are volume ids and paths the operator chose).
pub fn command_with(step: Step, args: &[&str], seconds: u32) -> Option<String> {
    let safe = |a: &str| !a.is_empty() && a.bytes().all(|b| b.is_ascii_alphanumeric() || b"/._-".contains(&b));
    if !args.iter().all(|a| safe(a)) {
        return None;
    }
    let text: String = args.iter().map(|a| format!(" {a}")).collect();
    Some(launcher(step, &text, seconds))
}

fn launcher(step: Step, args: &str, seconds: u32) -> String {
    format!(
        "sh -c 'umask 077; f=$(mktemp \"${{TMPDIR:-/tmp}}/votingstack.XXXXXX\") || exit 125; \
         if ! cat >\"$f\"; then rm -f \"$f\"; exit 125; fi; \
         timeout -k 5 {} sh \"$f\" \"$@\" </dev/null; rc=$?; rm -f \"$f\"; exit $rc' votingstack {}{args}",
        seconds.max(1),
        step.arg()
    )
}

/// What the `mount-volume` step found and did.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Mounted {
    pub device: String,
    pub uuid: String,
    pub formatted: bool,
    /// postgres's data was moved onto the volume from the Docker volume an
    /// earlier release kept it in (which is left as it was).
    #[serde(default)]
    pub moved: bool,
}

/// Reads the `mount-volume` output (its last non-empty line).
pub fn parse_mounted(stdout: &[u8]) -> Result<Mounted, String> {
    let text = String::from_utf8_lossy(stdout);
    let line = text.lines().rev().map(str::trim).find(|l| !l.is_empty()).unwrap_or("");
    serde_json::from_str(line).map_err(|e| format!("{e} in {:?}", line.chars().take(200).collect::<String>()))
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

impl SshHosts {
    /// Runs one step of the bootstrap script: one exec. Returns its output
    /// whatever its exit code; errors are connection failures and timeouts.
    pub(super) async fn run_bootstrap(
        &self,
        target: &HostTarget,
        key: &SshKey,
        step: Step,
        seconds: u32,
    ) -> Result<ExecOutput, HostError> {
        let text = script_text();
        self.exec(target, key, &command(step, seconds), Some(text.as_bytes()), step.describe(), seconds).await
    }

    /// Runs the install or start step; a step that fails on the host is
    /// [`HostError::CommandFailed`], a host the install step cannot
    /// provision (no Docker, no apt-get) [`HostError::UnsupportedOs`].
    pub(super) async fn prepare_docker(&self, target: &HostTarget, key: &SshKey, step: Step) -> Result<(), HostError> {
        let out = self.run_bootstrap(target, key, step, target.command_timeout_secs).await?;
        if out.code == UNSUPPORTED_OS_EXIT {
            let said = tail(&out.stderr);
            let os = said
                .lines()
                .find_map(|l| l.strip_prefix("unsupported operating system: "))
                .unwrap_or(&said)
                .to_string();
            return Err(HostError::UnsupportedOs { host: target.describe(), os });
        }
        if out.code != 0 {
            return Err(HostError::CommandFailed {
                host: target.describe(),
                step: step.describe().into(),
                code: out.code,
                stderr: tail(&out.stderr),
            });
        }
        Ok(())
    }

    /// Mounts the data volume on the host (finds it by id, formats it only
    /// when blank, mounts it by UUID).
    pub(super) async fn mount_volume(
        &self,
        target: &HostTarget,
        key: &SshKey,
        volume: &DataVolume,
    ) -> Result<(), HostError> {
        let step = Step::MountVolume;
        let what = format!("mount data volume {} at {}", volume.volume_id, volume.mount);
        let args = [volume.volume_id.as_str(), volume.mount.as_str(), volume.subdir.as_str(), volume.format_arg()];
        let command = command_with(step, &args, MOUNT_SECONDS)
            .filter(|_| DataVolume::valid_id(&volume.volume_id))
            .ok_or_else(|| HostError::Parse {
                host: target.describe(),
                message: format!("{what}: {:?} is not an EBS volume id or the paths are not plain", volume.volume_id),
            })?;
        let text = script_text();
        let out = self.exec(target, key, &command, Some(text.as_bytes()), &what, MOUNT_SECONDS).await?;
        if out.code == UNUSABLE_EXIT {
            let said = tail(&out.stderr);
            let message = said.lines().find(|l| l.starts_with("data volume unusable:")).unwrap_or(&said).to_string();
            return Err(HostError::DataVolumeUnusable { host: target.describe(), message });
        }
        if out.code != 0 {
            return Err(HostError::CommandFailed {
                host: target.describe(),
                step: what,
                code: out.code,
                stderr: tail(&out.stderr),
            });
        }
        let mounted = parse_mounted(&out.stdout)
            .map_err(|message| HostError::Parse { host: target.describe(), message: format!("{what}: {message}") })?;
        if mounted.moved {
            info!(host = %target.describe(), volume = %volume.volume_id, device = %mounted.device,
                "moved postgres's data from the Docker volume votingstack-db-data onto the data volume (copied and compared file by file; the Docker volume is kept)");
        }
        if mounted.formatted {
            info!(host = %target.describe(), volume = %volume.volume_id, device = %mounted.device, uuid = %mounted.uuid,
                "the data volume was blank: formatted it (ext4)");
        } else {
            debug!(host = %target.describe(), volume = %volume.volume_id, device = %mounted.device, uuid = %mounted.uuid,
                "data volume mounted");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::facts::parse_facts;
    use crate::model::DockerState;
    use std::io::Write;
    use std::process::{Command, Stdio};

    /// Runs the launcher of `step` with `text` on stdin, PATH set to `path`.
    fn launch(step: Step, text: &str, path: &str) -> std::process::Output {
        launch_for(step, text, path, 30)
    }

    fn launch_for(step: Step, text: &str, path: &str, seconds: u32) -> std::process::Output {
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(command(step, seconds))
            .env("PATH", path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
        child.wait_with_output().unwrap()
    }

    /// A PATH with the basic tools and, when given, a fake `docker`.
    fn tools(fake_docker: Option<&str>) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for t in
            ["sh", "tr", "cut", "grep", "tail", "id", "timeout", "printf", "cat", "mktemp", "rm", "hostname", "sleep"]
        {
            for d in ["/usr/bin", "/bin"] {
                let p = std::path::Path::new(d).join(t);
                if p.exists() {
                    let _ = std::os::unix::fs::symlink(&p, dir.path().join(t));
                    break;
                }
            }
        }
        if let Some(body) = fake_docker {
            let fake = dir.path().join("docker");
            std::fs::write(&fake, body).unwrap();
            Command::new("chmod").arg("+x").arg(&fake).status().unwrap();
        }
        dir
    }

    #[test]
    fn facts_tell_running_down_and_missing_apart() {
        let up = tools(Some("#!/bin/sh\necho 24.0.0\n"));
        let out = launch(Step::Facts, &script_text(), &up.path().display().to_string());
        assert_eq!(parse_facts(&out.stdout).unwrap().docker, DockerState::Running);

        let down = tools(Some("#!/bin/sh\necho 'Cannot connect to the Docker daemon' >&2\nexit 1\n"));
        let out = launch(Step::Facts, &script_text(), &down.path().display().to_string());
        let facts = parse_facts(&out.stdout).unwrap();
        assert!(matches!(&facts.docker, DockerState::Down(why) if why.contains("Cannot connect")), "{facts:?}");

        let none = tools(None);
        let out = launch(Step::Facts, &script_text(), &none.path().display().to_string());
        assert_eq!(parse_facts(&out.stdout).unwrap().docker, DockerState::Missing);
    }

    /// Adds an executable `name` with `body` to a tools directory.
    fn fake(dir: &tempfile::TempDir, name: &str, body: &str) {
        let path = dir.path().join(name);
        std::fs::write(&path, body).unwrap();
        Command::new("chmod").arg("+x").arg(&path).status().unwrap();
    }

    /// Fakes for the start step: `sudo` that just runs its command, `pgrep`
    /// that finds a dockerd or not, `service` that records each start.
    fn start_tools(docker: &str, dockerd_alive: bool) -> tempfile::TempDir {
        let dir = tools(Some(docker));
        fake(&dir, "sudo", "#!/bin/sh\n[ \"$1\" = -n ] && shift\nexec \"$@\"\n");
        fake(&dir, "pgrep", if dockerd_alive { "#!/bin/sh\nexit 0\n" } else { "#!/bin/sh\nexit 1\n" });
        fake(&dir, "service", "#!/bin/sh\necho \"$*\" >>\"${0%/*}/starts\"\n");
        dir
    }

    fn starts(dir: &tempfile::TempDir) -> String {
        std::fs::read_to_string(dir.path().join("starts")).unwrap_or_default()
    }

    #[test]
    fn a_host_without_docker_and_apt_get_says_what_it_runs_and_exits_4() {
        let none = tools(None);
        let out = launch(Step::Install, &script_text(), &none.path().display().to_string());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(UNSUPPORTED_OS_EXIT as i32), "{stderr}");
        let line = stderr.lines().find(|l| l.starts_with("unsupported operating system: ")).unwrap_or_default();
        assert!(line.contains("(ID=") && line.contains("VERSION_ID="), "{stderr}");
        assert!(line.contains("no apt-get"), "{stderr}");
        if let Ok(release) = std::fs::read_to_string("/etc/os-release") {
            let id = release.lines().find_map(|l| l.strip_prefix("ID=")).unwrap_or_default().trim_matches('"');
            assert!(line.contains(&format!("ID={id},")), "{line} names this machine's ID {id}");
        }
    }

    #[test]
    fn a_slow_docker_daemon_is_waited_for_not_restarted() {
        if std::path::Path::new("/run/systemd/system").exists() {
            eprintln!("skipped: this machine runs systemd, which the script would ask instead of the fakes");
            return;
        }
        // The daemon is there; its API answers on the third try.
        let slow =
            "#!/bin/sh\nn=$(cat \"${0%/*}/calls\" 2>/dev/null || echo 0); n=$((n + 1)); echo $n >\"${0%/*}/calls\"\n\
                    [ $n -ge 3 ] && { echo 24.0.0; exit 0; }\necho 'Cannot connect to the Docker daemon' >&2; exit 1\n";
        let dir = start_tools(slow, true);
        let out = launch(Step::Start, &script_text(), &dir.path().display().to_string());
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(starts(&dir), "", "a running daemon was restarted");
    }

    #[test]
    fn a_docker_daemon_that_is_not_there_is_started_once() {
        if std::path::Path::new("/run/systemd/system").exists() {
            eprintln!("skipped: this machine runs systemd, which the script would ask instead of the fakes");
            return;
        }
        // Docker answers once `service docker start` ran.
        let dead = "#!/bin/sh\n[ -s \"${0%/*}/starts\" ] && { echo 24.0.0; exit 0; }\n\
                    echo 'Cannot connect to the Docker daemon' >&2; exit 1\n";
        let dir = start_tools(dead, false);
        let out = launch(Step::Start, &script_text(), &dir.path().display().to_string());
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(starts(&dir), "docker start\n");
    }

    #[test]
    fn a_step_past_its_time_is_killed_on_the_host_with_what_it_started() {
        let dir = tools(None);
        let pid_file = dir.path().join("child.pid");
        let text = format!("sleep 60 & echo $! >{}; wait; echo finished\n", pid_file.display());
        let out = launch_for(Step::Facts, &text, &dir.path().display().to_string(), 1);
        assert_eq!(out.status.code(), Some(124), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(!String::from_utf8_lossy(&out.stdout).contains("finished"));
        let pid = std::fs::read_to_string(&pid_file).unwrap();
        // Gone, or a zombie nobody has reaped yet: either way it stopped.
        let state = std::fs::read_to_string(format!("/proc/{}/stat", pid.trim())).unwrap_or_default();
        let running = state.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z'));
        assert!(!running, "the step's child {} outlived the step: {state}", pid.trim());
    }

    #[test]
    fn a_cut_off_upload_runs_nothing() {
        let dir = tools(Some("#!/bin/sh\necho 24.0.0\n"));
        let text = script_text();
        let cut = &text[..text.len() / 2];
        let out = launch(Step::Facts, cut, &dir.path().display().to_string());
        assert_ne!(out.status.code(), Some(0));
        assert!(out.stdout.is_empty(), "{}", String::from_utf8_lossy(&out.stdout));
    }

    /// Runs the script's `vs_blank` on `device` with real blkid and dd and
    /// a `blockdev` that reports a file's size (`fail_size`: it fails).
    fn blank(device: &std::path::Path, format: &str, fail_size: bool) -> (Option<i32>, String) {
        let dir = tools(None);
        for t in ["blkid", "dd", "wc", "stat"] {
            for d in ["/usr/sbin", "/sbin", "/usr/bin", "/bin"] {
                let p = std::path::Path::new(d).join(t);
                if p.exists() {
                    let _ = std::os::unix::fs::symlink(&p, dir.path().join(t));
                    break;
                }
            }
        }
        fake(&dir, "sudo", "#!/bin/sh\n[ \"$1\" = -n ] && shift\nexec \"$@\"\n");
        let size = if fail_size { "exit 1" } else { "stat -c %s \"$2\"" };
        fake(&dir, "blockdev", &format!("#!/bin/sh\n{size}\n"));
        let functions = BOOTSTRAP.split("\ncase \"$1\" in").next().unwrap();
        let text = format!("{functions}\nvs_blank \"$1\" \"$2\"; rc=$?; printf '%s' \"$VS_WHY\"; exit $rc\n");
        let out = Command::new("sh")
            .arg("-c")
            .arg(text)
            .arg("sh")
            .arg(device)
            .arg(format)
            .env("PATH", dir.path())
            .output()
            .unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned())
    }

    #[test]
    fn only_a_blank_readable_volume_this_stack_created_is_formatted() {
        if !std::path::Path::new("/usr/sbin/blkid").exists() && !std::path::Path::new("/sbin/blkid").exists() {
            eprintln!("skipped: blkid is not installed");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let device = dir.path().join("volume");
        std::fs::write(&device, vec![0u8; 16 << 20]).unwrap();
        assert_eq!(blank(&device, "may-format", false), (Some(0), String::new()), "a blank volume");

        let (code, why) = blank(&device, "never-format", false);
        assert_eq!(code, Some(1));
        assert!(why.contains("not created blank by this stack"), "{why}");

        let (code, why) = blank(&device, "may-format", true);
        assert_eq!(code, Some(1), "an unreadable size is a doubt");
        assert!(why.contains("blockdev --getsize64"), "{why}");

        // Data blkid does not recognise: bytes at 1 MiB, no signature.
        let mut data = vec![0u8; 16 << 20];
        for (i, b) in data[1 << 20..(1 << 20) + 4096].iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(31).wrapping_add(7) | 1;
        }
        std::fs::write(&device, &data).unwrap();
        let (code, why) = blank(&device, "may-format", false);
        assert_eq!(code, Some(1), "data at 1 MiB");
        assert!(why.contains("4096 of the first 8388608 bytes are not zero"), "{why}");

        // A filesystem blkid sees.
        let ext4 = Command::new("sh").arg("-c").arg("command -v mkfs.ext4 || ls /usr/sbin/mkfs.ext4").output().unwrap();
        if ext4.status.success() {
            std::fs::write(&device, vec![0u8; 16 << 20]).unwrap();
            let mkfs = String::from_utf8_lossy(&ext4.stdout).trim().to_string();
            assert!(Command::new(mkfs).arg("-q").arg("-F").arg(&device).status().unwrap().success());
            let (code, why) = blank(&device, "may-format", false);
            assert_eq!(code, Some(1));
            assert!(why.contains("blkid -p exited with 0"), "{why}");
        }
    }

    /// Runs the script's `vs_old_data` on `pgdata`, with a `docker` that
    /// shows the named volume at `old` (None: there is no such volume).
    fn old_data(pgdata: &std::path::Path, old: Option<&std::path::Path>) -> (Option<i32>, String) {
        let docker = match old {
            Some(dir) => format!("#!/bin/sh\necho {}\n", dir.display()),
            None => "#!/bin/sh\necho 'Error: No such volume: votingstack-db-data' >&2\nexit 1\n".to_string(),
        };
        let dir = tools(Some(&docker));
        // `sudo -n test ...` runs test(1), not the shell's builtin.
        if let Some(p) = ["/usr/bin/test", "/bin/test"].iter().find(|p| std::path::Path::new(p).exists()) {
            std::os::unix::fs::symlink(p, dir.path().join("test")).unwrap();
        }
        fake(&dir, "sudo", "#!/bin/sh\n[ \"$1\" = -n ] && shift\nexec \"$@\"\n");
        let functions = BOOTSTRAP.split("\ncase \"$1\" in").next().unwrap();
        let text = format!("{functions}\nvs_old_data \"$1\"; rc=$?; printf '%s' \"$VS_WHY\"; exit $rc\n");
        let out =
            Command::new("sh").arg("-c").arg(text).arg("sh").arg(pgdata).env("PATH", dir.path()).output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned())
    }

    #[test]
    fn postgres_never_starts_on_an_empty_volume_while_the_old_named_volume_holds_data() {
        let root = tempfile::tempdir().unwrap();
        let pgdata = root.path().join("pgdata");
        let old = root.path().join("old");
        std::fs::create_dir_all(&pgdata).unwrap();
        std::fs::create_dir_all(&old).unwrap();
        assert_eq!(old_data(&pgdata, None).0, Some(1), "no named volume: a new stack");
        assert_eq!(old_data(&pgdata, Some(&old)).0, Some(1), "an empty named volume");
        std::fs::write(old.join("PG_VERSION"), "15\n").unwrap();
        let (code, why) = old_data(&pgdata, Some(&old));
        assert_eq!(code, Some(0), "the votes are in the named volume and the data volume is empty");
        assert!(why.contains("votingstack-db-data"), "{why}");
        std::fs::write(pgdata.join("PG_VERSION"), "15\n").unwrap();
        assert_eq!(old_data(&pgdata, Some(&old)).0, Some(1), "the data volume holds postgres's data");
    }

    /// Runs the script's `vs_old_data` then `vs_move_old_data` on `pgdata`,
    /// with a `docker` that shows the named volume at `old`, `users` as the
    /// containers using it, and records stop and start in `calls`; `diff`
    /// replaced by `bad_diff` when given. Returns the exit code and VS_WHY.
    fn move_old(
        pgdata: &std::path::Path,
        old: &std::path::Path,
        users: &str,
        calls: &std::path::Path,
        bad_diff: Option<&str>,
    ) -> (Option<i32>, String) {
        let docker = format!(
            "#!/bin/sh\ncase \"$1\" in\n  volume) echo {old} ;;\n  ps) for u in {users}; do echo $u; done ;;\n  inspect) echo true ;;\n  stop|start) echo \"$1\" >> {calls} ;;\nesac\n",
            old = old.display(),
            calls = calls.display(),
        );
        let dir = tools(Some(&docker));
        for t in ["test", "ls", "du", "df", "cp", "diff", "sync", "rmdir", "mv"] {
            if t == "diff" && bad_diff.is_some() {
                continue;
            }
            if let Some(p) = ["/usr/bin", "/bin"].iter().map(|d| std::path::Path::new(d).join(t)).find(|p| p.exists()) {
                std::os::unix::fs::symlink(p, dir.path().join(t)).unwrap();
            }
        }
        if let Some(body) = bad_diff {
            fake(&dir, "diff", body);
        }
        fake(&dir, "sudo", "#!/bin/sh\n[ \"$1\" = -n ] && shift\nexec \"$@\"\n");
        let functions = BOOTSTRAP.split("\ncase \"$1\" in").next().unwrap();
        let text = format!(
            "{functions}\nvs_old_data \"$1\" || exit 9\nvs_move_old_data \"$1\"; rc=$?; printf '%s' \"$VS_WHY\"; exit $rc\n"
        );
        let out =
            Command::new("sh").arg("-c").arg(text).arg("sh").arg(pgdata).env("PATH", dir.path()).output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// An earlier release's data directory: PG_VERSION and a table file.
    fn old_cluster(root: &std::path::Path) -> std::path::PathBuf {
        let old = root.join("old");
        std::fs::create_dir_all(old.join("base/5")).unwrap();
        std::fs::write(old.join("PG_VERSION"), "15\n").unwrap();
        std::fs::write(old.join("base/5/16384"), vec![7u8; 100_000]).unwrap();
        old
    }

    #[test]
    fn the_old_named_volume_is_moved_with_postgres_stopped_and_kept() {
        let root = tempfile::tempdir().unwrap();
        let old = old_cluster(root.path());
        let pgdata = root.path().join("pgdata");
        std::fs::create_dir_all(&pgdata).unwrap();
        let calls = root.path().join("calls");
        let (code, why) = move_old(&pgdata, &old, "db", &calls, None);
        assert_eq!(code, Some(0), "{why}");
        assert_eq!(std::fs::read(pgdata.join("base/5/16384")).unwrap(), vec![7u8; 100_000]);
        assert_eq!(std::fs::read_to_string(pgdata.join("PG_VERSION")).unwrap(), "15\n");
        assert!(old.join("base/5/16384").exists(), "the named volume is kept as it was");
        assert!(!root.path().join("pgdata.upgrade-copy").exists(), "no copy left beside PGDATA");
        assert_eq!(std::fs::read_to_string(&calls).unwrap(), "stop\n", "postgres stopped, not started again");
    }

    #[test]
    fn the_old_named_volume_is_not_moved_when_in_doubt() {
        let root = tempfile::tempdir().unwrap();
        let old = old_cluster(root.path());
        let pgdata = root.path().join("pgdata");
        std::fs::create_dir_all(&pgdata).unwrap();
        let calls = root.path().join("calls");

        let (code, why) = move_old(&pgdata, &old, "db backup", &calls, None);
        assert_eq!(code, Some(1));
        assert!(why.contains("container backup uses the Docker volume"), "{why}");
        assert!(!calls.exists(), "postgres was stopped: {:?}", std::fs::read_to_string(&calls));

        std::fs::write(pgdata.join("stray"), "x").unwrap();
        let (code, why) = move_old(&pgdata, &old, "db", &calls, None);
        assert_eq!(code, Some(1));
        assert!(why.contains("is not empty"), "{why}");
        assert!(!calls.exists());
        std::fs::remove_file(pgdata.join("stray")).unwrap();

        // A copy that does not compare equal: thrown away, postgres started
        // again on the named volume, PGDATA still empty.
        let (code, why) = move_old(&pgdata, &old, "db", &calls, Some("#!/bin/sh\necho 'Files differ' >&2\nexit 1\n"));
        assert_eq!(code, Some(1));
        assert!(why.contains("differs from"), "{why}");
        assert_eq!(std::fs::read_to_string(&calls).unwrap(), "stop\nstart\n");
        assert!(!root.path().join("pgdata.upgrade-copy").exists(), "the copy is removed");
        assert_eq!(std::fs::read_dir(&pgdata).unwrap().count(), 0, "PGDATA stays empty");
    }

    #[test]
    fn the_script_parses_as_posix_sh() {
        let out = Command::new("sh").arg("-n").arg("-c").arg(script_text()).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
}
