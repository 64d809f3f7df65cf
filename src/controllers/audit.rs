//! The background audit: existing workloads judged by the validating policies, as if they were
//! created now (missing ConfigMaps, Secrets and keys; required keys; LimitRange min/max). Finds
//! what was admitted before confgate was installed, or broke later (a key removed while confgate
//! was down). Results go to wg-policy `PolicyReport`s (`wgpolicyk8s.io/v1alpha2`, one per
//! namespace, the format Policy Reporter, Kyverno and Kubewarden use), the metric
//! `confgate_audit_violations{policy,namespace}`, a Warning Event on each broken workload (at
//! most once an hour each), and `confgate audit`.
//!
//! Workloads are listed page by page ([`PAGE`] at a time), so memory stays bounded however
//! many there are; only the findings are kept.

use crate::admission::manifest_review;
use crate::cluster::fresh::Fresh;
use crate::engine::{Engine, Judgement, Outcome};
use crate::policy::{Phase, PolicySet};
use crate::workload::{ROLLING_KINDS, api_resource};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::Client;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams};
use serde::Serialize;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

/// Workloads listed (and held, parsed) at a time: a parsed workload takes about ten times its
/// JSON, so a page of 100 real Deployments is about 5 MB.
pub const PAGE: u32 = 100;
/// The PolicyReport every namespace gets, named so.
pub const REPORT_NAME: &str = "confgate-audit";
/// The most results one PolicyReport carries (the summary still counts them all).
pub const MAX_RESULTS: usize = 500;

/// One violation found in an existing workload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// `Deployment`, `StatefulSet`, `DaemonSet` or `CronJob`.
    pub kind: String,
    pub namespace: String,
    pub name: String,
    /// Its uid.
    pub uid: String,
    pub policy: String,
    /// The policy's type (`require-config-keys`): the report's `rule`.
    pub rule: String,
    /// `fail` (the policy denies) or `warn` (it warns or audits), or `error`.
    pub result: &'static str,
    /// What is wrong.
    pub message: String,
}

/// What one audit found.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Audit {
    /// Workloads judged.
    pub workloads: usize,
    /// Violations, sorted by namespace, kind, name, policy.
    pub findings: Vec<Finding>,
    /// Per namespace, the policy verdicts that passed.
    pub passed: BTreeMap<String, usize>,
}

impl Audit {
    /// Violations by (policy, namespace).
    pub fn counts(&self) -> BTreeMap<(String, String), usize> {
        let mut counts = BTreeMap::new();
        for f in &self.findings {
            *counts
                .entry((f.policy.clone(), f.namespace.clone()))
                .or_default() += 1;
        }
        counts
    }
}

/// Judges one workload object (as listed) with the validating policies. `fresh` holds what was
/// read from the API server during this scan (reused for the scan's other workloads, and
/// extended with this one's reads).
pub async fn judge(
    engine: &Engine,
    set: &PolicySet,
    kind: &str,
    object: Value,
    fresh: &mut Fresh,
) -> Vec<(String, &'static str, String)> {
    let mut object = object;
    if let Some(resource) = api_resource(kind) {
        // Listed objects carry no apiVersion or kind.
        object["apiVersion"] = json!(resource.api_version);
        object["kind"] = json!(kind);
    }
    let Ok(review) = manifest_review(object, 1) else {
        return Vec::new();
    };
    let judged = engine
        .judge(
            set,
            &review,
            Judgement::Phase(Phase::Validate, None),
            std::mem::take(fresh),
        )
        .await;
    let Ok((decision, read)) = judged else {
        return Vec::new();
    };
    *fresh = read;
    let mut out = Vec::new();
    for verdict in decision.verdicts {
        let result = match verdict.outcome {
            Outcome::Denied => "fail",
            Outcome::Warned | Outcome::Audited => "warn",
            Outcome::Error { .. } => "error",
            Outcome::Passed => "pass",
            Outcome::Skipped => continue,
        };
        if result == "pass" {
            out.push((verdict.policy.clone(), result, String::new()));
        }
        for message in verdict.violations {
            out.push((verdict.policy.clone(), result, message));
        }
    }
    out
}

