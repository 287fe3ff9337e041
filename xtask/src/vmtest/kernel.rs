//! Debian's own kernel of a series (default 6.1, bookworm's), fetched with `apt-get download`
//! and unpacked under `target/xtask/vmtest/kernel/<release>/`: never installed as this machine's
//! kernel.
//!
//! The metapackage `linux-image-amd64` names the current ABI package (`linux-image-6.1.0-57-amd64`
//! for `6.1.192-3`). Security updates bump that ABI and the old package leaves the archive, so the
//! newest metapackage version of the series that apt knows is resolved every run, and the release
//! that boots is printed. The `.deb` ships no `modules.dep` (its postinst makes it), so `depmod -b`
//! runs on the unpacked tree. The XZ-compressed bzImage is also decompressed once into an ELF
//! `vmlinux`, which qemu boots through PVH, skipping the decompressor (seconds under emulation).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::apt;
use crate::rundir::{install_atomically, RunDir};
use crate::Result;

const METAPACKAGE: &str = "linux-image-amd64";
/// Marker written last into a staged unpack: a cache folder without it is not whole.
const COMPLETE: &str = ".complete";

/// An unpacked kernel ready to boot.
#[derive(Debug, Clone)]
pub struct Kernel {
    /// What to hand qemu: the ELF `vmlinux` when it could be made, else the bzImage.
    pub image: PathBuf,
    /// `uname -r` of the kernel, e.g. `6.1.0-57-amd64`.
    pub release: String,
    /// The Debian package and version it came from.
    pub package: String,
}

/// Resolves, downloads (once) and unpacks the newest Debian kernel of `series` (e.g. `6.1`).
///
/// `cache` is `target/xtask/vmtest/kernel`. When apt cannot resolve or download the package (no
/// network), the newest cached unpack of the series is used, with a warning.
pub fn fetch(cache: &Path, run: &RunDir, series: &str) -> Result<Kernel> {
    match resolve_and_fetch(cache, run, series) {
        Ok(k) => Ok(k),
        Err(e) => match newest_cached(cache, series) {
            Some(k) => {
                eprintln!(
                    "xtask: warning: {e}\nxtask: warning: using the cached kernel {}",
                    k.release
                );
                Ok(k)
            }
            None => Err(e),
        },
    }
}

fn resolve_and_fetch(cache: &Path, run: &RunDir, series: &str) -> Result<Kernel> {
    let version = newest_version(series)?;
    let download = run.subdir("kernel-download")?;
    let meta = apt::download(&download, &format!("{METAPACKAGE}={version}"))?;
    let depends = apt::command_stdout(
        Command::new("dpkg-deb")
            .args(["-f"])
            .arg(&meta)
            .arg("Depends"),
    )?;
    let package = abi_package(&depends, series).ok_or_else(|| {
        format!("{METAPACKAGE} {version} depends on no linux-image-{series}* package: {depends}")
    })?;
    let release = package["linux-image-".len()..].to_string();
    let target = cache.join(&release);
    if !is_complete(&target) {
        eprintln!("xtask: downloading {package} ({version}) for the guest");
        let deb = apt::download(&download, &package)?;
        let staged = download.join("unpacked");
        apt::unpack(&deb, &staged)?;
        apt::run_ok(Command::new("depmod").arg("-b").arg(&staged).arg(&release))?;
        let bz = staged.join(format!("boot/vmlinuz-{release}"));
        if let Err(e) = decompress_to_elf(&bz, &staged.join(format!("boot/vmlinux-{release}"))) {
            eprintln!("xtask: note: booting the bzImage ({e})");
        }
        fs::write(staged.join(COMPLETE), format!("{package} {version}\n"))
            .map_err(|e| format!("{}: {e}", staged.display()))?;
        let installed = install_atomically(&staged, &target, is_complete)?;
        return Ok(kernel_in(&installed, &release));
    }
    Ok(kernel_in(&target, &release))
}

fn is_complete(dir: &Path) -> bool {
    dir.join(COMPLETE).is_file()
}

fn kernel_in(dir: &Path, release: &str) -> Kernel {
    let elf = dir.join(format!("boot/vmlinux-{release}"));
    let image = if elf.is_file() {
        elf
    } else {
        dir.join(format!("boot/vmlinuz-{release}"))
    };
    let package = fs::read_to_string(dir.join(COMPLETE))
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    Kernel {
        image,
        release: release.to_string(),
        package,
    }
}

