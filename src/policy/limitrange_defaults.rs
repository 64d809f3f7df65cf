//! `limitrange-defaults`: the built-in LimitRanger, also for pod templates.
//!
//! Mutation fills default requests and limits exactly as upstream's LimitRanger does for Pods
//! (see [`crate::limitrange`]), after first copying limits into missing requests as Pod
//! defaulting does, so a template and the Pods made from it end up with identical resources.
//! What was set is recorded in `confgate.dev/limitrange-defaults` in the text format of
//! upstream's `kubernetes.io/limit-ranger`. Validation applies min/max/maxLimitRequestRatio to
//! the object as its Pods will be (defaults applied), with upstream's messages.
//!
//! LimitRanges apply in order: the namespace's own (by name, with `fromNamespaceLimitRanges`),
//! then `settings.limits`; a value set by an earlier one is never overwritten by a later one.

use super::{Capabilities, Context, Findings, Policy, PolicyError, SettingsError, parse_settings};
use crate::limitrange::{
    ANNOTATION_PREFIX, Item, LimitRange, Semantics, copy_limits_to_requests, merge_defaults,
    unreadable_quantities, validate_spec,
};
use crate::quantity::Quantity;
use crate::workload::{WORKLOAD_KINDS, pod_spec, pod_spec_mut, set_template_annotation};
use kube::core::admission::Operation;
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;

/// Where confgate records what it set (upstream's is `kubernetes.io/limit-ranger`).
pub const ANNOTATION: &str = "confgate.dev/limitrange-defaults";

/// `spec.settings` of a `limitrange-defaults` policy.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LimitRangeDefaultsSettings {
    /// Items shaped like `LimitRange.spec.limits` (types `Container` and `Pod`).
    #[serde(default)]
    pub limits: Vec<LimitItemSettings>,
    /// Also apply the LimitRange objects of the object's namespace (from the cluster cache).
    #[serde(default)]
    pub from_namespace_limit_ranges: bool,
    /// Whose LimitRanger to match where releases differ (comparisons, pod totals): `auto` (the
    /// connected cluster's, from discovery; the newest release offline) or a release, `"1.33"`.
    #[serde(default)]
    pub kubernetes_version: Option<String>,
    /// Whether pod-level `spec.resources` count for `type: Pod` items: `auto` (when the object
    /// carries them: the apiserver drops them before validation where the feature gate is off),
    /// `enabled` or `disabled`.
    #[serde(default)]
    pub pod_level_resources: PodLevelSetting,
}

/// `settings.podLevelResources`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum PodLevelSetting {
    /// Pod-level resources count when the object has them.
    #[default]
    Auto,
    /// Always count them (a cluster with the `PodLevelResources` gate on).
    Enabled,
    /// Never count them (a cluster with the gate off, for objects it kept them on).
    Disabled,
}

/// One item of `settings.limits`, as `LimitRangeItem`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LimitItemSettings {
    /// `Container` or `Pod`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Default limits.
    #[serde(default)]
    pub default: BTreeMap<String, Quantity>,
    /// Default requests.
    #[serde(default)]
    pub default_request: BTreeMap<String, Quantity>,
    /// Maximum limit (and request).
    #[serde(default)]
    pub max: BTreeMap<String, Quantity>,
    /// Minimum request (and limit).
    #[serde(default)]
    pub min: BTreeMap<String, Quantity>,
    /// Maximum limit/request ratio.
    #[serde(default)]
    pub max_limit_request_ratio: BTreeMap<String, Quantity>,
}
#[derive(Debug)]
pub struct LimitRangeDefaults {
    configured: Option<LimitRange>,
    from_namespace: bool,
    /// The pinned release's minor version; `None`: follow the cluster.
    release: Option<u32>,
    pod_level: PodLevelSetting,
}

impl LimitRangeDefaults {
    /// Validates settings as the apiserver validates a LimitRange, after its defaulting.
    pub fn from_settings(settings: Value) -> Result<Self, SettingsError> {
        let settings: LimitRangeDefaultsSettings = parse_settings(settings)?;
        if settings.limits.is_empty() && !settings.from_namespace_limit_ranges {
            return Err(SettingsError::at(
                "",
                "set `limits`, `fromNamespaceLimitRanges: true`, or both",
            ));
        }
        let release = match settings.kubernetes_version.as_deref() {
            None | Some("auto") => None,
            Some(version) => Some(crate::cluster::minor_version(version).ok_or_else(|| {
                SettingsError::at(
                    "kubernetesVersion",
                    format!(
                        "{version:?} is not a Kubernetes version: use auto, or one such as \"1.33\""
                    ),
                )
            })?),
        };
        let mut items = Vec::new();
        for (i, item) in settings.limits.into_iter().enumerate() {
            items.push(validate_item(i, item)?);
        }
        let configured = (!items.is_empty()).then_some(LimitRange { items });
        Ok(Self {
            configured,
            from_namespace: settings.from_namespace_limit_ranges,
            release,
            pod_level: settings.pod_level_resources,
        })
    }

