//! Spool names of the original Reposure: files dropped with `kubectl cp` or the Go client.
//!
//! * `NAME~`: a file still being copied; never published.
//! * `NAME!`: delete the image NAME.
//! * `NAME.tar`, `NAME.tar.gz`, `NAME.tgz`: an image archive to push as NAME.
//! * any other `NAME`: a file to push as a single-file image NAME.
//!
//! In NAME, a backslash stands for `/`, and the tag follows the last `:` (default `latest`). Only
//! the suffixes above are stripped, so dots in names and tags survive (`img:1.2` stays
//! `img:1.2`, where the original truncated it to `img:1`). Names ending in this spool's
//! own suffixes (`.push`, `.push~`, `.push.json`, `.verdict`, `.failed`) and dot files are
//! not legacy entries.

use reposure_registry::names::DEFAULT_TAG;

/// What a legacy spool file asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LegacyEntry {
    /// Still being written.
    Temp,
    /// Push the file as a single-file image.
    File { repository: String, tag: String },
    /// Push the image archive.
    Archive { repository: String, tag: String },
    /// Delete the image.
    Delete { repository: String, tag: String },
    /// Not a legacy entry (this spool's own files, dot files).
    NotLegacy,
}

const OWN_SUFFIXES: &[&str] = &[
    ".push",
    ".push~",
    ".push.json",
    ".verdict",
    ".failed",
    ".tmp",
];
const ARCHIVE_SUFFIXES: &[&str] = &[".tar.gz", ".tgz", ".tar"];

/// Classifies a file name found in the spool directory.
pub fn classify(file_name: &str) -> LegacyEntry {
    if file_name.starts_with('.') || OWN_SUFFIXES.iter().any(|s| file_name.ends_with(s)) {
        return LegacyEntry::NotLegacy;
    }
    if file_name.ends_with('~') {
        return LegacyEntry::Temp;
    }
    if let Some(name) = file_name.strip_suffix('!') {
        let (repository, tag) = image_name(name);
        return LegacyEntry::Delete { repository, tag };
    }
    for suffix in ARCHIVE_SUFFIXES {
        if let Some(name) = file_name.strip_suffix(suffix) {
            let (repository, tag) = image_name(name);
            return LegacyEntry::Archive { repository, tag };
        }
    }
    let (repository, tag) = image_name(file_name);
    LegacyEntry::File { repository, tag }
}

/// A spool name (backslashes for slashes, `:TAG` optional) as repository and tag.
pub fn image_name(name: &str) -> (String, String) {
    let name = name.replace('\\', "/");
    match name.rsplit_once(':') {
        Some((repository, tag)) if !tag.contains('/') => (repository.to_owned(), tag.to_owned()),
        _ => (name, DEFAULT_TAG.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(r: &str, t: &str) -> LegacyEntry {
        LegacyEntry::File {
            repository: r.into(),
            tag: t.into(),
        }
    }

    #[test]
    fn dots_in_names_and_tags_survive() {
        assert_eq!(classify("img:1.2"), file("img", "1.2"));
        assert_eq!(classify("my.app:v1.2.3"), file("my.app", "v1.2.3"));
        assert_eq!(classify("ns\\img"), file("ns/img", "latest"));
    }

    #[test]
    fn suffixes_mark_archives_deletes_and_temps() {
        assert_eq!(
            classify("ns\\img:1.2.tar.gz"),
            LegacyEntry::Archive {
                repository: "ns/img".into(),
                tag: "1.2".into()
            }
        );
        assert_eq!(
            classify("img.tgz"),
            LegacyEntry::Archive {
                repository: "img".into(),
                tag: "latest".into()
            }
        );
        assert_eq!(
            classify("img:v1!"),
            LegacyEntry::Delete {
                repository: "img".into(),
                tag: "v1".into()
            }
        );
        assert_eq!(classify("img:v1~"), LegacyEntry::Temp);
    }

    #[test]
    fn own_files_are_not_legacy() {
        for name in [
            "x.push",
            "x.push~",
            "x.push.json",
            "x.verdict",
            "x.failed",
            ".spooler.lock",
        ] {
            assert_eq!(classify(name), LegacyEntry::NotLegacy, "{name}");
        }
    }
}
