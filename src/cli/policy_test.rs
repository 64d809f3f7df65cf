//! `confgate test PATH...`: policy tests in CI, as `kyverno test` does for Kyverno. A test file
//! names the policies, the resources, the cluster state, and what each policy should decide;
//! `confgate test` judges the resources exactly as `confgate review` does (as a unit, mutate
//! then validate) and says which expectations hold. Exit 0: all hold; 1: one does not; 2: bad
//! input.
//!
//! ```yaml
//! apiVersion: confgate.dev/v1alpha1
//! kind: Test
//! metadata: {name: require-config-keys}
//! spec:
//!   policies: ..                     # a directory of policy files (default: the parent dir)
//!   clusterState: [state.yaml]       # optional, each like --cluster-state
//!   resources: [resources.yaml]      # manifests or AdmissionReviews (files or directories)
//!   results:
//!   - resource: Deployment/shop/web  # kind/namespace/name, or kind/name
//!     policy: require-config-keys    # optional: that policy's verdict; else the decision
//!     result: deny                   # decision: allow | warn | deny; policy: pass | warn |
//!                                    # deny | audit | skip | error
//!     messages: ['...']              # optional: lines that must be among its messages
//!     patchedResource: web.yaml      # optional: the resource after the patch, exactly
//! ```
//!
//! Paths are relative to the test file.

