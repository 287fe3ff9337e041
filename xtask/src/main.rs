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
//! holding `linux/userfaultfd.h`).

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
    /// Human-readable description, written into the generated file's preamble.
    pub description: String,
}

fn bindgen_cmd(headers: Option<PathBuf>, check: bool) -> Result<()> {
    let root = workspace_root();
    let src = match headers {
        Some(dir) => {
            if !dir.join("linux/userfaultfd.h").is_file() {
                return Err(format!("{} holds no linux/userfaultfd.h", dir.display()));
            }
            let arch = dir.join("x86_64-linux-gnu");
            HeaderSource {
                arch_include: arch.is_dir().then_some(arch),
                description: format!("uAPI headers from {}", dir.display()),
                include: dir,
            }
        }
        None => fetch_pinned_headers(&root)?,
    };

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
            if &have != want {
                show_diff(path, want)?;
                stale.push(path.display().to_string());
            }
        }
        if stale.is_empty() {
            println!("bindings are up to date");
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

/// Prints `diff -u committed regenerated` for a stale file.
fn show_diff(path: &Path, want: &str) -> Result<()> {
    let tmp = env::temp_dir().join(format!(
        "xtask-regenerated-{}-{}",
        std::process::id(),
        path.file_name().unwrap_or_default().to_string_lossy()
    ));
    fs::write(&tmp, want).map_err(|e| format!("{}: {e}", tmp.display()))?;
    let status = Command::new("diff")
        .arg("-u")
        .arg(path)
        .arg(&tmp)
        .status()
        .map_err(|e| format!("running diff: {e}"));
    let _ = fs::remove_file(&tmp);
    status.map(|_| ())
}

/// Downloads and unpacks the pinned `linux-libc-dev` into `target/xtask/headers/<version>/`.
///
/// Reuses an earlier unpack. The suite must be in apt's sources (`.ci/run` adds it).
fn fetch_pinned_headers(root: &Path) -> Result<HeaderSource> {
    let base = root.join("target/xtask/headers");
    let dir = base.join(PINNED_VERSION.replace('~', "_"));
    let include = dir.join("usr/include");
    if !include.join("linux/userfaultfd.h").is_file() {
        fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let spec = format!("{PINNED_PACKAGE}={PINNED_VERSION}");
        let out = Command::new("apt-get")
            .args(["download", &spec])
            .current_dir(&dir)
            .output()
            .map_err(|e| format!("running apt-get download {spec}: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "`apt-get download {spec}` failed: {}\nadd Debian's bookworm-backports suite to \
                 apt's sources and run `apt-get update`, or pass --headers DIR",
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
        if !status.success() {
            return Err(format!("dpkg-deb -x {} failed", deb.display()));
        }
    }
    Ok(HeaderSource {
        arch_include: Some(include.join("x86_64-linux-gnu")),
        include,
        description: format!("Debian {PINNED_PACKAGE} {PINNED_VERSION} (Linux 6.12 uAPI)"),
    })
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
        let _ = writeln!(c, "    printf(\"{name} 0x%llx\\n\", (unsigned long long){name});");
    }
    c.push_str("    return 0;\n}\n");
    let csrc = dir.join("numbers.c");
    let exe = dir.join("numbers");
    fs::write(&csrc, c).map_err(|e| format!("{}: {e}", csrc.display()))?;
    let mut cc = Command::new(env::var("CC").unwrap_or_else(|_| "cc".into()));
    cc.arg("-nostdinc")
        .arg("-isystem")
        .arg(&src.include);
    if let Some(arch) = &src.arch_include {
        cc.arg("-isystem").arg(arch);
    }
    // libc's own headers (stdio.h) still come from the system, after the pinned uAPI folders.
    for sys in ["/usr/include/x86_64-linux-gnu", "/usr/include"] {
        cc.arg("-idirafter").arg(sys);
    }
    let gcc_inc = Command::new("cc")
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
