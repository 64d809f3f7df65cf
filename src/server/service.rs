//! The admission pipeline behind the HTTP handlers, without axum: parse the review, fetch what
//! the cluster state needs, evaluate, encode; log and count. Large bodies are parsed and
//! evaluated on [`BulkPool`]: never on the async workers that serve small ones, on at most
//! `cores - 1` threads, which run only when a core is otherwise idle (`SCHED_IDLE`).

use crate::admission::{self, Review, ReviewError, operation_str};
use crate::engine::{Decision, Engine, EngineError};
use crate::metrics::{Metrics, PolicyLabels, RequestLabels};
use crate::policy::{Endpoint, PolicySet};
use crate::server::bulk::BulkPool;
use arc_swap::ArcSwap;
use bytes::Bytes;
use std::sync::Arc;
use std::time::Instant;

/// The longest text taken from a request into a log line (a Kubernetes name is at most 253).
const LOGGED_CHARS: usize = 253;

/// `text`, cut to [`LOGGED_CHARS`] characters with the size it had: request fields are echoed
/// into logs, and a caller controls their length.
pub fn capped(text: &str) -> std::borrow::Cow<'_, str> {
    match text.char_indices().nth(LOGGED_CHARS) {
        None => std::borrow::Cow::Borrowed(text),
        Some((cut, _)) => {
            std::borrow::Cow::Owned(format!("{}...({} bytes)", &text[..cut], text.len()))
        }
    }
}

/// Bodies above this size are parsed and evaluated on the large-review threads ([`BulkPool`]).
pub const OFFLOAD_BYTES: usize = 256 * 1024;

/// How many large bodies are parsed and evaluated at once: one core fewer than the machine has
/// (at least one), so small reviews always keep a core.
pub fn bulk_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get().saturating_sub(1))
        .unwrap_or(1)
        .max(1)
}

/// Everything needed to answer a review.
pub struct Admission {
    /// The engine (and its cluster state).
    pub engine: Engine,
    /// The policies in force; swapped whole on reload, so a request finishes on the set it began with.
    pub policies: ArcSwap<PolicySet>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Where large bodies are parsed and evaluated.
    bulk: BulkPool,
}

/// Why a request got no AdmissionReview answer.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The body is not an AdmissionReview we can answer (HTTP 400).
    #[error(transparent)]
    BadReview(#[from] ReviewError),
    /// The URL names a policy that is not loaded or does not serve this endpoint (HTTP 404).
    #[error(transparent)]
    Policy(#[from] EngineError),
    /// The answer could not be encoded (HTTP 500; not expected to happen).
    #[error("cannot encode response: {0}")]
    Encode(#[from] serde_json::Error),
    /// The thread working on a large body failed (HTTP 500).
    #[error("evaluation task failed: {0}")]
    Task(String),
}

impl ServiceError {
    /// A short label for the rejected-requests metric.
    pub fn reason(&self) -> &'static str {
        match self {
            ServiceError::BadReview(_) => "invalid_review",
            ServiceError::Policy(_) => "unknown_policy",
            ServiceError::Encode(_) | ServiceError::Task(_) => "internal",
        }
    }
}

impl Admission {
    /// The pipeline for `policies`, evaluated by `engine`, counted in `metrics`; large bodies
    /// are worked on by `bulk_threads` low-priority threads.
    pub fn new(
        engine: Engine,
        policies: PolicySet,
        metrics: Arc<Metrics>,
        bulk_threads: usize,
    ) -> Self {
        Self {
            engine,
            policies: ArcSwap::from_pointee(policies),
            metrics,
            bulk: BulkPool::new(bulk_threads),
        }
    }

    /// Answers one AdmissionReview body: the encoded response AdmissionReview.
    pub async fn review(
        self: &Arc<Self>,
        body: Bytes,
        endpoint: Endpoint,
        only: Option<String>,
    ) -> Result<Vec<u8>, ServiceError> {
        let started = Instant::now();
        let large = body.len() > OFFLOAD_BYTES;
        let review = if large {
            self.bulk
                .run(move || admission::parse_review(&body))
                .await
                .map_err(|e| ServiceError::Task(e.to_string()))??
        } else {
            admission::parse_review(&body)?
        };
        let cluster = self.engine.cluster();
        if cluster.wants_secret_prefetch() {
            let secrets = crate::workload::secret_names(&review);
            if !secrets.is_empty() {
                let namespace = review.request.namespace.clone().unwrap_or_default();
                cluster.prefetch_secrets(&namespace, secrets).await;
            }
        }
        let this = self.clone();
        let run = move || this.decide(review, endpoint, only.as_deref(), started);
        if large {
            self.bulk
                .run(run)
                .await
                .map_err(|e| ServiceError::Task(e.to_string()))?
        } else {
            run()
        }
    }

    fn decide(
        &self,
        review: Review,
        endpoint: Endpoint,
        only: Option<&str>,
        started: Instant,
    ) -> Result<Vec<u8>, ServiceError> {
        let set = self.policies.load();
        let decision = self.engine.evaluate(&set, &review, endpoint, only)?;
        let response = decision.to_response(&review.request);
        let patch = (!decision.patch.0.is_empty()).then_some(&decision.patch);
        let body = admission::encode_response(review.api_version(), &response, patch)?;
        self.record(&review, endpoint, &decision, started);
        Ok(body)
    }

    /// One log line and the metrics for an answered review. Never the object, never Secret data.
    fn record(&self, review: &Review, endpoint: Endpoint, decision: &Decision, started: Instant) {
        let took = started.elapsed();
        let request = &review.request;
        let operation = operation_str(&request.operation);
        let kind = crate::metrics::kind_label(&request.kind.kind);
        let verdict = match (&decision.skipped, decision.allowed()) {
            (Some(_), _) => "skip",
            (None, true) => "allow",
            (None, false) => "deny",
        };
        for v in decision
            .verdicts
            .iter()
            .filter(|v| v.outcome != crate::engine::Outcome::Skipped)
        {
            let labels = PolicyLabels {
                policy: v.policy.clone(),
                endpoint: endpoint.as_str(),
                kind,
                operation,
                verdict: v.outcome.as_str(),
            };
            self.metrics.observe_policy(labels, v.duration);
        }
        self.metrics.observe_request(
            RequestLabels {
                endpoint: endpoint.as_str(),
                kind,
                operation,
                decision: verdict,
            },
            took,
        );
        if tracing::enabled!(tracing::Level::INFO) {
            let policies: Vec<String> = decision
                .verdicts
                .iter()
                .filter(|v| v.outcome != crate::engine::Outcome::Skipped)
                .map(|v| format!("{}={}", v.policy, v.outcome.as_str()))
                .collect();
            tracing::info!(
                uid = %capped(&request.uid),
                kind = %capped(&request.kind.kind),
                object = %capped(&review.display_name()),
                operation,
                subresource = request.sub_resource.as_deref().unwrap_or(""),
                dry_run = request.dry_run,
                endpoint = endpoint.as_str(),
                decision = verdict,
                policies = %policies.join(","),
                patch_ops = decision.patch_ops(),
                warnings = decision.warnings.len(),
                duration_us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
                "review"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn request_text_is_capped_in_logs() {
        assert_eq!(super::capped("web"), "web");
        let uid = "u".repeat(5 << 20);
        let logged = super::capped(&uid);
        assert_eq!(logged, format!("{}...(5242880 bytes)", "u".repeat(253)));
        let name = "é".repeat(300);
        assert_eq!(
            super::capped(&name),
            format!("{}...(600 bytes)", "é".repeat(253))
        );
    }
}