/// Lists every workload of the rolling kinds, page by page, and judges each.
pub async fn scan(client: &Client, engine: &Engine, set: &PolicySet) -> Result<Audit, kube::Error> {
    let mut audit = Audit::default();
    let mut fresh = Fresh::default();
    for kind in ROLLING_KINDS.iter().copied() {
        let Some(resource) = api_resource(kind) else {
            continue;
        };
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
        let mut params = ListParams::default().limit(PAGE);
        loop {
            let page = match api.list(&params).await {
                Ok(page) => page,
                // A kind confgate may not list is left out; the others are still audited.
                Err(kube::Error::Api(status)) if status.code == 403 => {
                    tracing::debug!(kind, "not permitted to list: left out of the audit");
                    break;
                }
                // A kind the cluster does not serve (Argo Rollouts without its CRD).
                Err(kube::Error::Api(status)) if status.code == 404 => break,
                Err(error) => return Err(error),
            };
            for object in page.items {
                let meta = &object.metadata;
                if meta.deletion_timestamp.is_some() {
                    continue;
                }
                let (namespace, name, uid) = (
                    meta.namespace.clone().unwrap_or_default(),
                    meta.name.clone().unwrap_or_default(),
                    meta.uid.clone().unwrap_or_default(),
                );
                let Ok(value) = serde_json::to_value(&object) else {
                    continue;
                };
                audit.workloads += 1;
                for (policy, result, message) in judge(engine, set, kind, value, &mut fresh).await {
                    if result == "pass" {
                        *audit.passed.entry(namespace.clone()).or_default() += 1;
                        continue;
                    }
                    let rule = set
                        .get(&policy)
                        .map(|p| p.type_name.clone())
                        .unwrap_or_default();
                    audit.findings.push(Finding {
                        kind: kind.to_owned(),
                        namespace: namespace.clone(),
                        name: name.clone(),
                        uid: uid.clone(),
                        policy,
                        rule,
                        result,
                        message,
                    });
                }
            }
            match page.metadata.continue_.filter(|c| !c.is_empty()) {
                Some(token) => params = params.continue_token(&token),
                None => break,
            }
        }
    }
    // Configuration whose deletion waits for its readers (the config guard's finalizer).
    for (source, namespace, name, readers) in engine.cluster().deferred_deletions() {
        audit.findings.push(Finding {
            kind: source.kind().into(),
            namespace,
            name,
            uid: String::new(),
            policy: "protect-config-keys".into(),
            rule: "protect-config-keys".into(),
            result: "warn",
            message: format!(
                "deletion deferred: read by {}; it is deleted as soon as none of them reads it",
                readers.join(", ")
            ),
        });
    }
    audit.findings.sort_by(|a, b| {
        (&a.namespace, &a.kind, &a.name, &a.policy).cmp(&(
            &b.namespace,
            &b.kind,
            &b.name,
            &b.policy,
        ))
    });
    Ok(audit)
}

/// A report's `category` for a policy type: what Policy Reporter groups results by.
fn category(rule: &str) -> &'static str {
    match rule {
        "limitrange-defaults" | "quota-fit" => "Resources",
        _ => "Configuration",
    }
}

/// The PolicyReport of `namespace`: its findings (at most [`MAX_RESULTS`]) and a summary.
pub fn policy_report(audit: &Audit, namespace: &str, now: &str) -> Value {
    let findings: Vec<&Finding> = audit
        .findings
        .iter()
        .filter(|f| f.namespace == namespace)
        .collect();
    let count = |r: &str| findings.iter().filter(|f| f.result == r).count();
    let seconds = time::OffsetDateTime::now_utc().unix_timestamp();
    let results: Vec<Value> = findings
        .iter()
        .take(MAX_RESULTS)
        .map(|f| {
            json!({
                "source": "confgate",
                "policy": f.policy,
                "rule": f.rule,
                "category": category(&f.rule),
                "result": f.result,
                "scored": true,
                "severity": if f.result == "fail" { "high" } else { "medium" },
                "timestamp": {"seconds": seconds, "nanos": 0},
                "message": f.message,
                "resources": [{
                    "apiVersion": match f.kind.as_str() {
                        "ConfigMap" | "Secret" => "v1".to_owned(),
                        kind => api_resource(kind).map(|r| r.api_version).unwrap_or_default(),
                    },
                    "kind": f.kind, "namespace": f.namespace, "name": f.name, "uid": f.uid,
                }],
            })
        })
        .collect();
    let mut annotations = json!({"confgate.dev/last-audit": now});
    if findings.len() > MAX_RESULTS {
        annotations["confgate.dev/results-truncated"] = json!(format!(
            "{} results, the first {MAX_RESULTS} listed",
            findings.len()
        ));
    }
    json!({
        "apiVersion": "wgpolicyk8s.io/v1alpha2",
        "kind": "PolicyReport",
        "metadata": {
            "name": REPORT_NAME,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/managed-by": "confgate"},
            "annotations": annotations,
        },
        "summary": {
            "pass": audit.passed.get(namespace).copied().unwrap_or(0),
            "fail": count("fail"),
            "warn": count("warn"),
            "error": count("error"),
            "skip": 0,
        },
        "results": results,
    })
}

