//! Where a live cluster's [`ChecksumKey`] is kept: a Secret confgate owns in its own namespace,
//! read (or created with a random key) at start.

use super::ChecksumKey;
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};

/// Where a live cluster's [`ChecksumKey`] is kept: a Secret confgate owns, in its own namespace.
#[derive(Debug, Clone)]
pub struct KeySecret {
    /// confgate's namespace.
    pub namespace: String,
    /// The Secret's name.
    pub name: String,
    /// Create it (with a random key) when it does not exist; otherwise only read it.
    pub create: bool,
    /// Who owns it when confgate creates it.
    pub owners: crate::owners::Owners,
}

/// The data key of the key Secret.
const KEY_FIELD: &str = "key";

pub(super) async fn read_or_create_key(
    client: &Client,
    api: &Api<Secret>,
    key: &KeySecret,
) -> Result<ChecksumKey, String> {
    let parse = |secret: &Secret| {
        secret
            .data
            .as_ref()
            .and_then(|d| d.get(KEY_FIELD))
            .and_then(|v| ChecksumKey::new(&v.0))
            .ok_or_else(|| format!("it has no data.{KEY_FIELD} of at least 16 bytes"))
    };
    match api.get_opt(&key.name).await {
        Ok(Some(secret)) => return parse(&secret),
        Ok(None) if !key.create => return Err("it does not exist".into()),
        Ok(None) => {}
        Err(e) => return Err(e.to_string()),
    }
    let bytes = ChecksumKey::generate()?;
    let owner = key
        .owners
        .namespaced(client)
        .await
        .map_err(|e| e.to_string())?;
    let secret = crate::owners::own_secret(
        &key.name,
        "HMAC key for the Secret part of checksum/config; deleting it changes the checksum of every workload that uses a Secret (they roll once)",
        "Opaque",
        [(KEY_FIELD, bytes.to_vec())],
        owner,
    );
    match crate::owners::create_once(api, &secret).await {
        Ok(stored) => parse(&stored),
        Err(e) => Err(e.to_string()),
    }
}
