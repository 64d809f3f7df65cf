//! `quota-fit`: Pods and pod templates that a namespace's ResourceQuotas would refuse.
//!
//! Kubernetes checks quotas only when a Pod itself is created, so a Deployment whose Pods a
//! quota refuses is accepted, and its ReplicaSet then fails to create Pods (`FailedCreate`)
//! while the Deployment shows 0 ready replicas. This policy judges the template as the
//! ResourceQuota admission plugin will judge each of its Pods, after the defaults the
//! namespace's LimitRanges give them (the LimitRanger runs first, on every Pod):
//!
//! - which quotas apply: `pkg/quota/v1/evaluator/core/pods.go` `Matches` — the quota tracks a
//!   resource of Pods (`MatchingResources`: the compute resources, `pods`, `count/pods`,
//!   hugepages, `requests.<extended>`) and every scope matches (`Terminating`,
//!   `NotTerminating`, `BestEffort`, `NotBestEffort`, `PriorityClass` with its operators,
//!   `CrossNamespacePodAffinity`);
//! - refused outright, a violation: a container without a request or limit of CPU or memory
//!   the quota tracks (`Constraints`: "must specify limits.cpu for: app"), and one Pod's usage
//!   above the quota's `hard` whatever else runs ("exceeded quota: ...");
//! - refused depending on what runs now, a warning: one Pod above what is left (`hard` minus
//!   `used`), and the template's replicas together above it.
//!
//! For a Pod the messages are upstream's own; for a template they are prefixed with "its Pods
//! would be refused: ". Quotas come from a watch cache (`status.hard` and `status.used`, as
//! the plugin reads them; `spec.hard` until the quota controller has filled the status).

use super::{Capabilities, Context, Findings, Policy, PolicyError, SettingsError, parse_settings};
use crate::cluster::CacheKind;
use crate::limitrange::{LimitRange, ResourceList, Semantics, resource_list};
use crate::quantity::Quantity;
use crate::workload::{ContainerKind, WORKLOAD_KINDS, containers, pod_spec};
use k8s_openapi::api::core::v1::ResourceQuota;
use kube::core::admission::Operation;
use serde::Deserialize;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

fn yes() -> bool {
    true
}

/// `spec.settings` of a `quota-fit` policy.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct QuotaFitSettings {
    /// Judge Pods with the defaults the namespace's LimitRanges give them (default true), as
    /// the LimitRanger admission plugin sets them before the ResourceQuota plugin judges.
    #[serde(default = "yes")]
    pub from_namespace_limit_ranges: bool,
}

#[derive(Debug)]
pub struct QuotaFit {
    from_namespace_limit_ranges: bool,
}

impl QuotaFit {
    /// Validates settings.
    pub fn from_settings(settings: Value) -> Result<Self, SettingsError> {
        let settings: QuotaFitSettings = parse_settings(settings)?;
        Ok(Self {
            from_namespace_limit_ranges: settings.from_namespace_limit_ranges,
        })
    }
}

/// The resources of Pods that quotas track by name (`podResources`).
const POD_RESOURCES: [&str; 11] = [
    "count/pods",
    "cpu",
    "memory",
    "ephemeral-storage",
    "requests.cpu",
    "requests.memory",
    "requests.ephemeral-storage",
    "limits.cpu",
    "limits.memory",
    "limits.ephemeral-storage",
    "pods",
];

/// The resources that, when a quota tracks them, every container must set (`validationSet`).
const MUST_SPECIFY: [&str; 6] = [
    "cpu",
    "memory",
    "requests.cpu",
    "requests.memory",
    "limits.cpu",
    "limits.memory",
];

/// `helper.IsNativeResource`: no domain, or a `kubernetes.io` one.
fn is_native(name: &str) -> bool {
    !name.contains('/') || name.contains("kubernetes.io/")
}

