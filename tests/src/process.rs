//! Processes the tests start, find and kill.

use std::process::Child;

/// A child process killed when the test ends.
pub struct Process(pub Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Pids of `program` processes whose arguments contain every one of `needles`.
pub fn pids_of(program: &str, needles: &[&str]) -> Vec<i32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).into_owned();
        let mut args = cmdline.split('\0');
        if args.next().is_some_and(|argv0| argv0.ends_with(program)) && {
            let rest: Vec<&str> = args.collect();
            needles.iter().all(|n| rest.iter().any(|a| a.contains(n)))
        } {
            pids.push(pid);
        }
    }
    pids
}

/// Every process's command line, as one string per process (for leak checks).
pub fn all_command_lines() -> Vec<String> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .collect()
}

/// `kill -9`.
pub fn kill_9(pid: i32) {
    // SAFETY: kill(2) of a process this test started (directly or through the mount).
    unsafe { libc::kill(pid, libc::SIGKILL) };
}

/// The peak resident memory of a process (the kernel's high-water mark), in KiB.
pub fn peak_rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("the process's status")
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .expect("VmHWM in the status")
}

/// A `reposure-surrogate spooler` on `dir` publishing to `registry_url`, once it holds the
/// spool's lock; stopped when dropped.
pub fn start_spooler(registry_url: &str, dir: &std::path::Path) -> Process {
    let child = std::process::Command::new(crate::binary("reposure-surrogate"))
        .args(["--registry", registry_url, "spooler", "--directory"])
        .arg(dir)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    assert!(crate::wait_until(
        std::time::Duration::from_secs(10),
        || { reposure_surrogate::spool::spooler_running(dir) }
    ));
    Process(child)
}
