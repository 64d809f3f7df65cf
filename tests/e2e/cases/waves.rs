//! Progressive config rollouts on a real control plane: a bad edit of a ConfigMap read by ten
//! Deployments rolls only the first, and the fix rolls every one of them once.
//!
//! There is no kubelet, so a task here plays one: each new Pod is started with the value its
//! container reads (`MODE` of ConfigMap `shared`, read when the Pod is first seen, as a kubelet
//! resolves env at container start); `broken` crash-loops (restarts, `CrashLoopBackOff`), any
//! other value is Running and Ready.

use super::rollout::event_notes;
use crate::harness::{Confgate, Cx, Kubectl, Options, eventually};
use serde_json::{Value, json};
use std::collections::HashSet;
use std::time::Duration;

const READERS: usize = 10;

/// `checksum-config` rolling in waves of one, judged healthy after 2 s (30 s by default).
fn policy(ns: &str) -> String {
    format!(
        r#"apiVersion: confgate.dev/v1alpha1
kind: Policy
metadata: {{name: checksum-config}}
spec:
  type: checksum-config
  onError: Allow
  failurePolicy: Ignore
  match: {{namespaces: [{ns}]}}
  settings:
    waves: {{firstWave: 1, settleSeconds: 2, timeoutSeconds: 120}}
"#
    )
}

fn app(ns: &str) -> String {
    let mut out = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: shared, namespace: {ns}}}\ndata: {{MODE: good}}\n"
    );
    for i in 0..READERS {
        out.push_str(&format!(
            r#"---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: reader-{i}, namespace: {ns}}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: reader-{i}}}}}
  template:
    metadata: {{labels: {{app: reader-{i}}}}}
    spec:
      containers:
      - name: app
        image: registry.example/reader:1
        env:
        - name: MODE
          valueFrom: {{configMapKeyRef: {{name: shared, key: MODE}}}}
"#
        ));
    }
    out
}

/// Plays the kubelet for the namespace until aborted.
fn kubelet(kubectl: Kubectl, ns: String) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut started: HashSet<String> = HashSet::new();
        loop {
            if let (Some(pods), Some(shared)) = (
                kubectl.get(&ns, "pods").await,
                kubectl.get(&ns, "configmap/shared").await,
            ) {
                let mode = shared["data"]["MODE"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                for pod in pods["items"].as_array().into_iter().flatten() {
                    let uid = pod["metadata"]["uid"].as_str().unwrap_or_default();
                    let name = pod["metadata"]["name"].as_str().unwrap_or_default();
                    if pod["metadata"]["deletionTimestamp"].is_string()
                        || !started.insert(uid.to_owned())
                    {
                        continue;
                    }
                    let status = start(&mode);
                    kubectl
                        .ok(
                            &[
                                "patch",
                                "pod",
                                name,
                                "-n",
                                &ns,
                                "--subresource=status",
                                "--type=merge",
                                "-p",
                                &status.to_string(),
                            ],
                            None,
                        )
                        .await;
                }
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    })
}

/// The status a kubelet reports for a container started with `MODE=mode`.
fn start(mode: &str) -> Value {
    let now = "2026-01-01T00:00:00Z";
    let ready = mode != "broken";
    let state = if ready {
        json!({"running": {"startedAt": now}})
    } else {
        json!({"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 20s restarting failed container"}})
    };
    let flag = if ready { "True" } else { "False" };
    json!({"status": {
        "phase": "Running",
        "conditions": [
            {"type": "PodScheduled", "status": "True"},
            {"type": "ContainersReady", "status": flag},
            {"type": "Ready", "status": flag}],
        "containerStatuses": [{
            "name": "app", "image": "registry.example/reader:1", "imageID": "",
            "ready": ready, "restartCount": if ready { 0 } else { 3 }, "started": ready,
            "state": state}]}})
}

/// ReplicaSets per reader, in reader order.
async fn replica_sets(kubectl: &Kubectl, ns: &str) -> Vec<usize> {
    let list = kubectl.get(ns, "replicasets").await.unwrap_or_default();
    (0..READERS)
        .map(|i| {
            let owner = format!("reader-{i}");
            list["items"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|rs| rs["metadata"]["ownerReferences"][0]["name"] == owner.as_str())
                .count()
        })
        .collect()
}

async fn all_available(kubectl: &Kubectl, ns: &str) -> bool {
    let Some(list) = kubectl.get(ns, "deployments").await else {
        return false;
    };
    let items = list["items"].as_array().cloned().unwrap_or_default();
    items.len() == READERS
        && items.iter().all(|d| {
            d["status"]["availableReplicas"] == 1
                && d["status"]["updatedReplicas"] == 1
                && d["status"]["replicas"] == 1
        })
}

async fn set_mode(kubectl: &Kubectl, ns: &str, mode: &str) {
    super::set_config_key(kubectl, ns, "shared", "MODE", mode).await;
}

