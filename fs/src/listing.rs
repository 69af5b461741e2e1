//! A directory's entries as `opendir` saw them, held compactly.
//!
//! A registry can hold hundreds of thousands of tags in one repository, all in one
//! directory. Each entry here is its name's bytes in one shared buffer plus 16 bytes
//! (where it ends, its inode number, its kind), so a listing of 200,000 tags is about 7 MB
//! however long the registry's names are, and `readdir` walks it without copying.
//!
//! Files are shown with a number derived from their name ([`listed_ino`]) rather than an
//! inode the mount keeps: the kernel takes inodes from `lookup`, never from a plain
//! `readdir`, so a listing costs no inode table entry per name.

use std::hash::{Hash, Hasher};

use crate::filesystem::NodeKind;

/// Numbers with this bit set are names' listing numbers; the inode table counts up from 1
/// and never reaches it.
const LISTED_INO_BIT: u64 = 1 << 63;

/// The number `readdir` shows for file `name` in directory `dir`: stable for the name, in a
/// range the inode table never hands out.
pub fn listed_ino(dir: &str, name: &str) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (dir, name).hash(&mut hasher);
    LISTED_INO_BIT | (hasher.finish() >> 1)
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    /// Where the name ends in the buffer (it starts where the previous one ends).
    end: u32,
    ino: u64,
    kind: NodeKind,
}

/// Entries sorted by name, their names in one buffer.
#[derive(Debug, Default)]
pub struct Listing {
    names: String,
    entries: Vec<Entry>,
}

impl Listing {
    /// Builds a listing from entries in any order; of two entries with one name the first
    /// stays.
    pub fn from_entries(mut entries: Vec<(String, u64, NodeKind)>) -> Self {
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        entries.dedup_by(|later, earlier| later.0 == earlier.0);
        let bytes = entries.iter().map(|(name, ..)| name.len()).sum();
        let mut listing = Self {
            names: String::with_capacity(bytes),
            entries: Vec::with_capacity(entries.len()),
        };
        for (name, ino, kind) in entries {
            listing.names.push_str(&name);
            listing.entries.push(Entry {
                end: u32::try_from(listing.names.len()).expect("listing under 4 GiB"),
                ino,
                kind,
            });
        }
        listing
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Entry `index`: its name, inode number and kind.
    pub fn get(&self, index: usize) -> Option<(&str, u64, NodeKind)> {
        let entry = self.entries.get(index)?;
        let start = match index {
            0 => 0,
            _ => self.entries[index - 1].end as usize,
        };
        Some((
            &self.names[start..entry.end as usize],
            entry.ino,
            entry.kind,
        ))
    }

    /// Every entry from `index` on.
    pub fn from(&self, index: usize) -> impl Iterator<Item = (&str, u64, NodeKind)> {
        (index..self.len()).filter_map(|i| self.get(i))
    }

    /// Where `name` is.
    pub fn position(&self, name: &str) -> Option<usize> {
        let (mut low, mut high) = (0, self.len());
        while low < high {
            let middle = (low + high) / 2;
            let (found, ..) = self.get(middle)?;
            match found.cmp(name) {
                std::cmp::Ordering::Less => low = middle + 1,
                std::cmp::Ordering::Greater => high = middle,
                std::cmp::Ordering::Equal => return Some(middle),
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_sorted_unique_and_found() {
        let listing = Listing::from_entries(vec![
            ("b:v1".into(), 7, NodeKind::File),
            ("a".into(), 2, NodeKind::Directory),
            ("b".into(), 5, NodeKind::File),
            ("a".into(), 9, NodeKind::File),
        ]);
        let all: Vec<_> = listing.from(0).collect();
        assert_eq!(
            all,
            [
                ("a", 2, NodeKind::Directory),
                ("b", 5, NodeKind::File),
                ("b:v1", 7, NodeKind::File)
            ]
        );
        assert_eq!(listing.position("b:v1"), Some(2));
        assert_eq!(listing.position("c"), None);
        assert_eq!(listing.from(2).count(), 1);
    }

    #[test]
    fn listed_numbers_are_stable_and_apart_from_the_inode_table() {
        assert_eq!(listed_ino("d", "x"), listed_ino("d", "x"));
        assert_ne!(listed_ino("d", "x"), listed_ino("d", "y"));
        assert!(listed_ino("", "x") & LISTED_INO_BIT != 0);
    }
}
