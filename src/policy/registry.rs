//! Policy types by name: `spec.type` → a factory that validates `spec.settings` and builds the
//! policy. Adding a policy type is one file under `src/policy/` and one line in [`Registry::builtin`].

use super::Policy;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Builds a policy from its `spec.settings` (`null` when absent).
pub type Factory = Arc<dyn Fn(Value) -> Result<Box<dyn Policy>, SettingsError> + Send + Sync>;

/// Invalid `spec.settings`: the field path below `spec.settings` and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", if path.is_empty() { "spec.settings".to_owned() } else { format!("spec.settings.{path}") })]
pub struct SettingsError {
    /// Path below `spec.settings`, e.g. `requiredKeys[0]`; empty for the settings as a whole.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl SettingsError {
    /// An error at `path` below `spec.settings`.
    pub fn at(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// Deserialises typed settings, reporting the failing field's path. `null` means "all defaults".
pub fn parse_settings<T: DeserializeOwned>(settings: Value) -> Result<T, SettingsError> {
    let settings = if settings.is_null() {
        Value::Object(Default::default())
    } else {
        settings
    };
    serde_path_to_error::deserialize(settings).map_err(|err| {
        let path = err.path().to_string();
        SettingsError {
            path: if path == "." { String::new() } else { path },
            message: err.into_inner().to_string(),
        }
    })
}

/// The known policy types.
#[derive(Clone, Default)]
pub struct Registry {
    types: BTreeMap<String, Factory>,
}

impl Registry {
    /// An empty registry (tests register their own types).
    pub fn empty() -> Self {
        Self::default()
    }

    /// The built-in policy types.
    pub fn builtin() -> Self {
        let mut registry = Self::empty();
        registry
            .register("require-config-keys", |s| {
                Ok(Box::new(
                    super::require_config_keys::RequireConfigKeys::from_settings(s)?,
                ))
            })
            .register("limitrange-defaults", |s| {
                Ok(Box::new(
                    super::limitrange_defaults::LimitRangeDefaults::from_settings(s)?,
                ))
            })
            .register("checksum-config", |s| {
                Ok(Box::new(
                    super::checksum_config::ChecksumConfig::from_settings(s)?,
                ))
            })
            .register("quota-fit", |s| {
                Ok(Box::new(super::quota_fit::QuotaFit::from_settings(s)?))
            })
            .register("protect-config-keys", |s| {
                Ok(Box::new(
                    super::protect_config_keys::ProtectConfigKeys::from_settings(s)?,
                ))
            });
        registry
    }

    /// Adds (or replaces) a policy type.
    pub fn register(
        &mut self,
        type_name: &str,
        factory: impl Fn(Value) -> Result<Box<dyn Policy>, SettingsError> + Send + Sync + 'static,
    ) -> &mut Self {
        self.types.insert(type_name.to_owned(), Arc::new(factory));
        self
    }

    /// The factory for a type.
    pub fn get(&self, type_name: &str) -> Option<&Factory> {
        self.types.get(type_name)
    }

    /// The names of all types, sorted.
    pub fn type_names(&self) -> impl Iterator<Item = &str> {
        self.types.keys().map(String::as_str)
    }
}
