//! [`HeaderSource`]: where the uAPI headers come from, and the folder given with `--headers`.

use std::path::PathBuf;

use crate::Result;

/// Where the headers came from: the include folder and a line for the preamble.
pub struct HeaderSource {
    /// Folder that holds `linux/userfaultfd.h`.
    pub include: PathBuf,
    /// Folder that holds the architecture's `asm/` headers, if separate.
    pub arch_include: Option<PathBuf>,
    /// Human-readable description, written into the generated file's preamble. Starts with
    /// `Debian linux-libc-dev <version>` or `uAPI headers from <dir>` (see
    /// [`names_header_source`](crate::diff::names_header_source)).
    pub description: String,
    /// Whether these are the pinned headers, so that `--check` compares the preamble exactly too.
    pub pinned: bool,
}

impl HeaderSource {
    /// The headers of `--headers DIR`: a uAPI include folder, or the root of an unpacked package
    /// (`dpkg-deb -x pkg.deb DIR`).
    pub fn from_dir(dir: PathBuf) -> Result<HeaderSource> {
        // Also accept the root of an unpacked package (`dpkg-deb -x pkg.deb DIR`).
        let dir = if dir.join("usr/include/linux/userfaultfd.h").is_file() {
            dir.join("usr/include")
        } else {
            dir
        };
        if !dir.join("linux/userfaultfd.h").is_file() {
            return Err(format!("{} holds no linux/userfaultfd.h", dir.display()));
        }
        let arch = dir.join("x86_64-linux-gnu");
        Ok(HeaderSource {
            arch_include: arch.is_dir().then_some(arch),
            description: format!("uAPI headers from {}", dir.display()),
            include: dir,
            pinned: false,
        })
    }
}
