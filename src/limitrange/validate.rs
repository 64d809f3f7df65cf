//! Upstream's `PodValidateLimitFunc`: min, max and maxLimitRequestRatio of each item against
//! every container (type `Container`) or the pod's effective requests and limits (type `Pod`),
//! with upstream's messages, compared as the [`Semantics`] say.

use super::{
    Comparison, Item, LimitRange, POD_LEVEL_RESOURCES, PodTotals, ResourceList, Semantics,
};
use super::{quantity_of, resource_list};
use crate::quantity::{
    Quantity, comparable, exceeds_ratio, fits_milli, ratio_string, rounded_ratio_exceeds,
};
use crate::workload::{ContainerKind, containers};
use serde_json::Value;
use std::cmp::Ordering;

/// How the request and the limit compare with the enforced value: exactly, or as releases
/// before 1.38 saw them (rounded to milli, or unit, values) when all three fit 128 bits.
enum Seen {
    Exact,
    Rounded(i128, i128, i128),
}

impl Seen {
    fn of(
        comparison: Comparison,
        request: Option<&Quantity>,
        limit: Option<&Quantity>,
        enforced: &Quantity,
    ) -> Self {
        let zero = Quantity::zero(crate::quantity::Format::DecimalSI);
        let (request, limit) = (request.unwrap_or(&zero), limit.unwrap_or(&zero));
        match comparison {
            Comparison::Milli => comparable(request, limit, enforced)
                .map_or(Seen::Exact, |(r, l, e)| Seen::Rounded(r, l, e)),
            Comparison::Exact => Seen::Exact,
        }
    }
}

/// One constraint of one item on one resource.
struct Check<'a> {
    kind: &'a str,
    name: &'a str,
    enforced: &'a Quantity,
    request: Option<&'a Quantity>,
    limit: Option<&'a Quantity>,
    comparison: Comparison,
}

impl Check<'_> {
    /// How the request and the limit compare with the enforced value (absent: zero).
    fn orders(&self) -> (Ordering, Ordering) {
        let zero = Quantity::zero(crate::quantity::Format::DecimalSI);
        match Seen::of(self.comparison, self.request, self.limit, self.enforced) {
            Seen::Rounded(r, l, e) => (r.cmp(&e), l.cmp(&e)),
            Seen::Exact => (
                self.request.unwrap_or(&zero).cmp(self.enforced),
                self.limit.unwrap_or(&zero).cmp(self.enforced),
            ),
        }
    }

    fn min(&self) -> Option<String> {
        let Check {
            kind,
            name,
            enforced,
            ..
        } = *self;
        let (r, l) = self.orders();
        match (self.request, self.limit) {
            (None, _) => Some(format!(
                "minimum {name} usage per {kind} is {enforced}.  No request is specified"
            )),
            (Some(req), _) if r.is_lt() => Some(format!(
                "minimum {name} usage per {kind} is {enforced}, but request is {req}"
            )),
            (_, Some(lim)) if l.is_lt() => Some(format!(
                "minimum {name} usage per {kind} is {enforced}, but limit is {lim}"
            )),
            _ => None,
        }
    }

    fn max(&self) -> Option<String> {
        let Check {
            kind,
            name,
            enforced,
            ..
        } = *self;
        let (r, l) = self.orders();
        match (self.request, self.limit) {
            (_, None) => Some(format!(
                "maximum {name} usage per {kind} is {enforced}.  No limit is specified"
            )),
            (_, Some(lim)) if l.is_gt() => Some(format!(
                "maximum {name} usage per {kind} is {enforced}, but limit is {lim}"
            )),
            (Some(req), _) if r.is_gt() => Some(format!(
                "maximum {name} usage per {kind} is {enforced}, but request is {req}"
            )),
            _ => None,
        }
    }

    fn ratio(&self) -> Option<String> {
        let Check {
            kind,
            name,
            enforced,
            ..
        } = *self;
        let seen = Seen::of(self.comparison, self.request, self.limit, enforced);
        let (r_zero, l_zero) = match seen {
            Seen::Rounded(r, l, _) => (r == 0, l == 0),
            Seen::Exact => (
                self.request.is_none_or(Quantity::is_zero),
                self.limit.is_none_or(Quantity::is_zero),
            ),
        };
        let prefix = format!("{name} max limit to request ratio per {kind} is {enforced}, but");
        let Some(req) = self.request.filter(|_| !r_zero) else {
            return Some(format!("{prefix} no request is specified or request is 0"));
        };
        let Some(lim) = self.limit.filter(|_| !l_zero) else {
            return Some(format!("{prefix} no limit is specified or limit is 0"));
        };
        match seen {
            Seen::Exact => exceeds_ratio(lim, req, enforced)
                .then(|| format!("{prefix} provided ratio is {}", ratio_string(lim, req))),
            Seen::Rounded(r, l, _) => {
                // Those releases divide the rounded values as floats and print them with %f.
                let observed = l as f64 / r as f64;
                // l / r > max, exactly: at milli precision `l * 1000 > max_milli * r`.
                let exceeds = if fits_milli(enforced) {
                    rounded_ratio_exceeds(l * 1000, r, enforced.milli_value())
                } else {
                    rounded_ratio_exceeds(l, r, enforced.value())
                };
                exceeds.then(|| format!("{prefix} provided ratio is {observed:.6}"))
            }
        }
    }
}

