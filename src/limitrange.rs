//! LimitRange semantics, ported from kubernetes `plugin/pkg/admission/limitranger/admission.go`
//! and `pkg/apis/core/v1/defaults.go`: the LimitRange item's own defaulting, default requests
//! and limits merged into containers (recorded as upstream's `kubernetes.io/limit-ranger` text),
//! and the min/max/maxLimitRequestRatio checks per Container and per Pod.

use crate::quantity::{Quantity, comparable, fits_milli};
use k8s_openapi::api::core::v1::{LimitRangeItem, LimitRangeSpec};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

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
                self.default.entry(k.clone()).or_insert(*v);
            }
            for (k, v) in &self.default {
                self.default_request.entry(k.clone()).or_insert(*v);
            }
            for (k, v) in &self.min {
                self.default_request.entry(k.clone()).or_insert(*v);
            }
        }
        self
    }

    /// Parses a LimitRange item from the API (already validated by the apiserver).
    pub fn from_api(item: &LimitRangeItem) -> Result<Self, String> {
        let list = |m: &Option<
            BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
        >|
         -> Result<ResourceList, String> {
            m.iter()
                .flatten()
                .map(|(k, v)| Ok((k.clone(), Quantity::parse(&v.0).map_err(|e| e.to_string())?)))
                .collect()
        };
        Ok(Item {
            kind: item.type_.clone(),
            default: list(&item.default)?,
            default_request: list(&item.default_request)?,
            max: list(&item.max)?,
            min: list(&item.min)?,
            max_limit_request_ratio: list(&item.max_limit_request_ratio)?,
        }
        .with_defaults())
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
    pub fn from_api(spec: &LimitRangeSpec) -> Result<Self, String> {
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
            requests.extend(item.default_request.iter().map(|(k, v)| (k.clone(), *v)));
            limits.extend(item.default.iter().map(|(k, v)| (k.clone(), *v)));
        }
        (requests, limits)
    }
}

/// The prefix of upstream's `kubernetes.io/limit-ranger` annotation.
pub const ANNOTATION_PREFIX: &str = "LimitRanger plugin set: ";

/// Pod defaulting (`SetDefaults_Pod`): for containers and init containers, every limit without a
/// request becomes the request too. The API does this for Pods but not for pod templates.
pub fn copy_limits_to_requests(spec: &mut Value) {
    for list in ["containers", "initContainers"] {
        for container in containers_mut(spec, list) {
            let Some(resources) = container
                .get_mut("resources")
                .and_then(Value::as_object_mut)
            else {
                continue;
            };
            let Some(limits) = resources
                .get("limits")
                .and_then(Value::as_object)
                .filter(|l| !l.is_empty())
                .cloned()
            else {
                continue;
            };
            let Some(requests) = entry_object(resources, "requests") else {
                continue;
            };
            for (k, v) in limits {
                if !requests.contains_key(&k) {
                    let canonical = quantity_of(&v).map_or(v, |q| Value::String(q.to_string()));
                    requests.insert(k, canonical);
                }
            }
        }
    }
}

/// Upstream's `mergePodResourceRequirements` for one LimitRange: fills missing requests and
/// limits of containers, then init containers; returns the annotation text parts.
pub fn merge_defaults(
    spec: &mut Value,
    requests: &ResourceList,
    limits: &ResourceList,
) -> Vec<String> {
    let mut notes = Vec::new();
    for (list, noun) in [
        ("containers", "container"),
        ("initContainers", "init container"),
    ] {
        for container in containers_mut(spec, list) {
            let name = container
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            if !lacks_any(container, "limits", limits)
                && !lacks_any(container, "requests", requests)
            {
                continue;
            }
            let Some(resources) = container
                .as_object_mut()
                .and_then(|c| entry_object(c, "resources"))
            else {
                continue;
            };
            let set_limits = fill(resources, "limits", limits);
            let set_requests = fill(resources, "requests", requests);
            if !set_requests.is_empty() {
                notes.push(format!(
                    "{} request for {noun} {name}",
                    set_requests.join(", ")
                ));
            }
            if !set_limits.is_empty() {
                notes.push(format!("{} limit for {noun} {name}", set_limits.join(", ")));
            }
        }
    }
    notes
}

fn lacks_any(container: &Value, field: &str, defaults: &ResourceList) -> bool {
    let present = container
        .get("resources")
        .and_then(|r| r.get(field))
        .and_then(Value::as_object);
    defaults
        .keys()
        .any(|k| !present.is_some_and(|p| p.contains_key(k)))
}

