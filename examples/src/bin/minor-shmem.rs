//! Minor faults on shared memory: the "alias mapping" pattern of QEMU's hugetlb/shmem postcopy.
//!
//! A memfd is mapped twice. Its pages are already in the page cache (written through the second
//! view with stale, "pre-copied" contents), but the first view, registered with
//! `UFFDIO_REGISTER_MODE_MINOR`, has no page-table entries yet, so each first touch there is a
//! MINOR fault. The handler updates the page through the second (unregistered) view and maps it
//! into the first with `UFFDIO_CONTINUE`: no copy into the faulting view at all. The main thread
//! verifies it sees the updated contents and that no stale page leaked through.

use std::os::fd::AsFd;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use test_kit::args::{self, number_in};
use test_kit::exit::{fail, finish};
use test_kit::page_size;
use test_kit::pattern::{check_page, fill_page};
use test_kit::wait::{wait_readable, StopSignal, Wait};
use userfaultfd::mmap::{MemoryMapping, SharedMemory};
use userfaultfd::{
    Error, Event, EventBuffer, FaultKind, FeatureFlags, IoctlFlags, RegisterMode, Uffd, UffdBuilder,
};

/// A memfd mapped twice; faults on the registered view are MINOR faults, the handler updates
/// the page through the other view and resolves them with UFFDIO_CONTINUE.
#[derive(Parser, Debug)]
#[command(name = "minor-shmem", allow_negative_numbers = true)]
struct Cli {
    /// Pages of shared memory.
    #[arg(long, value_name = "N", default_value_t = 256, value_parser = number_in(1usize, 1 << 20))]
    pages: usize,
}

const STALE_SEED: u64 = 1;
const FRESH_SEED: u64 = 2;

fn serve(
    uffd: &Uffd,
    filler: &MemoryMapping,
    guest_base: usize,
    len: usize,
    stop: &StopSignal,
) -> Result<u64, String> {
    let ps = page_size();
    let mut buf = EventBuffer::new(8);
    let mut page = vec![0u8; ps];
    let mut served = 0u64;
    loop {
        match wait_readable(&[uffd.as_fd()], Some(stop), Duration::from_secs(30)) {
            Ok(Wait::Ready(_)) => {}
            Ok(Wait::Stopped) => return Ok(served),
            other => return Err(format!("waiting for faults: {other:?}")),
        }
        for event in uffd.read_events(&mut buf).map_err(|e| e.to_string())? {
            let event = event.map_err(|e| e.to_string())?;
            let Event::Pagefault { kind, addr, .. } = event else {
                return Err(format!("unexpected event {event:?}"));
            };
            if kind != FaultKind::Minor {
                return Err(format!("expected a MINOR fault, got {kind:?} at {addr:p}"));
            }
            let off = (addr as usize & !(ps - 1)) - guest_base;
            if off >= len {
                return Err(format!("fault at {addr:p} outside the region"));
            }
            // Update the page cache page through the other view...
            fill_page(FRESH_SEED, (off / ps) as u64, &mut page);
            filler.write_slice(&page, off).map_err(|e| e.to_string())?;
            // ...and map it where the fault happened.
            match uffd.r#continue((guest_base + off) as *mut _, ps, true) {
                Ok(_) => served += 1,
                Err(Error::AlreadyMapped { .. }) => uffd
                    .wake((guest_base + off) as *mut _, ps)
                    .map_err(|e| e.to_string())?,
                Err(e) => return Err(e.to_string()),
            }
        }
    }
}

fn run(pages: usize) -> Result<(), Box<dyn std::error::Error>> {
    let ps = page_size();
    let len = pages * ps;
    let uffd = UffdBuilder::new()
        .non_blocking(true)
        .user_mode_only(true)
        .require_features(FeatureFlags::MINOR_SHMEM)
        .require_ioctls(IoctlFlags::CONTINUE)
        .create()?;
    let shm = SharedMemory::new("minor-shmem", len as u64)?;
    let guest = MemoryMapping::from_fd(&shm, len)?;
    let filler = MemoryMapping::from_fd(&shm, len)?;

    // Populate the page cache with stale contents, through the filler view only.
    let mut page = vec![0u8; ps];
    for i in 0..pages {
        fill_page(STALE_SEED, i as u64, &mut page);
        filler.write_slice(&page, i * ps)?;
    }
    let ioctls = uffd.register_region(&guest, RegisterMode::MINOR)?;
    println!(
        "memfd: {pages} pages mapped twice (guest view {:p}, filler view {:p}); guest view \
         registered MINOR (ioctls {ioctls:?})",
        guest.as_ptr(),
        filler.as_ptr()
    );

    let stop = StopSignal::new()?;
    let guest_base = guest.as_ptr() as usize;
    let (served, bad) = std::thread::scope(|s| {
        let handler = s.spawn(|| {
            let r = serve(&uffd, &filler, guest_base, len, &stop);
            if r.is_err() {
                let _ = uffd.unregister_region(&guest);
            }
            r
        });
        // Touch every page of the guest view (reads and writes) and check its contents.
        let mut scratch = vec![0u8; ps];
        let mut got = vec![0u8; ps];
        let mut bad = None;
        for i in 0..pages {
            if guest.read_slice(&mut got, i * ps).is_err()
                || check_page(FRESH_SEED, i as u64, &got, &mut scratch).is_err()
            {
                bad.get_or_insert(format!("page {i} does not hold the handler's contents"));
            }
        }
        stop.signal();
        (handler.join(), bad)
    });
    let served = served
        .map_err(|_| fail("the handler thread panicked"))?
        .map_err(fail)?;
    if let Some(b) = bad {
        return Err(fail(b));
    }
    if served != pages as u64 {
        return Err(fail(format!("{served} minor faults for {pages} pages")));
    }
    // Both views now show the same page cache pages.
    let mut a = vec![0u8; len];
    let mut b = vec![0u8; len];
    guest.read_slice(&mut a, 0)?;
    filler.read_slice(&mut b, 0)?;
    if a != b {
        return Err(fail("the two views differ"));
    }
    println!("minor faults: {served} (each resolved with UFFDIO_CONTINUE, no page copied into the faulting view)");
    println!("verified: all {pages} pages show the handler's contents in both views");
    Ok(())
}

fn main() -> ExitCode {
    let cli: Cli = args::parse();
    finish("minor-shmem", run(cli.pages))
}
