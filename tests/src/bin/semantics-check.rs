//! `semantics-check FILE`: exits 1 unless every row of FILE (SEMANTICS.md) was exercised
//! by a test that passed in this run, and every row exercised is in FILE
//! (`target/reliability/semantics/`, see `reposure_tests::contract`).

use std::process::ExitCode;

use reposure_tests::contract::{exercised, row_ids};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [path] = args.as_slice() else {
        eprintln!("usage: semantics-check FILE");
        return ExitCode::from(2);
    };
    let document = match std::fs::read_to_string(path) {
        Ok(document) => document,
        Err(e) => {
            eprintln!("semantics-check: cannot read {path}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let rows = row_ids(&document);
    let exercised = exercised();
    let mut problems = Vec::new();
    if rows.is_empty() {
        problems.push(format!("{path} has no rows"));
    }
    for id in rows.difference(&exercised) {
        problems.push(format!(
            "{id}: not exercised (the tests that name it failed or did not run)"
        ));
    }
    for id in exercised.difference(&rows) {
        problems.push(format!("{id}: exercised but not a row of {path}"));
    }
    if problems.is_empty() {
        println!("semantics: all {} rows of {path} exercised", rows.len());
        ExitCode::SUCCESS
    } else {
        eprintln!("semantics: {} problem(s):", problems.len());
        for problem in problems {
            eprintln!("  {problem}");
        }
        ExitCode::FAILURE
    }
}
