//! The surrogate: Reposure's server next to a registry, and the session protocol that
//! reaches it.
//!
//! * [`session`]: every `reposure_registry::Registry` operation carried over one byte
//!   stream (a child's stdin/stdout, a Kubernetes exec channel, an in-memory pipe): the
//!   server, the client (itself a `Registry`), the wire documents and the transports.
//! * [`spool`]: pushes accepted into a spool directory and published by the spooler, so a
//!   push survives a lost session; also the original Reposure's file protocol.
//!
//! The `reposure-surrogate` binary serves a session (`serve --stdio`), runs the spooler,
//! answers probes, and offers one-shot commands (`list`, `pull`, `push`, `delete`).
//! Registry access itself (stores, formats, credentials) is `reposure-registry`.

pub mod session;
pub mod spool;
