//! Secret rotation without watching Secrets: with `--secrets get` (the default) confgate never
//! lists or watches Secrets, so nothing would tell the rollout controller that a Secret a
//! workload reads was rotated. The leading replica reads the Secrets that workloads reference,
//! by name, one pass every `period` (paced at most `per_second` reads a second, never a list),
//! keeps each one's [`fingerprint`](ConfigData::fingerprint) (key names and value digests,
//! never a value), and records a change as the Secret watch would: the controller then rolls
//! exactly the workloads that read what changed.
//!
//! The bound: a rotated Secret rolls its readers within one `period` (45 s) plus the
//! controller's coalescing, as long as one pass fits in the period (`period × per_second`
//! Secrets: 2,250 at 50 reads a second); more referenced Secrets make the pass longer.

use crate::cluster::ConfigData;
use crate::cluster::changes::ConfigChanges;
use crate::cluster::workloads::Index;
use crate::workload::Source;
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::Api;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often each referenced Secret is read by default (`--secret-poll-seconds`).
pub const PERIOD: Duration = Duration::from_secs(45);
/// The most Secret reads a second.
pub const PER_SECOND: u32 = 50;
/// How long one read may take before the pass moves on (it is read again next pass).
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// What one read of a Secret found: its fingerprint and digests, or that it does not exist.
type Seen = Option<Arc<ConfigData>>;

/// What the pass found for one Secret, given what the previous pass saw: `Some(before)` when it
/// changed (the digests it had before, `None`: it did not exist), `None` when it did not or
/// when it was not seen before (a new reader's own write stamped it).
pub fn changed(previous: Option<&Seen>, now: &Seen) -> Option<Seen> {
    let previous = previous?;
    let fingerprint = |s: &Seen| s.as_ref().map(|d| d.fingerprint());
    (fingerprint(previous) != fingerprint(now)).then(|| previous.clone())
}

/// Reads the referenced Secrets every `period` while this replica leads, and records their
/// changes into `changes`.
pub async fn run(
    client: Client,
    index: Arc<Index>,
    changes: Arc<ConfigChanges>,
    leadership: crate::controllers::lease::Leader,
    period: Duration,
) {
    let mut leader = leadership.watch();
    let mut seen: HashMap<(String, String), Seen> = HashMap::new();
    loop {
        if !*leader.borrow_and_update() {
            // What changed while another replica led is found by its full comparison when
            // this one takes over; what this one saw before is stale.
            seen.clear();
            if leader.changed().await.is_err() {
                return;
            }
            continue;
        }
        let started = Instant::now();
        let wanted: BTreeSet<(String, String)> = index
            .all()
            .iter()
            .flat_map(|w| {
                w.objects
                    .iter()
                    .filter(|(source, _)| *source == Source::Secret)
                    .map(|(_, name)| (w.namespace.clone(), name.to_string()))
            })
            .collect();
        seen.retain(|k, _| wanted.contains(k));
        let gap = pace(wanted.len(), period);
        let mut changed_now = 0usize;
        // Each read has its slot in the pass: a slow read (a loaded apiserver) shortens the
        // pause before the next one, so a pass still takes about one period.
        let mut slot = tokio::time::Instant::now();
        for (namespace, name) in &wanted {
            tokio::time::sleep_until(slot).await;
            slot += gap;
            if !leadership.holds() {
                break;
            }
            let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
            let read = tokio::time::timeout(READ_TIMEOUT, api.get_opt(name)).await;
            let now: Seen = match read {
                Ok(Ok(secret)) => secret.map(|s| Arc::new(ConfigData::from_secret(&s))),
                Ok(Err(error)) => {
                    tracing::debug!(%error, %namespace, %name, "cannot read a referenced Secret; next pass");
                    continue;
                }
                Err(_) => {
                    tracing::debug!(%namespace, %name, "reading a referenced Secret timed out; next pass");
                    continue;
                }
            };
            let key = (namespace.clone(), name.clone());
            if let Some(before) = changed(seen.get(&key), &now) {
                changes.record(Source::Secret, &key, before.as_ref());
                changed_now += 1;
            }
            seen.insert(key, now);
        }
        tracing::debug!(
            secrets = wanted.len(),
            changed = changed_now,
            took_ms = started.elapsed().as_millis() as u64,
            "referenced Secrets read"
        );
        let rest = period.saturating_sub(started.elapsed());
        tokio::select! {
            () = tokio::time::sleep(rest) => {}
            result = leader.changed() => {
                if result.is_err() {
                    return;
                }
            }
        }
    }
}

/// The pause after each read so that `count` reads spread over `period`, never more than
/// [`PER_SECOND`] a second.
pub fn pace(count: usize, period: Duration) -> Duration {
    let spread = period / u32::try_from(count.max(1)).unwrap_or(u32::MAX);
    spread.max(Duration::from_secs(1) / PER_SECOND)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(value: &[u8]) -> Seen {
        Some(Arc::new(ConfigData::from_values([("password", value)])))
    }

    #[test]
    fn a_rotation_a_deletion_and_a_creation_are_changes_a_first_sight_is_not() {
        // (previous pass, this pass) -> a change, with what it had before
        assert_eq!(changed(None, &data(b"a")), None, "first sight");
        assert_eq!(changed(Some(&data(b"a")), &data(b"a")), None);
        let rotated = changed(Some(&data(b"a")), &data(b"b")).expect("a change");
        assert_eq!(
            rotated.map(|d| d.fingerprint()),
            data(b"a").map(|d| d.fingerprint())
        );
        assert!(changed(Some(&data(b"a")), &None).is_some(), "deleted");
        assert_eq!(changed(Some(&None), &data(b"a")), Some(None), "created");
        assert_eq!(changed(Some(&None), &None), None);
    }

    #[test]
    fn a_pass_spreads_over_the_period_at_no_more_than_the_rate() {
        assert_eq!(pace(0, PERIOD), PERIOD);
        assert_eq!(pace(45, PERIOD), Duration::from_secs(1));
        assert_eq!(pace(100_000, PERIOD), Duration::from_millis(20));
    }
}
