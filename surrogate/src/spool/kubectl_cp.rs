//! `kubectl cp FILE POD:/spool/NAME` into a surrogate whose image has no `tar`.
//!
//! The original Reposure's clients, and its users, dropped files into the surrogate's spool
//! with `kubectl cp`, which runs two commands in the container: `test -d DEST` (to learn
//! whether DEST is a directory), then `tar -xmf - -C DIR` (with `--no-same-permissions
//! --no-same-owner` for `--no-preserve`), fed a tar of the file renamed to DEST's base name.
//! The surrogate image is distroless, so `reposure-surrogate` answers as both when it is
//! called `tar` or `test` (the image links those names to it):
//!
//! * Only the spool is written: `-C /spool` (the original's path, whatever this spool's
//!   path is) or this spool's own path. Anything else is refused, as are directories,
//!   links, and names that leave the spool.
//! * The original names a repository path's `/` as `\` in spool file names, but kubectl
//!   turns every `\` of a remote path into `/` before it runs `tar`. So a subdirectory of
//!   the spool stands for that prefix: `kubectl cp F POD:/spool/myrepo/hello:v1` runs
//!   `tar -x -C /spool/myrepo` with the entry `hello:v1`, which lands as `myrepo\hello:v1`.
//! * Each file is written as `NAME~` (which the spooler leaves alone as still being
//!   written), made durable, and only then renamed to `NAME`: the spooler never sees part
//!   of a file, whatever `kubectl cp` was cut off by.
//! * The spooler then publishes it by the original's naming rules ([`super::legacy`]).
//!
//! Copying out of the pod (`kubectl cp POD:/spool/x .`, which runs `tar cf -`) is not
//! offered: pull images with `reposure image pull` or the mount.

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};

use super::legacy::{self, LegacyEntry};

/// Where the original Reposure's surrogate kept its spool, and where `kubectl cp` users
/// copy to.
pub const ORIGINAL_SPOOL: &str = "/spool";

/// Exit codes: as GNU tar and test use them.
const FAILED: i32 = 2;
const FALSE: i32 = 1;

/// Why a `kubectl cp` cannot be taken.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error(
        "this container's tar only extracts into the spool, for kubectl cp FILE POD:{ORIGINAL_SPOOL}/NAME ({0})"
    )]
    Usage(String),
    #[error(
        "{0}: the spool takes single files named as images (kubectl cp FILE POD:{ORIGINAL_SPOOL}/REPOSITORY:TAG, with \\ for /)"
    )]
    NotAFile(String),
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// The path under the spool that `path` names, under [`ORIGINAL_SPOOL`] or under `spool`
/// itself, as its components (none for the spool itself).
fn in_spool(path: &Path, spool: &Path) -> Option<Vec<String>> {
    let rest = path
        .strip_prefix(ORIGINAL_SPOOL)
        .or_else(|_| path.strip_prefix(spool))
        .ok()?;
    rest.components()
        .map(|c| match c {
            Component::Normal(part) => Some(part.to_string_lossy().into_owned()),
            _ => None,
        })
        .collect()
}

/// The spool file name that a path under the spool stands for: its components joined by
/// the original's `\` for `/`.
fn spool_name(components: &[String]) -> String {
    components.join("\\")
}

/// `tar ARGS` as kubectl cp runs it, reading the archive from `input`; the exit code.
pub fn tar(args: &[OsString], spool: &Path, input: impl Read) -> i32 {
    match extract(args, spool, input) {
        Ok(names) => {
            for name in names {
                tracing::info!(name, "kubectl cp: a file was copied into the spool");
            }
            0
        }
        Err(e) => {
            eprintln!("tar: {e}");
            FAILED
        }
    }
}

/// What `tar`'s arguments ask: the directory to extract into.
fn extraction_dir(args: &[OsString]) -> Result<PathBuf, CopyError> {
    let mut args = args.iter().map(|a| a.to_string_lossy().into_owned());
    let (mut extract, mut from_stdin, mut dir) = (false, false, None);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--no-same-permissions" | "--no-same-owner" => {}
            "-C" | "--directory" => dir = args.next(),
            "-" => from_stdin = true,
            flags if !flags.starts_with("--") => {
                for flag in flags.trim_start_matches('-').chars() {
                    match flag {
                        'x' => extract = true,
                        'm' | 'v' | 'o' | 'p' => {}
                        'f' => from_stdin = args.next().as_deref() == Some("-"),
                        other => return Err(CopyError::Usage(format!("option -{other}"))),
                    }
                }
            }
            other => return Err(CopyError::Usage(format!("option {other}"))),
        }
    }
    if !extract || !from_stdin {
        return Err(CopyError::Usage(
            "only `tar -xf -` (extraction from standard input) is offered".into(),
        ));
    }
    Ok(PathBuf::from(dir.unwrap_or_else(|| ".".into())))
}

fn extract(args: &[OsString], spool: &Path, input: impl Read) -> Result<Vec<String>, CopyError> {
    let dir = extraction_dir(args)?;
    let prefix =
        in_spool(&dir, spool).ok_or_else(|| CopyError::Usage(format!("not {}", dir.display())))?;
    let mut archive = tar::Archive::new(input);
    let mut copied = Vec::new();
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.into_owned();
        let shown = path.display().to_string();
        let name = match path.components().collect::<Vec<_>>()[..] {
            [] | [Component::CurDir] => continue,
            [Component::Normal(name)] => {
                let mut components = prefix.clone();
                components.push(name.to_string_lossy().into_owned());
                spool_name(&components)
            }
            _ => return Err(CopyError::NotAFile(shown)),
        };
        if !entry.header().entry_type().is_file()
            || matches!(
                legacy::classify(&name),
                LegacyEntry::Temp | LegacyEntry::NotLegacy
            )
        {
            return Err(CopyError::NotAFile(shown));
        }
        write_whole(spool, &name, &mut entry)?;
        copied.push(name);
    }
    Ok(copied)
}

