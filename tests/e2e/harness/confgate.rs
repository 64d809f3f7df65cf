//! confgate as its own process: `confgate serve` on a free loopback port with its development
//! certificates, the registration from `confgate webhooks --url` applied with kubectl, and its
//! JSON log read back to see which reviews it answered.
//!
//! Tests run side by side on one control plane, so each confgate's policies are scoped to the
//! test's namespace (`spec.match.namespaces`), which `confgate webhooks` turns into the
//! webhooks' namespaceSelector: a test only ever sees its own reviews.

use super::process::{Daemon, free_port};
use super::{Cx, Kubectl, root};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// How to run one confgate.
pub struct Options {
    namespace: String,
    /// More namespaces its policies match (its own registration is still the first's).
    also: Vec<String>,
    policies: Vec<(String, String)>,
    args: Vec<String>,
    env: Vec<(String, String)>,
    kubeconfig: Option<PathBuf>,
    register: bool,
    wait_ready: bool,
    port: Option<u16>,
}

impl Options {
    /// The shipped `policies/`, scoped to `namespace`, registered once ready.
    pub fn shipped(namespace: &str) -> Self {
        let mut policies = Vec::new();
        for entry in std::fs::read_dir(root().join("policies")).expect("policies/") {
            let path = entry.expect("entry").path();
            if path.extension().is_some_and(|e| e == "yaml") {
                let name = path.file_name().unwrap().to_string_lossy().into_owned();
                policies.push((name, std::fs::read_to_string(&path).expect("policy file")));
            }
        }
        policies.sort();
        Self {
            namespace: namespace.to_owned(),
            also: Vec::new(),
            policies,
            args: Vec::new(),
            env: Vec::new(),
            kubeconfig: None,
            register: true,
            wait_ready: true,
            port: None,
        }
    }

    /// Its policies match `namespace` too (the audit judges its workloads).
    pub fn also_namespace(mut self, namespace: &str) -> Self {
        self.also.push(namespace.to_owned());
        self
    }

    /// Only these policies (YAML), scoped to `namespace`.
    pub fn with_policies(namespace: &str, yaml: &str) -> Self {
        Self {
            policies: vec![("policies.yaml".into(), yaml.to_owned())],
            ..Self::shipped(namespace)
        }
    }

    /// Without the shipped policy file `file` (say, to delete a ConfigMap a workload reads, as
    /// in a cluster without the config guard).
    pub fn without(mut self, file: &str) -> Self {
        let before = self.policies.len();
        self.policies.retain(|(name, _)| name != file);
        assert_eq!(self.policies.len() + 1, before, "no policy file {file}");
        self
    }

    /// An extra `confgate serve` argument.
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// An environment variable of its process.
    pub fn env(mut self, name: &str, value: impl Into<String>) -> Self {
        self.env.push((name.to_owned(), value.into()));
        self
    }

    /// Listen on this port (when its URL must be known before it starts).
    pub fn port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    /// Talk to the cluster with this kubeconfig instead of the admin one.
    pub fn kubeconfig(mut self, path: &Path) -> Self {
        self.kubeconfig = Some(path.to_owned());
        self
    }

    /// Do not apply the registration (the test registers, or `--manage-webhooks` does).
    pub fn unregistered(mut self) -> Self {
        self.register = false;
        self
    }

    /// Return as soon as it listens, without waiting for `/readyz`.
    pub fn no_wait(mut self) -> Self {
        self.wait_ready = false;
        self.register = false;
        self
    }
}

/// A running `confgate serve`.
pub struct Confgate {
    /// The address it listens on.
    pub port: u16,
    /// Its working directory: `policies/`, `certs/` (the CA is `certs/ca.crt`), its log.
    pub dir: tempfile::TempDir,
    /// The name of its webhook configurations, once registered.
    pub registration: Option<String>,
    /// The namespace its policies are scoped to.
    pub namespace: String,
    daemon: Option<Daemon>,
    kubectl: Kubectl,
    http: std::sync::OnceLock<reqwest::Client>,
    command: Vec<String>,
    env: Vec<(String, String)>,
    kubeconfig: PathBuf,
    minor: u32,
}

