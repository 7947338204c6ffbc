//! The Docker Engine API of one host, over its SSH session, and the cache
//! of each host's client ([`SshHosts::docker_api`]). How this fits with the
//! shell steps on a host: see [`crate::host`].
//!
//! Each API connection is an exec channel running `docker system
//! dial-stdio`, the way `docker -H ssh://HOST` reaches a remote daemon: the
//! channel carries the Docker API (HTTP), which bollard speaks through a
//! custom transport. Only the command that starts `dial-stdio` runs in a
//! shell, and nothing is left running: dropping a request closes its
//! channel, which ends `dial-stdio`, and Docker cancels what the request
//! started (a pull stops when its client goes away).
//!
//! One long-lived connection carries a host's ordinary requests, one at a
//! time (HTTP/1 has no multiplexing). A request that takes its connection
//! over for good (the events stream, an attached exec) gets a channel of
//! its own.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bollard::errors::Error as ApiError;
use bollard::{BollardRequest, ClientVersion, Docker};
use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{HeaderValue, CONNECTION, HOST, UPGRADE};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::sync::Mutex;
use tracing::debug;

use super::facts::check_instance;
use super::hosts::SshHosts;
use super::ssh::Session;
use super::{HostError, HostTarget, SshKey};

/// The exec command of every API connection: `docker system dial-stdio`,
/// through `sudo -n` when the login user may not use Docker's socket.
/// Exit 127 says the host has no Docker CLI at all.
const DIAL_COMMAND: &str = "command -v docker >/dev/null 2>&1 || exit 127; \
if [ \"$(id -u)\" = 0 ] || [ -w /var/run/docker.sock ] || ! command -v sudo >/dev/null 2>&1; \
then exec docker system dial-stdio; else exec sudo -n docker system dial-stdio; fi";

/// The API version the operator speaks: Docker 20.10 (Debian 12's
/// `docker.io`) and everything newer answer it.
const API_VERSION: ClientVersion = ClientVersion { major_version: 1, minor_version: 41 };

/// How long a request may wait for the connection to finish the previous
/// response before it opens a fresh connection instead.
const READY_WAIT: Duration = Duration::from_secs(5);

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type ApiBody = UnsyncBoxBody<Bytes, BoxError>;

/// A host's Docker API client, bound to one SSH session.
pub(super) struct DockerApi {
    pub docker: Docker,
}

impl DockerApi {
    /// A client whose requests travel over `session`. `timeout` bounds each
    /// request until its response head arrives; callers bound bodies and
    /// streams themselves. Every request adds one to `counter`.
    pub(super) fn over(
        session: Arc<Session>,
        timeout: Duration,
        counter: Arc<AtomicU64>,
    ) -> Result<DockerApi, ApiError> {
        let shared: Arc<Mutex<Option<SendRequest<ApiBody>>>> = Arc::new(Mutex::new(None));
        let transport = move |req: BollardRequest| {
            let session = session.clone();
            let shared = shared.clone();
            counter.fetch_add(1, Ordering::Relaxed);
            async move { send(&session, &shared, req).await }
        };
        let docker = Docker::connect_with_custom_transport(
            transport,
            Some("http://docker"),
            timeout.as_secs().max(1),
            &API_VERSION,
        )?;
        Ok(DockerApi { docker })
    }
}

/// The Docker API of a host, bound to the session it rides on.
#[derive(Clone)]
pub(super) struct DockerClient {
    pub session: Arc<Session>,
    pub api: Arc<DockerApi>,
}

