//! Boots a kernel under qemu through virtme-ng (`vng`), which mounts this machine's root file
//! system read-only as the guest's root, so host-built test binaries run unchanged, and runs a
//! generated script there as root.
//!
//! The script runs every test binary from its package folder and leaves, in a folder shared
//! read-write with the guest, one `N.log` (the binary's output), `N.status` (its exit status) and
//! `N.ms` (its wall time) per binary, plus `uname` (`uname -r`) and the tests' records. A binary
//! whose status file is missing did not finish (a guest panic or the overall time limit); one
//! that runs past 20 minutes is killed (`timeout`, status 124 or 137).

use std::fmt::Write as _;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use super::binaries::TestBinary;
use super::kernel::Kernel;
use crate::Result;

/// Huge pages the guest reserves (as `.ci/run` does on the host), out of [`MEMORY`].
pub const HUGEPAGES: u32 = 128;
/// Guest memory.
pub const MEMORY: &str = "3G";
/// Size of the (sparse) ext4 image the guest's `TMPDIR` is on.
const SCRATCH_BYTES: u64 = 2 << 30;
/// The environment variable tests read to size themselves down for the emulated guest, where
/// the fault paths run 10-14 times slower than on the host. Its value is `tcg` or `kvm`.
pub const VM_ENV: &str = "UFFD_TEST_VM";

/// Modules udev would load for emulated hardware and CPU features the tests never use: about
/// 8 s of an emulated boot. (AHCI and CD-ROM, the ICH9 LPC/SMBus, PS/2 input, the PC speaker,
/// KVM itself, crypto and CRC accelerators, cpufreq and RAPL.)
const MODULE_BLACKLIST: &[&str] = &[
    "ahci",
    "libahci",
    "sr_mod",
    "cdrom",
    "lpc_ich",
    "i2c_i801",
    "i2c_smbus",
    "serio_raw",
    "psmouse",
    "joydev",
    "evdev",
    "pcspkr",
    "kvm",
    "kvm_intel",
    "kvm_amd",
    "irqbypass",
    "crc32_pclmul",
    "crc32c_intel",
    "crct10dif_pclmul",
    "ghash_clmulni_intel",
    "polyval_clmulni",
    "aesni_intel",
    "sha256_ssse3",
    "sha512_ssse3",
    "sha1_ssse3",
    "intel_rapl_msr",
    "intel_rapl_common",
    "acpi_cpufreq",
    "button",
    "floppy",
    "rapl",
];

/// Where the guest's results are.
pub struct GuestRun {
    /// The folder the guest wrote its results into.
    pub out: PathBuf,
    /// The folder the tests' records are in (`UFFD_TEST_REPORT`).
    pub report: PathBuf,
}

/// How the guest's CPU is provided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Hardware virtualisation that boots a stock kernel.
    Kvm,
    /// qemu's emulation.
    Tcg,
}

impl Accel {
    /// KVM only where it is real: `/dev/kvm`, a `vmx` or `svm` CPU flag, and not PVM (whose
    /// `kvm_pvm` module needs a PVM-enabled guest kernel; a stock one aborts or hangs).
    pub fn detect() -> (Accel, String) {
        if !Path::new("/dev/kvm").exists() {
            return (Accel::Tcg, "no /dev/kvm".into());
        }
        let modules = fs::read_to_string("/proc/modules").unwrap_or_default();
        if modules.lines().any(|l| l.starts_with("kvm_pvm ")) {
            return (
                Accel::Tcg,
                "/dev/kvm is PVM (kvm_pvm), which cannot boot a stock kernel".into(),
            );
        }
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let hw = cpuinfo
            .lines()
            .filter(|l| l.starts_with("flags"))
            .flat_map(|l| l.split_whitespace())
            .any(|f| f == "vmx" || f == "svm");
        if hw {
            (Accel::Kvm, "/dev/kvm with vmx/svm".into())
        } else {
            (
                Accel::Tcg,
                "/dev/kvm without vmx/svm CPU flags (not hardware KVM)".into(),
            )
        }
    }