/// `MatchingResources`: which of a quota's `hard` names it tracks for Pods.
pub fn matching_resources<'a>(hard: impl IntoIterator<Item = &'a str>) -> BTreeSet<String> {
    hard.into_iter()
        .filter(|name| {
            POD_RESOURCES.contains(name)
                || name.starts_with("hugepages-")
                || name.starts_with("requests.hugepages-")
                || (!is_native(name) && name.starts_with("requests."))
        })
        .map(str::to_owned)
        .collect()
}

/// `podComputeUsageHelper`: what requests and limits count as, by quota resource name.
fn usage_of(requests: &ResourceList, limits: &ResourceList) -> ResourceList {
    let mut out = ResourceList::new();
    out.insert("pods".into(), Quantity::from_units(1));
    for (base, request, limit) in [
        ("cpu", "requests.cpu", "limits.cpu"),
        ("memory", "requests.memory", "limits.memory"),
        (
            "ephemeral-storage",
            "requests.ephemeral-storage",
            "limits.ephemeral-storage",
        ),
    ] {
        if let Some(q) = requests.get(base) {
            out.insert(base.into(), q.clone());
            out.insert(request.into(), q.clone());
        }
        if let Some(q) = limits.get(base) {
            out.insert(limit.into(), q.clone());
        }
    }
    for (name, q) in requests {
        if name.starts_with("hugepages-") {
            out.insert(name.clone(), q.clone());
            out.insert(format!("requests.{name}"), q.clone());
        } else if !is_native(name) && !name.starts_with("requests.") {
            out.insert(format!("requests.{name}"), q.clone());
        }
    }
    out
}

/// `PodUsageFunc` for a new Pod: one object, and the Pod's requests and limits (containers,
/// sidecars and the largest init container, as the scheduler counts them).
pub fn pod_usage(spec: &Value, semantics: Semantics) -> ResourceList {
    let requests = crate::limitrange::pod_total(spec, "requests", semantics);
    let limits = crate::limitrange::pod_total(spec, "limits", semantics);
    let mut usage = usage_of(&requests, &limits);
    usage.insert("count/pods".into(), Quantity::from_units(1));
    usage
}

/// `Constraints`: "must specify limits.cpu for: app; requests.memory for: app,sidecar", when a
/// container (or init container) lacks a CPU or memory request or limit the quota tracks.
pub fn constraints(tracked: &BTreeSet<String>, spec: &Value) -> Option<String> {
    let required: BTreeSet<&str> = tracked
        .iter()
        .map(String::as_str)
        .filter(|r| MUST_SPECIFY.contains(r))
        .collect();
    let mut missing: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    for c in containers(spec)
        .iter()
        .filter(|c| c.kind != ContainerKind::Ephemeral)
    {
        let usage = usage_of(
            &resource_list(c.value, "requests"),
            &resource_list(c.value, "limits"),
        );
        for r in &required {
            if !usage.contains_key(*r) {
                missing.entry(r).or_default().insert(c.name.to_owned());
            }
        }
    }
    if missing.is_empty() {
        return None;
    }
    let parts: Vec<String> = missing
        .iter()
        .map(|(r, names)| {
            format!(
                "{r} for: {}",
                names.iter().cloned().collect::<Vec<_>>().join(",")
            )
        })
        .collect();
    Some(format!("must specify {}", parts.join("; ")))
}

