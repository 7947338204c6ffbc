//! Steady-state reconcile figures for `scripts/bench`.
//!
//!   cargo run --example bench -- MANIFEST STATEFILE [RUNS]
//!
//! Loads a converged stack (the manifest and the state file `apply` wrote),
//! builds the engine the CLI builds, reconciles once to open the SSH
//! sessions, then reconciles RUNS more times in the same process and prints
//! medians as `key=value` lines:
//!
//! - `steady_reconcile_ms`: wall time of one `Engine::reconcile`
//! - `api_round_trips_per_host_steady`: round trips per host (SSH execs and
//!   Docker engine API requests) during one reconcile
//! - `ec2_calls_steady`: EC2 API calls during one reconcile
//!
//! Afterwards it times the parts of a reconcile on their own (the EC2
//! observe, each host's observe, the two HTTP checks) and prints that
//! breakdown on stderr.
//!
//! It fails when a reconcile is not steady (the stack is not Ready or an
//! action was carried out): the figures would not be about a steady state.
//! The state file is only read.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use votingstack::api::EndpointPolicy;
use votingstack::cli::{load_state, stack_with_state};
use votingstack::cloud::{NetworkLookup, StackIdentity};
use votingstack::engine::EngineSettings;
use votingstack::manifest::Manifest;
use votingstack::wiring;

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

fn fail(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("bench: {message}");
    ExitCode::FAILURE
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 || args.len() > 3 {
        return fail("usage: bench MANIFEST STATEFILE [RUNS]");
    }
    let manifest_path = PathBuf::from(&args[0]);
    let state_path = PathBuf::from(&args[1]);
    let runs: usize = match args.get(2).map(|r| r.parse()) {
        None => 20,
        Some(Ok(n)) if n > 0 => n,
        Some(_) => return fail("RUNS must be a positive number"),
    };

    let manifest = match Manifest::load(&manifest_path) {
        Ok(m) => m,
        Err(errors) => {
            let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
            return fail(lines.join("\n"));
        }
    };
    let mut state = match load_state(&state_path) {
        Ok(Some(s)) => s,
        Ok(None) => return fail(format!("{}: no state file; apply the stack first", state_path.display())),
        Err(e) => return fail(e),
    };
    let key = match manifest.ssh_key() {
        Ok(k) => k,
        Err(e) => return fail(e),
    };
    // The world's EC2 endpoint is allowed the way the binary allows it
    // (VOTINGSTACK_ALLOW_ENDPOINTS, which scripts/bench sets).
    let endpoints = match EndpointPolicy::from_env() {
        Ok(p) => p,
        Err(e) => return fail(e),
    };
    let settings = EngineSettings { endpoints, ..Default::default() };
    let engine = wiring::engine_for(&manifest.stack.spec, &Default::default(), wiring::ssh_hosts(), settings).await;

    // Warm-up: opens and pins the SSH sessions the measured runs reuse.
    let stack = stack_with_state(&manifest, &state);
    let warm = engine.reconcile(&stack, Ok(key.clone())).await;
    if !warm.is_ready() {
        return fail(format!("the stack is not Ready (phase {:?}); converge it first", warm.status.phase));
    }
    state.status = warm.status;

    let mut millis = Vec::with_capacity(runs);
    let mut ssh_per_host = Vec::with_capacity(runs);
    let mut ec2 = Vec::with_capacity(runs);
    for i in 0..runs {
        let stack = stack_with_state(&manifest, &state);
        let ssh_before = engine.hosts().round_trips();
        let ec2_before = engine.cloud().api_calls();
        let started = Instant::now();
        let outcome = engine.reconcile(&stack, Ok(key.clone())).await;
        let elapsed = started.elapsed();
        let ssh = engine.hosts().round_trips() - ssh_before;
        let calls = engine.cloud().api_calls() - ec2_before;
        if !outcome.is_ready() {
            return fail(format!("run {}: the stack left Ready (phase {:?})", i + 1, outcome.status.phase));
        }
        if !outcome.applied.is_empty() {
            let actions: Vec<String> = outcome.applied.iter().map(ToString::to_string).collect();
            return fail(format!("run {}: not steady, it carried out: {}", i + 1, actions.join("; ")));
        }
        let hosts = outcome.targets.len().max(1);
        eprintln!(
            "  steady reconcile {:>2}/{runs}: {:>8.2} ms, {ssh} SSH execs over {hosts} hosts, {calls} EC2 calls",
            i + 1,
            elapsed.as_secs_f64() * 1000.0
        );
        millis.push(elapsed.as_secs_f64() * 1000.0);
        ssh_per_host.push(ssh as f64 / hosts as f64);
        ec2.push(calls as f64);
        state.status = outcome.status;
    }

    // Where the time goes: each part on its own, a few times.
    let stack = stack_with_state(&manifest, &state);
    let ident = StackIdentity::of(&stack);
    let mut parts: Vec<(String, Vec<f64>)> = Vec::new();
    let mut ec2_observe = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        let provided = stack.spec.network.provided();
        let known = state.status.network.as_ref();
        if let Err(e) = engine.cloud().observe(&ident, known, provided.as_ref(), NetworkLookup::TrustStatus).await {
            return fail(format!("EC2 observe: {e}"));
        }
        ec2_observe.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    parts.push(("EC2 observe (DescribeInstances)".into(), ec2_observe));
    let targets = engine.reconcile(&stack, Ok(key.clone())).await.targets;
    for target in &targets {
        let mut times = Vec::new();
        for _ in 0..5 {
            let started = Instant::now();
            if let Err(e) = engine.hosts().observe(target, &key).await {
                return fail(format!("observe {}: {e}", target.describe()));
            }
            times.push(started.elapsed().as_secs_f64() * 1000.0);
        }
        parts.push((format!("observe {} (1 SSH exec)", target.describe()), times));
    }
    for url in [&state.status.vote_url, &state.status.result_url].into_iter().flatten() {
        let mut times = Vec::new();
        for _ in 0..5 {
            let started = Instant::now();
            let _ = engine.hosts().http_status(url).await;
            times.push(started.elapsed().as_secs_f64() * 1000.0);
        }
        parts.push((format!("HTTP GET {url}"), times));
    }
    eprintln!("  where a steady reconcile spends its time (median of 5, each part alone):");
    for (what, times) in parts {
        eprintln!("    {:>8.1} ms  {what}", median(times));
    }

    println!("steady_reconcile_ms={:.1}", median(millis));
    println!("api_round_trips_per_host_steady={}", median(ssh_per_host));
    println!("ec2_calls_steady={}", median(ec2));
    ExitCode::SUCCESS
}
