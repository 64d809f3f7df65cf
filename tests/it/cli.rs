//! The `confgate` binary: `review` (exit 0 allowed, 1 denied, 2 bad input), `certs`, and start-up
//! errors for invalid policy files.

use crate::common::*;
use base64::Engine as _;
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
        stdout.contains("secret \"shop/api-token\" was not checked: not in the reviewed input (give --cluster-state FILE to check it against the cluster)"),
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
        r#"require-config-keys: container "api": env TOKEN: secret "shop/api-token" not found"#
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
    assert_eq!(
        text(&out.stderr),
        format!(
            "wrote {0}/ca.crt, {0}/tls.crt and {0}/tls.key for hook, hook.ops, hook.ops.svc, hook.ops.svc.cluster.local, hook.example.com, 10.0.0.7\n",
            dir.path().display()
        )
    );
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
        let mut args = vec!["review", file.to_str().unwrap()];
        for file in &state {
            args.extend(["--cluster-state", file.as_str()]);
        }
        let out = confgate(&args, None);
        assert_eq!(out.status.code(), Some(0), "{name}: {}", text(&out.stderr));
        let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
        let sent: Value = serde_json::from_slice(&fixture_bytes(&name)).unwrap();
        assert_eq!(answer["apiVersion"], sent["apiVersion"], "{name}");
        assert_eq!(answer["response"]["uid"], sent["request"]["uid"], "{name}");
        assert_eq!(answer["response"]["allowed"], true, "{name}");
    }
}