/// A report API the audit writes: the wg-policy `PolicyReport` (Policy Reporter, Kyverno,
/// Kubewarden) or its successor, OpenReports' `Report` (`openreports.io/v1alpha1`: the same
/// results and summary, plus a top-level `source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum ReportFormat {
    /// `wgpolicyk8s.io/v1alpha2` `PolicyReport`.
    #[value(name = "wgpolicyk8s")]
    PolicyReport,
    /// `openreports.io/v1alpha1` `Report`.
    #[value(name = "openreports")]
    OpenReports,
}

impl ReportFormat {
    /// Its API resource.
    pub fn resource(self) -> kube::api::ApiResource {
        let (group, version, kind, plural) = match self {
            ReportFormat::PolicyReport => (
                "wgpolicyk8s.io",
                "v1alpha2",
                "PolicyReport",
                "policyreports",
            ),
            ReportFormat::OpenReports => ("openreports.io", "v1alpha1", "Report", "reports"),
        };
        kube::api::ApiResource {
            group: group.into(),
            version: version.into(),
            api_version: format!("{group}/{version}"),
            kind: kind.into(),
            plural: plural.into(),
        }
    }

    /// The report of `namespace` in this format.
    pub fn report(self, audit: &Audit, namespace: &str, now: &str) -> Value {
        let mut report = policy_report(audit, namespace, now);
        let resource = self.resource();
        report["apiVersion"] = json!(resource.api_version);
        report["kind"] = json!(resource.kind);
        if self == ReportFormat::OpenReports {
            report["source"] = json!("confgate");
        }
        report
    }
}

/// The label that says which confgate installation wrote a PolicyReport.
pub const INSTANCE_LABEL: &str = "confgate.dev/instance";

/// Where the audit's reports go, and whose they are.
#[derive(Debug, Clone)]
pub struct Reporting {
    /// This installation, for [`INSTANCE_LABEL`]: one installation never deletes another's
    /// reports (each only knows the namespaces its own policies judge).
    pub instance: String,
    /// Who owns the reports (the ClusterRole: uninstalling removes them).
    pub owners: crate::owners::Owners,
    /// The report APIs written (both during a migration).
    pub formats: Vec<ReportFormat>,
}

impl Reporting {
    /// The instance label of the installation whose rollout Lease is `namespace/lease` (one per
    /// installation), as a label value (at most 63 characters: longer names are hashed).
    pub fn instance_of(namespace: &str, lease: &str) -> String {
        let name = format!("{namespace}.{lease}");
        if name.len() <= 63 {
            return name;
        }
        let digest = <sha2::Sha256 as sha2::Digest>::digest(name.as_bytes());
        let prefix: String = namespace.chars().take(40).collect();
        format!("{prefix}.{}", hex::encode(&digest[..8]))
    }
}

/// What writing the reports did: the namespaces written, and those the API server refused
/// (each with why). One namespace's refusal (a ResourceQuota on reports, a webhook) is its
/// own: the others are written, and stale reports cleaned up, all the same.
#[derive(Debug, Default)]
pub struct Written {
    pub namespaces: usize,
    pub refused: Vec<(String, String)>,
}

