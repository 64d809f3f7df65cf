//! The change queue: which ConfigMaps (and watched Secrets) changed since a controller last
//! looked, fed by their watch caches ([`ChangeFeed`]) and by the Secret poll, drained by the
//! rollout controller and watched by the audit.

use super::ConfigData;
use super::cache::{Key, Observer};
use crate::workload::Source;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Which ConfigMaps (and watched Secrets) changed since the rollout controller last looked,
/// each with its keys' digests from before the first of those changes (`None`: it did not
/// exist), so the controller can name the keys that changed. Changes between two looks merge.
#[derive(Default)]
pub struct ConfigChanges {
    pending: Mutex<Changed>,
    /// When the oldest pending change was recorded.
    since: Mutex<Option<Instant>>,
    notify: tokio::sync::Notify,
    recorded: std::sync::atomic::AtomicU64,
}

/// Changed objects, by (kind, namespace, name), with the digests they had before.
pub type Changed = HashMap<(Source, String, String), Option<Arc<ConfigData>>>;

impl ConfigChanges {
    /// Waits until something changed (returns at once when a change is pending).
    pub async fn wait(&self) {
        loop {
            let notified = self.notify.notified();
            if !self.pending.lock().is_empty() {
                return;
            }
            notified.await;
        }
    }

    /// How many changes have been recorded so far (to tell when a burst has ended).
    pub fn recorded(&self) -> u64 {
        self.recorded.load(Ordering::Acquire)
    }

    /// Whether a change of this object is recorded and not yet taken.
    pub fn pending(&self, source: Source, namespace: &str, name: &str) -> bool {
        self.pending
            .lock()
            .contains_key(&(source, namespace.to_owned(), name.to_owned()))
    }

    /// Takes what changed since the last call.
    pub fn take(&self) -> Changed {
        self.take_since().0
    }

    /// Takes what changed, with when the oldest of it was recorded (for the change-to-write
    /// latency).
    pub fn take_since(&self) -> (Changed, Option<Instant>) {
        let changed = std::mem::take(&mut *self.pending.lock());
        let since = self.since.lock().take();
        (changed, since)
    }

    /// Waits until no change has been recorded for `quiet` (at most `2 * quiet`), so that the
    /// changes of one operation (`kubectl apply -f dir/`, a Helm upgrade) are acted on together,
    /// and a workload applied right after its ConfigMap is seen with its own write. The one
    /// debounce of the controllers that follow changes (rollout, audit).
    pub async fn settle(&self, quiet: Duration) {
        let started = Instant::now();
        loop {
            let seen = self.recorded();
            tokio::time::sleep(quiet).await;
            if self.recorded() == seen || started.elapsed() >= quiet * 2 {
                return;
            }
        }
    }

    /// Records a change (as a watch cache does).
    pub fn record(&self, source: Source, key: &Key, old: Option<&Arc<ConfigData>>) {
        self.pending
            .lock()
            .entry((source, key.0.clone(), key.1.clone()))
            .or_insert_with(|| old.cloned());
        self.since.lock().get_or_insert_with(Instant::now);
        self.recorded.fetch_add(1, Ordering::AcqRel);
        self.notify.notify_one();
    }
}

/// Feeds one cache's changes into [`ConfigChanges`]. The first list is not a change: the
/// controller compares every workload when it starts.
pub(super) struct ChangeFeed(pub(super) Source, pub(super) Arc<ConfigChanges>);

impl Observer<ConfigData> for ChangeFeed {
    fn changed(
        &self,
        key: &Key,
        old: Option<&Arc<ConfigData>>,
        _new: Option<&Arc<ConfigData>>,
        initial: bool,
    ) {
        if !initial {
            self.1.record(self.0, key, old);
        }
    }
}
