//! The live cluster state against a real apiserver: the initial list and watch events reach the
//! caches, readiness waits for them, Secrets are read by name under the shipped RBAC, and losing
//! the API server (a cut proxy between confgate and the apiserver) leaves confgate answering from
//! its last cache, saying so, and recovering by itself.

use super::{app_config, web_deployment};
use crate::harness::control_plane::write_kubeconfig;
use crate::harness::proxy::Proxy;
use crate::harness::{Confgate, Cx, Kubectl, Options, eventually, root};
use std::net::SocketAddr;
use std::time::Duration;

/// A Deployment that reads `key` from ConfigMap `config_map`.
fn consumer(ns: &str, name: &str, config_map: &str, key: &str) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}, namespace: {ns}}}
spec:
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      containers:
      - name: app
        image: nginx
        env:
        - name: {key}
          valueFrom: {{configMapKeyRef: {{name: {config_map}, key: {key}}}}}
"#
    )
}

/// The apiserver's answer to a server-side dry-run of `manifest`: `Ok` or the error text.
async fn judge(kubectl: &Kubectl, manifest: &str) -> Result<(), String> {
    let run = kubectl
        .run(&["apply", "--dry-run=server", "-f", "-"], Some(manifest))
        .await;
    if run.success { Ok(()) } else { Err(run.stderr) }
}

/// A kubeconfig that reaches the apiserver through `proxy`.
fn proxied_kubeconfig(cx: &Cx, proxy: &Proxy, dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("proxied-kubeconfig");
    write_kubeconfig(
        &path,
        &format!("https://127.0.0.1:{}", proxy.port),
        "admin-token",
    )
    .unwrap();
    let _ = cx;
    path
}

fn apiserver_addr(cx: &Cx) -> SocketAddr {
    cx.plane
        .server
        .trim_start_matches("https://")
        .parse()
        .expect("apiserver address")
}

pub async fn e2e_live_cache_follows_initial_list_and_watch_events(cx: Cx) {
    let ns = cx.namespace("live-cache").await;
    let kubectl = cx.kubectl();
    kubectl
        .ok(
            &[
                "create",
                "configmap",
                "before",
                "-n",
                &ns,
                "--from-literal=A=1",
            ],
            None,
        )
        .await;
    let _confgate = Confgate::start(&cx, Options::shipped(&ns)).await;
    // From the initial list.
    judge(&kubectl, &consumer(&ns, "a", "before", "A"))
        .await
        .unwrap();
    let denied = judge(&kubectl, &consumer(&ns, "z", "before", "Z"))
        .await
        .unwrap_err();
    assert!(
        denied.contains(&format!("configmap \"{ns}/before\" has no key \"Z\"")),
        "{denied}"
    );
    // A watch event: a ConfigMap created after the start.
    kubectl
        .ok(
            &[
                "create",
                "configmap",
                "after",
                "-n",
                &ns,
                "--from-literal=B=1",
            ],
            None,
        )
        .await;
    eventually(Duration::from_secs(10), "the new ConfigMap is seen", || {
        let kubectl = kubectl.clone();
        let manifest = consumer(&ns, "b", "after", "B");
        async move { judge(&kubectl, &manifest).await.ok() }
    })
    .await;
    // An update that removes the key, then a deletion.
    kubectl
        .ok(
            &[
                "patch",
                "configmap",
                "after",
                "-n",
                &ns,
                "--type=json",
                "-p",
                r#"[{"op":"remove","path":"/data/B"}]"#,
            ],
            None,
        )
        .await;
    let denied = eventually(Duration::from_secs(10), "the removed key is seen", || {
        let kubectl = kubectl.clone();
        let manifest = consumer(&ns, "b", "after", "B");
        async move { judge(&kubectl, &manifest).await.err() }
    })
    .await;
    assert!(
        denied.contains(&format!("configmap \"{ns}/after\" has no key \"B\"")),
        "{denied}"
    );
    kubectl
        .ok(&["delete", "configmap", "before", "-n", &ns], None)
        .await;
    let denied = eventually(Duration::from_secs(10), "the deletion is seen", || {
        let kubectl = kubectl.clone();
        let manifest = consumer(&ns, "a", "before", "A");
        async move { judge(&kubectl, &manifest).await.err() }
    })
    .await;
    assert!(
        denied.contains(&format!("configmap \"{ns}/before\" not found")),
        "{denied}"
    );
}

