//! Tests of `uffd-handler` with a client that plays Firecracker's part of the UFFD snapshot
//! backend (`uffd_handler_client`): each VM is a process of its own (this binary, running
//! `vm_process`) that maps guest memory, creates and registers the userfaultfd, sends the
//! handshake, touches its memory from several threads in random order and verifies every byte
//! against the memory file. Every wait is bounded; the handler and the VMs are killed when a
//! test ends, however it ends.

mod common;
mod uffd_handler_client;

use std::os::fd::AsRawFd;

use uffd_handler_client::{
    closed_by_peer, free_huge_pages, marker, memfile, send_handshake, Handler, PageSizeField,
    TempDir, Vm, VmSpec, HUGE, VM_ENV,
};
use userfaultfd::UffdBuilder;

const MIB: usize = 1 << 20;

/// The VM process's entry point: does nothing unless run by [`Vm::spawn`] with a spec.
#[test]
fn vm_process() {
    if let Ok(spec) = std::env::var(VM_ENV) {
        uffd_handler_client::vm_main(serde_json::from_str(&spec).expect("VM spec"));
    }
}

/// Whether a userfaultfd with `EVENT_REMOVE` can be made here (root, or the sysctl).
fn uffd_available() -> bool {
    let ok = UffdBuilder::new()
        .require_features(userfaultfd::FeatureFlags::EVENT_REMOVE)
        .create()
        .is_ok();
    if !ok {
        test_kit::report::skip(
            "no userfaultfd with EVENT_REMOVE for kernel-mode faults here: run as root, or \
             `sysctl -w vm.unprivileged_userfaultfd=1`",
        );
    }
    ok
}

/// The final stats line of VM `pid` (`--stats`).
fn final_stats(h: &Handler, pid: libc::pid_t) -> serde_json::Value {
    h.wait_line(&["\"final\":true", &format!("\"pid\":{pid},")]);
    h.stats()
        .into_iter()
        .find(|s| s["final"] == true && s["pid"] == pid)
        .expect("final stats")
}

/// Runs one VM of `spec` through the running handler `h` to its end: the VM checks every
/// byte, and the handler logs that it ended with the VM's process.
fn serve_one_vm(h: &Handler, spec: &VmSpec) {
    let mut vm = Vm::spawn(spec);
    vm.expect_ok();
    h.wait_line(&[
        &format!("(pid {})", vm.pid()),
        "ended (the monitored process exited)",
    ]);
}

#[test]
fn one_region_served_once_with_stats() {
    if !uffd_available() {
        return;
    }
    let dir = TempDir::new("one");
    let (sock, mem) = (dir.path("sock"), dir.path("mem"));
    memfile(&mem, 8 * MIB, 11);
    let mut h = Handler::start(&sock, &mem, &["--once", "--stats"]);
    let mut vm = Vm::spawn(&VmSpec::new(&sock, &mem, vec![(8 * MIB, 0)]));
    vm.expect_ok();
    assert!(h.wait().success(), "{}", h.log());
    let end = h.wait_line(&["ended (the monitored process exited)"]);
    assert!(end.contains("1 regions, 8.0 MiB"), "{end}");
    let s = final_stats(&h, vm.pid());
    let p = &s["pages"];
    let present = ["demand", "prefetch", "background", "replay"]
        .iter()
        .map(|k| p[k].as_u64().unwrap())
        .sum::<u64>();
    assert_eq!(present, 2048, "{s}");
    // Background fill may well have copied everything before the first touch.
    assert!(s["populated_ms"].is_number(), "{s}");
    h.wait_line(&["populated in"]);
    assert!(!sock.exists(), "--once removes its socket");
    h.assert_no_panic();
}

