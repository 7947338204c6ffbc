//! The controller's exact API requests, as kube tower-test scenarios.

use std::sync::Arc;
use std::time::Duration;

use crate::fixtures::stack;
use http::{Request, Response};
use k8s_openapi::api::core::v1::Secret;
use kube::client::Body;
use kube::runtime::controller::Action;
use kube::runtime::events::Reporter;
use kube::Client;
use serde_json::{json, Value};
use votingstack::api::{VotingStack, FINALIZER};
use votingstack::controller::{reconcile, Context};
use votingstack::metrics::Metrics;

use crate::fakes;

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

fn context() -> (Arc<Context>, Handle, fakes::FakeCloud) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let (engine, cloud, _hosts) = fakes::engine();
    let reporter = Reporter { controller: "votingstack-operator".into(), instance: Some("test".into()) };
    let (tx, _rx) = tokio::sync::mpsc::channel(1);
    (Context::new(client, Arc::new(engine), Arc::new(Metrics::default()), reporter, None, tx), handle, cloud)
}

fn respond(send: tower_test::mock::SendResponse<Response<Body>>, status: u16, body: &Value) {
    let response = Response::builder().status(status).body(Body::from(serde_json::to_vec(body).unwrap())).unwrap();
    send.send_response(response);
}

async fn next(handle: &mut Handle) -> (http::Method, String, Value, tower_test::mock::SendResponse<Response<Body>>) {
    let (request, send) = tokio::time::timeout(Duration::from_secs(5), handle.next_request())
        .await
        .expect("a request within 5 s")
        .expect("service not dropped");
    let method = request.method().clone();
    let uri = request.uri().to_string();
    let bytes = request.into_body().collect_bytes().await.unwrap();
    let body = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap() };
    (method, uri, body, send)
}

fn with_finalizer(mut s: VotingStack) -> VotingStack {
    s.metadata.finalizers = Some(vec![FINALIZER.into()]);
    s.metadata.resource_version = Some("1".into());
    s
}

fn secret() -> Value {
    let s = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some("demo-ssh".into()),
            namespace: Some("default".into()),
            ..Default::default()
        },
        string_data: Some([("ssh-privatekey".to_string(), crate::fixtures::TEST_KEY.to_string())].into()),
        ..Default::default()
    };
    serde_json::to_value(s).unwrap()
}

#[tokio::test]
async fn controller_adds_the_finalizer_first() {
    let (ctx, mut handle, cloud) = context();
    let server = tokio::spawn(async move {
        let (method, uri, body, send) = next(&mut handle).await;
        assert_eq!(method, http::Method::PATCH);
        assert!(uri.starts_with("/apis/votingstack.dev/v1alpha1/namespaces/default/votingstacks/demo?"), "{uri}");
        let ops = body.as_array().expect("a JSON patch");
        assert!(ops.iter().any(|op| op["op"] == "add" && op["path"] == "/metadata/finalizers"), "{body}");
        respond(send, 200, &serde_json::to_value(with_finalizer(stack())).unwrap());
    });
    let action = reconcile(Arc::new(stack()), ctx).await.expect("reconcile ok");
    assert_eq!(action, Action::await_change());
    server.await.unwrap();
    assert_eq!(votingstack::cloud::Cloud::api_calls(&cloud), 0, "nothing touched AWS before the finalizer");
}

#[tokio::test]
async fn controller_writes_status_by_server_side_apply_and_records_events() {
    let (ctx, mut handle, _cloud) = context();
    let server = tokio::spawn(async move {
        let (method, uri, _, send) = next(&mut handle).await;
        assert_eq!((method, uri.as_str()), (http::Method::GET, "/api/v1/namespaces/default/secrets/demo-ssh"));
        respond(send, 200, &secret());

        let (method, uri, body, send) = next(&mut handle).await;
        assert_eq!(method, http::Method::PATCH);
        assert!(
            uri.starts_with("/apis/votingstack.dev/v1alpha1/namespaces/default/votingstacks/demo/status?"),
            "{uri}"
        );
        assert!(uri.contains("fieldManager=votingstack-operator") && uri.contains("force=true"), "{uri}");
        assert_eq!(body["apiVersion"], "votingstack.dev/v1alpha1");
        assert_eq!(body["status"]["phase"], "Ready");
        assert_eq!(body["status"]["observedGeneration"], 1);
        let ready =
            body["status"]["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "Ready").unwrap().clone();
        assert_eq!(ready["status"], "True");
        let text = body.to_string();
        assert!(!text.contains("OPENSSH PRIVATE KEY"), "the key leaked into status");
        respond(send, 200, &serde_json::to_value(with_finalizer(stack())).unwrap());

        // What the reconcile did (three launches, five containers), then
        // the conditions that flipped, the aggregate last.
        let mut reasons = Vec::new();
        while reasons.last().map(String::as_str) != Some("AllTiersReady") {
            let (method, uri, body, send) = next(&mut handle).await;
            assert_eq!(method, http::Method::POST);
            assert_eq!(uri, "/apis/events.k8s.io/v1/namespaces/default/events?");
            assert_eq!(body["regarding"]["name"], "demo");
            reasons.push(body["reason"].as_str().unwrap().to_string());
            respond(send, 201, &body);
        }
        reasons
    });
    let action = reconcile(Arc::new(with_finalizer(stack())), ctx).await.expect("reconcile ok");
    assert_eq!(action, Action::requeue(Duration::from_secs(60)));
    let reasons = server.await.unwrap();
    assert_eq!(
        reasons,
        [
            "InstanceCreated",
            "InstanceCreated",
            "InstanceCreated",
            "ContainerRecreated",
            "ContainerRecreated",
            "ContainerRecreated",
            "ContainerRecreated",
            "ContainerRecreated",
            "ContainerRecreated",
            "InstancesRunning",
            "ContainersRunning",
            "ContainersRunning",
            "ContainersRunning",
            "VoteCounted",
            "AllTiersReady"
        ]
    );
}

#[tokio::test]
async fn controller_deletion_tears_down_then_drops_the_finalizer() {
    let (ctx, mut handle, cloud) = context();
    cloud.state.lock().unwrap().network = Some(Default::default());
    let mut doomed = with_finalizer(stack());
    doomed.metadata.deletion_timestamp =
        Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now()));
    let server = tokio::spawn(async move {
        let (method, uri, body, send) = next(&mut handle).await;
        assert_eq!(method, http::Method::PATCH);
        assert!(uri.contains("/votingstacks/demo/status?"), "{uri}");
        assert_eq!(body["status"]["phase"], "Deleting");
        respond(send, 200, &serde_json::to_value(with_finalizer(stack())).unwrap());
        let (method, _, body, send) = next(&mut handle).await;
        assert_eq!(method, http::Method::POST);
        assert_eq!(body["reason"], "Deleted");
        respond(send, 201, &body);
        let (method, uri, body, send) = next(&mut handle).await;
        assert_eq!(method, http::Method::PATCH);
        assert!(uri.starts_with("/apis/votingstack.dev/v1alpha1/namespaces/default/votingstacks/demo?"), "{uri}");
        assert!(body.as_array().unwrap().iter().any(|op| op["op"] == "remove"), "{body}");
        respond(send, 200, &serde_json::to_value(stack()).unwrap());
    });
    reconcile(Arc::new(doomed), ctx).await.expect("cleanup ok");
    server.await.unwrap();
    assert!(cloud.state.lock().unwrap().network.is_none(), "destroy ran");
}