pub async fn e2e_apiserver_loss_serves_last_cache_reports_staleness_and_recovers(cx: Cx) {
    let ns = cx.namespace("apiserver-loss").await;
    let kubectl = cx.kubectl();
    kubectl
        .ok(
            &[
                "create",
                "configmap",
                "kept",
                "-n",
                &ns,
                "--from-literal=A=1",
            ],
            None,
        )
        .await;
    let proxy = Proxy::start(apiserver_addr(&cx)).await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = proxied_kubeconfig(&cx, &proxy, dir.path());
    let confgate = Confgate::start(&cx, Options::shipped(&ns).kubeconfig(&kubeconfig)).await;
    assert_eq!(
        confgate
            .metric("confgate_cache_stale_seconds{resource=\"configmaps\"}")
            .await,
        0.0
    );

    proxy.cut();
    // Changed behind confgate's back.
    kubectl
        .ok(&["delete", "configmap", "kept", "-n", &ns], None)
        .await;
    kubectl
        .ok(
            &[
                "create",
                "configmap",
                "new",
                "-n",
                &ns,
                "--from-literal=NEW=1",
            ],
            None,
        )
        .await;
    let body = eventually(Duration::from_secs(20), "/readyz reports staleness", || {
        let confgate = &confgate;
        async move {
            let (status, body) = confgate.get("/readyz").await?;
            assert_eq!(status, 200, "stays ready while stale: {body}");
            body.contains("stale").then_some(body)
        }
    })
    .await;
    assert!(
        body.contains(
            "stale: API server unreachable, answering from the last state seen: configmaps for "
        ),
        "{body}"
    );
    assert!(
        confgate
            .metric("confgate_cache_stale_seconds{resource=\"configmaps\"}")
            .await
            > 0.0
    );
    // Still answering, from the last state it saw: `kept` still exists for confgate.
    judge(&kubectl, &consumer(&ns, "a", "kept", "A"))
        .await
        .unwrap();

    proxy.restore();
    let denied = eventually(Duration::from_secs(30), "the cache catches up", || {
        let kubectl = kubectl.clone();
        let manifest = consumer(&ns, "a", "kept", "A");
        async move { judge(&kubectl, &manifest).await.err() }
    })
    .await;
    assert!(
        denied.contains(&format!("configmap \"{ns}/kept\" not found")),
        "{denied}"
    );
    judge(&kubectl, &consumer(&ns, "uses-new", "new", "NEW"))
        .await
        .unwrap();
    eventually(Duration::from_secs(30), "staleness clears", || {
        let confgate = &confgate;
        async move {
            let (_, body) = confgate.get("/readyz").await?;
            let stale = confgate
                .metric("confgate_cache_stale_seconds{resource=\"configmaps\"}")
                .await;
            (!body.contains("stale") && stale == 0.0).then_some(())
        }
    })
    .await;
}