impl SshHosts {
    /// The host's Docker API client, on the pooled session. A new session
    /// first proves it reached the right instance (see [`Self::facts`]).
    pub(super) async fn docker_api(&self, target: &HostTarget, key: &SshKey) -> Result<DockerClient, HostError> {
        let session = self.session(target, key).await?;
        let slot = self.slot(target);
        let mut cached = slot.docker.lock().await;
        if let Some(client) = cached.as_ref().filter(|c| Arc::ptr_eq(&c.session, &session)) {
            return Ok(client.clone());
        }
        *cached = None;
        let facts = self.facts(target, key).await?;
        check_instance(target, &facts)?;
        let timeout = Duration::from_secs(u64::from(target.command_timeout_secs.max(1)));
        let api = DockerApi::over(session.clone(), timeout, self.api_requests.clone()).map_err(|e| {
            HostError::Unreachable {
                host: target.describe(),
                message: format!("cannot set up the Docker engine API client: {e}"),
            }
        })?;
        let client = DockerClient { session, api: Arc::new(api) };
        *cached = Some(client.clone());
        Ok(client)
    }

    /// Forgets the host's Docker API client (its connection is dead, or a
    /// request on it timed out): the next call opens a new one.
    pub(super) async fn forget_docker_api(&self, target: &HostTarget) {
        *self.slot(target).docker.lock().await = None;
    }

    /// Runs one Docker API operation with a deadline. A request that runs
    /// out of time is dropped, which closes its connection and makes Docker
    /// cancel it; a connection that failed is replaced next time.
    pub(super) async fn bounded<T>(
        &self,
        target: &HostTarget,
        what: &str,
        limit: Duration,
        op: impl Future<Output = Result<T, ApiError>>,
    ) -> Result<T, HostError> {
        match tokio::time::timeout(limit, op).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                if status_of(&e).is_none() {
                    self.forget_docker_api(target).await;
                }
                Err(docker_failure(target, what, e))
            }
            Err(_) => {
                self.forget_docker_api(target).await;
                let seconds = u32::try_from(limit.as_secs()).unwrap_or(u32::MAX);
                Err(HostError::Timeout { host: target.describe(), what: what.to_string(), seconds })
            }
        }
    }

    /// The deadline of one call on `target`.
    pub(super) fn command_limit(target: &HostTarget) -> Duration {
        Duration::from_secs(u64::from(target.command_timeout_secs.max(1)))
    }
}

