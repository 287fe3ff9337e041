//! `uffd-probe`: what can userfaultfd do on this machine?
//!
//! Reports the kernel release, `vm.unprivileged_userfaultfd`, access to `/dev/userfaultfd`,
//! which creation methods work (and whether only user-mode faults are allowed), every feature
//! the kernel reports, the ioctls a registration returns on anonymous, shmem and hugetlb memory,
//! and the huge pages reserved. A table by default, JSON with `--json`. When userfaultfd cannot
//! be used it says why and what to change, and exits with status 1.

use std::fmt::Write as _;
use std::process::ExitCode;

use clap::Parser;
use test_kit::args;
use test_kit::exit::EXIT_FAILURE;
use test_kit::page_size;
use userfaultfd::mmap::{HugePageSize, MemoryMapping, MemoryMappingBuilder, SharedMemory};
use userfaultfd::{
    CreationMethod, Error, FeatureFlags, IoctlFlags, RegisterMode, Uffd, UffdBuilder,
};

/// Reports what userfaultfd can do here: kernel, sysctl, /dev/userfaultfd, creation methods,
/// features, the ioctls of registrations on anonymous, shmem and hugetlb memory, huge pages.
#[derive(Parser, Debug)]
#[command(name = "uffd-probe")]
struct Cli {
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
}

/// The kernel version that introduced each feature (x86_64).
fn feature_since(name: &str) -> &'static str {
    match name {
        "PAGEFAULT_FLAG_WP" => "5.7",
        "EVENT_FORK" | "EVENT_REMAP" | "EVENT_REMOVE" | "EVENT_UNMAP" | "MISSING_HUGETLBFS"
        | "MISSING_SHMEM" => "4.11",
        "SIGBUS" | "THREAD_ID" => "4.14",
        "MINOR_HUGETLBFS" => "5.13",
        "MINOR_SHMEM" => "5.14",
        "EXACT_ADDRESS" => "5.18",
        "WP_HUGETLBFS_SHMEM" => "5.19",
        "WP_UNPOPULATED" => "6.4",
        "POISON" => "6.6",
        "WP_ASYNC" => "6.7",
        "MOVE" => "6.8",
        _ => "?",
    }
}

fn read_trim(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

struct Method {
    name: &'static str,
    result: Result<(), String>,
}

struct Registration {
    memory: &'static str,
    mode: &'static str,
    result: Result<IoctlFlags, String>,
}

/// How to fix a failed creation.
fn advice(e: &Error) -> String {
    match e {
        Error::Unsupported { .. } => {
            "the kernel has no userfaultfd (CONFIG_USERFAULTFD off, or a sandbox such as gVisor)"
                .into()
        }
        Error::PermissionDenied { .. } => "kernel-mode faults need CAP_SYS_PTRACE or \
            `sysctl -w vm.unprivileged_userfaultfd=1`; or use /dev/userfaultfd (Linux 6.1+) or \
            user-mode-only faults"
            .into(),
        Error::DeviceAccess { .. } => "no read-write access to /dev/userfaultfd: e.g. \
            `chmod 0666 /dev/userfaultfd`, an ACL (`setfacl -m u:USER:rw /dev/userfaultfd`) or a udev rule"
            .into(),
        e if e.errno().map(|x| x as i32) == Some(libc::ENOENT) => {
            "/dev/userfaultfd does not exist (kernel before 6.1, or not exposed in this container)".into()
        }
        e => e.to_string(),
    }
}

fn try_create(method: CreationMethod, user_mode_only: bool) -> Result<Uffd, Error> {
    UffdBuilder::new()
        .creation_method(method)
        .user_mode_only(user_mode_only)
        .create()
}

fn register(uffd: &Uffd, mem: &MemoryMapping, mode: RegisterMode) -> Result<IoctlFlags, String> {
    let r = uffd.register_region(mem, mode).map_err(|e| e.to_string());
    let _ = uffd.unregister_region(mem);
    r
}

fn json_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn ioctl_names(f: IoctlFlags) -> Vec<&'static str> {
    f.iter_names().map(|(n, _)| n).collect()
}