/// Writes one PolicyReport per namespace with workloads (server-side apply, field manager
/// confgate) and deletes this installation's reports (`instance`; or unlabelled ones, written
/// before the label) in namespaces that have none now. `Ok(None)` when the PolicyReport CRD
/// is not installed.
pub async fn write_reports(
    client: &Client,
    format: ReportFormat,
    audit: &Audit,
    instance: &str,
    owner: Option<&OwnerReference>,
) -> Result<Option<Written>, kube::Error> {
    let resource = format.resource();
    let all: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
    let existing = match all
        .list(&ListParams::default().labels("app.kubernetes.io/managed-by=confgate"))
        .await
    {
        Ok(list) => list.items,
        Err(kube::Error::Api(status)) if status.code == 404 => return Ok(None),
        Err(e) => return Err(e),
    };
    let now = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let mut namespaces: Vec<&String> = audit.passed.keys().collect();
    namespaces.extend(audit.findings.iter().map(|f| &f.namespace));
    namespaces.sort();
    namespaces.dedup();
    let params = PatchParams::apply(crate::workload::FIELD_MANAGER).force();
    let mut written = Written::default();
    for namespace in &namespaces {
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &resource);
        let mut report = format.report(audit, namespace, &now);
        report["metadata"]["labels"][INSTANCE_LABEL] = json!(instance);
        if let Some(owner) = owner {
            report["metadata"]["ownerReferences"] = json!([owner]);
        }
        match api
            .patch(REPORT_NAME, &params, &Patch::Apply(&report))
            .await
        {
            Ok(_) => written.namespaces += 1,
            Err(error) => written
                .refused
                .push(((*namespace).clone(), error.to_string())),
        }
    }
    for old in existing {
        let writer = old
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(INSTANCE_LABEL));
        if writer.is_some_and(|w| w != instance) {
            continue;
        }
        let namespace = old.metadata.namespace.clone().unwrap_or_default();
        if !namespaces.iter().any(|n| **n == namespace) {
            let api: Api<DynamicObject> =
                Api::namespaced_with(client.clone(), &namespace, &resource);
            if let Err(error) = api
                .delete(&old.metadata.name.unwrap_or_default(), &Default::default())
                .await
            {
                written
                    .refused
                    .push((namespace, format!("deleting a stale report: {error}")));
            }
        }
    }
    Ok(Some(written))
}

/// The least time between two audits started by configuration changes.
const MIN_GAP: Duration = Duration::from_secs(30);

/// Runs the audit every `interval` while this replica leads (`leading`), until the process
/// ends; also when cached configuration changed (`changes`), at most every [`MIN_GAP`], so a
/// key removed from a ConfigMap shows in the reports within seconds, not at the next interval.
pub async fn run(
    client: Client,
    judging: crate::engine::Judging,
    leadership: crate::controllers::lease::Leader,
    interval: Duration,
    changes: Option<std::sync::Arc<crate::cluster::changes::ConfigChanges>>,
    reporting: Reporting,
) {
    let recorded = || changes.as_ref().map_or(0, |c| c.recorded());
    let recorder = crate::events::recorder(client.clone());
    let mut leading = leadership.watch();
    let mut warned: HashMap<(String, String, String), Instant> = HashMap::new();
    let mut crd_missing_logged: std::collections::BTreeSet<ReportFormat> = Default::default();
    loop {
        while !*leading.borrow_and_update() {
            if leading.changed().await.is_err() {
                return;
            }
        }
        let cluster = judging.cluster.clone();
        // Judging with caches still syncing would report every reference as unchecked; the
        // Lease can be won before they have synced (at start), so wait for them.
        while cluster.ready().is_err() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let seen = recorded();
        let started = Instant::now();
        let set = judging.policies.current();
        let engine = Engine::new(cluster);
        let pass = tracing::info_span!(
            "audit",
            workloads = tracing::field::Empty,
            violations = tracing::field::Empty
        );
        let judged = async {
            match scan(&client, &engine, &set).await {
                Ok(_) if !leadership.holds() => {
                    tracing::info!("audit not written: this replica no longer holds the Lease");
                }
                Ok(audit) => {
                    judging.metrics.set_audit_violations(&audit.counts());
                    // Owned by confgate's ClusterRole: uninstalling confgate removes its reports.
                    let owner = match reporting.owners.cluster_scoped(&client).await {
                        Ok(owner) => owner,
                        Err(error) => {
                            tracing::warn!(%error, "PolicyReports are written without an owner");
                            None
                        }
                    };
                    for format in &reporting.formats {
                        let resource = format.resource();
                        let written = write_reports(
                            &client,
                            *format,
                            &audit,
                            &reporting.instance,
                            owner.as_ref(),
                        )
                        .await;
                        match &written {
                            Ok(None) if crd_missing_logged.insert(*format) => {
                                tracing::warn!(
                                    api = %resource.api_version,
                                    kind = %resource.kind,
                                    "the report CRD is not installed: audit results go to metrics, Events and logs only (deploy/crds/)"
                                );
                            }
                            Ok(Some(written)) => {
                                for (namespace, error) in &written.refused {
                                    tracing::warn!(%namespace, %error, kind = %resource.kind, "the report of this namespace was not written; the others were");
                                }
                            }
                            Err(error) => {
                                tracing::warn!(%error, kind = %resource.kind, "cannot list the reports")
                            }
                            _ => {}
                        }
                    }
                    warn_broken(&client, &recorder, &audit, &mut warned).await;
                    let pass = tracing::Span::current();
                    pass.record("workloads", audit.workloads);
                    pass.record("violations", audit.findings.len());
                    tracing::info!(
                        workloads = audit.workloads,
                        violations = audit.findings.len(),
                        took_ms = started.elapsed().as_millis() as u64,
                        "audit done"
                    );
                }
                Err(error) => tracing::warn!(%error, "audit failed; retrying at the next interval"),
            }
        };
        tracing::Instrument::instrument(judged, pass).await;
        // The next audit: at the interval, or once configuration changed (and has been quiet
        // for a second), but not within MIN_GAP of the last.
        let changed = async {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                if recorded() != seen && started.elapsed() >= MIN_GAP {
                    if let Some(changes) = &changes {
                        changes.settle(Duration::from_secs(1)).await;
                    }
                    return;
                }
            }
        };
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = changed => {}
            result = leading.changed() => if result.is_err() { return; },
        }
    }
}