#[test]
fn several_regions_at_different_file_offsets_on_demand() {
    if !uffd_available() {
        return;
    }
    let dir = TempDir::new("several");
    let (sock, mem) = (dir.path("sock"), dir.path("mem"));
    memfile(&mem, 16 * MIB, 12);
    // Out of order in the file, one not 2 MiB-sized, one at an odd page offset.
    let regions = vec![
        (2 * MIB, 10 * MIB as u64),
        (4 * MIB, 0),
        (MIB + 12288, (5 * MIB + 4096) as u64),
    ];
    let mut h = Handler::start(
        &sock,
        &mem,
        &["--once", "--stats", "--no-prefetch", "--no-background-fill"],
    );
    let mut spec = VmSpec::new(&sock, &mem, regions);
    spec.field = PageSizeField::PageSizeKib; // older Firecracker: bytes despite the name
    spec.threads = 3;
    let mut vm = Vm::spawn(&spec);
    vm.expect_ok();
    assert!(h.wait().success(), "{}", h.log());
    let s = final_stats(&h, vm.pid());
    let pages = (7 * MIB + 12288) / 4096;
    // Pure demand paging: every page by its own fault, nothing else.
    assert_eq!(s["pages"]["demand"].as_u64().unwrap(), pages as u64, "{s}");
    assert_eq!(s["pages"]["prefetch"], 0, "{s}");
    assert_eq!(s["pages"]["background"], 0, "{s}");
    h.assert_no_panic();
}

#[test]
fn two_threads_touch_the_same_pages_at_once() {
    if !uffd_available() {
        return;
    }
    let dir = TempDir::new("same");
    let (sock, mem) = (dir.path("sock"), dir.path("mem"));
    memfile(&mem, 4 * MIB, 13);
    let mut h = Handler::start(
        &sock,
        &mem,
        &["--once", "--stats", "--no-prefetch", "--no-background-fill"],
    );
    let mut spec = VmSpec::new(&sock, &mem, vec![(4 * MIB, 0)]);
    spec.same_order = true;
    spec.threads = 2;
    spec.field = PageSizeField::Both;
    let mut vm = Vm::spawn(&spec);
    vm.expect_ok();
    assert!(h.wait().success(), "{}", h.log());
    let s = final_stats(&h, vm.pid());
    // Each page copied once, however many threads faulted on it.
    assert_eq!(s["pages"]["demand"].as_u64().unwrap(), 1024, "{s}");
    assert!(s["demand_faults"].as_u64().unwrap() >= 1024, "{s}");
    h.assert_no_panic();
}

#[test]
fn balloon_removed_pages_read_as_zeros() {
    if !uffd_available() {
        return;
    }
    let dir = TempDir::new("balloon");
    let (sock, mem) = (dir.path("sock"), dir.path("mem"));
    memfile(&mem, 8 * MIB, 14);
    let mut h = Handler::start(&sock, &mem, &["--once", "--stats"]);
    let mut spec = VmSpec::new(&sock, &mem, vec![(8 * MIB, 0)]);
    spec.balloon = true;
    let mut vm = Vm::spawn(&spec);
    vm.expect_ok();
    vm.wait_line("uffd-vm: balloon ok");
    assert!(h.wait().success(), "{}", h.log());
    let s = final_stats(&h, vm.pid());
    assert!(s["events"].as_u64().unwrap() >= 1, "{s}");
    assert_eq!(s["pages"]["removed_zero"].as_u64().unwrap(), 512, "{s}");
    h.assert_no_panic();
}

