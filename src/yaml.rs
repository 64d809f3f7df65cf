//! YAML and JSON documents as [`serde_json::Value`]s: policy files, `--cluster-state` manifests and
//! `confgate review` input all go through here. serde-saphyr is already in kube's tree and is
//! panic-free on hostile input.

use serde_json::Value;

/// A text that is neither YAML nor JSON: the parser's message, with line and column.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SyntaxError(pub String);

/// Splits a YAML stream (JSON is YAML) into its documents; empty documents are dropped.
pub fn documents(text: &str) -> Result<Vec<Value>, SyntaxError> {
    let trimmed = text.trim_start();
    if trimmed.starts_with('{') || trimmed.starts_with('[') {
        // JSON: parsed by serde_json for exact numbers and better messages.
        if let Ok(value) = serde_json::from_str::<Value>(text) {
            return Ok(vec![value]);
        }
    }
    let docs: Vec<Value> =
        serde_saphyr::from_multiple(text).map_err(|e| SyntaxError(e.to_string()))?;
    Ok(docs.into_iter().filter(|d| !d.is_null()).collect())
}

/// Expands `kind: List` (as `kubectl get -o yaml` writes) into its items.
pub fn flatten_lists(docs: Vec<Value>) -> Vec<Value> {
    let mut out = Vec::with_capacity(docs.len());
    for doc in docs {
        let is_list = doc
            .get("kind")
            .and_then(Value::as_str)
            .is_some_and(|k| k == "List" || k.ends_with("List"))
            && doc.get("items").is_some_and(Value::is_array);
        match (is_list, doc) {
            (true, Value::Object(mut map)) => {
                if let Some(Value::Array(items)) = map.remove("items") {
                    out.extend(items);
                }
            }
            (_, doc) => out.push(doc),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_documents_and_drops_empty_ones() {
        let docs = documents("# only a comment\n---\na: 1\n---\n---\nb: [x]\n").unwrap();
        assert_eq!(
            docs,
            vec![serde_json::json!({"a": 1}), serde_json::json!({"b": ["x"]})]
        );
    }

    #[test]
    fn reads_json() {
        assert_eq!(
            documents(r#"{"a": 1.5}"#).unwrap(),
            vec![serde_json::json!({"a": 1.5})]
        );
    }

    #[test]
    fn reports_syntax_errors() {
        assert!(documents("a: [1, 2\n").is_err());
    }
}
