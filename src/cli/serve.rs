//! `confgate serve`: load policies and cluster state, make development certificates when none
//! are configured, and serve.

use crate::cluster::live::{LiveState, SecretsMode};
use crate::cluster::static_state::StaticState;
use crate::cluster::{ClusterState, Standalone};
use crate::policy::{Registry, load_dir};
use crate::server::budget::Limits;
use crate::server::{AppState, ServeOptions, serve_with, spawn_shutdown_on_signal};
use crate::telemetry::{self, LogFormat};
use anyhow::Context as _;
use clap::{Args, ValueEnum};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Whether to use a Kubernetes cluster for ConfigMaps, Secrets, Namespaces and LimitRanges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ClusterMode {
    /// In-cluster config or KUBECONFIG when present; otherwise standalone.
    Auto,
    /// A cluster is required; not ready until the caches have synced.
    Required,
    /// Never connect: standalone.
    None,
}

/// Arguments of `confgate serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0:8443")]
    pub listen: SocketAddr,
    /// Directory of policy files (watched for changes).
    #[arg(long, default_value = "policies")]
    pub policies: PathBuf,
    /// Serving certificate (PEM). With the key, generated for development when both are absent.
    #[arg(long, default_value = "certs/tls.crt")]
    pub tls_cert: PathBuf,
    /// Serving key (PEM).
    #[arg(long, default_value = "certs/tls.key")]
    pub tls_key: PathBuf,
    /// Cluster connection.
    #[arg(long, value_enum, default_value_t = ClusterMode::Auto)]
    pub cluster: ClusterMode,
    /// Static cluster state from manifests, instead of a live cluster (repeatable).
    #[arg(long = "cluster-state", num_args = 1..)]
    pub cluster_state: Vec<PathBuf>,
    /// How Secrets are read from a live cluster.
    #[arg(long, value_enum, default_value_t = SecretsMode::Get)]
    pub secrets: SecretsMode,
    /// Let the config guard defer the deletion of Secrets that live workloads read, as it does
    /// for ConfigMaps (a finalizer): needs `--secrets watch` and RBAC `patch` on secrets. Without
    /// it, deleting such a Secret is allowed with a warning naming its readers.
    #[arg(long)]
    pub protect_secrets: bool,
    /// Largest accepted request body, in bytes (the apiserver's own limit is about 3 MiB of object).
    #[arg(long, default_value_t = Limits::default().max_body_bytes)]
    pub max_body_bytes: usize,
    /// Request bodies being worked on at once, in bytes, server-wide; a request that cannot get
    /// its share within a second is answered 503. Bounds memory (a parsed review takes up to
    /// ~25 times its body).
    #[arg(long, default_value_t = Limits::default().max_inflight_bytes)]
    pub max_inflight_bytes: usize,
    /// Containers (init, regular, ephemeral; object and oldObject together) a review may have
    /// to be evaluated; over it, the review is answered as its failurePolicy says.
    #[arg(long, default_value_t = Limits::default().max_review_containers)]
    pub max_review_containers: usize,
    /// Connections open at once; more are closed at once (logged, counted).
    #[arg(long, default_value_t = 1024)]
    pub max_connections: usize,
    /// JSON Patch operations one answer may carry.
    #[arg(long, default_value_t = Limits::default().max_patch_ops)]
    pub max_patch_ops: usize,
    /// Bytes one answer may have.
    #[arg(long, default_value_t = Limits::default().max_answer_bytes)]
    pub max_answer_bytes: usize,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Json)]
    pub log_format: LogFormat,
    /// Seconds between failing readiness and closing the listener on SIGTERM.
    #[arg(long, default_value_t = 2)]
    pub shutdown_delay_seconds: u64,
    /// Seconds to let in-flight requests finish after the listener closes.
    #[arg(long, default_value_t = 15)]
    pub drain_seconds: u64,
    /// Keep the webhook registration in the cluster in step with the policies and the CA
    /// (needs deploy/components/manage-webhooks and a live cluster).
    #[arg(long)]
    pub manage_webhooks: bool,
    /// With --manage-webhooks: the CA bundle (default: ca.crt beside --tls-cert).
    #[arg(long)]
    pub webhook_ca_bundle: Option<PathBuf>,
    /// With --manage-webhooks: the Service the apiserver calls.
    #[arg(long, default_value = "confgate")]
    pub webhook_service: String,
    /// With --manage-webhooks: confgate's namespace (excluded from every webhook).
    #[arg(long, env = "POD_NAMESPACE", default_value = "confgate-system")]
    pub webhook_namespace: String,
    /// Accept a policy reload that removes every policy or a policy that can deny (by default
    /// such a reload is refused as a half-written or emptied file; a restart always loads what
    /// is there).
    #[arg(long)]
    pub allow_policy_removal: bool,
    /// Rollouts for configuration changes started per minute, cluster-wide, after the burst.
    #[arg(long, default_value_t = crate::controllers::rollout::Settings::default().per_minute)]
    pub rollout_rate_per_minute: u32,
    /// Rollouts for configuration changes that may start at once.
    #[arg(long, default_value_t = crate::controllers::rollout::Settings::default().burst)]
    pub rollout_burst: u32,
    /// The least time between two configuration rollouts of one workload, in seconds.
    #[arg(long, default_value_t = crate::controllers::rollout::Settings::default().min_interval.as_secs())]
    pub rollout_min_interval_seconds: u64,
    /// How long configuration changes must be quiet before the controller acts on them, in
    /// milliseconds: the changes of one `kubectl apply -f dir/` or Helm upgrade roll once.
    #[arg(long, default_value_t = crate::controllers::rollout::Settings::default().coalesce.as_millis() as u64)]
    pub rollout_coalesce_ms: u64,
    /// How often every workload is compared even without a change, in seconds (a safety net).
    #[arg(long, default_value_t = crate::controllers::rollout::Settings::default().resync.as_secs())]
    pub rollout_resync_seconds: u64,
    /// With `--secrets get`: how often the leading replica reads each Secret a workload
    /// references (by name, at most 50 reads a second), so that a rotation rolls its readers
    /// within this time (plus coalescing) without a Secret watch.
    #[arg(long, default_value_t = crate::controllers::rollout::secret_poll::PERIOD.as_secs())]
    pub secret_poll_seconds: u64,
    /// A Secret in confgate's namespace whose key `url` is a JSON webhook (Slack's incoming
    /// webhooks, or anything taking a `text` field) that hears of rollouts, holds and failures,
    /// batched every 5 s. Needs RBAC `get` on that Secret.
    #[arg(long)]
    pub notify_secret: Option<String>,
    /// An unfinished rollout whose status has not moved for this many seconds is stuck (or the
    /// Deployment controller gave up on it): it no longer holds the next configuration change,
    /// which may be the fix.
    #[arg(long, default_value_t = crate::controllers::rollout::Settings::default().stuck_after.as_secs())]
    pub rollout_stuck_seconds: u64,
    /// confgate's own namespace: the Lease that elects the replica writing rollouts, and the
    /// checksum key Secret, live here.
    #[arg(
        long,
        alias = "lease-namespace",
        env = "POD_NAMESPACE",
        default_value = "confgate-system"
    )]
    pub namespace: String,
    /// The Secret (in --namespace) holding the key for the Secret part of checksums: created
    /// with a random key when absent, shared by every replica. Deleting it changes the
    /// checksum of every workload that uses a Secret.
    #[arg(long, default_value = "confgate-checksum-key")]
    pub checksum_key_secret: String,
    /// How often existing workloads are audited (`30s`, `10m`, `1h`; `off`: never), by the
    /// replica that holds the Lease: PolicyReports, `confgate_audit_violations`, Warning Events.
    #[arg(long, default_value = "10m")]
    pub audit_interval: Interval,
    /// The report APIs the audit writes: `wgpolicyk8s` (PolicyReport), `openreports`
    /// (openreports.io Report), or both (`wgpolicyk8s,openreports`) during a migration.
    #[arg(long, value_delimiter = ',', default_value = "wgpolicyk8s")]
    pub audit_reports: Vec<crate::controllers::audit::ReportFormat>,
    /// The name of that Lease.
    #[arg(long, default_value = "confgate-rollout")]
    pub lease_name: String,
    /// With --manage-webhooks: timeoutSeconds of every webhook.
    #[arg(long, default_value_t = 5)]
    pub webhook_timeout_seconds: i32,
    /// With --manage-webhooks: reach confgate at this URL (`https://host:port`) instead of the
    /// Service, for a confgate that runs outside the cluster.
    #[arg(long)]
    pub webhook_url: Option<String>,
    /// With --manage-webhooks: metadata.name of both configurations.
    #[arg(long, default_value = "confgate")]
    pub webhook_name: String,
    /// Serve the certificate in this Secret (in --namespace: tls.crt, tls.key, ca.crt), written
    /// to --tls-cert/--tls-key and ca.crt beside them; when it does not exist, confgate creates
    /// it with a new CA and a certificate for --webhook-service (valid ten years). Read again
    /// every 30 s.
    #[arg(long)]
    pub tls_secret: Option<String>,
    /// With --tls-secret: an extra DNS name or IP address in a certificate confgate makes
    /// (repeatable).
    #[arg(long = "tls-san")]
    pub tls_sans: Vec<String>,
    /// The ClusterRole that owns what confgate creates outside its namespace (the webhook
    /// configurations, PolicyReports): deleting it has the garbage collector remove them.
    #[arg(long)]
    pub owner_cluster_role: Option<String>,
    /// The ServiceAccount (in --namespace) that owns what confgate creates in its namespace
    /// (the checksum key and TLS Secrets, the rollout Lease).
    #[arg(long)]
    pub owner_service_account: Option<String>,
}

