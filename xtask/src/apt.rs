//! Debian packages through apt's own tools, for the header fetch (`debian.rs`) and the guest
//! kernel (`vmtest/kernel.rs`): the versions apt knows of a package, the newest of them, one
//! `.deb` downloaded into a folder, and its unpacking. Nothing is installed on this machine.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::Result;

/// `apt-cache madison PACKAGE`: one line per version apt knows, `package | version | source`.
pub fn madison(package: &str) -> Result<String> {
    command_stdout(Command::new("apt-cache").args(["madison", package]))
}

/// The newest of `versions` by Debian's ordering (`dpkg --compare-versions`); `None` if there
/// are none.
pub fn newest(versions: impl IntoIterator<Item = String>) -> Result<Option<String>> {
    let mut best: Option<String> = None;
    for version in versions {
        let newer = match &best {
            None => true,
            Some(b) => Command::new("dpkg")
                .args(["--compare-versions", &version, "gt", b])
                .status()
                .map_err(|e| format!("running dpkg --compare-versions: {e}"))?
                .success(),
        };
        if newer {
            best = Some(version);
        }
    }
    Ok(best)
}

/// `apt-get download SPEC` into `dir`; the path of the new `.deb`.
pub fn download(dir: &Path, spec: &str) -> Result<PathBuf> {
    let before: Vec<PathBuf> = debs(dir);
    let out = Command::new("apt-get")
        .args(["download", spec])
        .current_dir(dir)
        .output()
        .map_err(|e| format!("running apt-get download {spec}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "`apt-get download {spec}` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    debs(dir)
        .into_iter()
        .find(|p| !before.contains(p))
        .ok_or_else(|| format!("apt-get download {spec} left no new .deb"))
}

/// The `.deb` files in `dir`.
fn debs(dir: &Path) -> Vec<PathBuf> {
    fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "deb"))
                .collect()
        })
        .unwrap_or_default()
}

/// Unpacks the files of `deb` under `dest` (`dpkg-deb -x`; no maintainer scripts run).
pub fn unpack(deb: &Path, dest: &Path) -> Result<()> {
    run_ok(Command::new("dpkg-deb").arg("-x").arg(deb).arg(dest))
}

/// Runs `cmd`; an error with its stderr if it fails.
pub fn run_ok(cmd: &mut Command) -> Result<()> {
    command_stdout(cmd).map(drop)
}

/// Runs `cmd` and returns its stdout; an error with its stderr if it fails.
pub fn command_stdout(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().map_err(|e| format!("running {cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
