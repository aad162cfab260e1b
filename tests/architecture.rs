//! The house rules of src/, read from the sources: data flows one way (no two files reach each
//! other except a module and its own submodules), no op imports another op, the models reach
//! the ops only through `nn` and `train`, and nothing outside src/device/ touches the CUDA
//! driver's raw layers.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Modules beside the ops that several ops share (vocabulary and CPU math), not ops.
const SHARED_BESIDE_OPS: &[&str] = &[
    "activation",
    "algo",
    "gemm_cpu",
    "math_cpu",
    "packed_gemm",
    "philox",
    "precision",
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every .rs file of the library (the binary is a user of it, not part of it).
fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            if path != src().join("bin") {
                files(&path, out);
            }
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The module path of a file: src/ops/attention/mod.rs → ["ops", "attention"].
fn module_of(file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src()).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
        parts.pop();
    }
    parts
}

/// The names a module re-exports (`pub use child::{A, B as C}`), each with the full path it
/// stands for.
type Reexports = BTreeMap<(Vec<String>, String), Vec<String>>;

fn reexports(text: &str, module: &[String], out: &mut Reexports) {
    for statement in text.split(';') {
        let Some(at) = statement.find("pub use ") else {
            continue;
        };
        let body: String = statement[at + 8..]
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        let (prefix, names) = match body.split_once("::{") {
            Some((p, rest)) => (p.to_string(), rest.trim_end_matches('}').to_string()),
            None => match body.rsplit_once("::") {
                Some((p, n)) => (p.to_string(), n.to_string()),
                None => continue,
            },
        };
        // Relative to the module unless it starts at the crate root or a parent.
        let base: Vec<String> = if prefix.starts_with("crate") || prefix.starts_with("super") {
            paths(&prefix, module)
                .into_iter()
                .next()
                .unwrap_or_default()
        } else {
            let relative = prefix.split("::").map(String::from);
            module.iter().cloned().chain(relative).collect()
        };
        for name in names.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let (item, alias) = name.split_once(" as ").unwrap_or((name, name));
            let mut full = base.clone();
            full.push(item.trim().to_string());
            out.insert((module.to_vec(), alias.trim().to_string()), full);
        }
    }
}

/// The file holding the longest prefix of `path` that is a module, through re-exports.
fn file_of(
    path: &[String],
    modules: &BTreeMap<Vec<String>, PathBuf>,
    reexported: &Reexports,
) -> Option<PathBuf> {
    let n = (0..=path.len())
        .rev()
        .find(|&n| modules.contains_key(&path[..n]))?;
    if let Some(name) = path.get(n) {
        if let Some(full) = reexported.get(&(path[..n].to_vec(), name.clone())) {
            if full.as_slice() != path {
                return file_of(full, modules, reexported);
            }
        }
    }
    modules.get(&path[..n]).cloned()
}

/// `crate::a::b` and `super::a` paths in `text` (comments dropped), resolved from `module`.
fn paths(text: &str, module: &[String]) -> Vec<Vec<String>> {
    let mut found = Vec::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap();
        for (start, _) in code
            .match_indices("crate::")
            .chain(code.match_indices("super::"))
        {
            let before = code[..start].chars().last();
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                continue;
            }
            let tail: String = code[start..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            let mut segments: Vec<&str> = tail.split("::").filter(|s| !s.is_empty()).collect();
            // `super` is the parent of the file's own module (a.rs is module `a`).
            let mut base: Vec<String> = module.to_vec();
            if segments[0] == "crate" {
                segments.remove(0);
                base.clear();
            }
            while segments.first() == Some(&"super") {
                segments.remove(0);
                base.pop();
            }
            base.extend(segments.iter().map(|s| s.to_string()));
            found.push(base);
        }
    }
    found
}

fn edges() -> (
    BTreeMap<PathBuf, BTreeSet<PathBuf>>,
    BTreeMap<Vec<String>, PathBuf>,
) {
    let mut all = Vec::new();
    files(&src(), &mut all);
    let modules: BTreeMap<Vec<String>, PathBuf> =
        all.iter().map(|f| (module_of(f), f.clone())).collect();
    let mut reexported = Reexports::new();
    for file in &all {
        let text = std::fs::read_to_string(file).unwrap();
        reexports(&text, &module_of(file), &mut reexported);
    }
    let mut graph = BTreeMap::new();
    for file in &all {
        let text = std::fs::read_to_string(file).unwrap();
        let module = module_of(file);
        let targets: BTreeSet<PathBuf> = paths(&text, &module)
            .iter()
            .filter_map(|p| file_of(p, &modules, &reexported))
            .filter(|t| t != file)
            .collect();
        graph.insert(file.clone(), targets);
    }
    (graph, modules)
}

