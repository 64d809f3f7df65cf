//! The config guard (`protect-config-keys`) on a real control plane: configuration that live
//! workloads read is protected (a key they read cannot go; the object's deletion waits for its
//! last reader), and tearing an app down goes through in any order, with any tool.

use super::rollout::event_notes;
use super::{app_config, remove_config_key, web_deployment};
use crate::harness::{Confgate, Cx, Kubectl, Options, eventually};
use std::time::Duration;

/// How long a deletion may take once its last reader is gone (the README's bound).
const LET_GO: Duration = Duration::from_secs(10);

/// How long the Lease is valid without renewal: a restarted replica leads after it.
fn crate_lease_duration() -> Duration {
    confgate::controllers::lease::DURATION
}

/// Waits until ConfigMap `app-config` carries confgate's mark (its readers are indexed).
async fn marked(kubectl: &Kubectl, ns: &str) {
    eventually(
        Duration::from_secs(15),
        "the ConfigMap marked in use",
        || async {
            let cm = kubectl.get(ns, "configmap/app-config").await?;
            cm["metadata"]["finalizers"]
                .as_array()?
                .iter()
                .any(|f| {
                    f.as_str()
                        .is_some_and(|f| f.starts_with("confgate.dev/in-use-"))
                })
                .then_some(())
        },
    )
    .await;
}

/// Waits until `what` is gone from `ns`.
async fn gone(kubectl: &Kubectl, ns: &str, what: &str, limit: Duration) {
    eventually(limit, &format!("{what} gone"), || async {
        kubectl.get(ns, what).await.is_none().then_some(())
    })
    .await;
}

