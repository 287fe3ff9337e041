//! Downloads Debian's `linux-libc-dev` headers (the pinned version, or the newest 6.12.x of
//! `bookworm-backports`) and caches them unpacked under `target/xtask/headers/`.

use std::path::{Path, PathBuf};

use crate::apt;
use crate::rundir::{install_atomically, RunDir};
use crate::{HeaderSource, Result};

/// The exact Debian package version whose headers the committed bindings come from.
pub const PINNED_PACKAGE: &str = "linux-libc-dev";
/// Version of [`PINNED_PACKAGE`] (Linux 6.12 uAPI, `bookworm-backports`).
pub const PINNED_VERSION: &str = "6.12.95-1~bpo12+1";

/// Prints a warning nobody can miss.
fn warn_loudly(lines: &[String]) {
    let bar = "=".repeat(78);
    eprintln!("xtask: WARNING {bar}");
    for line in lines {
        eprintln!("xtask: WARNING {line}");
    }
    eprintln!("xtask: WARNING {bar}");
}

/// Obtains Debian's `linux-libc-dev` headers: the pinned version or, when Debian no longer
/// serves it, the newest 6.12.x of `bookworm-backports` (with a loud warning).
///
/// `xtask_dir` is `target/xtask`, which holds the shared cache; `run` is this run's own folder.
pub fn fetch_headers(xtask_dir: &Path, run: &RunDir) -> Result<HeaderSource> {
    let pinned_err = match fetch_package(xtask_dir, run, PINNED_VERSION) {
        Ok(include) => return Ok(debian_source(include, PINNED_VERSION)),
        Err(e) => e,
    };
    let fallback = newest_backports_612().map_err(|e| {
        format!(
            "{pinned_err}
and no fallback: {e}
or pass --headers DIR (see README.md)"
        )
    })?;
    warn_loudly(&[
        format!("the pinned {PINNED_PACKAGE} {PINNED_VERSION} could not be downloaded:"),
        pinned_err.lines().next().unwrap_or_default().to_string(),
        format!("FALLING BACK to {fallback}, the newest 6.12.x in bookworm-backports."),
        "--check compares ignoring only the preamble lines that name the header version.".into(),
        "Update PINNED_VERSION in xtask/src/debian.rs, run `cargo xtask bindgen` and commit."
            .into(),
    ]);
    let include = fetch_package(xtask_dir, run, &fallback)?;
    let mut src = debian_source(include, &fallback);
    src.pinned = false;
    Ok(src)
}

fn debian_source(include: PathBuf, version: &str) -> HeaderSource {
    HeaderSource {
        arch_include: Some(include.join("x86_64-linux-gnu")),
        include,
        description: format!("Debian {PINNED_PACKAGE} {version} (Linux 6.12 uAPI)"),
        pinned: version == PINNED_VERSION,
    }
}

/// Whether `dir` holds a complete unpack of the package: the cache is only ever installed whole
/// (see [`install_atomically`]), so one file tells.
fn is_unpacked(dir: &Path) -> bool {
    dir.join("usr/include/linux/userfaultfd.h").is_file()
}

/// Downloads and unpacks `linux-libc-dev=<version>` into `target/xtask/headers/<version>/` and
/// returns its `usr/include`.
///
/// Reuses an earlier unpack. A new one is downloaded and unpacked inside this run's folder, then
/// moved into the cache with one rename, so that a concurrent run sees all of it or none of it.
/// The suite must be in apt's sources (`.ci/run` adds it).
fn fetch_package(xtask_dir: &Path, run: &RunDir, version: &str) -> Result<PathBuf> {
    let dir_name = version.replace('~', "_");
    let cache = xtask_dir.join("headers").join(&dir_name);
    if is_unpacked(&cache) {
        return Ok(cache.join("usr/include"));
    }
    let download = run.subdir(&format!("download-{dir_name}"))?;
    let spec = format!("{PINNED_PACKAGE}={version}");
    let deb = apt::download(&download, &spec).map_err(|e| {
        format!(
            "{e}\n(Debian's bookworm-backports suite must be in apt's sources, followed by \
             `apt-get update`; .ci/run does both)"
        )
    })?;
    let staged = download.join("unpacked");
    apt::unpack(&deb, &staged)?;
    if !is_unpacked(&staged) {
        return Err(format!("{} holds no linux/userfaultfd.h", deb.display()));
    }
    let unpacked = install_atomically(&staged, &cache, is_unpacked)?;
    Ok(unpacked.join("usr/include"))
}

/// The newest 6.12.x `linux-libc-dev` that apt knows from `bookworm-backports`.
fn newest_backports_612() -> Result<String> {
    let listing = apt::madison(PINNED_PACKAGE)?;
    apt::newest(backports_612_versions(&listing))?.ok_or_else(|| {
        format!(
            "apt knows no 6.12.x {PINNED_PACKAGE} from bookworm-backports (`apt-cache madison`)"
        )
    })
}

/// The 6.12.x versions in `apt-cache madison` output that come from `bookworm-backports`.
fn backports_612_versions(madison: &str) -> Vec<String> {
    madison
        .lines()
        .filter_map(|line| {
            let mut fields = line.split('|').map(str::trim);
            let (_pkg, version, source) = (fields.next()?, fields.next()?, fields.next()?);
            let from_backports = source
                .split_whitespace()
                .any(|w| w.starts_with("bookworm-backports/") || w == "bookworm-backports");
            (from_backports && version.starts_with("6.12.")).then(|| version.to_string())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backports_versions_are_picked_from_madison() {
        let madison = "\
linux-libc-dev | 6.12.95-1~bpo12+1 | http://mirror.invalid/debian bookworm-backports/main amd64 Packages
linux-libc-dev | 6.12.99-1~bpo12+1 | http://mirror.invalid/debian bookworm-backports/main amd64 Packages
linux-libc-dev | 6.16.3-1~bpo12+1 | http://mirror.invalid/debian bookworm-backports/main amd64 Packages
linux-libc-dev |  6.1.192-2 | http://mirror.invalid/debian-security bookworm-security/main amd64 Packages
linux-libc-dev | 6.12.9-1 | http://mirror.invalid/debian trixie/main amd64 Packages
";
        assert_eq!(
            backports_612_versions(madison),
            ["6.12.95-1~bpo12+1", "6.12.99-1~bpo12+1"]
        );
    }
}
