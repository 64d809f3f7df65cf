//! Secrets that are on their way: objects whose controller creates a Secret in their own
//! namespace (a cert-manager `Certificate`, an external-secrets `ExternalSecret`, ...), and the
//! hooks of a rendered chart that run before its workloads and may create Secrets of their own.
//!
//! A reference to a Secret that does not exist yet but is promised is not a reason to deny: the
//! Pods wait for it and start once it is made. `require-config-keys` reports it as a warning
//! naming the promiser. Only the fields a promiser's controller reads to name and fill its Secret
//! are looked at; nothing of a Secret's value is ever read here.

use serde_json::Value;
use std::collections::BTreeSet;

/// A kind whose objects promise Secrets, as its CRD serves it.
#[derive(Debug)]
pub struct PromiserKind {
    /// The API group.
    pub group: &'static str,
    /// The kind.
    pub kind: &'static str,
    /// The resource (plural), for RBAC and the watch.
    pub plural: &'static str,
    /// The versions confgate understands, preferred first.
    pub versions: &'static [&'static str],
    /// What one object promises.
    promised: fn(&Value) -> Vec<Promised>,
}

/// One Secret an object promises: its name and, when the promiser says, the keys it writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Promised {
    /// The Secret's name (same namespace as the promiser).
    pub secret: String,
    /// The keys it will hold; `None`: not known in advance (an `ExternalSecret` with
    /// `dataFrom`, a Vault secret).
    pub keys: Option<BTreeSet<String>>,
}

/// Who promises a Secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Promise {
    /// `Certificate "web-tls"`, or for a hook `Helm pre-install hook Job "init-secrets"`.
    pub by: String,
    /// The keys it writes, when known.
    pub keys: Option<BTreeSet<String>>,
    /// A hook of the reviewed input that runs before its workloads: it *may* create the Secret
    /// (whatever it makes cannot be seen without running it).
    pub hook: bool,
}

impl Promise {
    /// True when the promise covers `key` (or its keys are not known).
    pub fn writes(&self, key: &str) -> bool {
        self.keys.as_ref().is_none_or(|keys| keys.contains(key))
    }
}

/// What is known of the promises for one Secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Promises {
    /// These (possibly none).
    Known(Vec<Promise>),
    /// Cannot be known now (a promiser watch has not synced): says why.
    Unknown(String),
}

impl Promises {
    /// No promise at all, and that is known.
    pub fn none() -> Self {
        Promises::Known(Vec::new())
    }
}

/// The kinds followed, by the CRDs their projects install.
pub static PROMISERS: &[PromiserKind] = &[
    PromiserKind {
        group: "cert-manager.io",
        kind: "Certificate",
        plural: "certificates",
        versions: &["v1"],
        promised: certificate,
    },
    PromiserKind {
        group: "external-secrets.io",
        kind: "ExternalSecret",
        plural: "externalsecrets",
        versions: &["v1", "v1beta1"],
        promised: external_secret,
    },
    PromiserKind {
        group: "bitnami.com",
        kind: "SealedSecret",
        plural: "sealedsecrets",
        versions: &["v1alpha1"],
        promised: sealed_secret,
    },
    PromiserKind {
        group: "secrets-store.csi.x-k8s.io",
        kind: "SecretProviderClass",
        plural: "secretproviderclasses",
        versions: &["v1", "v1alpha1"],
        promised: secret_provider_class,
    },
    PromiserKind {
        group: "secrets.hashicorp.com",
        kind: "VaultStaticSecret",
        plural: "vaultstaticsecrets",
        versions: &["v1beta1"],
        promised: vault_destination,
    },
    PromiserKind {
        group: "secrets.hashicorp.com",
        kind: "VaultDynamicSecret",
        plural: "vaultdynamicsecrets",
        versions: &["v1beta1"],
        promised: vault_destination,
    },
    PromiserKind {
        group: "secrets.hashicorp.com",
        kind: "VaultPKISecret",
        plural: "vaultpkisecrets",
        versions: &["v1beta1"],
        promised: vault_destination,
    },
    PromiserKind {
        group: "onepassword.com",
        kind: "OnePasswordItem",
        plural: "onepassworditems",
        versions: &["v1"],
        promised: own_name,
    },
];

