//! `confgate review`: the server's engine, offline. Reads an AdmissionReview (v1 or v1beta1) or
//! plain manifests (each wrapped into a CREATE review), prints the response AdmissionReview JSON
//! or, with `--explain`, a summary a person can read. Exit 0: allowed; 1: denied; 2: bad input.

use crate::admission::{self, Review, operation_str};
use crate::cluster::static_state::StaticState;
use crate::cluster::{ClusterState, Standalone};
use crate::engine::{Decision, Engine, Outcome};
use crate::policy::{Endpoint, PolicySet, Registry, load_dir};
use clap::{Args, ValueEnum};
use serde_json::{Value, json};
use std::fmt::Write as _;
use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

/// Which webhook(s) to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EndpointChoice {
    /// Mutating policies only.
    Mutate,
    /// Validating policies only.
    Validate,
    /// Mutate, apply the patch, then validate the result (as the apiserver does).
    Both,
}

/// Arguments of `confgate review`.
#[derive(Debug, Args)]
pub struct ReviewArgs {
    /// AdmissionReview or manifest file (YAML or JSON); `-` for standard input.
    #[arg(default_value = "-")]
    pub file: String,
    /// Directory of policy files.
    #[arg(long, default_value = "policies")]
    pub policies: PathBuf,
    /// Cluster state manifests (ConfigMaps, Secrets, Namespaces, LimitRanges); repeatable.
    #[arg(long = "cluster-state", num_args = 1..)]
    pub cluster_state: Vec<PathBuf>,
    /// Which webhook(s) to run.
    #[arg(long, value_enum, default_value_t = EndpointChoice::Both)]
    pub endpoint: EndpointChoice,
    /// Print a human summary instead of the response JSON.
    #[arg(long)]
    pub explain: bool,
}

/// Runs the review; the exit code says allowed (0), denied (1) or bad input (2).
pub fn run(args: ReviewArgs) -> ExitCode {
    match review(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(message) => {
            eprintln!("confgate review: {message}");
            ExitCode::from(2)
        }
    }
}

fn review(args: &ReviewArgs) -> Result<bool, String> {
    let registry = Registry::builtin();
    let set = load_dir(&args.policies, &registry).map_err(|e| e.to_string())?;
    let cluster: Arc<dyn ClusterState> = if args.cluster_state.is_empty() {
        Arc::new(Standalone)
    } else {
        Arc::new(StaticState::load(&args.cluster_state).map_err(|e| e.to_string())?)
    };
    let reviews = read_reviews(&args.file)?;
    let engine = Engine::new(cluster);
    let mut all_allowed = true;
    for review in &reviews {
        let decision = evaluate(&engine, &set, review, args.endpoint).map_err(|e| e.to_string())?;
        all_allowed &= decision.allowed();
        if args.explain {
            print!("{}", explain(review, &decision));
        } else {
            let response = decision.to_response(&review.request);
            let patch = (!decision.patch.0.is_empty()).then_some(&decision.patch);
            let body = admission::encode_response(review.api_version(), &response, patch)
                .map_err(|e| e.to_string())?;
            let pretty: Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
            println!(
                "{}",
                serde_json::to_string_pretty(&pretty).map_err(|e| e.to_string())?
            );
        }
    }
    Ok(all_allowed)
}

fn evaluate(
    engine: &Engine,
    set: &PolicySet,
    review: &Review,
    choice: EndpointChoice,
) -> Result<Decision, crate::engine::EngineError> {
    match choice {
        EndpointChoice::Mutate => engine.evaluate(set, review, Endpoint::Mutate, None),
        EndpointChoice::Validate => engine.evaluate(set, review, Endpoint::Validate, None),
        EndpointChoice::Both => engine.evaluate_both(set, review),
    }
}

