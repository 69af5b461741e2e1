//! Which process a request comes from.
//!
//! A `close()` pushes what was written only when it comes from the process that opened the
//! file. The kernel sends a flush for every close of every copy of a descriptor, and copies
//! are closed by processes that merely inherited one: a child forked by another thread of
//! the writer closes its copies when it execs (`O_CLOEXEC`), and a child handed the
//! descriptor closes it when it exits — possibly long before the writer has written
//! everything, so a push then would tag partial content. (Mountpoint for Amazon S3 makes
//! the same distinction for the same reason.)
//!
//! The kernel names the calling *thread* in each request, so processes are compared by
//! thread-group id, read from `/proc` only when the ids differ. Where `/proc` does not show
//! a caller (a pid namespace the mount cannot see, where the kernel reports 0 for every
//! caller, or `/proc` mounted with `hidepid=`), the two are taken to be the same process:
//! every close then pushes, as it would without this rule, rather than a close from another
//! thread of the writer (Go, Java and tokio programs close on any thread) pushing nothing.

/// The process of a request, as the kernel named it (a thread id).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    pid: u32,
}

impl Caller {
    /// The caller the kernel named.
    pub fn new(pid: u32) -> Self {
        Self { pid }
    }

    /// This process: for callers of the core that are not the kernel (tests, tools).
    pub fn this_process() -> Self {
        Self::new(std::process::id())
    }

    /// Whether `other` is a thread of the same process (or either cannot be told apart).
    pub fn same_process(&self, other: &Caller) -> bool {
        if self.pid == other.pid {
            return true;
        }
        match (thread_group(self.pid), thread_group(other.pid)) {
            (Some(mine), Some(theirs)) => mine == theirs,
            _ => true,
        }
    }

    /// The id the kernel gave, for logs.
    pub fn pid(&self) -> u32 {
        self.pid
    }
}

/// The thread-group id of a thread, from `/proc/PID/status`.
fn thread_group(pid: u32) -> Option<u32> {
    if pid == 0 {
        return None;
    }
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("Tgid:"))
        .and_then(|tgid| tgid.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads_of_one_process_are_the_same_process() {
        let here = Caller::this_process();
        // `/proc/thread-self` is `PID/task/TID`.
        let thread_id = || -> u32 {
            let link = std::fs::read_link("/proc/thread-self").unwrap();
            link.file_name().unwrap().to_str().unwrap().parse().unwrap()
        };
        let thread = std::thread::spawn(move || Caller::new(thread_id()))
            .join()
            .unwrap();
        assert_ne!(here.pid(), thread.pid());
        assert!(here.same_process(&thread));
    }

    #[test]
    fn a_child_is_another_process() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let other = Caller::new(child.id());
        let same = Caller::this_process().same_process(&other);
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!same);
    }

    #[test]
    fn callers_nobody_can_look_up_count_as_the_same_process() {
        // pid 0: the caller is in a pid namespace the mount cannot see.
        assert!(Caller::new(0).same_process(&Caller::new(0)));
        assert!(Caller::new(0).same_process(&Caller::this_process()));
    }
}