/// `prettyPrint`: `limits.cpu=2,requests.memory=1Gi`, sorted by name.
fn pretty(list: &ResourceList) -> String {
    list.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn mask(list: &ResourceList, names: &BTreeSet<String>) -> ResourceList {
    list.iter()
        .filter(|(k, _)| names.contains(*k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// A quota's `status.hard`/`status.used` (or `spec.hard` before its status is filled), as
/// quantities; names with a value that cannot be read are left out.
fn list_of(
    map: Option<&BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>>,
) -> ResourceList {
    map.into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.clone(), Quantity::parse(&v.0).ok()?)))
        .collect()
}

/// `isBestEffort`: no container (or init container, or the pod itself) requests or limits CPU
/// or memory above zero.
fn best_effort(spec: &Value) -> bool {
    let positive = |list: &ResourceList| {
        ["cpu", "memory"]
            .iter()
            .any(|r| list.get(*r).is_some_and(|q| q.signum() > 0))
    };
    // The pod-level `resources` sit where a container's do.
    let pod_level =
        positive(&resource_list(spec, "requests")) || positive(&resource_list(spec, "limits"));
    !pod_level
        && containers(spec)
            .iter()
            .filter(|c| c.kind != ContainerKind::Ephemeral)
            .all(|c| {
                !positive(&resource_list(c.value, "requests"))
                    && !positive(&resource_list(c.value, "limits"))
            })
}

/// `usesCrossNamespacePodAffinity`: a pod (anti-)affinity term naming namespaces or a
/// namespace selector.
fn cross_namespace_affinity(spec: &Value) -> bool {
    let cross = |term: &Value| {
        term.get("namespaces")
            .and_then(Value::as_array)
            .is_some_and(|n| !n.is_empty())
            || term.get("namespaceSelector").is_some_and(|s| !s.is_null())
    };
    ["podAffinity", "podAntiAffinity"].iter().any(|kind| {
        let Some(affinity) = spec.pointer(&format!("/affinity/{kind}")) else {
            return false;
        };
        let required = affinity
            .get("requiredDuringSchedulingIgnoredDuringExecution")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .any(cross);
        let preferred = affinity
            .get("preferredDuringSchedulingIgnoredDuringExecution")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|w| w.get("podAffinityTerm"))
            .any(cross);
        required || preferred
    })
}

/// `podMatchesScopeFunc` for one scope selector requirement.
fn scope_matches(scope: &str, operator: &str, values: &[String], spec: &Value) -> bool {
    match scope {
        "Terminating" | "NotTerminating" => {
            let terminating = spec
                .get("activeDeadlineSeconds")
                .and_then(Value::as_i64)
                .is_some_and(|s| s >= 0);
            terminating == (scope == "Terminating")
        }
        "BestEffort" => best_effort(spec),
        "NotBestEffort" => !best_effort(spec),
        "PriorityClass" => {
            let class = spec
                .get("priorityClassName")
                .and_then(Value::as_str)
                .unwrap_or_default();
            // A label selector on {"PriorityClass": class} (no label when there is no class).
            match operator {
                "Exists" => !class.is_empty(),
                "DoesNotExist" => class.is_empty(),
                "In" => !class.is_empty() && values.iter().any(|v| v == class),
                "NotIn" => class.is_empty() || !values.iter().any(|v| v == class),
                _ => false,
            }
        }
        "CrossNamespacePodAffinity" => cross_namespace_affinity(spec),
        _ => false,
    }
}

/// `generic.Matches`: the quota tracks a resource of Pods, and the Pod is in every scope.
fn applies(quota: &ResourceQuota, hard: &ResourceList, spec: &Value) -> bool {
    if matching_resources(hard.keys().map(String::as_str)).is_empty() {
        return false;
    }
    let Some(quota_spec) = &quota.spec else {
        return true;
    };
    let scopes = quota_spec
        .scopes
        .iter()
        .flatten()
        .all(|scope| scope_matches(scope, "Exists", &[], spec));
    let selected = quota_spec
        .scope_selector
        .as_ref()
        .and_then(|s| s.match_expressions.as_ref())
        .into_iter()
        .flatten()
        .all(|e| {
            scope_matches(
                &e.scope_name,
                &e.operator,
                e.values.as_deref().unwrap_or_default(),
                spec,
            )
        });
    scopes && selected
}

