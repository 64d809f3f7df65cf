//! The policy contract: a small trait each built-in policy type implements, the findings a policy
//! reports, and the registry that turns `spec.type` + `spec.settings` into a policy.
//!
//! A policy never sees HTTP: it gets the request envelope, the object, and the cluster state.
//! A violation is a value ([`Findings`]); only infrastructure trouble is a [`PolicyError`].

pub mod checksum_config;
mod file;
pub mod limitrange_defaults;
mod matcher;
pub mod protect_config_keys;
pub mod quota_fit;
mod registry;
pub mod require_config_keys;
mod store;

pub use file::{ConfigError, PolicySet, load_dir, load_str};
pub use matcher::{
    CONTROLLER_KINDS, Match, MatchInput, MatchSpec, being_deleted, labels_of,
    made_by_judged_controller,
};
pub use registry::{Factory, Registry, SettingsError, parse_settings};
pub use store::{PolicyStore, Replaced};

use crate::cluster::ClusterState;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, Operation};
use serde::Deserialize;
use serde_json::Value;

/// What a policy reads besides the object itself.
pub struct Context<'a> {
    /// The request envelope: kind, resource, namespace, operation, userInfo, dryRun.
    pub request: &'a AdmissionRequest<DynamicObject>,
    /// `request.oldObject` (UPDATE and DELETE).
    pub old_object: Option<&'a Value>,
    /// `metadata.managedFields` of `request.object` as received (mutators work on a copy
    /// without it): which field manager set which field.
    pub managed_fields: Option<&'a Value>,
    /// ConfigMaps, Secrets, Namespaces and LimitRanges, from watch caches or static manifests.
    pub cluster: &'a dyn ClusterState,
    /// The time of the judgement (how long a reader has waited for a Secret).
    pub now: std::time::SystemTime,
    /// True offline: the reviewed input is the whole story, so no reader waits for anything.
    pub settled: bool,
}

impl Context<'_> {
    /// The namespace of the request ("" for cluster-scoped objects).
    pub fn namespace(&self) -> &str {
        self.request.namespace.as_deref().unwrap_or_default()
    }
}

/// What a policy found. Violations are judged by the policy's `action` (deny, warn, audit);
/// warnings are always returned to the client as warnings.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Findings {
    /// Problems the policy's action applies to, one line each.
    pub violations: Vec<String>,
    /// Notes for the client that never deny (for example what could not be checked).
    pub warnings: Vec<String>,
    /// Judge the object again after this long (something it reads may still arrive).
    pub recheck_after: Option<std::time::Duration>,
}

impl Findings {
    /// Records a violation.
    pub fn violation(&mut self, message: impl Into<String>) {
        self.violations.push(message.into());
    }

    /// Records a warning.
    pub fn warn(&mut self, message: impl Into<String>) {
        self.warnings.push(message.into());
    }

    /// Asks for the object to be judged again after `wait`.
    pub fn recheck(&mut self, wait: std::time::Duration) {
        self.recheck_after = self.recheck_after.max(Some(wait));
    }

    /// True when nothing was found.
    pub fn is_empty(&self) -> bool {
        self.violations.is_empty() && self.warnings.is_empty()
    }
}

/// A policy file field that is wrong: its path in the document (`spec.match.kinds[0]`) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    /// The field's path; empty for the document as a whole.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl FieldError {
    /// An error at `field`.
    pub fn at(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }

    /// The same error, its path below `prefix` (`kinds[0]` under `spec.match`).
    pub fn under(self, prefix: &str) -> Self {
        let field = if self.field.is_empty() {
            prefix.to_owned()
        } else {
            format!("{prefix}.{}", self.field)
        };
        Self { field, ..self }
    }
}

impl From<SettingsError> for FieldError {
    fn from(e: SettingsError) -> Self {
        FieldError::at(e.path, e.message).under("spec.settings")
    }
}

/// An internal failure of a policy (not a violation). Judged by the policy's `onError`.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// Something the policy needs is unavailable.
    #[error("{0}")]
    Unavailable(String),
    /// The policy panicked; the engine caught it.
    #[error("policy panicked: {0}")]
    Panicked(String),
}

/// Which endpoints a policy type serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capabilities {
    /// Only `/validate`.
    Validate,
    /// Only `/mutate`.
    Mutate,
    /// `/mutate` (defaulting) and `/validate` (checks on the final object).
    Both,
}

impl Capabilities {
    /// True when the policy takes part in `endpoint`.
    pub fn serves(self, endpoint: Phase) -> bool {
        matches!(
            (self, endpoint),
            (Capabilities::Both, _)
                | (Capabilities::Validate, Phase::Validate)
                | (Capabilities::Mutate, Phase::Mutate)
        )
    }
}

/// The two admission phases (and their URL paths, `/mutate` and `/validate`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    /// MutatingAdmissionWebhook: may change the object.
    Mutate,
    /// ValidatingAdmissionWebhook: judges the final object.
    Validate,
}

impl Phase {
    /// `mutate` or `validate`, as in the URL path.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Mutate => "mutate",
            Phase::Validate => "validate",
        }
    }
}

/// A policy type. Implementations are pure: no side effects, no I/O (dry-run requests are
/// evaluated like any other), no panics on any input.
pub trait Policy: Send + Sync {
    /// Which endpoints this policy serves.
    fn capabilities(&self) -> Capabilities;

