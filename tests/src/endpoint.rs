//! `reposure registry serve` run as a user runs it, in a home of its own: its logins and
//! its `registries.conf` drop-in land there, and the peer tools run with the same home
//! ([`Serve::env`]) find them as they would on the user's machine.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::binary;

pub struct Serve {
    child: Option<Child>,
    /// `127.0.0.1:PORT`.
    pub address: String,
    /// What `-o json` said pods use.
    pub cluster_host: Option<String>,
    home: tempfile::TempDir,
}

impl Serve {
    /// Serves `source` (with `args`, such as `--kubeconfig`, before the command) on a free
    /// loopback port; returns once it listens.
    pub fn start(source: &str, args: &[&str]) -> Self {
        let home = tempfile::Builder::new()
            .prefix("reposure-home-")
            .tempdir()
            .unwrap();
        let mut command = Command::new(binary("reposure"));
        command
            .args(args)
            .args([
                "registry",
                "serve",
                source,
                "--listen",
                "127.0.0.1:0",
                "-o",
                "json",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (key, value) in user_env(home.path()) {
            command.env(key, value);
        }
        for unset in ["DOCKER_CONFIG", "REGISTRY_AUTH_FILE", "XDG_CONFIG_HOME"] {
            command.env_remove(unset);
        }
        let mut child = command.spawn().expect("reposure registry serve");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        if line.is_empty() {
            let output = child.wait_with_output().unwrap();
            panic!(
                "registry serve did not start: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let said: serde_json::Value = serde_json::from_str(&line).expect("-o json");
        Self {
            child: Some(child),
            address: said["listen"].as_str().unwrap().to_owned(),
            cluster_host: said["cluster_host"].as_str().map(str::to_owned),
            home,
        }
    }

    /// The environment of the user who started it (their `HOME` and runtime directory).
    pub fn env(&self) -> Vec<(String, String)> {
        user_env(self.home.path())
    }

    pub fn home(&self) -> &std::path::Path {
        self.home.path()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Stops it as Ctrl-C does (its home stays); returns its exit status and what it said
    /// on stderr.
    pub fn stop(&mut self) -> (std::process::ExitStatus, String) {
        let mut child = self.child.take().expect("still running");
        // SAFETY: kill(2) of our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        let deadline = std::time::Instant::now() + Duration::from_secs(40);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let output = child.wait_with_output().unwrap();
        (
            output.status,
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }
}

fn user_env(home: &std::path::Path) -> Vec<(String, String)> {
    let run = home.join("run");
    std::fs::create_dir_all(&run).unwrap();
    vec![
        ("HOME".into(), home.display().to_string()),
        ("XDG_RUNTIME_DIR".into(), run.display().to_string()),
    ]
}

impl Drop for Serve {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
