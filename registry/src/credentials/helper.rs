//! Docker credential helpers: `docker-credential-NAME get`, the protocol every Docker and
//! containers tool speaks.
//!
//! The server (a host, or Docker Hub's `https://index.docker.io/v1/`) goes to the helper's
//! stdin without a newline; it answers `{"ServerURL", "Username", "Secret"}` on stdout, or
//! exits 1 with `credentials not found in native keychain` when it has nothing. A user name
//! of `<token>` means the secret is an identity token (an OAuth2 refresh token).

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::Credentials;
use crate::error::{RegistryError, Result};

/// How long a helper may take: it may unlock a keychain, but a mount must not hang on it.
const HELPER_TIMEOUT: Duration = Duration::from_secs(10);

/// What helpers answer when they hold nothing for the server.
const NOT_FOUND: &str = "credentials not found in native keychain";

/// The user name meaning "the secret is an identity token".
const TOKEN_USER: &str = "<token>";

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Answer {
    username: String,
    secret: String,
}

/// The program of helper `name`.
pub fn program(name: &str) -> String {
    format!("docker-credential-{name}")
}

/// Asks helper `name` for the credentials of `server`; `None` when it has none.
pub fn get(name: &str, server: &str) -> Result<Option<Credentials>> {
    let program = program(name);
    let mut child = Command::new(&program)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| {
            RegistryError::Usage(format!(
                "the Docker config names the credential helper {program}, which cannot be run ({e}); install it or remove it from the config"
            ))
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        // A helper that exits without reading closes the pipe: its exit status says why.
        let _ = stdin.write_all(server.as_bytes());
    }
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let reader = std::thread::spawn(move || {
        let mut output = Vec::new();
        let _ = stdout.by_ref().take(1 << 20).read_to_end(&mut output);
        output
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if started.elapsed() > HELPER_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            return Err(RegistryError::Unavailable(format!(
                "the credential helper {program} did not answer within {}s",
                HELPER_TIMEOUT.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let output = reader.join().unwrap_or_default();
    let text = String::from_utf8_lossy(&output);
    if !status.success() {
        if text.trim() == NOT_FOUND {
            return Ok(None);
        }
        // The message of a failed helper is not echoed: a broken helper may print anything.
        return Err(RegistryError::Unauthorized(format!(
            "the credential helper {program} failed ({status})"
        )));
    }
    let answer: Answer = serde_json::from_slice(&output).map_err(|_| {
        RegistryError::Corrupt(format!(
            "the credential helper {program} did not answer with {{Username, Secret}}"
        ))
    })?;
    Ok(Some(if answer.username == TOKEN_USER {
        Credentials::IdentityToken(answer.secret)
    } else {
        Credentials::Basic {
            username: answer.username,
            password: answer.secret,
        }
    }))
}