/// Runs the server until SIGTERM.
pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let telemetry = telemetry::init(args.log_format)?;
    if let Some(endpoint) = telemetry.traces_to() {
        tracing::info!(%endpoint, "exporting traces over OTLP/HTTP");
    }
    // With --tls-secret the files are written from the Secret once the client exists (below).
    let dev_certs = match &args.tls_secret {
        Some(_) => None,
        None => crate::certs::ensure_dev_certs(&args.tls_cert, &args.tls_key)?,
    };
    if let Some(ca) = dev_certs {
        tracing::warn!(
            cert = %args.tls_cert.display(),
            ca = %ca.display(),
            "DEVELOPMENT CERTIFICATES generated: a self-signed CA for localhost and confgate.confgate-system.svc; do not use in production (see `confgate certs` or cert-manager)"
        );
    }
    if args.protect_secrets && args.secrets != crate::cluster::live::SecretsMode::Watch {
        anyhow::bail!(
            "--protect-secrets needs --secrets watch (the guard follows the Secrets it marks)"
        );
    }
    let registry = Registry::builtin();
    let policies = load_dir(&args.policies, &registry)
        .with_context(|| format!("loading policies from {}", args.policies.display()))?;
    tracing::info!(dir = %args.policies.display(), policies = %policies.policies.iter().map(|p| p.name.as_str()).collect::<Vec<_>>().join(","), "policies loaded");
    let (cluster, client, config_changed) = cluster_state(&args).await?;
    tracing::info!(cluster = %cluster.describe(), "cluster state");
    if args.manage_webhooks && client.is_none() {
        anyhow::bail!(
            "--manage-webhooks needs a live cluster (not --cluster none or --cluster-state)"
        );
    }
    let owners = args.owners();
    let tls_secret = match (&args.tls_secret, &client) {
        (None, _) => None,
        (Some(_), None) => anyhow::bail!(
            "--tls-secret needs a live cluster (not --cluster none or --cluster-state)"
        ),
        (Some(name), Some(client)) => {
            let secret = crate::controllers::tls_secret::TlsSecret {
                client: client.clone(),
                namespace: args.namespace.clone(),
                name: name.clone(),
                request: tls_request(&args)?,
                owners: owners.clone(),
                cert: args.tls_cert.clone(),
                key: args.tls_key.clone(),
            };
            secret.first(Duration::from_secs(60)).await?;
            tracing::info!(secret = %name, namespace = %args.namespace, cert = %args.tls_cert.display(), "serving the certificate of the TLS Secret");
            Some(secret)
        }
    };
    let options = ServeOptions {
        listen: args.listen,
        policies_dir: args.policies,
        tls_cert: args.tls_cert,
        tls_key: args.tls_key,
        limits: Limits {
            max_body_bytes: args.max_body_bytes,
            max_inflight_bytes: args.max_inflight_bytes,
            max_review_containers: args.max_review_containers,
            max_patch_ops: args.max_patch_ops,
            max_answer_bytes: args.max_answer_bytes,
        },
        require_cluster_sync: args.cluster == ClusterMode::Required,
        shutdown_delay: Duration::from_secs(args.shutdown_delay_seconds),
        drain_timeout: Duration::from_secs(args.drain_seconds),
        request_timeout: Duration::from_secs(30),
        allow_policy_removal: args.allow_policy_removal,
        max_connections: args.max_connections,
        first_request_timeout: crate::server::conn::FIRST_REQUEST,
        idle_timeout: crate::server::conn::IDLE,
    };
    options.limits.validate()?;
    let state = AppState::with_limits(
        policies,
        cluster,
        options.limits,
        options.require_cluster_sync,
    );
    let handle = axum_server::Handle::new();
    spawn_shutdown_on_signal(&state, &handle, &options);
    if let Some(secret) = tls_secret {
        tokio::spawn(secret.run());
    }
    if let Some(client) = &client {
        state
            .reviews
            .follow_up_with(crate::controllers::followup::Followups::start(
                client.clone(),
                state.reviews.judging(),
            ));
    }
    let mut leadership: Option<crate::controllers::lease::Leader> = None;
    if let (Some(client), Some((changed, workloads, guarded))) = (&client, config_changed) {
        let settings = crate::controllers::rollout::Settings {
            per_minute: args.rollout_rate_per_minute,
            burst: args.rollout_burst,
            min_interval: Duration::from_secs(args.rollout_min_interval_seconds),
            coalesce: Duration::from_millis(args.rollout_coalesce_ms),
            resync: Duration::from_secs(args.rollout_resync_seconds.max(1)),
            stuck_after: Duration::from_secs(args.rollout_stuck_seconds),
        };
        let election = crate::controllers::rollout::Election {
            namespace: args.namespace.clone(),
            lease: args.lease_name.clone(),
            identity: crate::controllers::rollout::Election::identity(),
            owners: owners.clone(),
        };
        let instance =
            crate::controllers::audit::Reporting::instance_of(&args.namespace, &args.lease_name);
        let leader = crate::controllers::rollout::leadership(client.clone(), election);
        leadership = Some(leader.clone());
        // The controllers run on their own runtime, at a lower CPU priority, with their own
        // client: a burst of rollouts or an audit never delays an admission answer.
        let background = crate::background::runtime().context("the controllers' runtime")?;
        let webhook_client = client;
        let client = &background_client(&background, webhook_client).await;
        background.spawn(crate::controllers::protection::run(
            client.clone(),
            state.reviews.judging(),
            workloads.clone(),
            crate::controllers::protection::Guard {
                finalizer: crate::controllers::protection::finalizer(&instance),
                lease: (args.namespace.clone(), args.lease_name.clone()),
                caches: guarded,
            },
            leader.clone(),
        ));
        if args.secrets == crate::cluster::live::SecretsMode::Get {
            // No Secret watch: the referenced Secrets are read by name, so a rotation rolls
            // its readers within a minute.
            background.spawn(crate::controllers::rollout::secret_poll::run(
                client.clone(),
                workloads.clone(),
                changed.clone(),
                leader.clone(),
                Duration::from_secs(args.secret_poll_seconds.max(1)),
            ));
        }
        let notifier = match &args.notify_secret {
            Some(name) => {
                let _on = background.enter();
                crate::notify::start(crate::notify::Url::Secret {
                    client: client.clone(),
                    namespace: args.namespace.clone(),
                    name: name.clone(),
                })
            }
            None => crate::notify::Notifier::off(),
        };
        background.spawn(crate::controllers::rollout::run(
            client.clone(),
            state.reviews.judging(),
            workloads,
            changed.clone(),
            settings,
            leader.clone(),
            notifier,
        ));
        if let Some(interval) = args.audit_interval.0 {
            background.spawn(crate::controllers::audit::run(
                client.clone(),
                state.reviews.judging(),
                leader,
                interval,
                Some(changed),
                crate::controllers::audit::Reporting {
                    instance: crate::controllers::audit::Reporting::instance_of(
                        &args.namespace,
                        &args.lease_name,
                    ),
                    owners: owners.clone(),
                    formats: args.audit_reports.clone(),
                },
            ));
        }
    }
    if let (true, Some(client)) = (args.manage_webhooks, client) {
        let ca_file = args
            .webhook_ca_bundle
            .unwrap_or_else(|| options.tls_cert.with_file_name("ca.crt"));
        let mut webhook_options = crate::webhooks::Options {
            name: args.webhook_name,
            timeout_seconds: args.webhook_timeout_seconds,
            ..crate::webhooks::Options::for_service(&args.webhook_service, &args.webhook_namespace)
        };
        if let Some(url) = args.webhook_url {
            webhook_options.target = crate::webhooks::Target::Url(url);
        }
        let ready = {
            let state = state.clone();
            move || state.readiness()
        };
        tokio::spawn(crate::controllers::manage_webhooks::run(
            client,
            state.reviews.policies.clone(),
            ready,
            webhook_options,
            ca_file,
            owners.clone(),
        ));
    }
    let served = serve_with(options, state, registry, handle).await;
    // The next leader takes over at once, not a lease's duration later.
    if let Some(leader) = leadership {
        leader.release().await;
    }
    telemetry.shutdown().await;
    Ok(served?)
}

