//! A real control plane on loopback: etcd, kube-apiserver and kube-controller-manager from the
//! binaries named by `ETCD`, `KUBE_APISERVER` and `KUBE_CONTROLLER_MANAGER`, on free ports, with
//! the admission plugins a production cluster runs. Started once for the whole suite and stopped
//! by PID after it; PIDs are also written down, so a run that was killed outright has its
//! processes stopped by the next run.

use super::process::{Daemon, free_port, reap_stale};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The admission plugins (the ServiceAccount plugin is off: there are no token controllers for
/// Pods without a kubelet, and Pods need no token here).
pub const ADMISSION_PLUGINS: &str = "NamespaceLifecycle,LimitRanger,MutatingAdmissionWebhook,ValidatingAdmissionWebhook,ResourceQuota";

/// Where the binaries are, from the environment.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// etcd.
    pub etcd: PathBuf,
    /// kube-apiserver.
    pub apiserver: PathBuf,
    /// kube-controller-manager.
    pub controller_manager: PathBuf,
}

impl Binaries {
    /// The three binaries, or why the suite cannot run.
    pub fn from_env() -> Result<Self, String> {
        let get = |var: &str| -> Result<PathBuf, String> {
            let value = std::env::var_os(var)
                .filter(|v| !v.is_empty())
                .ok_or_else(|| format!("{var} is not set"))?;
            let path = PathBuf::from(value);
            if path.is_file() {
                Ok(path)
            } else {
                Err(format!("{var}={} is not a file", path.display()))
            }
        };
        let found = [
            get("ETCD"),
            get("KUBE_APISERVER"),
            get("KUBE_CONTROLLER_MANAGER"),
        ];
        let missing: Vec<String> = found
            .iter()
            .filter_map(|r| r.as_ref().err().cloned())
            .collect();
        match found {
            [Ok(etcd), Ok(apiserver), Ok(controller_manager)] => Ok(Self {
                etcd,
                apiserver,
                controller_manager,
            }),
            _ => Err(missing.join("; ")),
        }
    }
}

/// A running control plane.
pub struct ControlPlane {
    /// Its working directory (logs, PKI, kubeconfig).
    pub dir: PathBuf,
    /// An admin kubeconfig (token auth, TLS not verified: the apiserver's certificate is
    /// self-signed for this run).
    pub kubeconfig: PathBuf,
    /// The apiserver's address.
    pub server: String,
    /// `v1.33.3`.
    pub version: String,
    /// The minor version (33).
    pub minor: u32,
    /// Where the apiserver exports its traces (OTLP/gRPC; every request is sampled), and where
    /// a confgate of the tracing tests exports its own (OTLP/HTTP).
    pub traces: crate::otlp::Receiver,
    daemons: Mutex<Vec<Daemon>>,
}

/// Pid files of the processes this suite starts, so a later run can stop leftovers.
fn pid_dir(root: &Path) -> PathBuf {
    root.join("pids")
}

