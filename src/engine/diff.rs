//! The patch for one mutating call. Policies edit a working copy that leaves out
//! `metadata.managedFields` (webhooks must never touch it, and it is often the largest part of an
//! object), and the patch is `json_patch::diff` over everything else, key by key. Both the copy
//! and the diff get about twice as cheap on typical objects, and the patch is the same.

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, Patch, PatchOperation, RemoveOperation};
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
pub fn patch(original: &Value, mutated: &Value) -> Patch {
    let mut ops = Vec::new();
    diff_maps(original, mutated, &PointerBuf::new(), None, &mut ops);
    Patch(ops)
}

/// Diffs two values below `at`: equal subtrees are skipped with a deep `==` (far cheaper than
/// diffing them), objects are walked key by key (skipping `skip`), anything else goes to
/// `json_patch::diff`.
fn diff_maps(
    before: &Value,
    after: &Value,
    at: &PointerBuf,
    skip: Option<&str>,
    ops: &mut Vec<PatchOperation>,
) {
    let (Value::Object(a), Value::Object(b)) = (before, after) else {
        if before != after {
            prefixed(json_patch::diff(before, after), at, ops);
        }
        return;
    };
    for (key, old) in a.iter().filter(|(k, _)| Some(k.as_str()) != skip) {
        let path = child(at, key);
        match b.get(key) {
            None => ops.push(PatchOperation::Remove(RemoveOperation { path })),
            Some(new) if old == new => {}
            Some(new) if at.is_root() && key == "metadata" => {
                diff_maps(old, new, &path, Some(MANAGED_FIELDS), ops)
            }
            Some(new) => diff_maps(old, new, &path, None, ops),
        }
    }
    add_new_keys(a, b, at, ops);
}

fn add_new_keys(
    a: &Map<String, Value>,
    b: &Map<String, Value>,
    at: &PointerBuf,
    ops: &mut Vec<PatchOperation>,
) {
    for (key, value) in b.iter().filter(|(k, _)| !a.contains_key(*k)) {
        ops.push(PatchOperation::Add(AddOperation {
            path: child(at, key),
            value: value.clone(),
        }));
    }
}

fn child(at: &PointerBuf, key: &str) -> PointerBuf {
    let mut path = at.clone();
    path.push_back(key);
    path
}

fn prefixed(patch: Patch, at: &PointerBuf, ops: &mut Vec<PatchOperation>) {
    for mut op in patch.0 {
        let path = match &mut op {
            PatchOperation::Add(o) => &mut o.path,
            PatchOperation::Remove(o) => &mut o.path,
            PatchOperation::Replace(o) => &mut o.path,
            PatchOperation::Move(o) => &mut o.path,
            PatchOperation::Copy(o) => &mut o.path,
            PatchOperation::Test(o) => &mut o.path,
        };
        *path = at.concat(path);
        if let PatchOperation::Move(o) = &mut op {
            o.from = at.concat(&o.from);
        }
        if let PatchOperation::Copy(o) = &mut op {
            o.from = at.concat(&o.from);
        }
        ops.push(op);
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
}
