//! The audit's reports as the consumers read them: every field either CRD (the wg-policy
//! `PolicyReport` and OpenReports' `Report`, as vendored in deploy/crds) keeps, with values its
//! schema allows, and what Policy Reporter reads from them (kyverno/policy-reporter: a report's
//! source is its first result's `source`; a result's resource is the first of `resources`; its
//! identity hashes the resource's uid and name, policy, rule, result and message; `category`
//! groups results and `severity` ranks them).

use crate::common::root;
use confgate::controllers::audit::{Audit, Finding, ReportFormat};
use serde_json::Value;
use std::collections::BTreeSet;

/// The schema of `version` of the CRD in `file`.
fn schema(file: &str, version: &str) -> Value {
    let text = std::fs::read_to_string(root().join("deploy/crds").join(file)).unwrap();
    let crd = confgate::yaml::documents(&text).unwrap().remove(0);
    crd["spec"]["versions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == version)
        .unwrap_or_else(|| panic!("{file} serves no {version}"))["schema"]["openAPIV3Schema"]
        .clone()
}

/// Every field of `value` that `schema` would prune or refuse, by path.
fn against(schema: &Value, value: &Value, path: &str, out: &mut Vec<String>) {
    if let Some(allowed) = schema["enum"].as_array()
        && !allowed.contains(value)
    {
        out.push(format!("{path}: {value} is not one of {allowed:?}"));
    }
    match value {
        Value::Object(fields) => {
            if schema["x-kubernetes-preserve-unknown-fields"] == true {
                return;
            }
            for required in schema["required"].as_array().into_iter().flatten() {
                if !fields.contains_key(required.as_str().unwrap()) {
                    out.push(format!("{path}.{required}: required, missing"));
                }
            }
            for (name, field) in fields {
                let inner = &schema["properties"][name];
                if inner.is_null() && schema["additionalProperties"].is_null() {
                    out.push(format!("{path}.{name}: not in the schema (pruned)"));
                } else if !inner.is_null() {
                    against(inner, field, &format!("{path}.{name}"), out);
                } else {
                    against(
                        &schema["additionalProperties"],
                        field,
                        &format!("{path}.{name}"),
                        out,
                    );
                }
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                against(&schema["items"], item, &format!("{path}[{i}]"), out);
            }
        }
        Value::Number(n) if schema["type"] == "integer" && !n.is_i64() => {
            out.push(format!("{path}: {n} is not an integer"));
        }
        Value::String(_) if schema["type"] != "string" && !schema["type"].is_null() => {
            out.push(format!(
                "{path}: a string where {} is expected",
                schema["type"]
            ));
        }
        _ => {}
    }
}

fn finding(kind: &str, name: &str, policy: &str, rule: &str, result: &'static str) -> Finding {
    Finding {
        kind: kind.into(),
        namespace: "shop".into(),
        name: name.into(),
        uid: format!("uid-{name}"),
        policy: policy.into(),
        rule: rule.into(),
        result,
        message: format!("{policy} on {name}"),
    }
}

#[test]
fn reports_hold_only_what_their_crds_keep_and_what_policy_reporter_reads() {
    let mut audit = Audit::default();
    audit.passed.insert("shop".into(), 3);
    audit.findings = vec![
        finding(
            "Deployment",
            "web",
            "require-config-keys",
            "require-config-keys",
            "fail",
        ),
        finding(
            "Deployment",
            "web",
            "payments-database-url",
            "require-config-keys",
            "fail",
        ),
        finding("StatefulSet", "cache", "quota-fit", "quota-fit", "warn"),
        finding(
            "CronJob",
            "nightly",
            "limitrange-defaults",
            "limitrange-defaults",
            "warn",
        ),
        finding(
            "ConfigMap",
            "app-config",
            "protect-config-keys",
            "protect-config-keys",
            "warn",
        ),
    ];
    for (format, file, version) in [
        (
            ReportFormat::PolicyReport,
            "wgpolicyk8s.io_policyreports.yaml",
            "v1alpha2",
        ),
        (
            ReportFormat::OpenReports,
            "openreports.io_reports.yaml",
            "v1alpha1",
        ),
    ] {
        let report = format.report(&audit, "shop", "2026-12-07T00:00:00Z");
        let mut problems = Vec::new();
        let mut body = report.clone();
        body.as_object_mut().unwrap().remove("metadata");
        against(&schema(file, version), &body, "", &mut problems);
        assert!(problems.is_empty(), "{format:?}: {problems:#?}");

        let results = report["results"].as_array().unwrap();
        assert_eq!(results.len(), 5);
        // The report's source, as Policy Reporter takes it: the first result's, the same on all.
        assert!(results.iter().all(|r| r["source"] == "confgate"));
        let mut identities = BTreeSet::new();
        for result in results {
            let resource = &result["resources"][0];
            for field in ["apiVersion", "kind", "name", "namespace", "uid"] {
                assert!(
                    resource[field].as_str().is_some_and(|v| !v.is_empty()),
                    "{format:?}: resource without {field}: {result}"
                );
            }
            for field in ["policy", "rule", "category", "severity", "message"] {
                assert!(
                    result[field].as_str().is_some_and(|v| !v.is_empty()),
                    "{format:?}: result without {field}: {result}"
                );
            }
            assert!(
                result["timestamp"]["seconds"]
                    .as_i64()
                    .is_some_and(|s| s > 0)
            );
            // Policy Reporter's result identity: distinct results stay distinct.
            identities.insert(
                [
                    &resource["uid"],
                    &resource["name"],
                    &result["policy"],
                    &result["rule"],
                    &result["result"],
                    &result["message"],
                ]
                .map(ToString::to_string),
            );
        }
        assert_eq!(identities.len(), results.len());
        let categories: BTreeSet<&str> = results
            .iter()
            .map(|r| r["category"].as_str().unwrap())
            .collect();
        assert_eq!(categories, BTreeSet::from(["Configuration", "Resources"]));
        assert_eq!(results[2]["severity"], "medium");
        assert_eq!(results[0]["severity"], "high");
        // The summary counts what the results say.
        let count = |status: &str| results.iter().filter(|r| r["result"] == status).count();
        assert_eq!(report["summary"]["fail"], count("fail"));
        assert_eq!(report["summary"]["warn"], count("warn"));
        assert_eq!(report["summary"]["pass"], 3);
    }
}