impl PromiserKind {
    /// What `object` (of this kind) promises.
    pub fn promised(&self, object: &Value) -> Vec<Promised> {
        (self.promised)(object)
    }

    /// `certificates.cert-manager.io`.
    pub fn resource(&self) -> String {
        format!("{}.{}", self.plural, self.group)
    }
}

/// The promiser kind of a manifest, by its `apiVersion` group and `kind`.
pub fn kind_of(object: &Value) -> Option<&'static PromiserKind> {
    let api_version = object.get("apiVersion").and_then(Value::as_str)?;
    let kind = object.get("kind").and_then(Value::as_str)?;
    let group = api_version.rsplit_once('/').map(|(g, _)| g)?;
    PROMISERS
        .iter()
        .find(|p| p.group == group && p.kind == kind)
}

/// `Certificate "web-tls"`.
pub fn describe(kind: &str, object: &Value) -> String {
    format!(
        "{kind} {:?}",
        str_at(object, "/metadata/name").unwrap_or_default()
    )
}

/// The hook a manifest is, when it runs before a chart's (or an Argo CD app's) workloads and
/// can create Secrets: a Job or Pod with `helm.sh/hook: pre-install`/`pre-upgrade`, or
/// `argocd.argoproj.io/hook: PreSync`. Described as `Helm pre-install hook Job "init"`.
pub fn hook(object: &Value) -> Option<String> {
    let kind = object.get("kind").and_then(Value::as_str)?;
    if kind != "Job" && kind != "Pod" {
        return None;
    }
    let name = str_at(object, "/metadata/name").unwrap_or_default();
    let annotations = object.pointer("/metadata/annotations")?;
    let helm = annotations.get("helm.sh/hook").and_then(Value::as_str);
    if let Some(phase) = helm
        .into_iter()
        .flat_map(|h| h.split(','))
        .map(str::trim)
        .find(|h| *h == "pre-install" || *h == "pre-upgrade")
    {
        return Some(format!("Helm {phase} hook {kind} {name:?}"));
    }
    let argo = annotations
        .get("argocd.argoproj.io/hook")
        .and_then(Value::as_str);
    argo.into_iter()
        .flat_map(|h| h.split(','))
        .map(str::trim)
        .find(|h| *h == "PreSync")
        .map(|_| format!("Argo CD PreSync hook {kind} {name:?}"))
}

fn str_at<'a>(object: &'a Value, pointer: &str) -> Option<&'a str> {
    object
        .pointer(pointer)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

fn keys_of(object: &Value, pointer: &str) -> impl Iterator<Item = String> {
    object
        .pointer(pointer)
        .and_then(Value::as_object)
        .into_iter()
        .flat_map(|m| m.keys().cloned())
}

/// cert-manager writes `tls.crt`, `tls.key` and (when the issuer knows it) `ca.crt`, plus
/// the additional output formats and keystores the Certificate asks for.
fn certificate(object: &Value) -> Vec<Promised> {
    let Some(secret) = str_at(object, "/spec/secretName") else {
        return Vec::new();
    };
    let mut keys: BTreeSet<String> = ["tls.crt", "tls.key", "ca.crt"]
        .into_iter()
        .map(str::to_owned)
        .collect();
    for format in object
        .pointer("/spec/additionalOutputFormats")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        match format.get("type").and_then(Value::as_str) {
            Some("CombinedPEM") => keys.insert("tls-combined.pem".into()),
            Some("DER") => keys.insert("key.der".into()),
            _ => false,
        };
    }
    let create = |store: &str| {
        object
            .pointer(&format!("/spec/keystores/{store}/create"))
            .and_then(Value::as_bool)
            == Some(true)
    };
    if create("jks") {
        keys.extend(["keystore.jks".into(), "truststore.jks".into()]);
    }
    if create("pkcs12") {
        keys.extend(["keystore.p12".into(), "truststore.p12".into()]);
    }
    vec![Promised {
        secret: secret.to_owned(),
        keys: Some(keys),
    }]
}

