//! The README's and the docs' curl examples return exactly what they show: every JSON block
//! marked `<!-- example: ENDPOINT FIXTURE -->` in `README.md` or `docs/*.md` is compared with
//! the server's answer on embedded defaults (the shipped policies, no cluster). And every
//! relative link between those pages leads to a file, and to a heading when it names one.

use crate::common::*;
use axum::body::Body;
use confgate::cluster::Standalone;
use confgate::server::{AppState, router};
use http_body_util::BodyExt;
use serde_json::Value;
use std::sync::Arc;
use tower::ServiceExt;

/// `README.md` and every page of `docs/`, with their paths from the repository's root.
fn pages() -> Vec<(std::path::PathBuf, String)> {
    let mut paths = vec![root().join("README.md")];
    let mut docs: Vec<_> = std::fs::read_dir(root().join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    paths.extend(docs);
    paths
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            (p, text)
        })
        .collect()
}

fn examples() -> Vec<(String, String, Value)> {
    let mut out = Vec::new();
    for (_, page) in pages() {
        out.extend(examples_in(&page));
    }
    out
}

fn examples_in(readme: &str) -> Vec<(String, String, Value)> {
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
fn the_review_example_prints_what_the_docs_show() {
    let readme: String = pages().into_iter().map(|(_, text)| text).collect();
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
        .expect("the docs show the review command");
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

/// GitHub's anchor of a heading: lower case, spaces to `-`, punctuation but `-` and `_` dropped.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | ' '))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The anchors of a page's headings (outside code blocks).
fn anchors(text: &str) -> Vec<String> {
    let mut inside = false;
    let mut out = Vec::new();
    for line in text.lines() {
        if line.starts_with("```") {
            inside = !inside;
        } else if !inside && line.starts_with('#') {
            out.push(anchor(line.trim_start_matches('#')));
        }
    }
    out
}

#[test]
fn every_link_between_the_pages_leads_somewhere() {
    let mut checked = 0;
    let mut broken = Vec::new();
    for (path, text) in pages() {
        let dir = path.parent().unwrap().to_path_buf();
        let mut rest = text.as_str();
        while let Some(at) = rest.find("](") {
            rest = &rest[at + 2..];
            let Some(end) = rest.find(')') else { break };
            let target = &rest[..end];
            if target.contains("://") || target.starts_with("mailto:") || target.contains(' ') {
                continue;
            }
            let (file, fragment) = target.split_once('#').unwrap_or((target, ""));
            let file_path = if file.is_empty() {
                path.clone()
            } else {
                dir.join(file)
            };
            checked += 1;
            if !file_path.exists() {
                broken.push(format!("{}: {target}: no such file", path.display()));
                continue;
            }
            if !fragment.is_empty() && file_path.extension().is_some_and(|e| e == "md") {
                let linked = std::fs::read_to_string(&file_path).unwrap();
                if !anchors(&linked).iter().any(|a| a == fragment) {
                    broken.push(format!("{}: {target}: no such heading", path.display()));
                }
            }
        }
    }
    assert!(broken.is_empty(), "{}", broken.join("\n"));
    assert!(checked > 10, "{checked} links checked");
}
