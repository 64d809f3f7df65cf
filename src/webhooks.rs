//! The webhook registration, generated from the policy files: one webhook per policy and
//! endpoint, at its own path, so the registration cannot drift from the policies.
//!
//! Safe by default: every webhook skips `kube-system`, `kube-node-lease` and confgate's own
//! namespace (a broken confgate can never block its own recovery or the control plane), and
//! rules only ever name the workload kinds a policy understands (never Nodes, Leases, Events or
//! CertificateSigningRequests).

use crate::policy::{FailurePolicy, LoadedPolicy, Phase, PolicySet};
use crate::workload::api_resource;
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MatchCondition, MutatingWebhook, MutatingWebhookConfiguration, RuleWithOperations,
    ServiceReference, ValidatingWebhook, ValidatingWebhookConfiguration, WebhookClientConfig,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, LabelSelectorRequirement, ObjectMeta,
};
use std::collections::BTreeMap;

/// Namespaces no generated webhook ever applies to (besides confgate's own).
pub const ALWAYS_EXCLUDED: [&str; 2] = ["kube-system", "kube-node-lease"];
/// The label the apiserver sets on every namespace.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// Where the apiserver reaches confgate.
#[derive(Debug, Clone)]
pub enum Target {
    /// An in-cluster Service (port 443).
    Service {
        /// Service name.
        name: String,
        /// Service namespace (also excluded from every webhook).
        namespace: String,
    },
    /// A URL (`https://host:port`); paths are appended.
    Url(String),
}

/// How to generate the registration.
#[derive(Debug, Clone)]
pub struct Options {
    /// `metadata.name` of both configurations.
    pub name: String,
    /// Where confgate is.
    pub target: Target,
    /// The namespace confgate runs in (always excluded).
    pub own_namespace: String,
    /// PEM CA bundle that signed the serving certificate; `None` with cert-manager's injector.
    pub ca_bundle: Option<Vec<u8>>,
    /// `namespace/certificate` for cert-manager's CA injector annotation.
    pub inject_ca_from: Option<String>,
    /// `timeoutSeconds` of every webhook (1 to 30).
    pub timeout_seconds: i32,
    /// Emit `matchConditions` (Kubernetes 1.28 and newer; GA in 1.30). Without them the server
    /// applies the same rules itself, after the apiserver has called it.
    pub match_conditions: bool,
}

impl Options {
    /// The registration `confgate webhooks` makes by default: configurations named `confgate`,
    /// calling Service `service` in `namespace` (which is excluded), 5 s timeouts, no CA yet.
    pub fn for_service(service: &str, namespace: &str) -> Self {
        Self {
            name: "confgate".into(),
            target: Target::Service {
                name: service.into(),
                namespace: namespace.into(),
            },
            own_namespace: namespace.into(),
            ca_bundle: None,
            inject_ca_from: None,
            timeout_seconds: 5,
            match_conditions: true,
        }
    }
}

/// The first Kubernetes minor version whose apiserver takes `matchConditions` (beta, on by
/// default; GA in 1.30).
pub const MATCH_CONDITIONS_SINCE: u32 = 28;

pub use crate::cluster::minor_version;

/// Why a registration cannot be generated.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// A policy matches a kind confgate cannot name a resource for.
    #[error(
        "policy {policy:?}: kind {kind:?} has no known API resource; list workload kinds in spec.match.kinds"
    )]
    UnknownKind { policy: String, kind: String },
    /// A policy matches every kind: registering it would intercept everything.
    #[error("policy {0:?} matches every kind; list the kinds in spec.match.kinds")]
    AnyKind(String),
    /// timeoutSeconds outside 1..=30.
    #[error("timeoutSeconds must be between 1 and 30, got {0}")]
    Timeout(i32),
    /// The registration could not be written as YAML.
    #[error("cannot write the registration as YAML: {0}")]
    Yaml(String),
}

/// The default failurePolicy: validation fails closed; mutation (defaults, checksums) is best
/// effort and fails open, so an unreachable confgate never blocks a rollout for a missing default.
pub fn default_failure_policy(endpoint: Phase) -> FailurePolicy {
    match endpoint {
        Phase::Validate => FailurePolicy::Fail,
        Phase::Mutate => FailurePolicy::Ignore,
    }
}

/// A policy's failurePolicy at `endpoint`: its own when set; otherwise `Ignore` for a policy
/// that can never deny (`Warn`, `Audit`: failing closed would block writes for advice), and the
/// endpoint's default for the rest.
pub fn failure_policy(policy: &LoadedPolicy, endpoint: Phase) -> FailurePolicy {
    policy.failure_policy.unwrap_or(match policy.action {
        // A type can ask never to block when confgate is down (the config guard: a confgate
        // that is down must never block ConfigMap and Secret writes cluster-wide).
        _ if policy.policy.fails_open() => FailurePolicy::Ignore,
        crate::policy::Action::Deny => default_failure_policy(endpoint),
        crate::policy::Action::Warn | crate::policy::Action::Audit => FailurePolicy::Ignore,
    })
}

