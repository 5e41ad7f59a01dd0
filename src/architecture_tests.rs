//! The architecture invariants that reading the source can check
//! (docs/ARCHITECTURE.md, "Invariants"):
//!
//! - `src/cli` depends on `crate::wire`, never on `crate::api`.
//! - Only the `Ledger` appends to the store: outside `src/store`,
//!   `src/ledger.rs` and `src/ledger/`, no code builds an `AppendRequest` or
//!   calls `append` on a store. (The offline import goes through
//!   `EventStore::import`, not `append`.)
//! - A `NewEvent` is built by `NewEvent::new` or `NewEvent::new_root`: no
//!   code outside `src/event` writes a `NewEvent { .. }` literal.
//!
//! - Four pairs of neighbours import one way only, tests included: `audit`
//!   does not use `ledger`, `webhook` does not use `config`,
//!   `model::validate` does not use `model::parse`, and
//!   `webhook::receivers` does not use `webhook::inbox`.
//!
//! Unit tests may do the first three, so they are left out: files named
//! `tests.rs`, `*_tests.rs` or `test_support.rs`, and the rest of a file from
//! its first `#[cfg(test)]` on (which can only leave out more, never report
//! something that is not there).

use std::path::{Path, PathBuf};

/// Every `.rs` file under `dir`, recursively, sorted.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|extension| extension == "rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The code of a file that is not a unit test, with the file's path
/// relative to `src/`; None for a file of tests.
fn production_code(path: &Path) -> Option<(String, String)> {
    let name = path.file_name()?.to_str()?;
    if name == "tests.rs" || name.ends_with("_tests.rs") || name == "test_support.rs" {
        return None;
    }
    let text = std::fs::read_to_string(path).unwrap();
    let code = match text.find("#[cfg(test)]") {
        Some(tests) => text[..tests].to_string(),
        None => text,
    };
    let relative = path
        .strip_prefix(src())
        .unwrap()
        .to_string_lossy()
        .into_owned();
    Some((relative, code))
}

/// The lines of `code` where `pattern` occurs, as `path:line: text`, except
/// where the text just before it ends with one of `unless_after` (a type
/// named in a signature, not built).
fn occurrences(path: &str, code: &str, pattern: &str, unless_after: &[&str]) -> Vec<String> {
    code.lines()
        .enumerate()
        .filter(|(_, line)| {
            line.match_indices(pattern).any(|(at, _)| {
                let before = line[..at].trim_end();
                !unless_after.iter().any(|word| before.ends_with(word))
            })
        })
        .map(|(number, line)| format!("{path}:{}: {}", number + 1, line.trim()))
        .collect()
}

#[test]
fn the_cli_depends_on_wire_not_on_api() {
    let mut found = Vec::new();
    for path in rust_files(&src().join("cli")) {
        let text = std::fs::read_to_string(&path).unwrap();
        let relative = path.strip_prefix(src()).unwrap().to_string_lossy();
        found.extend(occurrences(&relative, &text, "crate::api", &[]));
    }
    assert!(
        found.is_empty(),
        "src/cli must take the API's types from crate::wire, not crate::api:\n{}",
        found.join("\n")
    );
}

#[test]
fn only_the_ledger_appends_and_only_event_builds_a_new_event() {
    let mut found = Vec::new();
    for path in rust_files(&src()) {
        let Some((relative, code)) = production_code(&path) else {
            continue;
        };
        let in_store = relative.starts_with("store/");
        let in_ledger = relative == "ledger.rs" || relative.starts_with("ledger/");
        if !in_store && !in_ledger {
            found.extend(occurrences(&relative, &code, "AppendRequest {", &["->"]));
            found.extend(occurrences(&relative, &code, "store.append(", &[]));
            found.extend(occurrences(&relative, &code, "store().append(", &[]));
        }
        if !relative.starts_with("event/") {
            let signatures = ["->", "impl", "struct", "for"];
            found.extend(occurrences(&relative, &code, "NewEvent {", &signatures));
        }
    }
    assert!(
        found.is_empty(),
        "only the Ledger appends to the store, and a NewEvent is built by \
         NewEvent::new or NewEvent::new_root:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_four_import_circles_stay_closed() {
    // (files, what they must not name), whole files: tests included.
    let rules: [(PathBuf, &[&str]); 4] = [
        (src().join("audit.rs"), &["crate::ledger"]),
        (src().join("webhook"), &["crate::config"]),
        (
            src().join("model").join("validate.rs"),
            &["super::parse", "model::parse"],
        ),
        (src().join("webhook").join("receivers.rs"), &["inbox"]),
    ];
    let mut found = Vec::new();
    for (place, patterns) in rules {
        let files = if place.is_dir() {
            rust_files(&place)
        } else {
            vec![place]
        };
        for path in files {
            let text = std::fs::read_to_string(&path).unwrap();
            let relative = path.strip_prefix(src()).unwrap().to_string_lossy();
            for pattern in patterns {
                found.extend(occurrences(&relative, &text, pattern, &[]));
            }
        }
    }
    assert!(
        found.is_empty(),
        "an import runs against its one direction (docs/ARCHITECTURE.md):\n{}",
        found.join("\n")
    );
}

/// The checks above can fail: each finds what it looks for.
#[test]
fn the_checks_find_what_they_look_for() {
    let code = "let request = AppendRequest {\nfn f() -> AppendRequest {\n\
                self.ledger.store().append(request)\nlet event = NewEvent {\n";
    let appends = occurrences("x.rs", code, "AppendRequest {", &["->"]);
    assert_eq!(appends, ["x.rs:1: let request = AppendRequest {"]);
    assert_eq!(occurrences("x.rs", code, "store().append(", &[]).len(), 1);
    assert_eq!(occurrences("x.rs", code, "NewEvent {", &["->"]).len(), 1);
    // A file's unit tests are left out, and so are files of tests.
    let inbox = src().join("webhook").join("inbox.rs");
    let (relative, code) = production_code(&inbox).unwrap();
    assert_eq!(
        relative,
        Path::new("webhook").join("inbox.rs").to_string_lossy()
    );
    assert!(!code.contains("#[cfg(test)]"));
    assert!(production_code(&src().join("webhook").join("inbox").join("tests.rs")).is_none());
}
