//! Leader election on a `coordination.k8s.io` Lease, so exactly one replica writes rollouts and
//! reports (every replica serves the webhook). The algorithm of client-go's `leaderelection`,
//! with what a Lease that disappears needs:
//!
//! - Every [`RETRY`] a candidate reads the Lease. The holder renews it; another candidate takes
//!   it over once it has seen the same record unchanged for the lease's duration (its own
//!   clock, never a timestamp written by another machine).
//! - A Lease that is gone (a cleanup script, a namespace restore) is created again at once by
//!   the replica that held it; another candidate waits the lease's duration first, so the old
//!   holder, which may still be writing, has stopped by then.
//! - A holder leads only while its last successful renewal is younger than [`RENEW_DEADLINE`],
//!   checked before every write ([`Leader::holds`]): a replica frozen past that (a stopped
//!   process, a long pause) writes nothing when it resumes, whatever its tasks do first.
//!
//! The decision ([`decide`]) is a pure function of what was seen and when; the API calls sit
//! behind [`LeaseStore`].

use futures::future::BoxFuture;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, PostParams};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long a Lease is valid without renewal (`spec.leaseDurationSeconds`).
pub const DURATION: Duration = Duration::from_secs(15);
/// A holder that could not renew for this long stops leading (before another can take over).
pub const RENEW_DEADLINE: Duration = Duration::from_secs(10);
/// How often candidates read, and the holder renews, the Lease.
pub const RETRY: Duration = Duration::from_secs(2);

/// The part of a Lease the election reads and writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// `spec.holderIdentity` ("" when released).
    pub holder: String,
    /// `spec.leaseTransitions`.
    pub transitions: i32,
    /// `metadata.resourceVersion`: every write is conditional on it.
    pub version: String,
    /// `spec.renewTime` as written (only compared for change).
    pub renewed: String,
}

/// What a candidate has seen of the Lease: the record (or its absence) and since when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// The record, or `None` when the Lease did not exist.
    pub record: Option<Record>,
    /// When this candidate first saw it so.
    pub since: Instant,
}

/// What to do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Create the Lease, holding it.
    Create,
    /// Write a new renew time (this candidate holds it).
    Renew,
    /// Take it over: it expired, or was released.
    Acquire,
    /// Another holds it, or the Lease is gone and may still be used by its old holder.
    Follow,
}

/// The next step of candidate `me`, given what it has seen, whether it led until now, when it
/// last saw another candidate hold the Lease, and the time.
pub fn decide(
    me: &str,
    seen: &Seen,
    leading: bool,
    other_held_at: Option<Instant>,
    now: Instant,
) -> Step {
    let unchanged_for = now.saturating_duration_since(seen.since);
    let other_may_lead =
        other_held_at.is_some_and(|at| now.saturating_duration_since(at) < DURATION);
    match &seen.record {
        None if leading || !other_may_lead => Step::Create,
        None => Step::Follow,
        Some(record) if record.holder == me => Step::Renew,
        Some(record) if record.holder.is_empty() => Step::Acquire,
        Some(_) if unchanged_for >= DURATION => Step::Acquire,
        Some(_) => Step::Follow,
    }
}

/// Why a write of the Lease did not happen.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// Someone else wrote (or created) it first.
    #[error("the Lease changed meanwhile")]
    Conflict,
    /// Anything else (network, RBAC).
    #[error("{0}")]
    Failed(String),
}

/// The Lease's I/O: read, create, and write conditionally.
pub trait LeaseStore: Send + Sync {
    /// The current record, `None` when there is no Lease.
    fn get(&self) -> BoxFuture<'_, Result<Option<Record>, String>>;
    /// Creates it, held by `holder`.
    fn create(&self, holder: &str) -> BoxFuture<'_, Result<Record, WriteError>>;
    /// Writes `holder` (a new renew time, and on a change of holder a new acquire time and
    /// one more transition), conditional on `current.version`.
    fn write(&self, current: &Record, holder: &str) -> BoxFuture<'_, Result<Record, WriteError>>;
}

/// Whether this replica leads, for the writers: a channel that says when it changes, and the
/// deadline of its leadership that every write checks.
#[derive(Clone)]
pub struct Leader {
    rx: tokio::sync::watch::Receiver<bool>,
    valid: Arc<Validity>,
    /// The Lease and this candidate, for [`Leader::release`].
    store: Option<Arc<dyn LeaseStore>>,
    me: String,
    /// Set by [`Leader::release`]: the election task stops.
    stopped: Arc<std::sync::atomic::AtomicBool>,
}

