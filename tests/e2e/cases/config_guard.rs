//! The config guard (`protect-config-keys`) on a real control plane: the config side of a
//! workload is protected, and cleaning up is never in the way.

use super::{app_config, remove_config_key, web_deployment};
use crate::harness::{Confgate, Cx, Options, eventually};
use std::time::Duration;

pub async fn e2e_consumed_config_cannot_be_deleted_or_lose_a_read_key(cx: Cx) {
    let ns = cx.namespace("guard").await;
    let kubectl = cx.kubectl();
    kubectl
        .ok(&["apply", "-f", "-"], Some(&app_config(&ns)))
        .await;
    let _confgate = Confgate::start(&cx, Options::shipped(&ns)).await;
    kubectl
        .ok(
            &["apply", "-f", "-"],
            Some(&web_deployment(&ns, "web", &[])),
        )
        .await;
    // The index has seen the Deployment once the guard names it.
    let denied = eventually(Duration::from_secs(10), "the deletion denied", || {
        let kubectl = kubectl.clone();
        let ns = ns.clone();
        async move {
            let run = kubectl
                .run(&["delete", "configmap", "app-config", "-n", &ns], None)
                .await;
            (!run.success).then_some(run.stderr)
        }
    })
    .await;
    assert!(
        denied.contains(&format!(
            "protect-config-keys: configmap \"{ns}/app-config\" is used by deployment {ns}/web (init container migrate, envFrom; container web, env DATABASE_URL; volume config)"
        )),
        "{denied}"
    );
    // A key only the init container's envFrom reads may go (the Pod just gets one variable
    // fewer); a key read by name may not.
    let removed = remove_config_key(&kubectl, &ns, "LOG_LEVEL").await;
    assert!(removed.success, "{}", removed.stderr);
    let denied = remove_config_key(&kubectl, &ns, "DATABASE_URL").await;
    assert!(!denied.success);
    let denied = denied.stderr;
    assert!(
        denied.contains(&format!(
            "protect-config-keys: configmap \"{ns}/app-config\": key DATABASE_URL is used by deployment {ns}/web (container web, env DATABASE_URL)"
        )),
        "{denied}"
    );
    // Secrets alike, naming keys only.
    let denied = kubectl
        .fails(&["delete", "secret", "app-secret", "-n", &ns], None)
        .await;
    assert!(
        denied.contains(&format!(
            "secret \"{ns}/app-secret\" is used by deployment {ns}/web (container web, env API_KEY)"
        )),
        "{denied}"
    );
    assert!(!denied.contains("s3cr3t"));
    // Once the Deployment is gone, the ConfigMap may go.
    kubectl
        .ok(&["delete", "deployment", "web", "-n", &ns], None)
        .await;
    eventually(Duration::from_secs(10), "the deletion allowed", || {
        let kubectl = kubectl.clone();
        let ns = ns.clone();
        async move {
            kubectl
                .run(&["delete", "configmap", "app-config", "-n", &ns], None)
                .await
                .success
                .then_some(())
        }
    })
    .await;
}

pub async fn e2e_deleting_the_app_or_its_namespace_goes_through(cx: Cx) {
    let ns = cx.namespace("guard-cleanup").await;
    let kubectl = cx.kubectl();
    let _confgate = Confgate::start(&cx, Options::shipped(&ns)).await;
    // The app as one directory, labelled as Helm, Argo CD and kustomize label an instance;
    // kubectl deletes the ConfigMap (a-config.yaml) before the Deployment that reads it.
    let label = "app.kubernetes.io/instance: shop";
    let mut config = app_config(&ns);
    for object in ["app-config", "app-secret"] {
        config = config.replace(
            &format!("metadata: {{name: {object}, namespace: {ns}}}"),
            &format!("metadata: {{name: {object}, namespace: {ns}, labels: {{{label}}}}}"),
        );
    }
    assert_eq!(config.matches(label).count(), 2);
    let deployment = web_deployment(&ns, "web", &[]).replace(
        "labels: {app: web}}",
        &format!("labels: {{app: web, {label}}}}}"),
    );
    assert!(config.contains(label) && deployment.contains(label));
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a-config.yaml"), &config).unwrap();
    std::fs::write(dir.path().join("b-deployment.yaml"), &deployment).unwrap();
    let path = dir.path().to_string_lossy().into_owned();
    kubectl.ok(&["apply", "-f", &path], None).await;
    // Wait until the guard knows the Deployment (a dry run of the deletion warns).
    eventually(Duration::from_secs(10), "the Deployment indexed", || {
        let kubectl = kubectl.clone();
        let ns = ns.clone();
        async move {
            let run = kubectl
                .run(
                    &[
                        "delete",
                        "secret",
                        "app-secret",
                        "-n",
                        &ns,
                        "--dry-run=server",
                    ],
                    None,
                )
                .await;
            run.stderr.contains("is used by deployment").then_some(())
        }
    })
    .await;
    let deleted = kubectl.run(&["delete", "-f", &path], None).await;
    assert!(deleted.success, "{}{}", deleted.stdout, deleted.stderr);
    assert!(
        deleted.stderr.contains(
            "deleted anyway: they belong to the same application (app.kubernetes.io/instance=shop)"
        ),
        "{}",
        deleted.stderr
    );
    // Put it back, unlabelled, and delete the namespace: the namespace controller's deletions
    // are never judged.
    kubectl
        .ok(&["apply", "-f", "-"], Some(&app_config(&ns)))
        .await;
    kubectl
        .ok(
            &["apply", "-f", "-"],
            Some(&web_deployment(&ns, "web", &[])),
        )
        .await;
    kubectl
        .ok(&["delete", "namespace", &ns, "--wait=false"], None)
        .await;
    eventually(Duration::from_secs(60), "the namespace gone", || {
        let kubectl = kubectl.clone();
        let ns = ns.clone();
        async move {
            let run = kubectl.run(&["get", "namespace", &ns], None).await;
            (!run.success && run.stderr.contains("NotFound")).then_some(())
        }
    })
    .await;
}
