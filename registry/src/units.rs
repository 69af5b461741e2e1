//! Sizes as people write them in options: `512`, `64K`, `16M`, `4G`, `1T` (powers of 1024;
//! `KB`, `KiB` and lower case too).

use crate::error::{RegistryError, Result};

/// `SIZE` with an optional K, M, G or T suffix.
pub fn parse_size(text: &str) -> Result<u64> {
    let unusable = || RegistryError::Usage(format!("{text:?}: use a number with K, M, G or T"));
    let (digits, unit) = match text.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => text.split_at(i),
        None => (text, ""),
    };
    let number: u64 = digits.parse().map_err(|_| unusable())?;
    let multiplier: u64 = match unit.to_ascii_uppercase().trim_end_matches(['B', 'I']) {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        "T" => 1 << 40,
        _ => return Err(unusable()),
    };
    number
        .checked_mul(multiplier)
        .ok_or_else(|| RegistryError::Usage(format!("{text:?} is too large")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512").unwrap(), 512);
        assert_eq!(parse_size("2G").unwrap(), 2 << 30);
        assert_eq!(parse_size("16MiB").unwrap(), 16 << 20);
        assert!(parse_size("2X").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("99999999999T").is_err());
    }
}
