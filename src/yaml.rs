//! YAML and JSON documents as [`serde_json::Value`]s: policy files, `--cluster-state` manifests and
//! `confgate review` input all go through here. serde-saphyr is already in kube's tree and is
//! panic-free on hostile input.

use serde_json::Value;

/// A text that is neither YAML nor JSON: the parser's message, with line and column.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SyntaxError(pub String);

/// Splits a YAML stream (JSON is YAML) into its documents; empty documents are dropped.
///
/// Each document is parsed on its own, so the parser's resource budget (serde-saphyr's default:
/// 250,000 nodes, far above the largest object the apiserver stores) applies per document, not
/// per stream: a rendered stream of thousands of objects and tens of MB reads like the same
/// files in a directory. An error names the document and the line it starts on.
pub fn documents(text: &str) -> Result<Vec<Value>, SyntaxError> {
    let trimmed = text.trim_start();
    if trimmed.starts_with('{') || trimmed.starts_with('[') {
        // JSON: parsed by serde_json for exact numbers and better messages.
        if let Ok(value) = serde_json::from_str::<Value>(text) {
            return Ok(vec![value]);
        }
    }
    let chunks = split(text);
    let several = chunks.len() > 1;
    let mut out = Vec::new();
    for (i, (line, chunk)) in chunks.into_iter().enumerate() {
        let docs: Vec<Value> = serde_saphyr::from_multiple(chunk).map_err(|e| {
            let mut message = e.to_string();
            if message.contains("budget") {
                message.push_str(
                    "; one document this large is beyond any object the apiserver stores (split it into several documents)",
                );
            }
            if several {
                SyntaxError(format!("document {} (from line {line}): {message}", i + 1))
            } else {
                SyntaxError(message)
            }
        })?;
        out.extend(docs.into_iter().filter(|d| !d.is_null()));
    }
    Ok(out)
}

/// The stream cut at its document start markers (`---` at the start of a line, alone or
/// followed by a space): each part with the 1-based line it starts on. A marker at column 0 can
/// only be a marker: YAML forbids it inside scalars, and block content is indented.
fn split(text: &str) -> Vec<(usize, &str)> {
    let mut parts = Vec::new();
    let mut start = 0;
    let mut start_line = 1;
    let mut offset = 0;
    for (n, line) in text.split_inclusive('\n').enumerate() {
        let bare = line.trim_end_matches(['\n', '\r']);
        let marker = bare == "---" || bare.starts_with("--- ") || bare.starts_with("---\t");
        if marker && offset > start {
            parts.push((start_line, &text[start..offset]));
            start = offset;
            start_line = n + 1;
        }
        offset += line.len();
    }
    parts.push((start_line, &text[start..]));
    parts
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
    fn a_stream_is_cut_at_its_markers_only() {
        let text = "a: 1\n---\nb: |\n  ---\n  x\n--- # next\nc: [1]\n";
        assert_eq!(
            split(text),
            vec![
                (1, "a: 1\n"),
                (2, "---\nb: |\n  ---\n  x\n"),
                (6, "--- # next\nc: [1]\n")
            ]
        );
        assert_eq!(
            documents(text).unwrap(),
            vec![
                serde_json::json!({"a": 1}),
                serde_json::json!({"b": "---\nx\n"}),
                serde_json::json!({"c": [1]})
            ]
        );
    }

    #[test]
    fn the_budget_is_per_document_so_long_streams_read() {
        // 3,000 documents of 100 nodes each: 300,000 nodes, over the per-stream budget the
        // parser would apply to the stream as a whole.
        let doc: String = (0..50).map(|i| format!("k{i}: v{i}\n")).collect();
        let text = vec![doc; 3000].join("---\n");
        assert_eq!(documents(&text).unwrap().len(), 3000);
    }

    #[test]
    fn an_error_names_the_document_and_its_first_line() {
        let error = documents("a: 1\n---\nb: [1, 2\n").unwrap_err();
        assert!(error.0.starts_with("document 2 (from line 2): "), "{error}");
    }

    #[test]
    fn reports_syntax_errors() {
        assert!(documents("a: [1, 2\n").is_err());
    }
}
