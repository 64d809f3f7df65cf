//! Rollout benchmarks on the real control plane, reported rather than asserted on timing
//! (`cargo test --test e2e -- --ignored bench_`; figures in BENCHMARKS.md). What they do assert
//! is behaviour: every consuming Deployment rolls, and never faster than the configured rate.

use crate::harness::{Confgate, Cx, Kubectl, Options, eventually};
use serde_json::Value;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How many Deployments consume the one ConfigMap.
const DEPLOYMENTS: usize = 200;

/// `count` Deployments with 0 replicas (settled at once: no kubelet needed) that read key
/// `LEVEL` of ConfigMap `shared`.
/// Plus ConfigMap `solo`, read by Deployment `solo` alone.
fn manifests(ns: &str, count: usize) -> String {
    let mut out = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: shared, namespace: {ns}}}\ndata: {{LEVEL: '0', OTHER: x}}\n"
    );
    out.push_str(&format!(
        "---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: solo, namespace: {ns}}}\ndata: {{LEVEL: '0'}}\n"
    ));
    out.push_str(&deployment(ns, "solo", "solo"));
    for i in 0..count {
        out.push_str(&deployment(ns, &format!("app-{i:03}"), "shared"));
    }
    out
}

fn deployment(ns: &str, name: &str, config: &str) -> String {
    let env = format!(
        "        env:\n        - name: LEVEL\n          valueFrom: {{configMapKeyRef: {{name: {config}, key: LEVEL}}}}\n"
    );
    format!("---\n{}", super::app_deployment(ns, name, &env))
}