fn fill(resources: &mut Map<String, Value>, field: &str, defaults: &ResourceList) -> Vec<String> {
    if defaults.is_empty() {
        return Vec::new();
    }
    let mut set = Vec::new();
    let present = resources.get(field).and_then(Value::as_object);
    let missing: Vec<(&String, &Quantity)> = defaults
        .iter()
        .filter(|(k, _)| !present.is_some_and(|p| p.contains_key(*k)))
        .collect();
    if missing.is_empty() {
        return set;
    }
    let Some(target) = entry_object(resources, field) else {
        return set;
    };
    for (k, v) in missing {
        target.insert(k.clone(), Value::String(v.to_string()));
        set.push(k.clone());
    }
    set
}

/// The object at `map[key]`, created (or replacing a non-object) when needed. Always `Some`;
/// an `Option` only so that no code path can panic.
pub fn entry_object<'a>(
    map: &'a mut Map<String, Value>,
    key: &str,
) -> Option<&'a mut Map<String, Value>> {
    let slot = map
        .entry(key.to_owned())
        .or_insert_with(|| Value::Object(Map::new()));
    if !slot.is_object() {
        *slot = Value::Object(Map::new());
    }
    slot.as_object_mut()
}

fn containers_mut<'a>(spec: &'a mut Value, list: &str) -> impl Iterator<Item = &'a mut Value> {
    spec.get_mut(list)
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
        .filter(|c| c.is_object())
}

/// A quantity in an object: a string, or a bare number in a hand-written manifest.
pub fn quantity_of(v: &Value) -> Option<Quantity> {
    match v {
        Value::String(s) => Quantity::parse(s).ok(),
        Value::Number(n) => Quantity::parse(&n.to_string()).ok(),
        _ => None,
    }
}

/// A container's `resources.<field>` as quantities (unparseable values are left out: the
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

fn min_constraint(
    kind: &str,
    name: &str,
    enforced: &Quantity,
    requests: &ResourceList,
    limits: &ResourceList,
) -> Option<String> {
    let zero = Quantity::zero(crate::quantity::Format::DecimalSI);
    let (req, lim) = (requests.get(name), limits.get(name));
    let (r, l, e) = comparable(req.unwrap_or(&zero), lim.unwrap_or(&zero), enforced);
    match (req, lim) {
        (None, _) => Some(format!(
            "minimum {name} usage per {kind} is {enforced}.  No request is specified"
        )),
        (Some(req), _) if r < e => Some(format!(
            "minimum {name} usage per {kind} is {enforced}, but request is {req}"
        )),
        (_, Some(lim)) if l < e => Some(format!(
            "minimum {name} usage per {kind} is {enforced}, but limit is {lim}"
        )),
        _ => None,
    }
}

fn max_constraint(
    kind: &str,
    name: &str,
    enforced: &Quantity,
    requests: &ResourceList,
    limits: &ResourceList,
) -> Option<String> {
    let zero = Quantity::zero(crate::quantity::Format::DecimalSI);
    let (req, lim) = (requests.get(name), limits.get(name));
    let (r, l, e) = comparable(req.unwrap_or(&zero), lim.unwrap_or(&zero), enforced);
    match (req, lim) {
        (_, None) => Some(format!(
            "maximum {name} usage per {kind} is {enforced}.  No limit is specified"
        )),
        (_, Some(lim)) if l > e => Some(format!(
            "maximum {name} usage per {kind} is {enforced}, but limit is {lim}"
        )),
        (Some(req), _) if r > e => Some(format!(
            "maximum {name} usage per {kind} is {enforced}, but request is {req}"
        )),
        _ => None,
    }
}

fn ratio_constraint(
    kind: &str,
    name: &str,
    enforced: &Quantity,
    requests: &ResourceList,
    limits: &ResourceList,
) -> Option<String> {
    let zero = Quantity::zero(crate::quantity::Format::DecimalSI);
    let (req, lim) = (requests.get(name), limits.get(name));
    let (r, l, _) = comparable(req.unwrap_or(&zero), lim.unwrap_or(&zero), enforced);
    if req.is_none() || r == 0 {
        return Some(format!(
            "{name} max limit to request ratio per {kind} is {enforced}, but no request is specified or request is 0"
        ));
    }
    if lim.is_none() || l == 0 {
        return Some(format!(
            "{name} max limit to request ratio per {kind} is {enforced}, but no limit is specified or limit is 0"
        ));
    }
    let observed = l as f64 / r as f64;
    // l / r > max, exactly: at milli precision `l * 1000 > max_milli * r`.
    let exceeds = if fits_milli(enforced) {
        crate::quantity::ratio_exceeds(l * 1000, r, enforced.milli_value())
    } else {
        crate::quantity::ratio_exceeds(l, r, enforced.value())
    };
    exceeds.then(|| format!("{name} max limit to request ratio per {kind} is {enforced}, but provided ratio is {observed:.6}"))
}

