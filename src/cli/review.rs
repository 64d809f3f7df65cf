//! `confgate review`: the server's engine, offline. Reads AdmissionReviews (v1 or v1beta1) or
//! plain manifests (each wrapped into a CREATE review) from any number of files, directories
//! and `-`, and judges them as a unit: the ConfigMaps, Secrets, Namespaces and LimitRanges in
//! the input are cluster state for the workloads in it. Prints the response AdmissionReviews,
//! a summary line per resource, JSON for machines, or with `--explain` the whole story.
//! Exit 0: allowed; 1: denied (or, with `--strict`, warned or not checked); 2: bad input.

use crate::admission::{self, Review, operation_str};
use crate::cluster::ClusterState;
use crate::cluster::fresh::Fresh;
use crate::cluster::layered::{InputOnly, Layered};
use crate::cluster::static_state::StaticState;
use crate::engine::{Decision, Engine, Judgement, Outcome};
use crate::policy::{Phase, PolicySet, Registry, load_dir};
use clap::{Args, ValueEnum};
use serde_json::{Value, json};
use std::fmt::Write as _;
use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

/// Which webhook(s) to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EndpointChoice {
    /// Mutating policies only.
    Mutate,
    /// Validating policies only.
    Validate,
    /// Mutate, apply the patch, then validate the result (as the apiserver does).
    Both,
}

/// What to print.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// The response AdmissionReview of each review (pretty JSON).
    Review,
    /// One line per resource: decision, kind, name, warnings.
    Summary,
    /// One JSON document: a result per resource, for machines.
    Json,
}

/// Arguments of `confgate review`.
#[derive(Debug, Args)]
pub struct ReviewArgs {
    /// AdmissionReview or manifest files (YAML or JSON), directories (their *.yaml, *.yml and
    /// *.json files, recursively, sorted) and `-` for standard input, in any order.
    pub inputs: Vec<String>,
    /// Directory of policy files.
    #[arg(long, default_value = "policies")]
    pub policies: PathBuf,
    /// A file of cluster state (ConfigMaps, Secrets, Namespaces, LimitRanges); repeat the flag
    /// for more. Objects in the inputs count too.
    #[arg(long = "cluster-state", value_name = "FILE", action = clap::ArgAction::Append)]
    pub cluster_state: Vec<PathBuf>,
    /// Which webhook(s) to run.
    #[arg(long, value_enum, default_value_t = EndpointChoice::Both)]
    pub endpoint: EndpointChoice,
    /// Print the whole story for people: each policy's verdict, messages and the patch.
    #[arg(long)]
    pub explain: bool,
    /// What to print (without --explain); by default one line per resource at a terminal,
    /// the response AdmissionReviews when piped.
    #[arg(short = 'o', long = "output", value_enum)]
    pub output: Option<Output>,
    /// Also exit 1 on warnings, which include every reference that could not be checked.
    #[arg(long)]
    pub strict: bool,
    /// Read cluster state from the live cluster of the current kubeconfig context (KUBECONFIG
    /// or ~/.kube/config): ConfigMaps, Namespaces and LimitRanges listed, Secrets read by name.
    #[arg(long, conflicts_with = "cluster_state")]
    pub cluster: bool,
    /// With --cluster: confgate's namespace and checksum key Secret, read (never created) so
    /// checksums of workloads that use Secrets come out as the cluster's confgate computes
    /// them.
    #[arg(long, default_value = "confgate-system/confgate-checksum-key")]
    pub checksum_key_secret: String,
}

