//! `serve --manage-webhooks`: keep the cluster's MutatingWebhookConfiguration and
//! ValidatingWebhookConfiguration in step with the policies in force and the CA bundle, by
//! server-side apply (field manager `confgate`). Applied at start, whenever the policy set or
//! the CA file changes, and every five minutes against drift. RBAC:
//! `deploy/optional/manage-webhooks-rbac.yaml`.

use crate::server::AppState;
use crate::webhooks::{Options, generate};
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often the inputs are compared with what was last applied.
const CHECK_EVERY: Duration = Duration::from_secs(10);
/// How often the registration is re-applied even when nothing changed (repairs manual edits).
const RESYNC_EVERY: Duration = Duration::from_secs(300);

/// Runs forever; failures are logged and retried at the next check.
pub async fn run(client: Client, state: Arc<AppState>, mut options: Options, ca_file: PathBuf) {
    let mutating: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let validating: Api<ValidatingWebhookConfiguration> = Api::all(client);
    let params = PatchParams::apply("confgate").force();
    let mut applied: Option<(Vec<u8>, Instant)> = None;
    loop {
        match std::fs::read(&ca_file) {
            Err(error) => {
                tracing::warn!(ca = %ca_file.display(), %error, "cannot read the CA bundle; webhooks not updated")
            }
            Ok(ca) => {
                let set = state.admission.policies.load_full();
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
                        Ok((m, v)) => {
                            let name = options.name.clone();
                            let result = async {
                                mutating.patch(&name, &params, &Patch::Apply(&m)).await?;
                                validating.patch(&name, &params, &Patch::Apply(&v)).await
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