/// What `cluster_state` gives: the state, and with a live cluster its client and the signal
/// of configuration changes (for the rollout controller).
type ClusterParts = (
    Arc<dyn ClusterState>,
    Option<kube::Client>,
    Option<(
        Arc<crate::cluster::changes::ConfigChanges>,
        Arc<crate::cluster::workloads::Index>,
        Guarded,
    )>,
);

/// The caches whose objects the config guard marks while they are read.
type Guarded = Vec<(
    crate::workload::Source,
    Arc<crate::cluster::cache::Cache<crate::cluster::ConfigData>>,
)>;

/// The cluster state, and the client when there is a live cluster.
async fn cluster_state(args: &ServeArgs) -> anyhow::Result<ClusterParts> {
    if !args.cluster_state.is_empty() {
        return Ok((
            Arc::new(StaticState::load(&args.cluster_state)?),
            None,
            None,
        ));
    }
    let live = |client: kube::Client| -> ClusterParts {
        let key = crate::cluster::checksum_key::KeySecret {
            namespace: args.namespace.clone(),
            name: args.checksum_key_secret.clone(),
            create: true,
            owners: args.owners(),
        };
        let state = LiveState::start(client.clone(), args.secrets, key, true);
        let mut guarded: Guarded =
            vec![(crate::workload::Source::ConfigMap, state.config_map_cache())];
        if args.protect_secrets
            && let Some(secrets) = state.secret_cache()
        {
            guarded.push((crate::workload::Source::Secret, secrets));
        }
        let rollout = state
            .workloads()
            .map(|w| (state.config_changes(), w, guarded));
        (state, Some(client), rollout)
    };
    match args.cluster {
        ClusterMode::None => Ok((Arc::new(Standalone), None, None)),
        ClusterMode::Required => {
            let client = client()
                .await
                .context("--cluster required: cannot configure a Kubernetes client")?;
            Ok(live(client))
        }
        ClusterMode::Auto => {
            if !cluster_configured() {
                tracing::warn!(
                    "no in-cluster config and no kubeconfig: running standalone; references to ConfigMaps, Secrets and LimitRanges are not checked"
                );
                return Ok((Arc::new(Standalone), None, None));
            }
            match client().await {
                Ok(client) => Ok(live(client)),
                Err(error) => {
                    tracing::warn!(%error, "cannot configure a Kubernetes client: running standalone");
                    Ok((Arc::new(Standalone), None, None))
                }
            }
        }
    }
}

