//! LimitRange semantics, ported from kubernetes `plugin/pkg/admission/limitranger/admission.go`
//! and `pkg/apis/core/v1/defaults.go`. This module is the model (a LimitRange's items, their
//! own defaulting, and the [`Semantics`] that differ between Kubernetes releases);
//! [`defaults`] edits pod specs (default requests and limits merged into containers, recorded
//! as upstream's `kubernetes.io/limit-ranger` text); [`validate`] holds the
//! min/max/maxLimitRequestRatio checks per Container and per Pod.

mod defaults;
mod validate;

pub use defaults::{ANNOTATION_PREFIX, copy_limits_to_requests, merge_defaults};
pub use validate::{pod_total, unreadable_quantities, validate_spec};

use crate::quantity::{Quantity, QuantityError};
use k8s_openapi::api::core::v1::{LimitRangeItem, LimitRangeSpec};
use serde_json::Value;
use std::collections::BTreeMap;

/// How min, max and ratio compare quantities: the one behaviour that differs between the
/// LimitRanger of Kubernetes releases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Comparison {
    /// Current upstream (kubernetes/kubernetes#141348): exact comparisons (`Quantity.Cmp`), an
    /// exact ratio, and `ratioString` (six decimals, rounded half to even) in the message.
    #[default]
    Exact,
    /// Releases before it: every value rounded up to milli-units (to units when one is above
    /// 2^63/1000) before comparing, and the ratio printed from those. Values past 2^63, which
    /// those releases wrap, are judged exactly instead: a wrapped value is a wrong allow.
    Milli,
}

/// How a `type: Pod` item totals the containers: another behaviour that changed between releases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PodTotals {
    /// 1.27 and later (`podRequests`/`podLimits`): every container's values added exactly in
    /// the first one's format, sidecars counted, then the larger of that and each init
    /// container (plus the sidecars before it).
    #[default]
    Aggregate,
    /// 1.26 and before (`sum`): a resource only when every container sets it, added in
    /// milli-CPU or whole units (rounded up) and printed plainly (`3221225472`), then replaced
    /// by any init container's larger value.
    Sum,
}

/// The Kubernetes version or feature gate dependent parts of LimitRanger's judgement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Semantics {
    /// How quantities are compared.
    pub comparison: Comparison,
    /// How `type: Pod` items total the containers.
    pub pod_totals: PodTotals,
    /// Whether pod-level `spec.resources` (KEP-2837, the `PodLevelResources` feature gate)
    /// take the place of the containers' sum for `type: Pod` items.
    pub pod_level_resources: bool,
}

/// The first minor release whose LimitRanger compares quantities exactly
/// (kubernetes/kubernetes#141348, merged 2026-08-13, after the 1.37 code freeze).
pub const EXACT_COMPARISON_SINCE: u32 = 38;
/// The first minor release whose LimitRanger totals a pod with `podRequests`/`podLimits`.
pub const AGGREGATE_POD_TOTALS_SINCE: u32 = 27;

impl Semantics {
    /// LimitRanger as released in Kubernetes `1.<minor>`; the newest release when `None`.
    /// Pod-level resources are decided by the caller (a feature gate, not a version).
    pub fn of_release(minor: Option<u32>, pod_level_resources: bool) -> Self {
        let before = |since: u32| minor.is_some_and(|m| m < since);
        Self {
            comparison: if before(EXACT_COMPARISON_SINCE) {
                Comparison::Milli
            } else {
                Comparison::Exact
            },
            pod_totals: if before(AGGREGATE_POD_TOTALS_SINCE) {
                PodTotals::Sum
            } else {
                PodTotals::Aggregate
            },
            pod_level_resources,
        }
    }
}

impl Default for Semantics {
    /// The newest upstream: exact comparisons, pod-level resources on (beta since 1.34).
    fn default() -> Self {
        Self::of_release(None, true)
    }
}