/// Writes `files` (name, text) into a temporary directory.
fn files(entries: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in entries {
        let path = dir.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    dir
}

const APP_CONFIG_WITHOUT_TOKEN: &str = r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: app-config, namespace: shop}
data: {DATABASE_URL: postgres://db}
"#;

#[test]
fn cluster_state_takes_one_file_and_never_swallows_the_inputs() {
    // As the README's "Rolling out" step 1 types it: options, then the manifest.
    let dir = files(&[
        ("app.yaml", DEPLOYMENT),
        ("state.yaml", APP_CONFIG_WITHOUT_TOKEN),
    ]);
    let path = |n: &str| dir.path().join(n).to_string_lossy().into_owned();
    let out = confgate(
        &[
            "review",
            "-o",
            "summary",
            "--cluster-state",
            &path("state.yaml"),
            &path("app.yaml"),
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "DENIED  Deployment shop/api\n    - require-config-keys: container \"api\": env TOKEN: secret \"shop/api-token\" not found\n    - checksum-config: secret \"shop/api-token\" does not exist; the checksum counts it as missing\n1 reviewed: 0 allowed, 1 denied, 1 with warnings\n"
    );
    // And with `-` after it: standard input is the input.
    let out = confgate(
        &[
            "review",
            "-o",
            "summary",
            "--cluster-state",
            &path("state.yaml"),
            "-",
        ],
        Some(DEPLOYMENT),
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
}

#[test]
fn any_number_of_files_directories_and_stdin() {
    let dir = files(&[
        ("a.yaml", DEPLOYMENT),
        (
            "nested/b.yml",
            &DEPLOYMENT.replace("name: api,", "name: b,"),
        ),
        ("nested/.hidden.yaml", "not: [yaml"),
        ("notes.txt", "ignored"),
    ]);
    let a = dir.path().join("a.yaml");
    let c = DEPLOYMENT.replace("name: api,", "name: c,");
    let out = confgate(
        &[
            "review",
            "-o",
            "summary",
            dir.path().to_str().unwrap(),
            "-",
            a.to_str().unwrap(),
        ],
        Some(&c),
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let names: Vec<String> = text(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with(' '))
        .map(str::to_owned)
        .collect();
    assert_eq!(
        names,
        vec![
            "WARNED  Deployment shop/api",
            "WARNED  Deployment shop/b",
            "WARNED  Deployment shop/c",
            "WARNED  Deployment shop/api",
            "4 reviewed: 4 allowed, 0 denied, 4 with warnings",
        ]
    );
    let out = confgate(&["review", "-", "-"], Some(DEPLOYMENT));
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        text(&out.stderr),
        "confgate review: - (standard input) is given more than once\n"
    );
}

#[test]
fn a_bare_review_at_a_terminal_says_what_to_give() {
    // `script` gives the command a terminal as standard input, as a person typing would have.
    let command = format!("{} review", env!("CARGO_BIN_EXE_confgate"));
    let out = Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .current_dir(root())
        .stdin(Stdio::null())
        .output()
        .expect("script (util-linux) is installed");
    assert!(
        text(&out.stdout).contains(
            "confgate review: no input: give manifest or AdmissionReview files, directories, or - for standard input"
        ),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn a_whole_app_is_judged_as_a_unit() {
    // What `kubectl kustomize overlay | confgate review -` sends: a ConfigMap generated in the
    // same stream lacks a key the Deployment requires.
    let app = format!(
        "{APP_CONFIG_WITHOUT_TOKEN}---\n{}",
        DEPLOYMENT.replace(
            "valueFrom: {secretKeyRef: {name: api-token, key: token}}",
            "valueFrom: {configMapKeyRef: {name: app-config, key: TOKEN}}"
        )
    );
    let out = confgate(&["review", "-o", "json", "-"], Some(&app));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    let results = json["results"].as_array().unwrap();
    assert_eq!(results.len(), 2);
    assert_eq!(results[0]["kind"], "ConfigMap");
    assert_eq!(results[0]["allowed"], true);
    assert_eq!(results[1]["name"], "shop/api");
    assert_eq!(results[1]["allowed"], false);
    assert_eq!(
        results[1]["denials"],
        serde_json::json!([
            "require-config-keys: container \"api\": env TOKEN: configmap \"shop/app-config\" has no key \"TOKEN\""
        ])
    );
}

#[test]
fn strict_fails_on_what_could_not_be_checked() {
    // Nothing says whether Secret api-token exists: a warning, exit 0; with --strict, exit 1.
    let out = confgate(&["review", "-o", "summary", "-"], Some(DEPLOYMENT));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("was not checked: not in the reviewed input"));
    let out = confgate(
        &["review", "--strict", "-o", "summary", "-"],
        Some(DEPLOYMENT),
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
}

#[test]
fn explain_says_a_denied_request_gets_no_patch() {
    let state = root().join("tests/fixtures/cluster-state/01-config.yaml");
    let out = confgate(
        &[
            "review",
            "--explain",
            "--cluster-state",
            state.to_str().unwrap(),
            "-",
        ],
        Some(DEPLOYMENT),
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).ends_with(
            "  patch: none (a denied request is not changed: the apiserver drops every patch)\n"
        ),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn the_shipped_policies_pass_their_own_tests() {
    let out = confgate(&["test", "policies/tests"], None);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert_eq!(
        text(&out.stdout),
        "policies/tests/shipped.yaml: shipped-policies\n  PASS  Deployment/shop/web: allow\n  PASS  Deployment/shop/web require-config-keys: pass\n  PASS  Deployment/shop/web checksum-config: pass\n  PASS  Deployment/shop/typo: deny\n  PASS  StatefulSet/shop/cache payments-database-url: warn\n  PASS  Pod/shop/huge limitrange-defaults: deny\n  PASS  ConfigMap/shop/app-config protect-config-keys: pass\n7 expectations: 7 passed, 0 failed\n"
    );
}

/// The ResourceQuota table: 192 Pods and Deployments whose verdicts are the API server's own
/// (the e2e test `e2e_quota_fit_agrees_with_the_resourcequota_plugin` keeps the file so).
#[test]
fn quota_fit_passes_the_api_servers_quota_table() {
    let out = confgate(&["test", "tests/quota-fit"], None);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(
        text(&out.stdout).ends_with("192 expectations: 192 passed, 0 failed\n"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn a_test_whose_expectation_fails_exits_1_and_says_which() {
    let shipped = root().join("policies");
    let dir = files(&[(
        "t.yaml",
        &format!(
            "apiVersion: confgate.dev/v1alpha1\nkind: Test\nmetadata: {{name: wrong}}\nspec:\n  policies: {policies}\n  resources: [{resources}]\n  clusterState: [{state}]\n  results:\n  - {{resource: Deployment/shop/typo, result: allow}}\n  - {{resource: Deployment/shop/nope, result: allow}}\n  - {{resource: Deployment/shop/web, policy: require-config-keys, result: pass, messages: [hello]}}\n",
            policies = shipped.display(),
            resources = shipped.join("tests/resources.yaml").display(),
            state = shipped.join("tests/cluster-state.yaml").display(),
        ),
    )]);
    let out = confgate(&["test", dir.path().to_str().unwrap()], None);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let report = text(&out.stdout);
    let lines: Vec<&str> = report.lines().skip(1).collect();
    assert_eq!(
        lines,
        vec![
            "  FAIL  Deployment/shop/typo: expected allow, got deny (require-config-keys: container \"app\": env LOG: configmap \"shop/app-config\" has no key \"LOG_LEVL\")",
            "  FAIL  Deployment/shop/nope: no such resource (the resources are: Deployment/shop/web, Deployment/shop/typo, StatefulSet/shop/cache, Pod/shop/huge)",
            "  FAIL  Deployment/shop/web require-config-keys: no message \"hello\" among []",
            "3 expectations: 0 passed, 3 failed",
        ]
    );
    let out = confgate(&["test", "Cargo.toml"], None);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn serve_says_which_cluster_a_kubeconfig_points_it_at() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        "apiVersion: v1\nkind: Config\nclusters:\n- name: prod\n  cluster: {server: \"https://prod.example:6443\"}\nusers:\n- name: u\n  user: {token: t}\ncontexts:\n- name: prod\n  context: {cluster: prod, user: u}\ncurrent-context: prod\n",
    )
    .unwrap();
    let certs = dir.path().join("certs");
    let mut child = Command::new(env!("CARGO_BIN_EXE_confgate"))
        .args(["serve", "--listen", "127.0.0.1:0", "--log-format", "text"])
        .arg(format!("--tls-cert={}", certs.join("tls.crt").display()))
        .arg(format!("--tls-key={}", certs.join("tls.key").display()))
        .env("KUBECONFIG", &kubeconfig)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .current_dir(root())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let line = BufReader::new(stderr)
        .lines()
        .map_while(Result::ok)
        .find(|l| l.contains("LIVE CLUSTER"));
    let _ = child.kill();
    let _ = child.wait();
    let line = line.expect("a LIVE CLUSTER line");
    assert!(
        line.contains("from https://prod.example:6443/; pass --cluster none to run standalone"),
        "{line}"
    );
}

/// A rendered chart as helm template writes it: a Secret-reading Deployment, the objects that
/// promise its Secrets, and a pre-install hook Job.
const CHART_WITH_PROMISES: &str = r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: app-config, namespace: shop}
data: {DATABASE_URL: postgres://db}
---
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
        - name: DB_PASSWORD
          valueFrom: {secretKeyRef: {name: db-credentials, key: password}}
        - name: DB_USER
          valueFrom: {secretKeyRef: {name: db-credentials, key: username}}
        volumeMounts: [{name: tls, mountPath: /tls}]
      volumes:
      - name: tls
        secret: {secretName: api-tls}
---
apiVersion: cert-manager.io/v1
kind: Certificate
metadata: {name: api, namespace: shop}
spec: {secretName: api-tls, issuerRef: {name: ca}}
---
apiVersion: external-secrets.io/v1beta1
kind: ExternalSecret
metadata: {name: db, namespace: shop}
spec:
  target: {name: db-credentials}
  data:
  - {secretKey: password, remoteRef: {key: db}}
"#;

#[test]
fn review_takes_secrets_promised_by_the_input_as_on_their_way() {
    let dir = files(&[("state.yaml", APP_CONFIG_WITHOUT_TOKEN)]);
    let state = dir.path().join("state.yaml");
    let out = confgate(
        &[
            "review",
            "-o",
            "summary",
            "--endpoint",
            "validate",
            "--cluster-state",
            state.to_str().unwrap(),
            "-",
        ],
        Some(CHART_WITH_PROMISES),
    );
    // The key the ExternalSecret does not write is the one denial.
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    for line in [
        r#"require-config-keys: container "api": env DB_USER: secret "shop/db-credentials" does not exist yet, and ExternalSecret "db" will make it without key "username""#,
        r#"require-config-keys: container "api": env DB_PASSWORD: secret "shop/db-credentials" does not exist yet; ExternalSecret "db" will make it"#,
        r#"require-config-keys: volume "tls": secret "shop/api-tls" does not exist yet; Certificate "api" will make it"#,
    ] {
        assert!(stdout.contains(line), "missing {line:?} in:\n{stdout}");
    }
    let fixed = CHART_WITH_PROMISES.replace(
        "  - {secretKey: password, remoteRef: {key: db}}",
        "  - {secretKey: password, remoteRef: {key: db}}\n  - {secretKey: username, remoteRef: {key: db}}",
    );
    let out = confgate(
        &[
            "review",
            "-o",
            "summary",
            "--cluster-state",
            state.to_str().unwrap(),
            "-",
        ],
        Some(&fixed),
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
}

#[test]
fn review_does_not_call_missing_what_a_pre_install_hook_may_create() {
    let chart = format!(
        "{}---\napiVersion: batch/v1\nkind: Job\nmetadata:\n  name: redis-secret-init\n  namespace: shop\n  annotations: {{helm.sh/hook: pre-install}}\nspec:\n  template:\n    spec:\n      restartPolicy: Never\n      containers: [{{name: init, image: registry.example/kubectl:1}}]\n",
        CHART_WITH_PROMISES
            .split("---\napiVersion: cert-manager.io/v1")
            .next()
            .unwrap()
            .replace("secretName: api-tls", "secretName: redis")
    );
    let dir = files(&[("state.yaml", APP_CONFIG_WITHOUT_TOKEN)]);
    let state = dir.path().join("state.yaml");
    let out = confgate(
        &[
            "review",
            "-o",
            "summary",
            "--endpoint",
            "validate",
            "--cluster-state",
            state.to_str().unwrap(),
            "-",
        ],
        Some(&chart),
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains(r#"secret "shop/redis" was not checked: it is not in the reviewed input, and Helm pre-install hook Job "redis-secret-init" may create it before the workloads start"#),
        "{stdout}"
    );
    // Without the hook the same Secrets are missing.
    let without = chart
        .split("---\napiVersion: batch/v1")
        .next()
        .unwrap()
        .to_owned();
    let out = confgate(
        &[
            "review",
            "-o",
            "summary",
            "--endpoint",
            "validate",
            "--cluster-state",
            state.to_str().unwrap(),
            "-",
        ],
        Some(&without),
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    assert!(
        text(&out.stdout).contains(r#"volume "tls": secret "shop/redis" not found"#),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn review_keeps_a_charts_own_checksum_as_serve_does() {
    let manifest = format!(
        "{APP_CONFIG_WITHOUT_TOKEN}---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: grafana, namespace: shop}}\nspec:\n  selector: {{matchLabels: {{app: g}}}}\n  template:\n    metadata:\n      labels: {{app: g}}\n      annotations: {{checksum/config: 0123abcd}}\n    spec:\n      containers:\n      - {{name: g, image: registry.example/grafana:1, envFrom: [{{configMapRef: {{name: app-config}}}}]}}\n"
    );
    let out = confgate(&["review", "--endpoint", "mutate", "-"], Some(&manifest));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let answers: Vec<Value> = serde_json::Deserializer::from_slice(&out.stdout)
        .into_iter::<Value>()
        .collect::<Result<_, _>>()
        .unwrap();
    let deployment = answers
        .iter()
        .find(|a| a["response"]["patch"].is_string())
        .expect("a patched answer");
    let patch = base64::Engine::decode(
        &base64::engine::general_purpose::STANDARD,
        deployment["response"]["patch"].as_str().unwrap(),
    )
    .unwrap();
    let patch: Value = serde_json::from_slice(&patch).unwrap();
    let paths: Vec<&str> = patch
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|op| op["path"].as_str())
        .filter(|p| p.contains("checksum"))
        .collect();
    assert_eq!(
        paths,
        vec!["/spec/template/metadata/annotations/confgate.dev~1config-checksum"]
    );
    assert!(
        deployment["response"]["warnings"][0]
            .as_str()
            .unwrap()
            .contains("checksum/config is managed by \"manifest\" (the manifest sets it)"),
        "{deployment}"
    );
}

#[test]
fn review_prints_a_line_per_resource_at_a_terminal_and_reviews_when_piped() {
    let dir = files(&[("app.yaml", DEPLOYMENT)]);
    let app = dir.path().join("app.yaml");
    // At a terminal (util-linux `script` gives the command one).
    let command = format!(
        "{} review {}",
        env!("CARGO_BIN_EXE_confgate"),
        app.display()
    );
    let out = Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .current_dir(root())
        .output()
        .expect("script (util-linux) runs");
    let shown = text(&out.stdout);
    assert!(
        shown.contains("WARNED  Deployment shop/api") && !shown.contains("\"apiVersion\""),
        "{shown}"
    );
    // Piped: the response AdmissionReview, for machines.
    let out = confgate(&["review", app.to_str().unwrap()], None);
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["kind"], "AdmissionReview");
}