/// The client for the in-cluster config or the kubeconfig, with a short connect timeout: kube's
/// default (30 s) would leave the watch caches quiet, not failing, for that long when the API
/// server's address stops answering, and their staleness would go unreported in between
/// (`cluster::cache::RECOVERED_AFTER`).
async fn client() -> Result<kube::Client, kube::Error> {
    let config = config().await?;
    // Never silently: a kubeconfig left on a laptop may point at production.
    tracing::warn!(
        server = %config.cluster_url,
        "LIVE CLUSTER: reading ConfigMaps, Namespaces, LimitRanges and ResourceQuotas (and Secrets by --secrets) from {}; pass --cluster none to run standalone",
        config.cluster_url
    );
    kube::Client::try_from(config)
}

/// The in-cluster config or the kubeconfig, with the short connect timeout.
async fn config() -> Result<kube::Config, kube::Error> {
    let mut config = kube::Config::infer()
        .await
        .map_err(kube::Error::InferConfig)?;
    config.connect_timeout = Some(Duration::from_secs(4));
    Ok(config)
}

/// A client whose connections live on the controllers' runtime (`background`), so that their
/// I/O and the work it wakes run there too; the webhook's client is used when it cannot be
/// made.
async fn background_client(
    background: &tokio::runtime::Handle,
    fallback: &kube::Client,
) -> kube::Client {
    match config().await {
        Ok(config) => {
            let _on = background.enter();
            kube::Client::try_from(config).unwrap_or_else(|error| {
                tracing::warn!(%error, "the controllers share the webhook's client");
                fallback.clone()
            })
        }
        Err(error) => {
            tracing::warn!(%error, "the controllers share the webhook's client");
            fallback.clone()
        }
    }
}

