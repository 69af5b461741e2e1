//! The Reposure operator: a surrogate next to every Registry.
//!
//! * [`endpoint`]: how a Registry's spec becomes the URL the surrogate uses (HTTP or HTTPS).
//! * [`workload`]: the surrogate Deployment kept next to each Registry.
//! * [`reconcile`] and [`controller`]: the operator (`reposure-operator run`).
//! * [`objects`]: building blocks of the Deployments.
//! * [`manifests`]: what installing the operator applies (CRD, RBAC, Deployment).
//!
//! The `Registry` resource itself, and the client side that finds a Registry's surrogate
//! pod, are in `reposure-client`, which the mount and the CLI share without this crate.
//! The API calls of the reconciler are asserted against a mock API server (`tests/`), and
//! the client side runs end to end against an emulated API server in `reposure-tests`.
//! See `KUBERNETES.md` for what was and was not tested against a real cluster.

pub mod controller;
pub mod endpoint;
pub mod manifests;
pub mod objects;
pub mod reconcile;
pub mod workload;
