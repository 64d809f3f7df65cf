//! The end-to-end harness: one real control plane for the suite, a namespace per test, confgate
//! run as its own binary (`confgate serve`, registered by URL), kubectl as users type it.

pub mod confgate;
pub mod control_plane;
pub mod process;
pub mod proxy;
pub mod webhook;

pub use confgate::{Confgate, Options};
pub use control_plane::ControlPlane;

use serde_json::Value;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

/// What a test gets: the control plane, and the clients to use it.
pub struct Cx {
    /// The control plane shared by the suite.
    pub plane: &'static ControlPlane,
    /// A client with the admin kubeconfig.
    pub client: kube::Client,
}

impl Cx {
    /// A client for the shared control plane.
    pub async fn new(plane: &'static ControlPlane) -> Self {
        let client = client_for(&plane.kubeconfig).await;
        Self { plane, client }
    }

    /// `kubectl` with the admin kubeconfig.
    pub fn kubectl(&self) -> Kubectl {
        Kubectl {
            kubeconfig: self.plane.kubeconfig.clone(),
        }
    }

    /// A fresh namespace for this test (`e2e-<slug>-<n>`), labelled so it is easy to find.
    pub async fn namespace(&self, slug: &str) -> String {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let mut slug: String = slug
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .take(40)
            .collect();
        slug.make_ascii_lowercase();
        let name = format!("e2e-{}-{n}", slug.trim_matches('-'));
        self.kubectl()
            .ok(&["create", "namespace", &name], None)
            .await;
        name
    }

    /// The apiserver's minor version (26, 33, ...).
    pub fn minor(&self) -> u32 {
        self.plane.minor
    }
}

/// A kube client from a kubeconfig file.
pub async fn client_for(kubeconfig: &Path) -> kube::Client {
    let config = kube::config::Kubeconfig::read_from(kubeconfig).expect("kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(config, &Default::default())
        .await
        .expect("client config");
    kube::Client::try_from(config).expect("client")
}

/// kubectl, as a person runs it.
#[derive(Clone)]
pub struct Kubectl {
    /// The kubeconfig it uses.
    pub kubeconfig: PathBuf,
}

/// What a kubectl call printed.
#[derive(Debug)]
pub struct Run {
    /// Exit status was 0.
    pub success: bool,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Kubectl {
    /// Runs kubectl with `args`, feeding `stdin` when given.
    pub async fn run(&self, args: &[&str], stdin: Option<&str>) -> Run {
        let mut child = tokio::process::Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("kubectl on PATH");
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(text.as_bytes())
                .await
                .expect("kubectl stdin");
        }
        let out = child.wait_with_output().await.expect("kubectl");
        Run {
            success: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Runs kubectl and returns its output; panics with its error when it fails.
    pub async fn ok(&self, args: &[&str], stdin: Option<&str>) -> String {
        let run = self.run(args, stdin).await;
        assert!(
            run.success,
            "kubectl {} failed:\n{}{}",
            args.join(" "),
            run.stdout,
            run.stderr
        );
        run.stdout
    }

    /// Runs kubectl expecting it to fail; returns its error output.
    pub async fn fails(&self, args: &[&str], stdin: Option<&str>) -> String {
        let run = self.run(args, stdin).await;
        assert!(
            !run.success,
            "kubectl {} succeeded but should have failed:\n{}",
            args.join(" "),
            run.stdout
        );
        run.stderr
    }

    /// `kubectl get -o json` of one object, or `None` when it does not exist.
    pub async fn get(&self, namespace: &str, what: &str) -> Option<Value> {
        let run = self
            .run(&["-n", namespace, "get", what, "-o", "json"], None)
            .await;
        if run.success {
            serde_json::from_str(&run.stdout).ok()
        } else {
            assert!(
                run.stderr.contains("NotFound") || run.stderr.contains("not found"),
                "kubectl get {what}: {}",
                run.stderr
            );
            None
        }
    }
}

/// Polls `probe` every 200 ms until it returns `Some`, or panics after `limit` with `what`.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(start.elapsed() < limit, "timed out after {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}
