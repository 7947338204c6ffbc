//! `votingstack`: the operator (`controller`) and the CLI (`plan`, `apply`,
//! `destroy`, `snapshot`, `crd`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{ArgAction, Args, Parser, Subcommand};
use votingstack::api::EndpointPolicy;
use votingstack::cli::{self, ApplyOptions, CliError};
use votingstack::cloud::Installation;
use votingstack::engine::{EngineSettings, Teardown};
use votingstack::manifest::Manifest;
use votingstack::telemetry::{self, LogFormat};
use votingstack::wiring;

#[derive(Parser)]
#[command(name = "votingstack", version, about = "Deploys the three-tier voting app on EC2 and keeps it alive")]
struct Cli {
    /// Log line format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "VOTINGSTACK_LOG_FORMAT")]
    log_format: LogFormat,
    /// An EC2 endpoint besides AWS's own that `spec.aws.endpoint` may name,
    /// as scheme://host[:port] (matched exactly): the operator sends its
    /// signed AWS requests there. Repeatable; by default only https:// EC2
    /// endpoints of AWS are used.
    #[arg(
        long = "allow-endpoint",
        value_name = "URL",
        global = true,
        env = "VOTINGSTACK_ALLOW_ENDPOINTS",
        value_delimiter = ','
    )]
    allow_endpoints: Vec<String>,
    /// Name of this operator installation: every AWS resource it creates is
    /// tagged votingstack.dev/installation=NAME, and it adopts, changes and
    /// deletes only resources with that tag (resources an older version
    /// made without one are tagged and kept). 1 to 63 characters of a-z,
    /// 0-9 and '-'. Give two installations in one AWS account different
    /// names and IAM policies scoped to them (docs/iam-policy.json).
    #[arg(long, value_name = "NAME", global = true, default_value = Installation::DEFAULT, env = "VOTINGSTACK_INSTALLATION")]
    installation: Installation,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the Kubernetes operator.
    Controller(ControllerArgs),
    /// Print the CustomResourceDefinition (crds/votingstack.yaml).
    Crd,
    /// Show what apply would change; changes nothing.
    Plan(PlanArgs),
    /// Create or repair the stack until it matches the manifest.
    Apply(ApplyArgs),
    /// Tear the stack down (per its deletionPolicy; Snapshot, the default,
    /// keeps a final snapshot of the data volume and prints its id).
    Destroy(DestroyArgs),
    /// Snapshot the data volume now, wait until the snapshot is completed,
    /// and print its id.
    Snapshot(SnapshotArgs),
}

#[derive(Args)]
struct DestroyArgs {
    #[command(flatten)]
    file: FileArgs,
    /// Give up waiting for the final snapshot after this many seconds (the
    /// state is kept: run destroy again to go on).
    #[arg(long, default_value_t = 3600)]
    timeout_seconds: u64,
}

#[derive(Args)]
struct SnapshotArgs {
    #[command(flatten)]
    file: FileArgs,
    /// Give up waiting for the snapshot to complete after this many seconds
    /// (EC2 goes on copying it).
    #[arg(long, default_value_t = 1800)]
    timeout_seconds: u64,
}

#[derive(Args)]
struct FileArgs {
    /// Manifest with the VotingStack and the Secret it references.
    #[arg(short = 'f', long = "file")]
    file: PathBuf,
    /// State file (default: .votingstack/<namespace>.<name>.json beside the manifest).
    #[arg(long)]
    state: Option<PathBuf>,
}

#[derive(Args)]
struct PlanArgs {
    #[command(flatten)]
    file: FileArgs,
    /// Exit 2 when there are changes (0 when none), like terraform plan -detailed-exitcode.
    #[arg(long)]
    detailed_exitcode: bool,
    /// Plan against empty observed state without contacting AWS or the hosts.
    #[arg(long)]
    offline: bool,
}

#[derive(Args)]
struct ApplyArgs {
    #[command(flatten)]
    file: FileArgs,
    /// Keep reconciling until the stack is Ready.
    #[arg(long)]
    wait: bool,
    /// After Ready, keep watching and repairing drift until interrupted.
    #[arg(long)]
    watch: bool,
    /// Give up waiting after this many seconds.
    #[arg(long, default_value_t = 1800)]
    timeout_seconds: u64,
    /// Once Ready, print when each phase of the deploy started and ended
    /// (network, instances, SSH, Docker, pulls, containers, readiness,
    /// smoke test), in seconds since apply started.
    #[arg(long)]
    timeline: bool,
    /// With --watch: seconds between reconciles of a Ready stack (drift of
    /// containers wakes one at once; EC2 drift waits for this).
    #[arg(long, default_value_t = 60)]
    resync_seconds: u64,
}

