//! Secrets that arrive after their readers, as real apps make them: a cert-manager
//! `Certificate` or an `ExternalSecret` applied before or after the Deployment that mounts its
//! Secret (`kubectl apply -f dir/` in file-name order, `helm install` with custom resources
//! last), a Secret created right after a denial, one deleted just before a new reader, and one
//! nothing ever makes. The CRDs are applied without their controllers, so a promised Secret
//! never appears here: what is judged is the promise.

use super::helm_chart::helm;
use super::rollout::event_notes;
use crate::harness::{Confgate, Cx, Kubectl, Options, eventually, root};
use std::time::Duration;

/// Applies the Certificate and ExternalSecret CRDs (once for the suite) and waits until served.
async fn promiser_crds(kubectl: &Kubectl) {
    let crds = root().join("tests/fixtures/crds/promisers.yaml");
    kubectl
        .ok(&["apply", "-f", crds.to_str().unwrap()], None)
        .await;
    kubectl
        .ok(
            &[
                "wait",
                "--for=condition=Established",
                "--timeout=30s",
                "crd/certificates.cert-manager.io",
                "crd/externalsecrets.external-secrets.io",
            ],
            None,
        )
        .await;
}

fn certificate(ns: &str, name: &str, secret: &str) -> String {
    format!(
        "apiVersion: cert-manager.io/v1\nkind: Certificate\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  secretName: {secret}\n  dnsNames: [{name}.{ns}.svc]\n  issuerRef: {{name: selfsigned, kind: Issuer}}\n"
    )
}

/// A Deployment mounting Secret `secret` as a volume (as ingress-nginx mounts its admission
/// certificate) and reading `key` of it in env when given.
fn tls_reader(ns: &str, name: &str, secret: &str, key: Option<&str>) -> String {
    let env = key.map_or(String::new(), |key| {
        format!("        env:\n        - name: FROM_SECRET\n          valueFrom: {{secretKeyRef: {{name: {secret}, key: {key}}}}}\n")
    });
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
      - name: {name}
        image: registry.example/{name}:1
{env}        volumeMounts: [{{name: tls, mountPath: /tls, readOnly: true}}]
      volumes:
      - name: tls
        secret: {{secretName: {secret}}}
"#
    )
}

pub async fn e2e_a_certificate_and_the_deployment_mounting_its_secret_go_in_in_either_order(
    cx: Cx,
) {
    let ns = cx.namespace("certificate-order").await;
    let kubectl = cx.kubectl();
    promiser_crds(&kubectl).await;
    let confgate = Confgate::start(&cx, Options::shipped(&ns)).await;
    // `kubectl apply -f dir/` applies in file-name order: the Deployment before the Certificate.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("deployment.yaml"),
        tls_reader(&ns, "webhook", "webhook-tls", Some("tls.crt")),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("tls.yaml"),
        certificate(&ns, "webhook", "webhook-tls"),
    )
    .unwrap();
    let run = kubectl
        .run(&["apply", "-f", dir.path().to_str().unwrap()], None)
        .await;
    assert!(run.success, "{}{}", run.stdout, run.stderr);
    assert!(
        run.stderr.contains(&format!(
            "require-config-keys: volume \"tls\": secret \"{ns}/webhook-tls\" not found yet, and nothing promises it"
        )),
        "{}",
        run.stderr
    );
    assert!(kubectl.get(&ns, "deployment/webhook").await.is_some());
    // The other order: the Certificate exists, and the warning names it.
    kubectl
        .ok(
            &["apply", "-f", "-"],
            Some(&certificate(&ns, "operator", "operator-tls")),
        )
        .await;
    let run = kubectl
        .run(
            &["apply", "-f", "-"],
            Some(&tls_reader(&ns, "operator", "operator-tls", Some("ca.crt"))),
        )
        .await;
    assert!(run.success, "{}", run.stderr);
    assert!(
        run.stderr.contains(&format!(
            "volume \"tls\": secret \"{ns}/operator-tls\" does not exist yet; Certificate \"operator\" will make it"
        )),
        "{}",
        run.stderr
    );
    // A key the Certificate will never write is a mistake a person agrees with.
    let stderr = kubectl
        .fails(
            &["apply", "-f", "-"],
            Some(&tls_reader(&ns, "reader", "operator-tls", Some("password"))),
        )
        .await;
    assert!(
        stderr.contains(&format!(
            "container \"reader\": env FROM_SECRET: secret \"{ns}/operator-tls\" does not exist yet, and Certificate \"operator\" will make it without key \"password\""
        )),
        "{stderr}"
    );
    assert!(
        confgate
            .metric("confgate_confirmations_total{result=\"upheld\"}")
            .await
            >= 1.0
    );
}