/// In a Pod, or with a kubeconfig in `KUBECONFIG` or `~/.kube/config`.
fn cluster_configured() -> bool {
    let in_cluster = std::env::var_os("KUBERNETES_SERVICE_HOST").is_some();
    let kubeconfig = std::env::var_os("KUBECONFIG").is_some_and(|v| !v.is_empty());
    let home_config = std::env::var_os("HOME")
        .map(|h| PathBuf::from(h).join(".kube/config"))
        .is_some_and(|p| p.exists());
    in_cluster || kubeconfig || home_config
}

/// A duration flag: a number with `s`, `m` or `h`, or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interval(pub Option<Duration>);

impl std::str::FromStr for Interval {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "off" {
            return Ok(Self(None));
        }
        let (number, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
        let n: u64 = number.parse().map_err(|_| {
            format!("{s:?}: expected a number with s, m or h (30s, 10m, 1h), or off")
        })?;
        let seconds = match unit {
            "s" => n,
            "m" => n * 60,
            "h" => n * 3600,
            _ => return Err(format!("{s:?}: the unit must be s, m or h (30s, 10m, 1h)")),
        };
        if seconds == 0 {
            return Err(format!("{s:?}: must be more than 0 (or off)"));
        }
        Ok(Self(Some(Duration::from_secs(seconds))))
    }
}

