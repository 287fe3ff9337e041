//! The workspace's test binaries, built on the host: `cargo test --no-run
//! --message-format=json` lists each executable with its package, as `cargo test` would run it.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::Result;

/// Packages whose tests do not run in the guest: the xtask is host tooling (it writes under
/// `target/`, which the guest sees read-only) and exercises no kernel feature.
pub const HOST_ONLY: &[&str] = &["xtask"];

/// One test executable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestBinary {
    /// The executable.
    pub exe: PathBuf,
    /// Its package's folder: `cargo test` runs a test binary from there.
    pub package_dir: PathBuf,
    /// What it tests, for the summary: the target's source file relative to the workspace,
    /// e.g. `userfaultfd/tests/serve.rs`.
    pub label: String,
}

/// Builds the test binaries (`cargo test --workspace --no-run`, plus `cargo_args` such as
/// `--all-features --locked`; `-p PACKAGE` there replaces `--workspace`) and lists them.
pub fn build(root: &Path, cargo_args: &[String]) -> Result<Vec<TestBinary>> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args([
        "test",
        "--no-run",
        "--message-format=json-render-diagnostics",
    ]);
    // The whole workspace unless the arguments pick packages.
    let picks = cargo_args
        .iter()
        .any(|a| a.starts_with("-p") || a.starts_with("--package"));
    if !picks {
        cmd.arg("--workspace");
        for p in HOST_ONLY {
            cmd.args(["--exclude", p]);
        }
    }
    let mut child = cmd
        .args(cargo_args)
        .current_dir(root)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("running cargo test --no-run: {e}"))?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let mut found = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.map_err(|e| format!("reading cargo's messages: {e}"))?;
        if let Some(b) = parse_artifact(root, &line) {
            if !found.contains(&b) {
                found.push(b);
            }
        }
    }
    let status = child
        .wait()
        .map_err(|e| format!("waiting for cargo: {e}"))?;
    if !status.success() {
        return Err(format!("building the test binaries failed ({status})"));
    }
    if found.is_empty() {
        return Err("cargo built no test binary".into());
    }
    Ok(found)
}

/// The test binary a `compiler-artifact` message describes, if it is one.
fn parse_artifact(root: &Path, line: &str) -> Option<TestBinary> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    if v["reason"] != "compiler-artifact" || v["profile"]["test"] != true {
        return None;
    }
    let exe = PathBuf::from(v["executable"].as_str()?);
    let package_dir = Path::new(v["manifest_path"].as_str()?)
        .parent()?
        .to_path_buf();
    let src = Path::new(v["target"]["src_path"].as_str()?);
    let label = src.strip_prefix(root).unwrap_or(src).display().to_string();
    Some(TestBinary {
        exe,
        package_dir,
        label,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_artifacts_are_recognised() {
        let root = Path::new("/w");
        let test = r#"{"reason":"compiler-artifact","package_id":"path+file:///w/userfaultfd#0.1.0","manifest_path":"/w/userfaultfd/Cargo.toml","target":{"kind":["test"],"name":"serve","src_path":"/w/userfaultfd/tests/serve.rs"},"profile":{"test":true},"executable":"/w/target/debug/deps/serve-0123456789abcdef","fresh":true}"#;
        assert_eq!(
            parse_artifact(root, test),
            Some(TestBinary {
                exe: "/w/target/debug/deps/serve-0123456789abcdef".into(),
                package_dir: "/w/userfaultfd".into(),
                label: "userfaultfd/tests/serve.rs".into(),
            })
        );
        let lib = test.replace(r#""test":true"#, r#""test":false"#);
        assert_eq!(parse_artifact(root, &lib), None);
        let no_exe = test.replace(
            r#""executable":"/w/target/debug/deps/serve-0123456789abcdef""#,
            r#""executable":null"#,
        );
        assert_eq!(parse_artifact(root, &no_exe), None);
        assert_eq!(parse_artifact(root, "not json"), None);
    }
}