/// How often a broken workload gets a `ConfigBroken` Event.
const WARN_EVERY: Duration = Duration::from_secs(3600);

/// A Warning Event `ConfigBroken` on each broken workload, at most once an hour each. What was
/// sent is remembered in memory, and, for a workload this replica has not warned about yet (at
/// a start, or after a leader change), read from the Events confgate already recorded in its
/// namespace: the budget holds across restarts and leader changes.
async fn warn_broken(
    client: &Client,
    recorder: &kube::runtime::events::Recorder,
    audit: &Audit,
    warned: &mut HashMap<(String, String, String), Instant>,
) {
    use kube::runtime::events::EventType;
    let mut by_workload: BTreeMap<(String, String, String), (&Finding, Vec<&str>)> =
        BTreeMap::new();
    for f in audit.findings.iter().filter(|f| f.result == "fail") {
        by_workload
            .entry((f.kind.clone(), f.namespace.clone(), f.name.clone()))
            .or_insert_with(|| (f, Vec::new()))
            .1
            .push(&f.message);
    }
    warned.retain(|k, at| by_workload.contains_key(k) && at.elapsed() < WARN_EVERY);
    let mut recorded: HashMap<String, HashMap<String, Duration>> = HashMap::new();
    for (key, (f, messages)) in by_workload {
        if warned.contains_key(&key) {
            continue;
        }
        if !recorded.contains_key(&f.namespace) {
            let ages = match sent_in(client, &f.namespace).await {
                Ok(ages) => ages,
                Err(error) => {
                    tracing::debug!(namespace = %f.namespace, %error, "cannot read the Events already sent; sending");
                    HashMap::new()
                }
            };
            recorded.insert(f.namespace.clone(), ages);
        }
        if let Some(age) = recorded
            .get(&f.namespace)
            .and_then(|ages| ages.get(&f.uid))
            .filter(|age| **age < WARN_EVERY)
        {
            warned.insert(
                key,
                Instant::now()
                    .checked_sub(*age)
                    .unwrap_or_else(Instant::now),
            );
            continue;
        }
        let on = crate::events::On {
            kind: &f.kind,
            namespace: &f.namespace,
            name: &f.name,
            uid: &f.uid,
        };
        let note = format!("its next Pods would not start: {}", messages.join("; "));
        let published = crate::events::publish(
            recorder,
            on,
            EventType::Warning,
            "ConfigBroken",
            "Audit",
            note,
        )
        .await;
        if published.is_ok() {
            warned.insert(key, Instant::now());
        }
    }
}