pub async fn e2e_helm_install_of_a_chart_whose_deployment_mounts_its_certificate_secret(cx: Cx) {
    let ns = cx.namespace("helm-certificate").await;
    let kubectl = cx.kubectl();
    promiser_crds(&kubectl).await;
    let _confgate = Confgate::start(&cx, Options::shipped(&ns)).await;
    // A chart as ingress-nginx writes its admission webhook: a Certificate and the Deployment
    // that mounts its Secret. Helm installs the Deployment first and custom resources last.
    let chart = tempfile::tempdir().unwrap();
    std::fs::create_dir(chart.path().join("templates")).unwrap();
    std::fs::write(
        chart.path().join("Chart.yaml"),
        "apiVersion: v2\nname: webhook-app\nversion: 0.1.0\n",
    )
    .unwrap();
    std::fs::write(
        chart.path().join("templates/certificate.yaml"),
        certificate(
            "{{ .Release.Namespace }}",
            "{{ .Release.Name }}-admission",
            "{{ .Release.Name }}-admission",
        ),
    )
    .unwrap();
    std::fs::write(
        chart.path().join("templates/deployment.yaml"),
        tls_reader(
            "{{ .Release.Namespace }}",
            "{{ .Release.Name }}-controller",
            "{{ .Release.Name }}-admission",
            None,
        ),
    )
    .unwrap();
    let out = helm(
        cx.plane,
        &[
            "install",
            "app",
            chart.path().to_str().unwrap(),
            "--namespace",
            &ns,
        ],
    )
    .await;
    assert!(out.contains("STATUS: deployed"), "{out}");
    assert!(
        kubectl
            .get(&ns, "deployment/app-controller")
            .await
            .is_some()
    );
    assert!(
        kubectl
            .get(&ns, "certificate/app-admission")
            .await
            .is_some()
    );
    helm(cx.plane, &["uninstall", "app", "--namespace", &ns]).await;
}

pub async fn e2e_an_external_secret_and_its_reader(cx: Cx) {
    let ns = cx.namespace("external-secret").await;
    let kubectl = cx.kubectl();
    promiser_crds(&kubectl).await;
    let _confgate = Confgate::start(&cx, Options::shipped(&ns)).await;
    let external = format!(
        "apiVersion: external-secrets.io/v1beta1\nkind: ExternalSecret\nmetadata: {{name: db, namespace: {ns}}}\nspec:\n  refreshInterval: 1h\n  secretStoreRef: {{name: vault, kind: ClusterSecretStore}}\n  target: {{name: db-credentials}}\n  data:\n  - secretKey: password\n    remoteRef: {{key: prod/db, property: password}}\n"
    );
    kubectl.ok(&["apply", "-f", "-"], Some(&external)).await;
    let run = kubectl
        .run(
            &["apply", "-f", "-"],
            Some(&tls_reader(&ns, "api", "db-credentials", Some("password"))),
        )
        .await;
    assert!(run.success, "{}", run.stderr);
    assert!(
        run.stderr.contains(&format!(
            "secret \"{ns}/db-credentials\" does not exist yet; ExternalSecret \"db\" will make it"
        )),
        "{}",
        run.stderr
    );
    let stderr = kubectl
        .fails(
            &["apply", "-f", "-"],
            Some(&tls_reader(
                &ns,
                "other",
                "db-credentials",
                Some("username"),
            )),
        )
        .await;
    assert!(
        stderr.contains("ExternalSecret \"db\" will make it without key \"username\""),
        "{stderr}"
    );
}