#[test]
fn hugetlb_guest_with_2mib_pages() {
    if !uffd_available() {
        return;
    }
    let need = 8;
    let free = free_huge_pages();
    if free < need {
        test_kit::report::skip(format!(
            "needs {need} free 2 MiB huge pages, {free} free (sysctl -w vm.nr_hugepages=128)"
        ));
        return;
    }
    let dir = TempDir::new("huge");
    let (sock, mem) = (dir.path("sock"), dir.path("mem"));
    memfile(&mem, 20 * MIB, 15);
    let mut h = Handler::start(&sock, &mem, &["--once", "--stats"]);
    // Two regions: 12 MiB from 4 MiB in the file, 4 MiB from 16 MiB.
    let mut spec = VmSpec::new(
        &sock,
        &mem,
        vec![(12 * MIB, 4 * MIB as u64), (4 * MIB, 16 * MIB as u64)],
    );
    spec.huge = true;
    let mut vm = Vm::spawn(&spec);
    vm.expect_ok();
    assert!(h.wait().success(), "{}", h.log());
    h.wait_line(&["2097152-byte pages"]);
    let s = final_stats(&h, vm.pid());
    assert_eq!(s["page_size"], HUGE as u64, "{s}");
    let p = &s["pages"];
    let present: u64 = ["demand", "prefetch", "background"]
        .iter()
        .map(|k| p[k].as_u64().unwrap())
        .sum();
    assert_eq!(present, 8, "{s}");
    h.assert_no_panic();
}

#[test]
fn two_vms_at_once_and_one_killed_leaves_the_other_served() {
    if !uffd_available() {
        return;
    }
    let dir = TempDir::new("two");
    let (sock, mem) = (dir.path("sock"), dir.path("mem"));
    memfile(&mem, 8 * MIB, 16);
    // No background fill: both VMs stay mid-restore until they touch their pages.
    let h = Handler::start(&sock, &mem, &["--stats", "--no-background-fill"]);
    let mut a = VmSpec::new(&sock, &mem, vec![(8 * MIB, 0)]);
    a.pause_after = Some(100);
    let mut b = a.clone();
    b.seed = 2;
    b.regions = vec![(4 * MIB, 2 * MIB as u64), (2 * MIB, 0)];
    let mut vm_a = Vm::spawn(&a);
    let mut vm_b = Vm::spawn(&b);
    vm_a.wait_line("uffd-vm: paused");
    vm_b.wait_line("uffd-vm: paused");
    // Both are being served now, from the one memory file.
    h.wait_lines(&["serving"], 2);
    // SIGUSR1: a stats line per live VM.
    h.signal(libc::SIGUSR1);
    h.wait_lines(&["\"final\":false"], 2);
    // One VM dies mid-restore: its server stops, the other's goes on.
    vm_a.kill();
    let ended = h.wait_line(&[
        &format!("(pid {})", vm_a.pid()),
        "ended (the monitored process exited)",
    ]);
    assert!(ended.contains("not fully populated"), "{ended}");
    vm_b.resume();
    vm_b.expect_ok();
    h.wait_line(&[
        &format!("(pid {})", vm_b.pid()),
        "ended (the monitored process exited)",
    ]);
    // The handler serves the next VM as well.
    serve_one_vm(
        &h,
        &VmSpec::new(&sock, &mem, vec![(2 * MIB, 6 * MIB as u64)]),
    );
    h.assert_no_panic();
}

