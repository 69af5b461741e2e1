//! The documents and byte layouts that registries and their clients exchange.
//!
//! * [`media_types`]: the media-type strings, in one place.
//! * [`manifest`]: serde types for manifests, indexes and the image config.
//! * [`single_file`]: how Reposure stores one file as an image or an artifact, and how any
//!   single-file image (ours, ORAS's, umoci's, the original Go Reposure's) is read back as
//!   the file's bytes.
//! * [`tar_probe`]: finding the one regular file in a tar layer from its first bytes.

pub mod archive;
pub mod manifest;
pub mod media_types;
pub mod single_file;
pub mod tar_probe;
