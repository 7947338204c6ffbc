//! The proxy on the frontend host (`updateStrategy: ZeroDowntime`): its
//! nginx configuration, derived from the spec here and only here.
//!
//! nginx listens on [`VOTE_LISTEN`] and [`RESULT_LISTEN`] inside the
//! container (published as `ports.vote` and `ports.result`) and forwards to
//! the current vote and result containers by name over the stack's Docker
//! network, resolved through Docker's DNS at request time. Which container
//! is current is one small file per role ([`target_file`]): switching is
//! rewriting that file and a graceful `nginx -s reload`, whose old workers
//! finish the requests they hold while new ones take the next.

use crate::model::desired::{RESULT_CONTAINER, VOTE_CONTAINER};

/// Ports nginx listens on inside the proxy container.
pub const VOTE_LISTEN: u16 = 80;
pub const RESULT_LISTEN: u16 = 81;
/// Port vote and result listen on in their containers (upstream's).
pub const APP_PORT: u16 = 80;
/// Where the proxy keeps its configuration.
pub const CONF_DIR: &str = "/etc/votingstack-proxy";
/// The main configuration file.
pub const CONF_FILE: &str = "/etc/votingstack-proxy/nginx.conf";
/// Environment variables the start script reads: the main configuration
/// (part of the container's hash) and the first targets (not: later ones
/// come by reload).
pub const CONF_ENV: &str = "VS_PROXY_CONF";
pub const VOTE_TARGET_ENV: &str = "VS_PROXY_VOTE";
pub const RESULT_TARGET_ENV: &str = "VS_PROXY_RESULT";
/// How long a replaced container keeps serving the requests it holds
/// after the switch, before it is stopped.
pub const DRAIN_SECONDS: u64 = 5;
/// How long a new container has to answer HTTP 200 on the Docker network.
pub const ANSWER_SECONDS: u64 = 60;

/// The file naming the current container of `role` (`vote` or `result`).
pub fn target_file(role: &str) -> String {
    format!("{CONF_DIR}/{role}.conf")
}

/// nginx variable holding the current container of `role`.
fn variable(role: &str) -> String {
    format!("vs_{role}")
}

/// The content of [`target_file`]: `role` is served by `container`.
pub fn target_conf(role: &str, container: &str) -> String {
    format!("map $host ${} {{ default {container}; }}\n", variable(role))
}

/// The main nginx configuration. The proxy adds no state of its own:
/// everything it needs is here and in the two target files.
pub fn nginx_conf() -> String {
    let server = |listen: u16, role: &str| {
        format!(
            "  server {{\n    listen {listen};\n    location / {{\n      proxy_pass http://${var}:{APP_PORT};\n    }}\n  }}\n",
            var = variable(role)
        )
    };
    format!(
        "worker_processes 1;\n\
         pid /tmp/votingstack-proxy.pid;\n\
         error_log /dev/stderr warn;\n\
         # Workers of an earlier configuration close what they hold within this.\n\
         worker_shutdown_timeout 10s;\n\
         events {{ worker_connections 1024; }}\n\
         http {{\n\
         \x20 access_log off;\n\
         \x20 client_body_temp_path /tmp/proxy-body;\n\
         \x20 proxy_temp_path /tmp/proxy-temp;\n\
         \x20 fastcgi_temp_path /tmp/proxy-fastcgi;\n\
         \x20 uwsgi_temp_path /tmp/proxy-uwsgi;\n\
         \x20 scgi_temp_path /tmp/proxy-scgi;\n\
         \x20 # Docker's DNS on the stack's network: container names, looked up per request.\n\
         \x20 resolver 127.0.0.11 valid=5s ipv6=off;\n\
         \x20 include {vote_file};\n\
         \x20 include {result_file};\n\
         \x20 map $http_upgrade $vs_connection {{ default upgrade; '' ''; }}\n\
         \x20 proxy_http_version 1.1;\n\
         \x20 proxy_set_header Host $http_host;\n\
         \x20 proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n\
         \x20 proxy_set_header Upgrade $http_upgrade;\n\
         \x20 proxy_set_header Connection $vs_connection;\n\
         \x20 proxy_read_timeout 1h;\n\
         {vote}{result}}}\n",
        vote_file = target_file(VOTE_CONTAINER),
        result_file = target_file(RESULT_CONTAINER),
        vote = server(VOTE_LISTEN, VOTE_CONTAINER),
        result = server(RESULT_LISTEN, RESULT_CONTAINER),
    )
}

