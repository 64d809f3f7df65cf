//! The Helm chart on a real control plane of its own (its objects are cluster-wide, and "nothing
//! is left" is only a claim about a cluster nobody else writes to): `helm install`, `helm
//! upgrade --set`, `helm uninstall`.
//!
//! There is no kubelet, so the chart's own Pods stay Pending. confgate runs on the host instead,
//! exactly as the chart's Deployment runs it: the Deployment's arguments read back from the
//! cluster, the policies from the chart's ConfigMap, and the chart's ServiceAccount's token, so
//! the chart's RBAC is what it runs with. Only the listen address, the file paths and the
//! webhook URL (the apiserver reaches the host by URL, not through the Service) are changed.

use crate::harness::control_plane::{Binaries, ControlPlane, write_kubeconfig};
use crate::harness::process::{Daemon, free_port};
use crate::harness::{Cx, Kubectl, eventually, root};
use base64::Engine as _;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;

const NAMESPACE: &str = "confgate-system";
const RELEASE: &str = "confgate";

/// A control plane of this test's own, stopped when the test ends (also when it panics).
struct OwnPlane(&'static ControlPlane);

impl Drop for OwnPlane {
    fn drop(&mut self) {
        self.0.stop();
    }
}

/// A control plane of the test's own (under `CARGO_TARGET_TMPDIR/dir`), stopped when the guard
/// is dropped, and a context for it.
async fn own_plane(dir: &str) -> (OwnPlane, Cx) {
    let binaries = Binaries::from_env().expect("control plane binaries");
    let root_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(dir);
    let plane: &'static ControlPlane =
        Box::leak(Box::new(ControlPlane::start(&binaries, &root_dir).unwrap()));
    (OwnPlane(plane), Cx::new(plane).await)
}

/// `scripts/helm.sh` says where helm is ($HELM first, as scripts/e2e-env.sh sets it).
pub(crate) fn helm_binary() -> String {
    let out = std::process::Command::new(root().join("scripts/helm.sh"))
        .output()
        .expect("scripts/helm.sh");
    assert!(
        out.status.success(),
        "no helm: set HELM (scripts/e2e-env.sh does): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Runs helm against `plane`; panics with its output when it fails.
pub(crate) async fn helm(plane: &ControlPlane, args: &[&str]) -> String {
    let out = tokio::process::Command::new(helm_binary())
        .args(args)
        .env("KUBECONFIG", &plane.kubeconfig)
        .env("HELM_CACHE_HOME", plane.dir.join("helm/cache"))
        .env("HELM_CONFIG_HOME", plane.dir.join("helm/config"))
        .env("HELM_DATA_HOME", plane.dir.join("helm/data"))
        .output()
        .await
        .expect("helm runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "helm {}: {text}", args.join(" "));
    text
}

/// `kubectl get KIND -A -o json` items (cluster-wide or in every namespace).
async fn items(kubectl: &Kubectl, kind: &str) -> Vec<Value> {
    let out = kubectl.ok(&["get", kind, "-A", "-o", "json"], None).await;
    let list: Value = serde_json::from_str(&out).unwrap();
    list["items"].as_array().cloned().unwrap_or_default()
}

fn names(items: &[Value]) -> Vec<String> {
    items
        .iter()
        .map(|i| {
            let name = i["metadata"]["name"].as_str().unwrap_or_default();
            match i["metadata"]["namespace"].as_str() {
                Some(ns) => format!("{ns}/{name}"),
                None => name.to_owned(),
            }
        })
        .collect()
}

/// The owner named in an object's `ownerReferences` (kind, name, uid).
fn owner(object: &Value) -> Option<(String, String, String)> {
    let owner = object["metadata"]["ownerReferences"].as_array()?.first()?;
    Some((
        owner["kind"].as_str()?.to_owned(),
        owner["name"].as_str()?.to_owned(),
        owner["uid"].as_str()?.to_owned(),
    ))
}

/// One host confgate run as the chart's Deployment runs it.
struct HostConfgate {
    daemon: Option<Daemon>,
    port: u16,
    dir: tempfile::TempDir,
    /// The buildah container it runs in, when it runs from the image.
    _container: Option<Container>,
}

/// The image the chart's confgate runs from (`E2E_IMAGE`, built by scripts/image.sh), if any.
fn image() -> Option<String> {
    std::env::var("E2E_IMAGE").ok().filter(|i| !i.is_empty())
}

/// The first process named `name` (its `comm`) among the descendants of `pid`.
fn descendant(pid: u32, name: &str) -> Option<u32> {
    let mut children: std::collections::HashMap<u32, Vec<(u32, String)>> = Default::default();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ppid ...`; comm may hold spaces and parentheses.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let child: Option<u32> = stat[..open].trim().parse().ok();
        let parent: Option<u32> = stat[close + 1..].split_whitespace().nth(1)?.parse().ok();
        if let (Some(child), Some(parent)) = (child, parent) {
            let comm = stat[open + 1..close].to_owned();
            children.entry(parent).or_default().push((child, comm));
        }
    }
    let mut queue = vec![pid];
    while let Some(next) = queue.pop() {
        for (child, comm) in children.get(&next).into_iter().flatten() {
            if comm == name {
                return Some(*child);
            }
            queue.push(*child);
        }
    }
    None
}

/// A buildah working container of [`image`], removed when dropped.
struct Container(String);

impl Container {
    fn of(image: &str) -> Self {
        let out = std::process::Command::new("buildah")
            .env("STORAGE_DRIVER", "vfs")
            .args(["from", "--pull-never", image])
            .output()
            .expect("buildah runs");
        assert!(
            out.status.success(),
            "buildah from {image}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let container = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        eprintln!("e2e: confgate runs from image {image} (buildah container {container})");
        Self(container)
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = std::process::Command::new("buildah")
            .env("STORAGE_DRIVER", "vfs")
            .args(["rm", &self.0])
            .output();
    }
}

/// `confgate ARGS` with `env`: the test's binary on the host, or, with `E2E_IMAGE`, the image's
/// binary in a container of it (`buildah run`: chroot, host network, the image's non-root user),
/// with `dir` mounted at the same path (its files opened to that user).
fn confgate_command(
    args: &[String],
    env: &[(&str, String)],
    dir: &Path,
) -> (std::process::Command, Option<Container>) {
    let Some(image) = image() else {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_confgate"));
        command
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env_remove("KUBERNETES_SERVICE_HOST");
        return (command, None);
    };
    // The image runs as 65532, as in a Pod: the directory is its volume.
    let _ = std::process::Command::new("chmod")
        .args(["-R", "a+rwX"])
        .arg(dir)
        .status();
    let container = Container::of(&image);
    let mut command = std::process::Command::new("buildah");
    command.env("STORAGE_DRIVER", "vfs").args([
        "run",
        "--isolation",
        "chroot",
        "--network",
        "host",
    ]);
    command
        .arg("--volume")
        .arg(format!("{}:{}", dir.display(), dir.display()));
    for (name, value) in env {
        command.arg("--env").arg(format!("{name}={value}"));
    }
    command
        .arg(&container.0)
        .arg("--")
        .arg("/usr/local/bin/confgate")
        .args(args);
    (command, Some(container))
}

impl HostConfgate {
    /// Starts confgate with the chart's Deployment arguments and policies, as its
    /// ServiceAccount; a fresh directory, like a new Pod's emptyDir.
    async fn start(plane: &ControlPlane, kubectl: &Kubectl, port: u16) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let deployment = kubectl
            .get(NAMESPACE, &format!("deployment/{RELEASE}"))
            .await
            .expect("the chart's Deployment");
        let container = &deployment["spec"]["template"]["spec"]["containers"][0];
        let policies = dir.path().join("policies");
        std::fs::create_dir_all(&policies).unwrap();
        let config_map = kubectl
            .get(NAMESPACE, &format!("configmap/{RELEASE}-policies"))
            .await
            .expect("the chart's policies");
        for (file, text) in config_map["data"].as_object().unwrap() {
            std::fs::write(policies.join(file), text.as_str().unwrap()).unwrap();
        }
        let tls = dir.path().join("tls");
        // A Secret volume (certificates.mode cert-manager or secret) is written as the kubelet
        // would mount it; with self-signed confgate writes the files from its own Secret.
        let volumes = deployment["spec"]["template"]["spec"]["volumes"]
            .as_array()
            .unwrap();
        if let Some(name) = volumes
            .iter()
            .find(|v| v["name"] == "tls")
            .and_then(|v| v["secret"]["secretName"].as_str())
        {
            let secret = kubectl
                .get(NAMESPACE, &format!("secret/{name}"))
                .await
                .expect("the certificate's Secret");
            std::fs::create_dir_all(&tls).unwrap();
            for (file, data) in secret["data"].as_object().unwrap() {
                std::fs::write(tls.join(file), decoded(data).unwrap()).unwrap();
            }
        }
        let mut args: Vec<String> = Vec::new();
        for arg in container["args"].as_array().unwrap() {
            let arg = arg.as_str().unwrap();
            let flag = arg.split('=').next().unwrap();
            args.push(match flag {
                "--listen" => format!("--listen=127.0.0.1:{port}"),
                "--policies" => format!("--policies={}", policies.display()),
                "--tls-cert" => format!("--tls-cert={}", tls.join("tls.crt").display()),
                "--tls-key" => format!("--tls-key={}", tls.join("tls.key").display()),
                "--shutdown-delay-seconds" => "--shutdown-delay-seconds=0".into(),
                "--drain-seconds" => "--drain-seconds=2".into(),
                _ => arg.to_owned(),
            });
        }
        args.push(format!("--webhook-url=https://127.0.0.1:{port}"));
        args.push("--tls-san=127.0.0.1".into());
        let token = kubectl
            .ok(&["create", "token", RELEASE, "-n", NAMESPACE], None)
            .await;
        let kubeconfig = dir.path().join("kubeconfig");
        write_kubeconfig(&kubeconfig, &plane.server, token.trim()).unwrap();
        let env = [
            ("KUBECONFIG", kubeconfig.display().to_string()),
            ("POD_NAMESPACE", NAMESPACE.to_owned()),
            ("POD_NAME", format!("confgate-host-{port}")),
            (
                "RUST_LOG",
                std::env::var("E2E_CONFGATE_LOG")
                    .unwrap_or_else(|_| "info,kube=warn,hyper=warn,rustls=warn".into()),
            ),
        ];
        let (mut command, container) = confgate_command(&args, &env, dir.path());
        let daemon = Daemon::spawn("confgate", &mut command, dir.path(), &plane.pid_dir())
            .expect("confgate starts");
        Self {
            daemon: Some(daemon),
            port,
            dir,
            _container: container,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("confgate.log")).unwrap_or_default()
    }

    /// Waits until it says it applied the registration (only once it is ready).
    async fn wait_registered(&mut self) {
        for _ in 0..300 {
            if self.log().contains("webhook registration applied") {
                return;
            }
            if let Some(status) = self.daemon.as_mut().and_then(|d| d.exited()) {
                panic!("confgate exited ({status}):\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("no registration within 60 s:\n{}", self.log());
    }

    fn ca(&self) -> Vec<u8> {
        std::fs::read(self.dir.path().join("tls/ca.crt")).expect("ca.crt written from the Secret")
    }

    fn stop(&mut self) {
        if let Some(mut daemon) = self.daemon.take() {
            // `buildah run` kills its command on SIGTERM instead of passing the signal on: the
            // image's confgate gets it directly, as a container runtime would send it, and
            // shuts down gracefully (releasing its Lease).
            if self._container.is_some()
                && let Some(pid) = descendant(daemon.pid(), "confgate")
            {
                crate::harness::process::signal(pid, "TERM");
                for _ in 0..100 {
                    if daemon.exited().is_some() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            daemon.stop(Duration::from_secs(10));
        }
    }
}

impl Drop for HostConfgate {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- host confgate log (port {}) ----\n{}",
                self.port,
                self.log()
            );
        }
    }
}

/// Base64 text in an object, decoded.
fn decoded(text: &Value) -> Option<Vec<u8>> {
    base64::engine::general_purpose::STANDARD
        .decode(text.as_str()?)
        .ok()
}

fn webhook_ca(configuration: &Value) -> Vec<u8> {
    decoded(&configuration["webhooks"][0]["clientConfig"]["caBundle"]).expect("a caBundle")
}

/// What `confgate webhooks` generates for the chart's policies, URL and CA.
fn generated(policies: &Path, ca: &Path, url: &str, minor: u32) -> Vec<Value> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_confgate"))
        .args(["webhooks", "--policies"])
        .arg(policies)
        .arg("--ca-bundle")
        .arg(ca)
        .args(["--url", url, "--name", RELEASE, "--namespace", NAMESPACE])
        .arg(format!("--kubernetes-version=1.{minor}"))
        .output()
        .expect("confgate webhooks");
    assert!(out.status.success());
    confgate::yaml::documents(&String::from_utf8(out.stdout).unwrap()).unwrap()
}

/// A Deployment reading a ConfigMap that does not exist, applied in `apps`: the apiserver
/// calls confgate and denies it, naming the policy and what is missing.
async fn a_broken_deployment_is_denied(kubectl: &Kubectl) {
    let denied = kubectl
        .fails(
            &["apply", "-n", "apps", "-f", "-"],
            Some(
                r#"{"apiVersion": "apps/v1", "kind": "Deployment",
                    "metadata": {"name": "broken"},
                    "spec": {"selector": {"matchLabels": {"app": "broken"}},
                      "template": {"metadata": {"labels": {"app": "broken"}},
                        "spec": {"containers": [{"name": "web", "image": "nginx",
                          "env": [{"name": "LEVEL", "valueFrom": {"configMapKeyRef": {"name": "missing", "key": "level"}}}]}]}}}}"#,
            ),
        )
        .await;
    assert!(
        denied.contains("require-config-keys") && denied.contains("missing"),
        "{denied}"
    );
}

/// The config guard's finalizers on an object.
fn guard_marks(object: &Value) -> Vec<String> {
    object["metadata"]["finalizers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .filter(|f| f.starts_with("confgate.dev/in-use"))
        .map(str::to_owned)
        .collect()
}

/// Plays the kubelet for the chart's pre-delete hook: waits for its Pod, runs its container's
/// command on the host as the Pod's ServiceAccount, and reports the Pod done.
async fn run_release_hook(plane: &ControlPlane, kubectl: Kubectl) {
    let pod = eventually(Duration::from_secs(60), "the release hook's Pod", || {
        let kubectl = kubectl.clone();
        async move {
            let pods = kubectl.get(NAMESPACE, "pods").await?;
            pods["items"]
                .as_array()?
                .iter()
                .find(|p| p["metadata"]["labels"]["app.kubernetes.io/component"] == "release")
                .cloned()
        }
    })
    .await;
    let spec = &pod["spec"];
    let args: Vec<String> = spec["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect();
    let account = spec["serviceAccountName"].as_str().unwrap();
    let token = kubectl
        .ok(&["create", "token", account, "-n", NAMESPACE], None)
        .await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    write_kubeconfig(&kubeconfig, &plane.server, token.trim()).unwrap();
    let env = [("KUBECONFIG", kubeconfig.display().to_string())];
    let (command, _container) = confgate_command(&args, &env, dir.path());
    let out = tokio::process::Command::from(command)
        .output()
        .await
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "confgate {}: {said}", args.join(" "));
    // The running replica may take its marks off itself once it sees the release: either way
    // none is left (checked after the uninstall).
    assert!(said.contains("released; waiting"), "{said}");
    let name = pod["metadata"]["name"].as_str().unwrap();
    let done = r#"{"status":{"phase":"Succeeded","containerStatuses":[{"name":"release","image":"confgate","imageID":"","ready":false,"restartCount":0,"state":{"terminated":{"exitCode":0,"reason":"Completed"}}}]}}"#;
    kubectl
        .ok(
            &[
                "-n",
                NAMESPACE,
                "patch",
                "pod",
                name,
                "--subresource=status",
                "--type=merge",
                "-p",
                done,
            ],
            None,
        )
        .await;
}

pub async fn e2e_helm_chart_installs_upgrades_and_uninstalls_leaving_nothing(_shared: Cx) {
    let (_guard, cx) = own_plane("e2e-helm").await;
    let plane = cx.plane;
    let kubectl = cx.kubectl();
    let chart = root().join("charts/confgate");
    let chart = chart.to_str().unwrap();
    // What the cluster holds before: everything else found at the end was left by the chart.
    let before = |kinds: &'static [&'static str]| {
        let kubectl = kubectl.clone();
        async move {
            let mut all = Vec::new();
            for kind in kinds {
                all.extend(
                    names(&items(&kubectl, kind).await)
                        .into_iter()
                        .map(|n| format!("{kind}:{n}")),
                );
            }
            all.sort();
            all
        }
    };
    const KINDS: &[&str] = &[
        "mutatingwebhookconfigurations",
        "validatingwebhookconfigurations",
        "clusterroles",
        "clusterrolebindings",
        "customresourcedefinitions",
        "priorityclasses",
        "roles",
        "rolebindings",
        "serviceaccounts",
        "secrets",
        "configmaps",
        "leases",
        "services",
        "deployments",
        "poddisruptionbudgets",
        "horizontalpodautoscalers",
    ];
    let initial = before(KINDS).await;

    // A workload that exists before confgate: the audit reports on it.
    kubectl.ok(&["create", "namespace", "apps"], None).await;
    kubectl
        .ok(
            &[
                "create",
                "deployment",
                "existing",
                "--image=nginx",
                "-n",
                "apps",
            ],
            None,
        )
        .await;

    // Install. No webhook exists until a ready confgate registers it.
    helm(
        plane,
        &[
            "install",
            RELEASE,
            chart,
            "--namespace",
            NAMESPACE,
            "--create-namespace",
            "--set",
            "audit.policyReportCRD.install=true",
            "--set",
            "audit.interval=30s",
        ],
    )
    .await;
    for kind in [
        "mutatingwebhookconfigurations",
        "validatingwebhookconfigurations",
    ] {
        assert!(
            items(&kubectl, kind).await.is_empty(),
            "{kind} before any confgate is ready"
        );
    }
    let port = free_port();
    let url = format!("https://127.0.0.1:{port}");
    let mut host = HostConfgate::start(plane, &kubectl, port).await;
    host.wait_registered().await;

    // The Secret confgate made, owned by the chart's ServiceAccount; the webhooks registered
    // with its CA, owned by the chart's ClusterRole, exactly as `confgate webhooks` generates.
    let account = kubectl
        .get(NAMESPACE, &format!("serviceaccount/{RELEASE}"))
        .await
        .unwrap();
    let account_uid = account["metadata"]["uid"].as_str().unwrap().to_owned();
    let role = kubectl
        .get("", &format!("clusterrole/{RELEASE}-cluster-state"))
        .await
        .unwrap();
    let role_uid = role["metadata"]["uid"].as_str().unwrap().to_owned();
    let secret = kubectl
        .get(NAMESPACE, &format!("secret/{RELEASE}-tls"))
        .await
        .expect("confgate made its TLS Secret");
    assert_eq!(
        owner(&secret),
        Some(("ServiceAccount".into(), RELEASE.into(), account_uid.clone()))
    );
    let secret_ca = decoded(&secret["data"]["ca.crt"]).expect("ca.crt");
    assert_eq!(secret_ca, host.ca());
    let key = kubectl
        .get(NAMESPACE, &format!("secret/{RELEASE}-checksum-key"))
        .await
        .expect("the checksum key");
    assert_eq!(
        owner(&key),
        Some(("ServiceAccount".into(), RELEASE.into(), account_uid.clone()))
    );
    let expected = generated(
        &host.dir.path().join("policies"),
        &host.dir.path().join("tls/ca.crt"),
        &url,
        cx.minor(),
    );
    for expected in &expected {
        let kind = expected["kind"].as_str().unwrap().to_lowercase();
        let stored = kubectl
            .get("", &format!("{kind}/{RELEASE}"))
            .await
            .expect("registered");
        assert_eq!(
            owner(&stored),
            Some((
                "ClusterRole".into(),
                format!("{RELEASE}-cluster-state"),
                role_uid.clone()
            )),
            "{kind}"
        );
        assert_eq!(webhook_ca(&stored), secret_ca, "{kind}: the Secret's CA");
        let stored_names: Vec<&Value> = stored["webhooks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| &w["name"])
            .collect();
        let expected_names: Vec<&Value> = expected["webhooks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| &w["name"])
            .collect();
        assert_eq!(stored_names, expected_names, "{kind}");
        for (s, e) in stored["webhooks"]
            .as_array()
            .unwrap()
            .iter()
            .zip(expected["webhooks"].as_array().unwrap())
        {
            for field in [
                "clientConfig",
                "rules",
                "namespaceSelector",
                "objectSelector",
                "failurePolicy",
                "sideEffects",
                "timeoutSeconds",
                "matchPolicy",
                "matchConditions",
            ] {
                if let Some(expected) = e.get(field) {
                    assert_eq!(&s[field], expected, "{kind} {}: {field}", e["name"]);
                }
            }
        }
    }
    // The Lease names its owner once this replica leads.
    eventually(Duration::from_secs(30), "the Lease is owned", || {
        let kubectl = kubectl.clone();
        let account_uid = account_uid.clone();
        async move {
            let lease = kubectl
                .get(NAMESPACE, &format!("lease/{RELEASE}-rollout"))
                .await?;
            (owner(&lease)? == ("ServiceAccount".into(), RELEASE.into(), account_uid)).then_some(())
        }
    })
    .await;

    // In effect: the apiserver calls the host confgate through the registration it made.
    a_broken_deployment_is_denied(&kubectl).await;
    // The audit's PolicyReport for the existing workload, owned by the chart's ClusterRole.
    let report = eventually(Duration::from_secs(60), "a PolicyReport in apps", || {
        let kubectl = kubectl.clone();
        async move { kubectl.get("apps", "policyreport/confgate-audit").await }
    })
    .await;
    assert_eq!(
        owner(&report),
        Some((
            "ClusterRole".into(),
            format!("{RELEASE}-cluster-state"),
            role_uid.clone()
        ))
    );

    // Upgrade with --set: the Deployment changes, the certificate and the caBundle do not. The
    // host confgate is replaced as a rollout replaces Pods (a new, empty emptyDir).
    helm(
        plane,
        &[
            "upgrade",
            RELEASE,
            chart,
            "--namespace",
            NAMESPACE,
            "--reuse-values",
            "--set",
            "autoscaling.enabled=false",
            "--set",
            "replicas=3",
            "--set",
            "logLevel=debug",
        ],
    )
    .await;
    let deployment = kubectl
        .get(NAMESPACE, &format!("deployment/{RELEASE}"))
        .await
        .unwrap();
    assert_eq!(deployment["spec"]["replicas"], 3);
    assert!(
        kubectl
            .get(NAMESPACE, &format!("horizontalpodautoscaler/{RELEASE}"))
            .await
            .is_none()
    );
    host.stop();
    let port = free_port();
    let mut host = HostConfgate::start(plane, &kubectl, port).await;
    host.wait_registered().await;
    assert_eq!(host.ca(), secret_ca, "the same CA after the upgrade");
    let after = kubectl
        .get(NAMESPACE, &format!("secret/{RELEASE}-tls"))
        .await
        .unwrap();
    assert_eq!(after["data"], secret["data"], "the Secret is unchanged");
    assert_eq!(after["metadata"]["uid"], secret["metadata"]["uid"]);
    for kind in [
        "mutatingwebhookconfiguration",
        "validatingwebhookconfiguration",
    ] {
        let stored = kubectl.get("", &format!("{kind}/{RELEASE}")).await.unwrap();
        assert_eq!(webhook_ca(&stored), secret_ca, "{kind}: the same caBundle");
        assert!(
            stored["webhooks"][0]["clientConfig"]["url"]
                .as_str()
                .unwrap()
                .contains(&port.to_string()),
            "{kind}: re-registered by the new replica"
        );
    }

    // A ConfigMap a workload reads carries the config guard's mark.
    kubectl
        .ok(
            &[
                "-n",
                "apps",
                "create",
                "configmap",
                "settings",
                "--from-literal=MODE=on",
            ],
            None,
        )
        .await;
    kubectl
        .ok(
            &["apply", "-f", "-"],
            Some(
                "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: reader, namespace: apps}\nspec:\n  selector: {matchLabels: {app: reader}}\n  template:\n    metadata: {labels: {app: reader}}\n    spec:\n      containers:\n      - name: app\n        image: nginx\n        env: [{name: MODE, valueFrom: {configMapKeyRef: {name: settings, key: MODE}}}]\n",
            ),
        )
        .await;
    eventually(
        Duration::from_secs(20),
        "the ConfigMap marked in use",
        || {
            let kubectl = kubectl.clone();
            async move {
                let cm = kubectl.get("apps", "configmap/settings").await?;
                (!guard_marks(&cm).is_empty()).then_some(())
            }
        },
    )
    .await;

    // Rotation, as the README says: delete the Secret. confgate makes a new one, serves it, and
    // registers its CA, without a restart.
    kubectl
        .ok(
            &[
                "-n",
                NAMESPACE,
                "delete",
                "secret",
                &format!("{RELEASE}-tls"),
            ],
            None,
        )
        .await;
    let rotated = eventually(Duration::from_secs(90), "a new CA is registered", || {
        let kubectl = kubectl.clone();
        let first_ca = secret_ca.clone();
        async move {
            let secret = kubectl
                .get(NAMESPACE, &format!("secret/{RELEASE}-tls"))
                .await?;
            let ca = decoded(&secret["data"]["ca.crt"])?;
            let stored = kubectl
                .get("", &format!("validatingwebhookconfiguration/{RELEASE}"))
                .await?;
            (ca != first_ca && webhook_ca(&stored) == ca).then_some(ca)
        }
    })
    .await;
    assert_eq!(host.ca(), rotated, "the new certificate is served");

    // Uninstall while confgate still runs (its Pods get SIGTERM and drain meanwhile): the
    // pre-delete hook takes the config guard's marks off first (this test plays the kubelet
    // for it: runs its command as its ServiceAccount, then reports its Pod done); then the
    // garbage collector removes what confgate created, and nothing of the chart is left.
    let hook = tokio::spawn(run_release_hook(plane, kubectl.clone()));
    helm(plane, &["uninstall", RELEASE, "--namespace", NAMESPACE]).await;
    hook.await.unwrap();
    let marked: Vec<String> = items(&kubectl, "configmaps")
        .await
        .iter()
        .filter(|cm| !guard_marks(cm).is_empty())
        .filter_map(|cm| cm["metadata"]["name"].as_str().map(str::to_owned))
        .collect();
    assert!(marked.is_empty(), "marks left after uninstall: {marked:?}");
    // Deleting the ConfigMap now is not held by anything of confgate's.
    kubectl
        .ok(
            &[
                "-n",
                "apps",
                "delete",
                "configmap",
                "settings",
                "--timeout=20s",
            ],
            None,
        )
        .await;
    kubectl
        .ok(&["-n", "apps", "delete", "deployment", "reader"], None)
        .await;
    let mut left = Vec::new();
    for _ in 0..60 {
        // Besides what was there before: the test's own namespace and workload, and what the
        // control plane makes for every new namespace (its root CA ConfigMap and default
        // ServiceAccount).
        left = before(KINDS)
            .await
            .into_iter()
            .filter(|n| !initial.contains(n))
            .filter(|n| {
                !(n.starts_with("serviceaccounts:") && n.ends_with("/default")
                    || n.starts_with("configmaps:") && n.ends_with("/kube-root-ca.crt")
                    || n == "deployments:apps/existing")
            })
            .collect();
        if left.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(
        left.is_empty(),
        "left behind after helm uninstall: {left:?}"
    );
    // confgate cannot put its webhooks back: its RBAC and its ServiceAccount are gone.
    tokio::time::sleep(Duration::from_secs(12)).await;
    for kind in [
        "mutatingwebhookconfigurations",
        "validatingwebhookconfigurations",
    ] {
        assert!(items(&kubectl, kind).await.is_empty(), "{kind} came back");
    }
    host.stop();
    // Nothing of the chart in its namespace: helm leaves the namespace it was told to create.
    assert!(
        kubectl
            .get("", &format!("namespace/{NAMESPACE}"))
            .await
            .is_some()
    );
}

/// Points every webhook of the Helm-rendered configuration `kind` at the host confgate (the
/// apiserver reaches it by URL here, not through the Service), keeping path and caBundle.
async fn point_at_host(kubectl: &Kubectl, kind: &str, url: &str) {
    let stored = kubectl
        .get("", &format!("{kind}/{RELEASE}"))
        .await
        .expect("rendered by Helm");
    let patch: Vec<Value> = stored["webhooks"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let path = w["clientConfig"]["service"]["path"].as_str().unwrap();
            serde_json::json!({"op": "replace", "path": format!("/webhooks/{i}/clientConfig"),
                "value": {"url": format!("{url}{path}"), "caBundle": w["clientConfig"]["caBundle"]}})
        })
        .collect();
    kubectl
        .ok(
            &[
                "patch",
                kind,
                RELEASE,
                "--type=json",
                "-p",
                &Value::Array(patch).to_string(),
            ],
            None,
        )
        .await;
}

pub async fn e2e_helm_chart_with_the_registration_rendered_by_helm_and_no_webhook_access(
    _shared: Cx,
) {
    let (_guard, cx) = own_plane("e2e-helm-rendered").await;
    let plane = cx.plane;
    let kubectl = cx.kubectl();
    let chart = root().join("charts/confgate");
    let chart = chart.to_str().unwrap();
    // The serving certificate is the platform's own (certificates.mode=secret): made here, for
    // the Service's names and the host address the apiserver calls.
    let certs = tempfile::tempdir().unwrap();
    let made = std::process::Command::new(env!("CARGO_BIN_EXE_confgate"))
        .args(["certs", "--service", RELEASE, "--namespace", NAMESPACE])
        .args(["--ip", "127.0.0.1", "--out-dir"])
        .arg(certs.path())
        .output()
        .unwrap();
    assert!(made.status.success());
    kubectl.ok(&["create", "namespace", NAMESPACE], None).await;
    let path = |f: &str| certs.path().join(f).display().to_string();
    kubectl
        .ok(
            &[
                "-n",
                NAMESPACE,
                "create",
                "secret",
                "generic",
                "corp-tls",
                &format!("--from-file=tls.crt={}", path("tls.crt")),
                &format!("--from-file=tls.key={}", path("tls.key")),
                &format!("--from-file=ca.crt={}", path("ca.crt")),
            ],
            None,
        )
        .await;
    let ca = std::fs::read(certs.path().join("ca.crt")).unwrap();
    let ca_base64 = base64::engine::general_purpose::STANDARD.encode(&ca);
    kubectl.ok(&["create", "namespace", "apps"], None).await;

    helm(
        plane,
        &[
            "install",
            RELEASE,
            chart,
            "--namespace",
            NAMESPACE,
            "--set",
            "webhooks.registration=helm",
            "--set",
            "certificates.mode=secret",
            "--set",
            "certificates.secretName=corp-tls",
            "--set",
            &format!("webhooks.caBundle={ca_base64}"),
        ],
    )
    .await;
    // Helm made the registration, with the CA, owned by the release; confgate may not touch it.
    for kind in [
        "mutatingwebhookconfiguration",
        "validatingwebhookconfiguration",
    ] {
        let stored = kubectl
            .get("", &format!("{kind}/{RELEASE}"))
            .await
            .expect("rendered by Helm");
        assert_eq!(
            stored["metadata"]["labels"]["app.kubernetes.io/managed-by"],
            "Helm"
        );
        assert_eq!(webhook_ca(&stored), ca, "{kind}");
        let account = format!("system:serviceaccount:{NAMESPACE}:{RELEASE}");
        for verb in ["create", "update", "patch", "delete", "get"] {
            let run = kubectl
                .run(
                    &["auth", "can-i", verb, &format!("{kind}s"), "--as", &account],
                    None,
                )
                .await;
            assert_eq!(run.stdout.trim(), "no", "{verb} {kind}s");
        }
    }
    let port = free_port();
    let url = format!("https://127.0.0.1:{port}");
    for kind in [
        "mutatingwebhookconfiguration",
        "validatingwebhookconfiguration",
    ] {
        point_at_host(&kubectl, kind, &url).await;
    }
    let mut host = HostConfgate::start(plane, &kubectl, port).await;
    // Ready, without registering anything.
    eventually(Duration::from_secs(60), "confgate ready", || {
        let log = host.log();
        async move { log.contains("ready: listening").then_some(()) }
    })
    .await;
    assert!(
        !host.log().contains("webhook registration applied"),
        "{}",
        host.log()
    );
    // In effect: the apiserver calls confgate through the registration Helm rendered.
    a_broken_deployment_is_denied(&kubectl).await;
    // Nothing it was refused: no permission it uses is missing.
    assert!(!host.log().contains("forbidden"), "{}", host.log());

    // Uninstall: Helm removes the registration with everything else.
    let hook = tokio::spawn(run_release_hook(plane, kubectl.clone()));
    helm(plane, &["uninstall", RELEASE, "--namespace", NAMESPACE]).await;
    hook.await.unwrap();
    for kind in [
        "mutatingwebhookconfigurations",
        "validatingwebhookconfigurations",
    ] {
        assert!(items(&kubectl, kind).await.is_empty(), "{kind} left");
    }
    host.stop();
}
