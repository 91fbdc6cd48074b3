//! The documentation against the code it describes, for the drift most likely to happen: every flag a
//! README synopsis shows is one the CLI takes, every repository path a document names exists, and no document
//! sends its reader to an issue number, which the repository does not hold.

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
