//! `serve --manage-webhooks`: keep the cluster's MutatingWebhookConfiguration and
//! ValidatingWebhookConfiguration in step with the policies in force and the CA bundle, by
//! server-side apply (field manager `confgate`). Applied at start, whenever the policy set or
//! the CA file changes, and every five minutes against drift; the first time only once confgate
//! is ready. RBAC: `deploy/components/manage-webhooks/rbac.yaml`. With `--owner-cluster-role`
//! both configurations name that ClusterRole as their owner, so deleting confgate's RBAC
//! (uninstalling it) has the garbage collector delete them too.

use crate::webhooks::{Options, generate};
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often the inputs are compared with what was last applied.
const CHECK_EVERY: Duration = Duration::from_secs(10);
/// How often the registration is re-applied even when nothing changed (repairs manual edits).
const RESYNC_EVERY: Duration = Duration::from_secs(300);

/// Runs forever; failures are logged and retried at the next check.
pub async fn run(
    client: Client,
    policies: Arc<crate::policy::PolicyStore>,
    ready: impl Fn() -> Result<String, String>,
    mut options: Options,
    ca_file: PathBuf,
    owners: crate::owners::Owners,
) {
    // matchConditions only where the apiserver takes them; the server applies the same rules.
    match client.apiserver_version().await {
        Ok(info) => {
            let minor = crate::webhooks::minor_version(&format!("{}.{}", info.major, info.minor));
            options.match_conditions =
                minor.is_some_and(|m| m >= crate::webhooks::MATCH_CONDITIONS_SINCE);
        }
        Err(error) => {
            options.match_conditions = false;
            tracing::warn!(%error, "cannot read the apiserver's version; registering without matchConditions");
        }
    }
    // No webhook before this confgate can answer it: wait until it is ready (caches synced).
    let mut waited = false;
    while let Err(reason) = ready() {
        if !waited {
            tracing::info!(%reason, "webhook registration waits until confgate is ready");
            waited = true;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let mutating: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let validating: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    let params = PatchParams::apply("confgate").force();
    let mut applied: Option<(Vec<u8>, Instant)> = None;
    loop {
        match std::fs::read(&ca_file) {
            Err(error) => {
                tracing::warn!(ca = %ca_file.display(), %error, "cannot read the CA bundle; webhooks not updated")
            }
            Ok(ca) => {
                let set = policies.current();
                let inputs = Sha256::new()
                    .chain_update(set.fingerprint.as_bytes())
                    .chain_update(&ca)
                    .finalize()
                    .to_vec();
                let due = applied
                    .as_ref()
                    .is_none_or(|(last, at)| *last != inputs || at.elapsed() >= RESYNC_EVERY);
                if due {
                    options.ca_bundle = Some(ca);
                    match generate(&set, &options) {
                        Err(error) => {
                            tracing::error!(%error, "cannot generate the webhook registration")
                        }
                        Ok((mut m, mut v)) => {
                            let name = options.name.clone();
                            let result = async {
                                // Owned by confgate's ClusterRole, so uninstalling confgate
                                // removes them; never registered unowned when an owner is asked
                                // for (that would outlive the install).
                                if let Some(owner) = owners.cluster_scoped(&client).await? {
                                    m.metadata.owner_references = Some(vec![owner.clone()]);
                                    v.metadata.owner_references = Some(vec![owner]);
                                }
                                apply(&mutating, &name, &params, &m).await?;
                                apply(&validating, &name, &params, &v).await?;
                                Ok::<_, RegisterError>(())
                            };
                            match result.await {
                                Ok(_) => {
                                    tracing::info!(name = %name, policies = set.policies.len(), "webhook registration applied");
                                    applied = Some((inputs, Instant::now()));
                                }
                                Err(error) => {
                                    tracing::warn!(%error, "applying the webhook registration failed; retrying")
                                }
                            }
                        }
                    }
                }
            }
        }
        tokio::time::sleep(CHECK_EVERY).await;
    }
}

/// Why the registration could not be applied this time.
#[derive(Debug, thiserror::Error)]
enum RegisterError {
    #[error(transparent)]
    Owner(#[from] crate::owners::OwnerError),
    #[error(transparent)]
    Api(#[from] kube::Error),
}

/// Server-side applies `object`, then makes sure the stored configuration is exactly the
/// generated one. Fields another manager owns survive an apply: a `matchLabels` someone added to
/// a namespaceSelector would silently narrow confgate's webhook, and a `service` beside the `url`
/// confgate registers makes the merge invalid ("exactly one of url or service is required").
/// confgate owns these configurations whole, so when the applied object differs from what a
/// plain replace would store (asked with a server-side dry-run), it is replaced.
async fn apply<K>(api: &Api<K>, name: &str, params: &PatchParams, object: &K) -> kube::Result<()>
where
    K: Resource + Clone + Serialize + DeserializeOwned + std::fmt::Debug,
{
    let applied = match api.patch(name, params, &Patch::Apply(object)).await {
        Ok(stored) => Some(stored),
        Err(kube::Error::Api(status)) if status.code == 422 => None,
        Err(error) => return Err(error),
    };
    let current = match &applied {
        Some(stored) => stored.clone(),
        None => api.get(name).await?,
    };
    let mut replacement = object.clone();
    replacement.meta_mut().resource_version = current.meta().resource_version.clone();
    let post = |dry_run| PostParams {
        dry_run,
        field_manager: params.field_manager.clone(),
    };
    let exact = api.replace(name, &post(true), &replacement).await?;
    if applied.is_some_and(|stored| webhooks(&stored) == webhooks(&exact)) {
        return Ok(());
    }
    tracing::warn!(
        name,
        "fields set by another manager changed the webhook registration; replacing it whole"
    );
    api.replace(name, &post(false), &replacement)
        .await
        .map(drop)
}

/// The `webhooks` of a configuration, for comparison.
fn webhooks<K: Serialize>(object: &K) -> serde_json::Value {
    serde_json::to_value(object)
        .map(|mut v| v["webhooks"].take())
        .unwrap_or_default()
}
