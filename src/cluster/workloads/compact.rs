//! The text a [`super::Workload`] keeps of itself: [`Reduced`] in a compact line format,
//! a third of its JSON. 10,000 workloads with 23 references each kept 19 MB as JSON arrays;
//! object names are written once (references point into the workload's object list) and
//! container names once.
//!
//! Records end in `\x1e`, fields are separated by `\x1f`, a key list by `\x1d`:
//!
//! ```text
//! L␟key␟value                 a label
//! A␟key␟value                 a pod-template annotation
//! O␟key␟manager               a field manager (other than confgate) owning that annotation
//! M␟key␟value                 a workload annotation confgate reads (extra dependencies, ...)
//! P␟volume                    a volume some container mounts with subPath
//! C␟name␟list                 a container (list: initContainers, containers, ...)
//! R␟object␟keys␟optional␟site a reference: object index, `*` or keys, 0/1, and where:
//!                             e␟container␟var | f␟container␟prefix | v␟volume␟projected(0/1)
//! ```
//!
//! Names, keys, label values and env var names cannot hold control characters (the apiserver
//! validates them). Annotation values can: one that does (or is longer than
//! [`MAX_ANNOTATION`]) cannot be a checksum and is not kept. A workload whose other fields
//! hold one anyway (never seen from a real apiserver) is kept as JSON instead, so nothing is
//! ever kept wrong.

use crate::workload::{OwnedReference, Source};
use serde::{Deserialize, Serialize};

const FIELD: char = '\u{1f}';
const RECORD: char = '\u{1e}';
const KEYS: char = '\u{1d}';

/// Longer annotation values are not kept (a checksum is 64 characters).
pub const MAX_ANNOTATION: usize = 256;

/// What the checksum policy reads of a workload: its labels, its pod template's annotations
/// (and which of them another field manager owns), and the ConfigMap/Secret references of its
/// pod spec, never a value of the configuration itself.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Reduced {
    /// `metadata.labels`.
    pub labels: Vec<(String, String)>,
    /// The pod template's annotations (values up to [`MAX_ANNOTATION`] bytes).
    pub annotations: Vec<(String, String)>,
    /// For each annotation owned by other field managers, those managers.
    pub owners: Vec<(String, Vec<String>)>,
    /// The references, in [`crate::workload::references`] order.
    pub references: Vec<OwnedReference>,
    /// The workload's own annotations that confgate reads
    /// ([`crate::workload::READ_ANNOTATIONS`]).
    #[serde(default)]
    pub metadata: Vec<(String, String)>,
    /// The volumes mounted with `subPath` somewhere.
    #[serde(default)]
    pub sub_path: Vec<String>,
}

fn clean(s: &str) -> bool {
    !s.chars().any(char::is_control)
}

/// Encodes `reduced`, whose references name only `objects`.
pub fn encode(reduced: &Reduced, objects: &[(Source, Box<str>)]) -> Box<str> {
    compact(reduced, objects)
        .unwrap_or_else(|| serde_json::to_string(reduced).unwrap_or_default())
        .into_boxed_str()
}

fn compact(reduced: &Reduced, objects: &[(Source, Box<str>)]) -> Option<String> {
    let mut out = String::new();
    // Every field is checked, except a reference's key list (its keys were, one by one).
    let mut record = |fields: &[&str]| -> Option<()> {
        let checked = fields
            .iter()
            .enumerate()
            .all(|(i, f)| (fields[0] == "R" && i == 2) || clean(f));
        if !checked {
            return None;
        }
        out.push_str(&fields.join("\u{1f}"));
        out.push(RECORD);
        Some(())
    };
    for (k, v) in &reduced.labels {
        record(&["L", k, v])?;
    }
    for (k, v) in &reduced.annotations {
        record(&["A", k, v])?;
    }
    for (k, managers) in &reduced.owners {
        for m in managers {
            record(&["O", k, m])?;
        }
    }
    for (k, v) in &reduced.metadata {
        record(&["M", k, v])?;
    }
    for volume in &reduced.sub_path {
        record(&["P", volume])?;
    }
    let mut containers: Vec<(&str, &str)> = Vec::new();
    for r in &reduced.references {
        if let [site, name, list, _] = r.4.as_slice()
            && site != "volume"
            && !containers.contains(&(name.as_str(), list.as_str()))
        {
            containers.push((name, list));
            record(&["C", name, list])?;
        }
    }
    for r in &reduced.references {
        let object = objects
            .iter()
            .position(|(s, n)| *s == r.source() && **n == *r.1)?
            .to_string();
        let keys = match &r.2 {
            None => "*".to_owned(),
            Some(keys) if keys.iter().all(|k| clean(k) && k != "*") => keys.join(&KEYS.to_string()),
            Some(_) => return None,
        };
        let optional = if r.3 { "1" } else { "0" };
        match r.4.as_slice() {
            [site, name, list, detail] if site == "env" || site == "envFrom" => {
                let container = containers
                    .iter()
                    .position(|c| *c == (name.as_str(), list.as_str()))?
                    .to_string();
                let tag = if site == "env" { "e" } else { "f" };
                record(&["R", &object, &keys, optional, tag, &container, detail])?;
            }
            [site, volume, projected] if site == "volume" => {
                let projected = if projected == "projected" { "1" } else { "0" };
                record(&["R", &object, &keys, optional, "v", volume, projected])?;
            }
            _ => return None,
        }
    }
    Some(out)
}

