//! The documentation against the code it describes, for the drift most likely to happen: every flag a
//! README synopsis shows is one the CLI takes, every repository path a document names exists, no document
//! sends its reader to an issue number, which the repository does not hold, and the README's table of the
//! public API names every public module and item the source declares.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The documents a reader follows: the README and every page they link to.
fn documents() -> Vec<(String, String)> {
    let mut paths = vec!["README.md".to_string(), "tools/README.md".to_string()];
    let mut pages: Vec<String> = std::fs::read_dir(Path::new(ROOT).join("docs"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|name| name.ends_with(".md"))
        .map(|name| format!("docs/{name}"))
        .collect();
    pages.sort();
    paths.extend(pages);
    paths
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(Path::new(ROOT).join(&p)).unwrap();
            (p, text)
        })
        .collect()
}

/// The `--flags` of each `hourglass SUBCOMMAND ...` line in the README's code blocks, by subcommand.
fn synopsis_flags(readme: &str) -> Vec<(String, BTreeSet<String>)> {
    let mut in_code = false;
    let mut found = Vec::new();
    for line in readme.lines() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
            continue;
        }
        let Some(rest) = line
            .trim_start()
            .strip_prefix("hourglass ")
            .filter(|_| in_code)
        else {
            continue;
        };
        let command = rest.split('#').next().unwrap();
        let Some(sub) = command.split_whitespace().next() else {
            continue;
        };
        let flags = command
            .split(|c: char| c.is_whitespace() || c == '[' || c == ']' || c == '=')
            .filter(|word| word.starts_with("--") && word.len() > 2)
            .map(|word| word.trim_end_matches([',', '.', ')']).to_string())
            .collect();
        found.push((sub.to_string(), flags));
    }
    found
}

#[test]
fn every_flag_in_the_readmes_synopses_exists() {
    let readme = std::fs::read_to_string(Path::new(ROOT).join("README.md")).unwrap();
    let synopses = synopsis_flags(&readme);
    assert!(
        synopses.len() >= 5,
        "only {} synopses found",
        synopses.len()
    );
    for (sub, flags) in synopses {
        let help = Command::new(env!("CARGO_BIN_EXE_hourglass"))
            .args([sub.as_str(), "--help"])
            .output()
            .expect("run the hourglass binary");
        assert!(
            help.status.success(),
            "hourglass {sub} --help failed: the README names a subcommand that does not exist"
        );
        let help = String::from_utf8_lossy(&help.stdout);
        for flag in flags {
            let taken = help
                .split(|c: char| c.is_whitespace() || c == ',' || c == '=' || c == '[')
                .any(|word| word == flag);
            assert!(
                taken,
                "README: `hourglass {sub} {flag}`: `hourglass {sub} --help` has no {flag}"
            );
        }
    }
}

/// Backticked repository paths (`src/...`, `tests/...`, ...), less patterns (`*`, `<name>`, `{a,b}`), with any
/// `:line` or trailing `/` dropped.
fn named_paths(text: &str) -> BTreeSet<String> {
    const TOP: [&str; 10] = [
        "src/",
        "tests/",
        "tools/",
        "kernels/",
        "docs/",
        "benches/",
        "examples/",
        "emulator/",
        ".ci/",
        "data/",
    ];
    text.split('`')
        .skip(1)
        .step_by(2)
        .filter_map(|quoted| quoted.split_whitespace().next())
        .filter(|word| TOP.iter().any(|top| word.starts_with(top)))
        .filter(|word| !word.contains(['*', '<', '{', '$']))
        .map(|word| {
            word.split(':')
                .next()
                .unwrap()
                .trim_end_matches('/')
                .to_string()
        })
        .collect()
}

#[test]
fn every_path_a_document_names_exists() {
    // Folders a run fills rather than the repository holds.
    const MADE: [&str; 2] = ["data", ".gpu"];
    let mut missing = Vec::new();
    let mut checked = 0;
    for (doc, text) in documents() {
        for path in named_paths(&text) {
            if MADE.iter().any(|made| path.split('/').next() == Some(made)) {
                continue;
            }
            checked += 1;
            if !Path::new(ROOT).join(&path).exists() {
                missing.push(format!("{doc}: {path}"));
            }
        }
    }
    assert!(checked >= 50, "only {checked} paths found in the documents");
    assert!(
        missing.is_empty(),
        "named but not in the repository:\n{}",
        missing.join("\n")
    );
}

#[test]
fn no_document_refers_to_an_issue_number() {
    let mut found = Vec::new();
    for (doc, text) in documents() {
        for (n, line) in text.lines().enumerate() {
            let lower = line.to_lowercase();
            let numbered = lower.match_indices("issue").any(|(at, _)| {
                let rest = lower[at + 5..].trim_start_matches(['s', ' ', '#']);
                rest.starts_with(|c: char| c.is_ascii_digit())
            });
            if numbered {
                found.push(format!("{doc}:{}: {line}", n + 1));
            }
        }
    }
    assert!(
        found.is_empty(),
        "issue numbers a reader cannot look up:\n{}",
        found.join("\n")
    );
}