pub async fn e2e_config_in_use_keeps_its_keys_and_its_deletion_waits_for_the_last_reader(cx: Cx) {
    let ns = cx.namespace("guard").await;
    let kubectl = cx.kubectl();
    kubectl
        .ok(&["apply", "-f", "-"], Some(&app_config(&ns)))
        .await;
    let confgate = Confgate::start(&cx, Options::shipped(&ns)).await;
    kubectl
        .ok(
            &["apply", "-f", "-"],
            Some(&web_deployment(&ns, "web", &[])),
        )
        .await;
    marked(&kubectl, &ns).await;
    // Deleted alone while the Deployment reads it: accepted, and deferred.
    let run = kubectl
        .run(
            &[
                "delete",
                "configmap",
                "app-config",
                "-n",
                &ns,
                "--wait=false",
            ],
            None,
        )
        .await;
    assert!(run.success, "{}", run.stderr);
    assert!(
        run.stderr.contains(&format!(
            "protect-config-keys: configmap \"{ns}/app-config\" is used by deployment {ns}/web (init container migrate, envFrom; container web, env DATABASE_URL; volume config); its deletion waits until they no longer read it, then completes by itself"
        )),
        "{}",
        run.stderr
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let waiting = kubectl.get(&ns, "configmap/app-config").await.unwrap();
    assert!(waiting["metadata"]["deletionTimestamp"].is_string());
    let notes = eventually(
        Duration::from_secs(10),
        "a DeletionDeferred Event",
        || async {
            let notes = event_notes(&kubectl, &ns, "DeletionDeferred").await;
            (!notes.is_empty()).then_some(notes)
        },
    )
    .await;
    assert_eq!(
        notes,
        vec![format!(
            "deletion deferred: read by deployment {ns}/web; it is deleted as soon as none of them reads it"
        )]
    );
    assert_eq!(confgate.metric("confgate_deletions_deferred").await, 1.0);
    // `confgate audit` lists it among what is waiting.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_confgate"))
        .args(["audit", "--policies"])
        .arg(confgate.policies_dir())
        .env("KUBECONFIG", &cx.plane.kubeconfig)
        .output()
        .await
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    let line = table
        .lines()
        .find(|l| l.starts_with(&ns) && l.contains("ConfigMap"))
        .unwrap_or_else(|| panic!("{table}{}", String::from_utf8_lossy(&out.stderr)));
    assert!(
        line.contains(&format!(
            "deletion deferred: read by deployment {ns}/web; it is deleted as soon as none of them reads it"
        )),
        "{line}"
    );
    // A key read by name stays, also while the deletion waits; one only envFrom reads may go.
    let denied = remove_config_key(&kubectl, &ns, "DATABASE_URL").await;
    assert!(!denied.success);
    assert!(
        denied.stderr.contains(&format!(
            "protect-config-keys: configmap \"{ns}/app-config\": key DATABASE_URL is used by deployment {ns}/web (container web, env DATABASE_URL)"
        )),
        "{}",
        denied.stderr
    );
    let removed = remove_config_key(&kubectl, &ns, "LOG_LEVEL").await;
    assert!(removed.success, "{}", removed.stderr);
    // The Deployment's next Pods still find it: a rollout now is admitted, not refused for a
    // ConfigMap that is gone.
    kubectl
        .ok(&["-n", &ns, "rollout", "restart", "deployment/web"], None)
        .await;
    assert!(kubectl.get(&ns, "configmap/app-config").await.is_some());
    // A Secret is not marked without --protect-secrets: deleted, with the readers named.
    let run = kubectl
        .run(&["delete", "secret", "app-secret", "-n", &ns], None)
        .await;
    assert!(run.success, "{}", run.stderr);
    assert!(
        run.stderr.contains(&format!(
            "secret \"{ns}/app-secret\" is used by deployment {ns}/web (container web, env API_KEY); it is deleted now, and their next Pods will not start"
        )),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("s3cr3t"));
    // The reader goes: so does the ConfigMap.
    kubectl
        .ok(&["delete", "deployment", "web", "-n", &ns], None)
        .await;
    gone(&kubectl, &ns, "configmap/app-config", LET_GO).await;
    eventually(Duration::from_secs(5), "no deferred deletion", || async {
        (confgate.metric("confgate_deletions_deferred").await == 0.0).then_some(())
    })
    .await;
}

/// An app as plain manifests, without any label tying its objects together, in files whose
/// names put the configuration first: `kubectl delete -f dir/` deletes it before its reader.
fn app_dir(ns: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a-config.yaml"), app_config(ns)).unwrap();
    std::fs::write(
        dir.path().join("b-deployment.yaml"),
        web_deployment(ns, "web", &[]),
    )
    .unwrap();
    dir
}

pub async fn e2e_an_unlabelled_app_is_torn_down_in_file_order_by_kubectl_and_kustomize(cx: Cx) {
    let ns = cx.namespace("guard-teardown").await;
    let kubectl = cx.kubectl();
    let _confgate = Confgate::start(&cx, Options::shipped(&ns)).await;
    // kubectl delete -f dir/: file order, and kubectl waits until everything is gone.
    let dir = app_dir(&ns);
    let path = dir.path().to_string_lossy().into_owned();
    kubectl.ok(&["apply", "-f", &path], None).await;
    marked(&kubectl, &ns).await;
    let run = kubectl
        .run(&["delete", "-f", &path, "--timeout=60s"], None)
        .await;
    assert!(run.success, "{}{}", run.stdout, run.stderr);
    for what in [
        "configmap/app-config",
        "secret/app-secret",
        "deployment/web",
    ] {
        assert!(kubectl.get(&ns, what).await.is_none(), "{what} left");
    }
    // kubectl delete -k: kustomize puts ConfigMaps and Secrets before Deployments too.
    std::fs::write(
        dir.path().join("kustomization.yaml"),
        "resources: [a-config.yaml, b-deployment.yaml]\n",
    )
    .unwrap();
    kubectl.ok(&["apply", "-k", &path], None).await;
    marked(&kubectl, &ns).await;
    let run = kubectl
        .run(&["delete", "-k", &path, "--timeout=60s"], None)
        .await;
    assert!(run.success, "{}{}", run.stdout, run.stderr);
    for what in [
        "configmap/app-config",
        "secret/app-secret",
        "deployment/web",
    ] {
        assert!(kubectl.get(&ns, what).await.is_none(), "{what} left");
    }
    // And the namespace as a whole.
    kubectl.ok(&["apply", "-k", &path], None).await;
    marked(&kubectl, &ns).await;
    kubectl
        .ok(&["delete", "namespace", &ns, "--wait=false"], None)
        .await;
    eventually(Duration::from_secs(60), "the namespace gone", || async {
        let run = kubectl.run(&["get", "namespace", &ns], None).await;
        (!run.success && run.stderr.contains("NotFound")).then_some(())
    })
    .await;
}

pub async fn e2e_a_teardown_while_confgate_is_down_finishes_when_it_is_back(cx: Cx) {
    let ns = cx.namespace("guard-down").await;
    let kubectl = cx.kubectl();
    let mut confgate = Confgate::start(&cx, Options::shipped(&ns)).await;
    let dir = app_dir(&ns);
    let path = dir.path().to_string_lossy().into_owned();
    kubectl.ok(&["apply", "-f", &path], None).await;
    marked(&kubectl, &ns).await;
    confgate.stop();
    // failurePolicy Ignore: the deletions go through the apiserver; the mark holds the
    // ConfigMap while nobody can take it off.
    let run = kubectl
        .run(&["delete", "-f", &path, "--wait=false"], None)
        .await;
    assert!(run.success, "{}", run.stderr);
    gone(&kubectl, &ns, "deployment/web", LET_GO).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(kubectl.get(&ns, "configmap/app-config").await.is_some());
    // Back: once it leads again (a restarted replica takes the Lease over when the old holder's
    // record is 15 s old), it sees nobody reads it any more, and lets it go.
    confgate.restart(&cx).await;
    gone(
        &kubectl,
        &ns,
        "configmap/app-config",
        crate_lease_duration() + LET_GO,
    )
    .await;
}
