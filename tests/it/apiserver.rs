//! A small stateful in-memory Kubernetes API for controller tests: list and
//! watch with resourceVersion (410 Gone once compacted), the status
//! subresource (every write that changes something is a watch event),
//! generation, finalizers with deletionTimestamp, replace and patch with
//! optimistic concurrency (409 on a stale resourceVersion), server-side
//! apply that drops the fields a manager stopped sending and, once told the
//! schema, refuses fields it does not declare, Secret stringData stored as
//! data, and 403 for resources or scopes the caller may not use. Served
//! in-process as a tower service.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, Request, Response, StatusCode, Uri};
use futures::StreamExt;
use serde_json::{json, Value};
use tokio::sync::broadcast;

#[derive(Clone, Debug)]
struct Change {
    rv: u64,
    plural: String,
    kind: &'static str,
    object: Value,
}

#[derive(Default)]
struct State {
    rv: u64,
    /// (plural, namespace, name) → object
    objects: BTreeMap<(String, String, String), Value>,
    log: Vec<Change>,
    /// Every request as "METHOD path", for assertions.
    requests: Vec<String>,
    /// Watches from a resourceVersion below this answer 410 Gone.
    compacted: u64,
    /// Resources every request about answers 403.
    forbidden: Vec<String>,
    /// Resources not served at all (a CRD that is not installed): 404.
    unserved: Vec<String>,
    /// When set, requests across all namespaces answer 403 (the caller has Roles only).
    namespaced_only: bool,
    /// What each field manager last applied, by (plural, namespace, name, manager, subresource).
    applied: BTreeMap<(String, String, String, String, bool), Value>,
    /// The OpenAPI schema of a resource (a CRD's `openAPIV3Schema`), when
    /// told: server-side apply then refuses fields it does not declare.
    schemas: BTreeMap<String, Value>,
    /// Random per double: uids are unique across doubles, as a real API
    /// server's are (EC2 resources are owned by uid and outlive a test).
    uid_prefix: String,
}

/// The API double; clone it freely.
#[derive(Clone)]
pub struct ApiServer {
    state: Arc<Mutex<State>>,
    changes: broadcast::Sender<Change>,
}

struct Path {
    plural: String,
    namespace: Option<String>,
    name: Option<String>,
    status: bool,
}

fn parse_path(path: &str) -> Option<Path> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let rest = match *segs.first()? {
        "api" => segs.get(2..)?,
        "apis" => segs.get(3..)?,
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some(ns.to_string()), rest),
        _ => (None, rest),
    };
    match rest {
        [plural] => Some(Path { plural: plural.to_string(), namespace, name: None, status: false }),
        [plural, name] => {
            Some(Path { plural: plural.to_string(), namespace, name: Some(name.to_string()), status: false })
        }
        [plural, name, "status"] => {
            Some(Path { plural: plural.to_string(), namespace, name: Some(name.to_string()), status: true })
        }
        _ => None,
    }
}

fn status_error(code: u16, reason: &str, message: String) -> Response<Body> {
    let body = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason, "code": code, "message": message});
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap_or_default()
}

fn ok(code: u16, body: &Value) -> Response<Body> {
    Response::builder()
        .status(StatusCode::from_u16(code).unwrap_or(StatusCode::OK))
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap_or_default()
}

fn query_param(uri: &Uri, key: &str) -> Option<String> {
    uri.query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| v.to_string())
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether an object's labels match a selector of `key=value` and `key` terms.
fn selects(selector: Option<&str>, object: &Value) -> bool {
    let Some(selector) = selector.filter(|s| !s.is_empty()) else { return true };
    let labels = &object["metadata"]["labels"];
    selector.split(',').all(|term| match term.split_once('=') {
        Some((k, v)) => labels[k.trim_end_matches('=')] == v.trim_start_matches('='),
        None => !labels[term].is_null(),
    })
}

fn merge(target: &mut Value, patch: &Value) {
    json_patch::merge(target, patch);
}