/// external-secrets creates `spec.target.name` (default: the ExternalSecret's name) unless
/// `creationPolicy` is `Merge` or `None`; its keys are `data[].secretKey` and the template's
/// keys, unknown when `dataFrom` or `templateFrom` bring keys of their own.
fn external_secret(object: &Value) -> Vec<Promised> {
    let policy = str_at(object, "/spec/target/creationPolicy").unwrap_or("Owner");
    if policy == "Merge" || policy == "None" {
        return Vec::new();
    }
    let Some(secret) =
        str_at(object, "/spec/target/name").or_else(|| str_at(object, "/metadata/name"))
    else {
        return Vec::new();
    };
    let open = |pointer: &str| {
        object
            .pointer(pointer)
            .and_then(Value::as_array)
            .is_some_and(|a| !a.is_empty())
    };
    let keys =
        (!open("/spec/dataFrom") && !open("/spec/target/template/templateFrom")).then(|| {
            let data = object
                .pointer("/spec/data")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|d| d.get("secretKey").and_then(Value::as_str))
                .map(str::to_owned);
            data.chain(keys_of(object, "/spec/target/template/data"))
                .collect()
        });
    vec![Promised {
        secret: secret.to_owned(),
        keys,
    }]
}

/// The sealed-secrets controller creates `spec.template.metadata.name` (default: the
/// SealedSecret's name) with the `encryptedData` keys and the template's `data` keys.
fn sealed_secret(object: &Value) -> Vec<Promised> {
    let Some(secret) =
        str_at(object, "/spec/template/metadata/name").or_else(|| str_at(object, "/metadata/name"))
    else {
        return Vec::new();
    };
    let keys = keys_of(object, "/spec/encryptedData")
        .chain(keys_of(object, "/spec/template/data"))
        .collect();
    vec![Promised {
        secret: secret.to_owned(),
        keys: Some(keys),
    }]
}

/// The Secrets Store CSI driver syncs each `spec.secretObjects[]` to a Secret (once a Pod
/// mounts the class) with the listed `data[].key`s.
fn secret_provider_class(object: &Value) -> Vec<Promised> {
    object
        .pointer("/spec/secretObjects")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|o| {
            let secret = str_at(o, "/secretName")?;
            let keys = o
                .get("data")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|d| d.get("key").and_then(Value::as_str))
                .map(str::to_owned)
                .collect();
            Some(Promised {
                secret: secret.to_owned(),
                keys: Some(keys),
            })
        })
        .collect()
}

/// The Vault Secrets Operator creates `spec.destination.name` when `create: true`.
fn vault_destination(object: &Value) -> Vec<Promised> {
    let create = object
        .pointer("/spec/destination/create")
        .and_then(Value::as_bool)
        == Some(true);
    match (create, str_at(object, "/spec/destination/name")) {
        (true, Some(secret)) => vec![Promised {
            secret: secret.to_owned(),
            keys: None,
        }],
        _ => Vec::new(),
    }
}

