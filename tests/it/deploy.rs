//! deploy/: the rendered manifests keep their safety properties, and nothing drifts from the
//! policies (the registration is generated from them; the deployed policies are the shipped ones).
//! Renders with `kubectl kustomize`, which works offline.

use crate::common::*;
use axum::body::Body;
use confgate::policy::{Registry, load_dir};
use serde_json::{Value, json};
use std::process::Command;
use tower::ServiceExt;

pub(crate) fn render(dir: &str) -> Vec<Value> {
    let out = Command::new("kubectl")
        .args(["kustomize", &root().join(dir).to_string_lossy()])
        .output()
        .expect("kubectl is installed");
    assert!(
        out.status.success(),
        "kubectl kustomize {dir}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    confgate::yaml::documents(&String::from_utf8(out.stdout).unwrap()).unwrap()
}

pub(crate) fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind}/{name}"))
}

pub(crate) fn all<'a>(docs: &'a [Value], kind: &'a str) -> impl Iterator<Item = &'a Value> {
    docs.iter().filter(move |d| d["kind"] == kind)
}

#[test]
fn deployed_policies_are_the_shipped_policies() {
    // policies/tests/ holds the policies' tests (confgate test), not policies.
    let files = |dir: &str| -> Vec<std::path::PathBuf> {
        let mut files: Vec<_> = std::fs::read_dir(root().join(dir))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        files
    };
    for path in files("policies") {
        let deployed = root()
            .join("deploy/base/policies")
            .join(path.file_name().unwrap());
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            std::fs::read_to_string(&deployed).unwrap_or_default(),
            "{} differs in deploy/base/policies",
            path.display()
        );
    }
    assert_eq!(files("deploy/base/policies").len(), files("policies").len());
}

#[test]
fn cert_manager_overlay_lets_the_server_register_once_ready() {
    let docs = render("deploy/overlays/cert-manager");
    // No registration in the apply: it would exist before any confgate could answer it, and
    // without a caBundle until cert-manager's injector got to it.
    for kind in [
        "MutatingWebhookConfiguration",
        "ValidatingWebhookConfiguration",
    ] {
        assert_eq!(all(&docs, kind).count(), 0, "{kind} in the overlay");
    }
    let deployment = find(&docs, "Deployment", "confgate");
    let args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap();
    assert!(args.contains(&json!("--manage-webhooks")), "{args:?}");
    assert!(
        args.contains(&json!("--cluster=required")),
        "registers only once synced"
    );
    // The CA it registers is ca.crt beside the serving certificate, from the Secret
    // cert-manager writes (a CA Issuer puts ca.crt there).
    assert!(args.contains(&json!("--tls-cert=/etc/confgate/tls/tls.crt")));
    let role = find(&docs, "ClusterRole", "confgate-manage-webhooks");
    assert_eq!(
        role["rules"][0]["resourceNames"],
        json!(["confgate"]),
        "writes only its own configurations"
    );
    let binding = find(&docs, "ClusterRoleBinding", "confgate-manage-webhooks");
    assert_eq!(
        binding["subjects"],
        json!([{"kind": "ServiceAccount", "name": "confgate", "namespace": "confgate-system"}])
    );
    // The injector reads the Certificate that writes the Secret the Deployment mounts.
    let certificate = find(&docs, "Certificate", "confgate");
    assert_eq!(certificate["spec"]["secretName"], "confgate-tls");
    let names: Vec<&str> = certificate["spec"]["dnsNames"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        confgate::certs::service_names("confgate", "confgate-system")
    );
}

