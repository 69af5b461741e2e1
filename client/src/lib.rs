//! What the front ends (`reposure-mount`, `reposure`) share to reach a registry.
//!
//! * [`source`]: the `SOURCE`/`REGISTRY` argument (`oci:`, `http(s)://`, `exec:`, a
//!   Kubernetes Registry by `[NAMESPACE/]NAME`) and the one place that opens it.
//! * [`kubernetes`]: the client side of a cluster: kubeconfig, finding a Registry's ready
//!   surrogate pod, and the exec connector that carries a surrogate session.
//! * [`exec`]: the exec API's WebSocket as one byte stream, in large messages.
//! * [`resource`]: the `Registry` custom resource, shared with the operator that
//!   reconciles it.
//!
//! The operator is not a dependency: the mount needs none of its reconcile logic.

pub mod exec;
pub mod kubernetes;
pub mod resource;
pub mod source;
