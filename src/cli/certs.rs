//! `confgate certs`: a CA and a serving certificate for the webhook Service, and its caBundle.

use crate::certs::CertRequest;
use base64::Engine as _;
use clap::Args;
use std::path::PathBuf;

/// Arguments of `confgate certs`.
#[derive(Debug, Args)]
pub struct CertsArgs {
    /// Where to write ca.crt, tls.crt and tls.key (mode 0600).
    #[arg(long)]
    pub out_dir: PathBuf,
    /// The webhook Service name.
    #[arg(long, default_value = "confgate")]
    pub service: String,
    /// The webhook Service namespace.
    #[arg(long, default_value = "confgate-system")]
    pub namespace: String,
    /// Extra DNS names (repeatable).
    #[arg(long = "dns")]
    pub dns: Vec<String>,
    /// Extra IP addresses (repeatable).
    #[arg(long = "ip")]
    pub ip: Vec<std::net::IpAddr>,
    /// Validity in days.
    #[arg(long, default_value_t = 365)]
    pub days: u32,
}

/// Writes the files and prints the base64 caBundle on stdout.
pub fn run(args: CertsArgs) -> anyhow::Result<()> {
    let request = CertRequest {
        service: args.service,
        namespace: args.namespace,
        dns: args.dns,
        ips: args.ip,
        days: args.days,
    };
    let certs = request.generate()?;
    let cert = args.out_dir.join("tls.crt");
    let ca = certs.write(&cert, &args.out_dir.join("tls.key"))?;
    eprintln!(
        "wrote {}, {} and {} for {}",
        ca.display(),
        cert.display(),
        args.out_dir.join("tls.key").display(),
        request.subject_alt_names().join(", ")
    );
    println!(
        "{}",
        base64::engine::general_purpose::STANDARD.encode(certs.ca_pem)
    );
    Ok(())
}