/// Deployments of the namespace whose checksum differs from `before` (by name).
async fn checksums(kubectl: &Kubectl, ns: &str) -> Vec<(String, String)> {
    let list = kubectl.get(ns, "deployments").await.unwrap_or_default();
    let mut out: Vec<(String, String)> = list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|d| {
            (
                d["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                d["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
        .collect();
    out.sort();
    out
}

/// Applies the app and waits until every Deployment is stamped and observed.
async fn deploy(cx: &Cx, ns: &str) -> Kubectl {
    let kubectl = cx.kubectl();
    kubectl
        .ok(&["apply", "-f", "-"], Some(&manifests(ns, DEPLOYMENTS)))
        .await;
    settled(&kubectl, ns).await;
    kubectl
}

/// Waits until the Deployment controller has seen every Deployment's current spec (confgate
/// holds back a workload whose last rollout has not finished).
async fn settled(kubectl: &Kubectl, ns: &str) {
    eventually(
        Duration::from_secs(120),
        "every Deployment stamped and observed",
        || {
            let kubectl = kubectl.clone();
            let ns = ns.to_owned();
            async move {
                let list = kubectl.get(&ns, "deployments").await?;
                let items = list["items"].as_array()?;
                let done = items.len() == DEPLOYMENTS + 1
                    && items.iter().all(|d| {
                        d["status"]["observedGeneration"] == d["metadata"]["generation"]
                            && d["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
                                .is_string()
                    });
                done.then_some(())
            }
        },
    )
    .await;
}

async fn set_level(kubectl: &Kubectl, ns: &str, config: &str, level: usize) -> f64 {
    let sent = unix_now();
    super::set_config_key(kubectl, ns, config, "LEVEL", &level.to_string()).await;
    sent
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Seconds since the epoch of an RFC 3339 UTC timestamp as the JSON log writes it
/// (`2026-11-23T07:34:32.788589Z`).
fn parse_timestamp(ts: &str) -> Option<f64> {
    let (date, time) = ts.trim_end_matches('Z').split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let mut t = time.split(':');
    let (h, min, sec) = (
        t.next()?.parse::<f64>().ok()?,
        t.next()?.parse::<f64>().ok()?,
        t.next()?.parse::<f64>().ok()?,
    );
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days as f64 * 86_400.0 + h * 3_600.0 + min * 60.0 + sec)
}

/// When confgate wrote each rollout (its log's "configuration changed: rolling" lines).
fn writes(confgate: &Confgate) -> Vec<f64> {
    let text =
        std::fs::read_to_string(confgate.dir.path().join("confgate.log")).unwrap_or_default();
    let mut out: Vec<f64> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["message"] == "configuration changed: rolling")
        .filter_map(|l| parse_timestamp(l["timestamp"].as_str()?))
        .collect();
    out.sort_by(f64::total_cmp);
    out
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub async fn bench_rollout_200_deployments_at_the_configured_rate(cx: Cx) {
    let (per_minute, burst) = (120.0, 10.0);
    let ns = cx.namespace("bench-rate").await;
    let confgate = Confgate::start(
        &cx,
        Options::shipped(&ns)
            .arg(format!("--rollout-rate-per-minute={per_minute}"))
            .arg(format!("--rollout-burst={burst}"))
            .arg("--rollout-min-interval-seconds=0"),
    )
    .await;
    let kubectl = deploy(&cx, &ns).await;
    let before = checksums(&kubectl, &ns).await;
    let sent = set_level(&kubectl, &ns, "shared", 1).await;
    let limit = Duration::from_secs_f64(60.0 * DEPLOYMENTS as f64 / per_minute + 60.0);
    eventually(limit, "every Deployment rolled", || {
        let kubectl = kubectl.clone();
        let ns = ns.clone();
        let before = before.clone();
        async move {
            let now = checksums(&kubectl, &ns).await;
            let all = now.len() == before.len()
                && now
                    .iter()
                    .zip(&before)
                    .all(|(a, b)| a.0 == b.0 && (a.1 != b.1 || a.0 == "solo"));
            all.then_some(())
        }
    })
    .await;
    if let Ok(path) = std::env::var("BENCH_KEEP_LOG") {
        let _ = std::fs::copy(confgate.dir.path().join("confgate.log"), path);
    }
    let times = writes(&confgate);
    assert_eq!(times.len(), DEPLOYMENTS, "one write per Deployment");
    // Never faster than the bucket allows: in any stretch, burst + rate x its length.
    let mut worst: f64 = 0.0;
    for (i, start) in times.iter().enumerate() {
        for (j, end) in times.iter().enumerate().skip(i) {
            let allowed = burst + per_minute / 60.0 * (end - start) + 1e-9;
            let count = (j - i + 1) as f64;
            assert!(
                count <= allowed.floor() + 1.0,
                "{count} writes in {:.2} s",
                end - start
            );
            if end - start >= 10.0 {
                worst = worst.max(count / (end - start) * 60.0);
            }
        }
    }
    let first = times.first().copied().unwrap_or(sent) - sent;
    let last = times.last().copied().unwrap_or(sent) - sent;
    eprintln!(
        "bench: {DEPLOYMENTS} Deployments rolled at --rollout-rate-per-minute={per_minute} --rollout-burst={burst}: first write {first:.2} s after the change, last {last:.1} s; fastest 10 s+ stretch {worst:.0}/min; expected {:.1} s",
        (DEPLOYMENTS as f64 - burst) / per_minute * 60.0
    );
}

pub async fn bench_rollout_latency_from_change_to_write(cx: Cx) {
    let ns = cx.namespace("bench-latency").await;
    let confgate = Confgate::start(
        &cx,
        Options::shipped(&ns)
            .arg("--rollout-rate-per-minute=1000000")
            .arg("--rollout-burst=100000")
            .arg("--rollout-min-interval-seconds=0"),
    )
    .await;
    let kubectl = deploy(&cx, &ns).await;
    // One workload per change, then all 200 at once.
    let solo = latencies(&confgate, &kubectl, &ns, "solo", 20, 1).await;
    let shared = latencies(&confgate, &kubectl, &ns, "shared", 5, DEPLOYMENTS).await;
    if let Ok(path) = std::env::var("BENCH_KEEP_LOG") {
        let _ = std::fs::copy(confgate.dir.path().join("confgate.log"), path);
    }
    for (what, l) in [("1 consumer", &solo), ("200 consumers", &shared)] {
        eprintln!(
            "bench: change -> write, {what}, not throttled, {} writes: p50 {:.0} ms, p90 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
            l.len(),
            percentile(l, 50.0) * 1000.0,
            percentile(l, 90.0) * 1000.0,
            percentile(l, 99.0) * 1000.0,
            l.last().copied().unwrap_or(f64::NAN) * 1000.0,
        );
    }
}

/// `rounds` changes of ConfigMap `config`, each awaited until its `consumers` are written:
/// the time from each change to each write, sorted.
async fn latencies(
    confgate: &Confgate,
    kubectl: &Kubectl,
    ns: &str,
    config: &str,
    rounds: usize,
    consumers: usize,
) -> Vec<f64> {
    let mut out = Vec::new();
    for round in 1..=rounds {
        let seen = writes(confgate).len();
        let sent = set_level(kubectl, ns, config, 100 + round).await;
        eventually(
            Duration::from_secs(60),
            "every consumer written",
            || async move { (writes(confgate).len() >= seen + consumers).then_some(()) },
        )
        .await;
        out.extend(writes(confgate)[seen..].iter().map(|t| t - sent));
        // The next change once the Deployment controller has caught up.
        settled(kubectl, ns).await;
    }
    out.sort_by(f64::total_cmp);
    assert_eq!(out.len(), rounds * consumers);
    out
}

/// `/validate` answer times at the client, `count` requests ~10 ms apart, sorted, in
/// milliseconds. The review is a Deployment of `ns` reading ConfigMap `shared`: judged from the
/// caches alone (no API read), so what it measures is confgate, not the API server.
async fn validate_times(confgate: &Confgate, ns: &str, count: usize) -> Vec<f64> {
    let ca = std::fs::read(confgate.ca_path()).expect("the CA");
    let client = crate::harness::confgate::https_client(&ca);
    let object: Value = confgate::yaml::documents(&deployment(ns, "probe", "shared"))
        .expect("a Deployment")
        .remove(0);
    let body = serde_json::json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {"uid": "5b3c1e6e-0d1f-4a57-9d55-3b7f0b1a2c3d",
            "kind": {"group": "apps", "version": "v1", "kind": "Deployment"},
            "resource": {"group": "apps", "version": "v1", "resource": "deployments"},
            "name": "probe", "namespace": ns, "operation": "CREATE",
            "userInfo": {"username": "bench"}, "object": object}})
    .to_string();
    let url = format!("{}/validate", confgate.url());
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let started = std::time::Instant::now();
        let answer = client
            .post(&url)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .expect("an answer");
        assert_eq!(answer.status(), 200);
        let answer: Value = answer.json().await.expect("a review");
        assert_eq!(answer["response"]["allowed"], true, "{answer}");
        out.push(started.elapsed().as_secs_f64() * 1000.0);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    out.sort_by(f64::total_cmp);
    out
}

/// Whether the controller's work delays admission answers: `/validate` times at the client
/// while idle, and while 200 Deployments roll at full speed (the controllers run on their own
/// runtime, `src/background.rs`).
pub async fn bench_validate_latency_while_200_workloads_roll(cx: Cx) {
    let ns = cx.namespace("bench-validate-load").await;
    let confgate = Confgate::start(
        &cx,
        Options::shipped(&ns)
            .arg("--rollout-rate-per-minute=1000000")
            .arg("--rollout-burst=100000")
            .arg("--rollout-min-interval-seconds=0"),
    )
    .await;
    let kubectl = deploy(&cx, &ns).await;
    // Warm the connection and the caches.
    validate_times(&confgate, &ns, 50).await;
    let idle = validate_times(&confgate, &ns, 500).await;
    let seen = writes(&confgate).len();
    set_level(&kubectl, &ns, "shared", 7).await;
    let mut loaded = Vec::new();
    while writes(&confgate).len() < seen + DEPLOYMENTS {
        loaded.extend(validate_times(&confgate, &ns, 50).await);
    }
    loaded.sort_by(f64::total_cmp);
    if let Ok(path) = std::env::var("BENCH_KEEP_LOG") {
        let _ = std::fs::copy(confgate.dir.path().join("confgate.log"), path);
    }
    for (what, times) in [("idle", &idle), ("while 200 roll", &loaded)] {
        eprintln!(
            "bench: /validate at the client, {what}, {} requests: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            times.len(),
            percentile(times, 50.0),
            percentile(times, 99.0),
            times.last().copied().unwrap_or(f64::NAN),
        );
    }
}