#[derive(Args)]
struct ControllerArgs {
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, default_value = "0.0.0.0:8080", env = "VOTINGSTACK_METRICS_ADDR")]
    metrics_addr: SocketAddr,
    /// Take the coordination.k8s.io Lease before reconciling, so two
    /// operator processes never reconcile at once (on by default;
    /// `--leader-election=false` for a single process run by hand).
    #[arg(
        long,
        action = ArgAction::Set,
        default_value_t = true,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true"
    )]
    leader_election: bool,
    /// Namespace of the Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "votingstack-system")]
    lease_namespace: String,
    /// Base of this process's identity in the Lease (the pod name); a random
    /// suffix is always added so no two processes share an identity.
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Seconds between reconciles of a Ready stack (container drift wakes one at once).
    #[arg(long, default_value_t = 60)]
    resync_seconds: u64,
    /// Watch VotingStacks and Secrets in these namespaces only (a Role in
    /// each suffices): repeat the flag or separate them with commas (also in
    /// the environment variable). Every namespace when unset or empty.
    #[arg(long = "watch-namespace", value_name = "NS", env = "VOTINGSTACK_WATCH_NAMESPACE", value_delimiter = ',')]
    watch_namespace: Vec<String>,
    /// Stacks reconciled at once.
    #[arg(long, default_value_t = votingstack::controller::DEFAULT_CONCURRENCY, env = "VOTINGSTACK_CONCURRENCY")]
    concurrency: u16,
    /// Seconds one DescribeInstances (and DescribeSecurityGroups) of a
    /// region serves every stack observed after it; any change the operator
    /// makes in EC2 looks again at once. 0 shares only calls in flight.
    #[arg(long, default_value_t = 5.0, env = "VOTINGSTACK_INVENTORY_WINDOW_SECONDS")]
    inventory_window_seconds: f64,
    /// On SIGTERM, seconds running reconciles may go on; then each stops at
    /// its next step boundary (at most 10 s more). Keep the pod's
    /// terminationGracePeriodSeconds above this plus 25.
    #[arg(long, default_value_t = 20, env = "VOTINGSTACK_SHUTDOWN_DEADLINE_SECONDS")]
    shutdown_deadline_seconds: u64,
    /// /healthz fails when the controller, while leading, has made no
    /// progress for this many resync periods (or one reconcile has run that long).
    #[arg(long, default_value_t = votingstack::liveness::DEFAULT_LIVENESS_RESYNCS)]
    liveness_resyncs: u32,
}

fn load(args: &FileArgs) -> Result<(Manifest, PathBuf), CliError> {
    let manifest = Manifest::load(&args.file).map_err(CliError::Manifest)?;
    let state = args.state.clone().unwrap_or_else(|| cli::default_state_path(&manifest));
    Ok((manifest, state))
}

