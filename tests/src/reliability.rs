//! The rows of RELIABILITY.md.
//!
//! Every fault, bad-input, load and security case records what it did and saw as a
//! [`Row`], a JSON file in `target/reliability/`. A case records only at its end, after its
//! assertions (or, where a figure is the verdict, records the figure and then asserts it),
//! so a case that failed or never ran has no row. `reliability-report --write` renders the
//! rows into RELIABILITY.md; `--check` fails unless every case listed there reported and
//! passed in this run, and every case that ran is listed.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// What kind of case a row is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Category {
    Fault,
    BadInput,
    Load,
    Security,
}

impl Category {
    /// The heading in RELIABILITY.md.
    pub fn heading(self) -> &'static str {
        match self {
            Category::Fault => "Faults",
            Category::BadInput => "Bad input",
            Category::Load => "Load",
            Category::Security => "Security",
        }
    }
}

/// One case and its figures.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Row {
    /// A stable id, `category.what` (`fault.upload-reset`).
    pub id: String,
    pub category: Category,
    /// What was done.
    pub case: String,
    /// What was observed.
    pub outcome: String,
    /// Faults injected (requests failed, connections cut, processes killed, ...).
    pub faults: u64,
    /// Bad inputs tried.
    pub inputs: u64,
    /// Filesystem or CLI operations run.
    pub operations: u64,
    /// Bytes of accepted data that could not be read back intact afterwards.
    pub bytes_lost: u64,
    /// Whether every guarantee held.
    pub passed: bool,
    /// The test that ran the case.
    pub test: String,
}

impl Row {
    /// A row for a case that passed, with all figures zero.
    pub fn new(id: &str, category: Category, case: &str, outcome: &str, test: &str) -> Self {
        Self {
            id: id.to_owned(),
            category,
            case: case.to_owned(),
            outcome: outcome.to_owned(),
            faults: 0,
            inputs: 0,
            operations: 0,
            bytes_lost: 0,
            passed: true,
            test: test.to_owned(),
        }
    }

    pub fn faults(mut self, n: u64) -> Self {
        self.faults = n;
        self
    }

    pub fn inputs(mut self, n: u64) -> Self {
        self.inputs = n;
        self
    }

    pub fn operations(mut self, n: u64) -> Self {
        self.operations = n;
        self
    }

    pub fn bytes_lost(mut self, n: u64) -> Self {
        self.bytes_lost = n;
        self.passed &= n == 0;
        self
    }

    /// Writes the row for the report.
    pub fn record(self) {
        let dir = rows_dir();
        std::fs::create_dir_all(&dir).expect("reliability rows directory");
        let json = serde_json::to_vec_pretty(&self).expect("rows serialise");
        std::fs::write(dir.join(format!("{}.json", self.id)), json).expect("write row");
    }
}

/// Where rows are written: `target/reliability`, beside the binaries' profile directory
/// (`REPOSURE_RELIABILITY_DIR` overrides it).
pub fn rows_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("REPOSURE_RELIABILITY_DIR") {
        return dir.into();
    }
    let profile = crate::bin_dir();
    profile
        .parent()
        .map_or(profile.clone(), |target| target.to_path_buf())
        .join("reliability")
}

/// Every row recorded so far, by category then id.
pub fn read_rows() -> Vec<Row> {
    let mut rows: Vec<Row> = std::fs::read_dir(rows_dir())
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
                .filter_map(|e| serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok())
                .collect()
        })
        .unwrap_or_default();
    rows.sort_by(|a, b| (a.category, &a.id).cmp(&(b.category, &b.id)));
    rows
}