impl ServeArgs {
    /// The owners of what confgate creates (`--owner-cluster-role`, `--owner-service-account`).
    fn owners(&self) -> crate::owners::Owners {
        crate::owners::Owners {
            cluster_role: self.owner_cluster_role.clone(),
            service_account: self
                .owner_service_account
                .as_ref()
                .map(|name| (self.namespace.clone(), name.clone())),
        }
    }
}

/// What a certificate made for `--tls-secret` certifies: the Service's names in confgate's
/// namespace, and each `--tls-san` as an IP address when it parses as one, else a DNS name.
fn tls_request(args: &ServeArgs) -> anyhow::Result<crate::certs::CertRequest> {
    let mut request = crate::certs::CertRequest {
        service: args.webhook_service.clone(),
        namespace: args.namespace.clone(),
        dns: Vec::new(),
        ips: Vec::new(),
        days: crate::controllers::tls_secret::VALID_DAYS,
    };
    for san in &args.tls_sans {
        match san.parse::<std::net::IpAddr>() {
            Ok(ip) => request.ips.push(ip),
            Err(_) if !san.is_empty() => request.dns.push(san.clone()),
            Err(_) => anyhow::bail!("--tls-san: an empty name"),
        }
    }
    Ok(request)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn serve(args: &[&str]) -> ServeArgs {
        let cli = crate::cli::Cli::try_parse_from(
            ["confgate", "serve"].iter().chain(args.iter()).copied(),
        )
        .unwrap();
        match cli.command {
            crate::cli::Command::Serve(args) => *args,
            _ => unreachable!(),
        }
    }

    #[test]
    fn tls_sans_are_ip_addresses_or_dns_names() {
        let args = serve(&[
            "--tls-secret=tls",
            "--tls-san=127.0.0.1",
            "--tls-san=confgate.example.com",
            "--tls-san=::1",
            "--webhook-service=hook",
            "--namespace=ops",
        ]);
        let request = tls_request(&args).unwrap();
        assert_eq!(request.service, "hook");
        assert_eq!(request.namespace, "ops");
        assert_eq!(request.dns, ["confgate.example.com"]);
        assert_eq!(
            request.ips,
            [
                "127.0.0.1".parse::<std::net::IpAddr>().unwrap(),
                "::1".parse().unwrap()
            ]
        );
        assert!(tls_request(&serve(&["--tls-san="])).is_err());
    }

    #[test]
    fn owners_are_named_only_when_asked() {
        let none = serve(&[]).owners();
        assert!(none.cluster_role.is_none() && none.service_account.is_none());
        let both = serve(&[
            "--owner-cluster-role=cg-cluster-state",
            "--owner-service-account=cg",
            "--namespace=ops",
        ])
        .owners();
        assert_eq!(both.cluster_role.as_deref(), Some("cg-cluster-state"));
        assert_eq!(
            both.service_account,
            Some(("ops".to_owned(), "cg".to_owned()))
        );
    }
}
