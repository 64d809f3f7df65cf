//! Hot reload: the policy directory and the certificate files are watched (also when they are
//! Kubernetes-mounted ConfigMaps/Secrets, which swap a `..data` symlink inside the directory),
//! and SIGHUP forces a reload. A bad policy set is logged and counted; the last good one stays.
//! So does a set that would silently open the gate: no policies at all, or one fewer policy that
//! can deny (what a truncated or half-written file looks like), unless `--allow-policy-removal`.
//! Changes are debounced (notify-debouncer-full) so a file being written is read once it is
//! quiet.

use super::AppState;
use crate::policy::{Registry, Replaced, load_dir};
use axum_server::tls_rustls::RustlsConfig;
use notify::{EventKind, RecursiveMode};
use notify_debouncer_full::{DebounceEventResult, Debouncer, RecommendedCache, new_debouncer};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// A file must be quiet this long before it is read.
const DEBOUNCE: Duration = Duration::from_millis(500);

/// The debouncing watcher; dropping it stops watching.
pub(super) type FileWatcher = Debouncer<notify::RecommendedWatcher, RecommendedCache>;

pub(super) struct Reloader {
    pub state: Arc<AppState>,
    pub rustls: RustlsConfig,
    pub registry: Registry,
    pub policies_dir: PathBuf,
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    pub allow_policy_removal: bool,
}

/// Starts watching; the returned watcher must be kept alive.
pub(super) fn spawn(reloader: Reloader) -> Option<FileWatcher> {
    let (tx, rx) = mpsc::unbounded_channel::<()>();
    let events = tx.clone();
    let watcher = new_debouncer(DEBOUNCE, None, move |result: DebounceEventResult| {
        let relevant = result.is_ok_and(|events| {
            events.iter().any(|e| {
                matches!(
                    e.kind,
                    EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_)
                )
            })
        });
        if relevant {
            let _ = events.send(());
        }
    });
    let watcher = match watcher {
        Ok(mut watcher) => {
            for dir in watched_dirs(&reloader) {
                if let Err(error) = watcher.watch(&dir, RecursiveMode::NonRecursive) {
                    tracing::warn!(dir = %dir.display(), %error, "cannot watch for changes; SIGHUP still reloads");
                }
            }
            Some(watcher)
        }
        Err(error) => {
            tracing::warn!(%error, "file watching unavailable; SIGHUP still reloads");
            None
        }
    };
    tokio::spawn(forward_sighup(tx));
    tokio::spawn(reloader.run(rx));
    watcher
}

fn watched_dirs(r: &Reloader) -> Vec<PathBuf> {
    let mut dirs = vec![r.policies_dir.clone()];
    for file in [&r.tls_cert, &r.tls_key] {
        let dir = file
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_owned();
        if !dirs.contains(&dir) {
            dirs.push(dir);
        }
    }
    dirs
}

async fn forward_sighup(tx: mpsc::UnboundedSender<()>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut hup) = signal(SignalKind::hangup()) {
            while hup.recv().await.is_some() {
                tracing::info!("SIGHUP: reloading policies and certificates");
                if tx.send(()).is_err() {
                    return;
                }
            }
        }
    }
    #[cfg(not(unix))]
    let _ = tx;
}

impl Reloader {
    async fn run(self, mut rx: mpsc::UnboundedReceiver<()>) {
        let mut tls_fingerprint = self.tls_fingerprint();
        while rx.recv().await.is_some() {
            while rx.try_recv().is_ok() {}
            self.reload_policies().await;
            let now = self.tls_fingerprint();
            if now.is_some() && now != tls_fingerprint && self.reload_tls().await {
                tls_fingerprint = now;
            }
        }
    }

    async fn reload_policies(&self) {
        let dir = self.policies_dir.clone();
        let registry = self.registry.clone();
        let loaded = tokio::task::spawn_blocking(move || load_dir(&dir, &registry)).await;
        let admission = &self.state.reviews;
        match loaded {
            Ok(Ok(set)) => match admission.policies.replace(set, self.allow_policy_removal) {
                Replaced::Unchanged => {}
                Replaced::Refused(reason) => {
                    admission.metrics.reload("policies", false);
                    tracing::error!(
                        %reason,
                        "policy reload refused: {reason}; the previous policies stay in force (a truncated or half-written file looks like this; to remove policies that deny, pass --allow-policy-removal or restart)"
                    );
                }
                Replaced::Replaced(names) => {
                    admission.metrics.set_policies_loaded(names.len());
                    admission.metrics.reload("policies", true);
                    tracing::info!(policies = %names.join(","), "policies reloaded");
                }
            },
            Ok(Err(error)) => {
                admission.metrics.reload("policies", false);
                tracing::error!(error = %error, "policy reload rejected; the previous policies stay in force");
            }
            Err(error) => {
                admission.metrics.reload("policies", false);
                tracing::error!(%error, "policy reload failed");
            }
        }
    }

    async fn reload_tls(&self) -> bool {
        let metrics = &self.state.reviews.metrics;
        match super::tls::server_config(&self.tls_cert, &self.tls_key) {
            Ok(config) => {
                self.rustls.reload_from_config(Arc::new(config));
                if let Some(expiry) = std::fs::read(&self.tls_cert)
                    .ok()
                    .and_then(|pem| crate::certs::not_after_unix(&pem))
                {
                    metrics.set_cert_expiry(expiry);
                }
                metrics.reload("tls", true);
                tracing::info!(cert = %self.tls_cert.display(), "TLS certificate reloaded");
                true
            }
            Err(error) => {
                metrics.reload("tls", false);
                tracing::error!(%error, "TLS reload rejected; the previous certificate stays in use");
                false
            }
        }
    }

    fn tls_fingerprint(&self) -> Option<Vec<u8>> {
        let mut hasher = Sha256::new();
        hasher.update(std::fs::read(&self.tls_cert).ok()?);
        hasher.update(std::fs::read(&self.tls_key).ok()?);
        Some(hasher.finalize().to_vec())
    }
}
