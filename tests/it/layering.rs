//! The layering of docs/ARCHITECTURE.md ("Layers"): base types (including `actor`, the
//! request helper every service handle shares, and `config_value`, the checks every config
//! section shares) depend on nothing of the crate, metrics only on `config_value`; p2p on
//! neither the services, the config aggregate, http nor node; services on p2p and lower
//! services; http, config and node on anything. And the module graph has no cycle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The top-level module a source file belongs to (`src/p2p/event_loop.rs` -> `p2p`).
fn module_of(path: &Path, src: &Path) -> String {
    let rel = path.strip_prefix(src).unwrap();
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy();
    first.trim_end_matches(".rs").to_owned()
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The crate modules each top-level module imports (`crate::x` anywhere in its files).
fn imports() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let module = module_of(&file, &src);
        if module == "main" || module == "lib" {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        let deps = graph.entry(module.clone()).or_default();
        for (i, _) in text.match_indices("crate::") {
            let rest = &text[i + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() && name != module {
                deps.insert(name);
            }
        }
    }
    graph
}

/// What each module may import (`None`: anything). A module not listed fails the test until
/// it gets a row.
fn allowed(module: &str) -> Option<&'static [&'static str]> {
    Some(match module {
        "content_id" | "health" | "config_value" | "actor" => &[],
        "identity" | "clock" | "ledger" => &[],
        "metrics" => &["config_value"],
        "p2p" => &["config_value", "content_id", "metrics"],
        "content" => &["actor", "config_value", "content_id", "metrics", "p2p"],
        "payments" => &["actor", "clock", "config_value", "ledger", "metrics", "p2p"],
        "market" => &[
            "actor",
            "clock",
            "config_value",
            "content",
            "content_id",
            "ledger",
            "metrics",
            "p2p",
            "payments",
        ],
        "http" | "config" | "node" | "client" => return None,
        other => panic!("module `{other}` has no place in the layering; add it to this test"),
    })
}

#[test]
fn every_module_imports_only_the_layers_below_it() {
    let graph = imports();
    assert!(
        graph.contains_key("p2p") && graph.contains_key("content"),
        "{graph:?}"
    );
    let mut broken = Vec::new();
    for (module, deps) in &graph {
        let Some(allowed) = allowed(module) else {
            continue;
        };
        for dep in deps {
            if !allowed.contains(&dep.as_str()) {
                broken.push(format!("{module} imports crate::{dep}"));
            }
        }
    }
    assert!(broken.is_empty(), "layering broken: {broken:?}");
}

#[test]
fn the_module_graph_has_no_cycle() {
    let graph = imports();
    // Depth-first search for a back edge.
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(pos) = stack.iter().position(|n| n == node) {
            let mut cycle = stack[pos..].to_vec();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        stack.push(node.to_owned());
        for dep in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(dep, graph, stack, done) {
                return Some(cycle);
            }
        }
        stack.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        let cycle = visit(node, &graph, &mut Vec::new(), &mut done);
        assert!(
            cycle.is_none(),
            "import cycle: {}",
            cycle.unwrap().join(" -> ")
        );
    }
}
