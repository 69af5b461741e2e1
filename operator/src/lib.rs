//! Reposure on Kubernetes.
//!
//! * [`resource`]: the `Registry` custom resource and its generated CRD.
//! * [`endpoint`]: how a Registry's spec becomes the URL the surrogate uses (HTTP or HTTPS).
//! * [`workload`]: the surrogate Deployment kept next to each Registry.
//! * [`reconcile`] and [`controller`]: the operator (`reposure-operator run`).
//! * [`objects`]: building blocks of the Deployments.
//! * [`manifests`]: what installing the operator applies (CRD, RBAC, Deployment).
//! * [`cluster`]: the client side, from `[NAMESPACE/]NAME` to a surrogate session through
//!   the pods/exec API ([`cluster::KubeExec`]).
//!
//! The API calls of the reconciler are asserted against a mock API server (`tests/`), and
//! the client side runs end to end against an emulated API server in `reposure-tests`.
//! See `KUBERNETES.md` for what was and was not tested against a real cluster.

pub mod cluster;
pub mod controller;
pub mod endpoint;
pub mod manifests;
pub mod objects;
pub mod reconcile;
pub mod resource;
pub mod workload;
