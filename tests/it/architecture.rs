//! The module graph, read from `src/`: no import circles between modules (at the top level,
//! and between the modules of one wing, like `cluster::live` and `cluster::workloads`), and no
//! arrow from a lower layer to a higher one. `docs/architecture.md` describes the layers.
//!
//! An edge is a `crate::a::b` or `super::b` path in a module's code; comments and the
//! `#[cfg(test)]` modules at the end of a file do not count (tests may reach anything).

use crate::common::root;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The layers, lowest first. A module may use its own layer's modules and those of the layers
/// below, never those above.
const LAYERS: &[&[&str]] = &[
    &[
        "yaml",
        "quantity",
        "workload",
        "admission",
        "owners",
        "limitrange",
        "certs",
        "telemetry",
        "background",
    ],
    &["cluster"],
    &[
        "metrics", "policy", "engine", "events", "notify", "webhooks",
    ],
    &["controllers"],
    &["server"],
    &["cli"],
];

/// Module path (`cluster::live`) → its code without comments and test modules.
fn sources(dir: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(dir).unwrap().with_extension("");
            let mut parts: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if matches!(
                parts.last().map(String::as_str),
                Some("mod" | "lib" | "main")
            ) {
                parts.pop();
            }
            let text = std::fs::read_to_string(&path).unwrap();
            out.insert(parts.join("::"), code_of(&text));
        }
    }
    out
}