    /// The kinds this policy understands; `match.kinds` may only narrow them. `None`: any kind.
    fn kinds(&self) -> Option<&'static [&'static str]> {
        None
    }

    /// The kinds it applies to when `match.kinds` is empty (by default, all it understands).
    fn default_kinds(&self) -> Option<Vec<String>> {
        self.kinds()
            .map(|k| k.iter().map(|s| (*s).to_owned()).collect())
    }

    /// Operations beyond CREATE and UPDATE this policy evaluates (DELETE, CONNECT).
    fn extra_operations(&self) -> &'static [Operation] {
        &[]
    }

    /// True when its webhooks register with `failurePolicy: Ignore` unless the policy file says
    /// otherwise (what it protects must stay writable while confgate is down).
    fn fails_open(&self) -> bool {
        false
    }

    /// The operations it evaluates when `match.operations` is empty.
    fn default_operations(&self) -> &'static [Operation] {
        &matcher::DEFAULT_OPERATIONS
    }

    /// True when it judges UPDATEs of objects whose deletion has begun (by default they are
    /// left alone: nothing of them starts anew).
    fn judges_objects_being_deleted(&self) -> bool {
        false
    }

    /// Subresources (`scale`, `status`, ...) this policy evaluates; by default none.
    fn handles_subresource(&self, _subresource: &str) -> bool {
        false
    }

    /// The pod-template annotations this policy keeps in step with the cluster's
    /// configuration, when the rollout controller should write them as configuration changes
    /// (`checksum-config` with `rollout: true`); empty for every other policy.
    fn rollout_annotations(&self) -> Vec<&str> {
        Vec::new()
    }

    /// How the rollout controller rolls the readers of one change in waves, for the workloads
    /// this policy stamps (`checksum-config`); `None`: all at once, paced only.
    fn rollout_waves(&self) -> Option<checksum_config::Waves> {
        None
    }

    /// Judges the object. Violations go to `out`.
    fn validate(
        &self,
        _cx: &Context,
        _object: &Value,
        _out: &mut Findings,
    ) -> Result<(), PolicyError> {
        Ok(())
    }

    /// Edits `object` (a copy); the engine diffs all edits into one patch.
    fn mutate(
        &self,
        _cx: &Context,
        _object: &mut Value,
        _out: &mut Findings,
    ) -> Result<(), PolicyError> {
        Ok(())
    }
}

/// What a violation of this policy does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum Action {
    /// Deny the request.
    #[default]
    Deny,
    /// Allow it, returning the violations as warnings to the client.
    Warn,
    /// Allow it, recording the violations as audit annotations.
    Audit,
}

/// What an internal error in this policy means for the request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum OnError {
    /// Deny the request, naming the error.
    #[default]
    Deny,
    /// Allow the request (and, for mutation, drop this policy's changes); the error is logged
    /// and returned as a warning.
    Allow,
}

/// The webhook `failurePolicy` for this policy's registration (what the apiserver does when
/// confgate cannot be reached).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum FailurePolicy {
    /// Reject the request when confgate is unreachable.
    Fail,
    /// Let the request through when confgate is unreachable.
    Ignore,
}

/// A policy loaded from a policy file: its name, how it is judged, where it applies, and its
/// implementation.
pub struct LoadedPolicy {
    /// `metadata.name`: unique, a DNS label (used in URLs and audit annotation keys).
    pub name: String,
    /// `spec.type`.
    pub type_name: String,
    /// `spec.action`.
    pub action: Action,
    /// `spec.onError`.
    pub on_error: OnError,
    /// `spec.failurePolicy`, when set.
    pub failure_policy: Option<FailurePolicy>,
    /// `spec.match`, compiled.
    pub matcher: Match,
    /// The file it came from.
    pub source: std::path::PathBuf,
    /// The implementation built from `spec.settings`.
    pub policy: Box<dyn Policy>,
}

impl std::fmt::Debug for LoadedPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedPolicy")
            .field("name", &self.name)
            .field("type", &self.type_name)
            .field("action", &self.action)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// Helpers for the policies' unit tests: run one policy on one manifest.
#[cfg(test)]
pub(crate) mod testing {
    use super::{Context, Findings, Policy};
    use crate::admission::Review;
    use crate::cluster::ClusterState;
    use crate::cluster::static_state::StaticState;
    use serde_json::Value;

    fn managed_fields(review: &Review) -> Option<&Value> {
        review.object.as_ref()?.pointer("/metadata/managedFields")
    }

    /// The manifest as a CREATE review.
    pub fn review(object: Value) -> Review {
        crate::admission::manifest_review(object, 1).expect("review")
    }

    /// Cluster state from YAML.
    pub fn cluster(yaml: &str) -> StaticState {
        let mut state = StaticState::default();
        state
            .add_text(std::path::Path::new("test"), yaml)
            .expect("cluster state");
        state
    }

    /// Runs `validate` on the manifest.
    pub fn validate(policy: &dyn Policy, object: Value, cluster: &dyn ClusterState) -> Findings {
        let review = review(object);
        let cx = Context {
            request: &review.request,
            old_object: None,
            managed_fields: managed_fields(&review),
            cluster,
            now: std::time::SystemTime::now(),
            settled: false,
        };
        let mut out = Findings::default();
        policy
            .validate(&cx, review.object.as_ref().expect("object"), &mut out)
            .expect("validate");
        out
    }

    /// Runs `mutate` on the manifest; the mutated object and the findings.
    pub fn mutate(
        policy: &dyn Policy,
        object: Value,
        cluster: &dyn ClusterState,
    ) -> (Value, Findings) {
        let review = review(object);
        let cx = Context {
            request: &review.request,
            old_object: None,
            managed_fields: managed_fields(&review),
            cluster,
            now: std::time::SystemTime::now(),
            settled: false,
        };
        let mut out = Findings::default();
        // As the engine hands it over.
        let mut object = crate::engine::diff::working_copy(review.object.as_ref().expect("object"));
        policy.mutate(&cx, &mut object, &mut out).expect("mutate");
        (object, out)
    }
}
