//! Finds the one regular file in a tar from the tar's first bytes.
//!
//! Reading a single-file image must not download its whole layer just to learn where the
//! file's bytes start and how many there are: the tar header in the first 512 bytes (or a
//! few more, after directory entries and long-name extensions) says both. The `tar` crate
//! does the parsing; this module only decides what a prefix tells us.

use std::io::Cursor;

/// What the first bytes of a (possibly truncated) tar say about its first regular file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TarProbe {
    /// The first regular file: its data starts `offset` bytes into the tar and is `size`
    /// bytes long; its header gives its permission bits and modification time (seconds).
    File {
        name: String,
        offset: u64,
        size: u64,
        mode: u32,
        mtime: u64,
    },
    /// The prefix ends before the first regular file's header could be read.
    NeedMore,
    /// The first 512 bytes are not a tar header (its checksum does not match).
    NotTar,
    /// A complete tar with no regular file in it.
    NoFile,
}

/// Size of a tar block.
pub const BLOCK: u64 = 512;

/// Probes `prefix`, the first bytes of a tar; `complete` says whether it is the whole tar.
pub fn probe(prefix: &[u8], complete: bool) -> TarProbe {
    if prefix.len() < BLOCK as usize {
        return if complete {
            TarProbe::NotTar
        } else {
            TarProbe::NeedMore
        };
    }
    if !first_header_checksum_matches(&prefix[..BLOCK as usize]) {
        return TarProbe::NotTar;
    }
    let mut archive = tar::Archive::new(Cursor::new(prefix));
    let entries = match archive.entries() {
        Ok(entries) => entries,
        Err(_) => return TarProbe::NotTar,
    };
    for entry in entries {
        let entry = match entry {
            Ok(entry) => entry,
            Err(_) if !complete => return TarProbe::NeedMore,
            Err(_) => return TarProbe::NotTar,
        };
        let header = entry.header();
        if header.entry_type().is_file() {
            let name = entry
                .path()
                .ok()
                .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                .unwrap_or_default();
            return TarProbe::File {
                name,
                offset: entry.raw_file_position(),
                size: entry.size(),
                mode: header.mode().map_or(0o644, |m| m & 0o7777),
                mtime: header.mtime().unwrap_or(0),
            };
        }
    }
    if complete {
        TarProbe::NoFile
    } else {
        TarProbe::NeedMore
    }
}

/// Whether a 512-byte block is a tar header with a valid checksum.
fn first_header_checksum_matches(block: &[u8]) -> bool {
    let header = tar::Header::from_byte_slice(block);
    let Ok(stored) = header.cksum() else {
        return false;
    };
    // The checksum is the byte sum of the header with the checksum field read as spaces.
    let sum: u32 = block
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                u32::from(b' ')
            } else {
                u32::from(b)
            }
        })
        .sum();
    stored == sum
}

/// Rounds a tar data length up to whole blocks.
pub fn padded(size: u64) -> u64 {
    size.div_ceil(BLOCK) * BLOCK
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_with(entries: &[(&str, Option<&[u8]>)]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (name, data) in entries {
            let mut header = tar::Header::new_gnu();
            match data {
                Some(data) => {
                    header.set_entry_type(tar::EntryType::Regular);
                    header.set_size(data.len() as u64);
                    header.set_mode(0o644);
                    builder.append_data(&mut header, name, *data).unwrap();
                }
                None => {
                    header.set_entry_type(tar::EntryType::Directory);
                    header.set_size(0);
                    header.set_mode(0o755);
                    builder
                        .append_data(&mut header, name, std::io::empty())
                        .unwrap();
                }
            }
        }
        builder.into_inner().unwrap()
    }

    #[test]
    fn finds_file_after_directories() {
        let tar = tar_with(&[("./", None), ("etc/", None), ("etc/hello.txt", Some(b"hi"))]);
        match probe(&tar, true) {
            TarProbe::File {
                name, offset, size, ..
            } => {
                assert_eq!(name, "hello.txt");
                assert_eq!(size, 2);
                assert_eq!(&tar[offset as usize..offset as usize + 2], b"hi");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn long_names_are_followed() {
        let long = format!("{}/file", "d".repeat(150));
        let tar = tar_with(&[(&long, Some(b"abc"))]);
        let TarProbe::File { offset, size, .. } = probe(&tar, true) else {
            panic!()
        };
        assert_eq!(&tar[offset as usize..(offset + size) as usize], b"abc");
    }

    #[test]
    fn truncated_prefix_asks_for_more() {
        let tar = tar_with(&[("a/", None), ("b/", None), ("a/x", Some(b"x"))]);
        assert_eq!(probe(&tar[..700], false), TarProbe::NeedMore);
        assert_eq!(probe(&tar[..100], false), TarProbe::NeedMore);
    }

    #[test]
    fn raw_bytes_are_not_a_tar() {
        assert_eq!(probe(&[b'x'; 1024], false), TarProbe::NotTar);
    }

    #[test]
    fn directory_only_tar_has_no_file() {
        assert_eq!(probe(&tar_with(&[("a/", None)]), true), TarProbe::NoFile);
    }
}
