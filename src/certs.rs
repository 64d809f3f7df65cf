//! Certificates for the webhook: a CA and a serving certificate signed by it (rcgen), the
//! development certificates `serve` makes when none are configured, and reading a certificate's
//! expiry for the metric.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use sha2::Digest as _;
use std::path::{Path, PathBuf};
use time::{Duration, OffsetDateTime};

/// Why certificates could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// rcgen refused the parameters (for example an invalid DNS name).
    #[error("cannot generate certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// A file could not be written or read.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Only one of the certificate and the key exists.
    #[error(
        "{present} exists but {absent} does not: provide both, or neither to generate development certificates"
    )]
    HalfPresent {
        /// The file that exists.
        present: PathBuf,
        /// The file that is missing.
        absent: PathBuf,
    },
    /// A PEM file holds no certificate or key rustls accepts.
    #[error("{path}: {reason}")]
    BadPem {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// The TLS client configuration could not be built.
    #[error("TLS client: {0}")]
    Tls(#[from] rustls::Error),
}

/// A TLS client configuration for confgate's own outgoing HTTPS (notifications): the system's
/// roots, with rustls and ring as everywhere else in confgate.
pub fn client_tls() -> Result<rustls::ClientConfig, CertError> {
    client_tls_with(None, None)
}

/// [`client_tls`], also trusting the CAs in `extra_ca` (PEM) and, when given, presenting the
/// client certificate chain and key of `identity` (PEM files).
pub fn client_tls_with(
    extra_ca: Option<&Path>,
    identity: Option<(&Path, &Path)>,
) -> Result<rustls::ClientConfig, CertError> {
    use rustls::pki_types::pem::PemObject as _;
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| CertError::Io {
            path: path.to_owned(),
            source,
        })
    };
    let bad = |path: &Path, reason: String| CertError::BadPem {
        path: path.to_owned(),
        reason,
    };
    let certificates = |path: &Path| {
        let certs = rustls::pki_types::CertificateDer::pem_slice_iter(&read(path)?)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(path, e.to_string()))?;
        if certs.is_empty() {
            return Err(bad(path, "the file has no CERTIFICATE block".into()));
        }
        Ok(certs)
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    if let Some(path) = extra_ca {
        for cert in certificates(path)? {
            roots.add(cert).map_err(|e| bad(path, e.to_string()))?;
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots);
    Ok(match identity {
        None => config.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = certificates(cert)?;
            let key_der = rustls::pki_types::PrivateKeyDer::from_pem_slice(&read(key)?)
                .map_err(|e| bad(key, format!("no usable private key: {e}")))?;
            config.with_client_auth_cert(chain, key_der)?
        }
    })
}

/// What to certify.
#[derive(Debug, Clone)]
pub struct CertRequest {
    /// Service name (`confgate`).
    pub service: String,
    /// Service namespace (`confgate-system`).
    pub namespace: String,
    /// Extra DNS names.
    pub dns: Vec<String>,
    /// Extra IP addresses.
    pub ips: Vec<std::net::IpAddr>,
    /// Validity in days.
    pub days: u32,
}

/// A generated CA and serving certificate, in PEM.
pub struct GeneratedCerts {
    /// The CA certificate (the webhook's `caBundle`).
    pub ca_pem: String,
    /// The serving certificate.
    pub cert_pem: String,
    /// The serving certificate's private key.
    pub key_pem: String,
}

/// The names a Service is reached by inside the cluster.
pub fn service_names(service: &str, namespace: &str) -> Vec<String> {
    vec![
        service.to_owned(),
        format!("{service}.{namespace}"),
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
    ]
}

impl CertRequest {
    /// Every subject alternative name: the service names, then `dns`, then `ips`.
    pub fn subject_alt_names(&self) -> Vec<String> {
        let mut names = service_names(&self.service, &self.namespace);
        names.extend(self.dns.iter().cloned());
        names.extend(self.ips.iter().map(ToString::to_string));
        names
    }

    /// Generates a fresh CA and a serving certificate (subject the service's DNS name) signed
    /// by it. Every CA has a subject of its own (`confgate CA <date> <key id>`) and the serving
    /// certificate names its CA's key (Authority Key Identifier), so a client that trusts the
    /// old and the new CA during a rotation always finds the right issuer.
    pub fn generate(&self) -> Result<GeneratedCerts, CertError> {
        let now = OffsetDateTime::now_utc();
        let not_after = now + Duration::days(i64::from(self.days.max(1)));
        let ca_key = KeyPair::generate()?;
        let key_id = hex::encode(&sha2::Sha256::digest(ca_key.public_key_raw())[..4]);
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.distinguished_name = name(&format!(
            "confgate CA {:04}-{:02}-{:02} {key_id}",
            now.year(),
            u8::from(now.month()),
            now.day()
        ));
        ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        ca.not_before = now - Duration::minutes(5);
        ca.not_after = not_after;
        let ca_cert = ca.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca, ca_key);

