//! Which rows of SEMANTICS.md, the filesystem's contract, this run exercised.
//!
//! A test that exercises rows says so in its body, after its assertions:
//! `contract::exercises(&["push.close", "tree.latest"])`. The call records each row in
//! `target/reliability/semantics/`, so a row whose test failed or did not run is not
//! recorded. Two checks hold the tests to the contract:
//!
//! * `tests/tests/contract.rs` reads the test sources: every row of SEMANTICS.md is named
//!   in such a call (a comment naming it does not count), and no call names a row
//!   SEMANTICS.md does not have;
//! * `semantics-check SEMANTICS.md`, after the whole suite, fails unless every row was
//!   recorded in this run.
//!
//! The records sit beside the reliability rows (see [`crate::reliability`]) so that the one
//! `rm -rf target/reliability` of `scripts/test.sh` starts both afresh.

use std::collections::BTreeSet;
use std::path::PathBuf;

/// Records that the calling test exercised these rows of SEMANTICS.md and they held.
pub fn exercises(ids: &[&str]) {
    let dir = exercised_dir();
    std::fs::create_dir_all(&dir).expect("exercised rows directory");
    for id in ids {
        std::fs::write(dir.join(id), "").expect("record an exercised row");
    }
}

/// The row ids of SEMANTICS.md: the first cell of a table row, backticked, with a dot.
pub fn row_ids(semantics: &str) -> BTreeSet<String> {
    semantics
        .lines()
        .filter_map(|line| line.strip_prefix("| `"))
        .filter_map(|rest| rest.split_once('`').map(|(id, _)| id.to_owned()))
        .filter(|id| id.contains('.'))
        .collect()
}

/// The rows recorded as exercised so far.
pub fn exercised() -> BTreeSet<String> {
    std::fs::read_dir(exercised_dir())
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// `semantics/` in the reliability rows' directory.
fn exercised_dir() -> PathBuf {
    crate::reliability::rows_dir().join("semantics")
}