/// Whether `a` is `b`'s module or one of its ancestors, or the other way round.
fn related(a: &Path, b: &Path) -> bool {
    let (ma, mb) = (module_of(a), module_of(b));
    ma.starts_with(&mb) || mb.starts_with(&ma)
}

#[test]
fn no_two_files_import_each_other_beyond_a_module_and_its_submodules() {
    let (graph, _) = edges();
    // Edges between unrelated files only; then any cycle is a pair (or ring) of modules that
    // depend on each other.
    let outside: BTreeMap<&PathBuf, Vec<&PathBuf>> = graph
        .iter()
        .map(|(f, ts)| (f, ts.iter().filter(|t| !related(f, t)).collect()))
        .collect();
    let mut cycles = Vec::new();
    for start in outside.keys() {
        // Depth-first search for a path back to `start`.
        let mut stack = vec![(*start, vec![*start])];
        let mut seen = BTreeSet::new();
        while let Some((at, path)) = stack.pop() {
            for &next in outside.get(at).into_iter().flatten() {
                if next == *start {
                    let ring: Vec<String> = path
                        .iter()
                        .map(|p| p.strip_prefix(src()).unwrap().display().to_string())
                        .collect();
                    cycles.push(ring.join(" → "));
                } else if seen.insert(next) {
                    let mut longer = path.clone();
                    longer.push(next);
                    stack.push((next, longer));
                }
            }
        }
    }
    assert!(cycles.is_empty(), "import cycles:\n{}", cycles.join("\n"));
}

#[test]
fn no_op_imports_another_op() {
    let (graph, _) = edges();
    let op_of = |f: &Path| -> Option<String> {
        let m = module_of(f);
        (m.len() >= 2 && m[0] == "ops").then(|| m[1].clone())
    };
    let mut bad = Vec::new();
    for (file, targets) in &graph {
        let Some(op) = op_of(file) else { continue };
        for t in targets {
            if let Some(other) = op_of(t) {
                if other != op && !SHARED_BESIDE_OPS.contains(&other.as_str()) {
                    let rel = |p: &Path| p.strip_prefix(src()).unwrap().display().to_string();
                    bad.push(format!("{} → {}", rel(file), rel(t)));
                }
            }
        }
    }
    assert!(
        bad.is_empty(),
        "ops importing other ops:\n{}",
        bad.join("\n")
    );
}

#[test]
fn models_use_nn_and_train_not_the_ops_or_the_device_layer() {
    let mut all = Vec::new();
    files(&src().join("models"), &mut all);
    assert!(all.len() >= 3, "the models are read");
    let mut bad = Vec::new();
    for file in &all {
        let text = std::fs::read_to_string(file).unwrap();
        for p in paths(&text, &module_of(file)) {
            // The `Device` type itself is shared vocabulary, like `Tensor`; `crate::{..}`
            // names the crate root's re-exports.
            let first = p.first().map_or("", String::as_str);
            let device_internals = first == "device" && p.len() > 2;
            if first == "ops" || device_internals {
                bad.push(format!("{}: {}", file.display(), p.join("::")));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "models reaching past nn and train:\n{}",
        bad.join("\n")
    );
}

#[test]
fn only_the_device_layer_touches_the_raw_driver() {
    let mut all = Vec::new();
    files(&src(), &mut all);
    let mut bad = Vec::new();
    for file in all.iter().filter(|f| !f.starts_with(src().join("device"))) {
        let text = std::fs::read_to_string(file).unwrap();
        for (k, line) in text.lines().enumerate() {
            if line.contains("driver::result") || line.contains("driver::sys") {
                bad.push(format!("{}:{}: {}", file.display(), k + 1, line.trim()));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "raw driver calls outside src/device:\n{}",
        bad.join("\n")
    );
}

#[test]
fn the_rules_see_the_imports_they_check() {
    // A check that finds nothing because it reads nothing would pass vacuously.
    let (graph, modules) = edges();
    let nn_attention = &modules[&vec!["nn".to_string(), "attention".to_string()]];
    let ops_attention = &modules[&vec!["ops".to_string(), "attention".to_string()]];
    assert!(
        graph[nn_attention].contains(ops_attention),
        "{:?}",
        graph[nn_attention]
    );
    let cuda = src().join("ops/attention/cuda.rs");
    let launch = src().join("device/launch.rs");
    assert!(graph[&cuda].contains(&launch), "{:?}", graph[&cuda]);
}