/// The 1Password operator creates a Secret named after the item.
fn own_name(object: &Value) -> Vec<Promised> {
    str_at(object, "/metadata/name")
        .map(|secret| Promised {
            secret: secret.to_owned(),
            keys: None,
        })
        .into_iter()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn promised(object: Value) -> Vec<Promised> {
        kind_of(&object)
            .map(|k| k.promised(&object))
            .unwrap_or_default()
    }

    fn keys(names: &[&str]) -> Option<BTreeSet<String>> {
        Some(names.iter().map(|k| (*k).to_owned()).collect())
    }

    #[test]
    fn a_certificate_promises_its_secret_name_with_the_tls_keys_and_asked_formats() {
        let cert = json!({"apiVersion": "cert-manager.io/v1", "kind": "Certificate",
            "metadata": {"name": "admission"},
            "spec": {"secretName": "admission-tls", "additionalOutputFormats": [{"type": "CombinedPEM"}],
                     "keystores": {"pkcs12": {"create": true}}}});
        assert_eq!(
            promised(cert),
            vec![Promised {
                secret: "admission-tls".into(),
                keys: keys(&[
                    "ca.crt",
                    "keystore.p12",
                    "tls-combined.pem",
                    "tls.crt",
                    "tls.key",
                    "truststore.p12"
                ]),
            }]
        );
    }

    #[test]
    fn an_external_secret_promises_its_target_or_own_name_unless_it_only_merges() {
        let es = |spec: Value| {
            json!({"apiVersion": "external-secrets.io/v1beta1", "kind": "ExternalSecret",
                   "metadata": {"name": "db"}, "spec": spec})
        };
        assert_eq!(
            promised(es(
                json!({"data": [{"secretKey": "password", "remoteRef": {"key": "x"}}]})
            )),
            vec![Promised {
                secret: "db".into(),
                keys: keys(&["password"])
            }]
        );
        assert_eq!(
            promised(es(
                json!({"target": {"name": "db-creds"}, "dataFrom": [{"extract": {"key": "x"}}]})
            )),
            vec![Promised {
                secret: "db-creds".into(),
                keys: None
            }]
        );
        assert_eq!(
            promised(es(json!({"target": {"creationPolicy": "Merge"}}))),
            vec![]
        );
    }

    #[test]
    fn sealed_secrets_provider_classes_and_vault_secrets_promise_what_their_controllers_make() {
        let sealed = json!({"apiVersion": "bitnami.com/v1alpha1", "kind": "SealedSecret",
            "metadata": {"name": "s"}, "spec": {"encryptedData": {"token": "AgB..."}}});
        assert_eq!(
            promised(sealed),
            vec![Promised {
                secret: "s".into(),
                keys: keys(&["token"])
            }]
        );
        let spc = json!({"apiVersion": "secrets-store.csi.x-k8s.io/v1", "kind": "SecretProviderClass",
            "metadata": {"name": "vault"}, "spec": {"secretObjects": [
                {"secretName": "synced", "type": "Opaque", "data": [{"objectName": "a", "key": "A"}]}]}});
        assert_eq!(
            promised(spc),
            vec![Promised {
                secret: "synced".into(),
                keys: keys(&["A"])
            }]
        );
        let vault = |create: bool| {
            json!({"apiVersion": "secrets.hashicorp.com/v1beta1", "kind": "VaultStaticSecret",
                   "metadata": {"name": "v"}, "spec": {"destination": {"name": "app", "create": create}}})
        };
        assert_eq!(promised(vault(false)), vec![]);
        assert_eq!(
            promised(vault(true)),
            vec![Promised {
                secret: "app".into(),
                keys: None
            }]
        );
    }

    #[test]
    fn only_hooks_that_run_before_the_workloads_count() {
        let job = |annotations: Value| {
            json!({"apiVersion": "batch/v1", "kind": "Job",
                   "metadata": {"name": "redis-secret-init", "annotations": annotations}})
        };
        assert_eq!(
            hook(&job(json!({"helm.sh/hook": "pre-install,pre-upgrade"}))),
            Some(r#"Helm pre-install hook Job "redis-secret-init""#.into())
        );
        assert_eq!(
            hook(&job(json!({"argocd.argoproj.io/hook": "PreSync"}))),
            Some(r#"Argo CD PreSync hook Job "redis-secret-init""#.into())
        );
        assert_eq!(hook(&job(json!({"helm.sh/hook": "post-install"}))), None);
        assert_eq!(hook(&job(json!({}))), None);
    }
}
