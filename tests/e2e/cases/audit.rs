//! The background audit on a real control plane: a workload broken while confgate was down shows
//! up in its namespace's PolicyReport, the metric, a Warning Event and `confgate audit`, and
//! leaves them once fixed (an audit started by the change, not by the interval).

use super::{app_config, remove_config_key, set_config_key, web_deployment};
use crate::harness::{Confgate, Cx, Kubectl, Options, eventually, root};
use serde_json::Value;
use std::time::Duration;

/// Installs the report CRDs shipped in deploy/crds, PolicyReport and OpenReports' Report (once
/// for the shared control plane).
async fn install_crd(kubectl: &Kubectl) {
    for (file, crd) in [
        (
            "wgpolicyk8s.io_policyreports.yaml",
            "crd/policyreports.wgpolicyk8s.io",
        ),
        ("openreports.io_reports.yaml", "crd/reports.openreports.io"),
    ] {
        let path = root().join("deploy/crds").join(file);
        kubectl
            .ok(&["apply", "-f", &path.to_string_lossy()], None)
            .await;
        kubectl
            .ok(
                &["wait", "--for=condition=established", "--timeout=30s", crd],
                None,
            )
            .await;
    }
}

/// The OpenReports Report the audit wrote in `ns`.
async fn open_report(kubectl: &Kubectl, ns: &str) -> Option<Value> {
    kubectl
        .get(ns, "reports.openreports.io/confgate-audit")
        .await
}

async fn report(kubectl: &Kubectl, ns: &str) -> Option<Value> {
    kubectl.get(ns, "policyreport/confgate-audit").await
}

pub async fn e2e_audit_reports_a_workload_broken_while_confgate_was_down(cx: Cx) {
    let ns = cx.namespace("audit").await;
    let kubectl = cx.kubectl();
    install_crd(&kubectl).await;
    kubectl
        .ok(&["apply", "-f", "-"], Some(&app_config(&ns)))
        .await;
    kubectl
        .ok(
            &["apply", "-f", "-"],
            Some(&web_deployment(&ns, "web", &[])),
        )
        .await;
    // The interval is long: after the audit at start, only a configuration change starts one
    // (at most every 30 s).
    // Both report APIs, as during a migration from wg-policy to OpenReports.
    let mut confgate = Confgate::start(
        &cx,
        Options::shipped(&ns)
            .arg("--audit-interval=10m")
            .arg("--audit-reports=wgpolicyk8s,openreports"),
    )
    .await;
    // Clean: a report with passes and no failures.
    eventually(Duration::from_secs(20), "a clean report", || {
        let kubectl = kubectl.clone();
        let ns = ns.clone();
        async move {
            let r = report(&kubectl, &ns).await?;
            (r["summary"]["fail"] == 0 && r["summary"]["pass"].as_i64()? > 0).then_some(())
        }
    })
    .await;
    // Another installation, judging another namespace, audits too: it leaves this one's report
    // alone (it once deleted every confgate report outside its own namespaces).
    let other_ns = cx.namespace("audit-other").await;
    let other = Confgate::start(&cx, Options::shipped(&other_ns).arg("--audit-interval=10m")).await;
    eventually(
        Duration::from_secs(30),
        "the other installation's audit",
        || {
            let done = other.log_tail(400).contains("audit done");
            async move { done.then_some(()) }
        },
    )
    .await;
    let kept = report(&kubectl, &ns)
        .await
        .expect("this installation's report is kept");
    assert_eq!(
        kept["metadata"]["labels"]["confgate.dev/instance"],
        format!("{ns}.confgate-rollout")
    );
    drop(other);
    // The key goes while confgate is down (its guard registers with failurePolicy Ignore).
    confgate.stop();
    let removed = remove_config_key(&kubectl, &ns, "DATABASE_URL").await;
    assert!(removed.success, "{}", removed.stderr);
    confgate.restart(&cx).await;
    let message = format!(
        "container \"web\": env DATABASE_URL: configmap \"{ns}/app-config\" has no key \"DATABASE_URL\""
    );
    // The audit at start sees the removal, unless the restarted confgate's first list came from
    // the apiserver's watch cache a moment before it had the update (seen on v1.26.0): then the
    // update arrives as a change, and the audit it starts waits out the 30 s gap since the last.
    let found = eventually(Duration::from_secs(45), "the failure reported", || {
        let kubectl = kubectl.clone();
        let ns = ns.clone();
        async move {
            let r = report(&kubectl, &ns).await?;
            (r["summary"]["fail"] == 1).then_some(r)
        }
    })
    .await;
    // The OpenReports Report says the same: its summary, results and resources.
    let open = eventually(Duration::from_secs(10), "the OpenReports report", || {
        let kubectl = kubectl.clone();
        let ns = ns.clone();
        async move {
            let r = open_report(&kubectl, &ns).await?;
            (r["summary"]["fail"] == 1).then_some(r)
        }
    })
    .await;
    assert_eq!(open["source"], "confgate");
    assert_eq!(open["summary"], found["summary"]);
    for field in [
        "policy",
        "result",
        "message",
        "resources",
        "severity",
        "scored",
    ] {
        assert_eq!(
            open["results"][0][field], found["results"][0][field],
            "{field}"
        );
    }
    let result = &found["results"][0];
    assert_eq!(result["policy"], "require-config-keys");
    assert_eq!(result["result"], "fail");
    assert_eq!(result["message"], message.as_str());
    assert_eq!(result["resources"][0]["kind"], "Deployment");
    assert_eq!(result["resources"][0]["name"], "web");
    let sample =
        format!("confgate_audit_violations{{policy=\"require-config-keys\",namespace=\"{ns}\"}}");
    assert_eq!(confgate.metric(&sample).await, 1.0);
    // A Warning Event on the Deployment.
    let events = kubectl
        .ok(
            &[
                "get",
                "events",
                "-n",
                &ns,
                "--field-selector",
                "reason=ConfigBroken",
                "-o",
                "json",
            ],
            None,
        )
        .await;
    assert!(events.contains(&message.replace('"', "\\\"")), "{events}");
    // `confgate audit` lists it, and exits 1.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_confgate"))
        .args(["audit"])
        .current_dir(root())
        .env("KUBECONFIG", &cx.plane.kubeconfig)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let line = stdout
        .lines()
        .find(|l| l.starts_with(&format!("{ns} ")))
        .unwrap_or_else(|| panic!("{stdout}"));
    let columns: Vec<&str> = line.split_whitespace().take(5).collect();
    assert_eq!(
        columns,
        vec![
            ns.as_str(),
            "Deployment",
            "web",
            "require-config-keys",
            "fail"
        ]
    );
    assert!(line.ends_with(&message), "{line}");
    // Fixed: the failure leaves the report and the metric.
    set_config_key(
        &kubectl,
        &ns,
        "app-config",
        "DATABASE_URL",
        "postgres://db:5432/shop",
    )
    .await;
    eventually(Duration::from_secs(45), "the failure gone", || {
        let kubectl = kubectl.clone();
        let ns = ns.clone();
        async move {
            let r = report(&kubectl, &ns).await?;
            (r["summary"]["fail"] == 0).then_some(())
        }
    })
    .await;
    assert_eq!(confgate.metric(&sample).await, 0.0);
}

