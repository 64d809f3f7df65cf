//! OpenTelemetry on a real control plane. The suite's apiserver traces every request (its
//! tracing configuration, harness/control_plane.rs) and exports to the suite's OTLP receiver; it
//! sends the trace context along to the webhooks it calls. A confgate started with the standard
//! `OTEL_*` variables exports its own spans to the same receiver.

use super::{app_config, set_config_key, web_deployment};
use crate::harness::{Confgate, Cx, Options};
use crate::otlp::Span;

pub async fn e2e_a_kubectl_apply_is_one_trace_from_the_apiserver_into_confgate_and_its_rollout(
    cx: Cx,
) {
    let ns = cx.namespace("tracing").await;
    let kubectl = cx.kubectl();
    kubectl
        .ok(&["apply", "-f", "-"], Some(&app_config(&ns)))
        .await;
    let receiver = &cx.plane.traces;
    let service = format!("confgate-{ns}");
    let _confgate = Confgate::start(
        &cx,
        Options::shipped(&ns)
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.url)
            .env("OTEL_SERVICE_NAME", &service)
            .env("OTEL_BSP_SCHEDULE_DELAY", "200")
            .arg("--audit-interval=10m"),
    )
    .await;
    // Applied, and its first rollout finished (the test plays the kubelet).
    super::rollout::deployed(&cx, &ns, &web_deployment(&ns, "web", &[])).await;
    let object = format!("{ns}/web");
    let ours = |s: &Span| s.service == service;
    // Each of confgate's webhooks that reviewed the create (the registration has one per
    // policy and phase) has a span, under the apiserver's spans.
    let reviews: Vec<Span> = receiver
        .wait_for("confgate's reviews of the Deployment", |spans| {
            let found: Vec<Span> = spans
                .iter()
                .filter(|s| {
                    ours(s)
                        && s.attr("admission.kind") == "Deployment"
                        && s.attr("admission.object") == object
                        && s.attr("admission.operation") == "CREATE"
                })
                .cloned()
                .collect();
            let both = ["mutate", "validate"]
                .iter()
                .all(|e| found.iter().any(|s| s.name == *e));
            both.then_some(found)
        })
        .await;
    assert!(
        reviews
            .iter()
            .all(|s| s.attr("admission.decision") == "allow")
    );
    assert!(reviews.iter().all(|s| s.kind == 2), "server spans");
    assert!(
        reviews.iter().all(|s| s.trace_id == reviews[0].trace_id),
        "one kubectl apply, one trace: {reviews:#?}"
    );
    for review in &reviews {
        assert!(
            !review.parent_span_id.is_empty(),
            "the apiserver's trace context was taken: {review:#?}"
        );
        // The parent is the apiserver's own span of calling this webhook.
        let parent = receiver
            .wait_for("the apiserver's span that called confgate", |spans| {
                spans
                    .iter()
                    .find(|s| s.span_id == review.parent_span_id && s.service == "apiserver")
                    .cloned()
            })
            .await;
        assert_eq!(parent.trace_id, review.trace_id);
    }
    // The trace is the apiserver's handling of the create.
    let trace = &reviews[0].trace_id;
    let path = format!("/apis/apps/v1/namespaces/{ns}/deployments");
    let create = receiver
        .wait_for("the apiserver's span of the create", |spans| {
            spans
                .iter()
                .find(|s| {
                    &s.trace_id == trace
                        && s.service == "apiserver"
                        && s.attributes.values().any(|v| v.contains(&path))
                })
                .cloned()
        })
        .await;
    assert!(
        create.attributes.values().any(|v| v == "POST"),
        "{create:#?}"
    );

    // A change of the ConfigMap is a rollout round whose write is its own span.
    set_config_key(&kubectl, &ns, "app-config", "LOG_LEVEL", "debug").await;
    let write = receiver
        .wait_for("the rollout's write", |spans| {
            spans
                .iter()
                .find(|s| ours(s) && s.name == "rollout.write" && s.attr("name") == "web")
                .cloned()
        })
        .await;
    assert_eq!(write.attr("kind"), "Deployment");
    assert_eq!(write.attr("k8s.namespace.name"), ns);
    let round = receiver
        .wait_for("the rollout round", |spans| {
            spans
                .iter()
                .find(|s| s.span_id == write.parent_span_id)
                .cloned()
        })
        .await;
    assert_eq!(round.name, "rollout");
    // Among what changed (confgate watches every namespace: other tests' edits may share the
    // round).
    let ours_changed = format!("ConfigMap {ns}/app-config");
    assert!(
        round.attr("changed").split(", ").any(|c| c == ours_changed),
        "{round:#?}"
    );
    assert_eq!(round.attr("writes"), "1");
    assert_eq!(round.attr("full"), "false");
    // The audit's pass at leader start.
    let audit = receiver
        .wait_for("an audit pass", |spans| {
            spans
                .iter()
                .find(|s| ours(s) && s.name == "audit" && !s.attr("workloads").is_empty())
                .cloned()
        })
        .await;
    assert_eq!(audit.parent_span_id, "");
}