const NO_GRACE: &str = r#"
apiVersion: confgate.dev/v1alpha1
kind: Policy
metadata: {name: require-config-keys}
spec:
  type: require-config-keys
  settings: {secretGraceSeconds: 0}
"#;

pub async fn e2e_a_secret_created_after_a_denial_or_deleted_is_seen_by_the_next_review(cx: Cx) {
    // Secrets read by name for each review (the default), and watched (the cache may lag: a
    // denial is confirmed by a read).
    for mode in ["get", "watch"] {
        fresh_lookups(&cx, mode).await;
    }
}

async fn fresh_lookups(cx: &Cx, mode: &str) {
    let ns = cx.namespace(&format!("fresh-secrets-{mode}")).await;
    let kubectl = cx.kubectl();
    let options = Options::with_policies(&ns, NO_GRACE).arg(format!("--secrets={mode}"));
    let _confgate = Confgate::start(cx, options).await;
    let reader = |name: &str| tls_reader(&ns, name, "late", Some("token"));
    let secret = format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: late, namespace: {ns}}}\nstringData: {{token: abc}}\n"
    );
    let stderr = kubectl
        .fails(&["apply", "-f", "-"], Some(&reader("first")))
        .await;
    assert!(
        stderr.contains(&format!("secret \"{ns}/late\" not found")),
        "{stderr}"
    );
    // Created, and the reader re-applied at once: admitted (nothing remembers the miss).
    kubectl.ok(&["apply", "-f", "-"], Some(&secret)).await;
    kubectl
        .ok(&["apply", "-f", "-"], Some(&reader("first")))
        .await;
    // Deleted, and a new reader applied at once: denied (nothing remembers the find).
    kubectl
        .ok(&["-n", &ns, "delete", "secret", "late"], None)
        .await;
    let stderr = kubectl
        .fails(&["apply", "-f", "-"], Some(&reader("second")))
        .await;
    assert!(
        stderr.contains(&format!("secret \"{ns}/late\" not found")),
        "{stderr}"
    );
    // The same for a ConfigMap: created and read in one apply, the reader right behind it.
    let together = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: fresh, namespace: {ns}}}\ndata: {{A: '1'}}\n---\n{}",
        tls_reader(&ns, "cm-reader", "unused", None).replace(
            "secret: {secretName: unused}",
            "configMap: {name: fresh, items: [{key: A, path: a}]}"
        )
    );
    kubectl.ok(&["apply", "-f", "-"], Some(&together)).await;
}

const SHORT_GRACE: &str = r#"
apiVersion: confgate.dev/v1alpha1
kind: Policy
metadata: {name: require-config-keys}
spec:
  type: require-config-keys
  settings: {secretGraceSeconds: 3}
"#;

pub async fn e2e_a_secret_nobody_makes_is_reported_after_the_grace(cx: Cx) {
    let ns = cx.namespace("secret-grace").await;
    let kubectl = cx.kubectl();
    let confgate = Confgate::start(&cx, Options::with_policies(&ns, SHORT_GRACE)).await;
    let run = kubectl
        .run(
            &["apply", "-f", "-"],
            Some(&tls_reader(&ns, "waits", "never", Some("token"))),
        )
        .await;
    assert!(run.success, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("its reader may wait 3s for it (a Secret is often created just after its reader), then it is judged again"),
        "{}",
        run.stderr
    );
    // One that arrives within the grace is not reported.
    kubectl
        .ok(
            &["apply", "-f", "-"],
            Some(&tls_reader(&ns, "arrives", "soon", Some("token"))),
        )
        .await;
    kubectl
        .ok(
            &[
                "-n",
                &ns,
                "create",
                "secret",
                "generic",
                "soon",
                "--from-literal=token=x",
            ],
            None,
        )
        .await;
    let notes = eventually(Duration::from_secs(30), "a ConfigMissing Event", || async {
        let notes = event_notes(&kubectl, &ns, "ConfigMissing").await;
        (!notes.is_empty()).then_some(notes)
    })
    .await;
    assert_eq!(
        notes,
        vec![format!(
            "a Secret it reads did not exist when it was admitted, and after the grace it is still not there: require-config-keys: container \"waits\": env FROM_SECRET: secret \"{ns}/never\" not found; require-config-keys: volume \"tls\": secret \"{ns}/never\" not found"
        )]
    );
    eventually(
        Duration::from_secs(20),
        "the resolved follow-up",
        || async {
            (confgate
                .metric("confgate_followups_total{result=\"resolved\"}")
                .await
                >= 1.0)
                .then_some(())
        },
    )
    .await;
    assert_eq!(
        confgate
            .metric("confgate_followups_total{result=\"still_missing\"}")
            .await,
        1.0
    );
}