/// Reads the input: AdmissionReviews are taken as they are; any other document is a manifest,
/// wrapped into a CREATE review.
pub fn read_reviews(file: &str) -> Result<Vec<Review>, String> {
    let text = if file == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| format!("cannot read standard input: {e}"))?;
        text
    } else {
        std::fs::read_to_string(file).map_err(|e| format!("{file}: {e}"))?
    };
    let docs = crate::yaml::flatten_lists(
        crate::yaml::documents(&text).map_err(|e| format!("{file}: {e}"))?,
    );
    if docs.is_empty() {
        return Err(format!("{file}: no documents"));
    }
    docs.into_iter()
        .enumerate()
        .map(|(i, doc)| {
            let is_review = doc.get("kind").and_then(Value::as_str) == Some("AdmissionReview");
            let value = if is_review {
                doc
            } else {
                wrap_manifest(doc, i + 1).map_err(|e| format!("{file}: document {}: {e}", i + 1))?
            };
            admission::review_from_value(value)
                .map_err(|e| format!("{file}: document {}: {e}", i + 1))
        })
        .collect()
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
    let gvr = json!({"group": group, "version": version, "resource": plural(&kind)});
    Ok(json!({
        "apiVersion": admission::V1,
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

/// The resource name of a kind, as the API pluralises the built-in ones.
fn plural(kind: &str) -> String {
    let lower = kind.to_ascii_lowercase();
    if lower.ends_with('s')
        || lower.ends_with("ch")
        || lower.ends_with("sh")
        || lower.ends_with('x')
    {
        format!("{lower}es")
    } else if let Some(stem) = lower
        .strip_suffix('y')
        .filter(|s| !s.ends_with(['a', 'e', 'i', 'o', 'u']))
    {
        format!("{stem}ies")
    } else {
        format!("{lower}s")
    }
}

/// A summary a person can read: decision, each policy's verdict and messages, and the patch.
pub fn explain(review: &Review, decision: &Decision) -> String {
    let request = &review.request;
    let mut out = String::new();
    let gv = if request.kind.group.is_empty() {
        request.kind.version.clone()
    } else {
        format!("{}/{}", request.kind.group, request.kind.version)
    };
    let _ = writeln!(
        out,
        "{} {} ({}, {gv})",
        request.kind.kind,
        review.display_name(),
        operation_str(&request.operation)
    );
    let verdict = if decision.allowed() {
        "ALLOWED"
    } else {
        "DENIED"
    };
    let _ = writeln!(out, "  decision: {verdict}");
    if let Some(why) = &decision.skipped {
        let _ = writeln!(out, "  not evaluated: {why}");
    }
    if !decision.verdicts.is_empty() {
        let _ = writeln!(out, "  policies:");
    }
    for v in &decision.verdicts {
        if v.outcome == Outcome::Skipped {
            let _ = writeln!(
                out,
                "    {} [{}]: does not apply ({})",
                v.policy,
                v.endpoint.as_str(),
                v.violations.join("; ")
            );
            continue;
        }
        let _ = writeln!(
            out,
            "    {} [{}]: {}",
            v.policy,
            v.endpoint.as_str(),
            v.outcome.as_str()
        );
        for line in v.violations.iter().chain(&v.warnings) {
            let _ = writeln!(out, "      - {line}");
        }
    }
    if !decision.warnings.is_empty() {
        let _ = writeln!(out, "  warnings:");
        for w in &decision.warnings {
            let _ = writeln!(out, "    - {w}");
        }
    }
    for (key, value) in &decision.audit_annotations {
        let _ = writeln!(out, "  audit annotation {key}: {value}");
    }
    if decision.patch.0.is_empty() {
        let _ = writeln!(out, "  patch: none");
    } else {
        let _ = writeln!(out, "  patch ({} operations):", decision.patch.0.len());
        for op in &decision.patch.0 {
            let _ = writeln!(out, "    {}", describe_op(op));
        }
    }
    out
}

fn describe_op(op: &json_patch::PatchOperation) -> String {
    use json_patch::PatchOperation as Op;
    let value = |v: &Value| serde_json::to_string(v).unwrap_or_default();
    match op {
        Op::Add(o) => format!("add     {} = {}", o.path, value(&o.value)),
        Op::Replace(o) => format!("replace {} = {}", o.path, value(&o.value)),
        Op::Remove(o) => format!("remove  {}", o.path),
        Op::Move(o) => format!("move    {} -> {}", o.from, o.path),
        Op::Copy(o) => format!("copy    {} -> {}", o.from, o.path),
        Op::Test(o) => format!("test    {} == {}", o.path, value(&o.value)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pluralises_like_the_api() {
        for (kind, resource) in [
            ("Deployment", "deployments"),
            ("Ingress", "ingresses"),
            ("NetworkPolicy", "networkpolicies"),
            ("Gateway", "gateways"),
        ] {
            assert_eq!(plural(kind), resource);
        }
    }

    #[test]
    fn wraps_manifest_into_create_review() {
        let value = wrap_manifest(
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}}),
            1,
        )
        .unwrap();
        let review = admission::review_from_value(value).unwrap();
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
