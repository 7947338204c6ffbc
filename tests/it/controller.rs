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

        let mut reasons = Vec::new();
        for _ in 0..6 {
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
    async fn controller_runs_create_waiting_ready_delete_on_a_stateful_api() {
        let api = ApiServer::new();
        let client = api.client();
        let secrets: Api<Secret> = Api::namespaced(client.clone(), "default");
        secrets.create(&PostParams::default(), &serde_json::from_value(secret()).unwrap()).await.unwrap();
        let stacks: Api<VotingStack> = Api::namespaced(client.clone(), "default");
        let mut s = stack();
        s.metadata.uid = None;
        s.metadata.generation = None;
        stacks.create(&PostParams::default(), &s).await.unwrap();

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
}