/// The public modules under `module` (a path like `model::decode`, "" for the root) whose source is `file`:
/// `(path, file)` for each `pub mod`, depth first.
fn public_modules(module: &str, file: &Path, found: &mut Vec<(String, std::path::PathBuf)>) {
    let text = std::fs::read_to_string(file).unwrap();
    // A module's children live beside `lib.rs` / `mod.rs`, else in a folder named after it.
    let dir = match file.file_name().and_then(|n| n.to_str()) {
        Some("lib.rs" | "mod.rs") => file.parent().unwrap().to_path_buf(),
        _ => file.with_extension(""),
    };
    for line in text.lines() {
        let Some(name) = line
            .strip_prefix("pub mod ")
            .and_then(|rest| rest.strip_suffix(';'))
        else {
            continue;
        };
        let path = if module.is_empty() {
            name.to_string()
        } else {
            format!("{module}::{name}")
        };
        let child = [
            dir.join(format!("{name}.rs")),
            dir.join(name).join("mod.rs"),
        ]
        .into_iter()
        .find(|f| f.exists())
        .unwrap_or_else(|| panic!("no source for module {path}"));
        found.push((path.clone(), child.clone()));
        public_modules(&path, &child, found);
    }
}

/// The names a module's source makes public at its top level: its `pub` items and what it re-exports.
fn public_names(file: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(file).unwrap();
    let mut names = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("pub ") else {
            continue;
        };
        let words: Vec<&str> = rest
            .split(|c: char| !(c.is_alphanumeric() || c == '_'))
            .filter(|w| !w.is_empty())
            .collect();
        match words.first().copied() {
            Some("use") => {
                // `pub use a::b::{C, D as E};` makes C and E public; `pub use a::b;` makes b.
                let body = rest.trim_start_matches("use ").trim_end_matches(';');
                let list = match body.split_once('{') {
                    Some((_, inner)) => inner.trim_end_matches('}').to_string(),
                    None => body.rsplit("::").next().unwrap().to_string(),
                };
                for item in list.split(',').map(str::trim).filter(|i| !i.is_empty()) {
                    let name = item.rsplit(" as ").next().unwrap();
                    names.push(name.rsplit("::").next().unwrap().to_string());
                }
            }
            Some("mod") => {}
            Some(_) => {
                let keyword = ["fn", "struct", "enum", "trait", "type", "const", "static"];
                if let Some(at) = words.iter().position(|w| keyword.contains(w)) {
                    names.push(words[at + 1].to_string());
                }
            }
            None => {}
        }
    }
    names
}

/// The rows of the README's table of the public API: (module path, what the row names).
fn api_table(readme: &str) -> Vec<(String, String)> {
    let section = readme
        .split("## The crate's public API")
        .nth(1)
        .expect("the README has a section on the public API");
    let section = section.split("\n## ").next().unwrap();
    section
        .lines()
        .filter_map(|line| {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let module = cells.get(1)?.strip_prefix('`')?;
            let module = module.split('`').next()?;
            let module = if module == "hourglass" { "" } else { module };
            Some((module.to_string(), cells.get(2)?.to_string()))
        })
        .collect()
}

#[test]
fn the_readme_names_every_public_module_and_item() {
    let readme = std::fs::read_to_string(Path::new(ROOT).join("README.md")).unwrap();
    let rows = api_table(&readme);
    let lib = Path::new(ROOT).join("src/lib.rs");
    let mut modules = vec![(String::new(), lib.clone())];
    public_modules("", &lib, &mut modules);
    assert!(
        modules.len() >= 30,
        "only {} public modules found",
        modules.len()
    );
    // A module is named by its own row, or by its parent's; its public items, by the row that names it.
    let row_of = |module: &str| -> Option<&String> {
        rows.iter().find(|(m, _)| m == module).map(|(_, text)| text)
    };
    let mut missing = Vec::new();
    for (module, file) in &modules {
        let (parent, name) = module.rsplit_once("::").unwrap_or(("", module));
        let text = match row_of(module) {
            Some(text) => text,
            None => match row_of(parent) {
                Some(text) if text.contains(&format!("`{name}`")) => text,
                _ => {
                    missing.push(format!("module `{module}`"));
                    continue;
                }
            },
        };
        for item in public_names(file) {
            // The ops' backend halves are named by pattern: `*Ops` traits with their `*Dims`.
            let by_pattern = ["Ops", "Dims"]
                .iter()
                .any(|suffix| item.ends_with(suffix) && text.contains(&format!("`*{suffix}`")));
            if !by_pattern && !text.contains(&format!("`{item}`")) {
                missing.push(format!("`{item}` of `{module}`"));
            }
        }
    }
    for (module, _) in &rows {
        if !modules.iter().any(|(m, _)| m == module) {
            missing.push(format!(
                "a row for `{module}`, which is not a public module"
            ));
        }
    }
    assert!(
        missing.is_empty(),
        "the README's public API (\"The crate's public API\") and the code differ:\n{}",
        missing.join("\n")
    );
}
