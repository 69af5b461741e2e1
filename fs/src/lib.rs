//! The Reposure filesystem.
//!
//! Layers, top to bottom:
//!
//! * [`mount`]: the kernel session around the core: mounting, the invalidation thread,
//!   unmounting on a signal, and waiting for the last pushes once unmounted.
//! * [`fuse`]: a thin adapter from `fuser` callbacks to the core. It never waits on the
//!   network: every callback moves its reply into a tokio task and returns at once, so a
//!   slow read cannot stall `ls` of another directory.
//! * [`filesystem`]: the async core. Every operation is an `async fn` returning
//!   [`errno::FsError`], tested without FUSE against an in-memory store.
//! * [`namespace`]: the mapping between paths and registry names (repositories are
//!   directories, images are files, tags are `NAME:TAG`), pure and unit-tested.
//! * [`inode`]: stable inode numbers for the nodes the kernel has seen.
//! * [`listing`]: directory listings held compactly, whatever the registry holds.
//! * [`reader`] and [`writer`]: per-open-file actors that keep reads and writes in the
//!   order the kernel sent them.
//! * [`staged`]: content on the mount's disk: files being written, copied up, or kept.
//! * [`publish`]: the one place a file is pushed, one push per name at a time.
//! * [`local`]: local files, whose names cannot be registry names (temporary files).
//! * [`process`]: which process a request comes from (a `close()` by a process that only
//!   inherited the descriptor does not push).
//! * [`errno`]: the one table from errors to errno values.
//!
//! The contract this implements is `SEMANTICS.md` at the repository root.

mod actor;
pub mod cache;
pub mod errno;
pub mod filesystem;
pub mod fuse;
pub mod inode;
pub mod listing;
pub mod local;
mod metadata;
pub mod mount;
pub mod namespace;
pub mod process;
pub mod publish;
pub mod reader;
pub mod staged;
mod ttl_cache;
pub mod writer;

pub use filesystem::{Attr, Filesystem, FsConfig, NodeKind};
pub use process::Caller;
