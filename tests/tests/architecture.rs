//! The invariants of `docs/architecture.md` that a reading of the source can check: where SQL,
//! wire types and card digits may appear, that domain code does no IO, that modules import one
//! another without a circle, that errors map to `Status` without a catch-all, that money
//! assertions stay on in release, and that the docs link nothing outside the repository. Each rule names the files it allows, so a change that
//! breaks one fails here with the file and the line.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The repository's root.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the repository")
        .to_owned()
}

/// Every `.rs` file under `dir` (relative to the root), as (relative path, text).
fn rust_files(dir: &str) -> Vec<(String, String)> {
    let mut files = Vec::new();
    let mut pending = vec![root().join(dir)];
    while let Some(path) = pending.pop() {
        let entries = std::fs::read_dir(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
        for entry in entries {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).expect("source is UTF-8");
                let relative = path
                    .strip_prefix(root())
                    .expect("under the root")
                    .to_string_lossy()
                    .into_owned();
                files.push((relative, text));
            }
        }
    }
    files.sort();
    assert!(!files.is_empty(), "no Rust files under {dir}");
    files
}

/// The lines of `text` that are code (not `//` comments), with their numbers, up to the first
/// `#[cfg(test)]` (tests may use anything).
fn code_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .enumerate()
        .take_while(|(_, line)| line.trim() != "#[cfg(test)]")
        .filter(|(_, line)| !line.trim_start().starts_with("//"))
        .map(|(index, line)| (index + 1, line))
}

/// Fails with every line under `dirs` that contains one of `needles` in a file `allowed`
/// does not accept.
fn only_in(dirs: &[&str], needles: &[&str], allowed: impl Fn(&str) -> bool, rule: &str) {
    let mut found = Vec::new();
    for dir in dirs {
        for (path, text) in rust_files(dir) {
            if allowed(&path) {
                continue;
            }
            for (number, line) in code_lines(&text) {
                if needles.iter().any(|needle| line.contains(needle)) {
                    found.push(format!("{path}:{number}: {}", line.trim()));
                }
            }
        }
    }
    assert!(found.is_empty(), "{rule}:\n{}", found.join("\n"));
}

/// Domain code does no IO and knows no wire types: no database, gRPC, generated API, async
/// runtime, file or network access in either server's `domain` modules.
#[test]
fn domain_code_does_no_io() {
    only_in(
        &["vault/src/domain", "orchestrator/src/domain"],
        &[
            "sqlx",
            "tonic",
            "tandem_proto",
            "tokio",
            "std::fs",
            "std::net",
            "reqwest",
        ],
        |_| false,
        "domain code must not do IO or know wire types",
    );
}

/// All SQL is in the storage modules (and the sandbox acquirer's own tables, which it keeps
/// as an external processor would; the ledger is a library of its own).
#[test]
fn sql_is_in_storage() {
    only_in(
        &["vault/src", "orchestrator/src"],
        &["sqlx::query", "query_as(", "query_scalar("],
        |path| {
            path.starts_with("vault/src/storage/")
                || path == "vault/src/connector/sandbox.rs"
                || path == "orchestrator/src/storage.rs"
                || path.starts_with("orchestrator/src/storage/")
        },
        "SQL belongs in storage",
    );
}

/// Wire types are read and built only at the edges: the gRPC handlers and their conversions,
/// the server that registers them, and (in the orchestrator) the vault client.
#[test]
fn wire_types_stay_at_the_edge() {
    only_in(
        &["vault/src"],
        &["tandem_proto"],
        |path| path.starts_with("vault/src/grpc/") || path == "vault/src/server.rs",
        "the vault's wire types belong in grpc/ and server.rs",
    );
    only_in(
        &["orchestrator/src"],
        &["tandem_proto"],
        |path| {
            path == "orchestrator/src/grpc.rs"
                || path.starts_with("orchestrator/src/grpc/")
                || path == "orchestrator/src/server.rs"
                || path == "orchestrator/src/vault.rs"
        },
        "the orchestrator's wire types belong in grpc/, server.rs and vault.rs",
    );
}