async fn run(cli: Cli) -> Result<ExitCode, CliError> {
    let endpoints = EndpointPolicy::allowing(&cli.allow_endpoints)?;
    // Every engine this process builds refuses other endpoints.
    let settings = EngineSettings { endpoints: endpoints.clone(), ..Default::default() };
    match cli.command {
        Command::Crd => {
            let yaml = votingstack::api::crd_yaml()?;
            print!("{yaml}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Plan(args) => {
            let (manifest, state) = load(&args.file)?;
            let engine = if args.offline {
                None
            } else {
                Some(wiring::planner_for(&manifest.stack.spec, &cli.installation, wiring::ssh_hosts(), settings).await)
            };
            let plan = cli::plan(engine.as_ref(), &manifest, &state).await?;
            print!("{}", cli::render_plan(&manifest.stack, &plan));
            Ok(if args.detailed_exitcode && !plan.is_empty() { ExitCode::from(2) } else { ExitCode::SUCCESS })
        }
        Command::Apply(args) => {
            let (manifest, state) = load(&args.file)?;
            let hosts = wiring::ssh_hosts();
            let settings = EngineSettings { resync: Duration::from_secs(args.resync_seconds.max(1)), ..settings };
            let engine = wiring::engine_for(&manifest.stack.spec, &cli.installation, hosts.clone(), settings).await;
            let opts = ApplyOptions {
                wait: args.wait,
                watch: args.watch,
                timeout: Duration::from_secs(args.timeout_seconds),
                timeline: args.timeline,
            };
            let (event_tx, event_rx) = tokio::sync::mpsc::channel(64);
            let hub = wiring::DriftHub::new(hosts, event_tx);
            let (wake_tx, wake_rx) = tokio::sync::mpsc::channel(1);
            tokio::spawn(cli::report_drift(event_rx, wake_tx));
            let mut wake_rx = Some(wake_rx);
            let manifest_stack = votingstack::cloud::StackIdentity::of(&manifest.stack).tag_value();
            cli::apply(&engine, &manifest, &state, &opts, |outcome, key| {
                if opts.watch {
                    hub.ensure(&manifest_stack, &outcome.targets, key);
                }
                wake_rx.take()
            })
            .await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Destroy(args) => {
            let (manifest, state) = load(&args.file)?;
            let engine =
                wiring::engine_for(&manifest.stack.spec, &cli.installation, wiring::ssh_hosts(), settings).await;
            let timeout = Duration::from_secs(args.timeout_seconds);
            match cli::destroy(&engine, &manifest, &state, timeout).await? {
                Teardown::Retained { data_volume } => {
                    println!("deletionPolicy Retain: every AWS resource was left in place");
                    if let Some(id) = data_volume {
                        println!("  data volume {id} keeps the database");
                    }
                }
                Teardown::Deleted(report) => {
                    for id in &report.deleted {
                        println!("  - deleted {id}");
                    }
                    for id in &report.snapshots {
                        println!("  final snapshot {id} keeps the database (spec.database.restoreFromSnapshot: {id})");
                    }
                    println!("{} destroyed ({} resources).", manifest.stack.key(), report.deleted.len());
                }
                Teardown::SnapshotPending { snapshot_id } => {
                    println!("final snapshot {snapshot_id} is still being copied: run destroy again to go on");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Snapshot(args) => {
            let (manifest, state) = load(&args.file)?;
            let engine =
                wiring::engine_for(&manifest.stack.spec, &cli.installation, wiring::ssh_hosts(), settings).await;
            let id = cli::snapshot(&engine, &manifest, &state, Duration::from_secs(args.timeout_seconds)).await?;
            println!("{id}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Controller(args) => {
            raise_open_files_limit();
            let client = kube::Client::try_default().await?;
            let opts = votingstack::controller::ControllerOptions {
                metrics_addr: args.metrics_addr,
                leader_election: args.leader_election,
                lease_namespace: args.lease_namespace,
                identity: votingstack::leader::unique_identity(args.identity.as_deref()),
                resync: Duration::from_secs(args.resync_seconds.max(1)),
                watch_namespaces: watch_namespaces(&args.watch_namespace),
                concurrency: args.concurrency.max(1),
                inventory_window: Duration::from_secs_f64(match args.inventory_window_seconds {
                    w if w.is_finite() => w.clamp(0.0, 3600.0),
                    _ => 0.0,
                }),
                shutdown_deadline: Duration::from_secs(args.shutdown_deadline_seconds),
                liveness_resyncs: args.liveness_resyncs.max(1),
                endpoints,
                installation: cli.installation,
            };
            votingstack::controller::main(client, opts).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The namespaces given, trimmed, without blanks or repeats, in the order
/// given (none: every namespace).
fn watch_namespaces(given: &[String]) -> Vec<String> {
    let mut namespaces: Vec<String> = Vec::new();
    for ns in given.iter().map(|ns| ns.trim()).filter(|ns| !ns.is_empty()) {
        if !namespaces.iter().any(|seen| seen == ns) {
            namespaces.push(ns.to_string());
        }
    }
    namespaces
}

/// Raises the soft limit of open files to the hard one: the controller
/// holds an SSH connection per host (one per stack through the jump host),
/// and a container may start with a soft limit of 1,024 (docs/scaling.md).
fn raise_open_files_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::info!(limit, "open files limit"),
        Err(e) => tracing::warn!("could not raise the open files limit: {e}"),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The CLI prints its own progress; logs are for warnings unless RUST_LOG says more.
    let level = if matches!(cli.command, Command::Controller(_)) { "info" } else { "warn" };
    telemetry::init(cli.log_format, level);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(cli));
    // Tasks still running (a dropped reconcile's blocking call) must not
    // hold up the exit: the shutdown's own bounds have passed.
    runtime.shutdown_timeout(Duration::from_secs(1));
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn controller(args: &[&str]) -> ControllerArgs {
        let argv = ["votingstack", "controller"].iter().chain(args);
        match Cli::try_parse_from(argv).map(|c| c.command) {
            Ok(Command::Controller(a)) => a,
            Ok(_) => panic!("not the controller"),
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn leader_election_is_on_unless_turned_off() {
        assert!(controller(&[]).leader_election, "on by default");
        assert!(controller(&["--leader-election"]).leader_election, "the old flag still says on");
        assert!(controller(&["--leader-election=true"]).leader_election);
        assert!(!controller(&["--leader-election=false"]).leader_election);
        let argv = ["votingstack", "controller", "--leader-election=maybe"];
        assert!(Cli::try_parse_from(argv).is_err(), "only true or false");
    }

    #[test]
    fn shutdown_deadline_and_liveness_have_defaults() {
        let a = controller(&[]);
        assert_eq!((a.shutdown_deadline_seconds, a.liveness_resyncs), (20, 3));
        let a = controller(&["--shutdown-deadline-seconds", "5", "--liveness-resyncs", "4"]);
        assert_eq!((a.shutdown_deadline_seconds, a.liveness_resyncs), (5, 4));
    }

    #[test]
    fn installation_is_default_unless_named_and_names_are_checked() {
        // One test touches the variable, so no other test sees it change.
        std::env::remove_var("VOTINGSTACK_INSTALLATION");
        let installation = |argv: &[&str]| Cli::try_parse_from(argv).map(|c| c.installation.to_string());
        assert_eq!(installation(&["votingstack", "controller"]).unwrap(), "default");
        assert_eq!(installation(&["votingstack", "controller", "--installation", "team-a"]).unwrap(), "team-a");
        assert_eq!(installation(&["votingstack", "--installation=team-b", "apply", "-f", "s.yaml"]).unwrap(), "team-b");
        assert_eq!(
            installation(&["votingstack", "destroy", "-f", "s.yaml", "--installation", "ci-7"]).unwrap(),
            "ci-7"
        );
        assert_eq!(installation(&["votingstack", "plan", "-f", "s.yaml"]).unwrap(), "default");
        for bad in ["Team-A", "team_a", "", "-a", &"a".repeat(64)] {
            let flag = format!("--installation={bad}");
            let err = installation(&["votingstack", "controller", &flag]).expect_err(bad).to_string();
            assert!(err.contains("--installation") && err.contains("63 characters"), "{bad:?}: {err}");
        }
        std::env::set_var("VOTINGSTACK_INSTALLATION", "from-env");
        assert_eq!(installation(&["votingstack", "controller"]).unwrap(), "from-env");
        std::env::remove_var("VOTINGSTACK_INSTALLATION");
    }

    fn namespaces_of(args: &[&str]) -> Vec<String> {
        let cli = Cli::try_parse_from(args).expect("arguments parse");
        let Command::Controller(args) = cli.command else { panic!("not the controller") };
        watch_namespaces(&args.watch_namespace)
    }

    #[test]
    fn watch_namespace_takes_a_list_from_flags_and_the_environment() {
        // One test touches the variable, so no other test sees it change.
        std::env::remove_var("VOTINGSTACK_WATCH_NAMESPACE");
        assert!(namespaces_of(&["votingstack", "controller"]).is_empty(), "every namespace by default");
        assert_eq!(
            namespaces_of(&[
                "votingstack",
                "controller",
                "--watch-namespace",
                "team-a",
                "--watch-namespace",
                "team-b, team-c",
                "--watch-namespace=team-a"
            ]),
            ["team-a", "team-b", "team-c"]
        );
        std::env::set_var("VOTINGSTACK_WATCH_NAMESPACE", "voting,team-b,");
        assert_eq!(namespaces_of(&["votingstack", "controller"]), ["voting", "team-b"]);
        std::env::set_var("VOTINGSTACK_WATCH_NAMESPACE", "");
        assert!(namespaces_of(&["votingstack", "controller"]).is_empty(), "empty: every namespace");
        std::env::remove_var("VOTINGSTACK_WATCH_NAMESPACE");
    }
}