/// The cached kernel of `series` with the highest ABI number, if any.
fn newest_cached(cache: &Path, series: &str) -> Option<Kernel> {
    let prefix = format!("{series}.");
    let mut found: Vec<(u64, String)> = fs::read_dir(cache)
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|name| name.starts_with(&prefix) && is_complete(&cache.join(name)))
        .map(|name| (abi_number(&name), name))
        .collect();
    found.sort();
    let (_, release) = found.pop()?;
    Some(kernel_in(&cache.join(&release), &release))
}

/// `57` of `6.1.0-57-amd64`.
fn abi_number(release: &str) -> u64 {
    release
        .split('-')
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// The newest version of the metapackage in `series` that apt knows (`apt-cache madison`).
fn newest_version(series: &str) -> Result<String> {
    let listing = apt::madison(METAPACKAGE)?;
    apt::newest(series_versions(&listing, series))?.ok_or_else(|| {
        format!(
            "apt knows no {METAPACKAGE} of Linux {series} (`apt-cache madison {METAPACKAGE}`; \
             run `apt-get update`, and for 6.1 have Debian 12's bookworm suites in apt's sources)"
        )
    })
}

/// The versions in `apt-cache madison` output that belong to `series`.
fn series_versions(madison: &str, series: &str) -> Vec<String> {
    let prefix = format!("{series}.");
    madison
        .lines()
        .filter_map(|line| {
            let version = line.split('|').nth(1)?.trim();
            version.starts_with(&prefix).then(|| version.to_string())
        })
        .collect()
}

/// The ABI package named in the metapackage's `Depends`, e.g. `linux-image-6.1.0-57-amd64`.
fn abi_package(depends: &str, series: &str) -> Option<String> {
    let prefix = format!("linux-image-{series}.");
    depends
        .split([',', '|'])
        .map(|alt| alt.split_whitespace().next().unwrap_or_default())
        .find(|name| name.starts_with(&prefix))
        .map(str::to_string)
}

/// Extracts the XZ payload of a bzImage into an ELF `vmlinux` (Python's `lzma`: no extra crate,
/// and python3 is there for virtme-ng anyway).
fn decompress_to_elf(bz: &Path, out: &Path) -> Result<()> {
    const SCRIPT: &str = "import lzma, sys\n\
data = open(sys.argv[1], 'rb').read()\n\
at = data.find(b'\\xfd7zXZ\\x00')\n\
if at < 0: sys.exit('no XZ payload')\n\
elf = lzma.LZMADecompressor().decompress(data[at:])\n\
if elf[:4] != b'\\x7fELF': sys.exit('the payload is not an ELF image')\n\
open(sys.argv[2], 'wb').write(elf)\n";
    let part = PathBuf::from(format!("{}.part", out.display()));
    apt::run_ok(
        Command::new("python3")
            .args(["-c", SCRIPT])
            .arg(bz)
            .arg(&part),
    )?;
    fs::rename(&part, out).map_err(|e| format!("{}: {e}", out.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_and_abi_package_are_picked() {
        let madison = "\
linux-image-amd64 | 6.12.95-1~bpo12+1 | http://mirror.invalid/debian bookworm-backports/main amd64 Packages
linux-image-amd64 |  6.1.192-3 | http://mirror.invalid/debian-security bookworm-security/main amd64 Packages
linux-image-amd64 |  6.1.176-1 | http://mirror.invalid/debian bookworm/main amd64 Packages
";
        assert_eq!(series_versions(madison, "6.1"), ["6.1.192-3", "6.1.176-1"]);
        assert_eq!(series_versions(madison, "6.12"), ["6.12.95-1~bpo12+1"]);
        assert_eq!(
            abi_package("linux-image-6.1.0-57-amd64 (= 6.1.192-3)", "6.1").as_deref(),
            Some("linux-image-6.1.0-57-amd64")
        );
        assert_eq!(
            abi_package("linux-image-6.12.95+bpo-amd64 (= 6.12.95-1~bpo12+1)", "6.1"),
            None
        );
        assert_eq!(abi_number("6.1.0-57-amd64"), 57);
    }
}
