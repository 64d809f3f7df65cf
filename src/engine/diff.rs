//! The patch for one mutating call. Policies edit a working copy that leaves out
//! `metadata.managedFields` (webhooks must never touch it, and it is often the largest part of an
//! object), and the patch is the diff of everything else: the operations `json_patch::diff`
//! would give, computed in one walk that skips equal subtrees and builds a JSON Pointer only for
//! an operation it emits.

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, Patch, PatchOperation, RemoveOperation, ReplaceOperation};
use serde_json::{Map, Value};

const MANAGED_FIELDS: &str = "managedFields";

/// A copy of `object` for mutators, without `metadata.managedFields`.
pub fn working_copy(object: &Value) -> Value {
    let Value::Object(map) = object else {
        return object.clone();
    };
    let copy = map
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                if k == "metadata" {
                    without(v, MANAGED_FIELDS)
                } else {
                    v.clone()
                },
            )
        })
        .collect();
    Value::Object(copy)
}

fn without(value: &Value, skipped: &str) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(k, _)| *k != skipped)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// The JSON Patch from `original` to `mutated` (a [`working_copy`] edited by policies), never
/// touching `metadata.managedFields`.
///
/// The same operations as `json_patch::diff` (objects key by key, arrays index by index with
/// removals and additions at the tail), in one walk: equal leaves and equal array elements are
/// skipped with `==`, and a JSON Pointer is only built for an operation that is emitted.
pub fn patch(original: &Value, mutated: &Value) -> Patch {
    let mut diff = Diff {
        at: Vec::new(),
        ops: Vec::new(),
    };
    diff.value(original, mutated, Some(MANAGED_FIELDS));
    Patch(diff.ops)
}

/// One step of the path being walked.
enum Step<'a> {
    Key(&'a str),
    Index(usize),
}

struct Diff<'a> {
    at: Vec<Step<'a>>,
    ops: Vec<PatchOperation>,
}

impl<'a> Diff<'a> {
    /// `skip_in_metadata`: a key of the root's `metadata` object to leave alone.
    fn value(&mut self, before: &'a Value, after: &'a Value, skip_in_metadata: Option<&str>) {
        match (before, after) {
            (Value::Object(a), Value::Object(b)) => self.object(a, b, skip_in_metadata),
            (Value::Array(a), Value::Array(b)) => self.array(a, b),
            _ if before == after => {}
            _ => {
                let path = self.path(None);
                self.ops.push(PatchOperation::Replace(ReplaceOperation {
                    path,
                    value: after.clone(),
                }));
            }
        }
    }

    fn object(
        &mut self,
        a: &'a Map<String, Value>,
        b: &'a Map<String, Value>,
        skip_in_metadata: Option<&str>,
    ) {
        let skip = if self.at.len() == 1 && matches!(self.at[0], Step::Key("metadata")) {
            skip_in_metadata
        } else {
            None
        };
        for (key, old) in a {
            if Some(key.as_str()) == skip {
                continue;
            }
            match b.get(key) {
                None => {
                    let path = self.path(Some(Step::Key(key)));
                    self.ops
                        .push(PatchOperation::Remove(RemoveOperation { path }));
                }
                Some(new) if old == new => {}
                Some(new) => {
                    self.at.push(Step::Key(key));
                    self.value(old, new, skip_in_metadata);
                    self.at.pop();
                }
            }
        }
        for (key, value) in b {
            if !a.contains_key(key) && Some(key.as_str()) != skip {
                let path = self.path(Some(Step::Key(key)));
                self.ops.push(PatchOperation::Add(AddOperation {
                    path,
                    value: value.clone(),
                }));
            }
        }
    }

    fn array(&mut self, a: &'a [Value], b: &'a [Value]) {
        let common = a.len().min(b.len());
        for (index, (old, new)) in a.iter().zip(b).enumerate() {
            if old != new {
                self.at.push(Step::Index(index));
                self.value(old, new, None);
                self.at.pop();
            }
        }
        // Surplus elements go from the tail: each removal at `common` shifts the next one there.
        for _ in common..a.len() {
            let path = self.path(Some(Step::Index(common)));
            self.ops
                .push(PatchOperation::Remove(RemoveOperation { path }));
        }
        for (index, value) in b.iter().enumerate().skip(common) {
            let path = self.path(Some(Step::Index(index)));
            self.ops.push(PatchOperation::Add(AddOperation {
                path,
                value: value.clone(),
            }));
        }
    }