/// Until when the leadership holds: nanoseconds after `base` (0: not leading).
struct Validity {
    base: Instant,
    until: AtomicU64,
}

impl Validity {
    fn set(&self, until: Option<Instant>) {
        let nanos = until.map_or(0, |u| {
            u64::try_from(u.saturating_duration_since(self.base).as_nanos()).unwrap_or(u64::MAX)
        });
        self.until.store(nanos, Ordering::Release);
    }

    fn holds(&self, now: Instant) -> bool {
        let until = self.until.load(Ordering::Acquire);
        until > 0 && self.base + Duration::from_nanos(until) > now
    }
}

impl Leader {
    /// True when this replica may write now: it leads, and renewed recently enough.
    pub fn holds(&self) -> bool {
        *self.rx.borrow() && self.valid.holds(Instant::now())
    }

    /// The channel of leadership changes.
    pub fn watch(&self) -> tokio::sync::watch::Receiver<bool> {
        self.rx.clone()
    }

    /// A leader that always leads (tests, benchmarks: one replica).
    pub fn always() -> Self {
        Self::fixed(true)
    }

    /// A replica that never leads (tests: one that lost the Lease).
    pub fn never() -> Self {
        Self::fixed(false)
    }

    fn fixed(leading: bool) -> Self {
        let (_tx, rx) = tokio::sync::watch::channel(leading);
        let valid = Arc::new(Validity {
            base: Instant::now(),
            until: AtomicU64::new(u64::MAX),
        });
        Self {
            rx,
            valid,
            store: None,
            me: String::new(),
            stopped: Arc::default(),
        }
    }

    /// Stops taking part (at shutdown) and, when this replica holds the Lease, releases it (an
    /// empty holder), so another replica takes over at once instead of after the lease's
    /// duration. Writers stop first.
    pub async fn release(&self) {
        self.stopped.store(true, Ordering::Release);
        self.valid.set(None);
        let Some(store) = &self.store else {
            return;
        };
        let released = async {
            if let Ok(Some(record)) = store.get().await
                && record.holder == self.me
            {
                store.write(&record, "").await.is_ok()
            } else {
                false
            }
        };
        if let Ok(true) = tokio::time::timeout(RETRY, released).await {
            tracing::info!(identity = %self.me, "leader-election Lease released");
        }
    }
}

/// Runs the election for `me` until the process ends.
pub fn run(store: Arc<dyn LeaseStore>, me: String) -> Leader {
    let (tx, rx) = tokio::sync::watch::channel(false);
    let valid = Arc::new(Validity {
        base: Instant::now(),
        until: AtomicU64::new(0),
    });
    let stopped: Arc<std::sync::atomic::AtomicBool> = Arc::default();
    let leader = Leader {
        rx,
        valid: valid.clone(),
        store: Some(store.clone()),
        me: me.clone(),
        stopped: stopped.clone(),
    };
    tokio::spawn(async move {
        let mut candidate = Candidate::new(me);
        loop {
            if stopped.load(Ordering::Acquire) {
                tx.send_if_modified(|was| std::mem::replace(was, false));
                return;
            }
            let now = Instant::now();
            candidate.round(store.as_ref(), now).await;
            valid.set(candidate.renewed.map(|at| at + RENEW_DEADLINE));
            let leading = candidate.leading(Instant::now());
            // Receivers hear of changes only: the rollout controller compares every workload,
            // and the audit runs, when this replica starts leading, not at every renewal.
            if tx.send_if_modified(|was| std::mem::replace(was, leading) != leading) {
                tracing::info!(leading, identity = %candidate.me, "leadership changed");
            }
            tokio::time::sleep(RETRY).await;
        }
    });
    leader
}

/// One candidate's state between rounds.
pub struct Candidate {
    me: String,
    seen: Option<Seen>,
    /// When it last created, renewed or acquired the Lease.
    renewed: Option<Instant>,
    /// When it last saw another candidate hold the Lease.
    other_held_at: Option<Instant>,
}