/// The resources pod-level `spec.resources` may set (upstream's `supportedPodLevelResources`).
pub const POD_LEVEL_RESOURCES: [&str; 2] = ["cpu", "memory"];

/// Resource name → quantity.
pub type ResourceList = BTreeMap<String, Quantity>;

/// One `spec.limits[]` item, parsed and defaulted.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Item {
    /// `type`: `Container`, `Pod` (others are kept but have no effect on pods).
    pub kind: String,
    /// `default`: limits for containers that set none.
    pub default: ResourceList,
    /// `defaultRequest`: requests for containers that set none.
    pub default_request: ResourceList,
    /// `max`.
    pub max: ResourceList,
    /// `min`.
    pub min: ResourceList,
    /// `maxLimitRequestRatio`.
    pub max_limit_request_ratio: ResourceList,
}

impl Item {
    /// Upstream's `SetDefaults_LimitRangeItem`: for a Container item, a missing `default` comes
    /// from `max`, then a missing `defaultRequest` from `default`, then from `min`.
    pub fn with_defaults(mut self) -> Self {
        if self.kind == "Container" {
            for (k, v) in &self.max {
                self.default.entry(k.clone()).or_insert_with(|| v.clone());
            }
            for (k, v) in &self.default {
                self.default_request
                    .entry(k.clone())
                    .or_insert_with(|| v.clone());
            }
            for (k, v) in &self.min {
                self.default_request
                    .entry(k.clone())
                    .or_insert_with(|| v.clone());
            }
        }
        self
    }

    /// Parses a LimitRange item as stored (the apiserver validated and defaulted it; a manifest
    /// from a file goes through [`default_spec`] first).
    pub fn from_api(item: &LimitRangeItem) -> Result<Self, QuantityError> {
        let list = |m: &Option<
            BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
        >|
         -> Result<ResourceList, QuantityError> {
            m.iter()
                .flatten()
                .map(|(k, v)| Ok((k.clone(), Quantity::parse(&v.0)?)))
                .collect()
        };
        Ok(Item {
            kind: item.type_.clone(),
            default: list(&item.default)?,
            default_request: list(&item.default_request)?,
            max: list(&item.max)?,
            min: list(&item.min)?,
            max_limit_request_ratio: list(&item.max_limit_request_ratio)?,
        })
    }
}

/// The apiserver's `SetDefaults_LimitRangeItem` on a LimitRange as written in a manifest (the
/// API stores it defaulted, so a watched object needs none): see [`Item::with_defaults`].
pub fn default_spec(spec: &mut LimitRangeSpec) {
    for item in spec.limits.iter_mut().filter(|i| i.type_ == "Container") {
        for (k, v) in item.max.clone().into_iter().flatten() {
            item.default.get_or_insert_default().entry(k).or_insert(v);
        }
        for (k, v) in item.default.clone().into_iter().flatten() {
            item.default_request
                .get_or_insert_default()
                .entry(k)
                .or_insert(v);
        }
        for (k, v) in item.min.clone().into_iter().flatten() {
            item.default_request
                .get_or_insert_default()
                .entry(k)
                .or_insert(v);
        }
    }
}

/// A LimitRange: its items, in order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LimitRange {
    /// `spec.limits`.
    pub items: Vec<Item>,
}

impl LimitRange {
    /// Parses a LimitRange spec from the cluster.
    pub fn from_api(spec: &LimitRangeSpec) -> Result<Self, QuantityError> {
        Ok(Self {
            items: spec
                .limits
                .iter()
                .map(Item::from_api)
                .collect::<Result<_, _>>()?,
        })
    }

    /// Upstream's `defaultContainerResourceRequirements`: (requests, limits) from the Container
    /// items; a later item overrides an earlier one.
    pub fn default_requirements(&self) -> (ResourceList, ResourceList) {
        let mut requests = ResourceList::new();
        let mut limits = ResourceList::new();
        for item in self.items.iter().filter(|i| i.kind == "Container") {
            requests.extend(
                item.default_request
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone())),
            );
            limits.extend(item.default.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        (requests, limits)
    }
}