#[tokio::test]
async fn controller_missing_secret_is_a_condition_not_a_crash() {
    let (ctx, mut handle, cloud) = context();
    let server = tokio::spawn(async move {
        let (_, uri, _, send) = next(&mut handle).await;
        assert_eq!(uri, "/api/v1/namespaces/default/secrets/demo-ssh");
        respond(
            send,
            404,
            &json!({"kind":"Status","apiVersion":"v1","status":"Failure","reason":"NotFound","code":404,"message":"secrets \"demo-ssh\" not found"}),
        );
        let (_, uri, body, send) = next(&mut handle).await;
        assert!(uri.contains("/status?"));
        assert_eq!(body["status"]["conditions"][0]["reason"], "SecretMissing");
        respond(send, 200, &serde_json::to_value(with_finalizer(stack())).unwrap());
        let (_, _, body, send) = next(&mut handle).await;
        assert_eq!(body["reason"], "SecretMissing");
        assert_eq!(body["type"], "Warning");
        assert_eq!(body["action"], "Ready");
        respond(send, 201, &body);
    });
    let action = reconcile(Arc::new(with_finalizer(stack())), ctx).await.expect("a missing Secret is not an error");
    assert_eq!(action, Action::requeue(Duration::from_secs(5)));
    server.await.unwrap();
    assert_eq!(votingstack::cloud::Cloud::api_calls(&cloud), 0);
}

#[test]
fn controller_backoff_doubles_and_caps() {
    use votingstack::controller::backoff;
    assert_eq!(backoff(1), Duration::from_secs(2));
    assert_eq!(backoff(3), Duration::from_secs(8));
    assert_eq!(backoff(20), Duration::from_secs(300));
}

mod on_the_api_double {
    use super::*;
    use crate::apiserver::ApiServer;
    use kube::api::{DeleteParams, PostParams};
    use kube::Api;

    /// Polls `check` every 100 ms until it returns Some, for at most `secs`.
    async fn eventually<T>(secs: u64, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(v) = check() {
                return v;
            }
            assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn ready_of(obj: &Value) -> Option<(String, String)> {
        let conds = obj["status"]["conditions"].as_array()?;
        let ready = conds.iter().find(|c| c["type"] == "Ready")?;
        Some((ready["status"].as_str()?.to_string(), ready["reason"].as_str()?.to_string()))
    }

    #[tokio::test]
    async fn controller_records_an_event_per_instance_created_and_container_created() {
        let api = ApiServer::new();
        let client = api.client();
        let stacks = seed_stack_and_secret(&client).await;
        let (engine, cloud, _hosts) = fakes::engine();
        let reporter = Reporter { controller: "votingstack-operator".into(), instance: Some("test".into()) };
        let (tx, _rx) = tokio::sync::mpsc::channel(8);
        let ctx = Context::new(client.clone(), Arc::new(engine), Arc::new(Metrics::default()), reporter, None, tx);

        // The first pass adds the finalizer; the second creates everything.
        for _ in 0..2 {
            let current = stacks.get("demo").await.unwrap();
            reconcile(Arc::new(current), ctx.clone()).await.expect("reconcile ok");
        }
        let launched: Vec<String> = cloud.state.lock().unwrap().instances.iter().map(|i| i.id.clone()).collect();
        assert_eq!(launched.len(), 3, "{launched:?}");
        let events = api.objects("events", "default");
        let of = |reason: &str| -> Vec<Value> { events.iter().filter(|e| e["reason"] == reason).cloned().collect() };
        let created = of("InstanceCreated");
        assert_eq!(created.len(), 3, "one per instance: {events:#?}");
        for id in &launched {
            let tier = id.split('-').nth(1).unwrap();
            let event = created.iter().find(|e| e["note"].as_str().unwrap().contains(id.as_str()));
            let event = event.unwrap_or_else(|| panic!("no InstanceCreated names {id}: {created:#?}"));
            let note = event["note"].as_str().unwrap();
            assert!(note.starts_with(&format!("launched the {tier} instance {id} ")), "{note}");
            assert_eq!(event["type"], "Normal");
            assert_eq!(event["regarding"]["name"], "demo");
        }
        let containers = of("ContainerRecreated");
        assert_eq!(containers.len(), 6, "vote, result, proxy, redis, worker, db: {containers:#?}");
        assert!(
            containers.iter().any(|e| e["note"] == "created the database container db: it was missing"),
            "{containers:#?}"
        );
        for e in &events {
            assert!(!e.to_string().contains("PRIVATE KEY"), "key material in an Event: {e}");
        }

        // A pass that changes nothing records nothing more about instances.
        let current = stacks.get("demo").await.unwrap();
        reconcile(Arc::new(current), ctx.clone()).await.expect("reconcile ok");
        let events = api.objects("events", "default");
        assert_eq!(events.iter().filter(|e| e["reason"] == "InstanceCreated").count(), 3);
    }

    #[tokio::test]
    async fn controller_runs_create_waiting_ready_delete_on_a_stateful_api() {
        let api = ApiServer::new();
        let client = api.client();
        let stacks = seed_stack_and_secret(&client).await;

        // Hosts refuse SSH at first: the stack must wait, not fail.
        let (engine, cloud, hosts) = fakes::engine();
        hosts.state.lock().unwrap().all_down = true;
        let reporter = Reporter { controller: "votingstack-operator".into(), instance: Some("test".into()) };
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        let ctx = Context::new(client.clone(), Arc::new(engine), Arc::new(Metrics::default()), reporter, None, tx);
        let controller = tokio::spawn(votingstack::controller::run_controller(ctx, rx));

        let waiting = eventually(20, "Ready=False while hosts are down", || {
            let obj = api.get("votingstacks", "default", "demo")?;
            let (status, reason) = ready_of(&obj)?;
            (status == "False" && obj["status"]["phase"] == "Deploying").then_some((obj, reason))
        })
        .await;
        assert_eq!(waiting.1, "Progressing");
        assert_eq!(waiting.0["metadata"]["finalizers"][0], FINALIZER);
        assert_eq!(waiting.0["status"]["observedGeneration"], 1);

        // Hosts come back: the periodic requeue converges the stack.
        hosts.state.lock().unwrap().all_down = false;
        let ready = eventually(30, "Ready=True", || {
            let obj = api.get("votingstacks", "default", "demo")?;
            (ready_of(&obj)?.0 == "True").then_some(obj)
        })
        .await;
        assert_eq!(ready["status"]["phase"], "Ready");
        assert_eq!(cloud.state.lock().unwrap().instances.len(), 3);

        // A spec change bumps generation; status follows it.
        let patch = json!({"spec": {"app": {"optionB": "Birds"}}});
        stacks.patch("demo", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&patch)).await.unwrap();
        eventually(30, "observedGeneration 2", || {
            let obj = api.get("votingstacks", "default", "demo")?;
            (obj["status"]["observedGeneration"] == 2 && ready_of(&obj)?.0 == "True").then_some(())
        })
        .await;

        // Delete: the finalizer holds the object until AWS is clean.
        stacks.delete("demo", &DeleteParams::default()).await.unwrap();
        eventually(30, "the object to go", || api.get("votingstacks", "default", "demo").is_none().then_some(())).await;
        assert!(cloud.state.lock().unwrap().instances.is_empty(), "instances torn down");
        assert!(cloud.state.lock().unwrap().network.is_none(), "network torn down");
        let requests = api.requests();
        assert!(requests.iter().any(|r| r.starts_with("PATCH") && r.ends_with("/votingstacks/demo/status")));
        assert!(requests.iter().any(|r| r.starts_with("POST /apis/events.k8s.io/v1/")));
        controller.abort();
        let _ = controller.await;
    }

