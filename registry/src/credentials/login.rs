//! Logins added to the user's credential files for a while, and taken back.
//!
//! `reposure registry serve` makes credentials for its endpoint and adds them where docker
//! and the containers tools (podman, buildah, skopeo) look, so that they log in to it with
//! no flag: Docker's config (`$DOCKER_CONFIG/config.json`, default `~/.docker/config.json`)
//! and the containers tools' own first file (`$REGISTRY_AUTH_FILE`, else
//! `$XDG_RUNTIME_DIR/containers/auth.json`, else `~/.config/containers/auth.json`), the
//! files [`super::USER_CONFIG_ORDER`] reads.
//!
//! Each file is written whole — a new file, mode 0600, renamed over the old one — keeping
//! every other entry and field. An entry is taken back only while it is still the one that
//! was added, so a login the user made meanwhile stays; one it replaced is put back.

use std::path::{Path, PathBuf};

use base64::Engine;
use serde_json::{Map, Value};

use crate::error::{RegistryError, Result};

/// A login added to the user's files.
#[derive(Debug)]
pub struct Login {
    host: String,
    auth: String,
    files: Vec<PathBuf>,
    /// The entry each file had for the host before, to put back.
    replaced: Vec<Option<Value>>,
}

/// The files a login is added to: the containers tools' first, then Docker's.
pub fn login_files() -> Vec<PathBuf> {
    let var = |name: &str| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let home = var("HOME");
    let containers = var("REGISTRY_AUTH_FILE")
        .or_else(|| var("XDG_RUNTIME_DIR").map(|d| d.join("containers/auth.json")))
        .or_else(|| {
            var("XDG_CONFIG_HOME")
                .or_else(|| home.as_ref().map(|h| h.join(".config")))
                .map(|d| d.join("containers/auth.json"))
        });
    let docker = var("DOCKER_CONFIG")
        .or_else(|| home.as_ref().map(|h| h.join(".docker")))
        .map(|d| d.join("config.json"));
    containers.into_iter().chain(docker).collect()
}

impl Login {
    /// Adds `username` and `password` for `host` (`HOST:PORT`) to [`login_files`].
    pub fn add(host: &str, username: &str, password: &str) -> Result<Self> {
        let auth =
            base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
        let files = login_files();
        if files.is_empty() {
            return Err(RegistryError::Usage(
                "no credentials file to log in with: set HOME, DOCKER_CONFIG or REGISTRY_AUTH_FILE"
                    .into(),
            ));
        }
        let mut login = Self {
            host: host.to_owned(),
            auth,
            files: Vec::new(),
            replaced: Vec::new(),
        };
        for file in files {
            let mut replaced = None;
            let added = update(&file, |auths| {
                replaced = auths.insert(
                    login.host.clone(),
                    serde_json::json!({ "auth": login.auth }),
                );
            });
            if let Err(e) = added {
                // Not half logged in: what was added is taken back.
                let _ = login.remove();
                return Err(e);
            }
            login.files.push(file);
            login.replaced.push(replaced);
        }
        Ok(login)
    }

    /// The files the login was added to.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// Takes the login back from every file that still holds it as it was added, putting
    /// back what it replaced.
    pub fn remove(&self) -> Result<()> {
        let mut first_error = None;
        for (file, replaced) in self.files.iter().zip(&self.replaced) {
            let removed = update(file, |auths| {
                if auths.get(&self.host).and_then(|e| e["auth"].as_str())
                    == Some(self.auth.as_str())
                {
                    match replaced {
                        Some(previous) => auths.insert(self.host.clone(), previous.clone()),
                        None => auths.remove(&self.host),
                    };
                }
            });
            if let Err(e) = removed {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// Rewrites the `auths` of the Docker config document at `file` (made if missing).
fn update(file: &Path, change: impl FnOnce(&mut Map<String, Value>)) -> Result<()> {
    let context =
        |e: std::io::Error| RegistryError::Usage(format!("cannot update {}: {e}", file.display()));
    let mut document: Value = match std::fs::read(file) {
        Ok(bytes) if !bytes.iter().all(u8::is_ascii_whitespace) => serde_json::from_slice(&bytes)
            .map_err(|e| {
            RegistryError::Usage(format!(
                "{} is not JSON ({e}); not changing it",
                file.display()
            ))
        })?,
        Ok(_) => Value::Object(Map::new()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Value::Object(Map::new()),
        Err(e) => return Err(context(e)),
    };
    let Some(root) = document.as_object_mut() else {
        return Err(RegistryError::Usage(format!(
            "{} is not a credentials document; not changing it",
            file.display()
        )));
    };
    let auths = root
        .entry("auths")
        .or_insert_with(|| Value::Object(Map::new()));
    if !auths.is_object() {
        *auths = Value::Object(Map::new());
    }
    change(auths.as_object_mut().expect("an object"));
    let dir = file.parent().unwrap_or(Path::new("."));
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(context)?;
    }
    let mut staged = tempfile::Builder::new()
        .prefix(".reposure-login-")
        .tempfile_in(dir)
        .map_err(context)?;
    {
        use std::io::Write;
        use std::os::unix::fs::PermissionsExt;
        staged
            .as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(context)?;
        let bytes = serde_json::to_vec_pretty(&document).expect("JSON serialises");
        staged.write_all(&bytes).map_err(context)?;
        staged.as_file().sync_all().map_err(context)?;
    }
    staged.persist(file).map_err(|e| context(e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_login_is_added_beside_others_and_taken_back_alone() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("docker/config.json");
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(
            &file,
            r#"{"auths": {"ghcr.io": {"auth": "eDp5"}}, "credHelpers": {"gcr.io": "gcloud"}}"#,
        )
        .unwrap();
        let login = Login {
            host: "127.0.0.1:5000".into(),
            auth: "cmVwb3N1cmU6cA==".into(),
            files: vec![file.clone(), dir.path().join("new/auth.json")],
            replaced: vec![Some(serde_json::json!({"auth": "b2xk"})), None],
        };
        for f in login.files() {
            update(f, |auths| {
                auths.insert(login.host.clone(), serde_json::json!({"auth": login.auth}));
            })
            .unwrap();
        }
        let read =
            |f: &Path| -> Value { serde_json::from_slice(&std::fs::read(f).unwrap()).unwrap() };
        let added = read(&file);
        assert_eq!(added["auths"]["127.0.0.1:5000"]["auth"], "cmVwb3N1cmU6cA==");
        assert_eq!(added["auths"]["ghcr.io"]["auth"], "eDp5");
        assert_eq!(added["credHelpers"]["gcr.io"], "gcloud");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("new/auth.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);

        // A login the user made meanwhile in one file stays there.
        update(&dir.path().join("new/auth.json"), |auths| {
            auths.insert(
                "127.0.0.1:5000".into(),
                serde_json::json!({"auth": "b3RoZXI="}),
            );
        })
        .unwrap();
        login.remove().unwrap();
        // The user's own entry for the host, which the login replaced, is back.
        assert_eq!(read(&file)["auths"]["127.0.0.1:5000"]["auth"], "b2xk");
        assert_eq!(read(&file)["auths"]["ghcr.io"]["auth"], "eDp5");
        assert_eq!(
            read(&dir.path().join("new/auth.json"))["auths"]["127.0.0.1:5000"]["auth"],
            "b3RoZXI="
        );
    }
}
