//! A registry on localhost for any OCI client: the OCI distribution API served over any
//! [`Store`] — a registry reached directly, a local OCI layout, or, through a surrogate
//! session, a registry inside a Kubernetes cluster reached with nothing but kubectl access.
//!
//! `reposure registry serve REGISTRY` runs it; buildah, podman, docker, skopeo and oras
//! push to and pull from `127.0.0.1:PORT` as from any registry.
//!
//! * [`route`]: distribution API paths, parsed.
//! * [`server`]: authentication and the handlers, one or two store calls each; blobs and
//!   uploads stream both ways, never held whole.
//! * [`uploads`]: blob uploads under way, each a `put_blob` fed as the bytes arrive.
//! * [`error`]: the one table from store errors to API errors.
//!
//! Only the user who started it can use it: it listens on loopback only, and every request
//! must carry the credentials it generated ([`Credentials`]), which the front end writes to
//! that user's own (0600) credential files.

pub mod error;
pub mod route;
pub mod server;
pub mod uploads;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use futures::{Stream, StreamExt};
use http::HeaderValue;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use reposure_registry::error::{RegistryError, Result};
use reposure_registry::store::Store;
use tokio::net::TcpListener;
use tracing::{debug, info};

pub use server::Endpoint;

/// The user name clients log in with.
pub const USER: &str = "reposure";

/// How long requests in flight may go on after a stop was asked for.
pub const DRAIN: Duration = Duration::from_secs(30);

/// The credentials the endpoint accepts: a fixed user and a random password.
#[derive(Clone)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// New credentials: [`USER`] and 32 random alphanumerics.
    pub fn generate() -> Self {
        use rand::distr::{Alphanumeric, SampleString};
        Self {
            username: USER.to_owned(),
            password: Alphanumeric.sample_string(&mut rand::rng(), 32),
        }
    }

    /// The `Authorization` header clients send with them.
    pub fn authorization(&self) -> HeaderValue {
        let basic = base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", self.username, self.password));
        HeaderValue::from_str(&format!("Basic {basic}")).expect("base64 is ASCII")
    }
}

/// Binds `address`, which must be a loopback address (port 0: any free port).
pub async fn bind(address: SocketAddr) -> Result<TcpListener> {
    if !address.ip().is_loopback() {
        return Err(RegistryError::Usage(format!(
            "{address} is not a loopback address: the endpoint serves only this machine (use 127.0.0.1 or [::1])"
        )));
    }
    TcpListener::bind(address)
        .await
        .map_err(|e| RegistryError::Usage(format!("cannot listen on {address}: {e}")))
}

/// Serves `store` on `listener` until `stops` yields, then lets requests in flight finish
/// for up to [`DRAIN`], or until `stops` yields again.
pub async fn serve(
    store: Arc<dyn Store>,
    credentials: &Credentials,
    listener: TcpListener,
    stops: impl Stream<Item = ()>,
) {
    let endpoint = Endpoint::new(store, credentials);
    let graceful = GracefulShutdown::new();
    let builder = hyper::server::conn::http1::Builder::new();
    tokio::pin!(stops);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        debug!(error = %e, "accept failed");
                        continue;
                    }
                };
                let endpoint = endpoint.clone();
                let service = hyper::service::service_fn(move |request| endpoint.clone().handle(request));
                let connection = builder.serve_connection(TokioIo::new(stream), service);
                let watched = graceful.watch(connection);
                tokio::spawn(async move {
                    if let Err(e) = watched.await {
                        debug!(%peer, error = %e, "connection ended");
                    }
                });
            }
            _ = stops.next() => break,
        }
    }
    drop(listener);
    info!("stopping: requests in flight may finish (stop again to cut them off)");
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(DRAIN) => info!("requests still in flight after {DRAIN:?} were cut off"),
        _ = stops.next() => info!("requests in flight were cut off"),
    }
}