/// A JSON webhook receiver (as Slack's incoming webhooks): the `text` of every POST.
async fn receiver() -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use axum::{Json, Router, routing::post};
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = got.clone();
    let app = Router::new().route(
        "/hook",
        post(move |Json(body): Json<Value>| {
            let sink = sink.clone();
            async move {
                let text = body["text"].as_str().unwrap_or_default().to_owned();
                sink.lock().unwrap().push(text);
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, got)
}

pub async fn e2e_a_bad_edit_of_a_shared_config_map_stops_at_the_first_wave(cx: Cx) {
    let ns = cx.namespace("waves").await;
    let kubectl = cx.kubectl();
    // Notifications go to a webhook whose URL is in a Secret.
    let (url, notices) = receiver().await;
    kubectl
        .ok(
            &[
                "create",
                "secret",
                "generic",
                "confgate-notify",
                "-n",
                &ns,
                &format!("--from-literal=url={url}"),
            ],
            None,
        )
        .await;
    let confgate = Confgate::start(
        &cx,
        Options::with_policies(&ns, &policy(&ns))
            .arg("--rollout-rate-per-minute=600")
            .arg("--notify-secret=confgate-notify"),
    )
    .await;
    kubectl.ok(&["apply", "-f", "-"], Some(&app(&ns))).await;
    let player = kubelet(kubectl.clone(), ns.clone());
    eventually(Duration::from_secs(60), "every reader available", || {
        let (kubectl, ns) = (kubectl.clone(), ns.clone());
        async move { all_available(&kubectl, &ns).await.then_some(()) }
    })
    .await;
    assert_eq!(replica_sets(&kubectl, &ns).await, vec![1; READERS]);

    // A bad edit: the first reader rolls, crash-loops, and the change stops there.
    set_mode(&kubectl, &ns, "broken").await;
    let halted = eventually(Duration::from_secs(60), "a RolloutHalted Event", || {
        let (kubectl, ns) = (kubectl.clone(), ns.clone());
        async move {
            let notes = event_notes(&kubectl, &ns, "RolloutHalted").await;
            (!notes.is_empty()).then_some(notes)
        }
    })
    .await;
    let mut first = vec![1; READERS];
    first[0] = 2;
    assert_eq!(replica_sets(&kubectl, &ns).await, first);
    assert_eq!(halted.len(), 1, "{halted:?}");
    let pod = halted[0]
        .strip_prefix("this change broke the first reader rolled (deployment ")
        .unwrap_or_else(|| panic!("{halted:?}"));
    assert!(
        pod.starts_with(&format!("{ns}/reader-0: pod reader-0-"))
            && pod.ends_with(&format!(
                " container app: CrashLoopBackOff); it is held for the 9 other readers until configmap {ns}/shared is edited again"
            )),
        "{halted:?}"
    );
    let failed = event_notes(&kubectl, &ns, "ConfigRolloutFailed").await;
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert!(
        failed[0].starts_with(&format!(
            "its rollout for the change of configmap {ns}/shared failed: pod reader-0-"
        )),
        "{failed:?}"
    );
    // The others stay on the good configuration.
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(replica_sets(&kubectl, &ns).await, first);
    assert_eq!(
        confgate
            .metric("confgate_rollouts_held{reason=\"wave_failed\"}")
            .await,
        9.0
    );
    assert_eq!(
        confgate
            .metric("confgate_rollout_waves_total{result=\"failed\"}")
            .await,
        1.0
    );
    let failure = format!("❌ configmap {ns}/shared: {}", halted[0]);
    eventually(Duration::from_secs(15), "the failure notified", || {
        let (notices, failure) = (notices.clone(), failure.clone());
        async move {
            let notices = notices.lock().unwrap().join("\n");
            notices.contains(&failure).then_some(())
        }
    })
    .await;

    // The fix: the broken reader rolls first, then, once it is healthy, every other one, once.
    set_mode(&kubectl, &ns, "fixed").await;
    let mut fixed = vec![2; READERS];
    fixed[0] = 3;
    eventually(Duration::from_secs(90), "every reader rolled", || {
        let (kubectl, ns, fixed) = (kubectl.clone(), ns.clone(), fixed.clone());
        async move { (replica_sets(&kubectl, &ns).await == fixed).then_some(()) }
    })
    .await;
    eventually(Duration::from_secs(60), "every reader available", || {
        let (kubectl, ns) = (kubectl.clone(), ns.clone());
        async move { all_available(&kubectl, &ns).await.then_some(()) }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(replica_sets(&kubectl, &ns).await, fixed);
    assert_eq!(
        confgate
            .metric("confgate_rollout_waves_total{result=\"passed\"}")
            .await,
        1.0
    );
    assert_eq!(
        confgate
            .metric("confgate_rollouts_held{reason=\"wave_failed\"}")
            .await,
        0.0
    );
    // Eleven rollouts: the first reader twice, the others once.
    assert_eq!(
        confgate
            .metric("confgate_rollouts_total{result=\"triggered\"}")
            .await,
        (READERS + 1) as f64
    );
    eventually(Duration::from_secs(15), "the passed wave notified", || {
        let (notices, ns) = (notices.clone(), ns.clone());
        async move {
            let notices = notices.lock().unwrap().join("\n");
            notices
                .contains(&format!(
                    "✅ configmap {ns}/shared: the first wave is healthy; the other readers roll"
                ))
                .then_some(())
        }
    })
    .await;
    player.abort();
}