/// An answer from Docker with this HTTP status.
pub(super) fn status_of(e: &ApiError) -> Option<u16> {
    match e {
        ApiError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

/// A failed Docker API call as the host's error.
pub(super) fn docker_failure(target: &HostTarget, what: &str, e: ApiError) -> HostError {
    match e {
        ApiError::DockerResponseServerError { status_code, message } => {
            HostError::Docker { host: target.describe(), step: what.to_string(), status: Some(status_code), message }
        }
        ApiError::DockerStreamError { error } => {
            HostError::Docker { host: target.describe(), step: what.to_string(), status: None, message: error }
        }
        other => HostError::Unreachable {
            host: target.describe(),
            message: format!("{what}: the Docker engine API did not answer: {other}"),
        },
    }
}

/// True for requests that keep their connection to themselves: a stream
/// with no end (events) or a hijacked one (attached exec, attach).
fn takes_connection_over(req: &Request<ApiBody>) -> bool {
    let upgrade = req
        .headers()
        .get(CONNECTION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade")))
        || req.headers().contains_key(UPGRADE);
    upgrade || req.uri().path().ends_with("/events")
}

/// bollard writes absolute URIs and no Host header; a bare HTTP/1.1
/// connection needs the origin form and a Host, or Docker refuses.
fn origin_form(req: BollardRequest) -> Result<Request<ApiBody>, ApiError> {
    let (mut parts, body) = req.into_parts();
    let path = parts.uri.path_and_query().map(|p| p.as_str().to_owned()).unwrap_or_else(|| "/".into());
    parts.uri = path.parse()?;
    parts.headers.insert(HOST, HeaderValue::from_static("docker"));
    let body: ApiBody = body.map_err(Into::into).boxed_unsync();
    Ok(Request::from_parts(parts, body))
}

/// Opens a new API connection: an exec channel running `dial-stdio`.
async fn connect(session: &Session) -> Result<SendRequest<ApiBody>, ApiError> {
    let channel = session.open_channel().await.map_err(io_error)?;
    channel.exec(true, DIAL_COMMAND).await.map_err(io_error)?;
    let (sender, connection) = http1::handshake(TokioIo::new(channel.into_stream())).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.with_upgrades().await {
            debug!(error = %e, "Docker API connection ended");
        }
    });
    Ok(sender)
}

async fn send(
    session: &Session,
    shared: &Mutex<Option<SendRequest<ApiBody>>>,
    req: BollardRequest,
) -> Result<Response<Incoming>, ApiError> {
    let req = origin_form(req)?;
    if takes_connection_over(&req) {
        let mut own = connect(session).await?;
        return Ok(own.send_request(req).await?);
    }
    let mut slot = shared.lock().await;
    let mut sender = match slot.take() {
        Some(s) if !s.is_closed() => s,
        _ => connect(session).await?,
    };
    // The previous response's body may still be on its way: wait for it,
    // but a body nobody reads must not hold the host up.
    if !matches!(tokio::time::timeout(READY_WAIT, sender.ready()).await, Ok(Ok(()))) {
        sender = connect(session).await?;
    }
    let response = sender.send_request(req);
    *slot = Some(sender);
    drop(slot);
    Ok(response.await?)
}

/// Subscribes to Docker's die, stop and destroy events of the
/// containers carrying `label` (`key=value`), on a connection of its own.
/// Returns once Docker has answered, that is, once it has subscribed.
pub(super) async fn events(session: &Session, label: &str, counter: &AtomicU64) -> Result<Incoming, ApiError> {
    let filters = serde_json::json!({
        "type": ["container"],
        "label": [label],
        "event": ["die", "stop", "destroy"],
    });
    let request = Request::get(format!("/events?filters={}", percent_encode(&filters.to_string())))
        .header(HOST, "docker")
        .body(http_body_util::Empty::<Bytes>::new().map_err(Into::into).boxed_unsync())?;
    counter.fetch_add(1, Ordering::Relaxed);
    let mut own = connect(session).await?;
    let response = own.send_request(request).await?;
    if !response.status().is_success() {
        let status_code = response.status().as_u16();
        let body = response.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        return Err(ApiError::DockerResponseServerError {
            status_code,
            message: String::from_utf8_lossy(&body).trim().to_string(),
        });
    }
    Ok(response.into_body())
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn io_error(e: russh::Error) -> ApiError {
    ApiError::IOError { err: std::io::Error::other(e.to_string()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(uri: &str) -> BollardRequest {
        Request::builder().uri(uri).body(bollard::body_full(Bytes::new())).unwrap()
    }

    #[test]
    fn requests_go_out_in_origin_form_with_a_host() {
        let req = origin_form(request("http://docker/containers/json?all=true")).unwrap();
        assert_eq!(req.uri().to_string(), "/containers/json?all=true");
        assert_eq!(req.headers()[HOST], "docker");
    }

    #[test]
    fn events_and_hijacks_get_a_connection_of_their_own() {
        assert!(takes_connection_over(&origin_form(request("http://docker/events?filters=x")).unwrap()));
        assert!(!takes_connection_over(&origin_form(request("http://docker/containers/json")).unwrap()));
        let mut exec = origin_form(request("http://docker/exec/abc/start")).unwrap();
        assert!(!takes_connection_over(&exec));
        exec.headers_mut().insert(CONNECTION, HeaderValue::from_static("Upgrade"));
        assert!(takes_connection_over(&exec));
    }

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(percent_encode(r#"{"label":["a=b/c"]}"#), "%7B%22label%22%3A%5B%22a%3Db%2Fc%22%5D%7D");
    }

    #[test]
    fn the_dial_command_is_valid_sh() {
        let out = std::process::Command::new("sh").arg("-n").arg("-c").arg(DIAL_COMMAND).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
}
