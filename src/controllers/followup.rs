//! Follow-up judgements. A workload admitted while a Secret it reads did not exist yet, with
//! nothing promising it, is judged again once its grace has passed (`require-config-keys`'s
//! `secretGraceSeconds`): charts and tools create Secrets after their readers (Helm puts custom
//! resources last, `kubectl apply -f dir/` follows file names, controllers make Secrets a moment
//! later), so at admission a missing Secret is only a warning. If the judgement after the grace
//! still finds violations, the workload gets a Warning Event `ConfigMissing` naming them, and
//! `confgate_followups_total{result="still_missing"}` counts it; the background audit reports it
//! too from then on.
//!
//! Each replica follows up what it admitted itself, in memory: a restart forgets the pending
//! follow-ups, and the audit's next scan reports what they would have. RBAC: `get` on the
//! workload kinds, `create` on Events.

use crate::cluster::fresh::Fresh;
use crate::engine::{Engine, Judging};
use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::core::admission::AdmissionRequest;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// How many follow-ups may wait at once; more are dropped (and counted as failed).
const CAPACITY: usize = 10_000;
/// Added to the grace, so the judgement after it sees the reader older than the grace.
const MARGIN: Duration = Duration::from_secs(2);

/// A workload to judge again.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Due {
    at: Instant,
    resource: Resource,
    namespace: String,
    name: String,
    uid: String,
}

/// The resource of the object, as the request named it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Resource {
    group: String,
    version: String,
    kind: String,
    plural: String,
}

impl Resource {
    fn api(&self) -> ApiResource {
        let api_version = if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        };
        ApiResource {
            group: self.group.clone(),
            version: self.version.clone(),
            api_version,
            kind: self.kind.clone(),
            plural: self.plural.clone(),
        }
    }
}

/// The handle the review service schedules follow-ups through.
#[derive(Clone)]
pub struct Followups {
    queue: mpsc::Sender<Due>,
    judging: Judging,
}

impl Followups {
    /// Starts the follow-up task on the current runtime.
    pub fn start(client: Client, judging: Judging) -> Self {
        let (queue, due) = mpsc::channel(CAPACITY);
        tokio::spawn(run(client, judging.clone(), due));
        Self { queue, judging }
    }

    /// Judges the object of `request` again after `wait` (plus a margin).
    pub fn schedule(&self, request: &AdmissionRequest<DynamicObject>, wait: Duration) {
        let uid = request
            .object
            .as_ref()
            .and_then(|o| o.metadata.uid.clone())
            .unwrap_or_default();
        let due = Due {
            at: Instant::now() + wait + MARGIN,
            resource: Resource {
                group: request.resource.group.clone(),
                version: request.resource.version.clone(),
                kind: request.kind.kind.clone(),
                plural: request.resource.resource.clone(),
            },
            namespace: request.namespace.clone().unwrap_or_default(),
            name: request.name.clone(),
            uid,
        };
        if self.queue.try_send(due).is_err() {
            self.judging.metrics.followup("failed");
            tracing::warn!(
                kind = %request.kind.kind,
                name = %request.name,
                "too many follow-up judgements waiting: this one is dropped (the audit still reports the workload)"
            );
        }
    }
}

async fn run(client: Client, judging: Judging, mut queue: mpsc::Receiver<Due>) {
    let mut waiting: BinaryHeap<Reverse<Due>> = BinaryHeap::new();
    let recorder = crate::events::recorder(client.clone());
    loop {
        let next = waiting.peek().map(|Reverse(d)| d.at);
        tokio::select! {
            received = queue.recv() => match received {
                Some(due) => waiting.push(Reverse(due)),
                None => return,
            },
            () = sleep_until(next) => {
                if let Some(Reverse(due)) = waiting.pop() {
                    let result = follow_up(&client, &judging, &recorder, &due).await;
                    judging.metrics.followup(result);
                }
            }
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Reads the object and judges it as the audit does; an Event when it is still broken.
async fn follow_up(
    client: &Client,
    judging: &Judging,
    recorder: &kube::runtime::events::Recorder,
    due: &Due,
) -> &'static str {
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &due.namespace, &due.resource.api());
    let object = match api.get_opt(&due.name).await {
        Ok(Some(object)) => object,
        Ok(None) => return "gone",
        Err(error) => {
            tracing::warn!(kind = %due.resource.kind, namespace = %due.namespace, name = %due.name, %error, "cannot read a workload to judge it again");
            return "failed";
        }
    };
    let uid = object.metadata.uid.clone().unwrap_or_default();
    if !due.uid.is_empty() && uid != due.uid {
        // Replaced since: its own admission judged the new one.
        return "gone";
    }
    let Ok(value) = serde_json::to_value(&object) else {
        return "failed";
    };
    let engine = Engine::new(judging.cluster.clone());
    let set = judging.policies.current();
    let mut fresh = Fresh::default();
    let findings =
        crate::controllers::audit::judge(&engine, &set, &due.resource.kind, value, &mut fresh)
            .await;
    let broken: Vec<String> = findings
        .into_iter()
        .filter(|(_, result, _)| *result == "fail" || *result == "warn")
        .map(|(policy, _, message)| format!("{policy}: {message}"))
        .collect();
    if broken.is_empty() {
        return "resolved";
    }
    tracing::warn!(kind = %due.resource.kind, namespace = %due.namespace, name = %due.name, problems = %broken.join("; "), "still broken after the grace for Secrets to arrive");
    let on = crate::events::On {
        kind: &due.resource.kind,
        namespace: &due.namespace,
        name: &due.name,
        uid: &uid,
    };
    let note = format!(
        "a Secret it reads did not exist when it was admitted, and after the grace it is still not there: {}",
        broken.join("; ")
    );
    let published = crate::events::publish(
        recorder,
        on,
        kube::runtime::events::EventType::Warning,
        "ConfigMissing",
        "FollowUp",
        note,
    )
    .await;
    if let Err(error) = published {
        tracing::warn!(%error, "cannot publish the ConfigMissing Event");
    }
    "still_missing"
}