/// Builds both configurations.
pub fn generate(
    set: &PolicySet,
    options: &Options,
) -> Result<(MutatingWebhookConfiguration, ValidatingWebhookConfiguration), WebhookError> {
    if !(1..=30).contains(&options.timeout_seconds) {
        return Err(WebhookError::Timeout(options.timeout_seconds));
    }
    let mut mutating = Vec::new();
    let mut validating = Vec::new();
    for policy in &set.policies {
        let caps = policy.policy.capabilities();
        if caps.serves(Phase::Mutate) {
            let w = Webhook::new(policy, Phase::Mutate, options)?;
            mutating.push(MutatingWebhook {
                admission_review_versions: w.versions,
                client_config: w.client_config,
                failure_policy: Some(w.failure_policy),
                match_policy: Some("Equivalent".into()),
                name: w.name,
                namespace_selector: Some(w.namespace_selector),
                object_selector: w.object_selector,
                reinvocation_policy: Some("IfNeeded".into()),
                match_conditions: w.match_conditions,
                rules: Some(w.rules),
                side_effects: "None".into(),
                timeout_seconds: Some(options.timeout_seconds),
            });
        }
        if caps.serves(Phase::Validate) {
            let w = Webhook::new(policy, Phase::Validate, options)?;
            validating.push(ValidatingWebhook {
                admission_review_versions: w.versions,
                client_config: w.client_config,
                failure_policy: Some(w.failure_policy),
                match_policy: Some("Equivalent".into()),
                name: w.name,
                namespace_selector: Some(w.namespace_selector),
                object_selector: w.object_selector,
                match_conditions: w.match_conditions,
                rules: Some(w.rules),
                side_effects: "None".into(),
                timeout_seconds: Some(options.timeout_seconds),
            });
        }
    }
    let metadata = metadata(options);
    Ok((
        MutatingWebhookConfiguration {
            metadata: metadata.clone(),
            webhooks: Some(mutating),
        },
        ValidatingWebhookConfiguration {
            metadata,
            webhooks: Some(validating),
        },
    ))
}

fn metadata(options: &Options) -> ObjectMeta {
    let labels = BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), "confgate".to_owned()),
        (
            "app.kubernetes.io/managed-by".to_owned(),
            "confgate-webhooks".to_owned(),
        ),
    ]);
    let annotations = options
        .inject_ca_from
        .as_ref()
        .map(|c| BTreeMap::from([("cert-manager.io/inject-ca-from".to_owned(), c.clone())]));
    ObjectMeta {
        name: Some(options.name.clone()),
        labels: Some(labels),
        annotations,
        ..Default::default()
    }
}

/// The parts both webhook types share.
struct Webhook {
    name: String,
    versions: Vec<String>,
    client_config: WebhookClientConfig,
    failure_policy: String,
    namespace_selector: LabelSelector,
    object_selector: Option<LabelSelector>,
    match_conditions: Option<Vec<MatchCondition>>,
    rules: Vec<RuleWithOperations>,
}

impl Webhook {
    fn new(
        policy: &LoadedPolicy,
        endpoint: Phase,
        options: &Options,
    ) -> Result<Self, WebhookError> {
        let path = format!("/{}/{}", endpoint.as_str(), policy.name);
        let client_config = match &options.target {
            Target::Service { name, namespace } => WebhookClientConfig {
                service: Some(ServiceReference {
                    name: name.clone(),
                    namespace: namespace.clone(),
                    path: Some(path),
                    port: Some(443),
                }),
                ca_bundle: options.ca_bundle.clone().map(ByteString),
                url: None,
            },
            Target::Url(base) => WebhookClientConfig {
                url: Some(format!("{}{path}", base.trim_end_matches('/'))),
                ca_bundle: options.ca_bundle.clone().map(ByteString),
                service: None,
            },
        };
        let failure_policy = match failure_policy(policy, endpoint) {
            FailurePolicy::Fail => "Fail",
            FailurePolicy::Ignore => "Ignore",
        };
        Ok(Self {
            name: format!("{}.{}.confgate.dev", policy.name, endpoint.as_str()),
            versions: vec!["v1".into(), "v1beta1".into()],
            client_config,
            failure_policy: failure_policy.into(),
            namespace_selector: namespace_selector(policy, options),
            object_selector: policy.matcher.spec.object_selector.clone(),
            match_conditions: options
                .match_conditions
                .then(|| match_conditions(policy))
                .filter(|c| !c.is_empty()),
            rules: rules(policy)?,
        })
    }
}

