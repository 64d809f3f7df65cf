//! AdmissionReview on the wire: parse a request body once, answer in the version that was sent.
//!
//! The envelope is parsed into kube-rs' [`AdmissionRequest`]; `object` and `oldObject` are taken
//! out first and kept as [`serde_json::Value`], exactly as the apiserver sent them, so policies see
//! every field and the patch is computed against the real object.
//!
//! kube-core serialises `AdmissionResponse::patch` as an array of numbers, while the Kubernetes API
//! documents `patch` as a base64 string (Go's `[]byte`), so the response is serialised here.

use base64::Engine as _;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use serde::Serialize;
use serde_json::{Value, json};

/// `admission.k8s.io/v1`.
pub const V1: &str = "admission.k8s.io/v1";
/// `admission.k8s.io/v1beta1`, still sent by clusters whose webhooks list it first.
pub const V1BETA1: &str = "admission.k8s.io/v1beta1";

/// Why a request body is not an AdmissionReview we can answer.
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    /// The body is not JSON at all.
    #[error("request body is not valid JSON: {0}")]
    Json(#[source] serde_json::Error),
    /// The body is JSON but not an object.
    #[error("request body must be a JSON object (an AdmissionReview)")]
    NotAnObject,
    /// `kind` is something other than AdmissionReview.
    #[error("kind must be \"AdmissionReview\", got {0:?}")]
    Kind(String),
    /// `apiVersion` is neither v1 nor v1beta1.
    #[error("apiVersion must be \"{V1}\" or \"{V1BETA1}\", got {0:?}")]
    ApiVersion(String),
    /// The review has no `request` (a response, or an empty review).
    #[error("AdmissionReview has no \"request\"")]
    MissingRequest,
    /// `request` is present but does not have the AdmissionRequest shape.
    #[error("invalid AdmissionReview request: {0}")]
    Invalid(#[source] serde_json::Error),
    /// `request.object` is set but is not a JSON object.
    #[error("request.{0} must be a JSON object")]
    ObjectShape(&'static str),
}

/// One parsed AdmissionReview request.
#[derive(Debug, Clone)]
pub struct Review {
    /// The request envelope (uid, kind, resource, operation, userInfo, ...), with `object` and
    /// `oldObject` left empty: they are in [`Review::object`] and [`Review::old_object`].
    pub request: AdmissionRequest<DynamicObject>,
    /// `request.object`: the new object (absent on DELETE).
    pub object: Option<Value>,
    /// `request.oldObject`: the existing object (UPDATE and DELETE).
    pub old_object: Option<Value>,
}

impl Review {
    /// The AdmissionReview apiVersion the request came in, to answer in.
    pub fn api_version(&self) -> &str {
        &self.request.types.api_version
    }

    /// `namespace/name` (or just `name`), for logs and messages; generateName when unnamed.
    pub fn display_name(&self) -> String {
        let name = if self.request.name.is_empty() {
            self.object
                .as_ref()
                .and_then(|o| o.pointer("/metadata/generateName"))
                .and_then(Value::as_str)
                .map(|g| format!("{g}*"))
                .unwrap_or_default()
        } else {
            self.request.name.clone()
        };
        match self.request.namespace.as_deref() {
            Some(ns) if !ns.is_empty() => format!("{ns}/{name}"),
            _ => name,
        }
    }
}

/// The operation as the API spells it.
pub fn operation_str(op: &Operation) -> &'static str {
    match op {
        Operation::Create => "CREATE",
        Operation::Update => "UPDATE",
        Operation::Delete => "DELETE",
        Operation::Connect => "CONNECT",
    }
}

/// Parses an AdmissionReview (v1 or v1beta1) from a request body.
pub fn parse_review(body: &[u8]) -> Result<Review, ReviewError> {
    let value: Value = serde_json::from_slice(body).map_err(ReviewError::Json)?;
    review_from_value(value)
}

/// Parses an AdmissionReview already decoded into a JSON value (the CLI reads YAML too).
pub fn review_from_value(mut value: Value) -> Result<Review, ReviewError> {
    let map = value.as_object_mut().ok_or(ReviewError::NotAnObject)?;
    let kind = map.get("kind").and_then(Value::as_str).unwrap_or_default();
    if kind != "AdmissionReview" {
        return Err(ReviewError::Kind(kind.to_owned()));
    }
    let version = map
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if version != V1 && version != V1BETA1 {
        return Err(ReviewError::ApiVersion(version.to_owned()));
    }
    let request = match map.get_mut("request") {
        Some(Value::Object(request)) => request,
        Some(Value::Null) | None => return Err(ReviewError::MissingRequest),
        Some(_) => return Err(ReviewError::MissingRequest),
    };
    let object = take_object(request, "object")?;
    let old_object = take_object(request, "oldObject")?;
    let review: AdmissionReview<DynamicObject> =
        serde_json::from_value(value).map_err(ReviewError::Invalid)?;
    let request: AdmissionRequest<DynamicObject> =
        review.try_into().map_err(|_| ReviewError::MissingRequest)?;
    Ok(Review {
        request,
        object,
        old_object,
    })
}

fn take_object(
    request: &mut serde_json::Map<String, Value>,
    field: &'static str,
) -> Result<Option<Value>, ReviewError> {
    match request.remove(field) {
        None | Some(Value::Null) => Ok(None),
        Some(object @ Value::Object(_)) => Ok(Some(object)),
        Some(_) => Err(ReviewError::ObjectShape(field)),
    }
}

/// The `status.reason` of a denial.
pub const DENY_REASON: &str = "Forbidden";

/// Serialises a response into an AdmissionReview of the request's version, with the patch (if
/// any) as a base64 string and `patchType: JSONPatch`.
pub fn encode_response(
    api_version: &str,
    response: &AdmissionResponse,
    patch: Option<&json_patch::Patch>,
) -> Result<Vec<u8>, serde_json::Error> {
    let patch = match patch {
        Some(p) if !p.0.is_empty() => {
            Some(base64::engine::general_purpose::STANDARD.encode(serde_json::to_vec(p)?))
        }
        _ => None,
    };
    let mut response = response.clone();
    response.patch = None;
    let wire = WireReview {
        api_version,
        kind: "AdmissionReview",
        response: WireResponse {
            patch_type: patch.as_ref().map(|_| "JSONPatch"),
            patch,
            inner: &response,
        },
    };
    serde_json::to_vec(&wire)
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct WireReview<'a> {
    api_version: &'a str,
    kind: &'static str,
    response: WireResponse<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct WireResponse<'a> {
    #[serde(flatten)]
    inner: &'a AdmissionResponse,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch_type: Option<&'static str>,
}

/// Kinds that are not namespaced (for wrapping manifests; anything else is namespaced).
const CLUSTER_SCOPED: &[&str] = &[
    "Namespace",
    "Node",
    "PersistentVolume",
    "ClusterRole",
    "ClusterRoleBinding",
    "StorageClass",
    "PriorityClass",
    "CustomResourceDefinition",
    "MutatingWebhookConfiguration",
    "ValidatingWebhookConfiguration",
    "APIService",
    "CertificateSigningRequest",
    "IngressClass",
    "RuntimeClass",
    "CSIDriver",
    "VolumeAttachment",
];

/// The CREATE review of a manifest, as the apiserver would send it: the one way a manifest
/// becomes a review, for `confgate review`, the rollout controller and the audit (`index`
/// numbers the review's uid, for a stream of several).
pub fn manifest_review(object: Value, index: usize) -> Result<Review, String> {
    review_from_value(wrap_manifest(object, index)?).map_err(|e| e.to_string())
}

/// Wraps a plain manifest into an `admission.k8s.io/v1` CREATE review, as the apiserver would
/// send it (namespace defaulted to `default` for namespaced kinds).
pub fn wrap_manifest(mut object: Value, index: usize) -> Result<Value, String> {
    let api_version = object
        .get("apiVersion")
        .and_then(Value::as_str)
        .ok_or("missing apiVersion")?
        .to_owned();
    let kind = object
        .get("kind")
        .and_then(Value::as_str)
        .ok_or("missing kind")?
        .to_owned();
    let (group, version) = api_version
        .rsplit_once('/')
        .unwrap_or(("", api_version.as_str()));
    let name = object
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let namespaced = !CLUSTER_SCOPED.contains(&kind.as_str());
    let namespace = if namespaced {
        let ns = object
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or("default")
            .to_owned();
        if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.insert("namespace".into(), Value::String(ns.clone()));
        }
        Some(ns)
    } else {
        None
    };
    let gvk = json!({"group": group, "version": version, "kind": kind});
    let gvr =
        json!({"group": group, "version": version, "resource": plural(group, version, &kind)});
    Ok(json!({
        "apiVersion": V1,
        "kind": "AdmissionReview",
        "request": {
            "uid": format!("confgate-review-{index}"),
            "kind": gvk, "resource": gvr, "requestKind": gvk, "requestResource": gvr,
            "name": name, "namespace": namespace, "operation": "CREATE",
            "userInfo": {"username": "confgate-review"},
            "object": object, "oldObject": null, "dryRun": true,
        }
    }))
}

