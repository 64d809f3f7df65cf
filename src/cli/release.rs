//! `confgate release`: takes the config guard's marks off, for uninstalling. It annotates the
//! installation's rollout Lease `confgate.dev/protection: released`, so its running replicas
//! stop marking (they check every 5 s), waits for that, then removes the installation's
//! finalizer (`--all`: every `confgate.dev/in-use*` finalizer) from every ConfigMap and, when
//! it may list them, Secret. The Helm chart runs it as a pre-delete hook; with kustomize run it
//! before `kubectl delete -k` (`kubectl -n confgate-system exec deploy/confgate --
//! /usr/local/bin/confgate release`). Exit code 0 when every mark is gone, 1 when some could
//! not be removed, 2 when it could not run.

use crate::cluster::IN_USE_PREFIX;
use crate::workload::Source;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, ListParams, ObjectMeta, PostParams};
use kube::{Client, Resource};
use serde::de::DeserializeOwned;
use std::process::ExitCode;
use std::time::Duration;

/// `confgate release` arguments.
#[derive(Debug, clap::Args)]
pub struct ReleaseArgs {
    /// The installation's namespace (where its rollout Lease is).
    #[arg(long, env = "POD_NAMESPACE", default_value = "confgate-system")]
    pub namespace: String,
    /// The installation's rollout Lease.
    #[arg(long, default_value = "confgate-rollout")]
    pub lease_name: String,
    /// Remove every confgate.dev/in-use* finalizer, whatever installation set it.
    #[arg(long)]
    pub all: bool,
    /// How long to wait for the running replicas to stop marking, in seconds.
    #[arg(long, default_value_t = 7)]
    pub wait_seconds: u64,
}

/// Runs it; prints what it removed.
pub fn run(args: ReleaseArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("confgate release: cannot start the runtime: {error}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(release(&args)) {
        Ok(0) => ExitCode::SUCCESS,
        Ok(_) => ExitCode::from(1),
        Err(message) => {
            eprintln!("confgate release: {message}");
            ExitCode::from(2)
        }
    }
}

/// Releases; the number of marks that could not be removed.
async fn release(args: &ReleaseArgs) -> Result<usize, String> {
    let client = Client::try_default()
        .await
        .map_err(|e| format!("cannot configure a Kubernetes client: {e}"))?;
    let instance =
        crate::controllers::audit::Reporting::instance_of(&args.namespace, &args.lease_name);
    let finalizer = crate::controllers::protection::finalizer(&instance);
    if stop_marking(&client, args).await? {
        println!(
            "lease {}/{} annotated {}: released; waiting {}s for the replicas to stop marking",
            args.namespace,
            args.lease_name,
            crate::controllers::protection::RELEASED,
            args.wait_seconds
        );
        tokio::time::sleep(Duration::from_secs(args.wait_seconds)).await;
    }
    let ours = |f: &str| {
        if args.all {
            f.starts_with(IN_USE_PREFIX)
        } else {
            f == finalizer
        }
    };
    let mut failed = 0;
    for source in [Source::ConfigMap, Source::Secret] {
        let (removed, errors) = match source {
            Source::ConfigMap => unmark_all::<ConfigMap>(&client, source, &ours).await,
            Source::Secret => unmark_all::<Secret>(&client, source, &ours).await,
        }?;
        println!("{}: {removed} released", source.as_str());
        failed += errors;
    }
    Ok(failed)
}

/// Annotates the Lease; `false` when there is none (no replica leads: nothing marks).
async fn stop_marking(client: &Client, args: &ReleaseArgs) -> Result<bool, String> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), &args.namespace);
    for _ in 0..5 {
        let Some(mut lease) = leases
            .get_opt(&args.lease_name)
            .await
            .map_err(|e| format!("cannot read lease {}: {e}", args.lease_name))?
        else {
            return Ok(false);
        };
        lease
            .metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(
                crate::controllers::protection::RELEASED.into(),
                "released".into(),
            );
        match leases
            .replace(&args.lease_name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => return Ok(true),
            // Renewed meanwhile: read it again.
            Err(kube::Error::Api(status)) if status.code == 409 => continue,
            Err(error) => {
                return Err(format!(
                    "cannot annotate lease {}: {error}",
                    args.lease_name
                ));
            }
        }
    }
    Err(format!("lease {} keeps changing", args.lease_name))
}

/// Removes the matching finalizers from every object of a kind; (removed, failed). A kind that
/// may not be listed (Secrets without `list`) is skipped: nothing of it was marked.
async fn unmark_all<K>(
    client: &Client,
    source: Source,
    ours: &impl Fn(&str) -> bool,
) -> Result<(usize, usize), String>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::all(client.clone());
    let mut params = ListParams::default().limit(500);
    let (mut removed, mut failed) = (0, 0);
    loop {
        let page = match api.list_metadata(&params).await {
            Ok(page) => page,
            Err(kube::Error::Api(status)) if status.code == 403 => return Ok((0, 0)),
            Err(error) => return Err(format!("cannot list {}: {error}", source.as_str())),
        };
        for object in &page.items {
            for finalizer in marks(&object.metadata, ours) {
                let key = (
                    object.metadata.namespace.clone().unwrap_or_default(),
                    object.metadata.name.clone().unwrap_or_default(),
                );
                let change = crate::controllers::protection::Change::Unmark;
                match crate::controllers::protection::patch(
                    client, source, &key, &finalizer, change,
                )
                .await
                {
                    Ok(()) => removed += 1,
                    Err(kube::Error::Api(status)) if status.code == 404 => {}
                    Err(error) => {
                        failed += 1;
                        eprintln!("{} {}/{}: {error}", source.as_str(), key.0, key.1);
                    }
                }
            }
        }
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => return Ok((removed, failed)),
        }
    }
}

fn marks(meta: &ObjectMeta, ours: &impl Fn(&str) -> bool) -> Vec<String> {
    meta.finalizers
        .iter()
        .flatten()
        .filter(|f| ours(f))
        .cloned()
        .collect()
}
