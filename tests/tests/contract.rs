//! SEMANTICS.md is the contract: every row id it lists must be named by a test that
//! exercises it (in this directory's test files), and no test may name a row that is gone.

use std::collections::BTreeSet;
use std::path::Path;

fn row_ids(semantics: &str) -> BTreeSet<String> {
    semantics
        .lines()
        .filter_map(|line| line.strip_prefix("| `"))
        .filter_map(|rest| rest.split_once('`').map(|(id, _)| id.to_owned()))
        .filter(|id| id.contains('.'))
        .collect()
}

fn test_sources() -> String {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    let mut all = String::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.file_name().is_some_and(|n| n != "contract.rs") {
            all.push_str(&std::fs::read_to_string(path).unwrap());
        }
    }
    all
}

#[test]
fn every_semantics_row_has_a_test() {
    let semantics =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../SEMANTICS.md"))
            .unwrap();
    let ids = row_ids(&semantics);
    assert!(ids.len() >= 30, "SEMANTICS.md rows not found: {ids:?}");
    let sources = test_sources();
    let untested: Vec<&String> = ids
        .iter()
        .filter(|id| !sources.contains(&format!("`{id}`")))
        .collect();
    assert!(untested.is_empty(), "rows without a test: {untested:?}");
}

#[test]
fn tests_name_only_rows_that_exist() {
    let semantics =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../SEMANTICS.md"))
            .unwrap();
    let ids = row_ids(&semantics);
    let sources = test_sources();
    let prefixes = [
        "source.",
        "tree.",
        "push.",
        "read.",
        "stat.",
        "delete.",
        "dir.",
        "names.",
        "errors.",
        "concurrency.",
    ];
    let named: BTreeSet<String> = sources
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|s| prefixes.iter().any(|p| s.starts_with(p)) && !s.contains(' '))
        .map(str::to_owned)
        .collect();
    let unknown: Vec<&String> = named.iter().filter(|id| !ids.contains(*id)).collect();
    assert!(
        unknown.is_empty(),
        "tests name rows SEMANTICS.md does not have: {unknown:?}"
    );
}