/// Where the cluster's side of a review comes from.
pub(crate) enum ClusterSource<'a> {
    /// Manifests (none: only the input is known).
    Files(&'a [PathBuf]),
    /// A live cluster, through a kubeconfig, and confgate's checksum key Secret there
    /// (`NAMESPACE/NAME`).
    Live(&'a str),
}

/// Runs the review; the exit code says allowed (0), denied (1) or bad input (2).
pub fn run(args: ReviewArgs) -> ExitCode {
    match review(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(message) => {
            eprintln!("confgate review: {message}");
            ExitCode::from(2)
        }
    }
}

/// What came of one review.
pub(crate) struct Judged {
    pub review: Review,
    /// What the policies decided.
    pub decision: Decision,
}

fn review(args: &ReviewArgs) -> Result<bool, String> {
    let registry = Registry::builtin();
    let set = load_dir(&args.policies, &registry).map_err(|e| e.to_string())?;
    let documents = read_inputs(&args.inputs)?;
    let source = if args.cluster {
        ClusterSource::Live(&args.checksum_key_secret)
    } else {
        ClusterSource::Files(&args.cluster_state)
    };
    let judged = judge(documents, source, &set, args.endpoint)?;
    print!("{}", render(args, &judged)?);
    let passed =
        |j: &Judged| j.decision.allowed() && (!args.strict || j.decision.warnings.is_empty());
    Ok(judged.iter().all(passed))
}

/// Judges `documents` as a unit with `set`: their config objects over the cluster's side (files,
/// a live cluster, or nothing: then what is not in the input is "not checked").
pub(crate) fn judge(
    documents: Vec<(String, Value)>,
    source: ClusterSource,
    set: &PolicySet,
    endpoint: EndpointChoice,
) -> Result<Vec<Judged>, String> {
    // The input's own config objects are cluster state for its workloads, as if applied.
    let mut local = StaticState::default();
    for (source, doc) in &documents {
        if doc.get("kind").and_then(Value::as_str) != Some("AdmissionReview") {
            local
                .add_document(doc.clone())
                .map_err(|e| format!("{source}: {e}"))?;
        }
    }
    let mut live = None;
    let fallback: Arc<dyn ClusterState> = match source {
        ClusterSource::Files([]) => Arc::new(InputOnly),
        ClusterSource::Files(files) => {
            Arc::new(StaticState::load(files).map_err(|e| e.to_string())?)
        }
        ClusterSource::Live(key_secret) => {
            let (runtime, state) = live_state(key_secret, false)?;
            live = Some(runtime);
            state
        }
    };
    let engine = Engine::new(Arc::new(Layered::new(local, fallback)));
    // Files are the whole story; a live cluster is judged as the webhook judges it.
    let engine = if live.is_some() {
        engine
    } else {
        engine.settled()
    };
    let judgement = match endpoint {
        EndpointChoice::Mutate => Judgement::Phase(Phase::Mutate, None),
        EndpointChoice::Validate => Judgement::Phase(Phase::Validate, None),
        EndpointChoice::Both => Judgement::Both,
    };
    to_reviews(documents)?
        .into_iter()
        .map(|review| {
            // As the server judges: Secrets read by name (never listed), and what a denial
            // rests on read again, from a live cluster; from memory otherwise.
            let judged = engine.judge(set, &review, judgement.clone(), Fresh::default());
            let judged = match &live {
                Some(runtime) => runtime.block_on(judged),
                None => futures::executor::block_on(judged),
            };
            let (decision, _) = judged.map_err(|e| e.to_string())?;
            Ok(Judged { review, decision })
        })
        .collect()
}

/// The live cluster's state through the current kubeconfig, once its caches have synced (at
/// most 30 s), and the runtime its watchers run on (keep it while reviewing). `workloads`:
/// also index the workloads (the audit reports the deletions that wait for their readers).
pub(crate) fn live_state(
    key_secret: &str,
    workloads: bool,
) -> Result<(tokio::runtime::Runtime, Arc<dyn ClusterState>), String> {
    use crate::cluster::checksum_key::KeySecret;
    use crate::cluster::live::{LiveState, SecretsMode};
    let (namespace, name) = key_secret
        .split_once('/')
        .ok_or_else(|| format!("--checksum-key-secret {key_secret:?}: expected NAMESPACE/NAME"))?;
    let key = KeySecret {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        create: false,
        owners: Default::default(),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    let state = runtime.block_on(async {
        let client = kube::Client::try_default()
            .await
            .map_err(|e| format!("--cluster: cannot configure a Kubernetes client: {e}"))?;
        let state = LiveState::start(client, SecretsMode::Get, key, workloads);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while let Err(pending) = state.ready() {
            if std::time::Instant::now() > deadline {
                return Err(format!("--cluster: {pending} after 30 s"));
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        if matches!(state.checksum_key(), Ok(None)) {
            eprintln!(
                "note: confgate's checksum key Secret {key_secret} cannot be read: checksums of workloads that use Secrets are computed without it and differ from the ones confgate stamps in this cluster"
            );
        }
        Ok::<_, String>(state)
    })?;
    Ok((runtime, state))
}

fn render(args: &ReviewArgs, judged: &[Judged]) -> Result<String, String> {
    let mut out = String::new();
    if args.explain {
        for j in judged {
            out.push_str(&explain(&j.review, &j.decision));
        }
        return Ok(out);
    }
    let output = args.output.unwrap_or_else(|| {
        use std::io::IsTerminal;
        if std::io::stdout().is_terminal() {
            Output::Summary
        } else {
            Output::Review
        }
    });
    match output {
        Output::Review => {
            for j in judged {
                let response = j.decision.to_response(&j.review.request);
                let patch = (!j.decision.patch.0.is_empty()).then_some(&j.decision.patch);
                let body = admission::encode_response(j.review.api_version(), &response, patch)
                    .map_err(|e| e.to_string())?;
                let pretty: Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
                let text = serde_json::to_string_pretty(&pretty).map_err(|e| e.to_string())?;
                let _ = writeln!(out, "{text}");
            }
        }
        Output::Summary => {
            for j in judged {
                let _ = writeln!(out, "{}", summary_line(j));
            }
            let denied = judged.iter().filter(|j| !j.decision.allowed()).count();
            let warned = judged
                .iter()
                .filter(|j| !j.decision.warnings.is_empty())
                .count();
            let _ = writeln!(
                out,
                "{} reviewed: {} allowed, {denied} denied, {warned} with warnings",
                judged.len(),
                judged.len() - denied
            );
        }
        Output::Json => {
            let results: Vec<Value> = judged.iter().map(result_json).collect();
            let text = serde_json::to_string_pretty(&json!({"results": results}))
                .map_err(|e| e.to_string())?;
            let _ = writeln!(out, "{text}");
        }
    }
    Ok(out)
}

fn summary_line(j: &Judged) -> String {
    let verdict = match (j.decision.allowed(), j.decision.warnings.is_empty()) {
        (false, _) => "DENIED ",
        (true, false) => "WARNED ",
        (true, true) => "ALLOWED",
    };
    let mut line = format!(
        "{verdict} {} {}",
        j.review.request.kind.kind,
        j.review.display_name()
    );
    for message in j.decision.denials.iter().chain(&j.decision.warnings) {
        let _ = write!(line, "\n    - {message}");
    }
    line
}

fn result_json(j: &Judged) -> Value {
    let request = &j.review.request;
    json!({
        "kind": request.kind.kind,
        "namespace": request.namespace,
        "name": j.review.display_name(),
        "operation": operation_str(&request.operation),
        "allowed": j.decision.allowed(),
        "denials": j.decision.denials,
        "warnings": j.decision.warnings,
        "patch": j.decision.patch,
    })
}

/// Reads every input: files, directories (their `*.yaml`, `*.yml` and `*.json` files,
/// recursively, in sorted order, hidden entries skipped) and `-` (standard input, once). With no
/// input, standard input, unless it is a terminal: then nobody is typing a manifest, and an
/// error says what to give. Each document comes with where it was read.
pub fn read_inputs(inputs: &[String]) -> Result<Vec<(String, Value)>, String> {
    use std::io::IsTerminal;
    let mut inputs = inputs.to_vec();
    if inputs.is_empty() {
        if std::io::stdin().is_terminal() {
            return Err(
                "no input: give manifest or AdmissionReview files, directories, or - for standard input".into(),
            );
        }
        inputs.push("-".into());
    }
    let mut files: Vec<String> = Vec::new();
    for input in &inputs {
        let path = std::path::Path::new(input);
        if input != "-" && path.is_dir() {
            let mut found = Vec::new();
            collect_dir(path, &mut found).map_err(|e| format!("{input}: {e}"))?;
            found.sort();
            if found.is_empty() {
                return Err(format!("{input}: no *.yaml, *.yml or *.json files"));
            }
            files.extend(found.into_iter().map(|p| p.to_string_lossy().into_owned()));
        } else {
            files.push(input.clone());
        }
    }
    let mut documents = Vec::new();
    let mut stdin_read = false;
    for file in files {
        let text = if file == "-" {
            if std::mem::replace(&mut stdin_read, true) {
                return Err("- (standard input) is given more than once".into());
            }
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .map_err(|e| format!("cannot read standard input: {e}"))?;
            text
        } else {
            std::fs::read_to_string(&file).map_err(|e| format!("{file}: {e}"))?
        };
        let docs = crate::yaml::flatten_lists(
            crate::yaml::documents(&text).map_err(|e| format!("{file}: {e}"))?,
        );
        if docs.is_empty() {
            return Err(format!("{file}: no documents"));
        }
        for (i, doc) in docs.into_iter().enumerate() {
            documents.push((format!("{file}: document {}", i + 1), doc));
        }
    }
    Ok(documents)
}

fn collect_dir(dir: &std::path::Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let hidden = path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with('.'));
        if hidden {
            continue;
        }
        if path.is_dir() {
            collect_dir(&path, out)?;
        } else if path
            .extension()
            .is_some_and(|e| e == "yaml" || e == "yml" || e == "json")
        {
            out.push(path);
        }
    }
    Ok(())
}

/// AdmissionReviews are taken as they are; any other document is a manifest, wrapped into a
/// CREATE review.
fn to_reviews(documents: Vec<(String, Value)>) -> Result<Vec<Review>, String> {
    documents
        .into_iter()
        .enumerate()
        .map(|(i, (source, doc))| {
            let is_review = doc.get("kind").and_then(Value::as_str) == Some("AdmissionReview");
            if is_review {
                admission::review_from_value(doc).map_err(|e| format!("{source}: {e}"))
            } else {
                admission::manifest_review(as_applied(doc), i + 1)
                    .map_err(|e| format!("{source}: {e}"))
            }
        })
        .collect()
}

/// A manifest as the apiserver shows it to the webhook once a tool applies it: the annotations
/// of its pod template that the manifest sets are owned by the manifest's field manager (in
/// `managedFields`), so a chart's own `checksum/config` is kept and confgate stamps
/// `confgate.dev/config-checksum` beside it, as `serve` does.
fn as_applied(mut manifest: Value) -> Value {
    if manifest.pointer("/metadata/managedFields").is_some() {
        return manifest;
    }
    let kind = manifest
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let Some(path) = crate::workload::template_path(kind) else {
        return manifest;
    };
    let mut pointer: String = path.iter().map(|s| format!("/{s}")).collect();
    pointer.push_str("/metadata/annotations");
    let Some(annotations) = manifest.pointer(&pointer).and_then(Value::as_object) else {
        return manifest;
    };
    let mut fields = Value::Object(
        annotations
            .keys()
            .map(|k| (format!("f:{k}"), json!({})))
            .collect(),
    );
    for segment in path.iter().chain(&["metadata", "annotations"]).rev() {
        fields = json!({ format!("f:{segment}"): fields });
    }
    let entry = json!({"manager": MANIFEST_MANAGER, "operation": "Apply", "fieldsType": "FieldsV1", "fieldsV1": fields});
    if let Some(meta) = manifest.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("managedFields".into(), json!([entry]));
    }
    manifest
}

/// The field manager a reviewed manifest's own fields are credited to.
const MANIFEST_MANAGER: &str = "manifest";

/// A summary a person can read: decision, each policy's verdict and messages, and the patch.
pub fn explain(review: &Review, decision: &Decision) -> String {
    let request = &review.request;
    let mut out = String::new();
    let gv = if request.kind.group.is_empty() {
        request.kind.version.clone()
    } else {
        format!("{}/{}", request.kind.group, request.kind.version)
    };
    let _ = writeln!(
        out,
        "{} {} ({}, {gv})",
        request.kind.kind,
        review.display_name(),
        operation_str(&request.operation)
    );
    let verdict = if decision.allowed() {
        "ALLOWED"
    } else {
        "DENIED"
    };
    let _ = writeln!(out, "  decision: {verdict}");
    if let Some(why) = &decision.skipped {
        let _ = writeln!(out, "  not evaluated: {why}");
    }
    if !decision.verdicts.is_empty() {
        let _ = writeln!(out, "  policies:");
    }
    for v in &decision.verdicts {
        if v.outcome == Outcome::Skipped {
            let _ = writeln!(
                out,
                "    {} [{}]: does not apply ({})",
                v.policy,
                v.endpoint.as_str(),
                v.violations.join("; ")
            );
            continue;
        }
        let _ = writeln!(
            out,
            "    {} [{}]: {}",
            v.policy,
            v.endpoint.as_str(),
            v.outcome.as_str()
        );
        for line in v.violations.iter().chain(&v.warnings) {
            let _ = writeln!(out, "      - {line}");
        }
    }
    if !decision.warnings.is_empty() {
        let _ = writeln!(out, "  warnings:");
        for w in &decision.warnings {
            let _ = writeln!(out, "    - {w}");
        }
    }
    for (key, value) in &decision.audit_annotations {
        let _ = writeln!(out, "  audit annotation {key}: {value}");
    }
    if !decision.allowed() {
        let _ = writeln!(
            out,
            "  patch: none (a denied request is not changed: the apiserver drops every patch)"
        );
    } else if decision.patch.0.is_empty() {
        let _ = writeln!(out, "  patch: none");
    } else {
        let _ = writeln!(out, "  patch ({} operations):", decision.patch.0.len());
        for op in &decision.patch.0 {
            let _ = writeln!(out, "    {}", describe_op(op));
        }
    }
    out
}

fn describe_op(op: &json_patch::PatchOperation) -> String {
    use json_patch::PatchOperation as Op;
    let value = |v: &Value| serde_json::to_string(v).unwrap_or_default();
    match op {
        Op::Add(o) => format!("add     {} = {}", o.path, value(&o.value)),
        Op::Replace(o) => format!("replace {} = {}", o.path, value(&o.value)),
        Op::Remove(o) => format!("remove  {}", o.path),
        Op::Move(o) => format!("move    {} -> {}", o.from, o.path),
        Op::Copy(o) => format!("copy    {} -> {}", o.from, o.path),
        Op::Test(o) => format!("test    {} == {}", o.path, value(&o.value)),
    }
}
