//! The VM process's side ([`vm_main`]): guest memory, the handshake, the touches and the
//! checks.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Instant;

use userfaultfd::{FeatureFlags, UffdBuilder};

use super::handshake::{closed_by_peer, mappings_json, send_with_fds};
use super::vm::{marker, VmSpec};
use super::HUGE;

/// Guest memory: one anonymous mapping per region (private, or hugetlb).
struct Guest {
    regions: Vec<(usize, usize, u64)>, // (addr, size, file offset)
    page_size: usize,
}

impl Guest {
    fn map(spec: &VmSpec) -> Guest {
        let page_size = if spec.huge { HUGE } else { 4096 };
        let regions = spec
            .regions
            .iter()
            .map(|&(size, offset)| {
                let flags = libc::MAP_PRIVATE
                    | libc::MAP_ANONYMOUS
                    | if spec.huge { libc::MAP_HUGETLB } else { 0 };
                // SAFETY: a new anonymous mapping; no existing memory is affected.
                let p = unsafe {
                    libc::mmap(
                        std::ptr::null_mut(),
                        size,
                        libc::PROT_READ | libc::PROT_WRITE,
                        flags,
                        -1,
                        0,
                    )
                };
                assert_ne!(
                    p,
                    libc::MAP_FAILED,
                    "mmap: {}",
                    std::io::Error::last_os_error()
                );
                if !spec.huge {
                    examples::no_huge_pages(p.cast(), size).expect("madvise");
                }
                (p as usize, size, offset)
            })
            .collect();
        Guest { regions, page_size }
    }

    fn pages(&self) -> Vec<(usize, usize)> {
        self.regions
            .iter()
            .enumerate()
            .flat_map(|(ri, r)| (0..r.1 / self.page_size).map(move |p| (ri, p)))
            .collect()
    }

    /// Copies page `p` of region `ri` out of guest memory (faulting it in).
    fn read(&self, ri: usize, p: usize, out: &mut [u8]) {
        let addr = self.regions[ri].0 + p * self.page_size;
        // SAFETY: the page lies inside a mapping of this process that stays mapped for the
        // VM's life; its contents are defined once the fault is served (the read blocks until
        // then); no Rust reference points there (raw copy into `out`, of page size).
        unsafe {
            std::ptr::copy_nonoverlapping(addr as *const u8, out.as_mut_ptr(), self.page_size)
        };
    }

    /// The bytes the memory file holds for page `p` of region `ri`.
    fn expected<'a>(&self, file: &'a [u8], ri: usize, p: usize) -> &'a [u8] {
        let off = self.regions[ri].2 as usize + p * self.page_size;
        &file[off..off + self.page_size]
    }
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "uffd-vm: {line}");
    let _ = out.flush();
}

fn fail(msg: String) -> ! {
    eprintln!("uffd-vm: FAILED: {msg}");
    std::process::exit(1)
}

fn wait_stdin() {
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
}

