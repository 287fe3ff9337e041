//! Post-copy over TCP: pages are pulled from another process on demand.
//!
//! By default the program starts a copy of itself with `--serve`: that process holds a memory
//! image and serves it on an ephemeral port of 127.0.0.1 with the runtime's page server
//! ([`TcpImageServer`], the page-server protocol of `userfaultfd::serve`: a greeting with the
//! image's length, then `offset, len` requests answered by a status and the bytes). This process
//! (the destination) maps an empty private region and serves its faults with the runtime
//! ([`ServerBuilder`]) from a [`TcpSource`] connected to that server: each missing-page fault is
//! resolved with the faulting page and the rest of its aligned chunk of `--prefetch` pages
//! (prefetch), fetched in one request (which reads the faulting page again rather than split
//! the chunk in two requests) and placed with one `UFFDIO_COPY` per run. Background fill is
//! off, so every page arrives because a fault asked for it. The main thread touches every page
//! in random order, then the program prints the runtime's statistics (demand faults, pages by
//! path, fault latency, requests) and verifies the whole image.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, ToSocketAddrs};
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use test_kit::args::{self, number_in};
use test_kit::child::wait_child;
use test_kit::exit::{fail, finish};
use test_kit::measure::mb_per_s;
use test_kit::page_size;
use test_kit::pattern::{check_page, fill_page};
use test_kit::rng::Rng;
use userfaultfd::mmap::MemoryMappingBuilder;
use userfaultfd::serve::{PageSource, Region, ServerBuilder, TcpImageServer, TcpSource};
use userfaultfd::UffdBuilder;

/// Post-copy over TCP: a server process holds a memory image; the client registers an empty
/// region with userfaultfd and pulls pages on demand, with prefetch of neighbouring pages.
/// With no arguments it starts a server process (--serve) on 127.0.0.1 and connects to it.
#[derive(Parser, Debug)]
#[command(name = "page-server", allow_negative_numbers = true)]
struct Cli {
    /// Image size in pages.
    #[arg(long, value_name = "N", default_value_t = 8192, value_parser = number_in(1usize, 1 << 22))]
    pages: usize,
    /// Pages fetched per fault, the faulting one included: the fault's aligned chunk of K
    /// pages, K rounded down to a power of two.
    #[arg(long, value_name = "K", default_value_t = 16, value_parser = number_in(1usize, 1024))]
    prefetch: usize,
    /// Be the server: print "listening on ADDR" and serve one client (until all of its
    /// connections are closed).
    #[arg(long, conflicts_with = "connect")]
    serve: bool,
    /// Be only the client of a server started with --serve.
    #[arg(long, value_name = "HOST:PORT", value_parser = socket_addr)]
    connect: Option<String>,
}

/// A `--connect` address: `HOST:PORT` that resolves.
fn socket_addr(s: &str) -> Result<String, String> {
    match s.to_socket_addrs().map(|mut addrs| addrs.next()) {
        Ok(Some(_)) => Ok(s.to_string()),
        Ok(None) => Err(format!("{s:?} resolves to no address")),
        Err(e) => Err(format!("expected HOST:PORT, not {s:?} ({e})")),
    }
}

const SEED: u64 = 0x9a9e;
const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// The image the server holds, generated on request: page `n` is `fill_page(SEED, n)`.
struct Pattern {
    pages: u64,
    ps: usize,
}

impl PageSource for Pattern {
    fn len(&self) -> u64 {
        self.pages * self.ps as u64
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        if offset
            .checked_add(buf.len() as u64)
            .map_or(true, |e| e > self.len())
        {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let ps = self.ps as u64;
        let mut page = Vec::new();
        let mut done = 0;
        while done < buf.len() {
            let at = offset + done as u64;
            let (index, inner) = (at / ps, (at % ps) as usize);
            let n = (self.ps - inner).min(buf.len() - done);
            if n == self.ps {
                fill_page(SEED, index, &mut buf[done..done + n]);
            } else {
                // A part of a page: generate it whole, copy the part.
                page.resize(self.ps, 0);
                fill_page(SEED, index, &mut page);
                buf[done..done + n].copy_from_slice(&page[inner..inner + n]);
            }
            done += n;
        }
        Ok(())
    }
}

fn serve(pages: usize) -> Result<(), Box<dyn std::error::Error>> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    println!("listening on {}", listener.local_addr()?);
    std::io::stdout().flush()?;
    let image = Arc::new(Pattern {
        pages: pages as u64,
        ps: page_size(),
    });
    let server = TcpImageServer::new(listener, image)
        .io_timeout(IO_TIMEOUT)
        .idle_timeout(IO_TIMEOUT)
        .start()?;
    // One client: done once it connected and all of its connections are closed.
    while !server.wait_idle(Duration::from_secs(3600)) {}
    let stats = server.shutdown();
    eprintln!(
        "page-server: served {} requests ({} MiB) on {} connections; client disconnected",
        stats.requests,
        stats.bytes >> 20,
        stats.connections
    );
    if stats.refused > 0 {
        return Err(fail(format!("refused {} bad requests", stats.refused)));
    }
    Ok(())
}

