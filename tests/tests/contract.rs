//! SEMANTICS.md is the contract: every row id it lists must be named by a test that
//! exercises it (in this directory's test files), no test may name a row that is gone, and
//! its errno table names every errno the filesystem's code names.

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
    // A backticked word that starts like a row id (`push.`, `cache.`, ...) is meant as one.
    let prefixes: BTreeSet<&str> = ids
        .iter()
        .filter_map(|id| id.split_once('.').map(|(section, _)| section))
        .collect();
    let named: BTreeSet<String> = sources
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|s| {
            s.split_once('.')
                .is_some_and(|(section, _)| prefixes.contains(section))
                && !s.contains(' ')
        })
        .map(str::to_owned)
        .collect();
    let unknown: Vec<&String> = named.iter().filter(|id| !ids.contains(*id)).collect();
    assert!(
        unknown.is_empty(),
        "tests name rows SEMANTICS.md does not have: {unknown:?}"
    );
}

/// Every `libc::E...` constant the filesystem returns (the errno mapping and the FUSE
/// adapter's own replies) has a row in SEMANTICS.md's errno table.
#[test]
fn the_errno_table_names_every_errno_the_filesystem_returns() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let semantics = std::fs::read_to_string(root.join("SEMANTICS.md")).unwrap();
    let table = semantics
        .split_once("## errno table")
        .expect("SEMANTICS.md has an errno table")
        .1;
    let listed: BTreeSet<&str> = table
        .lines()
        .filter_map(|line| line.strip_prefix("| "))
        .filter_map(|rest| rest.split_once(" |").map(|(errnos, _)| errnos))
        .flat_map(|errnos| errnos.split(" / "))
        .collect();
    let mut returned = BTreeSet::new();
    for file in ["fs/src/errno.rs", "fs/src/fuse.rs"] {
        let source = std::fs::read_to_string(root.join(file)).unwrap();
        for (_, rest) in source
            .match_indices("libc::E")
            .map(|(i, _)| source.split_at(i + 6))
        {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
                .collect();
            returned.insert(name);
        }
    }
    assert!(
        returned.len() >= 10,
        "errnos not found in the sources: {returned:?}"
    );
    let missing: Vec<&String> = returned
        .iter()
        .filter(|errno| !listed.contains(errno.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "errnos the filesystem returns that SEMANTICS.md's errno table does not list: {missing:?}"
    );
}