/// The VM's side: everything Firecracker does, then the checks. Exits the process: status 0
/// after printing `uffd-vm: ok`, 1 with `uffd-vm: FAILED: ...` on a wrong byte, 3 when the
/// handler exits before the restore is complete.
pub fn vm_main(spec: VmSpec) -> ! {
    let file = std::fs::read(&spec.memfile).unwrap_or_else(|e| fail(format!("memory file: {e}")));
    let guest = Guest::map(&spec);
    let uffd = UffdBuilder::new()
        .non_blocking(true)
        .require_features(FeatureFlags::EVENT_REMOVE)
        .create()
        .unwrap_or_else(|e| fail(format!("userfaultfd: {e}")));
    for &(addr, size, _) in &guest.regions {
        uffd.register(addr as *mut libc::c_void, size)
            .unwrap_or_else(|e| fail(format!("register: {e}")));
    }
    let sock = UnixStream::connect(&spec.socket).unwrap_or_else(|e| fail(format!("connect: {e}")));
    let handler = examples::peer_pid(&sock).unwrap_or_else(|e| fail(format!("SO_PEERCRED: {e}")));

    // The watchdog: the handler exiting before the restore is verified is a failure, reported
    // at once (the threads waiting on faults would otherwise wait forever).
    let done = Arc::new(AtomicBool::new(false));
    let verified = Arc::new(AtomicUsize::new(0));
    let total = guest.pages().len();
    {
        let (done, verified) = (Arc::clone(&done), Arc::clone(&verified));
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
        let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, handler, 0) };
        if raw < 0 {
            fail(format!(
                "pidfd_open({handler}): {}",
                std::io::Error::last_os_error()
            ));
        }
        // SAFETY: a new descriptor that nothing else owns.
        let pidfd = unsafe { OwnedFd::from_raw_fd(raw as i32) };
        thread::spawn(move || loop {
            let mut pfd = libc::pollfd {
                fd: pidfd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one live pollfd.
            if unsafe { libc::poll(&mut pfd, 1, -1) } > 0 && !done.load(Ordering::SeqCst) {
                eprintln!(
                    "uffd-vm: FAILED: the page-fault handler (pid {handler}) exited before guest \
                     memory was restored ({} of {total} pages verified)",
                    verified.load(Ordering::SeqCst)
                );
                // SAFETY: _exit ends the process at once (threads blocked on faults included).
                unsafe { libc::_exit(3) };
            }
            if done.load(Ordering::SeqCst) {
                return;
            }
        });
    }

    let json = mappings_json(&guest.regions, guest.page_size, spec.field);
    let t0 = Instant::now();
    send_with_fds(sock.as_raw_fd(), json.as_bytes(), &[uffd.as_raw_fd()])
        .unwrap_or_else(|e| fail(format!("sending the handshake: {e}")));
    say("handshake sent");
    let sock = if spec.close_socket {
        drop(sock);
        None
    } else {
        Some(sock)
    };

    let mut buf = vec![0u8; guest.page_size];
    let check = |ri: usize, p: usize, buf: &mut [u8], what: &str| {
        guest.read(ri, p, buf);
        let want = guest.expected(&file, ri, p);
        if let Some(off) = buf.iter().zip(want).position(|(a, b)| a != b) {
            fail(format!(
                "{what}: region {ri} page {p} byte {off}: {:#04x}, the memory file has {:#04x}",
                buf[off], want[off]
            ));
        }
    };
    // The first touch (a demand fault).
    check(0, 0, &mut buf, "first touch");
    let first_touch = t0.elapsed();
    verified.fetch_add(1, Ordering::SeqCst);

    if spec.second_handshake {
        let sock = sock
            .as_ref()
            .expect("second_handshake needs the socket open");
        let other = UffdBuilder::new().non_blocking(true).create().unwrap();
        send_with_fds(sock.as_raw_fd(), json.as_bytes(), &[other.as_raw_fd()])
            .unwrap_or_else(|e| fail(format!("sending the second handshake: {e}")));
        if !closed_by_peer(sock) {
            fail("the handler did not close the connection after a second handshake".into());
        }
        say("second handshake refused");
    }

    let mut order = guest.pages();
    examples::Rng::new(spec.seed).shuffle(&mut order);
    if let Some(n) = spec.pause_after {
        for &(ri, p) in &order[..n] {
            check(ri, p, &mut buf, "before the pause");
            verified.fetch_add(1, Ordering::SeqCst);
        }
        say("paused");
        wait_stdin();
    }

    // Several threads touch and verify the pages in random order.
    let barrier = Barrier::new(spec.threads);
    thread::scope(|s| {
        for t in 0..spec.threads {
            let (order, barrier, verified, check) = (&order, &barrier, &verified, &check);
            let threads = spec.threads;
            let same = spec.same_order;
            s.spawn(move || {
                let mut buf = vec![0u8; guest.page_size];
                barrier.wait();
                for (i, &(ri, p)) in order.iter().enumerate() {
                    if same || i % threads == t {
                        check(ri, p, &mut buf, "touch");
                        verified.fetch_add(1, Ordering::SeqCst);
                    }
                }
            });
        }
    });
    let all_touched = t0.elapsed();
    // Every byte, once more, now that everything is present.
    for &(ri, p) in &order {
        check(ri, p, &mut buf, "final check");
    }

    if spec.balloon {
        // The balloon frees part of region 0: REMOVE events; those pages must read as zeros.
        let (addr, size, _) = guest.regions[0];
        let ps = guest.page_size;
        let (first, count) = (size / ps / 4, (size / ps / 4).max(1));
        // SAFETY: a range inside our own guest mapping; MADV_DONTNEED discards its pages (no
        // Rust reference points there).
        let rc = unsafe {
            libc::madvise(
                (addr + first * ps) as *mut libc::c_void,
                count * ps,
                libc::MADV_DONTNEED,
            )
        };
        if rc != 0 {
            fail(format!("madvise: {}", std::io::Error::last_os_error()));
        }
        for p in first..first + count {
            guest.read(0, p, &mut buf);
            if let Some(off) = buf.iter().position(|&b| b != 0) {
                fail(format!(
                    "balloon: removed page {p} byte {off} is {:#04x}, not zero",
                    buf[off]
                ));
            }
        }
        // The rest is untouched.
        for &(ri, p) in &order {
            if ri != 0 || p < first || p >= first + count {
                check(ri, p, &mut buf, "after the balloon");
            }
        }
        say(&format!("balloon ok ({count} pages removed)"));
    }

    done.store(true, Ordering::SeqCst);

    if !spec.write_pages.is_empty() {
        for &(ri, p) in &spec.write_pages {
            let addr = guest.regions[ri].0 + p * guest.page_size;
            let m = marker(ri, p);
            for i in 0..guest.page_size {
                // SAFETY: inside our guest mapping, present (verified above); a raw write.
                unsafe { ((addr + i) as *mut u8).write_volatile(m ^ i as u8) };
            }
        }
        say("written");
        wait_stdin();
    }

    if spec.bench {
        // The eager alternative: read the whole file into fresh anonymous memory.
        let t = Instant::now();
        let mut copy = vec![0u8; file.len()];
        let mut f = std::fs::File::open(&spec.memfile).unwrap();
        f.read_exact(&mut copy).unwrap();
        let eager = t.elapsed();
        assert_eq!(copy.len(), file.len());
        say(&format!(
            "bench first_touch_us={:.1} all_touched_ms={:.1} eager_ms={:.1}",
            first_touch.as_secs_f64() * 1e6,
            all_touched.as_secs_f64() * 1e3,
            eager.as_secs_f64() * 1e3
        ));
    }
    say(&format!("ok pages={total}"));
    drop(sock);
    std::process::exit(0)
}
