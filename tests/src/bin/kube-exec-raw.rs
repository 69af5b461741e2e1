//! The benchmark's baseline for the exec transport: bytes streamed raw through the same
//! exec connection the mount uses (reposure-client's [`exec_stream`]: the same WebSocket,
//! the same message sizes), with no session protocol on top.
//!
//! `kube-exec-raw KUBECONFIG POD read FILE`: execs `cat FILE` and counts stdout.
//! `kube-exec-raw KUBECONFIG POD write FILE`: execs `sh -c 'cat >/dev/null'` and sends FILE
//! to its stdin, then waits for the command's status.
//! Prints the bytes moved and the seconds taken.

use std::time::Instant;

use anyhow::{Result, bail};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use reposure_client::kubernetes::exec_stream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::main]
async fn main() -> Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args: Vec<String> = std::env::args().collect();
    let [_, kubeconfig, pod, mode, file] = <[String; 5]>::try_from(args)
        .map_err(|_| anyhow::anyhow!("usage: kube-exec-raw KUBECONFIG POD read|write FILE"))?;
    let config = Config::from_custom_kubeconfig(
        Kubeconfig::read_from(&kubeconfig)?,
        &KubeConfigOptions::default(),
    )
    .await?;
    let client = Client::try_from(config)?;
    let command: Vec<&str> = match mode.as_str() {
        "read" => vec!["cat", file.as_str()],
        "write" => vec!["sh", "-c", "cat >/dev/null"],
        other => bail!("unknown mode {other}: read or write"),
    };
    let started = Instant::now();
    let mut stream = exec_stream(&client, "default", &pod, command, |line| {
        eprintln!("{line}")
    })
    .await?;
    let mut buffer = vec![0u8; 1 << 20];
    let mut total = 0u64;
    if mode == "write" {
        let mut input = tokio::fs::File::open(&file).await?;
        total = tokio::io::copy_buf(
            &mut tokio::io::BufReader::with_capacity(1 << 20, &mut input),
            &mut stream,
        )
        .await?;
        stream.shutdown().await?;
    }
    // To the end of stdout, and the command's status: an error unless it succeeded.
    loop {
        let n = stream.read(&mut buffer).await?;
        if n == 0 {
            break;
        }
        if mode == "read" {
            total += n as u64;
        }
    }
    println!("{total} {:.3}", started.elapsed().as_secs_f64());
    Ok(())
}