#[test]
fn rbac_is_least_privilege() {
    for overlay in [
        "deploy/overlays/cert-manager",
        "deploy/overlays/self-signed",
    ] {
        let docs = render(overlay);
        for role in all(&docs, "ClusterRole").chain(all(&docs, "Role")) {
            for rule in role["rules"].as_array().unwrap() {
                let verbs: Vec<&str> = rule["verbs"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_str().unwrap())
                    .collect();
                let resources: Vec<&str> = rule["resources"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_str().unwrap())
                    .collect();
                assert!(
                    !verbs.contains(&"*") && !resources.contains(&"*"),
                    "wildcard in {}",
                    role["metadata"]["name"]
                );
                // Writes only to confgate's own webhook configurations (--manage-webhooks).
                let own_webhooks = role["metadata"]["name"] == "confgate-manage-webhooks"
                    && resources
                        .iter()
                        .all(|r| r.ends_with("webhookconfigurations"))
                    && (rule["resourceNames"] == json!(["confgate"]) || verbs == ["create"]);
                // The rollout controller patches the rolling kinds and records Events; nothing
                // else (never create, update or delete of a workload).
                let rollout = role["metadata"]["name"] == "confgate-rollout"
                    && resources.iter().all(|r| {
                        [
                            "deployments",
                            "statefulsets",
                            "daemonsets",
                            "cronjobs",
                            "rollouts",
                            "pods",
                            "events",
                        ]
                        .contains(r)
                    })
                    && verbs.iter().all(|v| {
                        ["get", "list", "watch", "patch"].contains(v)
                            || (resources == ["events"] && *v == "create")
                    });
                // Leader election: its own Lease (create cannot be limited by name).
                let lease = role["metadata"]["name"] == "confgate-leader-election"
                    && resources == ["leases"]
                    && (rule["resourceNames"] == json!(["confgate-rollout"])
                        || verbs == ["create"]);
                // The checksum key: read by name, created once (in confgate's own namespace).
                let key = role["metadata"]["name"] == "confgate-checksum-key"
                    && role["kind"] == "Role"
                    && role["metadata"]["namespace"] == "confgate-system"
                    && resources == ["secrets"]
                    && ((rule["resourceNames"] == json!(["confgate-checksum-key"])
                        && verbs == ["get"])
                        || (rule.get("resourceNames").is_none() && verbs == ["create"]));
                // The config guard adds and removes its finalizer on ConfigMaps.
                let guard = role["metadata"]["name"] == "confgate-config-guard"
                    && resources == ["configmaps"]
                    && verbs == ["patch"];
                // Follow-up judgements read workloads and record Events.
                let followup = role["metadata"]["name"] == "confgate-followup"
                    && (verbs == ["get"]
                        || (resources == ["events"] && verbs == ["create", "patch"]));
                // The audit writes its own reports (PolicyReports, OpenReports Reports).
                let reports = role["metadata"]["name"] == "confgate-audit"
                    && ((resources == ["policyreports"]
                        && rule["apiGroups"] == json!(["wgpolicyk8s.io"]))
                        || (resources == ["reports"]
                            && rule["apiGroups"] == json!(["openreports.io"])));
                assert!(
                    own_webhooks
                        || rollout
                        || lease
                        || key
                        || followup
                        || guard
                        || reports
                        || verbs.iter().all(|v| ["get", "list", "watch"].contains(v)),
                    "{overlay}: write verbs in {}",
                    role["metadata"]["name"]
                );
                if resources.contains(&"secrets") && !key {
                    assert_eq!(verbs, vec!["get"], "Secrets: get only");
                }
            }
        }
        let secrets = find(&docs, "ClusterRole", "confgate-secrets-reader");
        assert_eq!(
            secrets["rules"],
            json!([{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}])
        );
    }
}

#[test]
fn webhooks_never_touch_the_control_plane_or_confgate() {
    // What the deployed server registers (--manage-webhooks, POD_NAMESPACE confgate-system)
    // and what `confgate webhooks` prints with its defaults, from the deployed policies.
    let set = load_dir(&root().join("deploy/base/policies"), &Registry::builtin()).unwrap();
    let (m, v) = confgate::webhooks::generate(
        &set,
        &confgate::webhooks::Options::for_service("confgate", "confgate-system"),
    )
    .unwrap();
    for config in [
        serde_json::to_value(m).unwrap(),
        serde_json::to_value(v).unwrap(),
    ] {
        for hook in config["webhooks"].as_array().unwrap() {
            assert_webhook_is_safe(hook);
            assert_eq!(hook["sideEffects"], "None");
            assert_eq!(
                hook["clientConfig"]["service"]["namespace"],
                "confgate-system"
            );
            // cert-manager issues confgate's own certificate: never blocked by confgate.
            let excluded = &hook["namespaceSelector"]["matchExpressions"][0];
            assert_eq!(excluded["operator"], "NotIn");
            assert!(
                excluded["values"]
                    .as_array()
                    .unwrap()
                    .contains(&json!("cert-manager"))
            );
        }
    }
}