impl ControlPlane {
    /// Starts etcd, then the apiserver (waiting for `/readyz`), then the controller-manager.
    pub fn start(binaries: &Binaries, root: &Path) -> Result<Self, String> {
        reap_stale(&pid_dir(root));
        let dir = root.join(format!("cp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("pki")).map_err(|e| e.to_string())?;
        std::fs::create_dir_all(pid_dir(root)).map_err(|e| e.to_string())?;
        write_pki(&dir.join("pki"))?;
        let etcd_port = free_port();
        let peer_port = free_port();
        let kas_port = free_port();
        let mut daemons = Vec::new();
        daemons.push(Daemon::spawn(
            "etcd",
            Command::new(&binaries.etcd).args([
                "--name=e2e".to_owned(),
                format!("--data-dir={}", dir.join("etcd").display()),
                format!("--listen-client-urls=http://127.0.0.1:{etcd_port}"),
                format!("--advertise-client-urls=http://127.0.0.1:{etcd_port}"),
                format!("--listen-peer-urls=http://127.0.0.1:{peer_port}"),
                format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}"),
                format!("--initial-cluster=e2e=http://127.0.0.1:{peer_port}"),
            ]),
            &dir,
            &pid_dir(root),
        )?);
        let pki = dir.join("pki");
        let mut kas = Command::new(&binaries.apiserver);
        kas.args([
            format!("--etcd-servers=http://127.0.0.1:{etcd_port}"),
            "--bind-address=127.0.0.1".into(),
            "--advertise-address=127.0.0.1".into(),
            format!("--secure-port={kas_port}"),
            format!("--cert-dir={}", pki.display()),
            format!("--token-auth-file={}", pki.join("tokens.csv").display()),
            "--authorization-mode=RBAC".into(),
            "--service-cluster-ip-range=10.96.0.0/24".into(),
            format!(
                "--service-account-key-file={}",
                pki.join("sa.pub").display()
            ),
            format!(
                "--service-account-signing-key-file={}",
                pki.join("sa.key").display()
            ),
            "--service-account-issuer=https://kubernetes.default.svc".into(),
            format!("--enable-admission-plugins={ADMISSION_PLUGINS}"),
            "--disable-admission-plugins=ServiceAccount".into(),
        ]);
        if has_flag(&binaries.apiserver, "--insecure-port") {
            kas.arg("--insecure-port=0");
        }
        let mut gates = Vec::new();
        // Pod-level resources (KEP-2837) are alpha in 1.32-1.33: turned on, so the suite can
        // compare confgate with the built-in LimitRanger on them. 1.26 has no such field.
        if has_flag(&binaries.apiserver, "PodLevelResources=true|false (ALPHA") {
            gates.push("PodLevelResources=true");
        }
        // Apiserver tracing (beta and on from 1.27, alpha before): every request is traced,
        // and the trace context goes along to the webhooks it calls (`traceparent`).
        let traces = crate::otlp::Receiver::in_background();
        let tracing_api = if has_flag(&binaries.apiserver, "APIServerTracing=true|false (ALPHA") {
            gates.push("APIServerTracing=true");
            "v1alpha1"
        } else {
            "v1beta1"
        };
        std::fs::write(
            dir.join("tracing.yaml"),
            format!(
                "apiVersion: apiserver.config.k8s.io/{tracing_api}\nkind: TracingConfiguration\nendpoint: {}\nsamplingRatePerMillion: 1000000\n",
                traces.address
            ),
        )
        .map_err(|e| e.to_string())?;
        kas.arg(format!(
            "--tracing-config-file={}",
            dir.join("tracing.yaml").display()
        ));
        if !gates.is_empty() {
            kas.arg(format!("--feature-gates={}", gates.join(",")));
        }
        if let Ok(extra) = std::env::var("E2E_APISERVER_FLAGS") {
            kas.args(extra.split_whitespace());
        }
        daemons.push(Daemon::spawn("apiserver", &mut kas, &dir, &pid_dir(root))?);
        let server = format!("https://127.0.0.1:{kas_port}");
        let kubeconfig = dir.join("kubeconfig");
        write_kubeconfig(&kubeconfig, &server, "admin-token")?;
        let mut plane = Self {
            dir: dir.clone(),
            kubeconfig,
            server,
            version: String::new(),
            minor: 0,
            traces,
            daemons: Mutex::new(daemons),
        };
        plane.wait_ready(Duration::from_secs(90))?;
        let mut kcm = Command::new(&binaries.controller_manager);
        kcm.args([
            format!("--kubeconfig={}", plane.kubeconfig.display()),
            "--leader-elect=false".into(),
            "--bind-address=127.0.0.1".into(),
            "--secure-port=0".into(),
            "--use-service-account-credentials=false".into(),
            format!(
                "--service-account-private-key-file={}",
                pki.join("sa.key").display()
            ),
            "--controllers=*,-nodeipam,-nodelifecycle,-attachdetach,-persistentvolume-binder"
                .into(),
        ]);
        if has_flag(&binaries.controller_manager, "--port int") {
            kcm.arg("--port=0");
        }
        plane.lock().push(Daemon::spawn(
            "controller-manager",
            &mut kcm,
            &dir,
            &pid_dir(root),
        )?);
        let version = plane.kubectl_raw("/version")?;
        let version: serde_json::Value =
            serde_json::from_str(&version).map_err(|e| format!("/version: {e}"))?;
        plane.version = version["gitVersion"].as_str().unwrap_or("").to_owned();
        plane.minor = version["minor"]
            .as_str()
            .unwrap_or("0")
            .trim_end_matches('+')
            .parse()
            .unwrap_or(0);
        Ok(plane)
    }

    /// Polls `/readyz` until it answers `ok`; fails early when the apiserver exits.
    fn wait_ready(&self, limit: Duration) -> Result<(), String> {
        let start = Instant::now();
        loop {
            if self
                .kubectl_raw("/readyz")
                .is_ok_and(|body| body.trim() == "ok")
            {
                return Ok(());
            }
            for daemon in self.lock().iter_mut() {
                if let Some(status) = daemon.exited() {
                    return Err(format!(
                        "{} exited ({status}) before the apiserver was ready:\n{}",
                        daemon.name,
                        daemon.log_tail(20)
                    ));
                }
            }
            if start.elapsed() > limit {
                return Err(format!(
                    "kube-apiserver not ready after {limit:?}:\n{}",
                    self.log_tail("apiserver", 20)
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn kubectl_raw(&self, path: &str) -> Result<String, String> {
        let out = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(["get", "--raw", path])
            .output()
            .map_err(|e| format!("kubectl: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Where the suite records the PIDs of the processes it starts.
    pub fn pid_dir(&self) -> PathBuf {
        pid_dir(self.dir.parent().unwrap_or(&self.dir))
    }

    /// The last lines of a component's log (`apiserver`, `etcd`, `controller-manager`).
    pub fn log_tail(&self, name: &str, lines: usize) -> String {
        self.lock()
            .iter()
            .find(|d| d.name == name)
            .map(|d| d.log_tail(lines))
            .unwrap_or_default()
    }

    /// Stops everything, the apiserver and controller-manager before etcd (killed together, the
    /// apiserver can hang in shutdown), and removes the working directory unless `E2E_KEEP`.
    pub fn stop(&self) {
        let daemons = std::mem::take(&mut *self.lock());
        for daemon in daemons.into_iter().rev() {
            daemon.stop(Duration::from_secs(10));
        }
        if std::env::var_os("E2E_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

impl ControlPlane {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Daemon>> {
        self.daemons.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.stop();
    }
}

/// True when `binary --help` mentions `flag` (flags that were removed across versions).
fn has_flag(binary: &Path, flag: &str) -> bool {
    Command::new(binary)
        .arg("--help")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout).contains(flag)
                || String::from_utf8_lossy(&o.stderr).contains(flag)
        })
        .unwrap_or(false)
}

/// The service-account signing key (ECDSA P-256, which the apiserver accepts) and the admin
/// token.
fn write_pki(pki: &Path) -> Result<(), String> {
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    std::fs::write(pki.join("sa.key"), key.serialize_pem()).map_err(|e| e.to_string())?;
    std::fs::write(pki.join("sa.pub"), key.public_key_pem()).map_err(|e| e.to_string())?;
    std::fs::write(
        pki.join("tokens.csv"),
        "admin-token,admin,1,system:masters\n",
    )
    .map_err(|e| e.to_string())
}

/// A kubeconfig for `server` with a bearer token.
pub fn write_kubeconfig(path: &Path, server: &str, token: &str) -> Result<(), String> {
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: e2e\n  cluster: {{server: \"{server}\", insecure-skip-tls-verify: true}}\nusers:\n- name: user\n  user: {{token: \"{token}\"}}\ncontexts:\n- name: e2e\n  context: {{cluster: e2e, user: user}}\ncurrent-context: e2e\n"
    );
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
}