/// A card's digits are read only where the vault needs them: to fingerprint, seal and open it
/// (crypto), to key-hash a tokenize request (tokens) and to send it to a processor (connector).
#[test]
fn card_digits_are_read_in_few_places() {
    only_in(
        &["vault/src"],
        &["expose_digits("],
        |path| {
            path == "vault/src/domain/pan.rs"
                || path == "vault/src/crypto.rs"
                || path.starts_with("vault/src/tokens/")
                || path.starts_with("vault/src/connector/")
        },
        "a PAN's digits are read only in crypto, tokens and connectors",
    );
}

/// Each server maps its errors to `Status` in one exhaustive match: no catch-all arm that would
/// silently give a new error kind some code.
#[test]
fn error_maps_are_exhaustive() {
    for path in [
        "vault/src/grpc/status.rs",
        "orchestrator/src/grpc/status.rs",
    ] {
        let text = std::fs::read_to_string(root().join(path)).expect(path);
        let catch_all: Vec<String> = code_lines(&text)
            .filter(|(_, line)| line.trim_start().starts_with("_ =>"))
            .map(|(number, line)| format!("{path}:{number}: {}", line.trim()))
            .collect();
        assert!(catch_all.is_empty(), "{}", catch_all.join("\n"));
    }
}

/// Money invariants are assertions that stay on in release: no `debug_assert` where amounts
/// are split, allocated and booked.
#[test]
fn money_assertions_stay_on_in_release() {
    only_in(
        &["orchestrator/src/domain", "money/src", "ledger-client/src"],
        &["debug_assert"],
        |_| false,
        "domain and money assertions must stay on in release",
    );
}

/// The README and the docs link only what the repository holds.
#[test]
fn docs_link_inside_the_repository() {
    let mut docs = vec![root().join("README.md"), root().join("BENCHMARKS.md")];
    for dir in ["docs", "vault/docs", "orchestrator/docs"] {
        for entry in std::fs::read_dir(root().join(dir)).expect(dir) {
            let path = entry.expect("a directory entry").path();
            if path.extension().is_some_and(|e| e == "md") {
                docs.push(path);
            }
        }
    }
    let mut outside = Vec::new();
    for path in docs {
        let text = std::fs::read_to_string(&path).expect("docs are UTF-8");
        let base = path.parent().expect("a file has a directory");
        for (index, line) in text.lines().enumerate() {
            for link in line.split("](").skip(1) {
                let target = link.split([')', '#']).next().unwrap_or_default();
                if target.is_empty() || target.contains("://") || target.starts_with("mailto:") {
                    continue;
                }
                let resolved = normalize(&base.join(target));
                if !resolved.starts_with(root()) || !resolved.exists() {
                    outside.push(format!("{}:{}: {target}", path.display(), index + 1));
                }
            }
        }
    }
    assert!(
        outside.is_empty(),
        "links outside the repository or to nothing:\n{}",
        outside.join("\n")
    );
}

/// `path` with its `.` and `..` components resolved, without touching the file system.
fn normalize(path: &Path) -> PathBuf {
    let mut normal = PathBuf::new();
    for component in path.components() {
        match component {
            std::path::Component::ParentDir => {
                normal.pop();
            }
            std::path::Component::CurDir => {}
            other => normal.push(other),
        }
    }
    normal
}