/// The resource name of a kind: from the kind table, else as kube pluralises a kind.
fn plural(group: &str, version: &str, kind: &str) -> String {
    crate::workload::api_resource(kind)
        .filter(|r| r.group == group)
        .unwrap_or_else(|| {
            kube::core::ApiResource::from_gvk(&kube::core::GroupVersionKind::gvk(
                group, version, kind,
            ))
        })
        .plural
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview",
        "request":{"uid":"u1","kind":{"group":"","version":"v1","kind":"Pod"},
        "resource":{"group":"","version":"v1","resource":"pods"},"operation":"DELETE",
        "userInfo":{},"object":null,"oldObject":{"metadata":{"name":"p"}}}}"#;

    #[test]
    fn parses_delete_without_object() {
        let review = parse_review(MINIMAL.as_bytes()).unwrap();
        assert_eq!(review.api_version(), V1BETA1);
        assert!(review.object.is_none());
        assert_eq!(review.old_object.unwrap()["metadata"]["name"], "p");
    }

    #[test]
    fn rejects_review_without_request() {
        let err = parse_review(br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#);
        assert!(matches!(err, Err(ReviewError::MissingRequest)));
    }

    #[test]
    fn rejects_wrong_kind_and_version() {
        let err = parse_review(br#"{"apiVersion":"v1","kind":"Pod"}"#).unwrap_err();
        assert_eq!(
            err.to_string(),
            "kind must be \"AdmissionReview\", got \"Pod\""
        );
        let err = parse_review(br#"{"apiVersion":"admission.k8s.io/v2","kind":"AdmissionReview"}"#)
            .unwrap_err();
        assert!(err.to_string().contains("admission.k8s.io/v2"));
    }

    #[test]
    fn encodes_patch_as_base64_in_the_request_version() {
        let review = parse_review(MINIMAL.as_bytes()).unwrap();
        let response = AdmissionResponse::from(&review.request);
        let patch: json_patch::Patch =
            serde_json::from_str(r#"[{"op":"add","path":"/a","value":1}]"#).unwrap();
        let body = encode_response(review.api_version(), &response, Some(&patch)).unwrap();
        let out: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(out["apiVersion"], V1BETA1);
        assert_eq!(out["response"]["uid"], "u1");
        assert_eq!(out["response"]["patchType"], "JSONPatch");
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(out["response"]["patch"].as_str().unwrap())
            .unwrap();
        assert_eq!(decoded, br#"[{"op":"add","path":"/a","value":1}]"#);
    }

    #[test]
    fn pluralises_like_the_api() {
        for (kind, resource) in [
            ("Deployment", "deployments"),
            ("Ingress", "ingresses"),
            ("NetworkPolicy", "networkpolicies"),
            ("Gateway", "gateways"),
            ("CronJob", "cronjobs"),
        ] {
            assert_eq!(plural("g", "v1", kind), resource);
        }
    }

    #[test]
    fn wraps_manifest_into_create_review() {
        let value = wrap_manifest(
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}}),
            1,
        )
        .unwrap();
        let review = review_from_value(value).unwrap();
        assert_eq!(review.request.resource.resource, "deployments");
        assert_eq!(review.request.resource.group, "apps");
        assert_eq!(review.request.namespace.as_deref(), Some("default"));
        assert_eq!(review.object.unwrap()["metadata"]["namespace"], "default");
    }

    #[test]
    fn rejects_manifest_without_kind() {
        assert_eq!(
            wrap_manifest(json!({"apiVersion": "v1"}), 1).unwrap_err(),
            "missing kind"
        );
    }
}