    /// How this request is judged: the settings, the cluster's version, and the object.
    fn semantics(&self, cx: &Context, spec: &Value) -> Semantics {
        let release = self.release.or_else(|| cx.cluster.server_minor_version());
        let pod_level_resources = match self.pod_level {
            PodLevelSetting::Enabled => true,
            PodLevelSetting::Disabled => false,
            PodLevelSetting::Auto => spec.get("resources").is_some_and(|r| !r.is_null()),
        };
        Semantics::of_release(release, pod_level_resources)
    }

    /// The LimitRanges that apply in the request's namespace, in order; what could not be
    /// looked up becomes a warning.
    fn ranges(&self, cx: &Context, out: &mut Findings) -> Vec<LimitRange> {
        let mut ranges = Vec::new();
        if self.from_namespace {
            match cx.cluster.limit_ranges(cx.namespace()) {
                Some(found) => {
                    for spec in found {
                        match LimitRange::from_api(&spec) {
                            Ok(range) => ranges.push(range),
                            Err(e) => out.warn(format!(
                                "a LimitRange in namespace {} was skipped: {e}",
                                cx.namespace()
                            )),
                        }
                    }
                }
                None => out.warn(format!(
                    "LimitRanges of namespace {:?} were not applied: {}",
                    cx.namespace(),
                    unavailable(cx)
                )),
            }
        }
        ranges.extend(self.configured.clone());
        ranges
    }
}

fn unavailable(cx: &Context) -> String {
    cx.cluster
        .why_unknown(crate::cluster::CacheKind::LimitRanges)
}

type ResourceMap = BTreeMap<String, Quantity>;

fn validate_item(index: usize, item: LimitItemSettings) -> Result<Item, SettingsError> {
    let at = |field: &str, message: String| {
        SettingsError::at(format!("limits[{index}]{field}"), message)
    };
    if item.kind != "Container" && item.kind != "Pod" {
        return Err(at(
            ".type",
            format!("must be Container or Pod, got {:?}", item.kind),
        ));
    }
    if item.kind == "Pod" && !(item.default.is_empty() && item.default_request.is_empty()) {
        return Err(at(
            "",
            "default and defaultRequest may not be set when type is Pod".into(),
        ));
    }
    let item = Item {
        kind: item.kind,
        default: item.default,
        default_request: item.default_request,
        max: item.max,
        min: item.min,
        max_limit_request_ratio: item.max_limit_request_ratio,
    }
    .with_defaults();
    let pairs: [(&str, &ResourceMap, &str, &ResourceMap); 5] = [
        ("min", &item.min, "max", &item.max),
        ("min", &item.min, "defaultRequest", &item.default_request),
        (
            "defaultRequest",
            &item.default_request,
            "default",
            &item.default,
        ),
        ("default", &item.default, "max", &item.max),
        ("defaultRequest", &item.default_request, "max", &item.max),
    ];
    for (low_name, low, high_name, high) in pairs {
        for (resource, lo) in low {
            if let Some(hi) = high.get(resource)
                && lo > hi
            {
                return Err(at(
                    &format!(".{low_name}.{resource}"),
                    format!(
                        "{low_name} value {lo} must not be greater than {high_name} value {hi}"
                    ),
                ));
            }
        }
    }
    for (resource, ratio) in &item.max_limit_request_ratio {
        if *ratio < Quantity::from_units(1) {
            return Err(at(
                &format!(".maxLimitRequestRatio.{resource}"),
                format!("ratio {ratio} is less than 1"),
            ));
        }
    }
    Ok(item)
}

/// Upstream skips Pod updates (containers are immutable) and objects being deleted.
fn skipped(cx: &Context) -> bool {
    let pod_update = cx.request.kind.kind == "Pod" && cx.request.operation == Operation::Update;
    let deleting = cx
        .old_object
        .and_then(|o| o.pointer("/metadata/deletionTimestamp"))
        .is_some_and(|t| !t.is_null());
    pod_update || deleting
}

