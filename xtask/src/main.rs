//! Project automation, run as `cargo xtask <command>`.
//!
//! * `cargo xtask bindgen [--headers DIR] [--check]` regenerates
//!   `userfaultfd-sys/src/bindings.rs` (bindgen, as a library) and
//!   `userfaultfd-sys/tests/data/c-ioctl-numbers-x86_64.txt` (what a C program compiled against the
//!   same headers prints for every ioctl request number). With `--check` nothing is written: the
//!   command fails, showing a diff, when a committed file differs from what it would generate.
//!
//! The headers are Debian's `linux-libc-dev` package for Linux 6.12 from the `bookworm-backports`
//! suite, fetched with `apt-get download` and unpacked with `dpkg-deb -x` into
//! `target/xtask/headers/`. `--headers DIR` uses any other uAPI include folder instead (a folder
//! holding `linux/userfaultfd.h`, or the root of an unpacked `linux-libc-dev` package).
//!
//! Debian drops superseded versions from its archive. When the pinned version
//! ([`PINNED_VERSION`]) can no longer be downloaded, the newest 6.12.x `linux-libc-dev` that
//! `bookworm-backports` serves is used instead, with a loud warning. The generated files then name
//! that version in their preamble, so `--check` compares them ignoring only the preamble lines
//! that name the header source; everything else must match exactly. The same applies with
//! `--headers`. With the pinned package, the comparison is exact.

use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

mod bindings;

/// The exact Debian package version whose headers the committed bindings come from.
pub const PINNED_PACKAGE: &str = "linux-libc-dev";
/// Version of [`PINNED_PACKAGE`] (Linux 6.12 uAPI, `bookworm-backports`).
pub const PINNED_VERSION: &str = "6.12.95-1~bpo12+1";

type Result<T> = std::result::Result<T, String>;

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e}");
            ExitCode::FAILURE
        }
    }
}

const USAGE: &str = "usage: cargo xtask bindgen [--headers DIR] [--check]";

fn run(args: &[String]) -> Result<()> {
    let Some((cmd, rest)) = args.split_first() else {
        return Err(USAGE.into());
    };
    match cmd.as_str() {
        "bindgen" => {
            let mut check = false;
            let mut headers: Option<PathBuf> = None;
            let mut it = rest.iter();
            while let Some(a) = it.next() {
                match a.as_str() {
                    "--check" => check = true,
                    "--headers" => {
                        let dir = it.next().ok_or("--headers needs a folder")?;
                        headers = Some(PathBuf::from(dir));
                    }
                    "-h" | "--help" => {
                        println!("{USAGE}");
                        return Ok(());
                    }
                    other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
                }
            }
            bindgen_cmd(headers, check)
        }
        "-h" | "--help" | "help" => {
            println!("{USAGE}");
            Ok(())
        }
        other => Err(format!("unknown command {other:?}\n{USAGE}")),
    }
}

/// Root of the workspace (the parent of this crate's folder).
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives inside the workspace")
        .to_path_buf()
}

/// Where the headers came from: the include folder and a line for the preamble.
pub struct HeaderSource {
    /// Folder that holds `linux/userfaultfd.h`.
    pub include: PathBuf,
    /// Folder that holds the architecture's `asm/` headers, if separate.
    pub arch_include: Option<PathBuf>,
    /// Human-readable description, written into the generated file's preamble. Starts with
    /// `Debian linux-libc-dev <version>` or `uAPI headers from <dir>` (see [`names_header_source`]).
    pub description: String,
    /// Whether these are the pinned headers, so that `--check` compares the preamble exactly too.
    pub pinned: bool,
}

/// Whether a preamble line names the headers' source (and so their version).
fn names_header_source(line: &str) -> bool {
    line.contains("Debian linux-libc-dev ") || line.contains("uAPI headers from ")
}

/// `text` without the lines of its leading comment block (`//` or `#` lines) that name the
/// header source: what `--check` compares when the headers are not the pinned ones.
fn without_source_lines(text: &str) -> String {
    let mut in_preamble = true;
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        in_preamble &= line.starts_with("//") || line.starts_with('#');
        if !(in_preamble && names_header_source(line)) {
            out.push_str(line);
        }
    }
    out
}