fn main() -> ExitCode {
    let Cli { json } = args::parse();

    let kernel = read_trim("/proc/sys/kernel/osrelease").unwrap_or_else(|| "unknown".into());
    let sysctl = read_trim("/proc/sys/vm/unprivileged_userfaultfd");
    let dev_exists = std::path::Path::new("/dev/userfaultfd").exists();
    // SAFETY: access(2) only reads the NUL-terminated path.
    let dev_rw =
        unsafe { libc::access(c"/dev/userfaultfd".as_ptr(), libc::R_OK | libc::W_OK) } == 0;
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };

    let mut methods = Vec::new();
    let mut working: Option<Uffd> = None;
    let mut kernel_mode = false;
    let mut reasons = Vec::new();
    for (name, method, umo) in [
        (
            "/dev/userfaultfd (kernel-mode faults)",
            CreationMethod::Device,
            false,
        ),
        (
            "userfaultfd(2) (kernel-mode faults)",
            CreationMethod::Syscall,
            false,
        ),
        (
            "userfaultfd(2) UFFD_USER_MODE_ONLY",
            CreationMethod::Syscall,
            true,
        ),
    ] {
        match try_create(method, umo) {
            Ok(u) => {
                if !umo {
                    kernel_mode = true;
                }
                working.get_or_insert(u);
                methods.push(Method {
                    name,
                    result: Ok(()),
                });
            }
            Err(e) => {
                reasons.push(format!("{name}: {}", advice(&e)));
                methods.push(Method {
                    name,
                    result: Err(e.to_string()),
                });
            }
        }
    }
    let features = UffdBuilder::probe_features();

    let ps = page_size();
    let mut regs = Vec::new();
    if let Some(uffd) = &working {
        let sup = features.as_ref().copied().unwrap_or(FeatureFlags::empty());
        let wp = if sup.contains(FeatureFlags::PAGEFAULT_FLAG_WP) {
            RegisterMode::WRITE_PROTECT
        } else {
            RegisterMode::empty()
        };
        match MemoryMappingBuilder::new(4 * ps).private().build() {
            Ok(m) => {
                regs.push(Registration {
                    memory: "anonymous",
                    mode: "MISSING",
                    result: register(uffd, &m, RegisterMode::MISSING),
                });
                regs.push(Registration {
                    memory: "anonymous",
                    mode: "MISSING|WP",
                    result: register(uffd, &m, RegisterMode::MISSING | wp),
                });
            }
            Err(e) => regs.push(Registration {
                memory: "anonymous",
                mode: "MISSING",
                result: Err(e.to_string()),
            }),
        }
        match SharedMemory::new("uffd-probe", 4 * ps as u64)
            .and_then(|s| MemoryMapping::from_fd(&s, 4 * ps))
        {
            Ok(m) => {
                regs.push(Registration {
                    memory: "shmem (memfd)",
                    mode: "MISSING",
                    result: register(uffd, &m, RegisterMode::MISSING),
                });
                regs.push(Registration {
                    memory: "shmem (memfd)",
                    mode: "MINOR",
                    result: register(uffd, &m, RegisterMode::MINOR),
                });
                regs.push(Registration {
                    memory: "shmem (memfd)",
                    mode: "MISSING|WP|MINOR",
                    result: register(uffd, &m, RegisterMode::MISSING | wp | RegisterMode::MINOR),
                });
            }
            Err(e) => regs.push(Registration {
                memory: "shmem (memfd)",
                mode: "MISSING",
                result: Err(e.to_string()),
            }),
        }
        let huge = HugePageSize::Default.bytes().unwrap_or(2 << 20);
        match MemoryMappingBuilder::new(huge)
            .private()
            .hugetlb(HugePageSize::Default)
            .build()
        {
            Ok(m) => {
                regs.push(Registration {
                    memory: "hugetlb",
                    mode: "MISSING",
                    result: register(uffd, &m, RegisterMode::MISSING),
                });
                regs.push(Registration {
                    memory: "hugetlb",
                    mode: "MISSING|WP",
                    result: register(uffd, &m, RegisterMode::MISSING | wp),
                });
                regs.push(Registration {
                    memory: "hugetlb",
                    mode: "MINOR",
                    result: register(uffd, &m, RegisterMode::MINOR),
                });
            }
            Err(e) => regs.push(Registration {
                memory: "hugetlb",
                mode: "MISSING",
                result: Err(format!(
                    "no hugetlb mapping ({e}); reserve pages with `sysctl -w vm.nr_hugepages=16`"
                )),
            }),
        }
    }
    let huge_total = meminfo("HugePages_Total:");
    let huge_free = meminfo("HugePages_Free:");
    let huge_size = HugePageSize::Default.bytes();

    let usable = working.is_some();
    if json {
        let mut o = String::from("{\n");
        let _ = writeln!(o, "  \"kernel\": {},", json_str(&kernel));
        let _ = writeln!(o, "  \"euid\": {euid},");
        let _ = writeln!(
            o,
            "  \"unprivileged_userfaultfd\": {},",
            // A number, as the sysctl is (null where the file is missing: before Linux 5.2).
            sysctl
                .as_deref()
                .and_then(|v| v.parse::<u32>().ok())
                .map_or("null".into(), |v| v.to_string())
        );
        let _ = writeln!(
            o,
            "  \"dev_userfaultfd\": {{\"exists\": {dev_exists}, \"read_write\": {dev_rw}}},"
        );
        let _ = writeln!(o, "  \"usable\": {usable},");
        let _ = writeln!(o, "  \"kernel_mode_faults\": {kernel_mode},");
        let _ = writeln!(
            o,
            "  \"user_mode_only_required\": {},",
            usable && !kernel_mode
        );
        o.push_str("  \"creation\": [\n");
        for (i, m) in methods.iter().enumerate() {
            let _ = write!(
                o,
                "    {{\"method\": {}, \"ok\": {}, \"error\": {}}}",
                json_str(m.name),
                m.result.is_ok(),
                m.result
                    .as_ref()
                    .err()
                    .map_or("null".into(), |e| json_str(e))
            );
            o.push_str(if i + 1 < methods.len() { ",\n" } else { "\n" });
        }
        o.push_str("  ],\n  \"features\": ");
        match &features {
            Ok(f) => {
                o.push_str("{\n");
                let names: Vec<_> = FeatureFlags::all().iter_names().collect();
                for (i, (n, flag)) in names.iter().enumerate() {
                    let _ = write!(o, "    {}: {}", json_str(n), f.contains(*flag));
                    o.push_str(if i + 1 < names.len() { ",\n" } else { "\n" });
                }
                let _ = write!(o, "  }},\n  \"features_raw\": \"{:#x}\",\n", f.bits());
            }
            Err(e) => {
                let _ = writeln!(
                    o,
                    "null,\n  \"features_error\": {},",
                    json_str(&e.to_string())
                );
            }
        }
        o.push_str("  \"registrations\": [\n");
        for (i, r) in regs.iter().enumerate() {
            let _ = write!(
                o,
                "    {{\"memory\": {}, \"mode\": {}, ",
                json_str(r.memory),
                json_str(r.mode)
            );
            match &r.result {
                Ok(f) => {
                    let names: Vec<String> = ioctl_names(*f).iter().map(|n| json_str(n)).collect();
                    let _ = write!(
                        o,
                        "\"ioctls\": [{}], \"ioctls_raw\": \"{:#x}\"}}",
                        names.join(", "),
                        f.bits()
                    );
                }
                Err(e) => {
                    let _ = write!(o, "\"error\": {}}}", json_str(e));
                }
            }
            o.push_str(if i + 1 < regs.len() { ",\n" } else { "\n" });
        }
        o.push_str("  ],\n");
        let _ = writeln!(
            o,
            "  \"hugepages\": {{\"size\": {}, \"total\": {}, \"free\": {}}},",
            huge_size.map_or("null".into(), |s| s.to_string()),
            huge_total.map_or("null".into(), |s| s.to_string()),
            huge_free.map_or("null".into(), |s| s.to_string())
        );
        let rs: Vec<String> = reasons.iter().map(|r| json_str(r)).collect();
        let _ = writeln!(o, "  \"problems\": [{}]", rs.join(", "));
        o.push('}');
        println!("{o}");
    } else {
        println!("kernel                      {kernel}");
        println!("effective uid               {euid}");
        println!(
            "vm.unprivileged_userfaultfd {}",
            match sysctl.as_deref() {
                Some("1") => "1 (anyone may create kernel-mode userfaultfds)".to_string(),
                Some("0") =>
                    "0 (kernel-mode faults need CAP_SYS_PTRACE, or /dev/userfaultfd)".to_string(),
                Some(v) => v.to_string(),
                None => "absent (kernel before 5.2, or no userfaultfd)".to_string(),
            }
        );
        println!(
            "/dev/userfaultfd            {}",
            match (dev_exists, dev_rw) {
                (false, _) => "absent (Linux 6.1+ only)",
                (true, true) => "present, read-write access",
                (true, false) => "present, NO access for this user",
            }
        );
        println!("\ncreation methods:");
        for m in &methods {
            match &m.result {
                Ok(()) => println!("  {:<42} ok", m.name),
                Err(e) => println!("  {:<42} FAILED: {e}", m.name),
            }
        }
        println!(
            "  => {}",
            if kernel_mode {
                "kernel-mode faults available (what VMMs and restore tools need)"
            } else if usable {
                "only user-mode-only faults: enough for faults of user code, not for KVM or syscalls touching registered memory"
            } else {
                "userfaultfd is NOT usable here"
            }
        );
        println!("\nfeatures (UFFDIO_API):");
        match &features {
            Ok(f) => {
                for (n, flag) in FeatureFlags::all().iter_names() {
                    println!(
                        "  {n:<20} {:<4} (Linux {})",
                        if f.contains(flag) { "yes" } else { "no" },
                        feature_since(n)
                    );
                }
                println!("  raw: {:#x}", f.bits());
            }
            Err(e) => println!("  unknown: {e}"),
        }
        println!("\nregistrations (UFFDIO_REGISTER ioctls):");
        if regs.is_empty() {
            println!("  none: no userfaultfd could be created");
        }
        for r in &regs {
            match &r.result {
                Ok(f) => println!(
                    "  {:<14} {:<17} {:#06x} {}",
                    r.memory,
                    r.mode,
                    f.bits(),
                    ioctl_names(*f).join(" ")
                ),
                Err(e) => println!("  {:<14} {:<17} FAILED: {e}", r.memory, r.mode),
            }
        }
        println!(
            "\nhuge pages                  {} reserved, {} free, {} each",
            huge_total.map_or("?".into(), |v| v.to_string()),
            huge_free.map_or("?".into(), |v| v.to_string()),
            huge_size.map_or("?".into(), |v| format!("{} KiB", v / 1024))
        );
        if !reasons.is_empty() {
            println!("\nwhy some methods failed, and what to change:");
            for r in &reasons {
                println!("  - {r}");
            }
        }
    }
    if usable {
        ExitCode::SUCCESS
    } else {
        eprintln!("uffd-probe: userfaultfd is not usable here (see above)");
        ExitCode::from(EXIT_FAILURE)
    }
}

fn meminfo(key: &str) -> Option<u64> {
    let m = std::fs::read_to_string("/proc/meminfo").ok()?;
    m.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}
