//! The committed diagrams are what their DOT sources render to: each
//! diagrams/*.svg is compared byte for byte with a fresh `dot -Tsvg`.

use std::path::PathBuf;
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn sources() -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(repo().join("diagrams"))
        .expect("diagrams/")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().and_then(|e| e.to_str()) == Some("dot"))
        .collect();
    out.sort();
    out
}

fn render_svg(src: &std::path::Path) -> Vec<u8> {
    let out = Command::new("dot").arg("-Tsvg").arg(src).output().unwrap_or_else(|e| {
        panic!("Graphviz `dot` is required (apt-get install graphviz; see scripts/apt-packages.txt): {e}")
    });
    assert!(out.status.success(), "dot failed on {}: {}", src.display(), String::from_utf8_lossy(&out.stderr));
    out.stdout
}

fn dot_source(name: &str) -> String {
    std::fs::read_to_string(repo().join("diagrams").join(name)).unwrap()
}

#[test]
fn diagrams_both_sources_exist_with_renders() {
    let names: Vec<String> = sources().iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
    for needed in ["architecture.dot", "reconcile.dot"] {
        assert!(names.iter().any(|n| n == needed), "diagrams/{needed} is missing");
    }
    for src in sources() {
        for ext in ["svg", "png"] {
            let render = src.with_extension(ext);
            let len = std::fs::metadata(&render).map(|m| m.len()).unwrap_or(0);
            assert!(len > 0, "{} is missing; run scripts/render-diagrams", render.display());
        }
        let png = std::fs::read(src.with_extension("png")).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "{} is a PNG", src.with_extension("png").display());
    }
}

#[test]
fn diagrams_committed_svg_matches_a_fresh_render() {
    let srcs = sources();
    assert!(!srcs.is_empty());
    for src in srcs {
        let fresh = render_svg(&src);
        let committed = std::fs::read(src.with_extension("svg")).unwrap_or_default();
        assert!(
            fresh == committed,
            "{} is stale: run scripts/render-diagrams and commit the result",
            src.with_extension("svg").display()
        );
    }
}

#[test]
fn diagrams_render_deterministically() {
    for src in sources() {
        assert_eq!(render_svg(&src), render_svg(&src), "{} renders differently twice", src.display());
    }
}

#[test]
fn diagrams_render_script_check_passes() {
    let out = Command::new("bash")
        .arg(repo().join("scripts/render-diagrams"))
        .arg("--check")
        .output()
        .expect("run scripts/render-diagrams --check");
    assert!(
        out.status.success(),
        "scripts/render-diagrams --check failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn diagrams_architecture_shows_hosts_ports_and_rules() {
    let dot = dot_source("architecture.dot");
    for needed in [
        "frontend host",
        "backend host",
        "database host",
        "vote",
        "result",
        "redis",
        "worker",
        "postgres",
        ":80",
        ":81",
        "6379",
        "5432",
        ":22",
        "--add-host redis:",
        "--add-host db:",
        "webIngressCidrs",
        "sshIngressCidrs",
        "SG backend: 6379 from SG frontend",
        "SG database: 5432 from SG backend, SG frontend",
        "kube-apiserver",
        "EC2 API",
        "SSH",
    ] {
        assert!(dot.contains(needed), "architecture.dot lacks {needed:?}");
    }
}

#[test]
fn diagrams_reconcile_shows_the_engine_and_both_shells() {
    let dot = dot_source("reconcile.dot");
    for edge in ["validate -> desired -> observe -> plan -> act -> status", "controller -> validate", "cli -> validate"]
    {
        assert!(dot.contains(edge), "reconcile.dot lacks {edge:?}");
    }
}
