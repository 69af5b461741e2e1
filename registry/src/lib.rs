//! Registry access for Reposure: the client library every other crate stands on.
//!
//! Layered so that each module has one job, lowest first:
//!
//! * [`names`]: repository and tag rules (the distribution spec's grammar), checked before
//!   any request is made so that a bad name gets a clear error instead of a 400.
//! * [`digest`]: content digests and streaming verification.
//! * [`formats`]: the OCI/Docker JSON documents, how a single file is stored as an image or
//!   an ORAS-style artifact, and how a stored image is read back as one file.
//! * [`auth`]: authentication for every HTTP request: Basic, and distribution's token
//!   protocol with tokens per scope.
//! * [`credentials`]: where registry credentials come from (files named by the user, a
//!   Docker config), read in one place for every front end.
//! * [`store`]: the [`store::Store`] trait, a registry at the level of manifests and blobs:
//!   HTTP(S) ([`store::http`]) and a local OCI image layout ([`store::layout`]); with the
//!   `testing` feature also an in-memory store with request counters and a
//!   fault-injecting wrapper.
//! * [`operations`]: the [`Registry`] trait, the operations a filesystem needs (list,
//!   resolve, read, push, delete), implemented once over any store by
//!   [`operations::StoreRegistry`]. A surrogate session implements the same trait, which
//!   is why it is kept at the level of filesystem operations.
//! * [`direct`]: `oci:PATH` and `http(s)://HOST` as arguments, opened with the user's
//!   options.
//! * [`import`]: image archives (Docker and OCI, gzip or not) pushed as the image they hold.
//! * [`push`] and [`pull`]: the one way every front end pushes a local file or archive and
//!   pulls an image or its file.
//! * [`scratch`]: files that have no name until complete, so a killed process leaves none.
//! * [`units`]: sizes as options write them.
//! * `logging` (feature `logging`): the one logging setup of the binaries.

pub mod auth;
pub mod credentials;
pub mod digest;
pub mod direct;
pub mod error;
pub mod formats;
pub mod import;
#[cfg(feature = "logging")]
pub mod logging;
pub mod names;
pub mod operations;
pub mod pull;
pub mod push;
pub mod scratch;
pub mod store;
pub mod units;

pub use error::{RegistryError, Result};
pub use operations::Registry;

/// A stream of byte chunks, the unit of every transfer in this crate.
pub type ByteStream = futures::stream::BoxStream<'static, Result<bytes::Bytes>>;