/// `ConfigBroken` Events on `name` in `ns`, as the apiserver lists them.
async fn broken_events(kubectl: &Kubectl, ns: &str, name: &str) -> Vec<Value> {
    let selector = format!("reason=ConfigBroken,involvedObject.name={name}");
    super::rollout::events(kubectl, ns, &selector).await
}

/// One namespace that refuses its PolicyReport (a ResourceQuota of 0 reports) stops only its
/// own: a namespace sorted after it still gets its report. And a broken workload's Warning
/// Event is not sent again when confgate restarts within the hour.
pub async fn e2e_a_refused_report_stays_in_its_namespace_and_a_restart_sends_no_second_warning(
    cx: Cx,
) {
    let kubectl = cx.kubectl();
    install_crd(&kubectl).await;
    // "blocked" sorts before "open": the refusal comes first.
    let blocked = cx.namespace("audit-blocked").await;
    let open = cx.namespace("audit-open").await;
    assert!(blocked < open);
    for ns in [&blocked, &open] {
        kubectl
            .ok(&["apply", "-f", "-"], Some(&app_config(ns)))
            .await;
        kubectl
            .ok(&["apply", "-f", "-"], Some(&web_deployment(ns, "web", &[])))
            .await;
        let removed = remove_config_key(&kubectl, ns, "DATABASE_URL").await;
        assert!(removed.success, "{}", removed.stderr);
    }
    let quota = format!(
        "apiVersion: v1\nkind: ResourceQuota\nmetadata: {{name: no-reports, namespace: {blocked}}}\nspec:\n  hard: {{count/policyreports.wgpolicyk8s.io: \"0\"}}\n"
    );
    kubectl.ok(&["apply", "-f", "-"], Some(&quota)).await;
    let mut confgate = Confgate::start(
        &cx,
        Options::shipped(&open)
            .also_namespace(&blocked)
            .arg("--audit-interval=10m"),
    )
    .await;
    eventually(
        Duration::from_secs(30),
        "the open namespace's report",
        || {
            let kubectl = kubectl.clone();
            let open = open.clone();
            async move {
                let r = report(&kubectl, &open).await?;
                (r["summary"]["fail"] == 1).then_some(())
            }
        },
    )
    .await;

    assert_eq!(report(&kubectl, &blocked).await, None);
    let log = confgate.log_tail(2000);
    assert!(
        log.lines().any(
            |l| l.contains("the report of this namespace was not written") && l.contains(&blocked)
        ),
        "{log}"
    );
    // One Warning Event on each broken Deployment, the refused namespace's too.
    for ns in [&blocked, &open] {
        let events = eventually(Duration::from_secs(10), "the ConfigBroken Event", || {
            let kubectl = kubectl.clone();
            let ns = ns.clone();
            async move {
                let events = broken_events(&kubectl, &ns, "web").await;
                (!events.is_empty()).then_some(events)
            }
        })
        .await;
        assert_eq!(events.len(), 1, "{events:?}");
    }
    // A restart (a new leader, an empty memory) audits again and sends nothing new.
    confgate.restart(&cx).await;
    eventually(
        Duration::from_secs(30),
        "the audit after the restart",
        || {
            let done = confgate.log_tail(4000).matches("audit done").count() >= 2;
            async move { done.then_some(()) }
        },
    )
    .await;
    for ns in [&blocked, &open] {
        let events = broken_events(&kubectl, ns, "web").await;
        assert_eq!(events.len(), 1, "{events:?}");
        assert!(events[0]["series"].is_null(), "{:?}", events[0]);
        assert_eq!(
            events[0]["count"].as_i64().unwrap_or(1),
            1,
            "{:?}",
            events[0]
        );
    }
}
