//! `serve --tls-secret NAME`: the serving certificate lives in a Secret in confgate's namespace
//! (`tls.crt`, `tls.key`, `ca.crt`, the layout cert-manager writes), which confgate makes itself
//! when it does not exist: a CA of its own and a certificate for the Service's names.
//!
//! So a self-signed install needs no tool besides confgate: the first replica to start creates
//! the Secret (another replica that loses the race to create it reads the winner's), every
//! replica writes it to `--tls-cert`/`--tls-key` (and `ca.crt` beside them, which
//! `--manage-webhooks` registers as the caBundle), and an upgrade or a restart never makes a new
//! one: the Secret is no template's output, so no render can regenerate it. Each replica reads
//! the Secret again every [`RESYNC`], so deleting it (to rotate) gives every replica the new
//! certificate, and the webhooks the new caBundle, within that time.

use crate::certs::{CertError, CertRequest, GeneratedCerts};
use crate::owners::{OwnerError, Owners};
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::Api;
use std::path::PathBuf;
use std::time::Duration;

/// How often the Secret is read again.
pub const RESYNC: Duration = Duration::from_secs(30);
/// How long a generated certificate (and its CA) is valid: ten years. Rotate by deleting the
/// Secret.
pub const VALID_DAYS: u32 = 3650;

/// Why the Secret could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsSecretError {
    /// Reading or creating the Secret failed.
    #[error("secret {namespace}/{name}: {source}")]
    Api {
        /// confgate's namespace.
        namespace: String,
        /// The Secret's name.
        name: String,
        /// What the API server said.
        #[source]
        source: kube::Error,
    },
    /// The Secret exists but lacks a field (made by someone else): it is not overwritten.
    #[error(
        "secret {namespace}/{name} has no data.{field}: it needs tls.crt, tls.key and ca.crt (delete it to have confgate make one)"
    )]
    Incomplete {
        /// confgate's namespace.
        namespace: String,
        /// The Secret's name.
        name: String,
        /// The missing field.
        field: &'static str,
    },
    /// The owner of a new Secret could not be read.
    #[error(transparent)]
    Owner(#[from] OwnerError),
    /// Generating the certificate or writing the files failed.
    #[error(transparent)]
    Certs(#[from] CertError),
}

impl TlsSecretError {
    /// Whether trying again can help (the API, RBAC or the owner may still be being created by
    /// the same install); a Secret someone else made incomplete will not fix itself.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Api { .. } | Self::Owner(_))
    }
}

/// One Secret, kept in step with the serving certificate files.
#[derive(Clone)]
pub struct TlsSecret {
    /// The client (confgate's own credentials).
    pub client: Client,
    /// confgate's namespace, where the Secret lives.
    pub namespace: String,
    /// The Secret's name.
    pub name: String,
    /// What a new certificate certifies (the Service's names and any extra names).
    pub request: CertRequest,
    /// Who owns a new Secret.
    pub owners: Owners,
    /// Where the certificate goes (`ca.crt` is written beside it).
    pub cert: PathBuf,
    /// Where the key goes.
    pub key: PathBuf,
}

impl TlsSecret {
    /// Reads the Secret, creating it first when it does not exist, and writes the files when
    /// they differ from it. Returns whether the files changed.
    pub async fn sync(&self) -> Result<bool, TlsSecretError> {
        let pem = self.read_or_create().await?;
        let current = (
            std::fs::read_to_string(self.cert.with_file_name("ca.crt")).ok(),
            std::fs::read_to_string(&self.cert).ok(),
            std::fs::read_to_string(&self.key).ok(),
        );
        if current
            == (
                Some(pem.ca_pem.clone()),
                Some(pem.cert_pem.clone()),
                Some(pem.key_pem.clone()),
            )
        {
            return Ok(false);
        }
        pem.write(&self.cert, &self.key)?;
        Ok(true)
    }