/// The code: line comments dropped, and everything from a `#[cfg(test)]` module on.
fn code_of(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = String::new();
    for (i, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("#[cfg(test)]")
            && lines.get(i + 1).is_some_and(|next| {
                let next = next.trim_start();
                next.starts_with("mod ")
                    || next.starts_with("pub mod ")
                    || next.starts_with("pub(crate) mod ")
            })
        {
            break;
        }
        if trimmed.starts_with("//") {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// The identifier path that starts at `text`'s beginning (`a::b::c`), or each item of a
/// `{a, b::c}` group.
fn paths_at(text: &str) -> Vec<Vec<String>> {
    if let Some(group) = text.strip_prefix('{') {
        let end = group.find('}').unwrap_or(group.len());
        return group[..end]
            .split(',')
            .map(|item| path_of(item.trim()))
            .filter(|p| !p.is_empty())
            .collect();
    }
    vec![path_of(text)]
}

fn path_of(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    loop {
        let len = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        if len == 0 {
            break;
        }
        out.push(rest[..len].to_owned());
        match rest[len..].strip_prefix("::") {
            Some(next) if next.starts_with(|c: char| c.is_ascii_lowercase()) => rest = next,
            _ => break,
        }
    }
    out
}

/// Which modules each module refers to (the longest existing module on each path).
fn edges(modules: &BTreeMap<String, String>) -> BTreeMap<String, BTreeSet<String>> {
    let known: BTreeSet<&str> = modules.keys().map(String::as_str).collect();
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (module, code) in modules {
        let parent: Vec<&str> = module.split("::").filter(|s| !s.is_empty()).collect();
        for (marker, base) in [
            ("crate::", Vec::new()),
            ("super::", parent[..parent.len().saturating_sub(1)].to_vec()),
        ] {
            let mut at = 0;
            while let Some(found) = code[at..].find(marker) {
                let start = at + found;
                at = start + marker.len();
                // `crate::` inside a longer identifier (`mycrate::`) is not a path.
                if code[..start]
                    .chars()
                    .last()
                    .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
                {
                    continue;
                }
                for path in paths_at(&code[at..]) {
                    let mut full: Vec<String> = base.iter().map(|s| s.to_string()).collect();
                    full.extend(path);
                    let target = (1..=full.len())
                        .rev()
                        .map(|n| full[..n].join("::"))
                        .find(|candidate| known.contains(candidate.as_str()));
                    if let Some(target) = target
                        && target != *module
                    {
                        out.entry(module.clone()).or_default().insert(target);
                    }
                }
            }
        }
    }
    out
}

/// The first `depth` segments of a module path.
fn unit(module: &str, depth: usize) -> String {
    module
        .split("::")
        .take(depth)
        .collect::<Vec<_>>()
        .join("::")
}

/// The strongly connected components of more than one node (Tarjan).
fn circles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct State<'a> {
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a str) {
        let i = s.index.len();
        s.index.insert(v, i);
        s.low.insert(v, i);
        s.stack.push(v);
        s.on.insert(v);
        if let Some(next) = s.graph.get(v) {
            for w in next {
                let w = w.as_str();
                if !s.index.contains_key(w) {
                    visit(s, w);
                    let low = s.low[v].min(s.low[w]);
                    s.low.insert(v, low);
                } else if s.on.contains(w) {
                    let low = s.low[v].min(s.index[w]);
                    s.low.insert(v, low);
                }
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on.remove(w);
                component.push(w.to_owned());
                if w == v {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                s.out.push(component);
            }
        }
    }
    let mut state = State {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        out: Vec::new(),
    };
    let nodes: BTreeSet<&str> = graph
        .iter()
        .flat_map(|(k, v)| std::iter::once(k.as_str()).chain(v.iter().map(String::as_str)))
        .collect();
    for v in nodes {
        if !state.index.contains_key(v) {
            visit(&mut state, v);
        }
    }
    state.out
}

/// Every problem of the graph: circles at both depths, and arrows that point up a layer.
fn problems(modules: &BTreeMap<String, String>) -> Vec<String> {
    let edges = edges(modules);
    let mut out = Vec::new();
    for depth in [1, 2] {
        let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (from, targets) in &edges {
            for to in targets {
                let (a, b) = (unit(from, depth), unit(to, depth));
                // At depth 2, only between modules of the same wing.
                if a != b && (depth == 1 || unit(from, 1) == unit(to, 1)) {
                    graph.entry(a).or_default().insert(b);
                }
            }
        }
        for circle in circles(&graph) {
            out.push(format!("import circle: {}", circle.join(" <-> ")));
        }
    }
    let layer = |m: &str| LAYERS.iter().position(|l| l.contains(&unit(m, 1).as_str()));
    for (from, targets) in &edges {
        for to in targets {
            match (layer(from), layer(to)) {
                (Some(a), Some(b)) if b > a => out.push(format!(
                    "{from} (layer {a}) uses {to} (layer {b}), a higher layer"
                )),
                (None, _) if !from.is_empty() && from != "main" => {
                    out.push(format!("{from} is in no layer (tests/it/architecture.rs)"))
                }
                _ => {}
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

#[test]
fn the_module_graph_has_no_circles_and_no_arrow_up_a_layer() {
    let modules = sources(&root().join("src"));
    assert!(modules.len() > 50, "{} modules read", modules.len());
    let found = problems(&modules);
    assert!(found.is_empty(), "{}", found.join("\n"));
}

#[test]
fn the_check_finds_a_circle_an_arrow_up_and_ignores_comments_and_tests() {
    let module = |text: &str| code_of(text);
    let mut modules = BTreeMap::from([
        (
            "cluster".to_owned(),
            module("pub mod live;\npub mod workloads;\n"),
        ),
        (
            "cluster::live".to_owned(),
            module("use super::workloads::Index;\n"),
        ),
        (
            "cluster::workloads".to_owned(),
            module("use crate::cluster::live::{Cache, watch_into};\n// crate::server::x\n"),
        ),
        ("server".to_owned(), module("use crate::cluster::live;\n")),
        (
            "workload".to_owned(),
            module("fn f() {}\n#[cfg(test)]\nmod tests {\n    use crate::server;\n}\n"),
        ),
    ]);
    assert_eq!(
        problems(&modules),
        vec!["import circle: cluster::live <-> cluster::workloads"]
    );
    modules.insert(
        "cluster::workloads".to_owned(),
        module("use crate::{server, workload::Source};\n"),
    );
    assert_eq!(
        problems(&modules),
        vec![
            "cluster::workloads (layer 1) uses server (layer 4), a higher layer",
            "import circle: cluster <-> server",
        ]
    );
}
