//! The rows of RELIABILITY.md.
//!
//! Every fault, bad-input, load and security case records what it did and saw as a
//! [`Row`], a JSON file in `target/reliability/`. A case records only at its end, after its
//! assertions (or, where a figure is the verdict, records the figure and then asserts it),
//! so a case that failed or never ran has no row. `reliability-report --write` renders the
//! rows into RELIABILITY.md; `--check` fails unless every case listed there reported and
//! passed in this run, and every case that ran is listed.
//!
//! A row's figures are never written by hand: the case counts them in a [`Tally`] where it
//! does the thing counted, and [`Row::tally`] copies them. `operation` wraps each
//! filesystem call through a mount and each command of the project the case runs (making
//! the mounts it runs on is setup, unless the mount itself is what the case checks);
//! `input` wraps an operation that hands the code a bad input (counted as an operation
//! too); `fault` wraps each fault the case causes itself (a process killed or frozen, the
//! registry stopped, stored bytes flipped, a full disk, a throttled link). What another
//! part measured goes in through the `add_` methods: the faults the fault proxy injected,
//! the load case's ledger of operations, the bytes found lost.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

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
    /// A row for a case that passed, with all figures zero until [`Row::tally`].
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

    /// The figures `tally` counted; a row that lost bytes failed.
    pub fn tally(mut self, tally: &Tally) -> Self {
        self.faults = tally.faults.load(Ordering::Relaxed);
        self.inputs = tally.inputs.load(Ordering::Relaxed);
        self.operations = tally.operations.load(Ordering::Relaxed);
        self.bytes_lost = tally.bytes_lost.load(Ordering::Relaxed);
        self.passed &= self.bytes_lost == 0;
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

/// What a case did, counted as it does it: the figures of its [`Row`]. The counters are
/// atomic, so the threads of a case count into one tally.
#[derive(Debug, Default)]
pub struct Tally {
    faults: AtomicU64,
    inputs: AtomicU64,
    operations: AtomicU64,
    bytes_lost: AtomicU64,
}

impl Tally {
    /// Runs one filesystem or CLI operation, counting it.
    pub fn operation<T>(&self, operation: impl FnOnce() -> T) -> T {
        self.operations.fetch_add(1, Ordering::Relaxed);
        operation()
    }

    /// Runs one operation that hands the code a bad input, counting the input and the
    /// operation.
    pub fn input<T>(&self, operation: impl FnOnce() -> T) -> T {
        self.inputs.fetch_add(1, Ordering::Relaxed);
        self.operation(operation)
    }

    /// Causes one fault, counting it.
    pub fn fault<T>(&self, fault: impl FnOnce() -> T) -> T {
        self.faults.fetch_add(1, Ordering::Relaxed);
        fault()
    }

    /// Adds faults another part counted as it injected them (the fault proxy's
    /// `faults_injected()`).
    pub fn add_faults(&self, injected: usize) {
        self.faults.fetch_add(injected as u64, Ordering::Relaxed);
    }

    /// Adds operations counted elsewhere (the load case's ledger of reads and writes).
    pub fn add_operations(&self, run: u64) {
        self.operations.fetch_add(run, Ordering::Relaxed);
    }

    /// Adds bytes of accepted data that could not be read back intact.
    pub fn add_bytes_lost(&self, lost: u64) {
        self.bytes_lost.fetch_add(lost, Ordering::Relaxed);
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
