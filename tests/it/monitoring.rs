//! The shipped alerts (`deploy/monitoring/prometheusrule.yaml`, copied into the chart) checked
//! by Prometheus' own tool: `promtool check rules` on the rules as shipped, and `promtool test
//! rules` on `tests/monitoring/rules.test.yaml`, where every alert fires in one case and stays
//! quiet in another. promtool comes with Debian's `prometheus` package (`.ci/run` installs it);
//! outside CI a machine without it skips these, saying so.

use crate::common::root;
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

/// The rule groups of the shipped PrometheusRule.
fn groups() -> Value {
    let text =
        std::fs::read_to_string(root().join("deploy/monitoring/prometheusrule.yaml")).unwrap();
    let docs = confgate::yaml::documents(&text).unwrap();
    docs[0]["spec"]["groups"].clone()
}

fn alerts() -> BTreeSet<String> {
    groups()
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap().iter())
        .filter_map(|r| r["alert"].as_str().map(str::to_owned))
        .collect()
}

/// promtool, or `None` (and why) where it is not installed and this is not CI.
fn promtool() -> Option<&'static str> {
    let found = Command::new("promtool").arg("--version").output().is_ok();
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "promtool is not installed (Debian: apt-get install prometheus)"
        );
        eprintln!("skipped: promtool is not installed (Debian: apt-get install prometheus)");
        return None;
    }
    Some("promtool")
}

fn run(dir: &Path, args: &[&str]) {
    let Some(tool) = promtool() else { return };
    let out = Command::new(tool)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool {}:\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_shipped_rules_are_valid_prometheus_rules() {
    let dir = tempfile::tempdir().unwrap();
    let rules = serde_json::json!({"groups": groups()});
    std::fs::write(dir.path().join("rules.yaml"), rules.to_string()).unwrap();
    run(dir.path(), &["check", "rules", "rules.yaml"]);
}

#[test]
fn every_alert_fires_and_stays_quiet_in_promtool_unit_tests() {
    // The tests see the rules without their annotations (templates are checked above): an
    // expectation names labels only.
    let mut groups = groups();
    for group in groups.as_array_mut().unwrap() {
        for rule in group["rules"].as_array_mut().unwrap() {
            rule.as_object_mut().unwrap().remove("annotations");
        }
    }
    let tests_text =
        std::fs::read_to_string(root().join("tests/monitoring/rules.test.yaml")).unwrap();
    // Every alert has a case where it fires and one where it does not.
    let tests = &confgate::yaml::documents(&tests_text).unwrap()[0]["tests"];
    let (mut fires, mut quiet) = (BTreeSet::new(), BTreeSet::new());
    for case in tests.as_array().unwrap() {
        for expectation in case["alert_rule_test"].as_array().into_iter().flatten() {
            let name = expectation["alertname"].as_str().unwrap().to_owned();
            if expectation["exp_alerts"]
                .as_array()
                .is_some_and(|a| !a.is_empty())
            {
                fires.insert(name);
            } else {
                quiet.insert(name);
            }
        }
    }
    let all = alerts();
    assert_eq!(all.len(), 18, "{all:?}");
    assert_eq!(fires, all, "alerts without a firing case");
    assert_eq!(quiet, all, "alerts without a quiet case");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("rules.yaml"),
        serde_json::json!({"groups": groups}).to_string(),
    )
    .unwrap();
    std::fs::write(dir.path().join("rules.test.yaml"), tests_text).unwrap();
    run(dir.path(), &["test", "rules", "rules.test.yaml"]);
}