/// How long ago confgate last sent a `ConfigBroken` Event on each workload (by uid) of
/// `namespace`: one list of that namespace's Events by reason and reporter.
async fn sent_in(
    client: &Client,
    namespace: &str,
) -> Result<HashMap<String, Duration>, kube::Error> {
    use k8s_openapi::api::core::v1::Event;
    let api: Api<Event> = Api::namespaced(client.clone(), namespace);
    let params = ListParams::default().fields("reason=ConfigBroken,reportingComponent=confgate");
    let events = api.list(&params).await?.items;
    Ok(last_sent(&events, time::OffsetDateTime::now_utc()))
}

/// The age of the newest of `events` on each object uid, at `now`: the latest of its event
/// time, its series' last observation and its last timestamp.
fn last_sent(
    events: &[k8s_openapi::api::core::v1::Event],
    now: time::OffsetDateTime,
) -> HashMap<String, Duration> {
    let mut out: HashMap<String, Duration> = HashMap::new();
    for event in events {
        let Some(uid) = event.involved_object.uid.clone() else {
            continue;
        };
        let times = [
            event.event_time.as_ref().map(|t| t.0),
            event
                .series
                .as_ref()
                .and_then(|s| s.last_observed_time.as_ref())
                .map(|t| t.0),
            event.last_timestamp.as_ref().map(|t| t.0),
        ];
        let Some(latest) = times.into_iter().flatten().max() else {
            continue;
        };
        let seconds = (now.unix_timestamp() - latest.as_second()).max(0);
        let age = Duration::from_secs(u64::try_from(seconds).unwrap_or(0));
        out.entry(uid)
            .and_modify(|a| *a = (*a).min(age))
            .or_insert(age);
    }
    out
}