    use votingstack::controller::shutdown::{Drained, ShutdownTimings};
    use votingstack::controller::{run_controller_until, run_controller_with, ControllerError, RunOptions};
    use votingstack::engine::{Engine, EngineSettings};
    use votingstack::liveness::HealthRule;

    /// An engine over fresh fakes that requeues a Ready stack every `resync`.
    fn engine_with(resync: Duration) -> (Engine, fakes::FakeCloud, fakes::FakeHosts) {
        let cloud = fakes::FakeCloud::default();
        let hosts = fakes::FakeHosts::default();
        let settings = EngineSettings { resync, smoke_timeout: Duration::from_secs(2), ..Default::default() };
        (Engine::new(Arc::new(cloud.clone()), Arc::new(hosts.clone()), settings), cloud, hosts)
    }

    /// The key Secret (labelled for the watch) and stack `name` in `ns`.
    async fn seed(client: &kube::Client, ns: &str, name: &str) {
        let mut key: Secret = serde_json::from_value(secret()).unwrap();
        key.metadata.namespace = Some(ns.into());
        key.metadata.labels = Some([(votingstack::controller::SECRET_LABEL.to_string(), "true".to_string())].into());
        let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
        secrets.create(&PostParams::default(), &key).await.unwrap();
        let stacks: Api<VotingStack> = Api::namespaced(client.clone(), ns);
        let mut s = stack();
        s.metadata.name = Some(name.into());
        s.metadata.namespace = Some(ns.into());
        s.metadata.uid = None;
        s.metadata.generation = None;
        stacks.create(&PostParams::default(), &s).await.unwrap();
    }

    /// Runs the Controller on the double with jittered requeues, as in production.
    fn start(api: &ApiServer, engine: Engine, opts: RunOptions) -> (tokio::task::JoinHandle<()>, Arc<Metrics>) {
        let reporter = Reporter { controller: "votingstack-operator".into(), instance: Some("test".into()) };
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        let metrics = Arc::new(Metrics::default());
        let ctx = Context::with_jitter(api.client(), Arc::new(engine), metrics.clone(), reporter, None, tx, 0.1);
        (tokio::spawn(run_controller_with(ctx, rx, opts)), metrics)
    }

    async fn ready_within(api: &ApiServer, ns: &str, name: &str, secs: u64) -> Value {
        eventually(secs, "Ready=True", || {
            let obj = api.get("votingstacks", ns, name)?;
            (ready_of(&obj)?.0 == "True").then_some(obj)
        })
        .await
    }

    /// Reconciles of stack `demo` so far: each reads its key Secret once.
    fn reconciles(api: &ApiServer, ns: &str) -> usize {
        api.count("GET", &format!("/namespaces/{ns}/secrets/demo-ssh"))
    }

