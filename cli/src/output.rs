//! `-o` output formats for commands whose output is data.

use anyhow::Result;
use serde::Serialize;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Columns under a header, for people.
    #[value(alias = "wide")]
    Table,
    /// One line per item, for `while read` loops (`bare` as the original Reposure named it).
    #[value(alias = "bare")]
    Names,
    Json,
    Yaml,
}

/// Prints `data` as JSON, YAML, or the lines `text` makes of it (for a table or names:
/// commands with both tell them apart before).
pub fn print_data<T: Serialize>(
    data: &T,
    format: Format,
    text: impl FnOnce(&T) -> String,
) -> Result<()> {
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(data)?),
        Format::Yaml => print!("{}", serde_yaml::to_string(data)?),
        Format::Table | Format::Names => print!("{}", text(data)),
    }
    Ok(())
}

/// Rows under a header, each column as wide as its widest cell, two spaces apart.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:width$}"))
            .collect();
        format!("{}\n", padded.join("  ").trim_end())
    };
    let mut out = line(header.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}
