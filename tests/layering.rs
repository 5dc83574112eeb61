//! The layers of `src/lib.rs`, checked: a module of the library imports only from layers below
//! its own. A new module must be given a layer here; a higher layer reached from a lower one
//! fails with the file and line.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Each top-level module's layer, lowest first (as `src/lib.rs` describes them).
const LAYERS: &[(&str, u8)] = &[
    ("clock", 0),
    ("sync", 0),
    ("keys", 0),
    ("metrics", 0),
    ("domain", 0),
    ("config", 1),
    ("store", 2),
    ("ingest", 3),
    ("mesh", 4),
    ("p2p", 4),
    ("node", 5),
    ("present", 6),
    ("sim", 6),
    ("http", 7),
    ("mqtt", 7),
    ("app", 8),
    ("cli", 9),
];

fn rust_files(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("readable source folder") {
        let path = entry.expect("folder entry").path();
        if path.is_dir() {
            rust_files(&path, found);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            found.push(path);
        }
    }
}

/// The top-level modules a line of code names through `crate::`.
fn crate_paths(line: &str) -> Vec<String> {
    let mut names = Vec::new();
    for (at, _) in line.match_indices("crate::") {
        let rest = &line[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let inner = group.split('}').next().unwrap_or_default();
            names.extend(
                inner.split(',').filter_map(|item| item.trim().split("::").next()).map(str::to_owned),
            );
        } else {
            let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            names.push(name);
        }
    }
    names.retain(|name| !name.is_empty() && name != "self");
    names
}

#[test]
fn no_module_imports_a_higher_layer() {
    let layers: BTreeMap<&str, u8> = LAYERS.iter().copied().collect();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut violations = Vec::new();
    let mut checked = 0;
    for file in files {
        let relative = file.strip_prefix(&src).expect("under src");
        let first = relative.components().next().expect("a path").as_os_str().to_string_lossy().to_string();
        let module = first.trim_end_matches(".rs").to_owned();
        if module == "lib" || module == "main" {
            continue;
        }
        let Some(&own) = layers.get(module.as_str()) else {
            violations.push(format!("src/{module}: no layer in tests/layering.rs (and in src/lib.rs)"));
            continue;
        };
        checked += 1;
        let text = std::fs::read_to_string(&file).expect("readable source");
        for (number, line) in text.lines().enumerate() {
            let code = line.trim_start();
            if code.starts_with("//") {
                continue;
            }
            for name in crate_paths(code) {
                match layers.get(name.as_str()) {
                    Some(&layer) if name == module || layer < own => {}
                    Some(&layer) => violations.push(format!(
                        "{}:{}: `{module}` (layer {own}) uses `{name}` (layer {layer})",
                        relative.display(),
                        number + 1
                    )),
                    None => violations.push(format!(
                        "{}:{}: `crate::{name}` is not a known module",
                        relative.display(),
                        number + 1
                    )),
                }
            }
        }
    }
    assert!(checked >= LAYERS.len(), "only {checked} files checked: is this the crate root?");
    assert!(violations.is_empty(), "layering violations:\n{}", violations.join("\n"));
}

#[test]
fn the_path_reader_sees_groups_and_plain_paths() {
    assert_eq!(crate_paths("use crate::store::{Store, StoreError};"), vec!["store"]);
    assert_eq!(crate_paths("use crate::{domain, mesh::View};"), vec!["domain", "mesh"]);
    assert_eq!(
        crate_paths("let x = crate::clock::now_ms() + crate::keys::to_hex(b);"),
        vec!["clock", "keys"]
    );
    assert!(crate_paths("no paths here").is_empty());
}
