//! Paths and registry names.
//!
//! * A repository path segment is a directory: repository `a/b/c` lives in directory `a/b`.
//! * An image is a file named by the repository's last segment. The bare name is the tag
//!   `latest`; other tags are `NAME:TAG`; `NAME:latest` resolves but is not listed.
//! * A name that is both a repository and a prefix of other repositories is a directory;
//!   its tags are then listed as `NAME:TAG`, `latest` included.
//! * Referrers-fallback tags (`sha256-<hex>...`) are hidden (the registry layer drops them).

use std::collections::BTreeSet;

use reposure_registry::names::{self, DEFAULT_TAG};

use crate::errno::{FsError, FsResult};

/// `dir/name`, or `name` at the root.
pub fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_owned()
    } else {
        format!("{dir}/{name}")
    }
}

/// How a file name in `dir` reads: the repository path and the tag (for `NAME:TAG`).
pub fn split_file_name(dir: &str, name: &str) -> (String, Option<String>) {
    match name.split_once(':') {
        Some((base, tag)) => (join(dir, base), Some(tag.to_owned())),
        None => (join(dir, name), None),
    }
}

/// Every file name that can stand for `repository:tag` in its directory: `NAME:TAG`, and
/// the bare `NAME` for `latest`.
pub fn file_names(repository: &str, tag: &str) -> Vec<String> {
    let name = names::base_name(repository);
    let mut names = vec![format!("{name}:{tag}")];
    if tag == DEFAULT_TAG {
        names.push(name.to_owned());
    }
    names
}

/// Validates a name for creating an image in `dir`; returns the repository and tag.
pub fn image_for_create(dir: &str, name: &str) -> FsResult<(String, String)> {
    let (repository, tag) = split_file_name(dir, name);
    let tag = tag.unwrap_or_else(|| DEFAULT_TAG.to_owned());
    check_length(&repository, names::MAX_REPOSITORY_LEN, "a repository path")?;
    check_length(&tag, names::MAX_TAG_LEN, "a tag")?;
    names::check_repository(&repository).map_err(|e| FsError::InvalidName(e.to_string()))?;
    names::check_tag(&tag).map_err(|e| FsError::InvalidName(e.to_string()))?;
    Ok((repository, tag))
}

/// Validates a new directory: `name` is one repository segment, and the whole `path` must
/// still fit a repository name.
pub fn check_new_dir(path: &str, name: &str) -> FsResult<()> {
    check_length(path, names::MAX_REPOSITORY_LEN, "a repository path")?;
    names::check_repository_segment(name).map_err(|e| FsError::InvalidName(e.to_string()))
}

/// Names past the registry's limits are ENAMETOOLONG rather than merely invalid.
fn check_length(name: &str, limit: usize, what: &str) -> FsResult<()> {
    if name.len() > limit {
        return Err(FsError::NameTooLong(format!(
            "{what} may be at most {limit} characters, this one has {}",
            name.len()
        )));
    }
    Ok(())
}

/// The longest file name the kernel takes (`NAME_MAX`).
pub const NAME_MAX: usize = 255;

/// Whether a repository name a registry listed can be shown: a valid repository path
/// (which also keeps `/`-free, non-empty segments other than `.` and `..`, and no control
/// characters), within the length limit.
pub fn listable_repository(repository: &str) -> bool {
    names::check_repository(repository).is_ok()
}

/// Whether a tag a registry listed for `repository` can be shown as a file: a valid tag,
/// whose file name (`NAME:TAG`) fits the kernel's limit.
pub fn listable_tag(repository: &str, tag: &str) -> bool {
    names::check_tag(tag).is_ok() && names::base_name(repository).len() + 1 + tag.len() <= NAME_MAX
}

/// Whether `path` is a directory implied by the catalog (some repository below it).
pub fn is_catalog_dir(path: &str, repositories: &[String]) -> bool {
    path.is_empty() || {
        let prefix = format!("{path}/");
        repositories.iter().any(|r| r.starts_with(&prefix))
    }
}

