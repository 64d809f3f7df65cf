//! Owners for the objects confgate creates at run time, so that uninstalling confgate (`helm
//! uninstall`, `kubectl delete -k`) leaves none of them behind: the garbage collector deletes an
//! object once every owner it names is gone.
//!
//! - Cluster-scoped objects and objects in other namespaces (the webhook configurations, the
//!   PolicyReports) are owned by one of confgate's ClusterRoles (`--owner-cluster-role`).
//! - Objects in confgate's own namespace (the checksum key Secret, the self-signed TLS Secret,
//!   the rollout Lease) are owned by its ServiceAccount (`--owner-service-account`).
//!
//! [`own_secret`] and [`create_once`] make the Secrets confgate keeps for itself.
//!
//! An owner is named, not known by UID until asked: the UID is read from the API (RBAC: `get`
//! on that one ClusterRole and that one ServiceAccount) when an object is written.

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::ClusterRole;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::{Client, Resource, ResourceExt};
use std::collections::BTreeMap;

/// Which objects own what confgate creates; `None` leaves that kind of object unowned.
#[derive(Debug, Clone, Default)]
pub struct Owners {
    /// The ClusterRole that owns cluster-scoped objects and objects in other namespaces.
    pub cluster_role: Option<String>,
    /// The ServiceAccount (in confgate's namespace) that owns objects in that namespace.
    pub service_account: Option<(String, String)>,
}

/// Why an owner could not be named.
#[derive(Debug, thiserror::Error)]
pub enum OwnerError {
    /// The owner could not be read (missing, or no `get` permission).
    #[error("cannot read owner {kind} {name}: {source}")]
    Read {
        /// `ClusterRole` or `ServiceAccount`.
        kind: String,
        /// Its name.
        name: String,
        /// What the API server said.
        #[source]
        source: kube::Error,
    },
}

impl Owners {
    /// The owner reference for cluster-scoped objects, when one is configured.
    pub async fn cluster_scoped(
        &self,
        client: &Client,
    ) -> Result<Option<OwnerReference>, OwnerError> {
        let Some(name) = &self.cluster_role else {
            return Ok(None);
        };
        let api: Api<ClusterRole> = Api::all(client.clone());
        read(&api, name).await.map(Some)
    }

    /// The owner reference for objects in confgate's namespace, when one is configured.
    pub async fn namespaced(&self, client: &Client) -> Result<Option<OwnerReference>, OwnerError> {
        let Some((namespace, name)) = &self.service_account else {
            return Ok(None);
        };
        let api: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
        read(&api, name).await.map(Some)
    }
}

/// Reads `name` and names it as an owner: not a controller, and not blocking the owner's
/// deletion (which would need the `finalizers` permission on it).
async fn read<K>(api: &Api<K>, name: &str) -> Result<OwnerReference, OwnerError>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let object = api.get(name).await.map_err(|source| OwnerError::Read {
        kind: K::kind(&()).into_owned(),
        name: name.to_owned(),
        source,
    })?;
    Ok(OwnerReference {
        api_version: K::api_version(&()).into_owned(),
        kind: K::kind(&()).into_owned(),
        name: object.name_any(),
        uid: object.uid().unwrap_or_default(),
        controller: None,
        block_owner_deletion: None,
    })
}

/// A Secret confgate makes for itself in its namespace: labelled as confgate's, saying what it is
/// for (and what deleting it does), owned by `owner`.
pub fn own_secret(
    name: &str,
    purpose: &str,
    type_: &str,
    data: impl IntoIterator<Item = (&'static str, Vec<u8>)>,
    owner: Option<OwnerReference>,
) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/managed-by".to_owned(),
                "confgate".to_owned(),
            )])),
            annotations: Some(BTreeMap::from([(
                "confgate.dev/purpose".to_owned(),
                purpose.to_owned(),
            )])),
            owner_references: owner.map(|o| vec![o]),
            ..Default::default()
        },
        type_: Some(type_.to_owned()),
        data: Some(
            data.into_iter()
                .map(|(k, v)| (k.to_owned(), ByteString(v)))
                .collect(),
        ),
        ..Default::default()
    }
}

/// Creates `secret` (field manager confgate); when another replica created it first, reads
/// theirs. Either way, the stored Secret.
pub async fn create_once(api: &Api<Secret>, secret: &Secret) -> Result<Secret, kube::Error> {
    let params = PostParams {
        field_manager: Some(crate::workload::FIELD_MANAGER.into()),
        ..Default::default()
    };
    match api.create(&params, secret).await {
        Err(kube::Error::Api(status)) if status.code == 409 => {
            api.get(secret.metadata.name.as_deref().unwrap_or_default())
                .await
        }
        other => other,
    }
}