pub async fn e2e_readiness_waits_for_cache_sync(cx: Cx) {
    let ns = cx.namespace("readiness").await;
    let proxy = Proxy::start(apiserver_addr(&cx)).await;
    proxy.cut();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = proxied_kubeconfig(&cx, &proxy, dir.path());
    let mut confgate =
        Confgate::start(&cx, Options::shipped(&ns).kubeconfig(&kubeconfig).no_wait()).await;
    let (status, body) = eventually(Duration::from_secs(30), "/readyz answers", || {
        let confgate = &confgate;
        async move { confgate.get("/readyz").await }
    })
    .await;
    assert_eq!(status, 503);
    assert_eq!(
        body.trim(),
        "not ready: waiting for caches to sync: configmaps, namespaces, limitranges, resourcequotas"
    );
    proxy.restore();
    confgate.wait_ready().await;
    let (_, body) = confgate.get("/readyz").await.unwrap();
    let shipped = confgate::policy::load_dir(
        &crate::harness::root().join("policies"),
        &confgate::policy::Registry::builtin(),
    )
    .unwrap()
    .policies
    .len();
    assert!(
        body.starts_with(&format!("ok: {shipped} policies; live cluster")),
        "{body}"
    );
}

/// deploy/base's RBAC (edited by `edit`), bound to a ServiceAccount `confgate` of namespace
/// `ns` (its ClusterRoles renamed, so tests never rebind each other's), and a kubeconfig with
/// that ServiceAccount's token (in the returned directory).
async fn shipped_rbac(
    cx: &Cx,
    ns: &str,
    edit: impl Fn(String) -> String,
) -> (tempfile::TempDir, std::path::PathBuf) {
    let kubectl = cx.kubectl();
    kubectl
        .ok(&["create", "serviceaccount", "confgate", "-n", ns], None)
        .await;
    for file in ["rbac.yaml", "rbac-secrets.yaml"] {
        let text = std::fs::read_to_string(root().join("deploy/base").join(file)).unwrap();
        let mut text = text.replace("namespace: confgate-system", &format!("namespace: {ns}"));
        for role in [
            "cluster-state",
            "secrets-reader",
            "config-guard",
            "followup",
            "rollout",
            "audit",
            "manage-webhooks",
        ] {
            text = text.replace(
                &format!("name: confgate-{role}\n"),
                &format!("name: confgate-{role}-{ns}\n"),
            );
        }
        kubectl.ok(&["apply", "-f", "-"], Some(&edit(text))).await;
    }
    let token = kubectl
        .ok(&["create", "token", "confgate", "-n", ns], None)
        .await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("sa-kubeconfig");
    write_kubeconfig(&kubeconfig, &cx.plane.server, token.trim()).unwrap();
    (dir, kubeconfig)
}

pub async fn e2e_secrets_read_by_name_with_the_shipped_rbac(cx: Cx) {
    let ns = cx.namespace("secrets-rbac").await;
    let kubectl = cx.kubectl();
    kubectl
        .ok(&["apply", "-f", "-"], Some(&app_config(&ns)))
        .await;
    let (_dir, kubeconfig) = shipped_rbac(&cx, &ns, |text| text).await;
    let sa = format!("system:serviceaccount:{ns}:confgate");
    for (verb, expected) in [("get", "yes"), ("list", "no"), ("watch", "no")] {
        let run = kubectl
            .run(&["auth", "can-i", verb, "secrets", "--as", &sa, "-A"], None)
            .await;
        assert_eq!(run.stdout.trim(), expected, "{verb} secrets");
    }
    let confgate = Confgate::start(
        &cx,
        Options::shipped(&ns)
            .kubeconfig(&kubeconfig)
            .arg("--secrets=get"),
    )
    .await;
    kubectl
        .ok(
            &["apply", "-f", "-"],
            Some(&web_deployment(&ns, "web", &[])),
        )
        .await;
    let denied = judge(
        &kubectl,
        &web_deployment(
            &ns,
            "other",
            &["{name: NOPE, valueFrom: {secretKeyRef: {name: app-secret, key: NOPE}}}"],
        ),
    )
    .await
    .unwrap_err();
    assert!(
        denied.contains(&format!(
            "container \"web\": env NOPE: secret \"{ns}/app-secret\" has no key \"NOPE\""
        )),
        "{denied}"
    );
    let log = std::fs::read_to_string(confgate.dir.path().join("confgate.log")).unwrap();
    assert!(!log.contains("s3cr3t-value") && !log.contains("xyzzy"));
    assert!(
        !log.contains("forbidden"),
        "an RBAC refusal was logged:\n{log}"
    );
}

