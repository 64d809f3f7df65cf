//! The README's curl examples return exactly what the README shows: every JSON block marked
//! `<!-- example: ENDPOINT FIXTURE -->` is compared with the server's answer on embedded
//! defaults (the shipped policies, no cluster).

use crate::common::*;
use axum::body::Body;
use confgate::cluster::Standalone;
use confgate::server::{AppState, router};
use http_body_util::BodyExt;
use serde_json::Value;
use std::sync::Arc;
use tower::ServiceExt;

fn examples() -> Vec<(String, String, Value)> {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let mut out = Vec::new();
    let mut lines = readme.lines();
    while let Some(line) = lines.next() {
        let Some(spec) = line
            .trim()
            .strip_prefix("<!-- example: ")
            .and_then(|l| l.strip_suffix(" -->"))
        else {
            continue;
        };
        let (endpoint, fixture) = spec.split_once(' ').unwrap();
        let block: Vec<&str> = lines
            .by_ref()
            .skip_while(|l| !l.starts_with("```json"))
            .skip(1)
            .take_while(|l| !l.starts_with("```"))
            .collect();
        out.push((
            endpoint.to_owned(),
            fixture.to_owned(),
            serde_json::from_str(&block.join("\n")).unwrap(),
        ));
    }
    out
}

#[tokio::test]
async fn readme_answers_are_what_the_server_answers() {
    let examples = examples();
    assert!(
        examples.len() >= 2,
        "the README shows at least a validate and a mutate example"
    );
    let state = AppState::new(
        shipped_policies(),
        Arc::new(Standalone),
        7 * 1024 * 1024,
        false,
    );
    for (endpoint, fixture, shown) in examples {
        let request = axum::http::Request::post(&endpoint)
            .header("content-type", "application/json")
            .body(Body::from(fixture_bytes(&fixture)))
            .unwrap();
        let response = router(state.clone()).oneshot(request).await.unwrap();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let answer: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(answer, shown, "README example {endpoint} {fixture}");
    }
}

#[test]
fn readme_review_example_prints_what_the_readme_shows() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let args = [
        "review",
        "--explain",
        "tests/fixtures/manifests/deployment-api.yaml",
        "--cluster-state",
        "tests/fixtures/cluster-state/01-config.yaml",
    ];
    let command = "cargo run --release -- review --explain tests/fixtures/manifests/deployment-api.yaml \\\n  --cluster-state tests/fixtures/cluster-state/01-config.yaml";
    let at = readme
        .find(command)
        .expect("the README shows the review command");
    let shown: String = readme[at..]
        .lines()
        .skip_while(|l| !l.starts_with("```text"))
        .skip(1)
        .take_while(|l| !l.starts_with("```"))
        .map(|l| format!("{l}\n"))
        .collect();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_confgate"))
        .args(args)
        .current_dir(root())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "the example is a denial");
    assert_eq!(String::from_utf8_lossy(&out.stdout), shown);
}