/// Removes from `target` what `before` set and `now` no longer sends, like
/// server-side apply does for a manager's own fields.
fn prune(target: &mut Value, before: &Value, now: &Value) {
    let (Some(before), Some(target)) = (before.as_object(), target.as_object_mut()) else { return };
    for (key, old) in before {
        match now.get(key) {
            None | Some(Value::Null) => {
                target.remove(key);
            }
            Some(new) => {
                if let Some(t) = target.get_mut(key) {
                    prune(t, old, new);
                }
            }
        }
    }
}

/// The path of the first field of `value` that `schema` does not declare
/// (objects with `properties` and neither `additionalProperties` nor
/// `x-kubernetes-preserve-unknown-fields` declare only those).
fn undeclared(schema: &Value, value: &Value, at: &str) -> Option<String> {
    if schema["x-kubernetes-preserve-unknown-fields"] == true {
        return None;
    }
    match value {
        Value::Object(fields) => {
            for (key, v) in fields {
                let here = format!("{at}.{key}");
                let field_schema = match schema["properties"].get(key) {
                    Some(s) => s,
                    None if schema["additionalProperties"].is_object() => &schema["additionalProperties"],
                    None if schema["additionalProperties"] == true || schema["properties"].is_null() => continue,
                    None => return Some(here),
                };
                if let Some(found) = undeclared(field_schema, v, &here) {
                    return Some(found);
                }
            }
            None
        }
        Value::Array(items) => items.iter().find_map(|item| undeclared(&schema["items"], item, at)),
        _ => None,
    }
}

/// 409 Conflict, as for a write from a resourceVersion that is not the stored one.
fn conflict(plural: &str, name: &str) -> Response<Body> {
    status_error(
        409,
        "Conflict",
        format!(
            "Operation cannot be fulfilled on {plural} \"{name}\": the object has been modified; please apply your changes to the latest version and try again"
        ),
    )
}