impl Candidate {
    /// A candidate that has seen nothing yet.
    pub fn new(me: String) -> Self {
        Self {
            me,
            seen: None,
            renewed: None,
            other_held_at: None,
        }
    }

    /// True while its last renewal is younger than [`RENEW_DEADLINE`].
    pub fn leading(&self, now: Instant) -> bool {
        self.renewed
            .is_some_and(|at| now.saturating_duration_since(at) < RENEW_DEADLINE)
    }

    /// Reads the Lease and takes one step.
    pub async fn round(&mut self, store: &dyn LeaseStore, now: Instant) {
        let record = match store.get().await {
            Ok(record) => record,
            Err(error) => {
                tracing::warn!(%error, "cannot read the leader-election Lease");
                return;
            }
        };
        let seen = match self.seen.take() {
            Some(seen) if seen.record == record => seen,
            _ => Seen { record, since: now },
        };
        if let Some(record) = &seen.record
            && !record.holder.is_empty()
            && record.holder != self.me
        {
            self.other_held_at = Some(now);
        }
        let step = decide(&self.me, &seen, self.leading(now), self.other_held_at, now);
        let written = match (&step, &seen.record) {
            (Step::Create, _) => Some(store.create(&self.me).await),
            (Step::Renew | Step::Acquire, Some(current)) => {
                Some(store.write(current, &self.me).await)
            }
            _ => None,
        };
        self.seen = Some(seen);
        match written {
            Some(Ok(record)) => {
                if step == Step::Create {
                    tracing::info!(identity = %self.me, "the leader-election Lease did not exist: created it");
                }
                self.seen = Some(Seen {
                    record: Some(record),
                    since: now,
                });
                self.renewed = Some(now);
            }
            Some(Err(WriteError::Conflict)) => {}
            Some(Err(WriteError::Failed(error))) => {
                tracing::warn!(%error, ?step, "cannot write the leader-election Lease");
            }
            None => {
                if step == Step::Follow {
                    self.renewed = None;
                }
            }
        }
    }
}

/// The Lease in the cluster.
pub struct KubeLease {
    api: Api<Lease>,
    name: String,
    owner: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference>,
}

impl KubeLease {
    /// Lease `name` in `namespace`; created with `owner` as its owner.
    pub fn new(
        client: kube::Client,
        namespace: &str,
        name: &str,
        owner: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference>,
    ) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            name: name.to_owned(),
            owner,
        }
    }
}

fn record(lease: &Lease) -> Record {
    let spec = lease.spec.clone().unwrap_or_default();
    Record {
        holder: spec.holder_identity.unwrap_or_default(),
        transitions: spec.lease_transitions.unwrap_or(0),
        version: lease.metadata.resource_version.clone().unwrap_or_default(),
        renewed: spec.renew_time.map(|t| t.0.to_string()).unwrap_or_default(),
    }
}

fn now_micro() -> MicroTime {
    MicroTime(k8s_openapi::jiff::Timestamp::now())
}

fn write_error(error: kube::Error) -> WriteError {
    match error {
        kube::Error::Api(status) if status.code == 409 => WriteError::Conflict,
        other => WriteError::Failed(other.to_string()),
    }
}