fn client(addr: &str, prefetch: usize) -> Result<(), Box<dyn std::error::Error>> {
    let ps = page_size();
    let source = Arc::new(
        TcpSource::builder()
            .io_timeout(IO_TIMEOUT)
            .connections(2)
            .connect(addr)?,
    );
    let len = usize::try_from(source.len())?;
    if len == 0 || len % ps != 0 {
        return Err(fail(format!(
            "the server's image has {len} bytes, not a whole number of {ps}-byte pages"
        )));
    }
    let pages = len / ps;
    let region = MemoryMappingBuilder::new(len)
        .private()
        .noreserve()
        .build()?;
    region.disable_hugepages()?;
    let region = Arc::new(region);
    // The runtime's prefetch is a power-of-two chunk in bytes, aligned; the window does not
    // grow (faults come in random order anyway).
    let chunk = 1usize << prefetch.ilog2();
    let uffd = UffdBuilder::new().user_mode_only(true).create()?;
    let server = ServerBuilder::new()
        .region(Region::new(region.clone(), source.clone()))
        .prefetch(chunk * ps)
        .prefetch_max(chunk * ps)
        .background_threads(0)
        .start(uffd)?;
    println!(
        "client: connected to {addr}; {pages} pages ({} MiB) registered at {:p}, prefetch \
         {prefetch} (aligned chunks of {chunk} pages), background fill off",
        len >> 20,
        region.as_ptr()
    );

    let t = Instant::now();
    let mut order: Vec<usize> = (0..pages).collect();
    Rng::new(SEED).shuffle(&mut order);
    let mut sink = 0u8;
    for p in order {
        sink ^= region.read_obj::<u8>(p * ps)?;
    }
    std::hint::black_box(sink);
    let elapsed = t.elapsed();
    let halted = server.halted();
    let stats = server.shutdown()?;
    let net = source.stats();
    // Every page is here: close the connections so the server exits now, not after the
    // verification below.
    drop(source);
    if let Some(why) = halted {
        return Err(fail(format!("the fault server stopped: {why}")));
    }
    println!(
        "demand faults: {}, pages: {} demand + {} prefetched + {} background, failed: {}",
        stats.demand_faults,
        stats.pages_demand,
        stats.pages_prefetch,
        stats.pages_background,
        stats.pages_failed
    );
    println!(
        "requests: {} ({} MiB) on {} connection(s); fault latency p50 {:?}, p99 {:?}, max {:?}",
        net.requests,
        net.bytes >> 20,
        net.connections,
        stats.latency.p50,
        stats.latency.p99,
        stats.latency.max
    );
    println!(
        "elapsed: {:.3} s, throughput: {:.1} MB/s",
        elapsed.as_secs_f64(),
        mb_per_s(len as u64, elapsed)
    );
    if stats.source_errors > 0 || stats.pages_failed > 0 {
        return Err(fail(format!(
            "{} source errors, {} pages failed",
            stats.source_errors, stats.pages_failed
        )));
    }
    let mut got = vec![0u8; ps];
    let mut scratch = vec![0u8; ps];
    for p in 0..pages {
        region.read_slice(&mut got, p * ps)?;
        if let Err(b) = check_page(SEED, p as u64, &got, &mut scratch) {
            return Err(fail(format!(
                "page {p} byte {b} differs from the server's image"
            )));
        }
    }
    // Each page is copied once. A page may be received again: the rest of a fault's chunk
    // (the pages on both sides of the faulting one) comes in one request that covers the
    // faulting page too, rather than in two (read-through coalescing).
    if stats.pages_present() != pages as u64
        || stats.bytes_copied != len as u64
        || net.bytes < len as u64
    {
        return Err(fail(format!(
            "{} pages present, {} bytes copied and {} bytes received for {pages} pages",
            stats.pages_present(),
            stats.bytes_copied,
            net.bytes
        )));
    }
    println!("verified: all {pages} pages match the server's image, each copied once");
    Ok(())
}

fn spawn_and_run(pages: usize, prefetch: usize) -> Result<(), Box<dyn std::error::Error>> {
    let mut child = Command::new(std::env::current_exe()?)
        .args(["--serve", "--pages", &pages.to_string()])
        .stdout(Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("piped")).read_line(&mut line)?;
    let result = match line.trim().strip_prefix("listening on ") {
        Some(addr) => {
            println!("server: pid {} listening on {addr}", child.id());
            client(addr, prefetch)
        }
        None => Err(fail(format!("the server said {line:?}"))),
    };
    // The client's connections are closed now; the server exits once all of them are.
    let status = wait_child(child.id() as libc::pid_t, IO_TIMEOUT)?;
    result?;
    if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
        return Err(fail(format!("the server failed (wait status {status:#x})")));
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli: Cli = args::parse();
    let r = if cli.serve {
        serve(cli.pages)
    } else if let Some(addr) = cli.connect {
        client(&addr, cli.prefetch)
    } else {
        spawn_and_run(cli.pages, cli.prefetch)
    };
    finish("page-server", r)
}
