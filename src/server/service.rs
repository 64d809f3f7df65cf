//! The admission pipeline behind the HTTP handlers, without axum: parse the review, fetch what
//! the cluster state needs, evaluate, encode; log and count. Large bodies are parsed and
//! evaluated on [`LargeReviewPool`]: never on the async workers that serve small ones, on at most
//! `cores - 1` threads, which run only when a core is otherwise idle (`SCHED_IDLE`).

use crate::admission::{self, DENY_REASON, Review, ReviewError, operation_str};
use crate::cluster::fresh::Fresh;
use crate::engine::{Decision, Engine, EngineError};
use crate::metrics::{Metrics, PolicyLabels, RequestLabels};
use crate::policy::{FailurePolicy, Phase, PolicySet, PolicyStore};
use crate::server::budget::Limits;
use crate::server::large_reviews::LargeReviewPool;
use bytes::Bytes;
use kube::core::Status;
use kube::core::admission::AdmissionResponse;
use std::sync::Arc;
use std::time::Instant;

/// The longest text taken from a request into a log line (a Kubernetes name is at most 253).
const LOGGED_CHARS: usize = 253;

/// `text`, cut to [`LOGGED_CHARS`] characters with the size it had: request fields are echoed
/// into logs, and a caller controls their length.
pub fn capped(text: &str) -> std::borrow::Cow<'_, str> {
    cap(text, LOGGED_CHARS)
}

/// `text`, cut to `max` characters with the size it had.
pub fn cap(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    match text.char_indices().nth(max) {
        None => std::borrow::Cow::Borrowed(text),
        Some((cut, _)) => {
            std::borrow::Cow::Owned(format!("{}...({} bytes)", &text[..cut], text.len()))
        }
    }
}

/// Bodies above this size are parsed and evaluated on the large-review threads ([`LargeReviewPool`]).
pub const OFFLOAD_BYTES: usize = 256 * 1024;

/// Reviews with more containers than this are evaluated on the large-review threads too,
/// whatever their size: the cost of evaluation grows with the containers, not the bytes.
pub const OFFLOAD_CONTAINERS: usize = 64;

/// How many large bodies are parsed and evaluated at once: one core fewer than the machine has
/// (at least one), so small reviews always keep a core.
pub fn large_review_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get().saturating_sub(1))
        .unwrap_or(1)
        .max(1)
}