#[test]
fn bad_handshakes_close_their_connection_only() {
    if !uffd_available() {
        return;
    }
    let dir = TempDir::new("bad");
    let (sock, mem) = (dir.path("sock"), dir.path("mem"));
    memfile(&mem, 4 * MIB, 17);
    let h = Handler::start(&sock, &mem, &[]);
    let uffd = UffdBuilder::new().non_blocking(true).create().unwrap();
    let devnull = std::fs::File::open("/dev/null").unwrap();
    let ok = |addr: usize, size: usize, off: usize| {
        format!(r#"{{"base_host_virt_addr":{addr},"size":{size},"offset":{off},"page_size":4096}}"#)
    };
    let u = uffd.as_raw_fd();
    let cases: Vec<(&str, String, Vec<i32>, &str)> = vec![
        ("not JSON", "GET / HTTP/1.1\r\n\r\n".into(), vec![u], "is not JSON"),
        ("not the array", r#"{"regions":[]}"#.into(), vec![u], "not an array of guest region mappings"),
        ("no fd", format!("[{}]", ok(0x10000000, 4096, 0)), vec![], "no file descriptor attached"),
        ("two fds", format!("[{}]", ok(0x10000000, 4096, 0)), vec![u, u], "2 file descriptors attached"),
        ("not a uffd", format!("[{}]", ok(0x10000000, 4096, 0)), vec![devnull.as_raw_fd()], "is not a userfaultfd"),
        (
            "overlap",
            format!("[{},{}]", ok(0x10000000, 2 * MIB, 0), ok(0x10100000, MIB, 2 * MIB)),
            vec![u],
            "overlap",
        ),
        ("past the file", format!("[{}]", ok(0x10000000, 2 * MIB, 3 * MIB)), vec![u], "extend past the memory file"),
        (
            "page size",
            r#"[{"base_host_virt_addr":268435456,"size":65536,"offset":0,"page_size":65536}]"#.into(),
            vec![u],
            "page size 65536 is neither",
        ),
        (
            "disagreeing page sizes",
            r#"[{"base_host_virt_addr":268435456,"size":8192,"offset":0,"page_size":4096,"page_size_kib":4}]"#.into(),
            vec![u],
            "disagree",
        ),
        ("misaligned", format!("[{}]", ok(0x10000800, 4096, 0)), vec![u], "not aligned"),
        ("empty array", "[]".into(), vec![u], "no guest region"),
        ("cut short", r#"[{"base_host_virt_addr":2684"#.into(), vec![u], "cut short"),
    ];
    for (i, (what, msg, fds, expect)) in cases.iter().enumerate() {
        let s = send_handshake(&sock, msg.as_bytes(), fds);
        if *what == "cut short" {
            // The rest never comes: the connection ends.
            s.shutdown(std::net::Shutdown::Write).unwrap();
        }
        assert!(
            closed_by_peer(&s),
            "{what}: the handler did not close the connection"
        );
        let line = h.wait_line(&[&format!("vm {}", i + 1), expect]);
        assert!(line.contains("connection closed"), "{what}: {line}");
    }
    // A connection that closes before any handshake.
    drop(std::os::unix::net::UnixStream::connect(&sock).unwrap());
    h.wait_line(&["closed before any handshake"]);
    // The handler is still there and serves a good VM.
    serve_one_vm(&h, &VmSpec::new(&sock, &mem, vec![(4 * MIB, 0)]));
    h.assert_no_panic();
}

/// A connection that never completes its handshake is closed when `--handshake-timeout-ms`
/// runs out, whether it sent nothing or part of a message (whose descriptor the handler then
/// closes), and the handler goes on serving.
#[test]
fn silent_connections_are_closed_after_the_handshake_timeout() {
    if !uffd_available() {
        return;
    }
    let dir = TempDir::new("silent");
    let (sock, mem) = (dir.path("sock"), dir.path("mem"));
    memfile(&mem, 4 * MIB, 23);
    let h = Handler::start(&sock, &mem, &["--handshake-timeout-ms", "300"]);
    // Connected, and nothing sent.
    let quiet = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    assert!(
        closed_by_peer(&quiet),
        "the handler kept a silent connection"
    );
    let line = h.wait_line(&[
        "vm 1",
        "no complete handshake within 300ms (0 bytes received)",
    ]);
    assert!(line.contains("connection closed"), "{line}");
    // Half a message with the uffd attached, the connection kept open.
    let uffd = UffdBuilder::new().non_blocking(true).create().unwrap();
    let half = br#"[{"base_host_virt_addr":268435456,"size":"#;
    let s = send_handshake(&sock, half, &[uffd.as_raw_fd()]);
    assert!(closed_by_peer(&s), "the handler kept a half-sent handshake");
    h.wait_line(&[
        "vm 2",
        &format!(
            "no complete handshake within 300ms ({} bytes received)",
            half.len()
        ),
    ]);
    drop((quiet, s));
    // The descriptor that came with the half message is closed, not kept.
    let uffds = std::fs::read_dir(format!("/proc/{}/fd", h.pid()))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|l| l.to_string_lossy() == "anon_inode:[userfaultfd]")
        .count();
    assert_eq!(uffds, 0, "the handler kept the half message's userfaultfd");
    // The handler is still there and serves a good VM.
    serve_one_vm(&h, &VmSpec::new(&sock, &mem, vec![(4 * MIB, 0)]));
    h.assert_no_panic();
}

#[test]
fn once_with_a_bad_handshake_exits_with_status_1() {
    let dir = TempDir::new("oncebad");
    let (sock, mem) = (dir.path("sock"), dir.path("mem"));
    memfile(&mem, MIB, 24);
    let mut h = Handler::start(&sock, &mem, &["--once"]);
    let s = send_handshake(&sock, b"not json", &[]);
    assert!(closed_by_peer(&s));
    assert_eq!(h.wait().code(), Some(1), "{}", h.log());
    h.wait_line(&["is not JSON", "connection closed"]);
    h.assert_no_panic();
}

#[test]
fn a_second_handshake_is_refused_and_the_vm_stays_served() {
    if !uffd_available() {
        return;
    }
    let dir = TempDir::new("second");
    let (sock, mem) = (dir.path("sock"), dir.path("mem"));
    memfile(&mem, 4 * MIB, 18);
    let mut h = Handler::start(&sock, &mem, &["--once", "--no-background-fill"]);
    let mut spec = VmSpec::new(&sock, &mem, vec![(4 * MIB, 0)]);
    spec.second_handshake = true;
    let mut vm = Vm::spawn(&spec);
    vm.expect_ok();
    vm.wait_line("uffd-vm: second handshake refused");
    h.wait_line(&["refused a second handshake on the same connection"]);
    assert!(h.wait().success(), "{}", h.log());
    h.assert_no_panic();
}

#[test]
fn socket_closed_right_after_the_handshake() {
    if !uffd_available() {
        return;
    }
    let dir = TempDir::new("closed");
    let (sock, mem) = (dir.path("sock"), dir.path("mem"));
    memfile(&mem, 4 * MIB, 19);
    let mut h = Handler::start(&sock, &mem, &["--once"]);
    let mut spec = VmSpec::new(&sock, &mem, vec![(4 * MIB, 0)]);
    spec.close_socket = true;
    let mut vm = Vm::spawn(&spec);
    vm.expect_ok();
    assert!(h.wait().success(), "{}", h.log());
    h.wait_line(&["ended (the monitored process exited)"]);
}

#[test]
fn handler_killed_mid_restore_fails_the_vm_clearly() {
    if !uffd_available() {
        return;
    }
    let dir = TempDir::new("killed");
    let (sock, mem) = (dir.path("sock"), dir.path("mem"));
    memfile(&mem, 4 * MIB, 20);
    let mut h = Handler::start(
        &sock,
        &mem,
        &["--once", "--no-prefetch", "--no-background-fill"],
    );
    let mut spec = VmSpec::new(&sock, &mem, vec![(4 * MIB, 0)]);
    spec.pause_after = Some(10);
    let mut vm = Vm::spawn(&spec);
    vm.wait_line("uffd-vm: paused");
    h.kill();
    // The VM goes on touching missing pages: it must fail, not hang.
    vm.resume();
    let st = vm.wait();
    assert_eq!(st.code(), Some(3), "{}", vm.output());
    let err = vm.stderr();
    assert!(
        err.contains("the page-fault handler")
            && err.contains("exited before guest memory was restored"),
        "{err}"
    );
}

/// A parsed `UFFDDIRT` file: (flags, page size, ranges, contents).
fn read_dirty(path: &std::path::Path) -> (u32, u64, Vec<(u64, u64)>, Vec<u8>) {
    let b = std::fs::read(path).unwrap();
    assert_eq!(&b[..8], b"UFFDDIRT");
    let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
    let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
    assert_eq!(u32_at(8), 1);
    let (flags, page, n) = (u32_at(12), u64_at(16), u64_at(24) as usize);
    let ranges: Vec<(u64, u64)> = (0..n)
        .map(|i| (u64_at(32 + 16 * i), u64_at(40 + 16 * i)))
        .collect();
    let rest = b[32 + 16 * n..].to_vec();
    let total: u64 = ranges.iter().map(|r| r.1).sum();
    assert_eq!(rest.len() as u64, if flags & 1 != 0 { total } else { 0 });
    (flags, page, ranges, rest)
}

#[test]
fn dirty_out_lists_written_pages_with_contents_on_sigusr2() {
    if !uffd_available() {
        return;
    }
    let dir = TempDir::new("dirty");
    let (sock, mem) = (dir.path("sock"), dir.path("mem"));
    memfile(&mem, 8 * MIB, 21);
    let out = dir.path("dirty-{pid}");
    let mut h = Handler::start(
        &sock,
        &mem,
        &["--once", "--dirty-out", out.to_str().unwrap()],
    );
    // Region 0 is 2 MiB from 6 MiB in the file, region 1 4 MiB from 0.
    let mut spec = VmSpec::new(&sock, &mem, vec![(2 * MIB, 6 * MIB as u64), (4 * MIB, 0)]);
    spec.write_pages = vec![(0, 3), (0, 4), (1, 0), (1, 1000)];
    let mut vm = Vm::spawn(&spec);
    vm.wait_line("uffd-vm: written");
    h.wait_line(&["tracking writes"]);
    // The platform pauses the VM (here: it waits on stdin), then asks for the layer.
    h.signal(libc::SIGUSR2);
    h.wait_line(&["dirty layer written"]);
    let path = dir.path(&format!("dirty-{}", vm.pid()));
    let (flags, page, ranges, contents) = read_dirty(&path);
    assert_eq!((flags, page), (3, 4096));
    // Sorted by file offset: region 1's pages (file 0 and 1000 pages on), then region 0's.
    let want = vec![
        (0u64, 4096u64),
        (1000 * 4096, 4096),
        (6 * MIB as u64 + 3 * 4096, 2 * 4096),
    ];
    assert_eq!(ranges, want);
    let pages = [(1, 0), (1, 1000), (0, 3), (0, 4)];
    for (k, &(ri, p)) in pages.iter().enumerate() {
        let m = marker(ri, p);
        let got = &contents[k * 4096..(k + 1) * 4096];
        assert!(
            got.iter().enumerate().all(|(i, &b)| b == m ^ i as u8),
            "page {ri}/{p}"
        );
    }
    vm.resume();
    vm.expect_ok();
    assert!(h.wait().success(), "{}", h.log());
    h.wait_line(&["dirty page list written", "offsets only"]);
    let (flags, _, ranges, _) = read_dirty(&path);
    // Offsets only (no contents), exact: the server's record outlives the VM.
    assert_eq!(flags, 2);
    assert_eq!(ranges, want);
    h.assert_no_panic();
}

#[test]
fn working_set_recorded_then_replayed() {
    if !uffd_available() {
        return;
    }
    let dir = TempDir::new("ws");
    let (sock, mem) = (dir.path("sock"), dir.path("mem"));
    memfile(&mem, 4 * MIB, 22);
    let ws = dir.path("ws");
    let ws_arg = ws.to_str().unwrap();
    let spec = VmSpec::new(&sock, &mem, vec![(4 * MIB, 0)]);
    // Recorded without prefetch, every page is demanded, so the working set names them all.
    {
        let mut h = Handler::start(
            &sock,
            &mem,
            &[
                "--once",
                "--no-background-fill",
                "--no-prefetch",
                "--record-working-set",
                ws_arg,
            ],
        );
        Vm::spawn(&spec).expect_ok();
        assert!(h.wait().success(), "{}", h.log());
        h.wait_line(&["working set of", "saved"]);
    }
    let mut h = Handler::start(
        &sock,
        &mem,
        &[
            "--once",
            "--stats",
            "--no-background-fill",
            "--replay-working-set",
            ws_arg,
        ],
    );
    // The VM touches one page, then waits while the replay copies the rest.
    let mut spec = spec;
    spec.pause_after = Some(0);
    let mut vm = Vm::spawn(&spec);
    vm.wait_line("uffd-vm: paused");
    h.wait_line(&["populated in"]);
    vm.resume();
    vm.expect_ok();
    assert!(h.wait().success(), "{}", h.log());
    let s = final_stats(&h, vm.pid());
    let replay = s["pages"]["replay"].as_u64().unwrap();
    // Everything but the first touch's prefetch chunk (64 pages) came from the replay.
    assert!(replay >= 1024 - 64, "{s}");
}

#[test]
fn command_line_errors() {
    let bin = env!("CARGO_BIN_EXE_uffd-handler");
    let limit = std::time::Duration::from_secs(60);
    // Bad arguments: usage, status 2.
    for args in [
        &[][..],
        &["only-one"],
        &["s", "m", "--bogus"],
        &["s", "m", "--record-working-set"],
        &["s", "m", "--handshake-timeout-ms", "0"],
        &["s", "m", "--handshake-timeout-ms", "-5"],
        &["s", "m", "--handshake-timeout-ms", "soon"],
        &["s", "m", "--handshake-timeout-ms", "3600001"],
    ] {
        let out = common::run_limited(bin, args, limit).unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.starts_with("error:") && err.contains("--help"),
            "{args:?}: {err}"
        );
    }
    let out = common::run(bin, &["--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for word in [
        "--no-background-fill",
        "--dirty-out",
        "on by default",
        "SIGUSR1",
    ] {
        assert!(help.contains(word), "{word} not in --help:\n{help}");
    }
    // A missing memory file: status 1, a clear message, no panic.
    let dir = TempDir::new("cli");
    let sock = dir.path("sock");
    let out = common::run_limited(
        bin,
        &[
            sock.to_str().unwrap(),
            dir.path("missing").to_str().unwrap(),
        ],
        limit,
    )
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("cannot open the memory file"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    // A bad working-set file: status 1.
    let mem = dir.path("mem");
    memfile(&mem, MIB, 1);
    std::fs::write(dir.path("ws"), b"not a working set").unwrap();
    let out = common::run_limited(
        bin,
        &[
            sock.to_str().unwrap(),
            mem.to_str().unwrap(),
            "--replay-working-set",
            dir.path("ws").to_str().unwrap(),
        ],
        limit,
    )
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("cannot load the working set"), "{err}");
}

/// Figures for the README: a 256 MiB guest image through the handler (run with
/// `cargo test --release -p examples --test uffd_handler -- --ignored --nocapture`).
#[test]
#[ignore = "a measurement, not a check"]
fn bench_256mib_guest() {
    if !uffd_available() {
        return;
    }
    let dir = TempDir::new("bench");
    let (sock, mem) = (dir.path("sock"), dir.path("mem"));
    memfile(&mem, 256 * MIB, 23);
    for args in [
        &["--once", "--stats"][..],
        &["--once", "--stats", "--no-background-fill"],
    ] {
        // Warm the page cache, as for every run.
        let _ = std::fs::read(&mem).unwrap();
        let mut h = Handler::start(&sock, &mem, args);
        let mut spec = VmSpec::new(&sock, &mem, vec![(256 * MIB, 0)]);
        spec.bench = true;
        let mut vm = Vm::spawn(&spec);
        vm.expect_ok();
        assert!(h.wait().success());
        let s = final_stats(&h, vm.pid());
        println!("{args:?}: {}", vm.wait_line("uffd-vm: bench"));
        println!(
            "  populated_ms={} latency_us={} pages={}",
            s["populated_ms"], s["latency_us"], s["pages"]
        );
    }
}
