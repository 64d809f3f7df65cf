//! charts/confgate: the Helm chart renders what deploy/ installs (one source of truth: objects
//! compared field by field with `kubectl kustomize`), its values do what values.yaml says, and
//! values.schema.json refuses wrong values at `helm template`/`install` time. helm comes from
//! `scripts/helm.sh` ($HELM, or ../shared/bin/helm-*.xz unpacked once).

use crate::common::*;
use crate::deploy::{all, find, render};
use clap::Parser;
use confgate::policy::{Registry, load_str};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::process::Command;

fn helm() -> String {
    let out = Command::new(root().join("scripts/helm.sh"))
        .output()
        .expect("scripts/helm.sh runs");
    assert!(
        out.status.success(),
        "no helm binary: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// `helm template RELEASE charts/confgate -n NAMESPACE --set ...`: the documents, or helm's
/// error text.
fn template(release: &str, namespace: &str, sets: &[&str]) -> Result<Vec<Value>, String> {
    let args: Vec<&str> = sets.iter().flat_map(|set| ["--set", set]).collect();
    template_with(release, namespace, &args)
}

/// `helm template RELEASE charts/confgate -n NAMESPACE ARGS...`.
fn template_with(release: &str, namespace: &str, args: &[&str]) -> Result<Vec<Value>, String> {
    let out = Command::new(helm())
        .args(["template", release])
        .arg(root().join("charts/confgate"))
        .args(["--namespace", namespace])
        .args(args)
        .output()
        .expect("helm runs");
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(confgate::yaml::documents(&String::from_utf8(out.stdout).unwrap()).unwrap())
}

/// Without the labels only Helm sets (release, chart version, manager), wherever they occur
/// (metadata, selectors, pod templates).
fn without_helm_labels(value: &Value) -> Value {
    const HELM: [&str; 4] = [
        "helm.sh/chart",
        "app.kubernetes.io/managed-by",
        "app.kubernetes.io/instance",
        "app.kubernetes.io/version",
    ];
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(k, _)| !HELM.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), without_helm_labels(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(without_helm_labels).collect()),
        other => other.clone(),
    }
}

fn keyed(docs: &[Value]) -> std::collections::BTreeMap<(String, String), Value> {
    docs.iter()
        .map(|d| {
            (
                (
                    d["kind"].as_str().unwrap().to_owned(),
                    d["metadata"]["name"].as_str().unwrap().to_owned(),
                ),
                without_helm_labels(d),
            )
        })
        .collect()
}

#[test]
fn chart_defaults_render_exactly_what_deploy_installs() {
    for (overlay, mode) in [
        ("deploy/overlays/self-signed", "self-signed"),
        ("deploy/overlays/cert-manager", "cert-manager"),
    ] {
        let kustomized = keyed(&render(overlay));
        let mode_set = format!("certificates.mode={mode}");
        // Helm's hooks (the uninstall's `confgate release`) have no kustomize counterpart.
        let charted: Vec<Value> = template("confgate", "confgate-system", &[&mode_set])
            .unwrap()
            .into_iter()
            .filter(|d| d.pointer("/metadata/annotations/helm.sh~1hook").is_none())
            .collect();
        let charted = keyed(&charted);
        let names = |m: &std::collections::BTreeMap<(String, String), Value>| {
            m.keys().cloned().collect::<Vec<_>>()
        };
        // Helm keeps releases in the namespace, so it must exist first (`--create-namespace`):
        // the chart never renders it.
        let mut expected = names(&kustomized);
        expected.retain(|(kind, _)| kind != "Namespace");
        assert_eq!(names(&charted), expected, "{overlay}: the objects");
        for (key, expected) in kustomized.iter().filter(|((k, _), _)| k != "Namespace") {
            assert_eq!(&charted[key], expected, "{overlay}: {key:?}");
        }
    }
}

#[test]
fn chart_uninstall_releases_the_config_guard_marks_of_its_own_installation() {
    let docs = template("team-a", "ops", &[]).unwrap();
    let hook = docs
        .iter()
        .find(|d| d["kind"] == "Job" && d["metadata"]["name"] == "team-a-confgate-release")
        .expect("the release hook");
    assert_eq!(
        hook["metadata"]["annotations"]["helm.sh/hook"],
        "pre-delete"
    );
    let pod = &hook["spec"]["template"];
    assert_eq!(pod["spec"]["serviceAccountName"], "team-a-confgate");
    // Never selected by the Service (it must not receive reviews).
    assert_eq!(
        pod["metadata"]["labels"]["app.kubernetes.io/component"],
        "release"
    );
    let args: Vec<String> = pod["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect();
    use clap::Parser as _;
    let cli = confgate::cli::Cli::try_parse_from(
        std::iter::once("confgate".to_owned()).chain(args.iter().cloned()),
    )
    .unwrap();
    let confgate::cli::Command::Release(release) = cli.command else {
        panic!("not `confgate release`: {args:?}");
    };
    // The Lease the server elects on, so the marks are the ones this installation made.
    let deployment = docs
        .iter()
        .find(|d| d["kind"] == "Deployment")
        .expect("the Deployment");
    let served: Vec<&str> = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        served.contains(&format!("--lease-name={}", release.lease_name).as_str()),
        "{served:?}"
    );
    assert_eq!((release.namespace.as_str(), release.all), ("ops", false));
}