/// Copies limits into requests, then merges each range's defaults; the annotation text when
/// anything was set. `quota-fit` judges Pods after the same defaulting.
pub(super) fn apply(
    spec: &mut Value,
    ranges: &[LimitRange],
    semantics: Semantics,
) -> Option<String> {
    copy_limits_to_requests(spec, semantics);
    let mut annotation = None;
    for range in ranges {
        let (requests, limits) = range.default_requirements();
        let notes = merge_defaults(spec, &requests, &limits);
        if !notes.is_empty() {
            annotation = Some(format!("{ANNOTATION_PREFIX}{}", notes.join("; ")));
        }
    }
    annotation
}

impl LimitRangeDefaults {
    /// What both phases start from: the LimitRanges to apply, or `None` when there is nothing
    /// to do (skipped request, no pod spec, no LimitRange).
    fn prepare(&self, cx: &Context, object: &Value, out: &mut Findings) -> Option<Vec<LimitRange>> {
        if skipped(cx) {
            return None;
        }
        pod_spec(&cx.request.kind.kind, object)?;
        let ranges = self.ranges(cx, out);
        (!ranges.is_empty()).then_some(ranges)
    }
}

impl Policy for LimitRangeDefaults {
    fn capabilities(&self) -> Capabilities {
        Capabilities::Both
    }