pub async fn e2e_review_reads_a_live_cluster_with_a_kubeconfig(cx: Cx) {
    let ns = cx.namespace("review-live").await;
    let kubectl = cx.kubectl();
    kubectl
        .ok(&["apply", "-f", "-"], Some(&app_config(&ns)))
        .await;
    let review = |manifest: String| {
        let kubeconfig = cx.plane.kubeconfig.clone();
        async move {
            let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_confgate"))
                .args(["review", "--cluster", "-o", "summary", "-"])
                .current_dir(root())
                .env("KUBECONFIG", kubeconfig)
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            use tokio::io::AsyncWriteExt;
            let mut stdin = child.stdin.take().unwrap();
            stdin.write_all(manifest.as_bytes()).await.unwrap();
            drop(stdin);
            let out = child.wait_with_output().await.unwrap();
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        }
    };
    // Every reference resolves in the cluster (the Secret read by name): allowed.
    let (code, stdout, stderr) = review(web_deployment(&ns, "web", &[])).await;
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(
        stdout.starts_with(&format!("ALLOWED Deployment {ns}/web\n")),
        "{stdout}"
    );
    // A key the cluster's ConfigMap lacks: denied, as the webhook would.
    let (code, stdout, _) = review(web_deployment(
        &ns,
        "web",
        &["{name: X, valueFrom: {secretKeyRef: {name: app-secret, key: NOPE}}}"],
    ))
    .await;
    assert_eq!(code, Some(1), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "require-config-keys: container \"web\": env X: secret \"{ns}/app-secret\" has no key \"NOPE\""
        )),
        "{stdout}"
    );
}

pub async fn e2e_a_kind_confgate_may_not_list_is_left_out_and_it_still_becomes_ready(cx: Cx) {
    let ns = cx.namespace("rbac-no-cronjobs").await;
    let kubectl = cx.kubectl();
    kubectl
        .ok(&["apply", "-f", "-"], Some(&app_config(&ns)))
        .await;
    // deploy/base's RBAC without `list`/`watch` on CronJobs.
    let (_dir, kubeconfig) = shipped_rbac(&cx, &ns, |text| {
        text.replace(
            "  resources: [cronjobs]\n  verbs: [get, list, watch, patch]",
            "  resources: [cronjobs]\n  verbs: [get, patch]",
        )
    })
    .await;
    let sa = format!("system:serviceaccount:{ns}:confgate");
    let run = kubectl
        .run(
            &["auth", "can-i", "list", "cronjobs", "--as", &sa, "-A"],
            None,
        )
        .await;
    assert_eq!(run.stdout.trim(), "no");
    // Ready (start waits for /readyz 200), saying what it left out.
    let confgate = Confgate::start(&cx, Options::shipped(&ns).kubeconfig(&kubeconfig)).await;
    let (status, body) = confgate.get("/readyz").await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("not permitted to list (left out): cronjobs"),
        "{body}"
    );
    assert_eq!(
        confgate
            .metric("confgate_cache_forbidden{resource=\"cronjobs\"}")
            .await,
        1.0
    );
    // Everything else works: a Deployment with a missing key is denied.
    let stderr = kubectl
        .fails(
            &["apply", "-f", "-"],
            Some(&web_deployment(
                &ns,
                "api",
                &["{name: X, valueFrom: {configMapKeyRef: {name: app-config, key: NOPE}}}"],
            )),
        )
        .await;
    assert!(
        stderr.contains(&format!(
            "configmap \"{ns}/app-config\" has no key \"NOPE\""
        )),
        "{stderr}"
    );
    // One warning about it in the log, not one per retry.
    let refusals = confgate
        .log_tail(2000)
        .lines()
        .filter(|l| l.contains("refuses to list it"))
        .count();
    assert_eq!(refusals, 1);
}