impl LeaseStore for KubeLease {
    fn get(&self) -> BoxFuture<'_, Result<Option<Record>, String>> {
        Box::pin(async move {
            self.api
                .get_opt(&self.name)
                .await
                .map(|lease| lease.as_ref().map(record))
                .map_err(|e| e.to_string())
        })
    }

    fn create(&self, holder: &str) -> BoxFuture<'_, Result<Record, WriteError>> {
        let holder = holder.to_owned();
        Box::pin(async move {
            let now = now_micro();
            let lease = Lease {
                metadata: kube::api::ObjectMeta {
                    name: Some(self.name.clone()),
                    owner_references: self.owner.clone().map(|o| vec![o]),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(holder),
                    lease_duration_seconds: Some(DURATION.as_secs() as i32),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            self.api
                .create(&PostParams::default(), &lease)
                .await
                .map(|l| record(&l))
                .map_err(write_error)
        })
    }

    fn write(&self, current: &Record, holder: &str) -> BoxFuture<'_, Result<Record, WriteError>> {
        let (current, holder) = (current.clone(), holder.to_owned());
        Box::pin(async move {
            let mut lease = self.api.get(&self.name).await.map_err(write_error)?;
            if lease.metadata.resource_version.as_deref() != Some(current.version.as_str()) {
                return Err(WriteError::Conflict);
            }
            let now = now_micro();
            let spec = lease.spec.get_or_insert_with(Default::default);
            if current.holder != holder {
                spec.acquire_time = Some(now.clone());
                spec.lease_transitions = Some(current.transitions + 1);
            }
            spec.holder_identity = Some(holder);
            spec.lease_duration_seconds = Some(DURATION.as_secs() as i32);
            spec.renew_time = Some(now);
            if lease.metadata.owner_references.is_none() {
                lease.metadata.owner_references = self.owner.clone().map(|o| vec![o]);
            }
            self.api
                .replace(&self.name, &PostParams::default(), &lease)
                .await
                .map(|l| record(&l))
                .map_err(write_error)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn held_by(holder: &str, version: &str) -> Option<Record> {
        Some(Record {
            holder: holder.into(),
            transitions: 0,
            version: version.into(),
            renewed: version.into(),
        })
    }

    #[test]
    fn decisions_follow_what_was_seen_and_for_how_long() {
        let t0 = Instant::now();
        let seen = |record: Option<Record>| Seen { record, since: t0 };
        let later = |d: u64| t0 + Duration::from_secs(d);
        // (seen, leading, another held it at, now) -> step
        let table = [
            // No Lease, and no one else seen holding one: create it.
            (seen(None), false, None, later(0), Step::Create),
            // It vanished while another held it: that one may still write, so wait.
            (seen(None), false, Some(later(0)), later(14), Step::Follow),
            (seen(None), false, Some(later(0)), later(15), Step::Create),
            // It vanished under this holder: create it again at once.
            (seen(None), true, None, later(0), Step::Create),
            (seen(held_by("me", "1")), true, None, later(1), Step::Renew),
            (seen(held_by("me", "1")), false, None, later(1), Step::Renew),
            (seen(held_by("", "1")), false, None, later(0), Step::Acquire),
            (
                seen(held_by("other", "1")),
                false,
                Some(later(14)),
                later(14),
                Step::Follow,
            ),
            (
                seen(held_by("other", "1")),
                false,
                Some(later(15)),
                later(15),
                Step::Acquire,
            ),
        ];
        for (i, (seen, leading, other, now, step)) in table.into_iter().enumerate() {
            assert_eq!(decide("me", &seen, leading, other, now), step, "row {i}");
        }
    }

    /// A Lease in memory, as the apiserver keeps it: writes conditional on the version.
    #[derive(Default)]
    struct Memory {
        lease: Mutex<Option<Record>>,
        next: Mutex<u64>,
    }

    impl Memory {
        fn bump(&self) -> String {
            let mut next = self.next.lock().unwrap();
            *next += 1;
            next.to_string()
        }
        fn holder(&self) -> Option<String> {
            self.lease
                .lock()
                .unwrap()
                .as_ref()
                .map(|r| r.holder.clone())
        }
        fn delete(&self) {
            *self.lease.lock().unwrap() = None;
        }
    }

    impl LeaseStore for Memory {
        fn get(&self) -> BoxFuture<'_, Result<Option<Record>, String>> {
            let record = self.lease.lock().unwrap().clone();
            Box::pin(async move { Ok(record) })
        }
        fn create(&self, holder: &str) -> BoxFuture<'_, Result<Record, WriteError>> {
            let mut lease = self.lease.lock().unwrap();
            let result = if lease.is_some() {
                Err(WriteError::Conflict)
            } else {
                let version = self.bump();
                let record = Record {
                    holder: holder.into(),
                    transitions: 0,
                    renewed: version.clone(),
                    version,
                };
                *lease = Some(record.clone());
                Ok(record)
            };
            Box::pin(async move { result })
        }
        fn write(
            &self,
            current: &Record,
            holder: &str,
        ) -> BoxFuture<'_, Result<Record, WriteError>> {
            let mut lease = self.lease.lock().unwrap();
            let result = match lease.as_ref() {
                Some(stored) if stored.version == current.version => {
                    let version = self.bump();
                    let record = Record {
                        holder: holder.into(),
                        transitions: stored.transitions + i32::from(stored.holder != holder),
                        renewed: version.clone(),
                        version,
                    };
                    *lease = Some(record.clone());
                    Ok(record)
                }
                _ => Err(WriteError::Conflict),
            };
            Box::pin(async move { result })
        }
    }

    /// Two candidates taking turns every RETRY; returns who leads after each round.
    async fn rounds(
        store: &Memory,
        a: &mut Candidate,
        b: &mut Candidate,
        start: Instant,
        from: u32,
        to: u32,
    ) -> Vec<(bool, bool)> {
        let mut out = Vec::new();
        for i in from..to {
            let now = start + RETRY * i;
            a.round(store, now).await;
            b.round(store, now).await;
            out.push((a.leading(now), b.leading(now)));
        }
        out
    }

    #[tokio::test]
    async fn a_deleted_lease_is_created_again_by_its_holder_and_never_has_two_leaders() {
        let store = Memory::default();
        let start = Instant::now();
        let (mut a, mut b) = (Candidate::new("a".into()), Candidate::new("b".into()));
        let first = rounds(&store, &mut a, &mut b, start, 0, 3).await;
        assert_eq!(first, vec![(true, false); 3]);
        store.delete();
        let after = rounds(&store, &mut a, &mut b, start, 3, 12).await;
        assert!(after.iter().all(|(a, b)| !(*a && *b)), "{after:?}");
        assert_eq!(after.last(), Some(&(true, false)));
        assert_eq!(store.holder(), Some("a".into()));
    }

    #[tokio::test]
    async fn when_the_holder_stops_the_other_takes_over_after_the_lease_duration_only() {
        let store = Memory::default();
        let start = Instant::now();
        let (mut a, mut b) = (Candidate::new("a".into()), Candidate::new("b".into()));
        rounds(&store, &mut a, &mut b, start, 0, 2).await;
        // `a` stops (or freezes); `b` goes on alone.
        let mut led_at = None;
        for i in 2..20 {
            let now = start + RETRY * i;
            b.round(&store, now).await;
            if b.leading(now) && led_at.is_none() {
                led_at = Some(i);
            }
            // While `b` does not lead yet, `a`'s own deadline has passed long before `b` leads.
            if b.leading(now) {
                assert!(!a.leading(now), "two leaders at round {i}");
            }
        }
        let led_at = led_at.expect("b leads");
        assert!(
            RETRY * (led_at - 1) >= DURATION,
            "took over after {led_at} rounds"
        );
        assert_eq!(store.holder(), Some("b".into()));
        // `a` resumes: it does not lead, and follows.
        let now = start + RETRY * 20;
        assert!(!a.leading(now));
        a.round(&store, now).await;
        assert!(!a.leading(now));
    }

    #[tokio::test]
    async fn renewals_are_not_leadership_changes() {
        let store = Arc::new(Memory::default());
        let leader = run(store.clone(), "a".into());
        let mut watch = leader.watch();
        // Leading from the first round; then rounds every RETRY renew without a change.
        tokio::time::timeout(RETRY, watch.changed())
            .await
            .expect("the first round")
            .unwrap();
        assert!(*watch.borrow_and_update());
        // Two renewals later, still no change announced.
        let quiet = tokio::time::timeout(RETRY * 2 + RETRY / 2, watch.changed()).await;
        assert!(quiet.is_err(), "a renewal was announced as a change");
        assert_eq!(store.holder(), Some("a".into()));
    }

    #[tokio::test]
    async fn a_released_lease_is_taken_over_at_once() {
        let store = Arc::new(Memory::default());
        let leader = run(store.clone(), "a".into());
        for _ in 0..100 {
            if leader.holds() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(leader.holds());
        leader.release().await;
        assert!(!leader.holds());
        assert_eq!(store.holder(), Some(String::new()));
        let mut b = Candidate::new("b".into());
        let now = Instant::now();
        b.round(store.as_ref(), now).await;
        assert!(b.leading(now));
        assert_eq!(store.holder(), Some("b".into()));
    }

    #[test]
    fn a_leader_that_renewed_too_long_ago_holds_nothing() {
        let valid = Validity {
            base: Instant::now(),
            until: AtomicU64::new(0),
        };
        let now = Instant::now();
        assert!(!valid.holds(now));
        valid.set(Some(now + RENEW_DEADLINE));
        assert!(valid.holds(now));
        assert!(!valid.holds(now + RENEW_DEADLINE));
    }
}