/// The sub-directories of `dir` implied by the catalog, and the repositories directly in it.
pub fn children(dir: &str, repositories: &[String]) -> (BTreeSet<String>, Vec<String>) {
    let prefix = if dir.is_empty() {
        String::new()
    } else {
        format!("{dir}/")
    };
    let mut dirs = BTreeSet::new();
    let mut images = Vec::new();
    for repository in repositories {
        let Some(rest) = repository.strip_prefix(&prefix) else {
            continue;
        };
        match rest.split_once('/') {
            Some((first, _)) => {
                dirs.insert(first.to_owned());
            }
            None if !rest.is_empty() => images.push(repository.clone()),
            None => {}
        }
    }
    (dirs, images)
}

/// The one name `repository:tag` is listed under in its directory: the bare `NAME` for
/// `latest`, unless `shadowed` (the name is also a directory), else `NAME:TAG`.
pub fn listed_name(repository: &str, tag: &str, shadowed: bool) -> String {
    let name = names::base_name(repository);
    if tag == DEFAULT_TAG && !shadowed {
        name.to_owned()
    } else {
        format!("{name}:{tag}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repos(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn repositories_become_directories_and_files() {
        let r = repos(&["hello", "myrepo/hello", "myrepo/deep/x", "other/y"]);
        let (dirs, images) = children("", &r);
        assert_eq!(dirs.into_iter().collect::<Vec<_>>(), ["myrepo", "other"]);
        assert_eq!(images, ["hello"]);
        let (dirs, images) = children("myrepo", &r);
        assert_eq!(dirs.into_iter().collect::<Vec<_>>(), ["deep"]);
        assert_eq!(images, ["myrepo/hello"]);
        assert!(is_catalog_dir("myrepo/deep", &r));
        assert!(!is_catalog_dir("myrepo/hello", &r));
    }

    #[test]
    fn latest_is_the_bare_name_unless_shadowed_by_a_directory() {
        assert_eq!(listed_name("a/img", "latest", false), "img");
        assert_eq!(listed_name("a/img", "v1.2", false), "img:v1.2");
        assert_eq!(listed_name("a/both", "latest", true), "both:latest");
    }

    #[test]
    fn registry_names_that_cannot_be_file_names_are_not_listable() {
        assert!(listable_repository("a/b"));
        for bad in ["", ".", "..", "a/../b", "a\nb", "A", &"x".repeat(256)] {
            assert!(!listable_repository(bad), "{bad:?}");
        }
        assert!(listable_tag("a/b", "v1"));
        for bad in ["", ".", "..", "a/b", "nul\u{0}", &"t".repeat(129)] {
            assert!(!listable_tag("a/b", bad), "{bad:?}");
        }
        let long_base = "b".repeat(200);
        assert!(!listable_tag(&long_base, &"t".repeat(60)), "past NAME_MAX");
    }

    #[test]
    fn create_names_are_validated() {
        assert_eq!(
            image_for_create("myrepo", "hello:v1.2.3").unwrap(),
            ("myrepo/hello".to_string(), "v1.2.3".to_string())
        );
        assert_eq!(image_for_create("", "x").unwrap().1, "latest");
        for bad in ["Hello", "a b", ".hidden"] {
            assert!(
                matches!(image_for_create("d", bad), Err(FsError::InvalidName(_))),
                "{bad}"
            );
        }
        let long_tag = format!("x:{}", "t".repeat(129));
        let long_path = "d/".repeat(128);
        for long in [
            long_tag.as_str(),
            &format!("{long_path}x"),
            &"r".repeat(256),
        ] {
            assert!(
                matches!(image_for_create("", long), Err(FsError::NameTooLong(_))),
                "{long}"
            );
        }
        assert!(image_for_create("", &"r".repeat(255)).is_ok());
        assert!(check_new_dir(&long_path, "d").is_err());
    }
}
