//! Registry access for Reposure.
//!
//! This crate holds everything about talking to a container registry, layered so that
//! each layer has one job:
//!
//! * [`names`]: repository and tag rules (the distribution spec's grammar), checked before
//!   any request is made so that a bad name gets a clear error instead of a 400.
//! * [`digest`]: content digests and streaming verification.
//! * [`formats`]: the OCI/Docker JSON documents, how a single file is stored as an image or
//!   an ORAS-style artifact, and how a stored image is read back as one file.
//! * [`store`]: the [`store::Store`] trait, a registry at the level of manifests and blobs,
//!   with three implementations: HTTP(S) ([`store::http`]), a local OCI image layout
//!   ([`store::layout`]) and an in-memory store with request counters ([`store::memory`]).
//! * [`registry`]: the [`registry::Registry`] trait, the operations a filesystem needs
//!   (list, resolve, read, push, delete), implemented once over any store by
//!   [`registry::StoreRegistry`]. A later transport (a surrogate session) implements the
//!   same trait, which is why it is kept at the level of filesystem operations.
//! * [`scratch`]: files that have no name until complete, so a killed process leaves none.

pub mod digest;
pub mod docker_config;
pub mod error;
pub mod formats;
pub mod import;
pub mod names;
pub mod registry;
pub mod scratch;
pub mod session;
pub mod source;
pub mod spool;
pub mod store;

pub use error::{RegistryError, Result};

/// A stream of byte chunks, the unit of every transfer in this crate.
pub type ByteStream = futures::stream::BoxStream<'static, Result<bytes::Bytes>>;
