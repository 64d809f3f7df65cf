//! The `confgate` binary: `review` (exit 0 allowed, 1 denied, 2 bad input), `certs`, and start-up
//! errors for invalid policy files.

mod common;

use base64::Engine as _;
use common::*;
use serde_json::Value;
use std::io::Write;
use std::process::{Command, Output, Stdio};

fn confgate(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_confgate"))
        .args(args)
        .current_dir(root())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input
        .write_all(stdin.unwrap_or_default().as_bytes())
        .unwrap();
    drop(input);
    child.wait_with_output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

const DEPLOYMENT: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: api, namespace: shop}
spec:
  selector: {matchLabels: {app: api}}
  template:
    metadata: {labels: {app: api}}
    spec:
      containers:
      - name: api
        image: registry.example/api:1
        env:
        - name: DATABASE_URL
          valueFrom: {configMapKeyRef: {name: app-config, key: DATABASE_URL}}
        - name: TOKEN
          valueFrom: {secretKeyRef: {name: api-token, key: token}}
"#;

#[test]
fn review_explains_a_plain_manifest() {
    let out = confgate(&["review", "--explain", "-"], Some(DEPLOYMENT));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.starts_with("Deployment shop/api (CREATE, apps/v1)\n  decision: ALLOWED\n"),
        "{stdout}"
    );
    assert!(stdout.contains(r#"add     /spec/template/spec/containers/0/resources = {"limits":{"memory":"512Mi"},"requests":{"cpu":"100m","memory":"128Mi"}}"#), "{stdout}");
    assert!(
        stdout.contains("secret \"shop/api-token\" was not checked: no cluster connection"),
        "{stdout}"
    );
}

#[test]
fn review_denies_with_cluster_state_and_exit_code_1() {
    let state = root().join("tests/fixtures/cluster-state/01-config.yaml");
    let out = confgate(
        &["review", "-", "--cluster-state", state.to_str().unwrap()],
        Some(DEPLOYMENT),
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["response"]["allowed"], false);
    assert_eq!(answer["response"]["status"]["code"], 403);
    assert_eq!(
        answer["response"]["status"]["message"],
        r#"require-config-refs: container "api": env TOKEN: secret "shop/api-token" not found"#
    );
}

#[test]
fn review_answers_an_admission_review_in_its_version() {
    let file = fixture_path("create-deployment-legacy-v1beta1");
    let out = confgate(
        &["review", file.to_str().unwrap(), "--endpoint", "mutate"],
        None,
    );
    assert_eq!(out.status.code(), Some(0));
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["apiVersion"], "admission.k8s.io/v1beta1");
    assert_eq!(answer["response"]["patchType"], "JSONPatch");
    let patch = base64::engine::general_purpose::STANDARD
        .decode(answer["response"]["patch"].as_str().unwrap())
        .unwrap();
    let ops: json_patch::Patch = serde_json::from_slice(&patch).unwrap();
    apply(
        fixture("create-deployment-legacy-v1beta1")
            .object
            .as_ref()
            .unwrap(),
        &ops,
    );
}

#[test]
fn review_rejects_bad_input_with_exit_code_2() {
    for (input, message) in [
        ("", "-: no documents"),
        ("kind: Deployment\n", "-: document 1: missing apiVersion"),
        ("a: [1, 2\n", "-: "),
        (
            r#"{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1"}"#,
            "AdmissionReview has no \"request\"",
        ),
    ] {
        let out = confgate(&["review", "-"], Some(input));
        assert_eq!(out.status.code(), Some(2), "{input}");
        assert!(
            text(&out.stderr).contains(message),
            "{input}: {}",
            text(&out.stderr)
        );
    }
    let missing = confgate(&["review", "no/such/file.yaml"], None);
    assert_eq!(missing.status.code(), Some(2));
}