    #[tokio::test(start_paused = true)]
    async fn controller_steady_state_is_quiet() {
        let api = ApiServer::new();
        seed(&api.client(), "default", "demo").await;
        let resync = Duration::from_secs(10);
        let (engine, _cloud, _hosts) = engine_with(resync);
        let (controller, metrics) = start(&api, engine, RunOptions::default());
        ready_within(&api, "default", "demo", 60).await;

        let writes_before = api.count("PATCH", "/votingstacks/demo/status");
        let reconciles_before = reconciles(&api, "default");
        let window = Duration::from_secs(30);
        let end = tokio::time::Instant::now() + window;
        // Watch the whole window, failing as soon as a bound is crossed.
        let max_reconciles = window.as_secs().div_ceil(resync.as_secs()) as usize + 1;
        while tokio::time::Instant::now() < end {
            let writes = api.count("PATCH", "/votingstacks/demo/status") - writes_before;
            let runs = reconciles(&api, "default") - reconciles_before;
            assert!(writes <= 1, "{writes} status writes in steady state");
            assert!(runs <= max_reconciles, "{runs} reconciles within {window:?} at a {resync:?} resync");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let runs = reconciles(&api, "default") - reconciles_before;
        assert!(runs >= 2, "the resync still runs ({runs} reconciles)");
        assert!(metrics.render().contains("votingstack_ready_stacks 1"), "{}", metrics.render());
        assert_eq!(metrics.readiness(), Ok(()));
        controller.abort();
        let _ = controller.await;
    }

    #[tokio::test(start_paused = true)]
    async fn controller_transient_ssh_failure_converges_without_a_long_backoff() {
        let api = ApiServer::new();
        seed(&api.client(), "default", "demo").await;
        let (engine, _cloud, hosts) = engine_with(Duration::from_secs(60));
        hosts.state.lock().unwrap().all_down = true;
        let (controller, _metrics) = start(&api, engine, RunOptions::default());
        // Let the failures pile up, as while a host boots for a minute.
        eventually(120, "eight failed reconciles", || (reconciles(&api, "default") >= 8).then_some(())).await;
        let obj = api.get("votingstacks", "default", "demo").unwrap();
        assert_eq!(obj["status"]["phase"], "Deploying");

        hosts.state.lock().unwrap().all_down = false;
        let up = tokio::time::Instant::now();
        ready_within(&api, "default", "demo", 60).await;
        assert!(up.elapsed() < Duration::from_secs(15), "Ready {:?} after the hosts came up", up.elapsed());
        controller.abort();
        let _ = controller.await;
    }

    #[tokio::test]
    async fn controller_relists_after_410_gone() {
        let api = ApiServer::new();
        let client = api.client();
        seed(&client, "default", "demo").await;
        let (engine, _cloud, _hosts) = engine_with(Duration::from_secs(60));
        let (controller, metrics) = start(&api, engine, RunOptions::default());
        ready_within(&api, "default", "demo", 30).await;
        let lists = || api.count("GET", "/apis/votingstack.dev/v1alpha1/votingstacks");
        let before = lists();

        api.compact();
        eventually(30, "a relist after 410 Gone", || (lists() > before).then_some(())).await;
        // The watch works again: a spec change still reaches the reconciler.
        let stacks: Api<VotingStack> = Api::namespaced(client, "default");
        let patch = json!({"spec": {"app": {"optionB": "Birds"}}});
        stacks.patch("demo", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&patch)).await.unwrap();
        eventually(30, "observedGeneration 2", || {
            let obj = api.get("votingstacks", "default", "demo")?;
            (obj["status"]["observedGeneration"] == 2).then_some(())
        })
        .await;
        eventually(30, "/readyz ready again", || metrics.readiness().ok()).await;
        controller.abort();
        let _ = controller.await;
    }

