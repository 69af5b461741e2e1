//! The `reposure` CLI as a user runs it, and what its output must look like.

use std::process::{Command, Output};

use crate::apiserver::ApiServer;
use crate::binary;

/// Runs `reposure ARGS...`.
pub fn reposure(args: &[&str]) -> Output {
    reposure_with(args, &[])
}

/// Runs `reposure ARGS...` with extra environment variables.
pub fn reposure_with(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(binary("reposure"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

/// `reposure --kubeconfig KUBECONFIG ARGS...` against an emulated API server.
pub fn against(api: &ApiServer) -> impl Fn(&[&str]) -> Output {
    let kubeconfig = api.kubeconfig();
    move |args: &[&str]| {
        let kubeconfig = kubeconfig.to_str().expect("a UTF-8 temporary path");
        let mut all = vec!["--kubeconfig", kubeconfig];
        all.extend_from_slice(args);
        reposure(&all)
    }
}

/// Asserts success; returns stdout.
pub fn ok(output: &Output) -> String {
    assert!(
        output.status.success(),
        "exit {:?}: {}",
        output.status.code(),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).unwrap()
}

/// Asserts exit `code` with one error line, the last, that contains `says`.
pub fn failed(output: &Output, code: i32, says: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(code), "{stderr}");
    assert!(stderr.contains(says), "expected {says:?} in: {stderr}");
    // The error is one line, the last (progress lines may come before it).
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("reposure:") || l.starts_with("error:"))
        .collect();
    assert_eq!(errors.len(), 1, "one error line: {stderr}");
    assert!(stderr.trim_end().ends_with(errors[0]), "{stderr}");
}