    fn kinds(&self) -> Option<&'static [&'static str]> {
        Some(WORKLOAD_KINDS.as_slice())
    }

    fn mutate(
        &self,
        cx: &Context,
        object: &mut Value,
        out: &mut Findings,
    ) -> Result<(), PolicyError> {
        let kind = cx.request.kind.kind.as_str();
        let Some(ranges) = self.prepare(cx, object, out) else {
            return Ok(());
        };
        let Some(spec) = pod_spec_mut(kind, object) else {
            return Ok(());
        };
        let semantics = self.semantics(cx, spec);
        if let Some(text) = apply(spec, &ranges, semantics) {
            set_template_annotation(kind, object, ANNOTATION, &text);
        }
        Ok(())
    }

    fn validate(
        &self,
        cx: &Context,
        object: &Value,
        out: &mut Findings,
    ) -> Result<(), PolicyError> {
        let Some(ranges) = self.prepare(cx, object, out) else {
            return Ok(());
        };
        let Some(spec) = pod_spec(&cx.request.kind.kind, object) else {
            return Ok(());
        };
        // A quantity that cannot be read is the violation; judging the rest as if it were
        // absent would only add misleading "no request is specified" lines.
        let unreadable = unreadable_quantities(spec);
        if !unreadable.is_empty() {
            for message in unreadable {
                out.violation(message);
            }
            return Ok(());
        }
        let semantics = self.semantics(cx, spec);
        let mut as_pod = spec.clone();
        apply(&mut as_pod, &ranges, semantics);
        for range in &ranges {
            for message in validate_spec(range, &as_pod, semantics) {
                out.violation(message);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::Standalone;
    use crate::policy::testing::{mutate, validate};
    use serde_json::json;

    fn deployment(resources: Value) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}, "spec": {"template": {"spec": {"containers": [{"name": "app", "image": "x", "resources": resources}]}}}})
    }

    fn policy() -> LimitRangeDefaults {
        LimitRangeDefaults::from_settings(json!({"limits": [{"type": "Container", "defaultRequest": {"cpu": "100m"}, "max": {"memory": "1Gi"}}]})).unwrap()
    }

    #[test]
    fn huge_quantities_are_judged_exactly_never_read_small() {
        // i32 exponent arithmetic used to wrap 1e2147483647 to a tiny value: max 1Gi allowed it.
        for huge in ["1e2147483647", "10e2146483646"] {
            let out = validate(
                &policy(),
                deployment(json!({"limits": {"memory": huge}})),
                &Standalone,
            );
            let canonical = crate::quantity::Quantity::parse(huge).unwrap().to_string();
            assert_eq!(
                out.violations,
                vec![format!(
                    "container \"app\": maximum memory usage per Container is 1Gi, but limit is {canonical}"
                )],
                "{huge}"
            );
        }
        // Past the digit budget: unreadable, and that is the violation.
        let long = format!("1{}", "0".repeat(100_000));
        let out = validate(
            &policy(),
            deployment(json!({"limits": {"memory": long}})),
            &Standalone,
        );
        assert_eq!(
            out.violations,
            vec![format!(
                "container \"app\": limits.memory: \"{long}\" is too large to judge exactly: quantities of up to 100000 significant digits are"
            )]
        );
        // Two readable values whose exact sum (the pod's total) has 100,011 digits.
        let pod = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}, "spec": {"template": {"spec": {"containers": [
            {"name": "a", "image": "x", "resources": {"limits": {"memory": "1e100001"}}},
            {"name": "b", "image": "x", "resources": {"limits": {"memory": "1n"}}}]}}}});
        let out = validate(&policy(), pod, &Standalone);
        assert_eq!(
            out.violations,
            vec![
                "pod resources: limits.memory: the containers' values are too far apart to add exactly: sums of up to 100000 significant digits are judged"
            ]
        );
        // Large but within range: judged, and over the max.
        let out = validate(
            &policy(),
            deployment(json!({"limits": {"memory": "1e20"}})),
            &Standalone,
        );
        assert_eq!(
            out.violations,
            vec![
                "container \"app\": maximum memory usage per Container is 1Gi, but limit is 100e18"
            ]
        );
    }

    #[test]
    fn a_ratio_between_quantities_above_2_pow_63_is_exact() {
        let policy = LimitRangeDefaults::from_settings(
            json!({"limits": [{"type": "Container", "maxLimitRequestRatio": {"memory": "10"}}]}),
        )
        .unwrap();
        let out = validate(
            &policy,
            deployment(json!({"requests": {"memory": "1e20"}, "limits": {"memory": "1e22"}})),
            &Standalone,
        );
        assert_eq!(
            out.violations,
            vec![
                "container \"app\": memory max limit to request ratio per Container is 10, but provided ratio is 100.000000"
            ]
        );
    }

    #[test]
    fn mutates_template_requests_and_limits() {
        let (object, out) = mutate(&policy(), deployment(json!({})), &Standalone);
        assert!(out.is_empty());
        let template = &object["spec"]["template"];
        // max memory became the default limit, and that default the default request.
        assert_eq!(
            template["spec"]["containers"][0]["resources"],
            json!({"limits": {"memory": "1Gi"}, "requests": {"cpu": "100m", "memory": "1Gi"}})
        );
        assert_eq!(
            template["metadata"]["annotations"][ANNOTATION],
            "LimitRanger plugin set: cpu, memory request for container app; memory limit for container app"
        );
    }

    #[test]
    fn accepts_container_within_limits() {
        assert!(
            validate(
                &policy(),
                deployment(json!({"limits": {"memory": "512Mi"}})),
                &Standalone
            )
            .is_empty()
        );
    }

    #[test]
    fn rejects_limit_above_max() {
        let out = validate(
            &policy(),
            deployment(json!({"limits": {"memory": "2Gi"}})),
            &Standalone,
        );
        assert_eq!(
            out.violations,
            vec![r#"container "app": maximum memory usage per Container is 1Gi, but limit is 2Gi"#]
        );
    }

    #[test]
    fn judges_as_the_pinned_release_or_the_newest_offline() {
        let settings = |version: &str| json!({"limits": [{"type": "Container", "min": {"memory": "1"}}], "kubernetesVersion": version});
        let sub_milli = || deployment(json!({"requests": {"memory": "999999999n"}}));
        // Offline, auto is the newest release: exact, so 0.999999999 is below 1.
        let newest = LimitRangeDefaults::from_settings(settings("auto")).unwrap();
        assert_eq!(
            validate(&newest, sub_milli(), &Standalone).violations,
            vec![
                "container \"app\": minimum memory usage per Container is 1, but request is 999999999n"
            ]
        );
        // 1.33 rounds it up to a milli-unit: allowed.
        let v133 = LimitRangeDefaults::from_settings(settings("v1.33.3")).unwrap();
        assert!(validate(&v133, sub_milli(), &Standalone).is_empty());
        let err = LimitRangeDefaults::from_settings(settings("latest")).unwrap_err();
        assert_eq!(err.path, "kubernetesVersion");
    }

    #[test]
    fn rejects_default_request_above_default() {
        let err = LimitRangeDefaults::from_settings(json!({"limits": [{"type": "Container", "default": {"cpu": "1"}, "defaultRequest": {"cpu": "2"}}]})).unwrap_err();
        assert_eq!(err.path, "limits[0].defaultRequest.cpu");
    }
}
