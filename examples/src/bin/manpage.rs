//! The example program of the `userfaultfd(2)` man page, in Rust.
//!
//! Maps N pages (argument, default 3), registers them for missing-page faults and starts a
//! handler thread that polls the userfaultfd, reads one event, fills a page with a letter (`A`
//! for the first fault, `B` for the next, ...) and copies it in with `UFFDIO_COPY`. The main
//! thread reads a byte every 1024 bytes of the region and checks it saw the expected letters.

use std::os::fd::AsFd;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use test_kit::args::{self, number_in};
use test_kit::exit::{fail, finish};
use test_kit::page_size;
use test_kit::wait::{wait_readable, Wait};
use userfaultfd::mmap::MemoryMappingBuilder;
use userfaultfd::{Error, Event, Uffd, UffdBuilder};

/// The userfaultfd(2) man-page example: a handler thread serves missing-page faults by copying
/// in a page filled with a letter.
#[derive(Parser, Debug)]
#[command(name = "manpage", allow_negative_numbers = true)]
struct Cli {
    /// Pages to fault in.
    #[arg(value_name = "NUM_PAGES", default_value_t = 3, value_parser = number_in(1usize, 1000))]
    pages: usize,
}

/// The handler thread: until `pages` pages are in, poll, read one event, copy a page in.
fn serve(uffd: &Uffd, pages: usize, ps: usize) -> Result<usize, String> {
    let mut page = vec![0u8; ps];
    let mut fault = 0;
    while fault < pages {
        match wait_readable(&[uffd.as_fd()], None, Duration::from_secs(30)) {
            Ok(Wait::Ready(_)) => {}
            other => return Err(format!("poll: {other:?}")),
        }
        println!("\nfault_handler_thread():");
        println!("    poll() returns: POLLIN = 1; POLLERR = 0");
        let event = match uffd.read_event() {
            Ok(Some(e)) => e,
            // The fault was woken between poll and read (poll(2) promises no message).
            Ok(None) => continue,
            Err(e) => return Err(e.to_string()),
        };
        let Event::Pagefault { addr, rw, .. } = event else {
            return Err(format!("unexpected event {event:?}"));
        };
        println!("    UFFD_EVENT_PAGEFAULT event: {rw:?}; address = {addr:p}");
        page.fill(b'A' + (fault % 26) as u8);
        // SAFETY: `addr` is a missing page of the region registered above, which this
        // program owns; `page` is a live buffer of one page.
        match unsafe { uffd.copy(page.as_ptr().cast(), addr, ps, true) } {
            Ok(n) => {
                println!("        (uffdio_copy.copy returned {n})");
                fault += 1;
            }
            // The kernel may deliver a fault again after it was resolved: the page is there,
            // so only wake the reader.
            Err(Error::AlreadyMapped { .. }) => {
                println!("        (page already present: woken)");
                uffd.wake(addr, ps).map_err(|e| e.to_string())?;
            }
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(pages)
}

fn run(pages: usize) -> Result<(), Box<dyn std::error::Error>> {
    let ps = page_size();
    let len = pages * ps;
    // The man page uses kernel-mode faults only if permitted; the reads here are the program's
    // own, so user-mode-only faults (which need no privilege) are enough.
    let uffd = UffdBuilder::new()
        .non_blocking(true)
        .user_mode_only(true)
        .create()?;
    let region = MemoryMappingBuilder::new(len).private().build()?;
    println!("Address returned by mmap() = {:p}", region.as_ptr());
    uffd.register(region.as_ptr().cast(), len)?;

    std::thread::scope(|s| {
        let handler = s.spawn(|| {
            let r = serve(&uffd, pages, ps);
            if r.is_err() {
                // Never leave the main thread blocked: unregistering wakes it (it then reads
                // zeros and the verification fails).
                let _ = uffd.unregister(region.as_ptr().cast(), len);
            }
            r
        });
        let mut bad = None;
        for l in (0..len).step_by(1024) {
            let c = region.read_obj::<u8>(l)?;
            println!(
                "Read address {:p} in main(): {}",
                region.as_ptr().wrapping_add(l),
                c as char
            );
            let want = b'A' + ((l / ps) % 26) as u8;
            if c != want && bad.is_none() {
                bad = Some(format!(
                    "byte {l}: read {:?}, expected {:?}",
                    c as char, want as char
                ));
            }
        }
        let served = handler
            .join()
            .map_err(|_| fail("the handler thread panicked"))?
            .map_err(fail)?;
        if let Some(b) = bad {
            return Err(fail(b));
        }
        println!("\nverified: {served} faults served, every read saw the expected letter");
        Ok(())
    })
}

fn main() -> ExitCode {
    let cli: Cli = args::parse();
    finish("manpage", run(cli.pages))
}
