//! One VM: its connection, its handshake, its server, until its process exits.

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use userfaultfd::serve::{PageSource, Region, ServerBuilder, WorkingSet};
use userfaultfd::{FeatureFlags, PageMap, RegisterMode};

use crate::dirty::{self, DirtySet};
use crate::handshake::{self, Handshake, Mapping};
use crate::report::{self, VmInfo};
use crate::{log, per_vm_path, signals, Shared};

/// How often a VM's thread looks at its socket, the signals and (with `--dirty-out`) the
/// written pages.
const TICK: Duration = Duration::from_millis(100);
/// Errors logged per VM before they are only counted.
const MAX_ERROR_LOGS: u64 = 20;

/// Serves the VM on `stream`, catching any panic so that no other VM is affected; returns
/// whether the VM was served until its process exited.
pub fn run_guarded(shared: &Shared, id: u64, stream: UnixStream) -> bool {
    match catch_unwind(AssertUnwindSafe(|| run(shared, id, stream))) {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            log!("vm {id}: {e}; connection closed");
            false
        }
        Err(panic) => {
            let msg = panic
                .downcast_ref::<&str>()
                .map(|m| m.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            log!("vm {id}: internal error (panic: {msg}); connection closed");
            false
        }
    }
}

/// The peer's pid (`SO_PEERCRED`).
fn peer_pid(stream: &UnixStream) -> Result<libc::pid_t, String> {
    examples::peer_pid(stream)
        .map_err(|e| format!("cannot learn the peer's pid (SO_PEERCRED): {e}"))
}

fn run(shared: &Shared, id: u64, stream: UnixStream) -> Result<(), String> {
    let pid = peer_pid(&stream)?;
    let Handshake {
        regions,
        uffd,
        trailing,
    } = handshake::read(
        &stream,
        shared.source.len(),
        Duration::from_millis(shared.cli.handshake_timeout_ms),
    )
    .map_err(|e| format!("(pid {pid}) {e}"))?;
    let mut stream = Some(stream);
    if trailing {
        log!(
            "vm {id} (pid {pid}): refused a second handshake on the same connection \
             (it came with the first); connection closed, the VM's first handshake is served"
        );
        stream = None;
    }
    let info = VmInfo {
        id,
        pid,
        regions: regions.len(),
        bytes: regions.iter().map(|r| r.size).sum(),
        page_size: regions[0].page_size,
    };

    // Dirty tracking needs WRITE_PROTECT on the VMM's registration (it registered MISSING).
    let mut track_dirty = shared.cli.dirty_out.is_some();
    if track_dirty {
        if let Err(e) = add_write_protect(&uffd, &regions) {
            log!("vm {id} (pid {pid}): dirty tracking unavailable, served without it: {e}");
            track_dirty = false;
        }
    }

    let errors = Arc::new(AtomicU64::new(0));
    let mut builder = ServerBuilder::new()
        .register(false)
        .monitored_process(pid)
        .prefetch(if shared.prefetch() {
            shared.prefetch_bytes
        } else {
            0
        })
        .prefetch_max(userfaultfd::serve::MAX_PREFETCH.max(shared.prefetch_bytes))
        .background_threads(usize::from(shared.background_fill()))
        .record_working_set(shared.cli.record_working_set.is_some())
        .track_dirty(track_dirty)
        .on_error({
            let errors = Arc::clone(&errors);
            move |e| {
                let n = errors.fetch_add(1, Ordering::Relaxed);
                if n < MAX_ERROR_LOGS {
                    log!("vm {id} (pid {pid}): {e}");
                } else if n == MAX_ERROR_LOGS {
                    log!("vm {id} (pid {pid}): more errors, counted in the stats only");
                }
            }
        });
    if track_dirty && uffd.features().contains(FeatureFlags::WP_ASYNC) {
        let pm =
            PageMap::open_pid(pid).map_err(|e| format!("cannot open the VM's pagemap: {e}"))?;
        builder = builder.pagemap(pm);
    }
    if let Some(ws) = &shared.replay {
        let (ws, dropped) = fit_working_set(ws, &regions);
        if dropped > 0 {
            log!(
                "vm {id} (pid {pid}): {dropped} working-set entries name no page of this VM's \
                 regions, dropped"
            );
        }
        if !ws.is_empty() {
            builder = builder.replay(ws);
        }
    }
    for r in &regions {
        let source: Arc<dyn PageSource> = shared.source.clone();
        // SAFETY: the VMM handed us its userfaultfd for exactly these ranges, which it
        // registered: they are its guest memory, whose contents it asks us to define (no Rust
        // reference of this process points there).
        let region = unsafe {
            Region::from_raw_parts(r.addr as *mut libc::c_void, r.size, r.page_size, source)
        }
        .source_offset(r.offset);
        builder = builder.region(region);
    }
    let server = builder
        .start(uffd)
        .map_err(|e| format!("(pid {pid}) cannot serve: {e}"))?;
    let started = Instant::now();
    log!(
        "vm {id} (pid {pid}): serving {} regions, {}, {}-byte pages{}",
        info.regions,
        report::size(info.bytes),
        info.page_size,
        if track_dirty { ", tracking writes" } else { "" }
    );

    let mut dirty_set = track_dirty.then(|| DirtySet::new(&regions));
    let dirty_path = shared
        .cli
        .dirty_out
        .as_ref()
        .map(|p| per_vm_path(p, id, pid));
    let (mut usr1, mut usr2) = (signals::usr1(), signals::usr2());
    let mut populated = false;
    let why = loop {
        if let Some(why) = server.wait_halted(TICK) {
            break why;
        }
        if !populated && server.is_populated() {
            populated = true;
            let t = server.stats().time_to_populated.unwrap_or_default();
            log!(
                "vm {id} (pid {pid}): populated in {:.1} ms (every page present)",
                t.as_secs_f64() * 1e3
            );
        }
        if let Some(s) = &stream {
            if watch_socket(s, id, pid) {
                stream = None;
            }
        }
        let now1 = signals::usr1();
        if now1 != usr1 {
            usr1 = now1;
            if shared.cli.stats {
                eprintln!(
                    "{}",
                    report::stats_json(&info, &server.stats(), started.elapsed(), false)
                );
            }
        }
        let now2 = signals::usr2();
        if now2 != usr2 {
            usr2 = now2;
            if let (Some(set), Some(path)) = (&mut dirty_set, &dirty_path) {
                // A scan now: the writes made before the signal are all in.
                if let Ok(r) = server.dirty_pages() {
                    set.add(&r);
                }
                match dirty::write_file(path, set, Some(pid), true) {
                    Ok(bytes) => log!(
                        "vm {id} (pid {pid}): dirty layer written to {} ({} written, with contents)",
                        path.display(),
                        report::size(bytes as usize)
                    ),
                    Err(e) => log!(
                        "vm {id} (pid {pid}): cannot write the dirty layer {}: {e}",
                        path.display()
                    ),
                }
            }
        }
    };
    drop(stream);
    // The last scan: the server records write-protect faults itself, so what the VM wrote up
    // to its exit is still there although its memory is gone.
    let mut dirty_exact = false;
    if let Some(set) = &mut dirty_set {
        match server.dirty_pages() {
            Ok(r) => {
                set.add(&r);
                dirty_exact = true;
            }
            Err(e) => log!("vm {id} (pid {pid}): reading the written pages failed: {e}"),
        }
    }
    let elapsed = started.elapsed();
    let working_set = server.working_set();
    let stats = server.stats();
    let ended_normally = why.contains("monitored process exited");
    let _ = server.shutdown();
    if let Some(p) = &shared.cli.record_working_set {
        let p = per_vm_path(p, id, pid);
        match working_set.save(&p) {
            Ok(()) => log!(
                "vm {id} (pid {pid}): working set of {} pages saved to {}",
                working_set.len(),
                p.display()
            ),
            Err(e) => log!(
                "vm {id} (pid {pid}): cannot save the working set {}: {e}",
                p.display()
            ),
        }
    }
    if let (Some(set), Some(path)) = (&dirty_set, &dirty_path) {
        match dirty::write_file(path, set, None, dirty_exact) {
            Ok(bytes) => log!(
                "vm {id} (pid {pid}): dirty page list written to {} ({} written, offsets only)",
                path.display(),
                report::size(bytes as usize)
            ),
            Err(e) => log!(
                "vm {id} (pid {pid}): cannot write the dirty page list {}: {e}",
                path.display()
            ),
        }
    }
    log!(
        "vm {id} (pid {pid}): ended ({why}): {}",
        report::summary(&info, &stats, elapsed)
    );
    if shared.cli.stats {
        eprintln!("{}", report::stats_json(&info, &stats, elapsed, true));
    }
    if ended_normally {
        Ok(())
    } else {
        Err(format!(
            "(pid {pid}) serving stopped before the VM exited: {why}"
        ))
    }
}

