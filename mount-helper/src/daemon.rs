//! Daemonizing so that `mount` returns the right status.
//!
//! The process forks *before* any thread (tokio) starts. The parent waits on a pipe; the
//! child mounts and then writes one line: `ok`, or the error. The parent prints the error
//! and exits with its status, so a failed mount is a failed command, and a successful one
//! returns only once the filesystem is usable.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{FromRawFd, OwnedFd};

use anyhow::{Context, Result};

/// The child's end: reports how mounting went.
pub struct Reporter {
    pipe: Option<File>,
}

impl Reporter {
    /// A reporter for a foreground process (nothing to report to).
    pub fn foreground() -> Self {
        Self { pipe: None }
    }

    /// Reports success and detaches from the terminal.
    pub fn ready(&mut self) {
        if let Some(mut pipe) = self.pipe.take() {
            let _ = pipe.write_all(b"ok\n");
            detach_stdio();
        }
    }

    /// Reports failure: to the waiting parent, which prints it, or on stderr in the
    /// foreground.
    pub fn failed(&mut self, error: &anyhow::Error) {
        match self.pipe.take() {
            Some(mut pipe) => {
                let _ = writeln!(pipe, "{}", one_line(error));
            }
            None => eprintln!("reposure-mount: {}", one_line(error)),
        }
    }
}

/// An error and its causes on one line.
pub fn one_line(error: &anyhow::Error) -> String {
    error
        .chain()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join(": ")
}

/// Forks. Returns in the child with its reporter; the parent never returns (it exits with
/// the child's verdict).
pub fn daemonize() -> Result<Reporter> {
    let mut fds = [0; 2];
    // SAFETY: `fds` is a valid two-element array for pipe(2) to fill.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error()).context("pipe");
    }
    // SAFETY: both descriptors were just created by pipe(2) and are owned here only.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: no other thread exists yet (this runs before the tokio runtime is built), so
    // the child may continue to run arbitrary code.
    match unsafe { libc::fork() } {
        -1 => Err(std::io::Error::last_os_error()).context("fork"),
        0 => {
            drop(read);
            // SAFETY: setsid has no memory-safety preconditions.
            unsafe { libc::setsid() };
            Ok(Reporter {
                pipe: Some(File::from(write)),
            })
        }
        _child => {
            drop(write);
            let mut line = String::new();
            let _ = BufReader::new(File::from(read)).read_line(&mut line);
            match line.trim_end() {
                "ok" => std::process::exit(0),
                "" => {
                    eprintln!(
                        "reposure-mount: the mount process exited before the mount was ready"
                    );
                    std::process::exit(1)
                }
                error => {
                    eprintln!("reposure-mount: {error}");
                    std::process::exit(1)
                }
            }
        }
    }
}

/// Points stdin, stdout and stderr at /dev/null.
fn detach_stdio() {
    if let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        use std::os::fd::AsRawFd;
        for fd in 0..3 {
            // SAFETY: dup2 onto the standard descriptors of this process.
            unsafe { libc::dup2(null.as_raw_fd(), fd) };
        }
    }
}
