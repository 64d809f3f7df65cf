//! The policies in force, shared by everything that reads them (the review service, the
//! rollout controller, the audit, the webhook manager) and replaced whole by a reload, so a
//! reader finishes on the set it began with.

use super::PolicySet;
use arc_swap::ArcSwap;
use std::sync::Arc;

/// The policy set in force.
#[derive(Debug)]
pub struct PolicyStore(ArcSwap<PolicySet>);

/// What [`PolicyStore::replace`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replaced {
    /// The new set is the one in force already (same fingerprint): nothing changed.
    Unchanged,
    /// The new set is in force; these are its policy names.
    Replaced(Vec<String>),
    /// The new set was refused, and the old one stays: it would remove protection (see
    /// [`PolicySet::weakened_by`]), which only an explicit `--allow-policy-removal` permits.
    Refused(String),
}

impl PolicyStore {
    /// A store holding `set`.
    pub fn new(set: PolicySet) -> Self {
        Self(ArcSwap::from_pointee(set))
    }

    /// The set in force, for as long as the caller holds it.
    pub fn current(&self) -> Arc<PolicySet> {
        self.0.load_full()
    }

    /// Puts `next` in force unless it is the same set, or would weaken the current one and
    /// `allow_removal` is false.
    pub fn replace(&self, next: PolicySet, allow_removal: bool) -> Replaced {
        let current = self.0.load();
        if next.fingerprint == current.fingerprint {
            return Replaced::Unchanged;
        }
        if let Some(reason) = current.weakened_by(&next)
            && !allow_removal
        {
            return Replaced::Refused(reason);
        }
        let names = next.policies.iter().map(|p| p.name.clone()).collect();
        self.0.store(Arc::new(next));
        Replaced::Replaced(names)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Registry, load_str};

    fn set(yaml: &str) -> PolicySet {
        load_str("test.yaml", yaml, &Registry::builtin()).unwrap()
    }

    const DENYING: &str = "apiVersion: confgate.dev/v1alpha1\nkind: Policy\nmetadata: {name: keys}\nspec: {type: require-config-keys}\n";

    #[test]
    fn replaces_whole_refuses_weakening_and_ignores_the_same_set() {
        let store = PolicyStore::new(set(DENYING));
        let held = store.current();
        assert_eq!(store.replace(set(DENYING), false), Replaced::Unchanged);
        let empty = set("");
        assert!(matches!(
            store.replace(set(""), false),
            Replaced::Refused(_)
        ));
        assert_eq!(store.current().policies.len(), 1);
        assert_eq!(store.replace(empty, true), Replaced::Replaced(Vec::new()));
        assert!(store.current().policies.is_empty());
        // A reader keeps the set it began with.
        assert_eq!(held.policies[0].name, "keys");
    }
}
