//! A small stateful in-memory Kubernetes API for controller tests: list and
//! watch with resourceVersion, the status subresource, generation, and
//! finalizers with deletionTimestamp. Served in-process as a tower service.

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

fn merge(target: &mut Value, patch: &Value) {
    json_patch::merge(target, patch);
}

impl ApiServer {
    pub fn new() -> ApiServer {
        let (changes, _) = broadcast::channel(1024);
        ApiServer { state: Arc::default(), changes }
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

    /// Requests seen so far, as "METHOD /path".
    pub fn requests(&self) -> Vec<String> {
        self.state.lock().unwrap().requests.clone()
    }

    /// The stored object, if any.
    pub fn get(&self, plural: &str, namespace: &str, name: &str) -> Option<Value> {
        let key = (plural.to_string(), namespace.to_string(), name.to_string());
        self.state.lock().unwrap().objects.get(&key).cloned()
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

    /// Serves the double over HTTP on 127.0.0.1 (for the real binary); the
    /// task ends when dropped or aborted.
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
        self.state.lock().unwrap().requests.push(format!("{} {}", parts.method, parts.uri.path()));
        let Some(path) = parse_path(parts.uri.path()) else {
            return status_error(404, "NotFound", format!("no route {}", parts.uri.path()));
        };
        let body: Value =
            if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap_or(Value::Null) };
        match (&parts.method, &path.name) {
            (&Method::GET, None) => {
                let watch = matches!(query_param(&parts.uri, "watch").as_deref(), Some("true") | Some("1"));
                if watch {
                    self.watch(path, &parts.uri)
                } else {
                    self.list(&path)
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
            (&Method::PATCH, Some(_)) => self.patch(&path, &parts.headers, body),
            (&Method::PUT, Some(_)) => self.patch(&path, &HeaderMap::new(), body),
            (&Method::DELETE, Some(_)) => self.delete(&path),
            _ => status_error(405, "MethodNotAllowed", format!("{} {}", parts.method, parts.uri.path())),
        }
    }

    fn list(&self, path: &Path) -> Response<Body> {
        let state = self.state.lock().unwrap();
        let items: Vec<Value> = state
            .objects
            .iter()
            .filter(|((p, ns, _), _)| *p == path.plural && path.namespace.as_ref().is_none_or(|want| want == ns))
            .map(|(_, o)| o.clone())
            .collect();
        ok(
            200,
            &json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": state.rv.to_string()}, "items": items}),
        )
    }

    fn watch(&self, path: Path, uri: &Uri) -> Response<Body> {
        let since: u64 = query_param(uri, "resourceVersion").and_then(|v| v.parse().ok()).unwrap_or(0);
        let rx = self.changes.subscribe();
        let backlog: Vec<Change> = {
            let state = self.state.lock().unwrap();
            state.log.iter().filter(|c| c.rv > since && c.plural == path.plural).cloned().collect()
        };
        let last_sent = backlog.last().map_or(since, |c| c.rv);
        let ns = path.namespace.clone();
        let plural = path.plural.clone();
        let line =
            |c: &Change| Ok::<_, Infallible>(Bytes::from(format!("{}\n", json!({"type": c.kind, "object": c.object}))));
        let first = futures::stream::iter(backlog.iter().map(line).collect::<Vec<_>>());
        let live = futures::stream::unfold((rx, last_sent), move |(mut rx, last)| {
            let ns = ns.clone();
            let plural = plural.clone();
            async move {
                loop {
                    let change = rx.recv().await.ok()?;
                    let same_ns = ns.as_ref().is_none_or(|n| change.object["metadata"]["namespace"] == *n);
                    if change.rv > last && change.plural == plural && same_ns {
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
        state.rv += 1;
        let meta = &mut object["metadata"];
        if !ns.is_empty() {
            meta["namespace"] = json!(ns);
        }
        meta["resourceVersion"] = json!(state.rv.to_string());
        meta["uid"] = json!(format!("uid-{}-{}", path.plural, state.rv));
        meta["generation"] = json!(1);
        meta["creationTimestamp"] = json!("2026-01-01T00:00:00Z");
        state.objects.insert(key, object.clone());
        self.record(&mut state, &path.plural, "ADDED", object.clone());
        ok(201, &object)
    }

    fn patch(&self, path: &Path, headers: &HeaderMap, body: Value) -> Response<Body> {
        let mut state = self.state.lock().unwrap();
        let name = path.name.clone().unwrap_or_default();
        let key = (path.plural.clone(), path.namespace.clone().unwrap_or_default(), name.clone());
        let Some(current) = state.objects.get(&key).cloned() else {
            return status_error(404, "NotFound", format!("{} \"{name}\" not found", path.plural));
        };
        let content_type = headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("");
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
            merge(&mut next["status"], &body["status"]);
            if body["status"]["conditions"].is_array() {
                next["status"]["conditions"] = body["status"]["conditions"].clone();
            }
        } else {
            merge(&mut next, &body);
        }
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
            self.record(&mut state, &path.plural, "DELETED", next.clone());
        } else {
            state.objects.insert(key, next.clone());
            self.record(&mut state, &path.plural, "MODIFIED", next.clone());
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