/// How many Pods of a workload run at once (what `replicas × Pod` multiplies).
fn replicas(kind: &str, object: &Value) -> u32 {
    let at = |p: &str| object.pointer(p).and_then(Value::as_i64);
    let n = match kind {
        "Job" => at("/spec/parallelism"),
        "CronJob" => at("/spec/jobTemplate/spec/parallelism"),
        "DaemonSet" | "Pod" => Some(1),
        _ => at("/spec/replicas"),
    };
    u32::try_from(n.unwrap_or(1).clamp(0, 10_000)).unwrap_or(1)
}

/// What one quota says of one Pod (or each Pod of a template).
#[derive(Debug, Default, PartialEq)]
pub struct Verdict {
    /// Refused outright: upstream's message.
    pub refused: Option<String>,
    /// Refused depending on what runs now.
    pub warnings: Vec<String>,
}

/// Judges a Pod spec against one quota, as the ResourceQuota plugin would; `pods` is how many
/// such Pods the object makes (1 for a Pod).
pub fn judge(quota: &ResourceQuota, spec: &Value, semantics: Semantics, pods: u32) -> Verdict {
    let name = quota.metadata.name.as_deref().unwrap_or_default();
    let status = quota.status.as_ref();
    let mut hard = list_of(status.and_then(|s| s.hard.as_ref()));
    if hard.is_empty() {
        hard = list_of(quota.spec.as_ref().and_then(|s| s.hard.as_ref()));
    }
    let used = list_of(status.and_then(|s| s.used.as_ref()));
    let mut verdict = Verdict::default();
    if !applies(quota, &hard, spec) {
        return verdict;
    }
    let tracked = matching_resources(hard.keys().map(String::as_str));
    if let Some(missing) = constraints(&tracked, spec) {
        verdict.refused = Some(format!("failed quota: {name}: {missing}"));
        return verdict;
    }
    let requested: ResourceList = mask(&pod_usage(spec, semantics), &tracked)
        .into_iter()
        .filter(|(_, q)| !q.is_zero())
        .collect();
    let used_of = |k: &str| used.get(k).cloned().unwrap_or(Quantity::from_units(0));
    // The tracked resources for which `need` (of a resource's name and one Pod's request)
    // is above `hard`.
    let over = |need: &dyn Fn(&str, &Quantity) -> Quantity| -> BTreeSet<String> {
        requested
            .iter()
            .filter(|(k, q)| hard.get(*k).is_some_and(|h| need(k, q) > *h))
            .map(|(k, _)| k.clone())
            .collect()
    };
    let message = |exceeded: &BTreeSet<String>| {
        format!(
            "exceeded quota: {name}, requested: {}, used: {}, limited: {}",
            pretty(&mask(&requested, exceeded)),
            pretty(&mask(&used, exceeded)),
            pretty(&mask(&hard, exceeded))
        )
    };
    let alone = over(&|_, q| q.clone());
    if !alone.is_empty() {
        verdict.refused = Some(message(&alone));
        return verdict;
    }
    let now = over(&|k, q| used_of(k).add(q));
    if !now.is_empty() {
        verdict.warnings.push(format!(
            "refused while the namespace uses what it does now: {}",
            message(&now)
        ));
        return verdict;
    }
    if pods > 1 {
        let together = over(&|k, q| used_of(k).add(&times(q, pods)));
        if !together.is_empty() {
            let need: ResourceList = mask(&requested, &together)
                .into_iter()
                .map(|(k, q)| (k, times(&q, pods)))
                .collect();
            verdict.warnings.push(format!(
                "{pods} Pods together exceed quota {name}: requested: {}, used: {}, limited: {} (Pods beyond it fail to be created)",
                pretty(&need),
                pretty(&mask(&used, &together)),
                pretty(&mask(&hard, &together))
            ));
        }
    }
    verdict
}

/// `q` added `n` times (exact, as upstream's `Quantity.Add`).
fn times(q: &Quantity, n: u32) -> Quantity {
    (0..n).fold(Quantity::from_units(0), |total, _| total.add(q))
}

