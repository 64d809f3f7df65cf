//! Policy files: every problem is reported with file, document and field; the shipped examples load.

use confgate::policy::{Registry, load_dir, load_str};

fn errors(text: &str) -> Vec<String> {
    load_str("p.yaml", text, &Registry::builtin())
        .unwrap_err()
        .0
        .iter()
        .map(ToString::to_string)
        .collect()
}

const HEAD: &str = "apiVersion: confgate.dev/v1alpha1\nkind: Policy\n";

#[test]
fn shipped_examples_load() {
    let set = load_dir(
        &crate::common::root().join("policies"),
        &Registry::builtin(),
    )
    .unwrap();
    let names: Vec<&str> = set.policies.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        vec![
            "checksum-config",
            "limitrange-defaults",
            "protect-config-keys",
            "quota-fit",
            "require-config-keys",
            "payments-database-url"
        ]
    );
}

#[test]
fn reports_file_document_and_field() {
    assert_eq!(
        errors(&format!(
            "{HEAD}metadata: {{name: a}}\nspec: {{type: checksum-config, acton: Deny}}\n"
        )),
        vec![
            "p.yaml: document 1: spec.acton: unknown field `acton`, expected one of `type`, `action`, `onError`, `failurePolicy`, `match`, `settings`"
        ]
    );
    assert_eq!(
        errors(&format!(
            "{HEAD}metadata: {{name: a}}\nspec: {{type: checksum-config, action: Block}}\n"
        )),
        vec![
            "p.yaml: document 1: spec.action: unknown variant `Block`, expected one of `Deny`, `Warn`, `Audit`"
        ]
    );
    assert_eq!(
        errors(&format!(
            "{HEAD}metadata: {{name: a}}\nspec: {{type: nope}}\n"
        )),
        vec![
            "p.yaml: document 1: spec.type: unknown policy type \"nope\" (known: checksum-config, limitrange-defaults, protect-config-keys, quota-fit, require-config-keys)"
        ]
    );
    assert_eq!(errors(&format!("{HEAD}metadata: {{name: a}}\nspec: {{type: checksum-config, match: {{kinds: [Service]}}}}\n"))[0].split(" (it").next().unwrap(),
        "p.yaml: document 1: spec.match.kinds[0]: kind \"Service\" is not understood by this policy type");
    assert_eq!(
        errors(&format!(
            "{HEAD}metadata: {{name: a}}\nspec: {{type: checksum-config, match: {{operations: [DELETE]}}}}\n"
        )),
        vec![
            "p.yaml: document 1: spec.match.operations[0]: this policy type does not evaluate DELETE requests"
        ]
    );
    assert_eq!(
        errors(&format!(
            "{HEAD}metadata: {{name: a}}\nspec: {{type: checksum-config, match: {{objectSelector: {{matchExpressions: [{{key: a, operator: Near}}]}}}}}}\n"
        )),
        vec![
            "p.yaml: document 1: spec.match.objectSelector: failed to parse value as expression: Invalid expression operator"
        ]
    );
}

#[test]
fn rejects_bad_names_versions_and_duplicates() {
    assert!(
        errors(&format!(
            "{HEAD}metadata: {{name: Not_A_Label}}\nspec: {{type: checksum-config}}\n"
        ))[0]
            .starts_with("p.yaml: document 1: metadata.name: \"Not_A_Label\" must be a DNS label")
    );
    assert_eq!(
        errors(
            "apiVersion: v1\nkind: Policy\nmetadata: {name: a}\nspec: {type: checksum-config}\n"
        ),
        vec!["p.yaml: document 1: apiVersion: must be \"confgate.dev/v1alpha1\", got \"v1\""]
    );
    let twice = format!(
        "{HEAD}metadata: {{name: a}}\nspec: {{type: checksum-config}}\n---\n{HEAD}metadata: {{name: a}}\nspec: {{type: checksum-config}}\n"
    );
    assert_eq!(
        errors(&twice),
        vec![
            "p.yaml: document 2: metadata.name: duplicate policy name \"a\" (also in p.yaml document 1)"
        ]
    );
}

#[test]
fn reports_yaml_syntax_errors_and_every_bad_document() {
    assert!(errors("spec: [unclosed\n")[0].starts_with("p.yaml: "));
    let two_bad = format!(
        "{HEAD}metadata: {{name: a}}\nspec: {{type: x}}\n---\n{HEAD}metadata: {{name: b}}\nspec: {{type: y}}\n"
    );
    assert_eq!(errors(&two_bad).len(), 2);
}

#[test]
fn skips_hidden_entries_like_kubernetes_data_dirs() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("..2026_11_22")).unwrap();
    std::fs::write(
        dir.path().join("..2026_11_22/p.yaml"),
        format!("{HEAD}metadata: {{name: a}}\nspec: {{type: checksum-config}}\n"),
    )
    .unwrap();
    std::os::unix::fs::symlink("..2026_11_22", dir.path().join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/p.yaml", dir.path().join("p.yaml")).unwrap();
    std::fs::write(dir.path().join("README.md"), "not a policy").unwrap();
    let set = load_dir(dir.path(), &Registry::builtin()).unwrap();
    assert_eq!(set.policies.len(), 1);
}
