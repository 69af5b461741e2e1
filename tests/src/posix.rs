//! What a program sees of the filesystem: errno values, and a `close()` whose error is
//! not thrown away (std's `File` ignores it on drop).

use std::path::Path;

/// The errno of a failed operation; panics if it succeeded.
pub fn errno_of<T>(result: std::io::Result<T>) -> i32 {
    match result {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.raw_os_error().expect("an errno"),
    }
}

/// close() by hand, returning its errno.
pub fn close(file: std::fs::File) -> Result<(), i32> {
    use std::os::fd::IntoRawFd;
    let fd = file.into_raw_fd();
    // SAFETY: fd is owned here and closed once.
    match unsafe { libc::close(fd) } {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0)),
    }
}

/// Creates `path`, writes `bytes` and closes it: the errno of whichever step failed.
pub fn write_and_close(path: &Path, bytes: &[u8]) -> Result<(), i32> {
    let errno = |e: std::io::Error| e.raw_os_error().unwrap_or(0);
    let mut file = std::fs::File::create(path).map_err(errno)?;
    std::io::Write::write_all(&mut file, bytes).map_err(errno)?;
    close(file)
}

/// The names in a directory, sorted.
pub fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}