/// The policy's namespace rules, plus the namespaces that are always excluded.
fn namespace_selector(policy: &LoadedPolicy, options: &Options) -> LabelSelector {
    let spec = &policy.matcher.spec;
    let mut excluded: Vec<String> = ALWAYS_EXCLUDED.iter().map(|s| (*s).to_owned()).collect();
    for ns in std::iter::once(&options.own_namespace).chain(&spec.exclude_namespaces) {
        if !excluded.contains(ns) {
            excluded.push(ns.clone());
        }
    }
    let requirement = |operator: &str, values: Vec<String>| LabelSelectorRequirement {
        key: NAMESPACE_NAME_LABEL.into(),
        operator: operator.into(),
        values: Some(values),
    };
    let mut expressions = vec![requirement("NotIn", excluded)];
    if !spec.namespaces.is_empty() {
        expressions.push(requirement("In", spec.namespaces.clone()));
    }
    let from_policy = spec.namespace_selector.clone().unwrap_or_default();
    expressions.extend(from_policy.match_expressions.unwrap_or_default());
    LabelSelector {
        match_labels: from_policy.match_labels,
        match_expressions: Some(expressions),
    }
}

/// The server's own skip rules (`crate::policy::matcher`), as CEL for the apiserver, so that
/// requests confgate would not judge are never sent, and a confgate outage cannot block them:
/// updates of objects being deleted (finalizer removal; for the config guard, only the
/// finalizer changes), and objects made by a controller whose template the policy judges
/// (every replacement Pod of every Deployment).
fn match_conditions(policy: &LoadedPolicy) -> Vec<MatchCondition> {
    let mut conditions = vec![if policy.policy.judges_objects_being_deleted() {
        // Changes to an object whose deletion waits (the config guard keeps its read keys)
        // are sent; finalizer removals never are, so no deletion ever waits on confgate.
        MatchCondition {
            name: "not-a-finalizer-change-while-deleted".into(),
            expression: "oldObject == null || !has(oldObject.metadata.deletionTimestamp) || (has(object.metadata.finalizers) == has(oldObject.metadata.finalizers) && (!has(object.metadata.finalizers) || object.metadata.finalizers == oldObject.metadata.finalizers))".into(),
        }
    } else {
        MatchCondition {
            name: "not-being-deleted".into(),
            expression: "oldObject == null || !has(oldObject.metadata.deletionTimestamp)".into(),
        }
    }];
    if policy
        .matcher
        .operations()
        .contains(&kube::core::admission::Operation::Delete)
    {
        let users: Vec<String> = crate::policy::protect_config_keys::CLEANUP_USERS
            .iter()
            .map(|u| format!("'{u}'"))
            .collect();
        conditions.push(MatchCondition {
            name: "not-cleanup-by-the-control-plane".into(),
            expression: format!("!(request.userInfo.username in [{}])", users.join(", ")),
        });
    }
    let controllers = policy.matcher.judged_controllers();
    if !controllers.is_empty() {
        let kinds: Vec<String> = controllers.iter().map(|k| format!("'{k}'")).collect();
        conditions.push(MatchCondition {
            name: "not-made-by-a-judged-controller".into(),
            expression: format!(
                "object == null || !has(object.metadata.ownerReferences) || !object.metadata.ownerReferences.exists(r, has(r.controller) && r.controller && r.kind in [{}])",
                kinds.join(", ")
            ),
        });
    }
    conditions
}

/// One rule per API group, for the policy's kinds and operations.
fn rules(policy: &LoadedPolicy) -> Result<Vec<RuleWithOperations>, WebhookError> {
    let kinds = policy
        .matcher
        .kinds()
        .ok_or_else(|| WebhookError::AnyKind(policy.name.clone()))?;
    let mut by_group: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for kind in kinds {
        let resource = api_resource(kind).ok_or_else(|| WebhookError::UnknownKind {
            policy: policy.name.clone(),
            kind: kind.clone(),
        })?;
        let resources = by_group.entry(resource.group).or_default();
        if !resources.contains(&resource.plural) {
            resources.push(resource.plural);
        }
    }
    let operations: Vec<String> = policy
        .matcher
        .operations()
        .iter()
        .map(|op| crate::admission::operation_str(op).to_owned())
        .collect();
    Ok(by_group
        .into_iter()
        .map(|(group, resources)| RuleWithOperations {
            api_groups: Some(vec![group]),
            api_versions: Some(vec!["*".into()]),
            operations: Some(operations.clone()),
            resources: Some(resources),
            scope: Some("Namespaced".into()),
        })
        .collect())
}

/// Both configurations as one YAML stream.
pub fn to_yaml(
    mutating: &MutatingWebhookConfiguration,
    validating: &ValidatingWebhookConfiguration,
) -> Result<String, WebhookError> {
    let yaml = |e: serde_saphyr::ser::Error| WebhookError::Yaml(e.to_string());
    let m = serde_saphyr::to_string(mutating).map_err(yaml)?;
    let v = serde_saphyr::to_string(validating).map_err(yaml)?;
    Ok(format!("{m}---\n{v}"))
}
