//! The server crate's modules depend on each other without a cycle, at both
//! levels: read every source file, collect the `crate::<module>` paths each
//! top-level module names and the sibling paths (`super::x`,
//! `crate::<module>::x`) each submodule names, and look for a cycle in
//! either graph.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::Path,
};

/// Top-level module of each item the crate root re-exports (`pub use`).
const ROOT_REEXPORTS: [(&str, &str); 2] = [("Server", "server"), ("Limits", "limits")];

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The first path segment of every `crate::` path in `source`, including
/// each item of a `crate::{a::x, b}` group.
fn crate_references(source: &str) -> BTreeSet<String> {
    references(source, "crate::")
}

/// The first path segment after every `prefix` in `source`, including each
/// item of a `prefix{a::x, b}` group.
fn references(source: &str, prefix: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for (at, _) in source.match_indices(prefix) {
        let rest = &source[at + prefix.len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0;
            let mut item_start = true;
            let mut word = String::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        if !word.is_empty() {
                            found.insert(std::mem::take(&mut word));
                        }
                        break;
                    }
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    c if c.is_alphanumeric() || c == '_' => {
                        if item_start {
                            word.push(c);
                        }
                    }
                    _ => {
                        if !word.is_empty() {
                            found.insert(std::mem::take(&mut word));
                        }
                        if !c.is_whitespace() {
                            item_start = false;
                        }
                    }
                }
            }
        } else {
            let word: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            found.insert(word);
        }
    }
    found
}

fn module_graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let reexports: BTreeMap<&str, &str> = ROOT_REEXPORTS.into_iter().collect();
    let mut graph = BTreeMap::<String, BTreeSet<String>>::new();
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    for file in files {
        let relative = file.strip_prefix(&src).unwrap();
        let first = relative.components().next().unwrap().as_os_str();
        let module = first.to_string_lossy().trim_end_matches(".rs").to_owned();
        if module == "lib" || module == "main" {
            continue;
        }
        // Code only: doc links to other modules are not dependencies.
        let source: String = fs::read_to_string(&file)
            .unwrap()
            .lines()
            .filter(|line| !line.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        let deps = graph.entry(module.clone()).or_default();
        for reference in crate_references(&source) {
            let target = reexports
                .get(reference.as_str())
                .map_or(reference.clone(), |m| (*m).to_owned());
            if target != module {
                deps.insert(target);
            }
        }
    }
    graph
}

fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(start) = path.iter().position(|n| n == node) {
            let mut cycle = path[start..].to_vec();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|node| visit(node, graph, &mut Vec::new(), &mut done))
}

/// Code without comments and without its tests.
fn code(file: &Path) -> String {
    let source = fs::read_to_string(file).unwrap();
    let source = source.split("#[cfg(test)]").next().unwrap_or_default();
    source
        .lines()
        .filter(|line| !line.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// For each module folder, the graph of its submodules (files other than
/// `mod.rs`): which siblings each one names.
fn submodule_graphs() -> BTreeMap<String, BTreeMap<String, BTreeSet<String>>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut graphs = BTreeMap::<String, BTreeMap<String, BTreeSet<String>>>::new();
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    for file in files {
        let relative = file.strip_prefix(&src).unwrap();
        let parts: Vec<String> = relative
            .components()
            .map(|c| {
                c.as_os_str()
                    .to_string_lossy()
                    .trim_end_matches(".rs")
                    .to_owned()
            })
            .collect();
        if parts.len() < 2 || parts.last().is_some_and(|p| p == "mod") {
            continue;
        }
        let folder = parts[..parts.len() - 1].join("::");
        let name = parts[parts.len() - 1].clone();
        let source = code(&file);
        let mut named = references(&source, "super::");
        named.extend(references(&source, &format!("crate::{folder}::")));
        let siblings: Vec<String> = fs::read_dir(file.parent().unwrap())
            .unwrap()
            .filter_map(|e| {
                let path = e.ok()?.path();
                let stem = path.file_stem()?.to_string_lossy().into_owned();
                (stem != "mod" && stem != name).then_some(stem)
            })
            .collect();
        let deps = graphs.entry(folder).or_default().entry(name).or_default();
        deps.extend(named.into_iter().filter(|n| siblings.contains(n)));
    }
    graphs
}

#[test]
fn no_module_folder_has_a_cycle_between_its_files() {
    let graphs = submodule_graphs();
    assert!(graphs.contains_key("auth") && graphs.contains_key("store::dynamodb"));
    for (folder, graph) in &graphs {
        assert_eq!(find_cycle(graph), None, "{folder}: {graph:#?}");
    }
}

#[test]
fn a_cycle_between_two_files_would_be_found() {
    let graph: BTreeMap<String, BTreeSet<String>> = [
        ("cache".to_owned(), ["verify".to_owned()].into()),
        ("verify".to_owned(), ["cache".to_owned()].into()),
    ]
    .into();
    assert!(find_cycle(&graph).is_some());
    let refs = references("use super::{cache::X, verify};", "super::");
    assert_eq!(
        refs,
        ["cache", "verify"].into_iter().map(String::from).collect()
    );
}

#[test]
fn grouped_and_plain_crate_paths_are_both_found() {
    let refs = crate_references("use crate::{a::{x, y}, b, c::z};\nfn f() { crate::d::g(); }");
    assert_eq!(
        refs,
        ["a", "b", "c", "d"].into_iter().map(String::from).collect()
    );
}

#[test]
fn the_server_modules_have_no_import_cycle() {
    let graph = module_graph();
    assert!(graph.contains_key("startup") && graph.contains_key("auth"));
    assert_eq!(find_cycle(&graph), None, "module graph: {graph:#?}");
}

#[test]
fn admission_and_audit_name_none_of_the_modules_that_use_them() {
    let graph = module_graph();
    for (module, users) in [
        ("admission", ["tls", "auth", "server", "api"]),
        ("audit", ["tls", "auth", "server", "api"]),
    ] {
        let deps = &graph[module];
        for user in users {
            assert!(!deps.contains(user), "{module} names {user}: {deps:?}");
        }
    }
}

#[test]
fn only_startup_assembles_from_settings() {
    // `check` is a command beside `startup`: it runs what startup would.
    for (module, deps) in module_graph() {
        if !["startup", "check"].contains(&module.as_str()) {
            assert!(
                !deps.contains("startup"),
                "{module} reaches into startup: {deps:?}"
            );
        }
        // `dev` makes settings (from its material) as `config` does (from flags).
        if !["startup", "config", "check", "dev"].contains(&module.as_str()) {
            assert!(
                !deps.contains("config"),
                "{module} reads settings directly: {deps:?}"
            );
        }
    }
}
