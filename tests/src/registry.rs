//! The reference registry (Debian's `docker-registry`, distribution 2.8) on 127.0.0.1,
//! plain or TLS, open, with htpasswd (Basic) auth, or with token auth against a
//! [`TokenServer`] ([`TokenRegistry`]).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::token_server::{TokenServer, TokenServerConfig};
use crate::{free_port, wait_until};

/// How to configure a registry.
#[derive(Debug, Clone, Default)]
pub struct RegistryConfig {
    /// Serve HTTPS with a certificate from a CA made for this registry.
    pub tls: bool,
    /// Require these Basic credentials (htpasswd).
    pub credentials: Option<(String, String)>,
    /// Refuse deletes with 405.
    pub delete_disabled: bool,
    /// Require bearer tokens from a token server (`auth: token`); exclusive with
    /// `credentials`.
    pub token: Option<TokenAuth>,
}

/// The registry's `auth: token` settings.
#[derive(Debug, Clone)]
pub struct TokenAuth {
    /// The token endpoint the registry's challenges name.
    pub realm: String,
    /// The registry's service name: the tokens' `aud`.
    pub service: String,
    /// The tokens' `iss`.
    pub issuer: String,
    /// PEM certificates whose keys sign the tokens.
    pub rootcertbundle: PathBuf,
}

/// A running registry; stopped and its storage removed on drop.
pub struct Registry {
    pub port: u16,
    pub dir: tempfile::TempDir,
    config: RegistryConfig,
    child: Option<Child>,
}

impl Registry {
    /// A plain-HTTP registry with deletion enabled.
    pub fn start() -> Self {
        Self::start_with(RegistryConfig::default())
    }

    /// A registry with the given configuration.
    pub fn start_with(config: RegistryConfig) -> Self {
        let dir = tempfile::tempdir().expect("registry dir");
        let port = free_port();
        let mut registry = Self {
            port,
            dir,
            config,
            child: None,
        };
        registry.write_config();
        registry.resume();
        registry
    }

    /// `http://127.0.0.1:PORT` or `https://...`.
    pub fn url(&self) -> String {
        let scheme = if self.config.tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// `127.0.0.1:PORT`, as skopeo's `docker://` wants it.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The CA certificate (PEM) that verifies a TLS registry.
    pub fn ca_path(&self) -> PathBuf {
        self.dir.path().join("tls/ca.pem")
    }

    fn write_config(&self) {
        let root = self.dir.path();
        let mut yaml = format!(
            "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: {}\nhttp:\n  addr: 127.0.0.1:{}\n",
            root.join("data").display(),
            !self.config.delete_disabled,
            self.port
        );
        if self.config.tls {
            make_tls(&root.join("tls"));
            yaml.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                root.join("tls/server.pem").display(),
                root.join("tls/server.key").display()
            ));
        }
        if let Some((user, password)) = &self.config.credentials {
            let hash = bcrypt::hash(password, 5).expect("bcrypt");
            std::fs::write(root.join("htpasswd"), format!("{user}:{hash}\n")).expect("htpasswd");
            yaml.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: reposure-test\n    path: {}\n",
                root.join("htpasswd").display()
            ));
        }
        if let Some(token) = &self.config.token {
            assert!(
                self.config.credentials.is_none(),
                "a registry has one auth: htpasswd or token"
            );
            yaml.push_str(&format!(
                "auth:\n  token:\n    realm: \"{}\"\n    service: \"{}\"\n    issuer: \"{}\"\n    rootcertbundle: {}\n",
                token.realm,
                token.service,
                token.issuer,
                token.rootcertbundle.display()
            ));
        }
        std::fs::write(root.join("config.yml"), yaml).expect("registry config");
    }

    /// Stops the registry (its storage stays).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the registry again on the same port and storage.
    pub fn resume(&mut self) {
        assert!(self.child.is_none(), "registry already running");
        let log =
            std::fs::File::create(self.dir.path().join("registry.log")).expect("registry log");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(self.dir.path().join("config.yml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start docker-registry (apt-get install docker-registry)");
        self.child = Some(child);
        let port = self.port;
        let up = wait_until(Duration::from_secs(15), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        assert!(up, "registry did not start: {}", self.log());
    }

    /// The registry's log (including its access log).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A registry with token auth and its token server; the registry stops first on drop.
pub struct TokenRegistry {
    pub registry: Registry,
    pub tokens: TokenServer,
}

impl TokenRegistry {
    /// A plain-HTTP registry whose tokens come from a new token server with these users
    /// (name, password); anonymous requests get pull tokens if `anonymous_pull`.
    pub fn start(users: &[(&str, &str)], anonymous_pull: bool) -> Self {
        Self::start_with(
            TokenServerConfig {
                users: users
                    .iter()
                    .map(|(u, p)| ((*u).to_owned(), (*p).to_owned()))
                    .collect(),
                anonymous_pull,
                ..Default::default()
            },
            RegistryConfig::default(),
        )
    }

    /// A token server with `tokens`, and a registry with `registry` and token auth
    /// pointing at that server (`registry.token` is replaced).
    pub fn start_with(tokens: TokenServerConfig, registry: RegistryConfig) -> Self {
        let tokens = TokenServer::start(tokens);
        let registry = Registry::start_with(RegistryConfig {
            token: Some(tokens.token_auth()),
            ..registry
        });
        Self { registry, tokens }
    }

    /// The registry's URL.
    pub fn url(&self) -> String {
        self.registry.url()
    }

    /// The registry's `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        self.registry.host()
    }
}

/// A CA and a server certificate for 127.0.0.1, made with the openssl command.
fn make_tls(dir: &Path) {
    std::fs::create_dir_all(dir).expect("tls dir");
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=reposure test CA",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .expect("ext");
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
}
