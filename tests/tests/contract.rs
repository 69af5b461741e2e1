//! SEMANTICS.md is the contract: every row id it lists must be named by a test that
//! exercises it, in a `contract::exercises(&[...])` call in the test's body (see
//! `reposure_tests::contract`; a comment naming the row does not count), no call may name a
//! row that is gone, and its errno table names every errno the filesystem's code names.
//! Whether those tests passed in this run is `semantics-check`'s to say.

use std::collections::BTreeSet;
use std::path::Path;

use reposure_tests::contract::row_ids;

fn semantics_rows() -> BTreeSet<String> {
    let semantics =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../SEMANTICS.md"))
            .unwrap();
    let ids = row_ids(&semantics);
    assert!(ids.len() >= 30, "SEMANTICS.md rows not found: {ids:?}");
    ids
}

/// Rust source as far as finding calls needs: comments are dropped, and a string literal
/// is one token, so a call written in a comment or inside a string is no call.
#[derive(Debug, PartialEq)]
enum Token {
    /// An identifier, keyword or number.
    Word(String),
    /// The contents of a string literal, escapes as written.
    Text(String),
    Punct(char),
}

fn tokens(source: &str) -> Vec<Token> {
    let chars: Vec<char> = source.chars().collect();
    // Whether `text` (ASCII) starts at `i`.
    let at = |i: usize, text: &str| {
        chars
            .get(i..)
            .is_some_and(|rest| rest.iter().copied().take(text.len()).eq(text.chars()))
    };
    // The index just past the first `end` at or after `i`, or the end of the source.
    let past = |mut i: usize, end: &str| {
        while i < chars.len() && !at(i, end) {
            i += 1;
        }
        (i + end.len()).min(chars.len())
    };
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if at(i, "//") {
            i = past(i, "\n");
        } else if at(i, "/*") {
            // Block comments nest.
            let mut depth = 0;
            while i < chars.len() {
                if at(i, "/*") {
                    depth += 1;
                    i += 2;
                } else if at(i, "*/") {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if c == '"' {
            let start = i + 1;
            i = start;
            while i < chars.len() && chars[i] != '"' {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            tokens.push(Token::Text(
                chars[start..i.min(chars.len())].iter().collect(),
            ));
            i += 1;
        } else if c == '\'' {
            // A char literal ('x', '"', '\n', '\''), or else the quote of a lifetime.
            if chars.get(i + 1) == Some(&'\\') {
                i = past(i + 3, "'");
            } else if chars.get(i + 2) == Some(&'\'') {
                i += 3;
            } else {
                tokens.push(Token::Punct(c));
                i += 1;
            }
        } else if c.is_alphanumeric() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let hashes = chars[i..].iter().take_while(|&&h| h == '#').count();
            if (word == "r" || word == "br") && chars.get(i + hashes) == Some(&'"') {
                // A raw string, r#"..."#: no escapes; it ends at a quote and as many hashes.
                let end = format!("\"{}", "#".repeat(hashes));
                let start = i + hashes + 1;
                i = past(start, &end);
                tokens.push(Token::Text(chars[start..i - end.len()].iter().collect()));
            } else {
                tokens.push(Token::Word(word));
            }
        } else {
            tokens.push(Token::Punct(c));
            i += 1;
        }
    }
    tokens
}

/// The string arguments of every `exercises(...)` call in `source`.
fn exercised_in(source: &str) -> Vec<String> {
    let tokens = tokens(source);
    let mut ids = Vec::new();
    for (i, token) in tokens.iter().enumerate() {
        if *token == Token::Word("exercises".into())
            && tokens.get(i + 1) == Some(&Token::Punct('('))
        {
            let arguments = tokens[i + 2..]
                .iter()
                .take_while(|t| **t != Token::Punct(')'));
            ids.extend(arguments.filter_map(|t| match t {
                Token::Text(id) => Some(id.clone()),
                _ => None,
            }));
        }
    }
    ids
}

/// The rows named by `exercises` calls in this directory's test files.
fn exercised_in_tests() -> BTreeSet<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    let mut ids = BTreeSet::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        ids.extend(exercised_in(
            &std::fs::read_to_string(entry.path()).unwrap(),
        ));
    }
    ids
}

#[test]
fn only_calls_in_code_name_rows() {
    let source = r##"
        /// `push.close`: exercises(&["push.close"])
        // contract::exercises(&["tree.latest"]);
        /* exercises(&["tree.tags"]) /* nested */ exercises(&["tree.shadowed"]) */
        let url = "http://host/exercises(&[\"tree.sorted\"])";
        let raw: &'static str = r#"exercises(&["stat.ttl"])"#;
        let quotes = ('"', '\'', b'"');
        contract::exercises(&["read.range", "read.verified"]);
        exercises(&[
            "push.failure", // a comment between the arguments
        ]);
    "##;
    assert_eq!(
        exercised_in(source),
        ["read.range", "read.verified", "push.failure"]
    );
}

#[test]
fn every_semantics_row_is_exercised_by_a_test() {
    let exercised = exercised_in_tests();
    let unexercised: Vec<String> = semantics_rows().difference(&exercised).cloned().collect();
    assert!(
        unexercised.is_empty(),
        "rows no test names in a contract::exercises call: {unexercised:?}"
    );
}

#[test]
fn tests_exercise_only_rows_that_exist() {
    let unknown: Vec<String> = exercised_in_tests()
        .difference(&semantics_rows())
        .cloned()
        .collect();
    assert!(
        unknown.is_empty(),
        "tests exercise rows SEMANTICS.md does not have: {unknown:?}"
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