/// Upstream's checks of one item against one requests/limits pair.
fn check<'a>(
    item: &'a Item,
    requests: &'a ResourceList,
    limits: &'a ResourceList,
    comparison: Comparison,
    out: &mut Vec<String>,
    context: &str,
) {
    let check = |resource: &'a str, enforced: &'a Quantity| Check {
        kind: &item.kind,
        name: resource,
        enforced,
        request: requests.get(resource),
        limit: limits.get(resource),
        comparison,
    };
    let found = (item.min.iter().filter_map(|(r, e)| check(r, e).min()))
        .chain(item.max.iter().filter_map(|(r, e)| check(r, e).max()))
        .chain(
            item.max_limit_request_ratio
                .iter()
                .filter_map(|(r, e)| check(r, e).ratio()),
        );
    out.extend(found.map(|m| format!("{context}{m}")));
}

/// Quantities in the pod spec's `resources` (the containers' and the pod's own) that cannot be
/// judged (malformed, or too large to judge exactly): each is a violation, so a value confgate
/// cannot read is never let through as if it were absent.
pub fn unreadable_quantities(spec: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let mut scan = |resources: Option<&Value>, context: &str| {
        for field in ["requests", "limits"] {
            let entries = resources
                .and_then(|r| r.get(field))
                .and_then(Value::as_object);
            for (resource, value) in entries.into_iter().flatten() {
                let text = match value {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                if let Err(error) = Quantity::parse(&text) {
                    out.push(format!("{context}: {field}.{resource}: {error}"));
                }
            }
        }
    };
    scan(spec.get("resources"), "pod resources");
    for c in containers(spec) {
        scan(
            c.value.get("resources"),
            &format!("{} {:?}", c.kind.noun(), c.name),
        );
    }
    out.extend(unjudgeable_sums(spec));
    out
}

/// Resources whose containers' values cannot all be added exactly: the sum would have more
/// than [`crate::quantity::MAX_DIGITS`] significant digits (`1e100001` and `1n`). The pod's
/// totals add them, so such a pod is not judged as if its total were another number.
pub fn unjudgeable_sums(spec: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for field in ["requests", "limits"] {
        let mut sums: std::collections::BTreeMap<String, Option<Quantity>> = Default::default();
        for c in containers(spec) {
            for (name, q) in resource_list(c.value, field) {
                let sum = sums
                    .entry(name)
                    .or_insert_with(|| Some(Quantity::from_units(0)));
                *sum = sum.as_ref().and_then(|total| total.checked_add(&q));
            }
        }
        for (name, sum) in sums {
            if sum.is_none() {
                out.push(format!(
                    "pod resources: {field}.{name}: the containers' values are too far apart to add exactly: sums of up to {} significant digits are judged",
                    crate::quantity::MAX_DIGITS
                ));
            }
        }
    }
    out
}

/// Upstream's `PodValidateLimitFunc` over a pod spec: Container items against every container
/// and init container (ephemeral containers have no resources to judge), Pod items against the
/// pod's effective requests and limits.
pub fn validate_spec(range: &LimitRange, spec: &Value, semantics: Semantics) -> Vec<String> {
    let mut out = Vec::new();
    let comparison = semantics.comparison;
    let all = containers(spec);
    for item in &range.items {
        match item.kind.as_str() {
            "Container" => {
                // Upstream judges the containers, then the init containers.
                for kind in [ContainerKind::Regular, ContainerKind::Init] {
                    for c in all.iter().filter(|c| c.kind == kind) {
                        check(
                            item,
                            &resource_list(c.value, "requests"),
                            &resource_list(c.value, "limits"),
                            comparison,
                            &mut out,
                            &format!("{} {:?}: ", kind.noun(), c.name),
                        );
                    }
                }
            }
            "Pod" => check(
                item,
                &pod_total(spec, "requests", semantics),
                &pod_total(spec, "limits", semantics),
                comparison,
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
/// before it), whichever is larger, per resource; then, with pod-level resources, the pod's own
/// CPU and memory in place of those sums.
pub fn pod_total(spec: &Value, field: &str, semantics: Semantics) -> ResourceList {
    let all = containers(spec);
    let regular = all.iter().filter(|c| c.kind == ContainerKind::Regular);
    let init = all.iter().filter(|c| c.kind == ContainerKind::Init);
    let mut total = ResourceList::new();
    match semantics.pod_totals {
        PodTotals::Aggregate => {
            for c in regular {
                add_list(&mut total, &resource_list(c.value, field));
            }
            let mut sidecars = ResourceList::new();
            let mut init_max = ResourceList::new();
            for c in init {
                let own = resource_list(c.value, field);
                let effective =
                    if c.value.get("restartPolicy").and_then(Value::as_str) == Some("Always") {
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
        }
        PodTotals::Sum => {
            let lists: Vec<ResourceList> = regular.map(|c| resource_list(c.value, field)).collect();
            total = legacy_sum(&lists);
            for c in init {
                max_list(&mut total, &resource_list(c.value, field));
            }
        }
    }
    if semantics.pod_level_resources {
        let pod = spec
            .get("resources")
            .and_then(|r| r.get(field))
            .and_then(Value::as_object);
        for (name, value) in pod.into_iter().flatten() {
            if POD_LEVEL_RESOURCES.contains(&name.as_str())
                && let Some(q) = quantity_of(value)
            {
                total.insert(name.clone(), q);
            }
        }
    }
    total
}

/// 1.26's `sum`: a resource only when every list has it; CPU added in milli-units, the rest
/// in whole units (each rounded up), as plain decimal quantities.
fn legacy_sum(lists: &[ResourceList]) -> ResourceList {
    let mut total = ResourceList::new();
    let Some(first) = lists.first() else {
        return total;
    };
    for name in first.keys() {
        let values: Option<Vec<&Quantity>> = lists.iter().map(|l| l.get(name)).collect();
        let Some(values) = values else { continue };
        let sum = if !values.iter().all(|v| v.is_small()) {
            // Above 10^24 those releases wrapped through 64 bits: added exactly instead.
            values
                .iter()
                .fold(Quantity::from_units(0), |total, v| total.add(v))
        } else if name == "cpu" {
            Quantity::from_milli(values.iter().map(|v| v.milli_value()).sum())
        } else {
            Quantity::from_units_i128(values.iter().map(|v| v.value()).sum())
        };
        total.insert(name.clone(), sum);
    }
    total
}

fn add_list(list: &mut ResourceList, other: &ResourceList) {
    for (k, v) in other {
        list.entry(k.clone())
            .and_modify(|q| *q = q.add(v))
            .or_insert_with(|| v.clone());
    }
}

fn max_list(list: &mut ResourceList, other: &ResourceList) {
    for (k, v) in other {
        match list.get(k) {
            Some(existing) if v <= existing => {}
            _ => {
                list.insert(k.clone(), v.clone());
            }
        }
    }
}