#[tokio::test]
async fn deployment_is_hardened_and_probes_real_endpoints() {
    let docs = render("deploy/overlays/self-signed");
    let deployment = find(&docs, "Deployment", "confgate");
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    // The HPA owns the replica count: an apply never resets a scaled-out Deployment.
    assert!(deployment["spec"].get("replicas").is_none());
    assert_eq!(
        find(&docs, "HorizontalPodAutoscaler", "confgate")["spec"]["minReplicas"],
        2
    );
    // Never preempted by the workloads it admits.
    let class = deployment["spec"]["template"]["spec"]["priorityClassName"]
        .as_str()
        .unwrap();
    let priority = find(&docs, "PriorityClass", class);
    assert!(priority["value"].as_i64().unwrap() >= 1_000_000_000);
    assert_eq!(priority["globalDefault"], false);
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    assert_eq!(
        container["securityContext"],
        json!({"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true, "capabilities": {"drop": ["ALL"]}})
    );
    assert!(
        pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
            .is_array()
    );
    assert!(pod["topologySpreadConstraints"].is_array());
    assert!(
        container["resources"]["requests"]["cpu"].is_string(),
        "the HPA needs a CPU request"
    );
    assert!(container["resources"]["limits"]["memory"].is_string());
    // Probes: HTTPS on the serving port, at endpoints the router answers with 200.
    let port = container["ports"][0].clone();
    assert_eq!(
        (port["name"].as_str(), port["containerPort"].as_i64()),
        (Some("https"), Some(8443))
    );
    let state = confgate::server::AppState::new(
        shipped_policies(),
        std::sync::Arc::new(confgate::cluster::Standalone),
        1 << 20,
        false,
    );
    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        let get = &container[probe]["httpGet"];
        assert_eq!(
            (
                get["path"].as_str(),
                get["port"].as_str(),
                get["scheme"].as_str()
            ),
            (Some(path), Some("https"), Some("HTTPS"))
        );
        let response = confgate::server::router(state.clone())
            .oneshot(axum::http::Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path}");
    }
    // Graceful termination outlasts the shutdown delay plus the drain.
    let args: Vec<&str> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let seconds = |flag: &str| {
        args.iter()
            .find_map(|a| a.strip_prefix(flag))
            .unwrap()
            .parse::<i64>()
            .unwrap()
    };
    assert!(
        pod["terminationGracePeriodSeconds"].as_i64().unwrap()
            > seconds("--shutdown-delay-seconds=") + seconds("--drain-seconds=")
    );
    assert!(args.contains(&"--cluster=required"));
    // Policies and certificates are mounted as directories (never subPath), so reloads see updates.
    for mount in container["volumeMounts"].as_array().unwrap() {
        assert!(
            mount.get("subPath").is_none() && mount.get("subPathExpr").is_none(),
            "{mount}"
        );
    }
    let volumes = pod["volumes"].as_array().unwrap();
    assert!(
        volumes
            .iter()
            .any(|v| v["configMap"]["name"] == "confgate-policies")
    );
    // Self-signed: confgate makes Secret confgate-tls itself and writes its files into a
    // memory-backed emptyDir (never a disk), where --tls-cert and --tls-key point.
    assert!(args.contains(&"--tls-secret=confgate-tls"));
    assert!(args.contains(&"--tls-cert=/run/confgate/tls/tls.crt"));
    assert!(
        volumes
            .iter()
            .any(|v| v["name"] == "tls" && v["emptyDir"]["medium"] == "Memory")
    );
    // The policies ConfigMap holds the shipped policies and loads.
    let config_map = find(&docs, "ConfigMap", "confgate-policies");
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in config_map["data"].as_object().unwrap() {
        std::fs::write(dir.path().join(name), text.as_str().unwrap()).unwrap();
    }
    assert_eq!(
        load_dir(dir.path(), &Registry::builtin())
            .unwrap()
            .policies
            .len(),
        shipped_policies().policies.len()
    );
}

#[test]
fn availability_objects_are_present() {
    let docs = render("deploy/overlays/self-signed");
    let selector = &find(&docs, "Deployment", "confgate")["spec"]["selector"]["matchLabels"];
    let pdb = find(&docs, "PodDisruptionBudget", "confgate");
    assert_eq!(pdb["spec"]["minAvailable"], 1);
    assert_eq!(&pdb["spec"]["selector"]["matchLabels"], selector);
    let service = find(&docs, "Service", "confgate");
    assert_eq!(service["spec"]["ports"][0]["port"], 443);
    assert_eq!(service["spec"]["ports"][0]["targetPort"], "https");
    assert_eq!(&service["spec"]["selector"], selector);
    let hpa = find(&docs, "HorizontalPodAutoscaler", "confgate");
    assert_eq!(hpa["spec"]["scaleTargetRef"]["name"], "confgate");
    assert_eq!(hpa["spec"]["metrics"][0]["resource"]["name"], "cpu");
    assert!(hpa["spec"]["minReplicas"].as_i64().unwrap() >= 2);
}

#[tokio::test]
async fn monitoring_uses_metrics_confgate_exports() {
    let docs = render("deploy/monitoring");
    let rules = serde_json::to_string(find(&docs, "PrometheusRule", "confgate")).unwrap();
    let dashboard =
        find(&docs, "ConfigMap", "confgate-dashboard")["data"]["confgate-dashboard.json"]
            .as_str()
            .unwrap()
            .to_owned();
    serde_json::from_str::<Value>(&dashboard).expect("the dashboard is JSON");
    let state = fixture_server_state(1 << 20);
    for path in ["/mutate", "/validate"] {
        let review = axum::http::Request::post(path)
            .header("content-type", "application/json")
            .body(Body::from(fixture_bytes("create-deployment-web")))
            .unwrap();
        confgate::server::router(state.clone())
            .oneshot(review)
            .await
            .unwrap();
    }
    let metrics = confgate::server::router(state)
        .oneshot(
            axum::http::Request::get("/metrics")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    let text = String::from_utf8(
        http_body_util::BodyExt::collect(metrics.into_body())
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap();
    for source in [&rules, &dashboard] {
        let mut rest = source.as_str();
        while let Some(at) = rest.find("confgate_") {
            let name: String = rest[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            let family = ["_bucket", "_total"].iter().fold(name.clone(), |n, s| {
                n.strip_suffix(s).map(str::to_owned).unwrap_or(n)
            });
            // Families with samples only from a live cluster's caches: registered, by name.
            let live_only = ["confgate_cache_stale_seconds", "confgate_cache_forbidden"]
                .contains(&family.as_str())
                && std::fs::read_to_string(root().join("src/metrics.rs"))
                    .unwrap()
                    .contains(&format!("\"{}\"", &family["confgate_".len()..]));
            assert!(
                live_only || text.contains(&format!("# TYPE {family} ")),
                "{name} is not exported"
            );
            rest = &rest[at + name.len()..];
        }
    }
    for alert in [
        "ConfgateWebhookLatencyHigh",
        "ConfgateDenyRateSpike",
        "ConfgateConfigReloadFailed",
        "ConfgateCertificateExpiringSoon",
        "ConfgateReplicasUnavailable",
    ] {
        assert!(rules.contains(alert), "{alert}");
    }
}

#[test]
fn the_secrets_watch_component_switches_mode_and_rbac_together() {
    // An overlay of the base with the component, rendered from a scratch directory.
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("secrets-watch-overlay");
    std::fs::create_dir_all(&dir).unwrap();
    let up = dir
        .strip_prefix(root())
        .expect("the target directory is inside the repository")
        .components()
        .map(|_| "..")
        .collect::<Vec<_>>()
        .join("/");
    std::fs::write(
        dir.join("kustomization.yaml"),
        format!(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources: [{up}/deploy/base]\ncomponents: [{up}/deploy/components/secrets-watch]\n"
        ),
    )
    .unwrap();
    let docs = render(&dir.strip_prefix(root()).unwrap().to_string_lossy());
    let args =
        &find(&docs, "Deployment", "confgate")["spec"]["template"]["spec"]["containers"][0]["args"];
    let secrets: Vec<&Value> = args
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a.as_str().is_some_and(|a| a.starts_with("--secrets")))
        .collect();
    assert_eq!(secrets, vec![&json!("--secrets=watch")]);
    assert_eq!(
        find(&docs, "ClusterRole", "confgate-secrets-reader")["rules"],
        json!([{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list", "watch"]}])
    );
}

/// scripts/image.sh builds the image the Dockerfile describes: it takes the final stage's
/// configuration from the Dockerfile itself, and puts the files where the Dockerfile copies
/// them; the chart and deploy/ run what both build.
#[test]
fn the_image_script_and_the_dockerfile_build_the_same_layout() {
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    let script = std::fs::read_to_string(root().join("scripts/image.sh")).unwrap();
    let last_stage = dockerfile.rsplit("\nFROM ").next().unwrap();
    let copies: Vec<&str> = last_stage
        .lines()
        .filter_map(|l| l.strip_prefix("COPY "))
        .map(|l| l.split_whitespace().last().unwrap())
        .collect();
    assert_eq!(
        copies,
        ["/usr/local/bin/confgate", "/etc/confgate/policies"]
    );
    for destination in &copies {
        assert!(
            script.contains(&format!("$root{destination}")),
            "scripts/image.sh does not put anything at {destination}"
        );
    }
    // The configuration is read from the Dockerfile, directive by directive.
    for directive in ["ENV", "USER", "EXPOSE", "ENTRYPOINT", "CMD"] {
        assert!(
            last_stage
                .lines()
                .any(|l| l.starts_with(&format!("{directive} "))),
            "the Dockerfile's last stage has no {directive}"
        );
        assert!(
            script.contains(&format!("    {directive}) config+=(")),
            "scripts/image.sh does not take {directive} from the Dockerfile"
        );
    }
    assert!(last_stage.contains("USER 65532:65532"));
    assert!(last_stage.contains("ENV MIMALLOC_ARENA_EAGER_COMMIT=0"));
    // What runs the image runs its binary at that path.
    let chart =
        std::fs::read_to_string(root().join("charts/confgate/templates/deployment.yaml")).unwrap();
    assert!(
        !chart.contains("command:"),
        "the chart relies on the ENTRYPOINT"
    );
}