/// Upstream's checks of one item against one requests/limits pair.
fn check(
    item: &Item,
    requests: &ResourceList,
    limits: &ResourceList,
    out: &mut Vec<String>,
    context: &str,
) {
    let kind = item.kind.as_str();
    let found = item
        .min
        .iter()
        .filter_map(|(k, v)| min_constraint(kind, k, v, requests, limits))
        .chain(
            item.max
                .iter()
                .filter_map(|(k, v)| max_constraint(kind, k, v, requests, limits)),
        )
        .chain(
            item.max_limit_request_ratio
                .iter()
                .filter_map(|(k, v)| ratio_constraint(kind, k, v, requests, limits)),
        );
    out.extend(found.map(|m| format!("{context}{m}")));
}

/// Quantities in the pod spec's `resources` that cannot be judged (malformed, or too large to
/// judge exactly): each is a violation, so a value confgate cannot read is never let through
/// as if it were absent.
pub fn unreadable_quantities(spec: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for c in crate::workload::containers(spec) {
        for field in ["requests", "limits"] {
            let entries = c
                .value
                .get("resources")
                .and_then(|r| r.get(field))
                .and_then(Value::as_object);
            for (resource, value) in entries.into_iter().flatten() {
                let text = match value {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                if let Err(error) = Quantity::parse(&text) {
                    out.push(format!(
                        "{} {:?}: {field}.{resource}: {error}",
                        c.kind.noun(),
                        c.name
                    ));
                }
            }
        }
    }
    out
}

/// Upstream's `PodValidateLimitFunc` over a pod spec: Container items against every container
/// and init container, Pod items against the pod's effective requests and limits.
pub fn validate_spec(range: &LimitRange, spec: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for item in &range.items {
        match item.kind.as_str() {
            "Container" => {
                for (list, noun) in [
                    ("containers", "container"),
                    ("initContainers", "init container"),
                ] {
                    for c in spec
                        .get(list)
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                    {
                        let name = c.get("name").and_then(Value::as_str).unwrap_or_default();
                        check(
                            item,
                            &resource_list(c, "requests"),
                            &resource_list(c, "limits"),
                            &mut out,
                            &format!("{noun} {name:?}: "),
                        );
                    }
                }
            }
            "Pod" => check(
                item,
                &pod_total(spec, "requests"),
                &pod_total(spec, "limits"),
                &mut out,
                "",
            ),
            _ => {}
        }
    }
    out
}

/// Upstream's `podRequests`/`podLimits`: the sum over containers and sidecars (init containers
/// with `restartPolicy: Always`), or the largest init container (plus the sidecars started
/// before it), whichever is larger, per resource.
pub fn pod_total(spec: &Value, field: &str) -> ResourceList {
    let mut total = ResourceList::new();
    for c in spec
        .get("containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        add_list(&mut total, &resource_list(c, field));
    }
    let mut sidecars = ResourceList::new();
    let mut init_max = ResourceList::new();
    for c in spec
        .get("initContainers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let own = resource_list(c, field);
        let effective = if c.get("restartPolicy").and_then(Value::as_str) == Some("Always") {
            add_list(&mut total, &own);
            add_list(&mut sidecars, &own);
            sidecars.clone()
        } else {
            let mut tmp = own;
            add_list(&mut tmp, &sidecars);
            tmp
        };
        max_list(&mut init_max, &effective);
    }
    max_list(&mut total, &init_max);
    total
}

fn add_list(list: &mut ResourceList, other: &ResourceList) {
    for (k, v) in other {
        list.entry(k.clone())
            .and_modify(|q| *q = q.add(v))
            .or_insert(*v);
    }
}

fn max_list(list: &mut ResourceList, other: &ResourceList) {
    for (k, v) in other {
        match list.get(k) {
            Some(existing) if v <= existing => {}
            _ => {
                list.insert(k.clone(), *v);
            }
        }
    }
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
            validate_spec(&range, &spec),
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
            validate_spec(&range, &spec),
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
        assert_eq!(pod_total(&spec, "requests")["cpu"].to_string(), "1100m");
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
        copy_limits_to_requests(&mut spec);
        assert_eq!(
            spec["containers"][0]["resources"]["requests"],
            json!({"cpu": "500m", "memory": "64Mi"})
        );
    }
}