/// Everything needed to answer a review.
pub struct ReviewService {
    /// The engine (and its cluster state).
    pub engine: Engine,
    /// The policies in force (shared with reload, the controllers and the webhook manager).
    pub policies: Arc<PolicyStore>,
    pub metrics: Arc<Metrics>,
    /// Where large bodies are parsed and evaluated.
    large_reviews: LargeReviewPool,
    /// Per-review limits.
    limits: Limits,
    /// Where reviews admitted while a Secret they read may still arrive are judged again.
    followups: std::sync::OnceLock<crate::controllers::followup::Followups>,
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
    Task(#[from] super::large_reviews::PoolError),
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

impl ReviewService {
    /// The cluster, policies and metrics, for the background controllers.
    pub fn judging(&self) -> crate::engine::Judging {
        crate::engine::Judging {
            cluster: self.engine.cluster().clone(),
            policies: self.policies.clone(),
            metrics: self.metrics.clone(),
        }
    }

    /// The pipeline for `policies`, evaluated by `engine`, counted in `metrics`, within
    /// `limits`; costly reviews are worked on by `large_review_threads` low-priority threads.
    pub fn new(
        engine: Engine,
        policies: PolicySet,
        metrics: Arc<Metrics>,
        large_review_threads: usize,
        limits: Limits,
    ) -> Self {
        Self {
            engine,
            policies: Arc::new(PolicyStore::new(policies)),
            metrics,
            large_reviews: LargeReviewPool::new(large_review_threads),
            limits,
            followups: std::sync::OnceLock::new(),
        }
    }

    /// Judges again, later, what a policy asked to see again (live clusters only); set once.
    pub fn follow_up_with(&self, followups: crate::controllers::followup::Followups) {
        let _ = self.followups.set(followups);
    }

    /// Answers one AdmissionReview body: the encoded response AdmissionReview.
    pub async fn review(
        self: &Arc<Self>,
        body: Bytes,
        endpoint: Phase,
        only: Option<String>,
    ) -> Result<Vec<u8>, ServiceError> {
        let started = Instant::now();
        let large = body.len() > OFFLOAD_BYTES;
        let review = if large {
            self.large_reviews
                .run(move || admission::parse_review(&body))
                .await??
        } else {
            admission::parse_review(&body)?
        };
        described(&tracing::Span::current(), &review);
        let kind = review.request.kind.kind.as_str();
        let containers = [&review.object, &review.old_object]
            .into_iter()
            .flatten()
            .map(|o| crate::workload::container_count(kind, o))
            .sum::<usize>();
        if containers > self.limits.max_review_containers {
            let what = format!(
                "{containers} containers, over the limit of {} per review (--max-review-containers)",
                self.limits.max_review_containers
            );
            return self.over_budget(&review, endpoint, only.as_deref(), &what);
        }
        let costly = large || containers > OFFLOAD_CONTAINERS;
        let review = Arc::new(review);
        let stamping = endpoint == Phase::Mutate;
        let fresh = tracing::Instrument::instrument(
            self.engine
                .read_ahead_as(&review, &Fresh::default(), stamping),
            tracing::info_span!("read_ahead"),
        )
        .await;
        let (mut decision, mut fresh) = self
            .evaluate(&review, endpoint, only.clone(), costly, fresh)
            .await?;
        if self.engine.needs_confirming(&review, &decision) {
            let confirming = Instant::now();
            fresh = tracing::Instrument::instrument(
                self.engine.confirm(&review, fresh),
                tracing::info_span!("confirm", reason = "a denial that reads the cluster"),
            )
            .await;
            let denied = !decision.allowed();
            (decision, fresh) = self
                .evaluate(&review, endpoint, only.clone(), costly, fresh)
                .await?;
            self.metrics.confirmed(
                denied,
                decision.allowed(),
                fresh.failed(),
                confirming.elapsed(),
            );
        }
        drop(fresh);
        if let (Some(followups), Some(wait)) = (self.followups.get(), decision.recheck_after)
            && decision.allowed()
            && !review.request.dry_run
        {
            followups.schedule(&review.request, wait);
        }
        self.answer(&review, endpoint, only.as_deref(), decision, started)
    }

    /// Evaluates on the large-review threads when `costly`, here otherwise.
    async fn evaluate(
        self: &Arc<Self>,
        review: &Arc<Review>,
        endpoint: Phase,
        only: Option<String>,
        costly: bool,
        fresh: Fresh,
    ) -> Result<(Decision, Fresh), ServiceError> {
        let this = self.clone();
        let target = review.clone();
        // The large-review threads carry the review's span along.
        let span = tracing::Span::current();
        let run = move || {
            let _in = span.enter();
            let set = this.policies.current();
            this.engine
                .evaluate_with(&set, &target, endpoint, only.as_deref(), &fresh)
                .map(|decision| (decision, fresh))
        };
        Ok(if costly {
            self.large_reviews.run(run).await??
        } else {
            run()?
        })
    }

    fn answer(
        &self,
        review: &Review,
        endpoint: Phase,
        only: Option<&str>,
        decision: Decision,
        started: Instant,
    ) -> Result<Vec<u8>, ServiceError> {
        if decision.patch_ops() > self.limits.max_patch_ops {
            let what = format!(
                "its patch has {} operations, over the limit of {} (--max-patch-ops)",
                decision.patch_ops(),
                self.limits.max_patch_ops
            );
            return self.over_budget(review, endpoint, only, &what);
        }
        let response = decision.to_response(&review.request);
        let patch = (!decision.patch.0.is_empty()).then_some(&decision.patch);
        let body = admission::encode_response(review.api_version(), &response, patch)?;
        if body.len() > self.limits.max_answer_bytes {
            let what = format!(
                "its answer has {} bytes, over the limit of {} (--max-answer-bytes)",
                body.len(),
                self.limits.max_answer_bytes
            );
            return self.over_budget(review, endpoint, only, &what);
        }
        self.record(review, endpoint, &decision, started);
        let span = tracing::Span::current();
        span.record("admission.decision", verdict(&decision));
        span.record("admission.patch_ops", decision.patch_ops());
        Ok(body)
    }

    /// The answer to a review that is over its budget, as the webhook's failurePolicy would
    /// have it if confgate could not answer at all: with `Fail` (validation by default) it is
    /// denied, because a check that cannot check must not let the object through; with
    /// `Ignore` (mutation by default) it is allowed unchanged, with a warning. Either way the
    /// message says why, instead of the process being killed for memory.
    fn over_budget(
        &self,
        review: &Review,
        endpoint: Phase,
        only: Option<&str>,
        what: &str,
    ) -> Result<Vec<u8>, ServiceError> {
        let failure_policy = only
            .and_then(|name| {
                self.policies
                    .current()
                    .get(name)
                    .and_then(|p| p.failure_policy)
            })
            .unwrap_or_else(|| crate::webhooks::default_failure_policy(endpoint));
        let message = format!(
            "confgate did not review {} {}: {what}",
            capped(&review.request.kind.kind),
            capped(&review.display_name())
        );
        let mut response = AdmissionResponse::from(&review.request);
        match failure_policy {
            FailurePolicy::Fail => {
                response = response.deny(&message);
                response.result = Status::failure(&message, DENY_REASON).with_code(403);
            }
            FailurePolicy::Ignore => response.warnings = Some(vec![message.clone()]),
        }
        tracing::warn!(
            uid = %capped(&review.request.uid),
            endpoint = endpoint.as_str(),
            failure_policy = ?failure_policy,
            %message,
            "review over budget"
        );
        self.metrics.rejected("over_budget");
        Ok(admission::encode_response(
            review.api_version(),
            &response,
            None,
        )?)
    }

    /// One log line and the metrics for an answered review. Never the object, never Secret data.
    fn record(&self, review: &Review, endpoint: Phase, decision: &Decision, started: Instant) {
        let took = started.elapsed();
        let request = &review.request;
        let operation = operation_str(&request.operation);
        let kind = crate::metrics::kind_label(&request.kind.kind);
        let verdict = verdict(decision);
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

/// `allow`, `deny` or `skip`.
fn verdict(decision: &Decision) -> &'static str {
    match (&decision.skipped, decision.allowed()) {
        (Some(_), _) => "skip",
        (None, true) => "allow",
        (None, false) => "deny",
    }
}

/// The request's identity on the review's span (what the logs show: never the object itself).
fn described(span: &tracing::Span, review: &Review) {
    if span.is_disabled() {
        return;
    }
    let request = &review.request;
    span.record("admission.uid", capped(&request.uid).as_ref());
    span.record("admission.kind", capped(&request.kind.kind).as_ref());
    span.record("admission.operation", operation_str(&request.operation));
    span.record("admission.dry_run", request.dry_run);
    if let Some(namespace) = request.namespace.as_deref() {
        span.record("k8s.namespace.name", capped(namespace).as_ref());
    }
    span.record("admission.object", capped(&review.display_name()).as_ref());
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