/// Prints a warning nobody can miss.
fn warn_loudly(lines: &[String]) {
    let bar = "=".repeat(78);
    eprintln!("xtask: WARNING {bar}");
    for line in lines {
        eprintln!("xtask: WARNING {line}");
    }
    eprintln!("xtask: WARNING {bar}");
}

fn bindgen_cmd(headers: Option<PathBuf>, check: bool) -> Result<()> {
    let root = workspace_root();
    let src = match headers {
        Some(dir) => {
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
            HeaderSource {
                arch_include: arch.is_dir().then_some(arch),
                description: format!("uAPI headers from {}", dir.display()),
                include: dir,
                pinned: false,
            }
        }
        None => fetch_debian_headers(&root)?,
    };
    if !src.pinned {
        eprintln!(
            "xtask: note: not the pinned headers ({}); --check ignores the preamble lines that \
             name the header source",
            src.description
        );
    }

    let generated = bindings::generate(&src)?;
    let numbers = c_ioctl_numbers(&root, &src)?;

    let outputs = [
        (root.join("userfaultfd-sys/src/bindings.rs"), generated),
        (
            root.join("userfaultfd-sys/tests/data/c-ioctl-numbers-x86_64.txt"),
            numbers,
        ),
    ];

    if check {
        let mut stale = Vec::new();
        for (path, want) in &outputs {
            let have = fs::read_to_string(path).unwrap_or_default();
            let same = if src.pinned {
                &have == want
            } else {
                without_source_lines(&have) == without_source_lines(want)
            };
            if !same {
                show_diff(path, want)?;
                stale.push(path.display().to_string());
            }
        }
        if stale.is_empty() {
            if src.pinned {
                println!("bindings are up to date");
            } else {
                println!("bindings are up to date (header-source preamble lines not compared)");
            }
            Ok(())
        } else {
            Err(format!(
                "stale generated file(s): {}; run `cargo xtask bindgen` and commit the result",
                stale.join(", ")
            ))
        }
    } else {
        for (path, contents) in &outputs {
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
            }
            fs::write(path, contents).map_err(|e| format!("{}: {e}", path.display()))?;
            println!("wrote {}", path.display());
        }
        Ok(())
    }
}

/// Prints `diff -u committed regenerated` for a stale file (a first-difference report when no
/// `diff` program is installed).
fn show_diff(path: &Path, want: &str) -> Result<()> {
    let tmp = env::temp_dir().join(format!(
        "xtask-regenerated-{}-{}",
        std::process::id(),
        path.file_name().unwrap_or_default().to_string_lossy()
    ));
    fs::write(&tmp, want).map_err(|e| format!("{}: {e}", tmp.display()))?;
    let committed = format!("{} (committed)", path.display());
    let regenerated = format!("{} (regenerated)", path.display());
    let status = Command::new("diff")
        .args(["-u", "--label", &committed, "--label", &regenerated])
        .arg(path)
        .arg(&tmp)
        .status();
    let _ = fs::remove_file(&tmp);
    if status.is_err() {
        let have = fs::read_to_string(path).unwrap_or_default();
        let mut have_lines = have.lines();
        let mut want_lines = want.lines();
        for n in 1.. {
            match (have_lines.next(), want_lines.next()) {
                (None, None) => break,
                (a, b) if a == b => continue,
                (a, b) => {
                    println!("{committed} and {regenerated} first differ at line {n}:");
                    println!("-{}", a.unwrap_or("(end of file)"));
                    println!("+{}", b.unwrap_or("(end of file)"));
                    break;
                }
            }
        }
    }
    Ok(())
}

/// Obtains Debian's `linux-libc-dev` headers: the pinned version or, when Debian no longer
/// serves it, the newest 6.12.x of `bookworm-backports` (with a loud warning).
fn fetch_debian_headers(root: &Path) -> Result<HeaderSource> {
    let pinned_err = match fetch_package(root, PINNED_VERSION) {
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
        "Update PINNED_VERSION in xtask/src/main.rs, run `cargo xtask bindgen` and commit.".into(),
    ]);
    let include = fetch_package(root, &fallback)?;
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