    #[tokio::test]
    async fn controller_conflict_on_replace_is_surfaced_as_409() {
        let api = ApiServer::new();
        let client = api.client();
        seed(&client, "default", "demo").await;
        let stacks: Api<VotingStack> = Api::namespaced(client, "default");
        let stale = stacks.get("demo").await.unwrap();
        let patch = json!({"spec": {"paused": true}});
        stacks.patch("demo", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&patch)).await.unwrap();
        let err = stacks.replace("demo", &PostParams::default(), &stale).await.expect_err("a stale replace");
        let kube::Error::Api(status) = &err else { panic!("not an API error: {err}") };
        assert_eq!((status.code, status.reason.as_str()), (409, "Conflict"));
        let err = ControllerError::from(err);
        assert_eq!(err.kind(), votingstack::engine::Failure::Conflict);
        assert!(err.kind().backoff(1) <= Duration::from_secs(1));
        // Read fresh, the same replace goes through.
        let mut fresh = stacks.get("demo").await.unwrap();
        fresh.spec.paused = false;
        let replaced = stacks.replace("demo", &PostParams::default(), &fresh).await.unwrap();
        assert_eq!(replaced.metadata.generation, Some(3));
    }

    #[tokio::test]
    async fn controller_reconciles_an_object_with_an_unknown_spec_field() {
        let api = ApiServer::new();
        let client = api.client();
        let secrets: Api<Secret> = Api::namespaced(client.clone(), "default");
        secrets.create(&PostParams::default(), &serde_json::from_value(secret()).unwrap()).await.unwrap();
        let mut raw = serde_json::to_value(stack()).unwrap();
        raw["metadata"] = json!({"name": "demo"});
        raw["spec"]["fieldFromANewerCrd"] = json!({"enabled": true});
        raw["spec"]["app"]["optionC"] = json!("Birds");
        api.create_raw("votingstacks", "default", raw);
        let (engine, _cloud, _hosts) = engine_with(Duration::from_secs(60));
        let (controller, metrics) = start(&api, engine, RunOptions::default());
        ready_within(&api, "default", "demo", 30).await;
        assert_eq!(metrics.readiness(), Ok(()));
        controller.abort();
        let _ = controller.await;
    }

    #[tokio::test]
    async fn controller_watches_one_namespace_with_roles_only() {
        let api = ApiServer::new();
        let client = api.client();
        seed(&client, "team-a", "demo").await;
        seed(&client, "team-b", "demo").await;
        api.namespaced_only();
        let seeded = api.requests().len();
        let (engine, cloud, _hosts) = engine_with(Duration::from_secs(60));
        let opts = RunOptions { namespaces: vec!["team-a".into()], ..Default::default() };
        let (controller, metrics) = start(&api, engine, opts);
        ready_within(&api, "team-a", "demo", 30).await;
        eventually(10, "/readyz ready", || metrics.readiness().ok()).await;
        let other = api.get("votingstacks", "team-b", "demo").unwrap();
        assert!(other["metadata"]["finalizers"].is_null() && other["status"].is_null(), "{other}");
        assert_eq!(cloud.state.lock().unwrap().instances.len(), 3, "one stack's instances");
        let outside: Vec<String> =
            api.requests().into_iter().skip(seeded).filter(|r| !r.contains("/namespaces/team-a/")).collect();
        assert!(outside.is_empty(), "requests outside team-a: {outside:?}");
        controller.abort();
        let _ = controller.await;
    }

    #[tokio::test]
    async fn controller_forbidden_watch_makes_readyz_fail_with_the_reason() {
        let api = ApiServer::new();
        seed(&api.client(), "default", "demo").await;
        api.forbid("secrets");
        let (engine, _cloud, _hosts) = engine_with(Duration::from_secs(60));
        let (controller, metrics) = start(&api, engine, RunOptions::default());
        let why = eventually(30, "/readyz to name the forbidden watch", || metrics.readiness().err()).await;
        let why = eventually(30, "the 403 reason", || {
            let w = metrics.readiness().err().unwrap_or(why.clone());
            (w.contains("secrets") && w.contains("403")).then_some(w)
        })
        .await;
        assert!(why.contains("Role"), "{why}");
        let router = votingstack::metrics::router(metrics.clone());
        let response = tower::ServiceExt::oneshot(
            router,
            axum::http::Request::builder().uri("/readyz").body(axum::body::Body::empty()).unwrap(),
        )
        .await
        .unwrap();
        assert_eq!(response.status(), 503);
        controller.abort();
        let _ = controller.await;
    }

    #[tokio::test]
    async fn controller_missing_crd_and_undecodable_objects_show_in_readyz() {
        let api = ApiServer::new();
        api.unserve("votingstacks");
        let (engine, _cloud, _hosts) = engine_with(Duration::from_secs(60));
        let (controller, metrics) = start(&api, engine, RunOptions::default());
        let why = eventually(30, "/readyz to name the missing CRD", || {
            metrics.readiness().err().filter(|w| w.contains("is the CRD installed?"))
        })
        .await;
        assert!(why.contains("watch of votingstacks fails"), "{why}");
        controller.abort();
        let _ = controller.await;

        let api = ApiServer::new();
        let mut raw = serde_json::to_value(stack()).unwrap();
        raw["metadata"] = json!({"name": "broken"});
        raw["spec"]["ssh"]["port"] = json!("twenty-two");
        api.create_raw("votingstacks", "default", raw);
        let (engine, _cloud, _hosts) = engine_with(Duration::from_secs(60));
        let (controller, metrics) = start(&api, engine, RunOptions::default());
        eventually(30, "/readyz to name the undecodable object", || {
            metrics.readiness().err().filter(|w| w.contains("could not be decoded"))
        })
        .await;
        controller.abort();
        let _ = controller.await;
    }

    #[tokio::test]
    async fn controller_deletion_reports_deleting_and_orphan_skips_teardown() {
        let api = ApiServer::new();
        let client = api.client();
        seed(&client, "default", "demo").await;
        let (engine, cloud, _hosts) = engine_with(Duration::from_secs(60));
        let (controller, _metrics) = start(&api, engine, RunOptions::default());
        ready_within(&api, "default", "demo", 30).await;
        let stacks: Api<VotingStack> = Api::namespaced(client.clone(), "default");

        // The first teardown fails: the stack says it is being deleted, and why it is still here.
        cloud.state.lock().unwrap().fail_with = Some("DependencyViolation".into());
        stacks.delete("demo", &DeleteParams::default()).await.unwrap();
        let deleting = eventually(30, "phase Deleting", || {
            let obj = api.get("votingstacks", "default", "demo")?;
            (obj["status"]["phase"] == "Deleting").then_some(obj)
        })
        .await;
        assert_eq!(ready_of(&deleting), Some(("False".into(), "Deleting".into())));
        eventually(30, "the object to go", || api.get("votingstacks", "default", "demo").is_none().then_some(())).await;
        assert!(cloud.state.lock().unwrap().instances.is_empty(), "torn down on retry");

        // A stack annotated orphan-on-delete goes without teardown.
        seed_stack_only(&client, "kept").await;
        ready_within(&api, "default", "kept", 30).await;
        let patch = json!({"metadata": {"annotations": {votingstack::controller::ORPHAN_ANNOTATION: "true"}}});
        stacks.patch("kept", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&patch)).await.unwrap();
        stacks.delete("kept", &DeleteParams::default()).await.unwrap();
        eventually(30, "the orphaned object to go", || {
            api.get("votingstacks", "default", "kept").is_none().then_some(())
        })
        .await;
        assert_eq!(cloud.state.lock().unwrap().instances.len(), 3, "AWS left alone");
        assert!(api.requests().iter().any(|r| r.starts_with("POST /apis/events.k8s.io/v1/")));
        controller.abort();
        let _ = controller.await;
    }

    #[tokio::test(start_paused = true)]
    async fn controller_labelled_secret_change_reconciles_at_once() {
        let api = ApiServer::new();
        let client = api.client();
        seed(&client, "default", "demo").await;
        // Another namespace whose Secret lacks the label: read on demand, never watched.
        seed(&client, "quiet", "demo").await;
        let unlabel = json!({"metadata": {"labels": null}});
        let quiet: Api<Secret> = Api::namespaced(client.clone(), "quiet");
        quiet.patch("demo-ssh", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&unlabel)).await.unwrap();
        let (engine, _cloud, _hosts) = engine_with(Duration::from_secs(600));
        let (controller, _metrics) = start(&api, engine, RunOptions::default());
        ready_within(&api, "default", "demo", 60).await;
        ready_within(&api, "quiet", "demo", 60).await;

        let (loud_before, quiet_before) = (reconciles(&api, "default"), reconciles(&api, "quiet"));
        let touch = json!({"metadata": {"annotations": {"rotated": "1"}}});
        let loud: Api<Secret> = Api::namespaced(client.clone(), "default");
        loud.patch("demo-ssh", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&touch)).await.unwrap();
        quiet.patch("demo-ssh", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&touch)).await.unwrap();
        eventually(5, "a reconcile after the labelled Secret changed", || {
            (reconciles(&api, "default") > loud_before).then_some(())
        })
        .await;
        assert_eq!(reconciles(&api, "quiet"), quiet_before, "an unlabelled Secret waits for the resync");
        let secret_lists: Vec<String> =
            api.requests().into_iter().filter(|r| r.starts_with("GET /api/v1/secrets")).collect();
        assert!(!secret_lists.is_empty());
        assert!(
            secret_lists.iter().all(|r| r.contains("[votingstack.dev/ssh-key=true]")),
            "every Secret list and watch is label-selected: {secret_lists:?}"
        );
        controller.abort();
        let _ = controller.await;
    }

    #[tokio::test]
    async fn controller_stack_that_created_nothing_is_deleted_without_aws() {
        let api = ApiServer::new();
        let client = api.client();
        // A subnet outside the VPC: refused before anything is created.
        let stacks =
            seed_stack_and_secret_with(&client, |s| s.spec.network.subnet_cidr = "192.168.0.0/24".into()).await;
        let (engine, cloud, _hosts) = engine_with(Duration::from_secs(60));
        let (controller, _metrics) = start(&api, engine, RunOptions::default());
        let failed = eventually(30, "phase Failed", || {
            let obj = api.get("votingstacks", "default", "demo")?;
            (obj["status"]["phase"] == "Failed").then_some(obj)
        })
        .await;
        assert_eq!(failed["status"]["observedGeneration"], 1);
        // The credentials are gone too: teardown cannot run, and need not.
        cloud.state.lock().unwrap().fail_with = Some("AuthFailure".into());
        stacks.delete("demo", &DeleteParams::default()).await.unwrap();
        eventually(30, "the object to go", || api.get("votingstacks", "default", "demo").is_none().then_some(())).await;
        controller.abort();
        let _ = controller.await;
    }

    /// Runs the Controller until `shutdown` fires, with short shutdown timings.
    fn start_until(
        api: &ApiServer,
        engine: Engine,
        metrics: Arc<Metrics>,
        stop_first: bool,
    ) -> (tokio::task::JoinHandle<Drained>, tokio::sync::oneshot::Sender<()>) {
        let reporter = Reporter { controller: "votingstack-operator".into(), instance: Some("test".into()) };
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        let ctx = Context::new(api.client(), Arc::new(engine), metrics, reporter, None, tx);
        if stop_first {
            ctx.stop.request();
        }
        let (shutdown_tx, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
        let shutdown = async move {
            let _ = shutdown_rx.await;
        };
        let timings = ShutdownTimings { deadline: Duration::from_secs(5), step_grace: Duration::from_secs(5) };
        (tokio::spawn(run_controller_until(ctx, rx, RunOptions::default(), shutdown, timings)), shutdown_tx)
    }

    #[tokio::test]
    async fn controller_reconcile_stopped_for_shutdown_writes_nothing_and_the_controller_ends() {
        let api = ApiServer::new();
        seed(&api.client(), "default", "demo").await;
        let (engine, cloud, hosts) = engine_with(Duration::from_secs(60));
        let metrics = Arc::new(Metrics::default());
        let (controller, shutdown) = start_until(&api, engine, metrics.clone(), true);
        eventually(20, "a reconcile", || (reconciles(&api, "default") >= 1).then_some(())).await;
        let _ = shutdown.send(());
        let drained = tokio::time::timeout(Duration::from_secs(10), controller).await.expect("the Controller ends");
        assert_eq!(drained.unwrap(), Drained::Finished, "nothing was left running");
        assert_eq!(api.count("PATCH", "/votingstacks/demo/status"), 0, "no half-made status");
        assert!(!api.requests().iter().any(|r| r.starts_with("POST /apis/events.k8s.io/")), "no Event");
        use votingstack::cloud::Cloud;
        use votingstack::host::Hosts;
        assert_eq!((cloud.api_calls(), hosts.round_trips()), (0, 0), "stopped before the EC2 phase");
        assert!(metrics.render().contains("votingstack_reconcile_total 0"), "not counted as a reconcile");
        assert_eq!(
            metrics.liveness.check(tokio::time::Instant::now() + Duration::from_secs(3600)),
            Ok(()),
            "no longer leading"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn controller_idle_leader_stays_healthy_through_its_heartbeat() {
        let api = ApiServer::new();
        let (engine, _cloud, _hosts) = engine_with(Duration::from_secs(60));
        let metrics = Arc::new(Metrics::default());
        let rule = HealthRule { resync: Duration::from_secs(10), resyncs: 3 };
        metrics.liveness.set_rule(rule);
        let (controller, shutdown) = start_until(&api, engine, metrics.clone(), false);
        eventually(30, "the cache synced", || metrics.readiness().ok()).await;
        // Three bounds' worth of time with no stack at all: the heartbeat
        // comes back through the Controller every resync.
        let end = tokio::time::Instant::now() + rule.bound() * 3;
        while tokio::time::Instant::now() < end {
            assert_eq!(metrics.liveness.check(tokio::time::Instant::now()), Ok(()));
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
        let _ = shutdown.send(());
        let drained = tokio::time::timeout(Duration::from_secs(10), controller).await.expect("ends").unwrap();
        assert_eq!(drained, Drained::Finished);
    }

    /// The test stack and its Secret in `default`, as a user creates them.
    async fn seed_stack_and_secret(client: &kube::Client) -> Api<VotingStack> {
        seed_stack_and_secret_with(client, |_| {}).await
    }

    /// The fixture stack, changed by `edit`, and its SSH key Secret.
    async fn seed_stack_and_secret_with(
        client: &kube::Client,
        edit: impl FnOnce(&mut VotingStack),
    ) -> Api<VotingStack> {
        let secrets: Api<Secret> = Api::namespaced(client.clone(), "default");
        secrets.create(&PostParams::default(), &serde_json::from_value(secret()).unwrap()).await.unwrap();
        let stacks: Api<VotingStack> = Api::namespaced(client.clone(), "default");
        let mut s = stack();
        s.metadata.uid = None;
        s.metadata.generation = None;
        edit(&mut s);
        stacks.create(&PostParams::default(), &s).await.unwrap();
        stacks
    }

    async fn seed_stack_only(client: &kube::Client, name: &str) {
        let stacks: Api<VotingStack> = Api::namespaced(client.clone(), "default");
        let mut s = stack();
        s.metadata.name = Some(name.into());
        s.metadata.uid = None;
        s.metadata.generation = None;
        stacks.create(&PostParams::default(), &s).await.unwrap();
    }

    #[tokio::test]
    async fn controller_status_apply_drops_fields_no_longer_sent() {
        let api = ApiServer::new();
        let client = api.client();
        seed(&client, "default", "demo").await;
        let stored: VotingStack = Api::namespaced(client.clone(), "default").get("demo").await.unwrap();
        let mut status = votingstack::api::VotingStackStatus {
            vote_url: Some("http://10.42.1.6/".into()),
            phase: Some(votingstack::api::Phase::Ready),
            ..Default::default()
        };
        let written = votingstack::controller::write_status(&client, &stored, &status).await.unwrap();
        assert_eq!(api.get("votingstacks", "default", "demo").unwrap()["status"]["voteUrl"], "http://10.42.1.6/");
        status.vote_url = None;
        votingstack::controller::write_status(&client, &written, &status).await.unwrap();
        let obj = api.get("votingstacks", "default", "demo").unwrap();
        assert!(obj["status"].get("voteUrl").is_none(), "{obj}");
        assert_eq!(obj["status"]["phase"], "Ready");
        // The same content again is not written at all.
        let fresh: VotingStack = Api::namespaced(client.clone(), "default").get("demo").await.unwrap();
        let written = votingstack::controller::write_status_if_changed(&client, &fresh, &status).await.unwrap();
        assert!(written.is_none());
    }

    /// A Context over `engine` on the double, as a newly started operator has it.
    fn direct_context(api: &ApiServer, engine: Engine) -> Arc<Context> {
        let reporter = Reporter { controller: "votingstack-operator".into(), instance: Some("test".into()) };
        let (tx, _rx) = tokio::sync::mpsc::channel(8);
        Context::new(api.client(), Arc::new(engine), Arc::new(Metrics::default()), reporter, None, tx)
    }

    async fn read(client: &kube::Client, ns: &str, name: &str) -> Arc<VotingStack> {
        Arc::new(Api::<VotingStack>::namespaced(client.clone(), ns).get(name).await.unwrap())
    }

    #[tokio::test]
    async fn controller_status_apply_from_a_stale_resource_version_is_refused() {
        let api = ApiServer::new();
        let client = api.client();
        seed(&client, "default", "demo").await;
        let stale = read(&client, "default", "demo").await;
        let status = votingstack::api::VotingStackStatus {
            phase: Some(votingstack::api::Phase::Deploying),
            ..Default::default()
        };
        let newer = votingstack::controller::write_status(&client, &stale, &status).await.unwrap();
        assert_ne!(newer.metadata.resource_version, stale.metadata.resource_version);
        let other = votingstack::api::VotingStackStatus { phase: Some(votingstack::api::Phase::Failed), ..status };
        let err = votingstack::controller::write_status(&client, &stale, &other).await.expect_err("a stale apply");
        let kube::Error::Api(refusal) = &err else { panic!("not an API error: {err}") };
        assert_eq!((refusal.code, refusal.reason.as_str()), (409, "Conflict"), "{refusal:?}");
        assert!(votingstack::controller::is_conflict(&err));
        assert_eq!(api.get("votingstacks", "default", "demo").unwrap()["status"]["phase"], "Deploying");
        // From the object as it now is, the same apply goes through.
        votingstack::controller::write_status(&client, &newer, &other).await.unwrap();
        assert_eq!(api.get("votingstacks", "default", "demo").unwrap()["status"]["phase"], "Failed");
    }

    #[tokio::test]
    async fn controller_reconcile_of_a_stale_object_keeps_the_newer_status() {
        let api = ApiServer::new();
        let client = api.client();
        seed(&client, "default", "demo").await;
        let stacks: Api<VotingStack> = Api::namespaced(client.clone(), "default");
        let with_finalizer = json!({"metadata": {"finalizers": [FINALIZER]}});
        stacks
            .patch("demo", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&with_finalizer))
            .await
            .unwrap();
        let stale = read(&client, "default", "demo").await;
        assert!(stale.status.is_none());

        // The leader reconciles: status records the pinned host keys.
        let (engine, _cloud, _hosts) = engine_with(Duration::from_secs(60));
        let leader = direct_context(&api, engine);
        reconcile(stale.clone(), leader.clone()).await.expect("first reconcile");
        let pinned = api.get("votingstacks", "default", "demo").unwrap();
        let pin = &pinned["status"]["tiers"]["database"]["hostKeyFingerprint"];
        assert!(pin.is_string(), "{pinned}");

        // The same process reconciles again before its cache saw the write:
        // it goes on from what it wrote, and neither refetches nor conflicts.
        let writes = api.count("PATCH", "/votingstacks/demo/status");
        reconcile(stale.clone(), leader.clone()).await.expect("a reconcile on the cache it wrote over");
        assert_eq!(api.count("PATCH", "/votingstacks/demo/status"), writes, "nothing new to write");

        // A new leader whose cache lags: its status (no pins, new pin times)
        // is refused, the newer one stays, and it retries within a second.
        let (engine, _cloud, _hosts) = engine_with(Duration::from_secs(60));
        let lagging = direct_context(&api, engine);
        let err = reconcile(stale.clone(), lagging.clone()).await.expect_err("a status from a stale object");
        assert_eq!(err.kind(), votingstack::engine::Failure::Conflict, "{err}");
        let after = api.get("votingstacks", "default", "demo").unwrap();
        assert_eq!(after["status"], pinned["status"], "the newer status was overwritten");
        assert_eq!(after["metadata"]["resourceVersion"], pinned["metadata"]["resourceVersion"]);
        let action = votingstack::controller::error_policy(stale, &err, lagging.clone());
        assert_eq!(action, Action::requeue(Duration::from_secs(1)));
        // Read afresh, it reconciles from the newer status.
        reconcile(read(&client, "default", "demo").await, lagging).await.expect("a reconcile on the fresh object");
        let kept = api.get("votingstacks", "default", "demo").unwrap();
        assert_eq!(kept["status"]["tiers"]["database"]["hostKeyFingerprint"], *pin);
        assert_eq!(
            kept["status"]["tiers"]["database"]["hostKeyPinnedAt"],
            pinned["status"]["tiers"]["database"]["hostKeyPinnedAt"]
        );
    }

    /// The CRD's schema as the API server holds it, less the status field `field`:
    /// what an installed CRD older than the operator looks like.
    fn schema_without_status_field(field: &str) -> Value {
        use kube::CustomResourceExt;
        let crd = serde_json::to_value(VotingStack::crd()).unwrap();
        let mut schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone();
        let fields = schema["properties"]["status"]["properties"].as_object_mut().expect("status properties");
        assert!(fields.remove(field).is_some(), "status has no {field}");
        schema
    }

    #[tokio::test]
    async fn controller_status_field_the_installed_crd_lacks_does_not_block_deletion() {
        use kube::CustomResourceExt;
        let api = ApiServer::new();
        let client = api.client();
        seed(&client, "default", "demo").await;
        let crd = serde_json::to_value(VotingStack::crd()).unwrap();
        api.declare_schema("votingstacks", crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone());
        let (engine, cloud, _hosts) = engine_with(Duration::from_secs(60));
        let ctx = direct_context(&api, engine);
        // With the CRD the operator was built with, status is written.
        reconcile(read(&client, "default", "demo").await, ctx.clone()).await.expect("adds the finalizer");
        reconcile(read(&client, "default", "demo").await, ctx.clone()).await.expect("status accepted");
        assert_eq!(api.get("votingstacks", "default", "demo").unwrap()["status"]["phase"], "Ready");

        // An older CRD is installed; the spec changes, so status must be written.
        api.declare_schema("votingstacks", schema_without_status_field("observedGeneration"));
        let stacks: Api<VotingStack> = Api::namespaced(client.clone(), "default");
        let patch = json!({"spec": {"app": {"optionB": "Birds"}}});
        stacks.patch("demo", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&patch)).await.unwrap();
        let err = reconcile(read(&client, "default", "demo").await, ctx.clone()).await.expect_err("status refused");
        assert!(matches!(err, ControllerError::StatusRefused { .. }), "{err}");
        let message = err.to_string();
        assert!(message.contains("field not declared in schema") && message.contains("re-apply crds/"), "{message}");
        assert_eq!(api.get("votingstacks", "default", "demo").unwrap()["status"]["observedGeneration"], 1);

        // Deletion goes on without the Deleting status: torn down, and gone.
        stacks.delete("demo", &DeleteParams::default()).await.unwrap();
        let doomed = read(&client, "default", "demo").await;
        assert!(doomed.metadata.deletion_timestamp.is_some());
        let refused_before = api.count("PATCH", "/votingstacks/demo/status");
        reconcile(doomed, ctx).await.expect("cleanup despite the refused status");
        assert!(api.count("PATCH", "/votingstacks/demo/status") > refused_before, "the Deleting status was tried");
        assert!(api.get("votingstacks", "default", "demo").is_none(), "the finalizer was removed");
        assert!(cloud.state.lock().unwrap().instances.is_empty(), "torn down");
    }

    #[tokio::test]
    async fn controller_watches_several_namespaces_into_one_cache() {
        let api = ApiServer::new();
        let client = api.client();
        for ns in ["team-a", "team-b", "team-c"] {
            seed(&client, ns, "demo").await;
        }
        api.namespaced_only();
        let seeded = api.requests().len();
        let (engine, _cloud, _hosts) = engine_with(Duration::from_secs(600));
        let opts = RunOptions { namespaces: vec!["team-a".into(), "team-b".into()], ..Default::default() };
        let (controller, metrics) = start(&api, engine, opts);
        ready_within(&api, "team-a", "demo", 30).await;
        ready_within(&api, "team-b", "demo", 30).await;
        eventually(10, "/readyz ready", || metrics.readiness().ok()).await;
        let other = api.get("votingstacks", "team-c", "demo").unwrap();
        assert!(other["metadata"]["finalizers"].is_null() && other["status"].is_null(), "{other}");
        let outside: Vec<String> = api
            .requests()
            .into_iter()
            .skip(seeded)
            .filter(|r| !r.contains("/namespaces/team-a/") && !r.contains("/namespaces/team-b/"))
            .collect();
        assert!(outside.is_empty(), "requests outside team-a and team-b: {outside:?}");
        for ns in ["team-a", "team-b"] {
            let secret_watches =
                api.count("GET", &format!("/api/v1/namespaces/{ns}/secrets [votingstack.dev/ssh-key=true] (watch)"));
            assert!(secret_watches >= 1, "no labelled Secret watch in {ns}");
        }

        // Each namespace lists again after 410 Gone; neither list drops the
        // other namespace's stacks from the cache.
        let lists =
            |ns: &str| api.count("GET", &format!("/apis/votingstack.dev/v1alpha1/namespaces/{ns}/votingstacks"));
        let before = (lists("team-a"), lists("team-b"));
        api.compact();
        eventually(30, "both namespaces to list again", || {
            (lists("team-a") > before.0 && lists("team-b") > before.1).then_some(())
        })
        .await;
        eventually(30, "/readyz ready again", || metrics.readiness().ok()).await;
        assert!(metrics.render().contains("votingstack_ready_stacks 2"), "{}", metrics.render());
        // And both still reconcile on a change.
        for ns in ["team-a", "team-b"] {
            let stacks: Api<VotingStack> = Api::namespaced(client.clone(), ns);
            let patch = json!({"spec": {"app": {"optionB": "Birds"}}});
            stacks.patch("demo", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&patch)).await.unwrap();
        }
        for ns in ["team-a", "team-b"] {
            eventually(30, "observedGeneration 2", || {
                let obj = api.get("votingstacks", ns, "demo")?;
                (obj["status"]["observedGeneration"] == 2).then_some(())
            })
            .await;
        }
        controller.abort();
        let _ = controller.await;
    }

    #[tokio::test]
    async fn controller_secret_string_data_is_stored_as_data() {
        let api = ApiServer::new();
        let secrets: Api<Secret> = Api::namespaced(api.client(), "default");
        secrets.create(&PostParams::default(), &serde_json::from_value(secret()).unwrap()).await.unwrap();
        let raw = api.get("secrets", "default", "demo-ssh").unwrap();
        assert!(raw.get("stringData").is_none(), "{raw}");
        let read = secrets.get("demo-ssh").await.unwrap();
        let key = votingstack::manifest::key_from_secret(&read, "ssh-privatekey");
        assert!(key.is_ok(), "the key reads back from data");
    }
}

#[test]
fn controller_event_notes_are_cut_on_a_character_boundary() {
    use votingstack::controller::{cut_note, EVENT_NOTE_LIMIT};
    let long = "é".repeat(EVENT_NOTE_LIMIT);
    let cut = cut_note(&long, EVENT_NOTE_LIMIT);
    assert!(cut.len() <= EVENT_NOTE_LIMIT && cut.len() >= EVENT_NOTE_LIMIT - 1, "{}", cut.len());
    assert!(cut.chars().all(|c| c == 'é'));
    assert_eq!(cut_note("short", EVENT_NOTE_LIMIT), "short");
}

#[test]
fn controller_backoff_per_cause_stays_short_for_ssh() {
    use votingstack::engine::Failure;
    assert_eq!(Failure::Ssh.backoff(1), Duration::from_secs(1));
    assert_eq!(Failure::Ssh.backoff(30), Duration::from_secs(10));
    assert_eq!(Failure::Kube.backoff(30), Duration::from_secs(30));
    assert_eq!(Failure::Aws.backoff(20), Duration::from_secs(300));
}