    /// The value tests see in [`VM_ENV`].
    pub fn name(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// Quotes `s` for a POSIX shell.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The script the guest runs.
fn script(run: &GuestRun, binaries: &[TestBinary], test_args: &[String], accel: Accel) -> String {
    let args: Vec<String> = test_args.iter().map(|a| sh_quote(a)).collect();
    let mut s = String::new();
    let _ = write!(
        s,
        r#"#!/bin/bash
# Written by `cargo xtask vm-test`; runs inside the guest as root.
set -u
out={out}
uname -r >"$out/uname"
echo "guest: Linux $(uname -r), $(nproc) CPUs, $(awk '/MemTotal/ {{print int($2/1024)}}' /proc/meminfo) MiB"
sysctl -q -w vm.nr_hugepages={HUGEPAGES} >/dev/null 2>&1 || true
echo "guest: vm.nr_hugepages=$(cat /proc/sys/vm/nr_hugepages)," \
    "transparent_hugepage: $(cat /sys/kernel/mm/transparent_hugepage/enabled)"
export {report_var}={report} {VM_ENV}={accel} RUST_BACKTRACE=1
# The temp dir on a disk (ext4), as on the host: the guest's /tmp is tmpfs, where msync leaves
# pages dirty and files have no holes to find.
tmpdir=/tmp/uffd-test-tmp
mkdir -p "$tmpdir"
modprobe -q -a virtio_blk ext4 2>/dev/null || true
dev=
for _ in $(seq 100); do
    for d in /dev/vd?; do [ -b "$d" ] && dev=$d; done
    [ -n "$dev" ] && break
    sleep 0.1
done
if [ -n "$dev" ] && mount -t ext4 "$dev" "$tmpdir"; then
    export TMPDIR=$tmpdir
    echo "guest: TMPDIR=$tmpdir (ext4 on $dev)"
else
    echo "guest: warning: no scratch disk; TMPDIR stays on tmpfs"
fi
run() {{
    local i=$1 dir=$2 exe=$3 label=$4
    shift 4
    echo "=== guest: $label"
    local t0 st
    t0=$(date +%s%N)
    (cd "$dir" && CARGO_MANIFEST_DIR="$dir" timeout -k 10 1200 "$exe" "$@") 2>&1 | tee "$out/$i.log"
    st=${{PIPESTATUS[0]}}
    echo $(( ($(date +%s%N) - t0) / 1000000 )) >"$out/$i.ms"
    echo "$st" >"$out/$i.status"
}}
"#,
        out = sh_quote(&run.out.display().to_string()),
        report_var = test_kit::report::REPORT_DIR_VAR,
        report = sh_quote(&run.report.display().to_string()),
        accel = accel.name(),
    );
    for (i, b) in binaries.iter().enumerate() {
        let _ = writeln!(
            s,
            "run {i} {} {} {} {}",
            sh_quote(&b.package_dir.display().to_string()),
            sh_quote(&b.exe.display().to_string()),
            sh_quote(&b.label),
            args.join(" ")
        );
    }
    s.push_str("echo \"=== guest: done\"\n");
    s
}

/// How to boot the guest.
pub struct Boot<'a> {
    /// virtme-ng's `vng`.
    pub vng: &'a Path,
    /// The kernel.
    pub kernel: &'a Kernel,
    /// KVM or emulation.
    pub accel: Accel,
    /// Guest CPUs.
    pub cpus: usize,
    /// The guest is killed after this long.
    pub limit: Duration,
}

/// Boots the kernel and runs every binary in it; returns when the guest is gone. `dir` is shared
/// read-write with the guest. Fails if the guest could not be started or ran past the limit
/// (then it is killed).
pub fn run(
    boot: &Boot<'_>,
    dir: &Path,
    binaries: &[TestBinary],
    test_args: &[String],
) -> Result<GuestRun> {
    let Boot {
        vng,
        kernel,
        accel,
        cpus,
        limit,
    } = *boot;
    let run = GuestRun {
        out: dir.join("out"),
        report: dir.join("report"),
    };
    for d in [&run.out, &run.report] {
        fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
    }
    let script_path = dir.join("guest.sh");
    fs::write(&script_path, script(&run, binaries, test_args, accel))
        .and_then(|()| fs::set_permissions(&script_path, fs::Permissions::from_mode(0o755)))
        .map_err(|e| format!("{}: {e}", script_path.display()))?;

    // The scratch disk the guest's TMPDIR goes on.
    let disk = dir.join("scratch.img");
    fs::File::create(&disk)
        .and_then(|f| f.set_len(SCRATCH_BYTES))
        .map_err(|e| format!("{}: {e}", disk.display()))?;
    let mkfs = Command::new("mkfs.ext4")
        .args(["-q", "-F"])
        .arg(&disk)
        .status()
        .map_err(|e| format!("running mkfs.ext4 (apt: e2fsprogs): {e}"))?;
    if !mkfs.success() {
        return Err(format!("mkfs.ext4 {} failed ({mkfs})", disk.display()));
    }
    let mut append = vec![format!("module_blacklist={}", MODULE_BLACKLIST.join(","))];
    append.push(format!("hugepages={HUGEPAGES}"));
    let mut cmd = Command::new(vng);
    // vng runs `virtme-run` from its own folder (a venv's bin).
    if let Some(bin) = vng.parent() {
        let path = std::env::var_os("PATH").unwrap_or_default();
        let mut paths = vec![bin.to_path_buf()];
        paths.extend(std::env::split_paths(&path));
        cmd.env(
            "PATH",
            std::env::join_paths(paths).map_err(|e| format!("PATH: {e}"))?,
        );
    }
    cmd.arg("--run")
        .arg(&kernel.image)
        .args([
            "--force-9p",
            "--memory",
            MEMORY,
            "--cpus",
            &cpus.to_string(),
        ])
        .arg("--rwdir")
        .arg(dir)
        .arg("--disk")
        .arg(&disk);
    if accel == Accel::Tcg {
        cmd.arg("--disable-kvm");
    }
    for a in &append {
        cmd.args(["--append", a]);
    }
    cmd.arg("--exec")
        .arg(format!(
            "/bin/bash {}",
            sh_quote(&script_path.display().to_string())
        ))
        // qemu reopens /proc/self/fd/1 and 2 with O_TRUNC (a log file would be wiped) and dies on
        // a closed stdin: pipes and /dev/null.
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so that a time-out kills qemu with it.
        .process_group(0);
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("running {}: {e}", vng.display()))?;
    let pgid = child.id() as i32;
    let out = forward(child.stdout.take().expect("piped"), std::io::stdout());
    let err = forward(child.stderr.take().expect("piped"), std::io::stderr());
    let (tx, rx) = mpsc::channel();
    let waiter = thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    let result = match rx.recv_timeout(limit) {
        Ok(Ok(status)) => {
            eprintln!("xtask: the guest ended ({status})");
            Ok(run)
        }
        Ok(Err(e)) => Err(format!("waiting for vng: {e}")),
        Err(_) => {
            // SAFETY: kill(2) with a negative pid signals the process group this function
            // created for vng and qemu; no memory is involved.
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
            Err(format!(
                "the guest ran longer than {} s and was killed",
                limit.as_secs()
            ))
        }
    };
    let _ = waiter.join();
    let _ = out.join();
    let _ = err.join();
    result
}

/// Copies `from` to `to` on a thread until end of file.
fn forward(
    mut from: impl Read + Send + 'static,
    mut to: impl Write + Send + 'static,
) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let mut buf = [0u8; 8192];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let _ = to.write_all(&buf[..n]);
                    let _ = to.flush();
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_quotes_paths_and_passes_test_args() {
        let run = GuestRun {
            out: "/t/out".into(),
            report: "/t/it's".into(),
        };
        let b = TestBinary {
            exe: "/t/serve-1".into(),
            package_dir: "/w/userfaultfd".into(),
            label: "userfaultfd/tests/serve.rs".into(),
        };
        let s = script(&run, &[b], &["--test-threads=1".into()], Accel::Tcg);
        assert!(s.contains("out='/t/out'\n"), "{s}");
        assert!(
            s.contains(r"UFFD_TEST_REPORT='/t/it'\''s' UFFD_TEST_VM=tcg"),
            "{s}"
        );
        assert!(
            s.contains("run 0 '/w/userfaultfd' '/t/serve-1' 'userfaultfd/tests/serve.rs' '--test-threads=1'\n"),
            "{s}"
        );
    }
}