/// Downloads and unpacks `linux-libc-dev=<version>` into `target/xtask/headers/<version>/` and
/// returns its `usr/include`.
///
/// Reuses an earlier unpack. The suite must be in apt's sources (`.ci/run` adds it).
fn fetch_package(root: &Path, version: &str) -> Result<PathBuf> {
    let dir = root
        .join("target/xtask/headers")
        .join(version.replace('~', "_"));
    let include = dir.join("usr/include");
    if include.join("linux/userfaultfd.h").is_file() {
        return Ok(include);
    }
    fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let spec = format!("{PINNED_PACKAGE}={version}");
    let out = Command::new("apt-get")
        .args(["download", &spec])
        .current_dir(&dir)
        .output()
        .map_err(|e| format!("running apt-get download {spec}: {e}"))?;
    if !out.status.success() {
        let _ = fs::remove_dir(&dir); // only if empty: an earlier unpack stays
        return Err(format!(
            "`apt-get download {spec}` failed: {}
(Debian's bookworm-backports suite must be in \
             apt's sources, followed by `apt-get update`; .ci/run does both)",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let deb = fs::read_dir(&dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .ok_or("apt-get download left no .deb")?;
    let status = Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(&dir)
        .status()
        .map_err(|e| format!("running dpkg-deb: {e}"))?;
    if !status.success() || !include.join("linux/userfaultfd.h").is_file() {
        return Err(format!("dpkg-deb -x {} failed", deb.display()));
    }
    Ok(include)
}

/// The newest 6.12.x `linux-libc-dev` that apt knows from `bookworm-backports`.
fn newest_backports_612() -> Result<String> {
    let out = Command::new("apt-cache")
        .args(["madison", PINNED_PACKAGE])
        .output()
        .map_err(|e| format!("running apt-cache madison: {e}"))?;
    let listing = String::from_utf8_lossy(&out.stdout);
    let mut best: Option<String> = None;
    for version in backports_612_versions(&listing) {
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
    best.ok_or_else(|| {
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

/// Every ioctl request number the sys crate defines, as the C headers spell it.
pub const IOCTLS: &[(&str, &str)] = &[
    ("UFFDIO_API", "linux/userfaultfd.h"),
    ("UFFDIO_REGISTER", "linux/userfaultfd.h"),
    ("UFFDIO_UNREGISTER", "linux/userfaultfd.h"),
    ("UFFDIO_WAKE", "linux/userfaultfd.h"),
    ("UFFDIO_COPY", "linux/userfaultfd.h"),
    ("UFFDIO_ZEROPAGE", "linux/userfaultfd.h"),
    ("UFFDIO_MOVE", "linux/userfaultfd.h"),
    ("UFFDIO_WRITEPROTECT", "linux/userfaultfd.h"),
    ("UFFDIO_CONTINUE", "linux/userfaultfd.h"),
    ("UFFDIO_POISON", "linux/userfaultfd.h"),
    ("USERFAULTFD_IOC_NEW", "linux/userfaultfd.h"),
    ("PAGEMAP_SCAN", "linux/fs.h"),
    // Not an ioctl number, but a 64-bit value clang's macro evaluation cannot give bindgen
    // (bit 63 is set), so the sys crate spells it by hand and is checked against this.
    ("UFFD_API_IOCTLS", "linux/userfaultfd.h"),
];

/// Compiles and runs a C program that prints every ioctl number, and returns its output.
fn c_ioctl_numbers(root: &Path, src: &HeaderSource) -> Result<String> {
    let dir = root.join("target/xtask/c-ioctl");
    fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut c = String::from(
        "#include <stdio.h>\n#include <linux/userfaultfd.h>\n#include <linux/fs.h>\nint main(void) {\n",
    );
    for (name, _) in IOCTLS {
        let _ = writeln!(
            c,
            "    printf(\"{name} 0x%llx\\n\", (unsigned long long){name});"
        );
    }
    c.push_str("    return 0;\n}\n");
    let csrc = dir.join("numbers.c");
    let exe = dir.join("numbers");
    fs::write(&csrc, c).map_err(|e| format!("{}: {e}", csrc.display()))?;
    if !cfg!(target_arch = "x86_64") {
        return Err(
            "the C ioctl numbers are recorded for x86_64: run the xtask on an x86_64 host \
                    (the bindings themselves are target-independent on 64-bit Linux)"
                .into(),
        );
    }
    let compiler = env::var("CC").unwrap_or_else(|_| "cc".into());
    let mut cc = Command::new(&compiler);
    cc.arg("-nostdinc").arg("-isystem").arg(&src.include);
    if let Some(arch) = &src.arch_include {
        cc.arg("-isystem").arg(arch);
    }
    // libc's own headers (stdio.h) still come from the system, after the pinned uAPI folders.
    for sys in ["/usr/include/x86_64-linux-gnu", "/usr/include"] {
        cc.arg("-idirafter").arg(sys);
    }
    let gcc_inc = Command::new(&compiler)
        .arg("-print-file-name=include")
        .output()
        .map_err(|e| format!("running cc: {e}"))?;
    cc.arg("-isystem")
        .arg(String::from_utf8_lossy(&gcc_inc.stdout).trim());
    let out = cc
        .arg("-o")
        .arg(&exe)
        .arg(&csrc)
        .output()
        .map_err(|e| format!("running the C compiler: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "compiling {} failed:\n{}",
            csrc.display(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let run = Command::new(&exe)
        .output()
        .map_err(|e| format!("running {}: {e}", exe.display()))?;
    if !run.status.success() {
        return Err(format!("{} failed", exe.display()));
    }
    let mut text = format!(
        "# Generated by `cargo xtask bindgen`: ioctl request numbers printed by a C program\n\
         # compiled for x86_64 against {}.\n",
        src.description
    );
    text.push_str(&String::from_utf8_lossy(&run.stdout));
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backports_versions_are_picked_from_madison() {
        let madison = "\
linux-libc-dev | 6.12.95-1~bpo12+1 | http://deb.debian.org/debian bookworm-backports/main amd64 Packages
linux-libc-dev | 6.12.99-1~bpo12+1 | http://deb.debian.org/debian bookworm-backports/main amd64 Packages
linux-libc-dev | 6.16.3-1~bpo12+1 | http://deb.debian.org/debian bookworm-backports/main amd64 Packages
linux-libc-dev |  6.1.192-2 | http://deb.debian.org/debian-security bookworm-security/main amd64 Packages
linux-libc-dev | 6.12.9-1 | http://deb.debian.org/debian trixie/main amd64 Packages
";
        assert_eq!(
            backports_612_versions(madison),
            ["6.12.95-1~bpo12+1", "6.12.99-1~bpo12+1"]
        );
    }

    #[test]
    fn only_source_lines_of_the_preamble_are_dropped() {
        let a = "// @generated by `cargo xtask bindgen` from Debian linux-libc-dev 6.12.95-1~bpo12+1 (x)\n\
                 // with bindgen 0.72.1.\n\npub const X: u32 = 1; // Debian linux-libc-dev 1\n";
        let b = "// @generated by `cargo xtask bindgen` from Debian linux-libc-dev 6.12.99-1~bpo12+1 (x)\n\
                 // with bindgen 0.72.1.\n\npub const X: u32 = 1; // Debian linux-libc-dev 1\n";
        assert_eq!(without_source_lines(a), without_source_lines(b));
        assert_eq!(
            without_source_lines(a),
            "// with bindgen 0.72.1.\n\npub const X: u32 = 1; // Debian linux-libc-dev 1\n"
        );
        let c = "# Generated\n# compiled for x86_64 against uAPI headers from /tmp/h.\nUFFDIO_API 0x1\n";
        assert_eq!(without_source_lines(c), "# Generated\nUFFDIO_API 0x1\n");
        // A difference outside the source lines still counts.
        let d = b.replace("0.72.1", "0.72.2");
        assert_ne!(without_source_lines(a), without_source_lines(&d));
    }
}