impl Policy for QuotaFit {
    fn capabilities(&self) -> Capabilities {
        Capabilities::Validate
    }

    fn kinds(&self) -> Option<&'static [&'static str]> {
        Some(WORKLOAD_KINDS.as_slice())
    }

    fn fails_open(&self) -> bool {
        // Advice about what a later admission will refuse: never worth blocking writes for
        // while confgate is down (the quota plugin still judges every Pod).
        true
    }

    fn validate(
        &self,
        cx: &Context,
        object: &Value,
        out: &mut Findings,
    ) -> Result<(), PolicyError> {
        let kind = cx.request.kind.kind.as_str();
        // Upstream judges a Pod when it is created; a template whenever it is written.
        if kind == "Pod" && cx.request.operation != Operation::Create {
            return Ok(());
        }
        let Some(spec) = pod_spec(kind, object) else {
            return Ok(());
        };
        let Some(quotas) = cx.cluster.resource_quotas(cx.namespace()) else {
            // Offline, the reviewed input is the whole story: no ResourceQuota in it, none
            // to judge by. Live, a cache that cannot answer is said.
            if !cx.settled {
                out.warn(format!(
                    "ResourceQuotas not checked: {}",
                    cx.cluster.why_unknown(CacheKind::ResourceQuotas)
                ));
            }
            return Ok(());
        };
        if quotas.is_empty() {
            return Ok(());
        }
        let mut spec = spec.clone();
        let release = cx.cluster.server_minor_version();
        let semantics =
            Semantics::of_release(release, spec.get("resources").is_some_and(|r| !r.is_null()));
        // A Pod's own defaulting copies limits into missing requests; then the LimitRanger
        // fills what the namespace's LimitRanges default.
        let ranges = if self.from_namespace_limit_ranges {
            self.ranges(cx, out)
        } else {
            Vec::new()
        };
        super::limitrange_defaults::apply(&mut spec, &ranges, semantics);
        let pods = if kind == "Pod" || cx.request.operation == Operation::Update {
            // An update rolls one new Pod at a time beside the running ones (maxSurge).
            1
        } else {
            replicas(kind, object)
        };
        for quota in quotas {
            let verdict = judge(&quota, &spec, semantics, pods);
            let prefix = if kind == "Pod" {
                ""
            } else {
                "its Pods would be refused: "
            };
            if let Some(refused) = verdict.refused {
                out.violation(format!("{prefix}{refused}"));
            }
            for warning in verdict.warnings {
                out.warn(format!("{prefix}{warning}"));
            }
        }
        Ok(())
    }
}

impl QuotaFit {
    /// The namespace's LimitRanges whose defaults each Pod gets (those that cannot be read are
    /// left out, as the LimitRanger leaves them).
    fn ranges(&self, cx: &Context, out: &mut Findings) -> Vec<LimitRange> {
        match cx.cluster.limit_ranges(cx.namespace()) {
            Some(found) => found
                .iter()
                .filter_map(|s| LimitRange::from_api(s).ok())
                .collect(),
            None => {
                out.warn(format!(
                    "judged without the namespace's LimitRange defaults: {}",
                    cx.cluster.why_unknown(CacheKind::LimitRanges)
                ));
                Vec::new()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::testing::{cluster, validate};
    use serde_json::json;

    fn quota(yaml: &str) -> String {
        format!(
            "apiVersion: v1\nkind: ResourceQuota\nmetadata: {{name: compute, namespace: default}}\n{yaml}"
        )
    }

    fn pod(resources: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "default"},
            "spec": {"containers": [{"name": "app", "image": "x", "resources": resources}]}})
    }

