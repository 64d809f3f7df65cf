//! Editing pod specs as upstream does: Pod defaulting of requests from limits, and the
//! LimitRange defaults merged into containers.

use super::{POD_LEVEL_RESOURCES, ResourceList, Semantics, quantity_of};
use crate::quantity::Quantity;
use crate::workload::entry_object;
use serde_json::{Map, Value};

/// The prefix of upstream's `kubernetes.io/limit-ranger` annotation.
pub const ANNOTATION_PREFIX: &str = "LimitRanger plugin set: ";

/// Pod defaulting (`SetDefaults_Pod`): for containers and init containers, every limit without a
/// request becomes the request too; with pod-level resources, a pod-level CPU or memory limit
/// without a pod-level request becomes that request (`defaultPodRequests`). The API does this
/// for Pods but not for pod templates.
pub fn copy_limits_to_requests(spec: &mut Value, semantics: Semantics) {
    if semantics.pod_level_resources {
        default_pod_requests(spec);
    }
    for list in ["containers", "initContainers"] {
        for container in containers_mut(spec, list) {
            if let Some(resources) = container
                .get_mut("resources")
                .and_then(Value::as_object_mut)
            {
                copy_missing_requests(resources, |_| true);
            }
        }
    }
}

/// `defaultPodRequests` for CPU and memory: a pod-level limit without a pod-level request
/// becomes the request. (Upstream also defaults hugepages requests on releases that support
/// them at pod level; LimitRanger never reads those.)
fn default_pod_requests(spec: &mut Value) {
    if let Some(resources) = spec.get_mut("resources").and_then(Value::as_object_mut) {
        copy_missing_requests(resources, |name| POD_LEVEL_RESOURCES.contains(&name));
    }
}

/// In one `resources` object, each limit of a resource `copied` accepts becomes the request
/// when there is none, in canonical form (`requests` is created only when something is added).
fn copy_missing_requests(resources: &mut Map<String, Value>, copied: impl Fn(&str) -> bool) {
    let missing: Vec<(String, Value)> = resources
        .get("limits")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter(|(k, _)| copied(k))
        .filter(|(k, _)| {
            !resources
                .get("requests")
                .and_then(Value::as_object)
                .is_some_and(|r| r.contains_key(*k))
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if missing.is_empty() {
        return;
    }
    let Some(requests) = entry_object(resources, "requests") else {
        return;
    };
    for (k, v) in missing {
        let canonical = quantity_of(&v).map_or(v, |q| Value::String(q.to_string()));
        requests.insert(k, canonical);
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

fn containers_mut<'a>(spec: &'a mut Value, list: &str) -> impl Iterator<Item = &'a mut Value> {
    spec.get_mut(list)
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
        .filter(|c| c.is_object())
}