#[test]
fn invalid_policy_files_name_file_document_and_field() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bad.yaml"),
        "apiVersion: confgate.dev/v1alpha1\nkind: Policy\nmetadata: {name: ok}\nspec: {type: checksum-config}\n---\napiVersion: confgate.dev/v1alpha1\nkind: Policy\nmetadata: {name: bad}\nspec:\n  type: limitrange-defaults\n  settings: {limits: [{type: Container, max: {cpu: huge}}]}\n",
    )
    .unwrap();
    let out = confgate(
        &["review", "--policies", dir.path().to_str().unwrap(), "-"],
        Some(DEPLOYMENT),
    );
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("bad.yaml: document 2: spec.settings.limits[0].max.cpu: \"huge\" is not a valid quantity"), "{stderr}");
    let serve = confgate(
        &[
            "serve",
            "--policies",
            dir.path().to_str().unwrap(),
            "--tls-cert",
            dir.path().join("c.crt").to_str().unwrap(),
            "--tls-key",
            dir.path().join("c.key").to_str().unwrap(),
            "--cluster",
            "none",
        ],
        None,
    );
    assert_eq!(serve.status.code(), Some(2));
    assert!(
        text(&serve.stderr).contains("bad.yaml: document 2: spec.settings.limits[0].max.cpu"),
        "{}",
        text(&serve.stderr)
    );
}

#[test]
fn certs_writes_ca_cert_and_private_key() {
    let dir = tempfile::tempdir().unwrap();
    let out = confgate(
        &[
            "certs",
            "--out-dir",
            dir.path().to_str().unwrap(),
            "--service",
            "hook",
            "--namespace",
            "ops",
            "--dns",
            "hook.example.com",
            "--ip",
            "10.0.0.7",
            "--days",
            "30",
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let bundle = base64::engine::general_purpose::STANDARD
        .decode(text(&out.stdout).trim())
        .unwrap();
    assert_eq!(bundle, std::fs::read(dir.path().join("ca.crt")).unwrap());
    assert!(text(&out.stderr).contains("hook.ops.svc.cluster.local, hook.example.com, 10.0.0.7"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("tls.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}

#[test]
fn every_ca_has_its_own_subject_and_the_leaf_names_its_key() {
    let parse = |pem: &str| -> Vec<u8> {
        x509_parser::pem::parse_x509_pem(pem.as_bytes())
            .unwrap()
            .1
            .contents
    };
    let request = confgate::certs::CertRequest {
        service: "confgate".into(),
        namespace: "confgate-system".into(),
        dns: vec![],
        ips: vec![],
        days: 1,
    };
    let (first, second) = (request.generate().unwrap(), request.generate().unwrap());
    let mut subjects = Vec::new();
    for certs in [&first, &second] {
        let ca_der = parse(&certs.ca_pem);
        let leaf_der = parse(&certs.cert_pem);
        let (_, ca) = x509_parser::parse_x509_certificate(&ca_der).unwrap();
        let (_, leaf) = x509_parser::parse_x509_certificate(&leaf_der).unwrap();
        let ski = ca
            .extensions()
            .iter()
            .find_map(|e| match e.parsed_extension() {
                x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(id) => {
                    Some(id.0.to_vec())
                }
                _ => None,
            })
            .expect("the CA has a Subject Key Identifier");
        let aki = leaf
            .extensions()
            .iter()
            .find_map(|e| match e.parsed_extension() {
                x509_parser::extensions::ParsedExtension::AuthorityKeyIdentifier(aki) => {
                    aki.key_identifier.as_ref().map(|id| id.0.to_vec())
                }
                _ => None,
            })
            .expect("the serving certificate has an Authority Key Identifier");
        assert_eq!(aki, ski);
        assert_eq!(leaf.issuer(), ca.subject());
        assert!(
            ca.subject().to_string().starts_with("CN=confgate CA "),
            "{}",
            ca.subject()
        );
        subjects.push(ca.subject().to_string());
    }
    assert_ne!(subjects[0], subjects[1]);
}

#[test]
fn every_fixture_passes_through_review() {
    let state: Vec<String> = cluster_state_files()
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    for name in all_fixtures() {
        let file = fixture_path(&name);
        let mut args = vec!["review", file.to_str().unwrap(), "--cluster-state"];
        args.extend(state.iter().map(String::as_str));
        let out = confgate(&args, None);
        assert_eq!(out.status.code(), Some(0), "{name}: {}", text(&out.stderr));
        let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
        let sent: Value = serde_json::from_slice(&fixture_bytes(&name)).unwrap();
        assert_eq!(answer["apiVersion"], sent["apiVersion"], "{name}");
        assert_eq!(answer["response"]["uid"], sent["request"]["uid"], "{name}");
        assert_eq!(answer["response"]["allowed"], true, "{name}");
    }
}