impl Confgate {
    /// Starts confgate with `options` and (unless told otherwise) waits until `/readyz` is 200
    /// and its registration is in effect.
    pub async fn start(cx: &Cx, options: Options) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let policies = dir.path().join("policies");
        std::fs::create_dir_all(&policies).expect("policies dir");
        for (name, text) in &options.policies {
            let mut namespaces = vec![options.namespace.as_str()];
            namespaces.extend(options.also.iter().map(String::as_str));
            std::fs::write(policies.join(name), scope(text, &namespaces)).expect("policy file");
        }
        let port = options.port.unwrap_or_else(free_port);
        let certs = dir.path().join("certs");
        let mut command: Vec<String> = vec![
            "serve".into(),
            format!("--listen=127.0.0.1:{port}"),
            format!("--policies={}", policies.display()),
            format!("--tls-cert={}", certs.join("tls.crt").display()),
            format!("--tls-key={}", certs.join("tls.key").display()),
            "--cluster=required".into(),
            "--log-format=json".into(),
            "--shutdown-delay-seconds=0".into(),
            "--drain-seconds=5".into(),
            // Tests run side by side: each confgate elects its rollout writer in its own
            // namespace.
            format!("--lease-namespace={}", options.namespace),
        ];
        command.extend(options.args.iter().cloned());
        let kubeconfig = options
            .kubeconfig
            .clone()
            .unwrap_or_else(|| cx.plane.kubeconfig.clone());
        let mut confgate = Self {
            port,
            dir,
            registration: None,
            namespace: options.namespace.clone(),
            daemon: None,
            kubectl: cx.kubectl(),
            http: std::sync::OnceLock::new(),
            command,
            env: options.env.clone(),
            kubeconfig,
            minor: cx.minor(),
        };
        confgate.spawn(cx);
        if options.wait_ready {
            confgate.wait_ready().await;
        }
        if options.register {
            confgate.register().await;
        }
        confgate
    }

    fn spawn(&mut self, cx: &Cx) {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_confgate"));
        command
            .args(&self.command)
            .env("KUBECONFIG", &self.kubeconfig)
            .env(
                "RUST_LOG",
                std::env::var("E2E_CONFGATE_LOG")
                    .unwrap_or_else(|_| "info,kube=warn,hyper=warn,rustls=warn".into()),
            )
            .env_remove("KUBERNETES_SERVICE_HOST")
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        self.daemon = Some(
            Daemon::spawn(
                "confgate",
                &mut command,
                self.dir.path(),
                &cx.plane.pid_dir(),
            )
            .expect("confgate starts"),
        );
    }

    /// Stops the process (SIGTERM) if it runs, and starts it again with the same arguments,
    /// certificates and port; waits until it is ready.
    pub async fn restart(&mut self, cx: &Cx) {
        self.stop();
        self.spawn(cx);
        self.wait_ready().await;
    }

    /// Its process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.daemon.as_ref().map(Daemon::pid)
    }

    /// Stops the process with SIGTERM and returns how it exited.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        self.daemon.take()?.stop(Duration::from_secs(10))
    }

    /// `https://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// The CA that signed its serving certificate.
    pub fn ca_path(&self) -> PathBuf {
        self.dir.path().join("certs/ca.crt")
    }

    /// The policy directory it watches.
    pub fn policies_dir(&self) -> PathBuf {
        self.dir.path().join("policies")
    }

    /// An HTTPS client that trusts its CA (once the certificates exist).
    fn http(&self) -> Option<reqwest::Client> {
        if self.http.get().is_none() {
            let ca = std::fs::read(self.ca_path()).ok()?;
            let _ = self.http.set(https_client(&ca));
        }
        self.http.get().cloned()
    }

    /// `GET path`: status and body, or `None` when it cannot be reached.
    pub async fn get(&self, path: &str) -> Option<(u16, String)> {
        let http = self.http()?;
        let response = http
            .get(format!("{}{path}", self.url()))
            .send()
            .await
            .ok()?;
        let status = response.status().as_u16();
        Some((status, response.text().await.unwrap_or_default()))
    }

    /// Waits until `/readyz` answers 200; panics with the log when the process exits first.
    pub async fn wait_ready(&mut self) {
        let mut last = String::new();
        for _ in 0..300 {
            if let Some(status) = self.daemon.as_mut().and_then(Daemon::exited) {
                panic!("confgate exited ({status}):\n{}", self.log_tail(30));
            }
            match self.get("/readyz").await {
                Some((200, _)) => return,
                Some((_, body)) => last = body,
                None => {}
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!(
            "confgate not ready after 60 s (last /readyz: {last}):\n{}",
            self.log_tail(30)
        );
    }

    /// The value of one sample in `/metrics` (`name{labels}` exactly as exported), 0 if absent.
    pub async fn metric(&self, sample: &str) -> f64 {
        let (_, text) = self.get("/metrics").await.expect("/metrics");
        text.lines()
            .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
    }

    /// Waits (up to 10 s) until metric `sample` is `value`: a write's effect (a new ReplicaSet)
    /// can be seen before confgate has counted the write. Returns what it last read.
    pub async fn metric_reaches(&self, sample: &str, value: f64) -> f64 {
        let mut last = self.metric(sample).await;
        for _ in 0..50 {
            if last == value {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            last = self.metric(sample).await;
        }
        last
    }

    /// Generates the registration with `confgate webhooks --url` and applies it with kubectl,
    /// then waits until the apiserver calls it (a server-side dry-run of a probe Deployment).
    pub async fn register(&mut self) {
        let name = format!("e2e-{}", self.namespace);
        let yaml = self.webhooks_yaml(&name);
        self.kubectl.ok(&["apply", "-f", "-"], Some(&yaml)).await;
        self.registration = Some(name);
        self.wait_called().await;
    }

    /// What `confgate webhooks` prints for this server.
    pub fn webhooks_yaml(&self, name: &str) -> String {
        self.webhooks_yaml_with(name, &[])
    }

    /// What `confgate webhooks ... EXTRA` prints for this server.
    pub fn webhooks_yaml_with(&self, name: &str, extra: &[&str]) -> String {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_confgate"))
            .args(["webhooks", "--policies"])
            .arg(self.policies_dir())
            .arg("--ca-bundle")
            .arg(self.ca_path())
            .args(["--url", &self.url(), "--name", name])
            .arg(format!("--kubernetes-version=1.{}", self.minor))
            .args(extra)
            .output()
            .expect("confgate webhooks");
        assert!(
            out.status.success(),
            "confgate webhooks: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8")
    }

    /// Waits until a server-side dry-run of a probe Deployment and Pod in its namespace reaches
    /// it.
    pub async fn wait_called(&self) {
        for attempt in 0..150 {
            let name = format!("probe-{attempt}");
            let pod_spec = json!({"containers": [{"name": "c", "image": "busybox"}]});
            let manifest = json!({"apiVersion": "v1", "kind": "List", "items": [
                {"apiVersion": "apps/v1", "kind": "Deployment",
                 "metadata": {"name": name, "namespace": self.namespace},
                 "spec": {"selector": {"matchLabels": {"app": "probe"}},
                          "template": {"metadata": {"labels": {"app": "probe"}}, "spec": pod_spec}}},
                {"apiVersion": "v1", "kind": "Pod",
                 "metadata": {"name": name, "namespace": self.namespace}, "spec": pod_spec}
            ]})
            .to_string();
            let _ = self
                .kubectl
                .run(&["create", "--dry-run=server", "-f", "-"], Some(&manifest))
                .await;
            if !self
                .reviews_of(&format!("{}/{name}", self.namespace))
                .is_empty()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!(
            "the registration did not take effect within 30 s:\n{}",
            self.log_tail(20)
        );
    }

    /// Every review it has logged so far (`"message": "review"` lines), oldest first.
    pub fn reviews(&self) -> Vec<Value> {
        let log = self.dir.path().join("confgate.log");
        std::fs::read_to_string(log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["message"] == "review")
            .collect()
    }

    /// Reviews of `namespace/name` (as the log names objects).
    pub fn reviews_of(&self, object: &str) -> Vec<Value> {
        self.reviews()
            .into_iter()
            .filter(|r| r["object"] == object)
            .collect()
    }

    /// The last lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text =
            std::fs::read_to_string(self.dir.path().join("confgate.log")).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Confgate {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- confgate log ({}), last lines:\n{}",
                self.namespace,
                self.log_tail(40)
            );
        }
        // The registration goes first, so the apiserver never calls a confgate that is gone.
        if let Some(name) = self.registration.take() {
            let _ = std::process::Command::new("kubectl")
                .arg("--kubeconfig")
                .arg(&self.kubectl.kubeconfig)
                .args([
                    "delete",
                    "mutatingwebhookconfiguration,validatingwebhookconfiguration",
                    &name,
                    "--ignore-not-found",
                    "--wait=false",
                ])
                .output();
        }
        self.stop();
    }
}

/// Every policy document in `text`, with `spec.match.namespaces: namespaces`.
fn scope(text: &str, namespaces: &[&str]) -> String {
    let docs = confgate::yaml::documents(text).expect("policy YAML");
    docs.into_iter()
        .map(|mut doc| {
            doc["spec"]["match"]["namespaces"] = json!(namespaces);
            doc.to_string()
        })
        .collect::<Vec<_>>()
        .join("\n---\n")
}

/// An HTTPS client that trusts only `ca_pem`.
pub fn https_client(ca_pem: &[u8]) -> reqwest::Client {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut &ca_pem[..]).flatten() {
        let _ = roots.add(cert);
    }
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    reqwest::Client::builder()
        .use_preconfigured_tls(config)
        .timeout(Duration::from_secs(10))
        .build()
        .expect("https client")
}