/// Adds `WRITE_PROTECT` to the VMM's `MISSING` registration of every region (registering a
/// range again through the same userfaultfd replaces its modes).
fn add_write_protect(uffd: &userfaultfd::Uffd, regions: &[Mapping]) -> Result<(), String> {
    for r in regions {
        // SAFETY: the VMM's guest memory, registered by it with this userfaultfd; adding a mode
        // changes how its faults are reported, never memory of this process.
        let ioctls = unsafe {
            uffd.register_unchecked(
                r.addr as *mut libc::c_void,
                r.size,
                RegisterMode::MISSING | RegisterMode::WRITE_PROTECT,
            )
        }
        .map_err(|e| e.to_string())?;
        if !ioctls.contains(userfaultfd::IoctlFlags::WRITE_PROTECT) {
            return Err("the kernel offers no UFFDIO_WRITEPROTECT on this memory".into());
        }
    }
    Ok(())
}

/// The entries of `ws` that name pages of `regions`, and how many were dropped.
fn fit_working_set(ws: &WorkingSet, regions: &[Mapping]) -> (WorkingSet, usize) {
    let kept: Vec<(u32, u64)> = ws
        .entries()
        .iter()
        .copied()
        .filter(|&(ri, off)| {
            regions
                .get(ri as usize)
                .is_some_and(|r| off < r.size as u64 && off % r.page_size as u64 == 0)
        })
        .collect();
    let dropped = ws.len() - kept.len();
    (WorkingSet::from_entries(kept), dropped)
}

/// Looks at the connection once the VM is served: true when it is to be dropped (the VMM
/// closed it, or sent a second handshake, refused), false when nothing came.
fn watch_socket(s: &UnixStream, id: u64, pid: libc::pid_t) -> bool {
    let mut buf = [0u8; 4096];
    match handshake::recv_with_fds(s.as_raw_fd(), &mut buf, libc::MSG_DONTWAIT) {
        Ok(r) if r.len == 0 && r.fds.is_empty() => true, // closed by the VMM: normal
        Ok(r) => {
            log!(
                "vm {id} (pid {pid}): refused a second handshake on the same connection \
                 ({} bytes, {} descriptors); connection closed, the VM stays served",
                r.len,
                r.fds.len()
            );
            true
        }
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => false,
        Err(e) => {
            log!("vm {id} (pid {pid}): the connection failed ({e}); the VM stays served");
            true
        }
    }
}
