//! The result of one evaluation, and how it becomes an AdmissionResponse.

use crate::admission::DENY_REASON;
use crate::policy::{LoadedPolicy, Phase};
use kube::core::DynamicObject;
use kube::core::Status;
use kube::core::admission::{AdmissionRequest, AdmissionResponse};
use std::collections::BTreeMap;
use std::time::Duration;

/// What one policy made of the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The policy does not apply (kind, operation, namespace, selector, subresource).
    Skipped,
    /// Applied, nothing found.
    Passed,
    /// Violations, and the policy's action is Deny.
    Denied,
    /// Violations returned as warnings.
    Warned,
    /// Violations recorded as audit annotations.
    Audited,
    /// The policy failed; `denied` tells what its `onError` made of it.
    Error {
        /// True with `onError: Deny`.
        denied: bool,
    },
}

impl Outcome {
    /// A short label for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Skipped => "skip",
            Outcome::Passed => "pass",
            Outcome::Denied => "deny",
            Outcome::Warned => "warn",
            Outcome::Audited => "audit",
            Outcome::Error { .. } => "error",
        }
    }
}

/// One policy's verdict.
#[derive(Debug, Clone)]
pub struct PolicyVerdict {
    /// The policy's name.
    pub policy: String,
    /// The phase it ran in.
    pub endpoint: Phase,
    /// What came of it.
    pub outcome: Outcome,
    /// Its violations (judged by its action), or why it was skipped.
    pub violations: Vec<String>,
    /// Its warnings.
    pub warnings: Vec<String>,
    /// Time spent in the policy.
    pub duration: Duration,
}

impl PolicyVerdict {
    pub(crate) fn skipped(policy: &LoadedPolicy, endpoint: Phase, reason: String) -> Self {
        Self {
            policy: policy.name.clone(),
            endpoint,
            outcome: Outcome::Skipped,
            violations: vec![reason],
            warnings: vec![],
            duration: Duration::ZERO,
        }
    }
}

/// The engine's answer for one review at one endpoint.
#[derive(Debug, Clone, Default)]
pub struct Decision {
    /// Every selected policy's verdict, in policy order.
    pub verdicts: Vec<PolicyVerdict>,
    /// Denial lines, `policy: problem`.
    pub denials: Vec<String>,
    /// Warnings for the client, `policy: message`.
    pub warnings: Vec<String>,
    /// `policy/violations` → messages, for Audit-mode policies.
    pub audit_annotations: BTreeMap<String, String>,
    /// The patch (empty when nothing changed or the request is denied).
    pub patch: json_patch::Patch,
    /// Set when the request was not evaluated at all, with why.
    pub skipped: Option<String>,
    /// When a policy asked for the object to be judged again later (a Secret its reader waits
    /// for): the longest of their waits.
    pub recheck_after: Option<std::time::Duration>,
}

impl Decision {
    /// True unless a policy denied.
    pub fn allowed(&self) -> bool {
        self.denials.is_empty()
    }

    /// The message of a denial: one line per problem, each naming its policy.
    pub fn message(&self) -> String {
        self.denials.join("\n")
    }

    /// Merges a later phase (validation after mutation) into this one.
    pub fn then(mut self, later: Decision) -> Decision {
        self.verdicts.extend(later.verdicts);
        self.denials.extend(later.denials);
        for warning in later.warnings {
            if !self.warnings.contains(&warning) {
                self.warnings.push(warning);
            }
        }
        self.audit_annotations.extend(later.audit_annotations);
        self.recheck_after = self.recheck_after.max(later.recheck_after);
        if !self.denials.is_empty() {
            self.patch = json_patch::Patch(vec![]);
        }
        self
    }

    /// Number of patch operations.
    pub fn patch_ops(&self) -> usize {
        self.patch.0.len()
    }

    /// The AdmissionResponse for `request`: same uid; a denial carries code 403, reason
    /// Forbidden and the message. The patch goes alongside (see [`crate::admission::encode_response`]).
    pub fn to_response(&self, request: &AdmissionRequest<DynamicObject>) -> AdmissionResponse {
        let mut response = AdmissionResponse::from(request);
        if !self.allowed() {
            response = response.deny(self.message());
            response.result = Status::failure(&self.message(), DENY_REASON).with_code(403);
        }
        if !self.warnings.is_empty() {
            response.warnings = Some(self.warnings.clone());
        }
        response.audit_annotations = self
            .audit_annotations
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        response
    }
}