use super::review::{ClusterSource, EndpointChoice, Judged, judge, read_inputs};
use crate::engine::Outcome;
use crate::policy::{Registry, load_dir};
use clap::Args;
use serde::Deserialize;
use serde_json::Value;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Arguments of `confgate test`.
#[derive(Debug, Args)]
pub struct TestArgs {
    /// Test files, or directories searched (recursively) for `kind: Test` files.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct TestFile {
    api_version: String,
    kind: String,
    metadata: Metadata,
    spec: TestSpec,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Metadata {
    name: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct TestSpec {
    #[serde(default = "parent_dir")]
    policies: PathBuf,
    #[serde(default)]
    cluster_state: Vec<PathBuf>,
    resources: Vec<PathBuf>,
    results: Vec<Expectation>,
}

fn parent_dir() -> PathBuf {
    PathBuf::from("..")
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Expectation {
    resource: String,
    #[serde(default)]
    policy: Option<String>,
    result: Expected,
    #[serde(default)]
    messages: Vec<String>,
    #[serde(default)]
    patched_resource: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Expected {
    Allow,
    Warn,
    Deny,
    Pass,
    Audit,
    Skip,
    Error,
}

/// Runs every test file; exit 0 when every expectation holds.
pub fn run(args: TestArgs) -> ExitCode {
    match run_all(&args.paths) {
        Ok((report, true)) => {
            print!("{report}");
            ExitCode::SUCCESS
        }
        Ok((report, false)) => {
            print!("{report}");
            ExitCode::from(1)
        }
        Err(message) => {
            eprintln!("confgate test: {message}");
            ExitCode::from(2)
        }
    }
}

/// The report and whether every expectation held.
pub fn run_all(paths: &[PathBuf]) -> Result<(String, bool), String> {
    let mut files = Vec::new();
    for path in paths {
        collect(path, &mut files)?;
    }
    if files.is_empty() {
        return Err("no test files (kind: Test) found".into());
    }
    let (mut report, mut passed, mut failed) = (String::new(), 0, 0);
    for file in files {
        let (text, ok, bad) = run_file(&file)?;
        report.push_str(&text);
        passed += ok;
        failed += bad;
    }
    let _ = writeln!(
        report,
        "{} expectations: {passed} passed, {failed} failed",
        passed + failed
    );
    Ok((report, failed == 0))
}

/// Test files under `path`: the file itself, or every `*.yaml`/`*.yml` of kind `Test` below it.
fn collect(path: &Path, out: &mut Vec<PathBuf>) -> Result<(), String> {
    if path.is_file() {
        out.push(path.to_owned());
        return Ok(());
    }
    let entries = std::fs::read_dir(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut paths: Vec<PathBuf> = entries.filter_map(Result::ok).map(|e| e.path()).collect();
    paths.sort();
    for entry in paths {
        if entry.is_dir() {
            collect(&entry, out)?;
        } else if entry.extension().is_some_and(|e| e == "yaml" || e == "yml")
            && std::fs::read_to_string(&entry)
                .is_ok_and(|t| t.lines().any(|l| l.trim() == "kind: Test"))
        {
            out.push(entry);
        }
    }
    Ok(())
}

/// Runs one test file: its report lines, and how many expectations held and failed.
fn run_file(file: &Path) -> Result<(String, usize, usize), String> {
    let shown = file.display().to_string();
    let text = std::fs::read_to_string(file).map_err(|e| format!("{shown}: {e}"))?;
    let doc = crate::yaml::documents(&text)
        .map_err(|e| format!("{shown}: {e}"))?
        .into_iter()
        .next()
        .ok_or_else(|| format!("{shown}: empty"))?;
    let test: TestFile = serde_path_to_error::deserialize(doc)
        .map_err(|e| format!("{shown}: {}: {}", e.path(), e.inner()))?;
    if test.api_version != "confgate.dev/v1alpha1" || test.kind != "Test" {
        return Err(format!(
            "{shown}: expected apiVersion confgate.dev/v1alpha1, kind Test"
        ));
    }
    let base = file.parent().unwrap_or(Path::new("."));
    let set = load_dir(&base.join(&test.spec.policies), &Registry::builtin())
        .map_err(|e| format!("{shown}: {e}"))?;
    let inputs: Vec<String> = test
        .spec
        .resources
        .iter()
        .map(|r| base.join(r).to_string_lossy().into_owned())
        .collect();
    let state: Vec<PathBuf> = test
        .spec
        .cluster_state
        .iter()
        .map(|s| base.join(s))
        .collect();
    let judged = judge(
        read_inputs(&inputs)?,
        ClusterSource::Files(&state),
        &set,
        EndpointChoice::Both,
    )
    .map_err(|e| format!("{shown}: {e}"))?;
    let mut report = format!("{shown}: {}\n", test.metadata.name);
    let (mut ok, mut bad) = (0, 0);
    for expectation in &test.spec.results {
        let what = match &expectation.policy {
            Some(policy) => format!("{} {policy}", expectation.resource),
            None => expectation.resource.clone(),
        };
        match check(expectation, &judged, base) {
            Ok(()) => {
                ok += 1;
                let _ = writeln!(report, "  PASS  {what}: {}", expectation.result.name());
            }
            Err(why) => {
                bad += 1;
                let _ = writeln!(report, "  FAIL  {what}: {why}");
            }
        }
    }
    Ok((report, ok, bad))
}

/// `Ok` when the expectation holds, otherwise what was found instead.
fn check(expectation: &Expectation, judged: &[Judged], base: &Path) -> Result<(), String> {
    let found = judged
        .iter()
        .find(|j| resource_id(j) == expectation.resource)
        .ok_or_else(|| {
            let known: Vec<String> = judged.iter().map(resource_id).collect();
            format!("no such resource (the resources are: {})", known.join(", "))
        })?;
    let decision = &found.decision;
    let (actual, messages): (Expected, Vec<&String>) = match &expectation.policy {
        None => {
            let result = match (decision.allowed(), decision.warnings.is_empty()) {
                (false, _) => Expected::Deny,
                (true, false) => Expected::Warn,
                (true, true) => Expected::Allow,
            };
            (
                result,
                decision.denials.iter().chain(&decision.warnings).collect(),
            )
        }
        Some(policy) => {
            let verdicts: Vec<_> = decision
                .verdicts
                .iter()
                .filter(|v| &v.policy == policy)
                .collect();
            if verdicts.is_empty() {
                return Err(format!(
                    "policy {policy:?} did not run (is it in the policies?)"
                ));
            }
            let result = verdicts
                .iter()
                .map(|v| outcome(&v.outcome))
                .max_by_key(|e| severity(*e))
                .unwrap_or(Expected::Skip);
            let messages = verdicts
                .iter()
                .filter(|v| v.outcome != Outcome::Skipped)
                .flat_map(|v| v.violations.iter().chain(&v.warnings))
                .collect();
            (result, messages)
        }
    };
    if actual != expectation.result {
        return Err(format!(
            "expected {}, got {}{}",
            expectation.result.name(),
            actual.name(),
            if messages.is_empty() {
                String::new()
            } else {
                format!(
                    " ({})",
                    messages
                        .iter()
                        .map(|m| m.as_str())
                        .collect::<Vec<_>>()
                        .join("; ")
                )
            }
        ));
    }
    for wanted in &expectation.messages {
        if !messages.contains(&wanted) {
            return Err(format!("no message {wanted:?} among {messages:?}"));
        }
    }
    if let Some(patched) = &expectation.patched_resource {
        let expected = read_one(&base.join(patched))?;
        let mut object = found.review.object.clone().unwrap_or_default();
        json_patch::patch(&mut object, &decision.patch)
            .map_err(|e| format!("the patch does not apply: {e}"))?;
        if object != expected {
            return Err(format!(
                "patched resource differs from {}: got {}",
                patched.display(),
                serde_json::to_string(&object).unwrap_or_default()
            ));
        }
    }
    Ok(())
}

fn read_one(path: &Path) -> Result<Value, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    crate::yaml::documents(&text)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .into_iter()
        .next()
        .ok_or_else(|| format!("{}: empty", path.display()))
}

/// `Kind/namespace/name` (or `Kind/name` for cluster-scoped objects).
fn resource_id(j: &Judged) -> String {
    format!("{}/{}", j.review.request.kind.kind, j.review.display_name())
}

fn outcome(outcome: &Outcome) -> Expected {
    match outcome {
        Outcome::Skipped => Expected::Skip,
        Outcome::Passed => Expected::Pass,
        Outcome::Denied => Expected::Deny,
        Outcome::Warned => Expected::Warn,
        Outcome::Audited => Expected::Audit,
        Outcome::Error { .. } => Expected::Error,
    }
}

impl Expected {
    /// As written in test files.
    fn name(self) -> &'static str {
        match self {
            Expected::Allow => "allow",
            Expected::Warn => "warn",
            Expected::Deny => "deny",
            Expected::Pass => "pass",
            Expected::Audit => "audit",
            Expected::Skip => "skip",
            Expected::Error => "error",
        }
    }
}

/// Which verdict of a policy's two phases speaks for it: the most severe.
fn severity(e: Expected) -> u8 {
    match e {
        Expected::Skip => 0,
        Expected::Pass | Expected::Allow => 1,
        Expected::Audit => 2,
        Expected::Warn => 3,
        Expected::Error => 4,
        Expected::Deny => 5,
    }
}
