//! Runs the emulated Kubernetes API server (`reposure_tests::apiserver`) as a process, for
//! the benchmark: `reposure-emulated-cluster REGISTRY_URL` prints `KUBECONFIG POD` on one
//! line once it is ready, then answers each `traffic` line on its stdin with the exec
//! streams' WebSocket messages and bytes so far (`STDIN_MESSAGES STDIN_BYTES
//! STDOUT_MESSAGES STDOUT_BYTES`), and runs until its stdin closes.

use std::io::{BufRead, Write};

use reposure_tests::apiserver::ApiServer;

fn main() {
    let Some(registry_url) = std::env::args().nth(1) else {
        eprintln!("usage: reposure-emulated-cluster REGISTRY_URL");
        std::process::exit(2);
    };
    let mut cluster = ApiServer::start("default");
    let pod = cluster.add_ready_registry("default", "bench", &registry_url);
    println!("{} {pod}", cluster.kubeconfig().display());
    for line in std::io::stdin().lock().lines() {
        match line.as_deref().map(str::trim) {
            Ok("traffic") => {
                let t = cluster.exec_traffic();
                println!(
                    "{} {} {} {}",
                    t.stdin_messages, t.stdin_bytes, t.stdout_messages, t.stdout_bytes
                );
                let _ = std::io::stdout().flush();
            }
            Ok(other) => eprintln!("reposure-emulated-cluster: unknown command {other:?}"),
            Err(_) => break,
        }
    }
}