/// Writes `content` as `dir/NAME~`, durably, then renames it to `dir/NAME`.
fn write_whole(dir: &Path, name: &str, content: &mut impl Read) -> io::Result<()> {
    let partial = dir.join(format!("{name}~"));
    let mut file = File::create(&partial)?;
    let written = io::copy(content, &mut file).and_then(|_| file.sync_all());
    if let Err(e) = written {
        let _ = std::fs::remove_file(&partial);
        return Err(e);
    }
    std::fs::rename(&partial, dir.join(name))?;
    File::open(dir)?.sync_all()
}

/// `test ARGS` as kubectl cp runs it (`test -d DEST`): 0 true, 1 false, 2 not offered.
pub fn test(args: &[OsString], spool: &Path) -> i32 {
    let args: Vec<String> = args
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let [operator, path] = &args[..] else {
        eprintln!("test: only `test -d|-e|-f PATH` is offered");
        return FAILED;
    };
    let Some(components) = in_spool(Path::new(path), spool) else {
        return FALSE;
    };
    let path = if components.is_empty() {
        spool.to_path_buf()
    } else {
        spool.join(spool_name(&components))
    };
    let holds = match operator.as_str() {
        "-d" => path.is_dir(),
        "-e" => path.exists(),
        "-f" => path.is_file(),
        other => {
            eprintln!("test: {other} is not offered (only -d, -e and -f)");
            return FAILED;
        }
    };
    if holds { 0 } else { FALSE }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    fn archive(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (name, data) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            builder.append_data(&mut header, name, *data).unwrap();
        }
        builder.into_inner().unwrap()
    }

    #[test]
    fn kubectl_cp_lands_whole_files_in_the_spool() {
        let spool = tempfile::tempdir().unwrap();
        let tar_input = archive(&[("myrepo\\hello:v1", b"hello")]);
        let code = tar(
            &args(&["-xmf", "-", "-C", "/spool"]),
            spool.path(),
            &tar_input[..],
        );
        assert_eq!(code, 0);
        assert_eq!(
            std::fs::read(spool.path().join("myrepo\\hello:v1")).unwrap(),
            b"hello"
        );
        assert!(!spool.path().join("myrepo\\hello:v1~").exists());
        // What kubectl runs for `kubectl cp F POD:/spool/myrepo/hello:v2`.
        assert_eq!(
            test(&args(&["-d", "/spool/myrepo/hello:v2"]), spool.path()),
            FALSE
        );
        let nested = archive(&[("hello:v2", b"two")]);
        let code = tar(
            &args(&["-xmf", "-", "-C", "/spool/myrepo"]),
            spool.path(),
            &nested[..],
        );
        assert_eq!(code, 0);
        assert_eq!(
            std::fs::read(spool.path().join("myrepo\\hello:v2")).unwrap(),
            b"two"
        );
        let no_preserve = archive(&[("web.tar.gz", b"\x1f\x8b")]);
        let code = tar(
            &args(&[
                "--no-same-permissions",
                "--no-same-owner",
                "-xmf",
                "-",
                "-C",
                &spool.path().display().to_string(),
            ]),
            spool.path(),
            &no_preserve[..],
        );
        assert_eq!(code, 0);
        assert!(spool.path().join("web.tar.gz").is_file());
    }

    #[test]
    fn anything_but_a_file_into_the_spool_is_refused() {
        let spool = tempfile::tempdir().unwrap();
        let one = archive(&[("a", b"x")]);
        for (arguments, input) in [
            (args(&["-xmf", "-", "-C", "/etc"]), one.clone()),
            (args(&["-xmf", "-", "-C", "/spool/../etc"]), one.clone()),
            (args(&["-cf", "-", "/spool/a"]), Vec::new()),
            (
                args(&["-xmf", "-", "-C", "/spool"]),
                archive(&[("dir/a", b"x")]),
            ),
            (
                args(&["-xmf", "-", "-C", "/spool"]),
                archive(&[(".hidden", b"x")]),
            ),
            (
                args(&["-xmf", "-", "-C", "/spool"]),
                archive(&[("x.push", b"x")]),
            ),
        ] {
            assert_eq!(
                tar(&arguments, spool.path(), &input[..]),
                FAILED,
                "{arguments:?}"
            );
        }
        assert_eq!(std::fs::read_dir(spool.path()).unwrap().count(), 0);
    }

    #[test]
    fn test_answers_for_the_spool() {
        let spool = tempfile::tempdir().unwrap();
        std::fs::write(spool.path().join("img"), b"x").unwrap();
        assert_eq!(test(&args(&["-d", "/spool"]), spool.path()), 0);
        assert_eq!(test(&args(&["-d", "/spool/img"]), spool.path()), FALSE);
        assert_eq!(test(&args(&["-f", "/spool/img"]), spool.path()), 0);
        assert_eq!(test(&args(&["-e", "/spool/none"]), spool.path()), FALSE);
        assert_eq!(test(&args(&["-d", "/etc"]), spool.path()), FALSE);
        assert_eq!(test(&args(&["-x", "/spool"]), spool.path()), FAILED);
    }
}