        let mut leaf = CertificateParams::new(self.subject_alt_names())?;
        leaf.distinguished_name = name(&format!("{}.{}.svc", self.service, self.namespace));
        leaf.is_ca = IsCa::ExplicitNoCa;
        leaf.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        leaf.use_authority_key_identifier_extension = true;
        leaf.not_before = now - Duration::minutes(5);
        leaf.not_after = not_after;
        let leaf_key = KeyPair::generate()?;
        let leaf_cert = leaf.signed_by(&leaf_key, &issuer)?;
        Ok(GeneratedCerts {
            ca_pem: ca_cert.pem(),
            cert_pem: leaf_cert.pem(),
            key_pem: leaf_key.serialize_pem(),
        })
    }
}

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn.push(DnType::OrganizationName, "confgate");
    dn
}

impl GeneratedCerts {
    /// Writes `ca.crt` beside the serving certificate, the certificate, and the key (mode 0600).
    pub fn write(&self, cert: &Path, key: &Path) -> Result<PathBuf, CertError> {
        let dir = cert.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(|source| CertError::Io {
            path: dir.to_owned(),
            source,
        })?;
        let ca = dir.join("ca.crt");
        write_file(&ca, &self.ca_pem, 0o644)?;
        write_file(cert, &self.cert_pem, 0o644)?;
        write_file(key, &self.key_pem, 0o600)?;
        Ok(ca)
    }
}

fn write_file(path: &Path, contents: &str, mode: u32) -> Result<(), CertError> {
    let io = |source| CertError::Io {
        path: path.to_owned(),
        source,
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    use std::io::Write;
    let mut file = options.open(path).map_err(io)?;
    file.write_all(contents.as_bytes()).map_err(io)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io)?;
    }
    Ok(())
}

/// When neither `cert` nor `key` exists, generates development certificates (CA `ca.crt`
/// beside them; SANs localhost, 127.0.0.1, ::1 and the in-cluster names of `confgate` in
/// `confgate-system`) and returns the CA path. Returns `None` when both exist.
pub fn ensure_dev_certs(cert: &Path, key: &Path) -> Result<Option<PathBuf>, CertError> {
    match (cert.exists(), key.exists()) {
        (true, true) => Ok(None),
        (true, false) => Err(CertError::HalfPresent {
            present: cert.to_owned(),
            absent: key.to_owned(),
        }),
        (false, true) => Err(CertError::HalfPresent {
            present: key.to_owned(),
            absent: cert.to_owned(),
        }),
        (false, false) => {
            let request = CertRequest {
                service: "confgate".into(),
                namespace: "confgate-system".into(),
                dns: vec!["localhost".into()],
                ips: vec![[127, 0, 0, 1].into(), std::net::Ipv6Addr::LOCALHOST.into()],
                days: 365,
            };
            request.generate()?.write(cert, key).map(Some)
        }
    }
}

/// `notAfter` of the first certificate in a PEM, as Unix seconds.
pub fn not_after_unix(cert_pem: &[u8]) -> Option<i64> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem).ok()?;
    let cert = pem.parse_x509().ok()?;
    Some(cert.validity().not_after.timestamp())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_ca_and_leaf_with_service_names() {
        let request = CertRequest {
            service: "hook".into(),
            namespace: "ops".into(),
            dns: vec!["extra.example".into()],
            ips: vec![[10, 0, 0, 1].into()],
            days: 30,
        };
        let certs = request.generate().unwrap();
        let (_, pem) = x509_parser::pem::parse_x509_pem(certs.cert_pem.as_bytes()).unwrap();
        let leaf = pem.parse_x509().unwrap();
        let sans: Vec<String> = leaf
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
            .iter()
            .map(|n| n.to_string())
            .collect();
        // Exactly these, in this order (a `contains` check let "hook" pass for every name).
        assert_eq!(
            sans,
            vec![
                "DNSName(hook)",
                "DNSName(hook.ops)",
                "DNSName(hook.ops.svc)",
                "DNSName(hook.ops.svc.cluster.local)",
                "DNSName(extra.example)",
                "IPAddress(0a:00:00:01)",
            ]
        );
        let (_, ca_pem) = x509_parser::pem::parse_x509_pem(certs.ca_pem.as_bytes()).unwrap();
        let ca = ca_pem.parse_x509().unwrap();
        assert_ne!(ca.subject(), leaf.subject());
        assert_eq!(ca.subject(), leaf.issuer());
        let days = (not_after_unix(certs.cert_pem.as_bytes()).unwrap()
            - OffsetDateTime::now_utc().unix_timestamp())
            / 86_400;
        assert!((29..=30).contains(&days), "{days}");
    }

    #[test]
    fn dev_certs_are_generated_once_with_a_private_key_file() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        assert!(ensure_dev_certs(&cert, &key).unwrap().is_some());
        let first = std::fs::read(&cert).unwrap();
        assert!(ensure_dev_certs(&cert, &key).unwrap().is_none());
        assert_eq!(std::fs::read(&cert).unwrap(), first);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        std::fs::remove_file(&key).unwrap();
        assert!(matches!(
            ensure_dev_certs(&cert, &key),
            Err(CertError::HalfPresent { .. })
        ));
    }
}