/// Decodes what [`encode`] made of a workload with these `objects`.
pub fn decode(text: &str, objects: &[(Source, Box<str>)]) -> Reduced {
    if text.starts_with('{') {
        return serde_json::from_str(text).unwrap_or_default();
    }
    let mut reduced = Reduced::default();
    let mut containers: Vec<(&str, &str)> = Vec::new();
    for record in text.split(RECORD).filter(|r| !r.is_empty()) {
        let fields: Vec<&str> = record.split(FIELD).collect();
        match fields.as_slice() {
            ["L", k, v] => reduced.labels.push(((*k).into(), (*v).into())),
            ["A", k, v] => reduced.annotations.push(((*k).into(), (*v).into())),
            ["O", k, m] => match reduced.owners.iter_mut().find(|(key, _)| key == k) {
                Some((_, managers)) => managers.push((*m).into()),
                None => reduced.owners.push(((*k).into(), vec![(*m).into()])),
            },
            ["C", name, list] => containers.push((name, list)),
            ["M", k, v] => reduced.metadata.push(((*k).into(), (*v).into())),
            ["P", volume] => reduced.sub_path.push((*volume).into()),
            ["R", object, keys, optional, rest @ ..] => {
                let Some((source, name)) =
                    object.parse::<usize>().ok().and_then(|i| objects.get(i))
                else {
                    continue;
                };
                let site: Vec<String> = match rest {
                    [tag @ ("e" | "f"), container, detail] => {
                        let Some((container, list)) = container
                            .parse::<usize>()
                            .ok()
                            .and_then(|i| containers.get(i))
                        else {
                            continue;
                        };
                        let site = if *tag == "e" { "env" } else { "envFrom" };
                        vec![
                            site.into(),
                            (*container).into(),
                            (*list).into(),
                            (*detail).into(),
                        ]
                    }
                    ["v", volume, projected] => vec![
                        "volume".into(),
                        (*volume).into(),
                        if *projected == "1" { "projected" } else { "" }.into(),
                    ],
                    _ => continue,
                };
                reduced.references.push(OwnedReference(
                    source.as_str().into(),
                    name.to_string(),
                    (*keys != "*").then(|| keys.split(KEYS).map(str::to_owned).collect()),
                    *optional == "1",
                    site,
                ));
            }
            _ => {}
        }
    }
    reduced
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(source: &str, name: &str, keys: Option<&[&str]>, site: &[&str]) -> OwnedReference {
        OwnedReference(
            source.into(),
            name.into(),
            keys.map(|k| k.iter().map(|s| (*s).to_owned()).collect()),
            name.ends_with("-opt"),
            site.iter().map(|s| (*s).to_owned()).collect(),
        )
    }

    fn sample() -> (Reduced, Vec<(Source, Box<str>)>) {
        let reduced = Reduced {
            labels: vec![("app".into(), "web".into())],
            annotations: vec![("checksum/config".into(), "abc".into())],
            owners: vec![(
                "checksum/config".into(),
                vec!["helm".into(), "argocd".into()],
            )],
            references: vec![
                reference(
                    "configmap",
                    "cfg",
                    Some(&["A"]),
                    &["env", "web", "containers", "A"],
                ),
                reference(
                    "secret",
                    "s-opt",
                    None,
                    &["envFrom", "proxy", "initContainers", "P_"],
                ),
                reference(
                    "configmap",
                    "cfg",
                    Some(&["a.yaml", "b"]),
                    &["volume", "c", ""],
                ),
                reference(
                    "secret",
                    "s-opt",
                    Some(&["ca"]),
                    &["volume", "p", "projected"],
                ),
                reference(
                    "configmap",
                    "cfg",
                    None,
                    &["envFrom", "web", "containers", ""],
                ),
            ],
            metadata: vec![("confgate.dev/extra-configmaps".into(), "flags".into())],
            sub_path: vec!["c".into()],
        };
        let objects = vec![
            (Source::ConfigMap, "cfg".into()),
            (Source::Secret, "s-opt".into()),
        ];
        (reduced, objects)
    }

    #[test]
    fn round_trips_compactly() {
        let (reduced, objects) = sample();
        let text = encode(&reduced, &objects);
        assert!(!text.starts_with('{'));
        assert!(
            text.len() * 2 < serde_json::to_string(&reduced).unwrap().len(),
            "{text:?}"
        );
        assert_eq!(decode(&text, &objects), reduced);
    }

    #[test]
    fn falls_back_to_json_rather_than_keep_anything_wrong() {
        let (mut reduced, objects) = sample();
        reduced.labels.push(("odd".into(), "a\u{1f}b".into()));
        let text = encode(&reduced, &objects);
        assert!(text.starts_with('{'));
        assert_eq!(decode(&text, &objects), reduced);
    }
}
