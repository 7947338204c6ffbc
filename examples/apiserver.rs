//! The tests' in-memory Kubernetes API double (`tests/it/apiserver.rs`),
//! served over HTTP on 127.0.0.1 for a real `votingstack controller`
//! process, as the e2e controller test does in-process. Used by
//! `scripts/bench --stacks`.
//!
//!   cargo run --example apiserver [-- KUBECONFIG]
//!
//! Prints the address it serves (`127.0.0.1:PORT`) on the first line of
//! stdout; with KUBECONFIG, also writes a kubeconfig for it there (plain
//! HTTP, no credentials, namespace `default`). Serves until killed. Only a
//! test double: no authentication, everything in memory.

#[allow(dead_code)]
#[path = "../tests/it/apiserver.rs"]
mod apiserver;

use std::io::Write;

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let api = apiserver::ApiServer::new();
    let (addr, server) = api.serve_http().await;
    if let Some(path) = std::env::args_os().nth(1) {
        std::fs::write(
            path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: double\n  cluster:\n    server: http://{addr}\n\
                 contexts:\n- name: double\n  context:\n    cluster: double\n    user: nobody\n    namespace: default\n\
                 users:\n- name: nobody\n  user: {{}}\ncurrent-context: double\n"
            ),
        )?;
    }
    let mut out = std::io::stdout();
    writeln!(out, "{addr}")?;
    out.flush()?;
    let _ = server.await;
    Ok(())
}