fn base64(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ABC[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Secrets keep `stringData` as base64 `data`, as the API server does.
fn store_string_data(plural: &str, object: &mut Value) {
    if plural != "secrets" {
        return;
    }
    let Some(Value::Object(strings)) = object.as_object_mut().and_then(|o| o.remove("stringData")) else { return };
    if !object["data"].is_object() {
        object["data"] = json!({});
    }
    for (k, v) in strings {
        object["data"][k] = json!(base64(v.as_str().unwrap_or_default().as_bytes()));
    }
}

impl ApiServer {
    pub fn new() -> ApiServer {
        let (changes, _) = broadcast::channel(1024);
        let state = State { uid_prefix: format!("{:016x}", rand::random::<u64>()), ..State::default() };
        ApiServer { state: Arc::new(Mutex::new(state)), changes }
    }

    /// A kube Client talking to this double.
    pub fn client(&self) -> kube::Client {
        let me = self.clone();
        let service = tower::service_fn(move |req: Request<kube::client::Body>| {
            let me = me.clone();
            async move { Ok::<_, Infallible>(me.handle(req).await) }
        });
        kube::Client::new(service, "default")
    }

    /// Requests seen so far, as "METHOD /path", watches marked " (watch)".
    pub fn requests(&self) -> Vec<String> {
        self.state.lock().unwrap().requests.clone()
    }

    /// Every later request about `plural` answers 403 Forbidden.
    pub fn forbid(&self, plural: &str) {
        self.state.lock().unwrap().forbidden.push(plural.to_string());
    }

    /// Every later request about `plural` answers 404, as for a CRD that is not installed.
    pub fn unserve(&self, plural: &str) {
        self.state.lock().unwrap().unserved.push(plural.to_string());
    }

    /// Requests across all namespaces answer 403 (a caller bound by Roles only).
    pub fn namespaced_only(&self) {
        self.state.lock().unwrap().namespaced_only = true;
    }

    /// Server-side applies to `plural` from now on are checked against
    /// `schema` (an `openAPIV3Schema`), as the API server checks them
    /// against the installed CRD: a field it does not declare is refused.
    pub fn declare_schema(&self, plural: &str, schema: Value) {
        self.state.lock().unwrap().schemas.insert(plural.to_string(), schema);
    }

    /// Compacts the history: open watches end, and a watch from an older
    /// resourceVersion answers 410 Gone, so watchers must list again.
    pub fn compact(&self) {
        let mut state = self.state.lock().unwrap();
        state.rv += 1;
        state.compacted = state.rv;
        let _ =
            self.changes.send(Change { rv: state.rv, plural: String::new(), kind: "COMPACTED", object: Value::Null });
    }

    /// Stores an object as given (it may carry fields no Rust type knows).
    pub fn create_raw(&self, plural: &str, namespace: &str, object: Value) -> Value {
        let path = Path { plural: plural.into(), namespace: Some(namespace.into()), name: None, status: false };
        let name = object["metadata"]["name"].as_str().unwrap_or_default().to_string();
        let _ = self.create(&path, object);
        self.get(plural, namespace, &name).unwrap_or(Value::Null)
    }

    /// How many requests matched `method` and a path ending with `suffix`.
    pub fn count(&self, method: &str, suffix: &str) -> usize {
        let want = format!("{method} ");
        self.requests().iter().filter(|r| r.starts_with(&want) && r.ends_with(suffix)).count()
    }

    /// The stored object, if any.
    pub fn get(&self, plural: &str, namespace: &str, name: &str) -> Option<Value> {
        let key = (plural.to_string(), namespace.to_string(), name.to_string());
        self.state.lock().unwrap().objects.get(&key).cloned()
    }

    /// The stored objects of `plural` in `namespace`, by name.
    pub fn objects(&self, plural: &str, namespace: &str) -> Vec<Value> {
        let state = self.state.lock().unwrap();
        state.objects.iter().filter(|((p, ns, _), _)| p == plural && ns == namespace).map(|(_, o)| o.clone()).collect()
    }

    fn record(&self, state: &mut State, plural: &str, kind: &'static str, object: Value) {
        let change = Change { rv: state.rv, plural: plural.to_string(), kind, object };
        state.log.push(change.clone());
        let _ = self.changes.send(change);
    }

    async fn handle(&self, req: Request<kube::client::Body>) -> Response<Body> {
        let (parts, body) = req.into_parts();
        let bytes = body.collect_bytes().await.unwrap_or_default();
        self.handle_parts(parts, bytes)
    }

    /// Serves the double over HTTP on 127.0.0.1 (for the real binary: scripts/bench runs one controller against it); the
    /// task ends when dropped or aborted.
    #[allow(dead_code)] // the tests run the binary on the real API server (kube.rs)
    pub async fn serve_http(&self) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1");
        let addr = listener.local_addr().expect("local addr");
        let me = self.clone();
        let app = axum::Router::new().fallback(move |req: Request<Body>| {
            let me = me.clone();
            async move {
                let (parts, body) = req.into_parts();
                let bytes = axum::body::to_bytes(body, 64 << 20).await.unwrap_or_default();
                me.handle_parts(parts, bytes)
            }
        });
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        (addr, task)
    }

    fn handle_parts(&self, parts: axum::http::request::Parts, bytes: Bytes) -> Response<Body> {
        let watching = matches!(query_param(&parts.uri, "watch").as_deref(), Some("true") | Some("1"));
        let selector = query_param(&parts.uri, "labelSelector").map(|s| percent_decode(&s));
        let marker = match (&selector, watching) {
            (Some(sel), true) => format!(" [{sel}] (watch)"),
            (Some(sel), false) => format!(" [{sel}]"),
            (None, true) => " (watch)".to_string(),
            (None, false) => String::new(),
        };
        self.state.lock().unwrap().requests.push(format!("{} {}{marker}", parts.method, parts.uri.path()));
        let Some(path) = parse_path(parts.uri.path()) else {
            return status_error(404, "NotFound", format!("no route {}", parts.uri.path()));
        };
        {
            let state = self.state.lock().unwrap();
            if state.unserved.contains(&path.plural) {
                return status_error(404, "NotFound", "the server could not find the requested resource".into());
            }
            if state.forbidden.contains(&path.plural) || (state.namespaced_only && path.namespace.is_none()) {
                let scope = path
                    .namespace
                    .as_deref()
                    .map_or("at the cluster scope".to_string(), |ns| format!("in the namespace \"{ns}\""));
                return status_error(
                    403,
                    "Forbidden",
                    format!(
                        "{} is forbidden: cannot {} resource \"{}\" {scope}",
                        path.plural, parts.method, path.plural
                    ),
                );
            }
        }
        let body: Value =
            if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap_or(Value::Null) };
        match (&parts.method, &path.name) {
            (&Method::GET, None) => {
                let watch = matches!(query_param(&parts.uri, "watch").as_deref(), Some("true") | Some("1"));
                if watch {
                    self.watch(path, &parts.uri, selector)
                } else {
                    self.list(&path, selector.as_deref())
                }
            }
            (&Method::POST, None) => self.create(&path, body),
            (&Method::GET, Some(name)) => {
                let key = (path.plural.clone(), path.namespace.clone().unwrap_or_default(), name.clone());
                match self.state.lock().unwrap().objects.get(&key) {
                    Some(o) => ok(200, o),
                    None => status_error(404, "NotFound", format!("{} \"{name}\" not found", path.plural)),
                }
            }
            (&Method::PATCH, Some(_)) => {
                let manager = query_param(&parts.uri, "fieldManager").unwrap_or_default();
                self.patch(&path, &parts.headers, &manager, body)
            }
            (&Method::PUT, Some(_)) => self.replace(&path, body),
            (&Method::DELETE, Some(_)) => self.delete(&path),
            _ => status_error(405, "MethodNotAllowed", format!("{} {}", parts.method, parts.uri.path())),
        }
    }

    fn list(&self, path: &Path, selector: Option<&str>) -> Response<Body> {
        let state = self.state.lock().unwrap();
        let items: Vec<Value> = state
            .objects
            .iter()
            .filter(|((p, ns, _), _)| *p == path.plural && path.namespace.as_ref().is_none_or(|want| want == ns))
            .filter(|(_, o)| selects(selector, o))
            .map(|(_, o)| o.clone())
            .collect();
        ok(
            200,
            &json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": state.rv.to_string()}, "items": items}),
        )
    }

    fn watch(&self, path: Path, uri: &Uri, selector: Option<String>) -> Response<Body> {
        let since: u64 = query_param(uri, "resourceVersion").and_then(|v| v.parse().ok()).unwrap_or(0);
        let rx = self.changes.subscribe();
        let (backlog, gone): (Vec<Change>, bool) = {
            let state = self.state.lock().unwrap();
            let backlog = state
                .log
                .iter()
                .filter(|c| c.rv > since && c.plural == path.plural && selects(selector.as_deref(), &c.object))
                .cloned()
                .collect();
            (backlog, since < state.compacted)
        };
        if gone {
            let status = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Expired", "code": 410,
                "message": format!("too old resource version: {since}")});
            let line = format!("{}\n", json!({"type": "ERROR", "object": status}));
            return Response::builder()
                .status(200)
                .header("content-type", "application/json")
                .body(Body::from(line))
                .unwrap_or_default();
        }
        let last_sent = backlog.last().map_or(since, |c| c.rv);
        let ns = path.namespace.clone();
        let plural = path.plural.clone();
        let line =
            |c: &Change| Ok::<_, Infallible>(Bytes::from(format!("{}\n", json!({"type": c.kind, "object": c.object}))));
        let first = futures::stream::iter(backlog.iter().map(line).collect::<Vec<_>>());
        let live = futures::stream::unfold((rx, last_sent), move |(mut rx, last)| {
            let ns = ns.clone();
            let plural = plural.clone();
            let selector = selector.clone();
            async move {
                loop {
                    let change = rx.recv().await.ok()?;
                    if change.kind == "COMPACTED" {
                        return None;
                    }
                    let same_ns = ns.as_ref().is_none_or(|n| change.object["metadata"]["namespace"] == *n);
                    let selected = selects(selector.as_deref(), &change.object);
                    if change.rv > last && change.plural == plural && same_ns && selected {
                        let rv = change.rv;
                        let bytes = Bytes::from(format!("{}\n", json!({"type": change.kind, "object": change.object})));
                        return Some((Ok::<_, Infallible>(bytes), (rx, rv)));
                    }
                }
            }
        });
        Response::builder()
            .status(200)
            .header("content-type", "application/json")
            .body(Body::from_stream(first.chain(live)))
            .unwrap_or_default()
    }

    fn create(&self, path: &Path, mut object: Value) -> Response<Body> {
        let mut state = self.state.lock().unwrap();
        let ns = path.namespace.clone().unwrap_or_default();
        let Some(name) = object["metadata"]["name"].as_str().map(str::to_string) else {
            return status_error(422, "Invalid", "metadata.name is required".into());
        };
        let key = (path.plural.clone(), ns.clone(), name.clone());
        if state.objects.contains_key(&key) {
            return status_error(409, "AlreadyExists", format!("{} \"{name}\" already exists", path.plural));
        }
        store_string_data(&path.plural, &mut object);
        state.rv += 1;
        let meta = &mut object["metadata"];
        if !ns.is_empty() {
            meta["namespace"] = json!(ns);
        }
        meta["resourceVersion"] = json!(state.rv.to_string());
        meta["uid"] = json!(format!("{}-{}-{}", state.uid_prefix, path.plural, state.rv));
        meta["generation"] = json!(1);
        meta["creationTimestamp"] = json!("2026-01-01T00:00:00Z");
        state.objects.insert(key, object.clone());
        self.record(&mut state, &path.plural, "ADDED", object.clone());
        ok(201, &object)
    }

    fn patch(&self, path: &Path, headers: &HeaderMap, manager: &str, body: Value) -> Response<Body> {
        let mut state = self.state.lock().unwrap();
        let name = path.name.clone().unwrap_or_default();
        let key = (path.plural.clone(), path.namespace.clone().unwrap_or_default(), name.clone());
        let Some(current) = state.objects.get(&key).cloned() else {
            return status_error(404, "NotFound", format!("{} \"{name}\" not found", path.plural));
        };
        let content_type = headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("");
        // A resourceVersion in the patch body is a precondition (merge and
        // apply patches alike): the write is refused once the object moved on.
        let given_rv = body["metadata"]["resourceVersion"].as_str().unwrap_or_default();
        if !given_rv.is_empty() && given_rv != current["metadata"]["resourceVersion"].as_str().unwrap_or_default() {
            return conflict(&path.plural, &name);
        }
        if content_type.contains("apply-patch") {
            if let Some(schema) = state.schemas.get(&path.plural) {
                let mut fields = body.clone();
                if let Some(o) = fields.as_object_mut() {
                    for meta in ["apiVersion", "kind", "metadata"] {
                        o.remove(meta);
                    }
                }
                if let Some(field) = undeclared(schema, &fields, "") {
                    // What the API server answers (a 500, not a 4xx).
                    return status_error(
                        500,
                        "InternalError",
                        format!(
                            "failed to create typed patch object ({}/{name}): {field}: field not declared in schema",
                            path.plural
                        ),
                    );
                }
            }
        }
        let mut next = current.clone();
        if content_type.contains("json-patch") {
            let Ok(ops) = serde_json::from_value::<json_patch::Patch>(body) else {
                return status_error(400, "BadRequest", "not a JSON patch".into());
            };
            // Like the API server, treat an absent list as null for `test`.
            if next["metadata"].get("finalizers").is_none() {
                next["metadata"]["finalizers"] = Value::Null;
            }
            if let Err(e) = json_patch::patch(&mut next, &ops) {
                return status_error(422, "Invalid", format!("JSON patch failed: {e}"));
            }
            if next["metadata"]["finalizers"].is_null() {
                if let Some(meta) = next["metadata"].as_object_mut() {
                    meta.remove("finalizers");
                }
            }
        } else if path.status {
            // Status subresource: only .status changes.
            next["status"] = current["status"].clone();
            if next["status"].is_null() {
                next["status"] = json!({});
            }
            if content_type.contains("apply-patch") {
                let slot = (key.0.clone(), key.1.clone(), key.2.clone(), manager.to_string(), true);
                if let Some(before) = state.applied.get(&slot) {
                    prune(&mut next["status"], before, &body["status"]);
                }
                state.applied.insert(slot, body["status"].clone());
            }
            merge(&mut next["status"], &body["status"]);
            if body["status"]["conditions"].is_array() {
                next["status"]["conditions"] = body["status"]["conditions"].clone();
            }
        } else {
            if content_type.contains("apply-patch") {
                let slot = (key.0.clone(), key.1.clone(), key.2.clone(), manager.to_string(), false);
                let mut sent = body.clone();
                if let Some(o) = sent.as_object_mut() {
                    for meta in ["apiVersion", "kind", "metadata", "status"] {
                        o.remove(meta);
                    }
                }
                if let Some(before) = state.applied.get(&slot) {
                    prune(&mut next, before, &sent);
                }
                state.applied.insert(slot, sent);
            }
            merge(&mut next, &body);
            store_string_data(&path.plural, &mut next);
        }
        self.commit(&mut state, path, key, current, next)
    }

    /// PUT: the whole object (or its status), only from the resourceVersion it was read at.
    fn replace(&self, path: &Path, body: Value) -> Response<Body> {
        let mut state = self.state.lock().unwrap();
        let name = path.name.clone().unwrap_or_default();
        let key = (path.plural.clone(), path.namespace.clone().unwrap_or_default(), name.clone());
        let Some(current) = state.objects.get(&key).cloned() else {
            return status_error(404, "NotFound", format!("{} \"{name}\" not found", path.plural));
        };
        let given_rv = body["metadata"]["resourceVersion"].as_str().unwrap_or_default();
        if !given_rv.is_empty() && given_rv != current["metadata"]["resourceVersion"].as_str().unwrap_or_default() {
            return conflict(&path.plural, &name);
        }
        let mut next = if path.status {
            let mut next = current.clone();
            next["status"] = body["status"].clone();
            next
        } else {
            let mut next = body;
            store_string_data(&path.plural, &mut next);
            // Server-owned metadata stays.
            for field in ["uid", "creationTimestamp", "generation", "deletionTimestamp"] {
                next["metadata"][field] = current["metadata"][field].clone();
            }
            next
        };
        if next["metadata"]["deletionTimestamp"].is_null() {
            if let Some(meta) = next["metadata"].as_object_mut() {
                meta.remove("deletionTimestamp");
            }
        }
        next["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"].clone();
        self.commit(&mut state, path, key, current, next)
    }

    /// Stores a changed object: the main resource never changes status, a
    /// spec change bumps generation, and every change is a watch event.
    fn commit(
        &self,
        state: &mut State,
        path: &Path,
        key: (String, String, String),
        current: Value,
        mut next: Value,
    ) -> Response<Body> {
        if !path.status {
            // The main resource never changes status.
            next["status"] = current["status"].clone();
            if next["spec"] != current["spec"] {
                let generation = current["metadata"]["generation"].as_i64().unwrap_or(1) + 1;
                next["metadata"]["generation"] = json!(generation);
            }
        }
        if next == current {
            return ok(200, &current);
        }
        state.rv += 1;
        next["metadata"]["resourceVersion"] = json!(state.rv.to_string());
        let finalizers_gone = next["metadata"]["finalizers"].as_array().is_none_or(|f| f.is_empty());
        if !next["metadata"]["deletionTimestamp"].is_null() && finalizers_gone {
            state.objects.remove(&key);
            self.record(state, &path.plural, "DELETED", next.clone());
        } else {
            state.objects.insert(key, next.clone());
            self.record(state, &path.plural, "MODIFIED", next.clone());
        }
        ok(200, &next)
    }

    fn delete(&self, path: &Path) -> Response<Body> {
        let mut state = self.state.lock().unwrap();
        let name = path.name.clone().unwrap_or_default();
        let key = (path.plural.clone(), path.namespace.clone().unwrap_or_default(), name.clone());
        let Some(mut object) = state.objects.get(&key).cloned() else {
            return status_error(404, "NotFound", format!("{} \"{name}\" not found", path.plural));
        };
        state.rv += 1;
        object["metadata"]["resourceVersion"] = json!(state.rv.to_string());
        let has_finalizers = object["metadata"]["finalizers"].as_array().is_some_and(|f| !f.is_empty());
        if has_finalizers {
            if object["metadata"]["deletionTimestamp"].is_null() {
                object["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:01Z");
            }
            state.objects.insert(key, object.clone());
            self.record(&mut state, &path.plural, "MODIFIED", object.clone());
        } else {
            state.objects.remove(&key);
            self.record(&mut state, &path.plural, "DELETED", object.clone());
        }
        ok(200, &object)
    }
}
