//! The benchmark's baseline for the exec transport: bytes streamed raw through the same
//! kind of exec connection the mount uses (kube's client, same buffer sizes), with no
//! session protocol on top.
//!
//! `kube-exec-raw KUBECONFIG POD read FILE`: execs `cat FILE` and counts stdout.
//! `kube-exec-raw KUBECONFIG POD write FILE`: execs `sh -c 'cat >/dev/null'` and sends FILE
//! to its stdin, then waits for the command's status.
//! Prints the bytes moved and the seconds taken.

use std::time::Instant;

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::Pod;
use kube::api::AttachParams;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The same buffers as the mount's exec connector.
const EXEC_BUFFER: usize = 4 * 1024 * 1024;

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
    let pods: Api<Pod> = Api::namespaced(Client::try_from(config)?, "default");
    let params = AttachParams {
        container: Some("surrogate".into()),
        stdin: mode == "write",
        stdout: true,
        stderr: false,
        tty: false,
        max_stdin_buf_size: Some(EXEC_BUFFER),
        max_stdout_buf_size: Some(EXEC_BUFFER),
        max_stderr_buf_size: None,
    };
    let started = Instant::now();
    let bytes = match mode.as_str() {
        "read" => {
            let mut process = pods.exec(&pod, ["cat", file.as_str()], &params).await?;
            let mut stdout = process.stdout().context("stdout")?;
            let mut buffer = vec![0u8; 1 << 20];
            let mut total = 0u64;
            loop {
                let n = stdout.read(&mut buffer).await?;
                if n == 0 {
                    break;
                }
                total += n as u64;
            }
            total
        }
        "write" => {
            let mut process = pods
                .exec(&pod, ["sh", "-c", "cat >/dev/null"], &params)
                .await?;
            let mut stdin = process.stdin().context("stdin")?;
            let status = process.take_status().context("status")?;
            let mut input = tokio::fs::File::open(&file).await?;
            let total = tokio::io::copy_buf(
                &mut tokio::io::BufReader::with_capacity(1 << 20, &mut input),
                &mut stdin,
            )
            .await?;
            stdin.shutdown().await?;
            drop(stdin);
            match status.await {
                Some(s) if s.status.as_deref() == Some("Success") => {}
                other => bail!("the command failed: {other:?}"),
            }
            total
        }
        other => bail!("unknown mode {other}: read or write"),
    };
    println!("{bytes} {:.3}", started.elapsed().as_secs_f64());
    Ok(())
}