/// The proxy container's command: writes the configuration from its
/// environment, the target files only when they are missing (a restarted
/// proxy keeps the targets it was last switched to), and runs nginx in the
/// foreground.
pub fn start_command() -> Vec<String> {
    let script = format!(
        "set -e; mkdir -p {CONF_DIR}; printf '%s\\n' \"${CONF_ENV}\" > {CONF_FILE}; \
         [ -s {vote} ] || printf '%s' \"${VOTE_TARGET_ENV}\" > {vote}; \
         [ -s {result} ] || printf '%s' \"${RESULT_TARGET_ENV}\" > {result}; \
         exec nginx -c {CONF_FILE} -g 'daemon off;'",
        vote = target_file(VOTE_CONTAINER),
        result = target_file(RESULT_CONTAINER),
    );
    vec!["sh".into(), "-c".into(), script]
}

/// The proxy's health check: its nginx master runs.
pub fn health_command() -> String {
    "kill -0 \"$(cat /tmp/votingstack-proxy.pid)\"".into()
}

/// Run in the proxy: exits 0 once `container` answers HTTP 200 on `/`
/// over the Docker network (with `wget`, else `curl`).
pub fn answers_command(container: &str) -> Vec<String> {
    let url = format!("http://{container}:{APP_PORT}/");
    let script = format!(
        "if command -v wget >/dev/null 2>&1; then wget -q -T 3 -O /dev/null {url}; \
         else curl -fsS -m 3 -o /dev/null {url}; fi"
    );
    vec!["sh".into(), "-c".into(), script]
}

/// Run in the proxy: points `role` at `container` and reloads nginx
/// gracefully; the file is replaced whole, and a configuration nginx
/// refuses is put back before anything is reloaded.
pub fn switch_command(role: &str, container: &str) -> Vec<String> {
    let file = target_file(role);
    let script = format!(
        "set -e; cp {file} {file}.previous; printf '%s' '{conf}' > {file}.next; mv {file}.next {file}; \
         if ! nginx -t -q -c {CONF_FILE}; then mv {file}.previous {file}; exit 1; fi; \
         nginx -s reload -c {CONF_FILE}",
        conf = target_conf(role, container),
    );
    vec!["sh".into(), "-c".into(), script]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_proxy_listens_on_both_pages_and_forwards_to_the_named_targets() {
        let conf = nginx_conf();
        assert!(conf.contains("listen 80;") && conf.contains("listen 81;"), "{conf}");
        assert!(conf.contains("proxy_pass http://$vs_vote:80;"), "{conf}");
        assert!(conf.contains("proxy_pass http://$vs_result:80;"), "{conf}");
        assert!(conf.contains("include /etc/votingstack-proxy/vote.conf;"), "{conf}");
        assert!(conf.contains("resolver 127.0.0.11"), "names resolve through Docker's DNS: {conf}");
        assert_eq!(conf.matches('{').count(), conf.matches('}').count(), "balanced: {conf}");
        assert_eq!(target_conf("vote", "vote-0123abcd"), "map $host $vs_vote { default vote-0123abcd; }\n");
    }

    #[test]
    fn a_restarted_proxy_keeps_its_last_targets_and_a_switch_reloads_gracefully() {
        let start = start_command().join(" ");
        assert!(start.contains("[ -s /etc/votingstack-proxy/vote.conf ] ||"), "{start}");
        assert!(start.contains("exec nginx -c /etc/votingstack-proxy/nginx.conf"), "{start}");
        let switch = switch_command("result", "result-89abcdef").join(" ");
        assert!(switch.contains("nginx -s reload"), "{switch}");
        assert!(!switch.contains("restart") && !switch.contains("nginx -s stop"), "{switch}");
        assert!(switch.contains("default result-89abcdef;"), "{switch}");
        assert!(switch.find("nginx -t").unwrap() < switch.find("nginx -s reload").unwrap(), "{switch}");
        assert!(answers_command("vote-0123abcd").join(" ").contains("http://vote-0123abcd:80/"));
    }
}