/// A quantity in an object: a string, or a bare number in a hand-written manifest.
pub fn quantity_of(v: &Value) -> Option<Quantity> {
    match v {
        Value::String(s) => Quantity::parse(s).ok(),
        Value::Number(n) => Quantity::parse(&n.to_string()).ok(),
        _ => None,
    }
}

/// An object's `resources.<field>` (a container's, or the pod's) as quantities (unparseable values are left out: the
/// apiserver rejects them anyway).
pub fn resource_list(container: &Value, field: &str) -> ResourceList {
    container
        .get("resources")
        .and_then(|r| r.get(field))
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), quantity_of(v)?)))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn list(pairs: &[(&str, &str)]) -> ResourceList {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), Quantity::parse(v).unwrap()))
            .collect()
    }

    fn container_item() -> Item {
        Item {
            kind: "Container".into(),
            max: list(&[("cpu", "600m"), ("memory", "600Mi")]),
            min: list(&[("memory", "200Mi")]),
            default: list(&[("cpu", "400m"), ("memory", "512Mi")]),
            default_request: list(&[("cpu", "300m"), ("memory", "256Mi")]),
            ..Default::default()
        }
    }

    #[test]
    fn item_defaulting_follows_upstream_order() {
        let item = Item {
            kind: "Container".into(),
            max: list(&[("cpu", "1")]),
            min: list(&[("memory", "64Mi")]),
            ..Default::default()
        }
        .with_defaults();
        assert_eq!(item.default, list(&[("cpu", "1")]));
        assert_eq!(
            item.default_request,
            list(&[("cpu", "1"), ("memory", "64Mi")])
        );
        let pod = Item {
            kind: "Pod".into(),
            max: list(&[("cpu", "1")]),
            ..Default::default()
        }
        .with_defaults();
        assert!(pod.default.is_empty());
    }

    #[test]
    fn max_messages_are_worded_like_upstream() {
        let range = LimitRange {
            items: vec![container_item()],
        };
        let spec = json!({"containers": [{"name": "web", "resources": {"limits": {"cpu": "800m", "memory": "512Mi"}, "requests": {"cpu": "300m", "memory": "100Mi"}}}]});
        assert_eq!(
            validate_spec(&range, &spec, Semantics::default()),
            vec![
                "container \"web\": minimum memory usage per Container is 200Mi, but request is 100Mi",
                "container \"web\": maximum cpu usage per Container is 600m, but limit is 800m",
            ]
        );
    }

    #[test]
    fn ratio_and_missing_values() {
        let item = Item {
            kind: "Container".into(),
            max_limit_request_ratio: list(&[("cpu", "2")]),
            ..Default::default()
        };
        let range = LimitRange { items: vec![item] };
        let spec = json!({"containers": [{"name": "a", "resources": {"limits": {"cpu": "1"}, "requests": {"cpu": "250m"}}}, {"name": "b"}]});
        assert_eq!(
            validate_spec(&range, &spec, Semantics::default()),
            vec![
                "container \"a\": cpu max limit to request ratio per Container is 2, but provided ratio is 4.000000",
                "container \"b\": cpu max limit to request ratio per Container is 2, but no request is specified or request is 0",
            ]
        );
    }

    #[test]
    fn pod_totals_count_sidecars_and_the_largest_init_container() {
        let spec = json!({
            "initContainers": [
                {"name": "sidecar", "restartPolicy": "Always", "resources": {"requests": {"cpu": "100m"}}},
                {"name": "init", "resources": {"requests": {"cpu": "1"}}}],
            "containers": [{"name": "a", "resources": {"requests": {"cpu": "200m"}}}, {"name": "b", "resources": {"requests": {"cpu": "300m"}}}]
        });
        assert_eq!(
            pod_total(&spec, "requests", Semantics::default())["cpu"].to_string(),
            "1100m"
        );
    }

    const MILLI: Semantics = Semantics {
        comparison: Comparison::Milli,
        pod_totals: PodTotals::Aggregate,
        pod_level_resources: false,
    };

    #[test]
    fn releases_before_1_27_total_a_pod_with_sum() {
        let v126 = Semantics::of_release(Some(26), false);
        assert_eq!(v126.comparison, Comparison::Milli);
        let spec = json!({
            "initContainers": [{"name": "init", "resources": {"requests": {"cpu": "250m"}, "limits": {"memory": "2Gi"}}}],
            "containers": [
                {"name": "a", "resources": {"requests": {"cpu": "100m", "memory": "1Gi"}, "limits": {"memory": "1Gi"}}},
                {"name": "b", "resources": {"requests": {"cpu": "0.1"}, "limits": {"memory": "999999999n"}}}]
        });
        let requests = pod_total(&spec, "requests", v126);
        // memory is not set by every container: left out; cpu summed in milli-CPU, then the
        // init container's larger value taken as it is.
        assert_eq!(requests.keys().collect::<Vec<_>>(), vec!["cpu"]);
        assert_eq!(requests["cpu"].to_string(), "250m");
        let limits = pod_total(&spec, "limits", v126);
        // 1Gi + 0.999999999 rounded up to 1: plain units; the init container's 2Gi is larger.
        assert_eq!(limits["memory"].to_string(), "2Gi");
        let no_init = json!({"containers": spec["containers"].clone()});
        assert_eq!(
            pod_total(&no_init, "limits", v126)["memory"].to_string(),
            "1073741825"
        );
        assert_eq!(
            pod_total(&no_init, "limits", Semantics::default())["memory"].to_string(),
            "1073741824999999999n"
        );
    }

    #[test]
    fn exact_comparisons_see_overruns_below_a_milli_unit_and_milli_ones_do_not() {
        let item = Item {
            kind: "Container".into(),
            max: list(&[("cpu", "100m")]),
            min: list(&[("memory", "1")]),
            ..Default::default()
        };
        let range = LimitRange { items: vec![item] };
        // 100.0001m rounds up to 101m in milli-units either way; 100000001n to 101m as well.
        // A request of 999999999n memory rounds up to 1 (unit) = the min in milli-units.
        let spec = json!({"containers": [{"name": "a", "resources": {
            "limits": {"cpu": "100000001n"}, "requests": {"memory": "999999999n"}}}]});
        assert_eq!(
            validate_spec(&range, &spec, Semantics::default()),
            vec![
                "container \"a\": minimum memory usage per Container is 1, but request is 999999999n",
                "container \"a\": maximum cpu usage per Container is 100m, but limit is 100000001n",
            ]
        );
        assert_eq!(
            validate_spec(&range, &spec, MILLI),
            vec![
                "container \"a\": maximum cpu usage per Container is 100m, but limit is 100000001n"
            ],
            "the milli-rounded limit 101m is still above 100m; the request rounds up to the min"
        );
        let within = json!({"containers": [{"name": "a", "resources": {
            "limits": {"cpu": "100000000n"}, "requests": {"memory": "999999999n"}}}]});
        assert!(validate_spec(&range, &within, MILLI).is_empty());
    }

    #[test]
    fn ratio_messages_follow_the_comparison() {
        let item = Item {
            kind: "Container".into(),
            max_limit_request_ratio: list(&[("cpu", "2")]),
            ..Default::default()
        };
        let range = LimitRange { items: vec![item] };
        // 2 / 0.333334 is 5.999988...; in milli-units the request rounds up to 334m, and
        // 2000 / 334 is 5.988024.
        let spec = json!({"containers": [{"name": "a", "resources": {
            "limits": {"cpu": "2"}, "requests": {"cpu": "333334u"}}}]});
        assert_eq!(
            validate_spec(&range, &spec, Semantics::default()),
            vec![
                "container \"a\": cpu max limit to request ratio per Container is 2, but provided ratio is 5.999988"
            ]
        );
        assert_eq!(
            validate_spec(&range, &spec, MILLI),
            vec![
                "container \"a\": cpu max limit to request ratio per Container is 2, but provided ratio is 5.988024"
            ]
        );
        // A request that milli rounding makes 1m but is not zero: both judge the ratio.
        let tiny = json!({"containers": [{"name": "a", "resources": {
            "limits": {"cpu": "1m"}, "requests": {"cpu": "1n"}}}]});
        assert_eq!(
            validate_spec(&range, &tiny, Semantics::default()),
            vec![
                "container \"a\": cpu max limit to request ratio per Container is 2, but provided ratio is 1000000.000000"
            ]
        );
        assert!(validate_spec(&range, &tiny, MILLI).is_empty());
    }

    #[test]
    fn pod_level_resources_replace_the_containers_sum_for_cpu_and_memory_only() {
        let spec = json!({
            "resources": {"requests": {"cpu": "2", "memory": "1Gi", "ephemeral-storage": "1Gi"}},
            "containers": [{"name": "a", "resources": {"requests": {"cpu": "100m", "ephemeral-storage": "100Mi"}}}]
        });
        let on = pod_total(&spec, "requests", Semantics::default());
        assert_eq!(on["cpu"].to_string(), "2");
        assert_eq!(on["memory"].to_string(), "1Gi");
        assert_eq!(on["ephemeral-storage"].to_string(), "100Mi");
        let off = pod_total(&spec, "requests", MILLI);
        assert_eq!(off["cpu"].to_string(), "100m");
        assert!(!off.contains_key("memory"));
    }

    #[test]
    fn pod_level_limits_default_the_pod_level_requests() {
        let mut spec = json!({"resources": {"limits": {"cpu": "1", "memory": "1Gi"}, "requests": {"cpu": "500m"}},
            "containers": [{"name": "a"}]});
        copy_limits_to_requests(&mut spec, Semantics::default());
        assert_eq!(
            spec["resources"]["requests"],
            json!({"cpu": "500m", "memory": "1Gi"})
        );
        let mut off = json!({"resources": {"limits": {"cpu": "1"}}, "containers": [{"name": "a"}]});
        copy_limits_to_requests(&mut off, MILLI);
        assert_eq!(off["resources"], json!({"limits": {"cpu": "1"}}));
    }

    #[test]
    fn merges_defaults_and_records_them_like_upstream() {
        let range = LimitRange {
            items: vec![container_item()],
        };
        let (requests, limits) = range.default_requirements();
        let mut spec = json!({"containers": [{"name": "side", "resources": {"requests": {"cpu": "100m"}}}], "initContainers": [{"name": "init", "resources": {"requests": {"memory": "250Mi"}}}]});
        let notes = merge_defaults(&mut spec, &requests, &limits);
        assert_eq!(
            notes.join("; "),
            "memory request for container side; cpu, memory limit for container side; cpu request for init container init; cpu, memory limit for init container init"
        );
        assert_eq!(
            spec["containers"][0]["resources"]["requests"],
            json!({"cpu": "100m", "memory": "256Mi"})
        );
        assert!(merge_defaults(&mut spec, &requests, &limits).is_empty());
        let mut untouched = json!({"containers": [{"name": "full", "resources": {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"cpu": "1", "memory": "1Gi"}}}, {"name": "bare"}]});
        let nothing = ResourceList::new();
        assert!(merge_defaults(&mut untouched, &nothing, &nothing).is_empty());
        assert_eq!(untouched["containers"][1], json!({"name": "bare"}));
    }

    #[test]
    fn copies_limits_into_missing_requests() {
        let mut spec = json!({"containers": [{"name": "a", "resources": {"limits": {"cpu": "0.5", "memory": "128Mi"}, "requests": {"memory": "64Mi"}}}]});
        copy_limits_to_requests(&mut spec, Semantics::default());
        assert_eq!(
            spec["containers"][0]["resources"]["requests"],
            json!({"cpu": "500m", "memory": "64Mi"})
        );
    }
}
