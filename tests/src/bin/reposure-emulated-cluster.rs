//! Runs the emulated Kubernetes API server (`reposure_tests::apiserver`) as a process, for
//! the benchmark: `reposure-emulated-cluster REGISTRY_URL` prints `KUBECONFIG POD` on one
//! line once it is ready, and runs until its stdin closes.

use std::io::Read;

use reposure_tests::apiserver::ApiServer;

fn main() {
    let Some(registry_url) = std::env::args().nth(1) else {
        eprintln!("usage: reposure-emulated-cluster REGISTRY_URL");
        std::process::exit(2);
    };
    let mut cluster = ApiServer::start("default");
    let pod = cluster.add_ready_registry("default", "bench", &registry_url);
    println!("{} {pod}", cluster.kubeconfig().display());
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
}