#[test]
fn chart_files_are_the_deploy_files() {
    let same = |chart: &str, deploy: &str| {
        assert_eq!(
            std::fs::read_to_string(root().join("charts/confgate").join(chart)).unwrap(),
            std::fs::read_to_string(root().join(deploy)).unwrap(),
            "charts/confgate/{chart} differs from {deploy}"
        );
    };
    let mut policies: Vec<String> = std::fs::read_dir(root().join("deploy/base/policies"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    policies.sort();
    let mut charted: Vec<String> = std::fs::read_dir(root().join("charts/confgate/files/policies"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    charted.sort();
    assert_eq!(charted, policies);
    for file in &policies {
        same(
            &format!("files/policies/{file}"),
            &format!("deploy/base/policies/{file}"),
        );
    }
    same(
        "files/crds/wgpolicyk8s.io_policyreports.yaml",
        "deploy/crds/wgpolicyk8s.io_policyreports.yaml",
    );
    same(
        "files/crds/openreports.io_reports.yaml",
        "deploy/crds/openreports.io_reports.yaml",
    );
    same(
        "files/grafana-dashboard.json",
        "deploy/monitoring/grafana-dashboard.json",
    );
    same(
        "files/prometheusrule.yaml",
        "deploy/monitoring/prometheusrule.yaml",
    );
    // Every shipped policy can be switched off by its file name.
    let values: Value = confgate::yaml::documents(
        &std::fs::read_to_string(root().join("charts/confgate/values.yaml")).unwrap(),
    )
    .unwrap()
    .remove(0);
    let mut switches: Vec<String> = values["policies"]["shipped"]
        .as_object()
        .unwrap()
        .keys()
        .map(|k| format!("{k}.yaml"))
        .collect();
    switches.sort();
    assert_eq!(switches, policies);
}

/// The `serve` arguments of the rendered Deployment, parsed as confgate parses them.
fn serve_args(docs: &[Value], name: &str) -> (Vec<String>, confgate::cli::serve::ServeArgs) {
    let args: Vec<String> =
        find(docs, "Deployment", name)["spec"]["template"]["spec"]["containers"][0]["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_owned())
            .collect();
    let cli = confgate::cli::Cli::try_parse_from(
        std::iter::once("confgate".to_owned()).chain(args.clone()),
    )
    .unwrap_or_else(|e| panic!("the chart's arguments do not parse: {e}"));
    match cli.command {
        confgate::cli::Command::Serve(serve) => (args, *serve),
        _ => panic!("not serve"),
    }
}

#[test]
fn chart_values_name_every_object_and_argument_consistently() {
    let extra = "policies.extra.team\\.yaml=apiVersion: confgate.dev/v1alpha1\nkind: Policy\nmetadata: {name: team-refs}\nspec:\n  type: require-config-keys\n  action: Warn\n  match: {kinds: [StatefulSet]}\n";
    let docs = template(
        "team-a",
        "ops",
        &[
            "secrets=watch",
            "policies.shipped.protect-config-keys=false",
            "policies.excludeNamespaces={kube-system,kube-node-lease,ingress-nginx}",
            extra,
            "certificates.extraNames={confgate.example.com,10.0.0.5}",
            "rollout.ratePerMinute=30",
            "audit.interval=1h",
            "webhooks.timeoutSeconds=10",
            "autoscaling.enabled=false",
            "replicas=3",
            "monitoring.serviceMonitor.enabled=true",
            "monitoring.serviceMonitor.labels.release=kps",
            "monitoring.prometheusRule.enabled=true",
            "monitoring.prometheusRule.labels.release=kps",
            "monitoring.dashboard.enabled=true",
            "monitoring.dashboard.namespace=grafana",
        ],
    )
    .unwrap();
    let fullname = "team-a-confgate";
    // Every object is named after the release, and namespaced ones are in its namespace (the
    // dashboard where Grafana is).
    for doc in &docs {
        let name = doc["metadata"]["name"].as_str().unwrap();
        assert!(name.starts_with(fullname), "{} {name}", doc["kind"]);
        let namespace = &doc["metadata"]["namespace"];
        match doc["kind"].as_str().unwrap() {
            "ClusterRole" | "ClusterRoleBinding" | "PriorityClass" => {
                assert!(namespace.is_null())
            }
            "ConfigMap" if name.ends_with("-dashboard") => assert_eq!(namespace, "grafana"),
            _ => assert_eq!(namespace, "ops", "{name}"),
        }
        assert_eq!(
            doc["metadata"]["labels"]["app.kubernetes.io/instance"],
            "team-a"
        );
    }
    // Every binding grants to the release's ServiceAccount, and names a role it renders.
    for binding in all(&docs, "ClusterRoleBinding").chain(all(&docs, "RoleBinding")) {
        assert_eq!(
            binding["subjects"],
            json!([{"kind": "ServiceAccount", "name": fullname, "namespace": "ops"}])
        );
        let role = binding["roleRef"]["name"].as_str().unwrap();
        find(&docs, binding["roleRef"]["kind"].as_str().unwrap(), role);
    }
    find(&docs, "ServiceAccount", fullname);
    // The arguments parse, and name what the RBAC allows.
    let (args, serve) = serve_args(&docs, fullname);
    assert_eq!(serve.webhook_name, fullname);
    assert_eq!(serve.webhook_service, fullname);
    assert_eq!(serve.lease_name, format!("{fullname}-rollout"));
    assert_eq!(
        serve.checksum_key_secret,
        format!("{fullname}-checksum-key")
    );
    assert_eq!(serve.tls_secret.as_deref(), Some("team-a-confgate-tls"));
    assert_eq!(serve.tls_sans, ["confgate.example.com", "10.0.0.5"]);
    assert_eq!(
        serve.owner_cluster_role.as_deref(),
        Some("team-a-confgate-cluster-state")
    );
    assert_eq!(serve.owner_service_account.as_deref(), Some(fullname));
    assert_eq!(serve.webhook_timeout_seconds, 10);
    assert_eq!(serve.rollout_rate_per_minute, 30);
    assert_eq!(
        serve.audit_interval.0,
        Some(std::time::Duration::from_secs(3600))
    );
    assert!(serve.manage_webhooks);
    assert!(args.contains(&"--secrets=watch".to_owned()));
    let resource_names = |kind: &str, role: &str, rule: usize| {
        find(&docs, kind, &format!("{fullname}-{role}"))["rules"][rule]["resourceNames"].clone()
    };
    assert_eq!(
        resource_names("Role", "leader-election", 0),
        json!([serve.lease_name])
    );
    assert_eq!(
        resource_names("Role", "checksum-key", 0),
        json!([serve.checksum_key_secret])
    );
    assert_eq!(
        resource_names("Role", "tls-secret", 0),
        json!([serve.tls_secret])
    );
    assert_eq!(resource_names("Role", "owner", 0), json!([fullname]));
    assert_eq!(
        resource_names("ClusterRole", "cluster-state", 1),
        json!([serve.owner_cluster_role])
    );
    assert_eq!(
        resource_names("ClusterRole", "manage-webhooks", 0),
        json!([fullname])
    );
    assert_eq!(
        find(&docs, "ClusterRole", &format!("{fullname}-secrets-reader"))["rules"][0]["verbs"],
        json!(["get", "list", "watch"])
    );
    // No HPA: the replicas value counts.
    assert!(all(&docs, "HorizontalPodAutoscaler").next().is_none());
    assert_eq!(find(&docs, "Deployment", fullname)["spec"]["replicas"], 3);
    // The policies: the chosen shipped files and the extra one, every one valid, excluding the
    // chosen namespaces and the release's.
    let data = find(&docs, "ConfigMap", &format!("{fullname}-policies"))["data"]
        .as_object()
        .unwrap()
        .clone();
    let mut files: Vec<&str> = data.keys().map(String::as_str).collect();
    files.sort();
    assert_eq!(
        files,
        [
            "checksum-config.yaml",
            "limitrange-defaults.yaml",
            "quota-fit.yaml",
            "require-config-keys.yaml",
            "team.yaml"
        ]
    );
    let registry = Registry::builtin();
    for (file, text) in &data {
        let set = load_str(file, text.as_str().unwrap(), &registry)
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        for policy in &set.policies {
            let doc = confgate::yaml::documents(text.as_str().unwrap()).unwrap();
            let spec = &doc
                .iter()
                .find(|d| d["metadata"]["name"] == policy.name.as_str())
                .unwrap()["spec"];
            if file != "team.yaml" {
                assert_eq!(
                    spec["match"]["excludeNamespaces"],
                    json!(["kube-system", "kube-node-lease", "ingress-nginx", "ops"]),
                    "{file}: {}",
                    policy.name
                );
            }
        }
    }
    // Monitoring: the labels Prometheus selects, the release's Service, Secret and namespace.
    let monitor = find(&docs, "ServiceMonitor", fullname);
    assert_eq!(monitor["metadata"]["labels"]["release"], "kps");
    assert_eq!(
        monitor["spec"]["namespaceSelector"]["matchNames"],
        json!(["ops"])
    );
    let endpoint = &monitor["spec"]["endpoints"][0];
    assert_eq!(
        endpoint["tlsConfig"]["serverName"],
        "team-a-confgate.ops.svc"
    );
    assert_eq!(
        endpoint["tlsConfig"]["ca"]["secret"]["name"],
        "team-a-confgate-tls"
    );
    let service = find(&docs, "Service", fullname);
    for (key, value) in monitor["spec"]["selector"]["matchLabels"]
        .as_object()
        .unwrap()
    {
        assert_eq!(&service["metadata"]["labels"][key], value);
    }
    let rule = find(&docs, "PrometheusRule", fullname);
    assert_eq!(rule["metadata"]["labels"]["release"], "kps");
    let rules = rule["spec"]["groups"][0]["rules"].to_string();
    assert!(
        rules.contains(r#"namespace=\"ops\", deployment=\"team-a-confgate\""#),
        "{rules}"
    );
    assert!(rules.contains(r#"service=\"team-a-confgate\""#), "{rules}");
    assert!(!rules.contains("confgate-system"), "{rules}");
    assert!(
        rules.contains("{{ $labels.endpoint }}"),
        "Prometheus templates kept: {rules}"
    );
    let dashboard = find(&docs, "ConfigMap", &format!("{fullname}-dashboard"));
    assert_eq!(dashboard["metadata"]["labels"]["grafana_dashboard"], "1");
    let json_text = dashboard["data"]["confgate-dashboard.json"]
        .as_str()
        .unwrap();
    serde_json::from_str::<Value>(json_text).expect("the dashboard is JSON");
}

#[test]
fn chart_numbers_from_a_values_file_are_arguments_confgate_reads() {
    // A values file gives YAML numbers as floats, which Go templates print as `1e+06`.
    let dir = tempfile::tempdir().unwrap();
    let values = dir.path().join("values.yaml");
    std::fs::write(
        &values,
        "rollout: {ratePerMinute: 1000000, burst: 1000000, minIntervalSeconds: 3600, coalesceMs: 1000000, resyncSeconds: 86400}\n\
         webhooks: {timeoutSeconds: 30}\nautoscaling: {enabled: false}\nreplicas: 1000000\n",
    )
    .unwrap();
    let docs = template_with(
        "confgate",
        "confgate-system",
        &["--values", values.to_str().unwrap()],
    )
    .unwrap();
    let (_, serve) = serve_args(&docs, "confgate");
    assert_eq!(serve.rollout_rate_per_minute, 1_000_000);
    assert_eq!(serve.rollout_burst, 1_000_000);
    assert_eq!(serve.rollout_min_interval_seconds, 3600);
    assert_eq!(serve.rollout_coalesce_ms, 1_000_000);
    assert_eq!(serve.rollout_resync_seconds, 86_400);
    assert_eq!(serve.webhook_timeout_seconds, 30);
    assert_eq!(
        find(&docs, "Deployment", "confgate")["spec"]["replicas"],
        1_000_000
    );
}

#[test]
fn chart_certificate_modes_mount_what_the_server_reads() {
    for (mode, extra, secret) in [
        ("self-signed", None, "confgate-tls"),
        ("cert-manager", None, "confgate-tls"),
        (
            "secret",
            Some("certificates.secretName=corp-tls"),
            "corp-tls",
        ),
    ] {
        let mode_set = format!("certificates.mode={mode}");
        let mut sets = vec![mode_set.as_str()];
        sets.extend(extra);
        let docs = template("confgate", "confgate-system", &sets).unwrap();
        let (_, serve) = serve_args(&docs, "confgate");
        let pod = &find(&docs, "Deployment", "confgate")["spec"]["template"]["spec"];
        let tls = pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == "tls")
            .unwrap();
        let mount = pod["containers"][0]["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == "tls")
            .unwrap();
        let dir = std::path::Path::new(mount["mountPath"].as_str().unwrap());
        assert_eq!(serve.tls_cert, dir.join("tls.crt"), "{mode}");
        assert_eq!(serve.tls_key, dir.join("tls.key"), "{mode}");
        let certificates: Vec<&Value> = all(&docs, "Certificate").collect();
        match mode {
            "self-signed" => {
                // confgate writes the Secret's files into a memory-backed emptyDir.
                assert_eq!(serve.tls_secret.as_deref(), Some(secret));
                assert_eq!(tls["emptyDir"]["medium"], "Memory");
                assert!(mount["readOnly"].is_null());
                assert!(certificates.is_empty());
            }
            _ => {
                assert_eq!(serve.tls_secret, None);
                assert_eq!(tls["secret"]["secretName"], secret, "{mode}");
                assert_eq!(mount["readOnly"], true);
                let expected = usize::from(mode == "cert-manager") * 2;
                assert_eq!(certificates.len(), expected, "{mode}");
                if mode == "cert-manager" {
                    let serving = find(&docs, "Certificate", "confgate");
                    assert_eq!(serving["spec"]["secretName"], secret);
                    assert_eq!(
                        serving["spec"]["dnsNames"],
                        json!(confgate::certs::service_names(
                            "confgate",
                            "confgate-system"
                        ))
                    );
                }
                assert!(
                    all(&docs, "Role").all(|r| r["metadata"]["name"] != "confgate-tls-secret"),
                    "{mode}: no access to a Secret it does not make"
                );
            }
        }
    }
}

#[test]
fn chart_policy_report_crd_is_installed_and_kept_only_when_asked() {
    let crds = |sets: &[&str]| -> Vec<Value> {
        template("confgate", "confgate-system", sets)
            .unwrap()
            .into_iter()
            .filter(|d| d["kind"] == "CustomResourceDefinition")
            .collect()
    };
    assert!(crds(&[]).is_empty());
    let installed = crds(&["audit.policyReportCRD.install=true"]);
    assert_eq!(installed.len(), 1);
    assert_eq!(
        installed[0]["metadata"]["name"],
        "policyreports.wgpolicyk8s.io"
    );
    assert!(installed[0]["metadata"]["annotations"]["helm.sh/resource-policy"].is_null());
    let kept = crds(&[
        "audit.policyReportCRD.install=true",
        "audit.policyReportCRD.keep=true",
    ]);
    assert_eq!(
        kept[0]["metadata"]["annotations"]["helm.sh/resource-policy"],
        "keep"
    );
    // The rest of the CRD is the shipped one.
    let shipped = &confgate::yaml::documents(
        &std::fs::read_to_string(root().join("deploy/crds/wgpolicyk8s.io_policyreports.yaml"))
            .unwrap(),
    )
    .unwrap()[0];
    assert_eq!(installed[0]["spec"], shipped["spec"]);
}

#[test]
fn chart_schema_refuses_wrong_values_by_their_path() {
    for (set, says) in [
        ("secrets=all", "/secrets"),
        ("replica=3", "additional properties 'replica' not allowed"),
        ("webhooks.timeoutSeconds=60", "/webhooks/timeoutSeconds"),
        ("certificates.mode=vault", "/certificates/mode"),
        (
            "policies.excludeNamespaces={Kube_System}",
            "/policies/excludeNamespaces/0",
        ),
        (
            "policies.shipped.require-keys=true",
            "'require-keys' not allowed",
        ),
        ("autoscaling.minReplicas=0", "/autoscaling/minReplicas"),
        ("resources.requests.cpu=lots", "/resources/requests/cpu"),
        ("audit.interval=sometimes", "/audit/interval"),
        (
            "monitoring.serviceMonitor.enable=true",
            "'enable' not allowed",
        ),
        ("certificates.mode=secret", "set certificates.secretName"),
    ] {
        let error = template("confgate", "confgate-system", &[set])
            .err()
            .unwrap_or_else(|| panic!("{set} was accepted"));
        assert!(error.contains(says), "{set}: {error}");
    }
}

/// The values table of docs/install.md, generated from values.yaml: each `# --` comment (and the
/// comment lines after it) describes the key below it, with that key's default.
fn values_table() -> String {
    let text = std::fs::read_to_string(root().join("charts/confgate/values.yaml")).unwrap();
    let mut path: Vec<(usize, String)> = Vec::new();
    let mut description: Option<String> = None;
    let values: Value = confgate::yaml::documents(&text).unwrap().remove(0);
    let mut rows = vec![
        "| Value | Default | What it does |".to_owned(),
        "|---|---|---|".to_owned(),
    ];
    for line in text.lines() {
        let indent = line.len() - line.trim_start().len();
        let trimmed = line.trim();
        if let Some(start) = trimmed.strip_prefix("# -- ") {
            description = Some(start.to_owned());
            continue;
        }
        if let (Some(more), Some(d)) = (trimmed.strip_prefix("# "), description.as_mut()) {
            d.push(' ');
            d.push_str(more);
            continue;
        }
        if trimmed.starts_with('#') || trimmed.is_empty() || trimmed.starts_with('-') {
            continue;
        }
        let Some((key, value)) = trimmed.split_once(':') else {
            continue;
        };
        path.retain(|(i, _)| *i < indent);
        path.push((indent, key.to_owned()));
        if let Some(d) = description.take() {
            let name: Vec<&str> = path.iter().map(|(_, k)| k.as_str()).collect();
            let value = value.trim();
            let default = if value.is_empty() {
                // A map: its YAML below, on one line.
                let pointer = format!("/{}", name.join("/"));
                values.pointer(&pointer).unwrap().to_string()
            } else {
                value.to_owned()
            };
            rows.push(format!(
                "| `{}` | `{}` | {} |",
                name.join("."),
                default.replace('|', "\\|"),
                d.replace('|', "\\|")
            ));
        }
    }
    rows.join("\n")
}

#[test]
fn install_docs_values_table_is_generated_from_values_yaml() {
    const BEGIN: &str = "<!-- values table: generated from charts/confgate/values.yaml by tests/it/chart.rs (UPDATE_DOCS=1) -->\n";
    const END: &str = "\n<!-- end of values table -->";
    let page = root().join("docs/install.md");
    let readme = std::fs::read_to_string(&page).unwrap();
    let start = readme
        .find(BEGIN)
        .expect("docs/install.md has the values table marker")
        + BEGIN.len();
    let end = start
        + readme[start..]
            .find(END)
            .expect("docs/install.md has the end marker");
    let table = values_table();
    if std::env::var_os("UPDATE_DOCS").is_some() {
        let updated = format!("{}{table}{}", &readme[..start], &readme[end..]);
        std::fs::write(&page, updated).unwrap();
        return;
    }
    assert_eq!(
        &readme[start..end],
        table,
        "the values table of docs/install.md is stale: UPDATE_DOCS=1 cargo test --test it install_docs_values"
    );
    // Every leaf value is documented.
    let values: Value = confgate::yaml::documents(
        &std::fs::read_to_string(root().join("charts/confgate/values.yaml")).unwrap(),
    )
    .unwrap()
    .remove(0);
    fn leaves(value: &Value, prefix: &str, out: &mut Vec<String>) {
        match value.as_object() {
            Some(map) if !map.is_empty() => {
                for (k, v) in map {
                    let name = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    leaves(v, &name, out);
                }
            }
            _ => out.push(prefix.to_owned()),
        }
    }
    let mut all = Vec::new();
    leaves(&values, "", &mut all);
    for leaf in all {
        let documented = table.lines().any(|row| {
            row.split('`')
                .nth(1)
                .is_some_and(|name| leaf == name || leaf.starts_with(&format!("{name}.")))
        });
        assert!(documented, "values.yaml: {leaf} has no `# --` description");
    }
}

/// Every verb confgate's ClusterRoles grant, as `resource verb` (`deployments.apps patch`,
/// `secrets get`), with `/name` where a rule names its objects.
fn granted(docs: &[Value]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for role in docs.iter().filter(|d| d["kind"] == "ClusterRole") {
        for rule in role["rules"].as_array().into_iter().flatten() {
            let groups: Vec<&str> = rule["apiGroups"]
                .as_array()
                .unwrap()
                .iter()
                .map(|g| g.as_str().unwrap())
                .collect();
            let names: Vec<&str> = rule["resourceNames"]
                .as_array()
                .map(|n| n.iter().map(|v| v.as_str().unwrap()).collect())
                .unwrap_or_default();
            for group in &groups {
                for resource in rule["resources"].as_array().unwrap() {
                    let resource = resource.as_str().unwrap();
                    let qualified = if group.is_empty() {
                        resource.to_owned()
                    } else {
                        format!("{resource}.{group}")
                    };
                    for verb in rule["verbs"].as_array().unwrap() {
                        let verb = verb.as_str().unwrap();
                        if names.is_empty() {
                            out.insert(format!("{qualified} {verb}"));
                        }
                        for name in &names {
                            out.insert(format!("{qualified}/{name} {verb}"));
                        }
                    }
                }
            }
        }
    }
    out
}

/// The kinds the rollout controller writes to, as RBAC names them.
const ROLLED: [&str; 5] = [
    "deployments.apps",
    "statefulsets.apps",
    "daemonsets.apps",
    "cronjobs.batch",
    "rollouts.argoproj.io",
];

#[test]
fn chart_rbac_follows_the_features_that_are_on() {
    let render_with = |sets: &[&str]| template("confgate", "confgate-system", sets).unwrap();
    let defaults = render_with(&[]);
    let all = granted(&defaults);
    let has = |set: &BTreeSet<String>, grant: &str| set.contains(grant);
    // Rollouts on (the default): the workload kinds are patched; off: only read.
    for kind in ROLLED {
        assert!(has(&all, &format!("{kind} patch")), "{kind}");
    }
    let no_rollouts = render_with(&["rollout.enabled=false"]);
    let without = granted(&no_rollouts);
    for kind in ROLLED {
        assert!(!has(&without, &format!("{kind} patch")), "{kind}");
    }
    // Nothing else lost: the same grants but those patches.
    let patches: BTreeSet<String> = all.difference(&without).cloned().collect();
    assert!(patches.iter().all(|g| g.ends_with(" patch")), "{patches:?}");
    assert!(has(&without, "deployments.apps list") && has(&without, "deployments.apps watch"));
    // ... and the shipped checksum policy stamps at admission only.
    let policies = no_rollouts
        .iter()
        .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["name"] == "confgate-policies")
        .unwrap();
    let checksum = policies["data"]["checksum-config.yaml"].as_str().unwrap();
    let parsed = confgate::yaml::documents(checksum).unwrap();
    assert_eq!(
        parsed[0]["spec"]["settings"]["rollout"], false,
        "{checksum}"
    );
    let on = defaults
        .iter()
        .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["name"] == "confgate-policies")
        .unwrap();
    let parsed =
        confgate::yaml::documents(on["data"]["checksum-config.yaml"].as_str().unwrap()).unwrap();
    assert_eq!(parsed[0]["spec"]["settings"]["rollout"], true);
    // Secrets only as the mode needs: by name, watched, or never.
    let secrets = |set: &BTreeSet<String>| -> Vec<String> {
        set.iter()
            .filter(|g| g.starts_with("secrets "))
            .cloned()
            .collect()
    };
    assert_eq!(secrets(&all), ["secrets get"]);
    assert_eq!(
        secrets(&granted(&render_with(&["secrets=watch"]))),
        ["secrets get", "secrets list", "secrets watch"]
    );
    let none = render_with(&["secrets=none"]);
    assert_eq!(secrets(&granted(&none)), Vec::<String>::new());
    assert!(
        !none
            .iter()
            .any(|d| d["metadata"]["name"] == "confgate-secrets-reader"),
        "no role or binding for Secrets"
    );
    // Webhook configurations: changed only by name (its own); create cannot be limited so.
    for kind in [
        "mutatingwebhookconfigurations",
        "validatingwebhookconfigurations",
    ] {
        let qualified = format!("{kind}.admissionregistration.k8s.io");
        let verbs: Vec<&String> = all.iter().filter(|g| g.starts_with(&qualified)).collect();
        assert_eq!(
            verbs,
            [
                &format!("{qualified} create"),
                &format!("{qualified}/confgate get"),
                &format!("{qualified}/confgate patch"),
                &format!("{qualified}/confgate update"),
            ],
        );
    }
    assert!(
        !all.iter()
            .any(|g| g.contains(" delete") && g.contains("webhookconfigurations"))
    );
    // Registered by Helm: no access to webhook configurations at all, and nothing else lost.
    let by_helm = render_with(&[
        "webhooks.registration=helm",
        "certificates.mode=cert-manager",
    ]);
    let helm_grants = granted(&by_helm);
    let lost: Vec<&String> = all.difference(&helm_grants).collect();
    assert!(
        !lost.is_empty() && lost.iter().all(|g| g.contains("webhookconfigurations")),
        "{lost:?}"
    );
    assert!(
        !helm_grants
            .iter()
            .any(|g| g.contains("webhookconfigurations"))
    );
    assert!(
        !by_helm
            .iter()
            .any(|d| d["metadata"]["name"] == "confgate-manage-webhooks"),
        "no role or binding to manage webhooks"
    );
    // The NetworkPolicy: the webhook port only, unless turned off.
    let policy = defaults
        .iter()
        .find(|d| d["kind"] == "NetworkPolicy")
        .expect("a NetworkPolicy by default");
    assert_eq!(policy["spec"]["policyTypes"], json!(["Ingress"]));
    assert_eq!(
        policy["spec"]["ingress"],
        json!([{"ports": [{"port": 8443, "protocol": "TCP"}]}])
    );
    assert!(
        !render_with(&["networkPolicy.enabled=false"])
            .iter()
            .any(|d| d["kind"] == "NetworkPolicy")
    );
    // OpenReports: the argument confgate reads, and its CRD when asked.
    let both = render_with(&[
        "audit.reports={wgpolicyk8s,openreports}",
        "audit.openReportsCRD.install=true",
    ]);
    let (args, parsed) = serve_args(&both, "confgate");
    assert!(
        args.contains(&"--audit-reports=wgpolicyk8s,openreports".to_owned()),
        "{args:?}"
    );
    assert_eq!(
        parsed.audit_reports,
        [
            confgate::controllers::audit::ReportFormat::PolicyReport,
            confgate::controllers::audit::ReportFormat::OpenReports
        ]
    );
    assert!(both.iter().any(|d| d["kind"] == "CustomResourceDefinition"
        && d["metadata"]["name"] == "reports.openreports.io"));
    assert!(
        !defaults
            .iter()
            .any(|d| d["kind"] == "CustomResourceDefinition")
    );
    assert!(has(&all, "reports.openreports.io patch"));
}

/// The container's environment: name → value (or `from` for a reference).
fn container_env(docs: &[Value]) -> Vec<(String, String)> {
    let deployment = docs
        .iter()
        .find(|d| d["kind"] == "Deployment")
        .expect("a Deployment");
    deployment["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let value = e["value"].as_str().unwrap_or("from");
            (e["name"].as_str().unwrap().to_owned(), value.to_owned())
        })
        .collect()
}

#[test]
fn chart_traces_are_off_unless_an_endpoint_is_given_and_then_set_by_the_otel_variables() {
    let off = container_env(&template("confgate", "confgate-system", &[]).unwrap());
    assert!(
        off.iter().all(|(name, _)| !name.starts_with("OTEL_")),
        "{off:?}"
    );
    let on = container_env(
        &template(
            "confgate",
            "confgate-system",
            &[
                "tracing.otlpEndpoint=http://otel-collector.observability:4318",
                "tracing.samplerRatio=0.25",
                "extraEnv[0].name=OTEL_EXPORTER_OTLP_TIMEOUT",
                "extraEnv[0].value=2000",
                "extraEnv[1].name=OTEL_EXPORTER_OTLP_HEADERS",
                "extraEnv[1].valueFrom.secretKeyRef.name=otlp",
                "extraEnv[1].valueFrom.secretKeyRef.key=headers",
            ],
        )
        .unwrap(),
    );
    let otel: Vec<(&str, &str)> = on
        .iter()
        .filter(|(name, _)| name.starts_with("OTEL_"))
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        otel,
        [
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                "http://otel-collector.observability:4318"
            ),
            ("OTEL_SERVICE_NAME", "confgate"),
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "k8s.namespace.name=$(POD_NAMESPACE),k8s.pod.name=$(POD_NAME)"
            ),
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "2000"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "from"),
        ]
    );
    // What the chart sets is what confgate accepts.
    let vars: std::collections::HashMap<String, String> = on.into_iter().collect();
    let settings = confgate::telemetry::otel::settings(|name| vars.get(name).cloned())
        .unwrap()
        .expect("traces on");
    assert_eq!(settings.timeout, std::time::Duration::from_secs(2));
    assert!(!settings.default_service_name);
    // A gRPC address is refused by the schema, by its path.
    let error = template(
        "confgate",
        "confgate-system",
        &["tracing.otlpEndpoint=otel-collector:4317"],
    )
    .unwrap_err();
    assert!(error.contains("/tracing/otlpEndpoint"), "{error}");
}

/// What `confgate webhooks ARGS` prints, as documents.
fn confgate_webhooks(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_confgate"))
        .arg("webhooks")
        .args(args)
        .output()
        .expect("confgate webhooks");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The chart's registration template starts from what `confgate webhooks` generates for each
/// shipped policy file (files/webhooks/FILE); UPDATE_DOCS=1 writes them again.
#[test]
fn chart_webhook_files_are_what_confgate_webhooks_generates_for_each_shipped_policy_file() {
    let shipped = root().join("charts/confgate/files/policies");
    let generated = root().join("charts/confgate/files/webhooks");
    let dir = tempfile::tempdir().unwrap();
    let mut files: Vec<String> = std::fs::read_dir(&shipped)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    for file in &files {
        let alone = dir.path().join(file.trim_end_matches(".yaml"));
        std::fs::create_dir_all(&alone).unwrap();
        std::fs::copy(shipped.join(file), alone.join(file)).unwrap();
        let text = confgate_webhooks(&[
            "--policies",
            alone.to_str().unwrap(),
            "--inject-ca-from",
            "confgate-system/confgate",
        ]);
        let expected = format!(
            "# What `confgate webhooks --policies DIR --inject-ca-from confgate-system/confgate` prints\n\
             # for DIR holding files/policies/{file} alone (tests/it/chart.rs keeps it so; UPDATE_DOCS=1\n\
             # writes it again). Rendered by templates/webhooks.yaml with webhooks.registration=helm.\n{text}"
        );
        let path = generated.join(file);
        if std::env::var_os("UPDATE_DOCS").is_some() {
            std::fs::create_dir_all(&generated).unwrap();
            std::fs::write(&path, &expected).unwrap();
        }
        assert_eq!(
            std::fs::read_to_string(&path).unwrap_or_default(),
            expected,
            "charts/confgate/files/webhooks/{file} is stale: UPDATE_DOCS=1 cargo test --test it chart"
        );
    }
    let mut written: Vec<String> = std::fs::read_dir(&generated)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    written.sort();
    assert_eq!(
        written, files,
        "one file of webhooks per shipped policy file"
    );
}

#[test]
fn chart_rendered_registration_is_what_confgate_webhooks_generates_for_the_chart_policies() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.crt");
    let certs = Command::new(env!("CARGO_BIN_EXE_confgate"))
        .args(["certs", "--out-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(certs.status.success());
    let ca_base64 = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(std::fs::read(&ca).unwrap())
    };
    let cases: [(&str, Vec<String>, Vec<&str>); 3] = [
        (
            "1.33.0",
            vec![
                "webhooks.registration=helm".into(),
                "certificates.mode=cert-manager".into(),
                "webhooks.timeoutSeconds=7".into(),
                "policies.excludeNamespaces={kube-system,ingress-nginx}".into(),
            ],
            vec![
                "--inject-ca-from",
                "ops/gate-confgate",
                "--timeout-seconds",
                "7",
            ],
        ),
        (
            "1.27.0",
            vec![
                "webhooks.registration=helm".into(),
                "certificates.mode=secret".into(),
                "certificates.secretName=corp-tls".into(),
                format!("webhooks.caBundle={ca_base64}"),
                "policies.shipped.quota-fit=false".into(),
            ],
            vec!["--ca-bundle", ca.to_str().unwrap()],
        ),
        (
            "1.30.0",
            vec![
                "webhooks.registration=helm".into(),
                "certificates.mode=cert-manager".into(),
                "policies.shipped.protect-config-keys=false".into(),
                "policies.shipped.checksum-config=false".into(),
            ],
            vec!["--inject-ca-from", "ops/gate-confgate"],
        ),
    ];
    for (kube, sets, generator) in cases {
        let mut args = vec!["--kube-version", kube];
        for set in &sets {
            args.extend(["--set", set.as_str()]);
        }
        let rendered = template_with("gate", "ops", &args).unwrap();
        // The policies the chart mounts, as files, for the generator.
        let policies = dir.path().join(format!("policies-{kube}"));
        std::fs::create_dir_all(&policies).unwrap();
        let config_map = rendered
            .iter()
            .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["name"] == "gate-confgate-policies")
            .unwrap();
        for (file, text) in config_map["data"].as_object().unwrap() {
            std::fs::write(policies.join(file), text.as_str().unwrap()).unwrap();
        }
        let mut generator_args = vec![
            "--policies",
            policies.to_str().unwrap(),
            "--service",
            "gate-confgate",
            "--namespace",
            "ops",
            "--name",
            "gate-confgate",
            "--kubernetes-version",
            kube,
        ];
        generator_args.extend(generator.iter().copied());
        let expected = confgate::yaml::documents(&confgate_webhooks(&generator_args)).unwrap();
        for kind in [
            "MutatingWebhookConfiguration",
            "ValidatingWebhookConfiguration",
        ] {
            let ours = rendered
                .iter()
                .find(|d| d["kind"] == kind)
                .unwrap_or_else(|| panic!("{kube}: no {kind}"));
            let theirs = expected.iter().find(|d| d["kind"] == kind).unwrap();
            assert_eq!(ours["metadata"]["name"], "gate-confgate");
            assert_eq!(
                ours["metadata"]["annotations"], theirs["metadata"]["annotations"],
                "{kube} {kind}"
            );
            assert_eq!(ours["webhooks"], theirs["webhooks"], "{kube} {kind}");
        }
        let args = serve_args(&rendered, "gate-confgate").0;
        assert!(!args.iter().any(|a| a == "--manage-webhooks"), "{args:?}");
    }
    // Only what Helm can know: a self-signed CA is made at run time, and policies.extra has no
    // webhooks in the file.
    let error = template(
        "gate",
        "ops",
        &[
            "webhooks.registration=helm",
            "certificates.mode=self-signed",
        ],
    )
    .unwrap_err();
    assert!(
        error.contains("webhooks.registration=helm needs certificates.mode cert-manager or secret"),
        "{error}"
    );
    let error = template(
        "gate",
        "ops",
        &["webhooks.registration=helm", "certificates.mode=secret"],
    )
    .unwrap_err();
    assert!(error.contains("needs webhooks.caBundle"), "{error}");
    let error = template(
        "gate",
        "ops",
        &[
            "webhooks.registration=helm",
            "certificates.mode=cert-manager",
            "policies.extra.mine\\.yaml=x",
        ],
    )
    .unwrap_err();
    assert!(error.contains("policies.extra"), "{error}");
    // Managed (the default): no registration in the chart, and confgate applies it.
    let managed = template("gate", "ops", &[]).unwrap();
    assert!(!managed.iter().any(|d| {
        d["kind"]
            .as_str()
            .unwrap()
            .ends_with("WebhookConfiguration")
    }));
    let args = serve_args(&managed, "gate-confgate").0;
    assert!(args.iter().any(|a| a == "--manage-webhooks"), "{args:?}");
}