/// The findings as a table: NAMESPACE, KIND, NAME, POLICY, RESULT, MESSAGE.
pub fn table(audit: &Audit) -> String {
    let mut rows = vec![[
        "NAMESPACE".to_owned(),
        "KIND".into(),
        "NAME".into(),
        "POLICY".into(),
        "RESULT".into(),
        "MESSAGE".into(),
    ]];
    for f in &audit.findings {
        rows.push([
            f.namespace.clone(),
            f.kind.clone(),
            f.name.clone(),
            f.policy.clone(),
            f.result.to_owned(),
            f.message.clone(),
        ]);
    }
    let widths: Vec<usize> = (0..5)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in &rows {
        for (i, width) in widths.iter().enumerate() {
            out.push_str(&format!("{:<width$}  ", row[i]));
        }
        out.push_str(&row[5]);
        out.push('\n');
    }
    out.push_str(&format!(
        "{} workloads audited, {} violations\n",
        audit.workloads,
        audit.findings.len()
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_event_budget_reads_the_newest_time_of_each_workloads_events() {
        let event = |uid: &str, fields: Value| -> k8s_openapi::api::core::v1::Event {
            let mut e = json!({"metadata": {"name": "e", "namespace": "shop"}, "involvedObject": {"uid": uid}});
            for (k, v) in fields.as_object().unwrap() {
                e[k] = v.clone();
            }
            serde_json::from_value(e).unwrap()
        };
        let now = time::OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        let events = [
            // Sent 10 minutes ago (events.k8s.io: eventTime only).
            event("a", json!({"eventTime": "2027-01-15T07:50:00.000000Z"})),
            // Sent 2 hours ago, repeated (a series) 5 minutes ago.
            event(
                "b",
                json!({"eventTime": "2027-01-15T06:00:00.000000Z", "series": {"count": 2, "lastObservedTime": "2027-01-15T07:55:00.000000Z"}}),
            ),
            // An old core/v1 Event: lastTimestamp only, 3 hours ago; and a newer one for it.
            event("c", json!({"lastTimestamp": "2027-01-15T05:00:00Z"})),
            event("c", json!({"lastTimestamp": "2027-01-15T07:00:00Z"})),
            // No time at all, or no uid: nothing known.
            event("d", json!({})),
        ];
        let ages = last_sent(&events, now);
        let minutes = |uid: &str| ages.get(uid).map(|a| a.as_secs() / 60);
        assert_eq!(minutes("a"), Some(10));
        assert_eq!(minutes("b"), Some(5));
        assert_eq!(minutes("c"), Some(60));
        assert_eq!(minutes("d"), None);
        assert!(ages["a"] < WARN_EVERY && ages["c"] >= WARN_EVERY);
    }

    #[test]
    fn the_instance_label_names_the_installation_and_fits_a_label() {
        assert_eq!(
            Reporting::instance_of("confgate-system", "confgate-rollout"),
            "confgate-system.confgate-rollout"
        );
        let long = Reporting::instance_of(&"n".repeat(63), &"l".repeat(63));
        assert!(long.len() <= 63, "{long}");
        assert_ne!(
            long,
            Reporting::instance_of(&"n".repeat(63), &"m".repeat(63))
        );
    }

    fn finding(namespace: &str, name: String, result: &'static str) -> Finding {
        Finding {
            kind: "Deployment".into(),
            namespace: namespace.into(),
            name,
            uid: "u".into(),
            policy: "require-config-keys".into(),
            rule: "require-config-keys".into(),
            result,
            message: "m".into(),
        }
    }

    #[test]
    fn an_openreports_report_is_the_policy_report_with_its_api_and_a_source() {
        let mut audit = Audit::default();
        audit.passed.insert("shop".into(), 2);
        audit.findings.push(finding("shop", "web".into(), "fail"));
        let now = "2026-11-23T00:00:00Z";
        let wg = ReportFormat::PolicyReport.report(&audit, "shop", now);
        let open = ReportFormat::OpenReports.report(&audit, "shop", now);
        assert_eq!(
            (&wg["apiVersion"], &wg["kind"]),
            (&json!("wgpolicyk8s.io/v1alpha2"), &json!("PolicyReport"))
        );
        assert_eq!(
            (&open["apiVersion"], &open["kind"]),
            (&json!("openreports.io/v1alpha1"), &json!("Report"))
        );
        assert_eq!(open["source"], "confgate");
        assert_eq!(wg.get("source"), None);
        // The same results, summary and metadata (timestamps are the same second or one apart).
        for field in ["summary", "metadata"] {
            assert_eq!(open[field], wg[field], "{field}");
        }
        let strip = |r: &Value| {
            let mut r = r.clone();
            for result in r["results"].as_array_mut().unwrap() {
                result.as_object_mut().unwrap().remove("timestamp");
            }
            r["results"].clone()
        };
        assert_eq!(strip(&open), strip(&wg));
        assert_eq!(ReportFormat::OpenReports.resource().plural, "reports");
    }

    #[test]
    fn a_report_lists_at_most_max_results_and_counts_them_all() {
        let mut audit = Audit::default();
        audit.passed.insert("shop".into(), 7);
        for i in 0..=MAX_RESULTS {
            audit
                .findings
                .push(finding("shop", format!("w{i}"), "fail"));
        }
        audit.findings.push(finding("shop", "x".into(), "warn"));
        audit.findings.push(finding("other", "y".into(), "fail"));
        let report = policy_report(&audit, "shop", "2026-11-23T00:00:00Z");
        assert_eq!(
            report["summary"],
            json!({"pass": 7, "fail": MAX_RESULTS + 1, "warn": 1, "error": 0, "skip": 0})
        );
        assert_eq!(
            report["results"].as_array().map(Vec::len),
            Some(MAX_RESULTS)
        );
        assert_eq!(
            report["metadata"]["annotations"],
            json!({
                "confgate.dev/last-audit": "2026-11-23T00:00:00Z",
                "confgate.dev/results-truncated": format!("{} results, the first {MAX_RESULTS} listed", MAX_RESULTS + 2),
            })
        );
        assert_eq!(
            report["results"][0]["resources"][0]["apiVersion"],
            "apps/v1"
        );
        // A namespace within the bound says nothing of truncation.
        let other = policy_report(&audit, "other", "t");
        assert_eq!(
            other["metadata"]["annotations"],
            json!({"confgate.dev/last-audit": "t"})
        );
        assert_eq!(other["summary"]["fail"], 1);
    }
}