    fn deployment(replicas: i64, resources: Value) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d", "namespace": "default"},
            "spec": {"replicas": replicas, "template": {"spec": {"containers": [{"name": "app", "image": "x", "resources": resources}]}}}})
    }

    fn policy() -> QuotaFit {
        QuotaFit::from_settings(json!({})).unwrap()
    }

    #[test]
    fn rejects_a_pod_without_a_tracked_limit_in_upstreams_words() {
        let state = cluster(&quota(
            "spec: {hard: {limits.cpu: '2', requests.memory: 1Gi}}\nstatus: {hard: {limits.cpu: '2', requests.memory: 1Gi}, used: {limits.cpu: '0', requests.memory: '0'}}\n",
        ));
        let out = validate(&policy(), pod(json!({})), &state);
        assert_eq!(
            out.violations,
            vec![
                "failed quota: compute: must specify limits.cpu for: app; requests.memory for: app"
            ]
        );
        let out = validate(
            &policy(),
            deployment(3, json!({"limits": {"cpu": "1"}})),
            &state,
        );
        assert_eq!(
            out.violations,
            vec![
                "its Pods would be refused: failed quota: compute: must specify requests.memory for: app"
            ]
        );
    }

    #[test]
    fn rejects_one_pod_above_hard_and_warns_of_what_depends_on_usage() {
        let state = cluster(&quota(
            "spec: {hard: {limits.cpu: '2'}}\nstatus: {hard: {limits.cpu: '2'}, used: {limits.cpu: 1500m}}\n",
        ));
        let out = validate(
            &policy(),
            deployment(1, json!({"limits": {"cpu": "3"}})),
            &state,
        );
        assert_eq!(
            out.violations,
            vec![
                "its Pods would be refused: exceeded quota: compute, requested: limits.cpu=3, used: limits.cpu=1500m, limited: limits.cpu=2"
            ]
        );
        let out = validate(
            &policy(),
            deployment(1, json!({"limits": {"cpu": "1"}})),
            &state,
        );
        assert!(out.violations.is_empty());
        assert_eq!(
            out.warnings,
            vec![
                "its Pods would be refused: refused while the namespace uses what it does now: exceeded quota: compute, requested: limits.cpu=1, used: limits.cpu=1500m, limited: limits.cpu=2"
            ]
        );
        let state = cluster(&quota(
            "status: {hard: {limits.cpu: '2', pods: '10'}, used: {limits.cpu: '0', pods: '0'}}\n",
        ));
        let out = validate(
            &policy(),
            deployment(3, json!({"limits": {"cpu": "1"}})),
            &state,
        );
        assert!(out.violations.is_empty());
        assert_eq!(
            out.warnings,
            vec![
                "its Pods would be refused: 3 Pods together exceed quota compute: requested: limits.cpu=3, used: limits.cpu=0, limited: limits.cpu=2 (Pods beyond it fail to be created)"
            ]
        );
    }

    #[test]
    fn namespace_limit_range_defaults_count_before_the_quota_judges() {
        let state = cluster(&format!(
            "{}---\napiVersion: v1\nkind: LimitRange\nmetadata: {{name: lr, namespace: default}}\nspec: {{limits: [{{type: Container, default: {{cpu: 500m}}}}]}}\n",
            quota("status: {hard: {limits.cpu: '2', requests.cpu: '2'}, used: {}}\n")
        ));
        // The default limit fills limits.cpu and, copied, requests.cpu.
        let out = validate(&policy(), pod(json!({})), &state);
        assert!(out.is_empty(), "{out:?}");
        let off = QuotaFit::from_settings(json!({"fromNamespaceLimitRanges": false})).unwrap();
        assert_eq!(
            validate(&off, pod(json!({})), &state).violations,
            vec!["failed quota: compute: must specify limits.cpu for: app; requests.cpu for: app"]
        );
        // A limit alone stands for the request too (a Pod's own defaulting).
        assert!(validate(&off, pod(json!({"limits": {"cpu": "1"}})), &state).is_empty());
    }

    #[test]
    fn scopes_decide_which_quotas_apply() {
        // `pods: 0` refuses every Pod the quota applies to.
        let scoped = |scopes: &str| {
            cluster(&quota(&format!(
                "spec: {{hard: {{pods: '0'}}, {scopes}}}\nstatus: {{hard: {{pods: '0'}}, used: {{pods: '0'}}}}\n"
            )))
        };
        let bare = pod(json!({}));
        let mut terminating = pod(json!({"limits": {"memory": "2Gi"}}));
        terminating["spec"]["activeDeadlineSeconds"] = json!(30);
        let mut priority = pod(json!({"limits": {"memory": "2Gi"}}));
        priority["spec"]["priorityClassName"] = json!("high");
        let mut cross = pod(json!({}));
        cross["spec"]["affinity"] = json!({"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 1, "podAffinityTerm": {"topologyKey": "k", "namespaceSelector": {}}}]}});
        let cases: Vec<(&str, &Value, bool)> = vec![
            ("scopes: [BestEffort]", &bare, true),
            ("scopes: [BestEffort]", &terminating, false),
            ("scopes: [NotBestEffort]", &bare, false),
            ("scopes: [NotBestEffort]", &terminating, true),
            ("scopes: [Terminating]", &terminating, true),
            ("scopes: [Terminating]", &bare, false),
            ("scopes: [NotTerminating]", &terminating, false),
            ("scopes: [NotTerminating, BestEffort]", &bare, true),
            (
                "scopeSelector: {matchExpressions: [{scopeName: PriorityClass, operator: In, values: [high]}]}",
                &priority,
                true,
            ),
            (
                "scopeSelector: {matchExpressions: [{scopeName: PriorityClass, operator: In, values: [low]}]}",
                &priority,
                false,
            ),
            (
                "scopeSelector: {matchExpressions: [{scopeName: PriorityClass, operator: NotIn, values: [high]}]}",
                &priority,
                false,
            ),
            (
                "scopeSelector: {matchExpressions: [{scopeName: PriorityClass, operator: NotIn, values: [high]}]}",
                &bare,
                true,
            ),
            (
                "scopeSelector: {matchExpressions: [{scopeName: PriorityClass, operator: Exists}]}",
                &bare,
                false,
            ),
            (
                "scopeSelector: {matchExpressions: [{scopeName: PriorityClass, operator: DoesNotExist}]}",
                &bare,
                true,
            ),
            ("scopes: [CrossNamespacePodAffinity]", &bare, false),
            ("scopes: [CrossNamespacePodAffinity]", &cross, true),
        ];
        for (scopes, object, refused) in cases {
            let out = validate(&policy(), object.clone(), &scoped(scopes));
            assert_eq!(!out.violations.is_empty(), refused, "{scopes}: {out:?}");
        }
    }

    #[test]
    fn extended_resources_hugepages_and_counts_are_tracked() {
        assert_eq!(
            matching_resources([
                "requests.nvidia.com/gpu",
                "nvidia.com/gpu",
                "hugepages-2Mi",
                "count/pods",
                "services",
                "requests.storage"
            ]),
            ["count/pods", "hugepages-2Mi", "requests.nvidia.com/gpu"]
                .iter()
                .map(|s| s.to_string())
                .collect()
        );
        let state = cluster(&quota(
            "status: {hard: {requests.nvidia.com/gpu: '1', pods: '0'}, used: {}}\n",
        ));
        let out = validate(
            &policy(),
            pod(json!({"requests": {"nvidia.com/gpu": "2"}, "limits": {"nvidia.com/gpu": "2"}})),
            &state,
        );
        assert_eq!(
            out.violations,
            vec![
                "exceeded quota: compute, requested: pods=1,requests.nvidia.com/gpu=2, used: , limited: pods=0,requests.nvidia.com/gpu=1"
            ]
        );
    }

    #[test]
    fn a_pod_update_is_not_judged_and_no_quota_is_no_finding() {
        let state =
            cluster("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x, namespace: default}\n");
        assert!(validate(&policy(), pod(json!({})), &state).is_empty());
    }
}