/// A crate's modules (their paths from the crate root, `[]` for the root) and the modules each
/// one imports through `crate::` and `super::` paths. A module's use of its own ancestors
/// (`super::` into the parent that declares it) is nesting, not an import.
fn imports(src: &str) -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
    let modules: BTreeMap<Vec<String>, String> = rust_files(src)
        .into_iter()
        .map(|(path, text)| {
            let relative = path
                .strip_prefix(&format!("{src}/"))
                .expect("under src")
                .trim_end_matches(".rs");
            let mut module: Vec<String> = relative.split('/').map(str::to_owned).collect();
            if matches!(
                module.last().map(String::as_str),
                Some("mod" | "lib" | "main")
            ) {
                module.pop();
            }
            let code: String = code_lines(&text)
                .map(|(_, line)| format!("{line}\n"))
                .collect();
            (module, code)
        })
        .collect();
    let resolve = |path: &[String]| -> Option<Vec<String>> {
        (0..=path.len())
            .rev()
            .map(|length| path[..length].to_vec())
            .find(|candidate| modules.contains_key(candidate))
    };
    let mut graph = BTreeMap::new();
    for (module, code) in &modules {
        let mut targets = BTreeSet::new();
        for (index, _) in code.match_indices("::") {
            let before = &code[..index];
            let word = |keyword: &str| {
                before.strip_suffix(keyword).is_some_and(|head| {
                    !head.ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':')
                })
            };
            let base: Vec<String> = if word("crate") {
                Vec::new()
            } else if word("super") {
                module[..module.len().saturating_sub(1)].to_vec()
            } else {
                continue;
            };
            let rest = &code[index + 2..];
            // `crate::a::b::Item`, or each first name of `crate::{a::X, b}`.
            let heads: Vec<&str> = match rest.strip_prefix('{') {
                Some(group) => group
                    .split('}')
                    .next()
                    .unwrap_or_default()
                    .split(',')
                    .map(str::trim)
                    .collect(),
                None => vec![rest],
            };
            for head in heads {
                let mut path = Vec::new();
                for segment in head.split("::") {
                    let name: String = segment
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    if name.is_empty() {
                        break;
                    }
                    let whole = name.len() == segment.len();
                    path.push(name);
                    if !whole {
                        break;
                    }
                }
                let full: Vec<String> = base.iter().cloned().chain(path).collect();
                if let Some(target) = resolve(&full)
                    && !module.starts_with(&target)
                {
                    targets.insert(target);
                }
            }
        }
        graph.insert(module.clone(), targets);
    }
    graph
}

/// A circle in `graph`, as the modules along it, if there is one.
fn find_circle(graph: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Open,
        Done,
    }
    fn visit(
        node: &Vec<String>,
        graph: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        marks: &mut BTreeMap<Vec<String>, Mark>,
        stack: &mut Vec<Vec<String>>,
    ) -> Option<Vec<String>> {
        match marks.get(node) {
            Some(Mark::Done) => return None,
            Some(Mark::Open) => {
                let start = stack
                    .iter()
                    .position(|n| n == node)
                    .expect("open is stacked");
                return Some(
                    stack[start..]
                        .iter()
                        .chain([node])
                        .map(|module| format!("crate::{}", module.join("::")))
                        .collect(),
                );
            }
            None => {}
        }
        marks.insert(node.clone(), Mark::Open);
        stack.push(node.clone());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(circle) = visit(next, graph, marks, stack) {
                return Some(circle);
            }
        }
        stack.pop();
        marks.insert(node.clone(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    graph
        .keys()
        .find_map(|node| visit(node, graph, &mut marks, &mut Vec::new()))
}

/// The vault's, the orchestrator's and the CLI's modules import one another without a circle,
/// so each can be read (and changed) after the ones it depends on.
#[test]
fn no_import_circles() {
    for src in ["vault/src", "orchestrator/src", "cli/src", "runtime/src"] {
        let graph = imports(src);
        assert!(graph.len() > 3, "{src}: too few modules read");
        if let Some(circle) = find_circle(&graph) {
            panic!("{src}: import circle {}", circle.join(" -> "));
        }
    }
}

/// The circle check sees a circle: two modules importing each other, and one through `super`.
#[test]
fn circles_are_found() {
    let module = |path: &str| -> Vec<String> {
        path.split("::")
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    };
    let mut graph = BTreeMap::new();
    graph.insert(module("a"), BTreeSet::from([module("b")]));
    graph.insert(module("b"), BTreeSet::from([module("c")]));
    graph.insert(module("c"), BTreeSet::from([module("a")]));
    assert_eq!(
        find_circle(&graph),
        Some(vec![
            "crate::a".into(),
            "crate::b".into(),
            "crate::c".into(),
            "crate::a".into()
        ])
    );
    graph.insert(module("c"), BTreeSet::new());
    assert_eq!(find_circle(&graph), None);
}