    /// The first [`sync`](Self::sync) at start: retried for up to `within` (the Secret's
    /// namespace or RBAC may still be being created by the same install).
    pub async fn first(&self, within: Duration) -> Result<(), TlsSecretError> {
        let started = std::time::Instant::now();
        loop {
            match self.sync().await {
                Ok(_) => return Ok(()),
                Err(error) if error.is_transient() && started.elapsed() < within => {
                    tracing::warn!(%error, "cannot read or create the TLS Secret yet; retrying");
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// Keeps the files in step with the Secret until the process ends.
    pub async fn run(self) {
        loop {
            tokio::time::sleep(RESYNC).await;
            match self.sync().await {
                Ok(true) => {
                    tracing::info!(secret = %self.name, "TLS Secret changed: certificate files rewritten")
                }
                Ok(false) => {}
                Err(error) => {
                    tracing::warn!(%error, "cannot read the TLS Secret; serving the last certificate")
                }
            }
        }
    }

    async fn read_or_create(&self) -> Result<GeneratedCerts, TlsSecretError> {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &self.namespace);
        let api_error = |source| TlsSecretError::Api {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            source,
        };
        if let Some(secret) = api.get_opt(&self.name).await.map_err(api_error)? {
            return self.parse(&secret);
        }
        let generated = self.request.generate()?;
        let owner = self.owners.namespaced(&self.client).await?;
        let secret = crate::owners::own_secret(
            &self.name,
            "confgate's serving certificate and its CA, made by confgate (--tls-secret); delete it to rotate both",
            "kubernetes.io/tls",
            [
                ("tls.crt", generated.cert_pem.into_bytes()),
                ("tls.key", generated.key_pem.into_bytes()),
                ("ca.crt", generated.ca_pem.into_bytes()),
            ],
            owner,
        );
        let stored = crate::owners::create_once(&api, &secret)
            .await
            .map_err(api_error)?;
        // Ours, or the one another replica created first.
        if stored.data == secret.data {
            tracing::info!(secret = %self.name, namespace = %self.namespace, "TLS Secret created: a new CA and serving certificate");
        }
        self.parse(&stored)
    }

    fn parse(&self, secret: &Secret) -> Result<GeneratedCerts, TlsSecretError> {
        parse(secret, &self.namespace, &self.name)
    }
}

/// The three PEMs of a Secret; an incomplete Secret is refused, never completed.
fn parse(secret: &Secret, namespace: &str, name: &str) -> Result<GeneratedCerts, TlsSecretError> {
    let field = |field: &'static str| {
        secret
            .data
            .as_ref()
            .and_then(|d| d.get(field))
            .filter(|v| !v.0.is_empty())
            .map(|v| String::from_utf8_lossy(&v.0).into_owned())
            .ok_or_else(|| TlsSecretError::Incomplete {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                field,
            })
    };
    Ok(GeneratedCerts {
        cert_pem: field("tls.crt")?,
        key_pem: field("tls.key")?,
        ca_pem: field("ca.crt")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(fields: &[(&str, &str)]) -> Secret {
        Secret {
            data: Some(
                fields
                    .iter()
                    .map(|(k, v)| {
                        (
                            (*k).to_owned(),
                            k8s_openapi::ByteString(v.as_bytes().to_vec()),
                        )
                    })
                    .collect(),
            ),
            ..Default::default()
        }
    }

    #[test]
    fn a_complete_secret_gives_its_three_pems() {
        let pem = parse(
            &secret(&[("tls.crt", "CERT"), ("tls.key", "KEY"), ("ca.crt", "CA")]),
            "ns",
            "tls",
        )
        .unwrap();
        assert_eq!(
            (
                pem.cert_pem.as_str(),
                pem.key_pem.as_str(),
                pem.ca_pem.as_str()
            ),
            ("CERT", "KEY", "CA")
        );
    }

    #[test]
    fn an_incomplete_secret_is_refused_by_name_and_not_retried() {
        // A Secret made by someone else (cert-manager without a CA issuer writes no ca.crt).
        let error = parse(
            &secret(&[("tls.crt", "CERT"), ("tls.key", "KEY")]),
            "ns",
            "tls",
        )
        .err()
        .unwrap();
        assert_eq!(
            error.to_string(),
            "secret ns/tls has no data.ca.crt: it needs tls.crt, tls.key and ca.crt (delete it to have confgate make one)"
        );
        assert!(!error.is_transient());
        let empty = parse(
            &secret(&[("tls.crt", ""), ("tls.key", "KEY"), ("ca.crt", "CA")]),
            "ns",
            "tls",
        )
        .err()
        .unwrap();
        assert!(empty.to_string().contains("no data.tls.crt"), "{empty}");
    }
}
