//! `-o` output formats for commands whose output is data.

use anyhow::Result;
use serde::Serialize;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// One line per item, for people and `while read` loops.
    #[value(alias = "wide")]
    Names,
    Json,
    Yaml,
}

/// Prints `data` as JSON, YAML, or the lines `text` makes of it.
pub fn print_data<T: Serialize>(
    data: &T,
    format: Format,
    text: impl FnOnce(&T) -> String,
) -> Result<()> {
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(data)?),
        Format::Yaml => print!("{}", serde_yaml::to_string(data)?),
        Format::Names => print!("{}", text(data)),
    }
    Ok(())
}