/// Plays the kubelet for a hook Job: once its Pod exists, does what its container would (creates
/// the Secret) and reports the Pod Succeeded, so the Job completes and Helm goes on.
async fn run_hook(kubectl: Kubectl, ns: String, secret: String) {
    let pod = eventually(Duration::from_secs(60), "the hook Job's Pod", || {
        let kubectl = kubectl.clone();
        let ns = ns.clone();
        async move {
            let pods = kubectl.get(&ns, "pods").await?;
            pods["items"][0]["metadata"]["name"]
                .as_str()
                .map(str::to_owned)
        }
    })
    .await;
    kubectl
        .ok(
            &[
                "-n",
                &ns,
                "create",
                "secret",
                "generic",
                &secret,
                "--from-literal=password=generated",
            ],
            None,
        )
        .await;
    let succeeded = r#"{"status":{"phase":"Succeeded","conditions":[{"type":"Ready","status":"False","reason":"PodCompleted"}],"containerStatuses":[{"name":"init","image":"registry.example/kubectl:1","imageID":"","ready":false,"restartCount":0,"state":{"terminated":{"exitCode":0,"reason":"Completed"}}}]}}"#;
    kubectl
        .ok(
            &[
                "-n",
                &ns,
                "patch",
                "pod",
                &pod,
                "--subresource=status",
                "--type=merge",
                "-p",
                succeeded,
            ],
            None,
        )
        .await;
}

pub async fn e2e_helm_install_of_a_chart_whose_pre_install_hook_makes_the_secret(cx: Cx) {
    let ns = cx.namespace("helm-hook").await;
    let kubectl = cx.kubectl();
    let _confgate = Confgate::start(&cx, Options::shipped(&ns)).await;
    // As Argo CD's chart makes its redis password: a pre-install hook Job creates the Secret the
    // Deployment reads.
    let chart = tempfile::tempdir().unwrap();
    std::fs::create_dir(chart.path().join("templates")).unwrap();
    std::fs::write(
        chart.path().join("Chart.yaml"),
        "apiVersion: v2\nname: cache-app\nversion: 0.1.0\n",
    )
    .unwrap();
    std::fs::write(
        chart.path().join("templates/secret-init.yaml"),
        "apiVersion: batch/v1\nkind: Job\nmetadata:\n  name: {{ .Release.Name }}-secret-init\n  annotations:\n    helm.sh/hook: pre-install,pre-upgrade\n    helm.sh/hook-delete-policy: before-hook-creation\nspec:\n  backoffLimit: 0\n  template:\n    spec:\n      restartPolicy: Never\n      containers:\n      - name: init\n        image: registry.example/kubectl:1\n        command: [sh, -c, 'kubectl create secret generic {{ .Release.Name }}-redis --from-literal=password=$(head -c 16 /dev/urandom | base64)']\n",
    )
    .unwrap();
    std::fs::write(
        chart.path().join("templates/deployment.yaml"),
        tls_reader(
            "{{ .Release.Namespace }}",
            "{{ .Release.Name }}-redis",
            "{{ .Release.Name }}-redis",
            Some("password"),
        ),
    )
    .unwrap();
    let hook = tokio::spawn(run_hook(kubectl.clone(), ns.clone(), "cache-redis".into()));
    let out = helm(
        cx.plane,
        &[
            "install",
            "cache",
            chart.path().to_str().unwrap(),
            "--namespace",
            &ns,
            "--timeout",
            "90s",
        ],
    )
    .await;
    hook.await.unwrap();
    assert!(out.contains("STATUS: deployed"), "{out}");
    assert!(kubectl.get(&ns, "deployment/cache-redis").await.is_some());
}