    /// The JSON Pointer of the current position, plus `last` when given.
    fn path(&self, last: Option<Step<'_>>) -> PointerBuf {
        let mut path = PointerBuf::new();
        for step in self.at.iter().chain(last.as_ref()) {
            match step {
                Step::Key(key) => path.push_back(*key),
                Step::Index(index) => path.push_back(*index),
            }
        }
        path
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn object() -> Value {
        json!({"metadata": {"name": "a", "managedFields": [{"manager": "kubectl"}], "labels": {"x": "1"}}, "spec": {"a": [1, 2], "b": "c"}, "status": {}})
    }

    #[test]
    fn working_copy_leaves_out_managed_fields_only() {
        let copy = working_copy(&object());
        assert_eq!(copy["metadata"], json!({"name": "a", "labels": {"x": "1"}}));
        assert_eq!(copy["spec"], object()["spec"]);
    }

    #[test]
    fn patch_equals_a_full_diff_and_never_mentions_managed_fields() {
        let original = object();
        let mut mutated = working_copy(&original);
        mutated["metadata"]["annotations"] = json!({"checksum/config": "x"});
        mutated["metadata"]["labels"]["x"] = json!("2");
        mutated["spec"]["a"][1] = json!(3);
        mutated["spec"].as_object_mut().unwrap().remove("b");
        mutated["extra"] = json!(true);
        let ops = patch(&original, &mutated);
        let text = serde_json::to_string(&ops).unwrap();
        assert!(!text.contains("managedFields"), "{text}");
        let mut applied = original.clone();
        json_patch::patch(&mut applied, &ops).unwrap();
        let mut expected = mutated.clone();
        expected["metadata"]["managedFields"] = original["metadata"]["managedFields"].clone();
        assert_eq!(applied, expected);
        assert!(patch(&original, &working_copy(&original)).0.is_empty());
    }

    #[test]
    fn arrays_diff_index_by_index_with_tail_removals_and_additions() {
        let before = json!({"a": [1, {"x": 1, "y": 2}, 3, 4, 5]});
        let shorter = json!({"a": [1, {"x": 1, "y": 3}, 9]});
        let ops = serde_json::to_value(patch(&before, &shorter)).unwrap();
        assert_eq!(
            ops,
            json!([
                {"op": "replace", "path": "/a/1/y", "value": 3},
                {"op": "replace", "path": "/a/2", "value": 9},
                {"op": "remove", "path": "/a/3"},
                {"op": "remove", "path": "/a/3"},
            ])
        );
        let longer = json!({"a": [1, {"x": 1, "y": 2}, 3, 4, 5, {"z": "~/"}]});
        let ops = serde_json::to_value(patch(&before, &longer)).unwrap();
        assert_eq!(
            ops,
            json!([{"op": "add", "path": "/a/5", "value": {"z": "~/"}}])
        );
        let keys = json!({"a/b": {"c~d": 1}});
        let ops = serde_json::to_value(patch(&keys, &json!({"a/b": {"c~d": 2}}))).unwrap();
        assert_eq!(
            ops,
            json!([{"op": "replace", "path": "/a~1b/c~0d", "value": 2}])
        );
    }

    use proptest::prelude::*;

    /// JSON values over a few keys, so two of them share structure often enough to exercise
    /// every branch (equal subtrees, changed leaves, type changes, longer and shorter arrays).
    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            (0i64..3).prop_map(Value::from),
            "[ab/~]{0,2}".prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 32, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map("[abm/~]|managedFields|metadata", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn applying_the_patch_gives_the_mutated_object(
            metadata in json_value(),
            before in json_value(),
            after in json_value(),
        ) {
            let mut original = json!({"metadata": metadata, "spec": before});
            if let Some(meta) = original["metadata"].as_object_mut() {
                meta.insert(MANAGED_FIELDS.into(), json!([{"manager": "m"}]));
            }
            let mut mutated = working_copy(&original);
            mutated["spec"] = after;
            let ops = patch(&original, &mutated);
            let mut applied = original.clone();
            json_patch::patch(&mut applied, &ops).unwrap();
            prop_assert_eq!(working_copy(&applied), mutated.clone());
            prop_assert_eq!(&applied["metadata"][MANAGED_FIELDS], &original["metadata"][MANAGED_FIELDS]);
            prop_assert!(patch(&applied, &working_copy(&applied)).0.is_empty());
            // Never larger than the general-purpose diff.
            prop_assert!(ops.0.len() <= json_patch::diff(&working_copy(&original), &mutated).0.len());
        }
    }
}
