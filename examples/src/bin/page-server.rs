//! Post-copy over TCP: pages are pulled from another process on demand.
//!
//! By default the program starts a copy of itself with `--serve`: that process holds a memory
//! image and serves page requests on an ephemeral port of 127.0.0.1. This process (the
//! destination) registers an empty private region with userfaultfd; each missing-page fault
//! becomes a request for the faulting page plus its not-yet-received neighbours (prefetch), and
//! the reply is placed with one `UFFDIO_COPY`. The main thread touches every page in random order
//! and then verifies the whole image.
//!
//! Wire protocol (native-endian u64s): the server first sends `pages, page_size`; each request
//! is `first_page, count`, answered by `count * page_size` bytes.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use examples::{
    check_page, fail, fill_page, finish, mb_per_s, page_size, wait_child, wait_readable, Args, Rng,
    StopSignal, Wait,
};
use mmap::MemoryMappingBuilder;
use userfaultfd::{Error, Event, EventBuffer, Uffd, UffdBuilder};

const USAGE: &str = "\
usage: page-server [--pages N] [--prefetch K]
       page-server --serve [--pages N]
       page-server --connect HOST:PORT [--prefetch K]

Post-copy over TCP: a server process holds a memory image; the client registers an empty
region with userfaultfd and pulls pages on demand, with prefetch of neighbouring pages.
With no arguments it starts a server process (--serve) on 127.0.0.1 and connects to it.

  --pages N      image size in pages (default 8192)
  --prefetch K   pages requested per fault, the faulting one included (default 16)
  --serve        be the server: print \"listening on ADDR\" and serve one client
  --connect ADDR be only the client of a server started with --serve";

const SEED: u64 = 0x9a9e;
const IO_TIMEOUT: Duration = Duration::from_secs(30);

fn put(w: &mut impl Write, v: u64) -> std::io::Result<()> {
    w.write_all(&v.to_ne_bytes())
}

fn get(r: &mut impl Read) -> std::io::Result<u64> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b)?;
    Ok(u64::from_ne_bytes(b))
}

fn serve(pages: usize) -> Result<(), Box<dyn std::error::Error>> {
    let ps = page_size();
    let listener = TcpListener::bind("127.0.0.1:0")?;
    println!("listening on {}", listener.local_addr()?);
    std::io::stdout().flush()?;
    let (mut s, _) = listener.accept()?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_nodelay(true)?;
    put(&mut s, pages as u64)?;
    put(&mut s, ps as u64)?;
    let mut out = Vec::new();
    let mut requests = 0u64;
    loop {
        let first = match get(&mut s) {
            Ok(v) => v,
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(e.into()),
        };
        let count = get(&mut s)?;
        if count == 0
            || first
                .checked_add(count)
                .map_or(true, |end| end > pages as u64)
        {
            return Err(fail(format!("bad request: {count} pages from {first}")));
        }
        out.resize(count as usize * ps, 0);
        for (k, page) in out.chunks_mut(ps).enumerate() {
            fill_page(SEED, first + k as u64, page);
        }
        s.write_all(&out)?;
        requests += 1;
    }
    eprintln!("page-server: served {requests} requests; client disconnected");
    Ok(())
}

struct Client<'a> {
    uffd: &'a Uffd,
    conn: TcpStream,
    base: usize,
    pages: usize,
    prefetch: usize,
    placed: Vec<bool>,
    faults: u64,
    requests: u64,
    received: u64,
}

impl Client<'_> {
    fn run(&mut self, stop: &StopSignal) -> Result<(), String> {
        let ps = page_size();
        let mut buf = EventBuffer::new(16);
        let mut data = vec![0u8; self.prefetch * ps];
        loop {
            match wait_readable(&[self.uffd.as_fd()], Some(stop), IO_TIMEOUT) {
                Ok(Wait::Ready(_)) => {}
                Ok(Wait::Stopped) => return Ok(()),
                other => return Err(format!("waiting for faults: {other:?}")),
            }
            for event in self.uffd.read_events(&mut buf).map_err(|e| e.to_string())? {
                match event.map_err(|e| e.to_string())? {
                    Event::Pagefault { addr, .. } => {
                        self.faults += 1;
                        self.fetch((addr as usize - self.base) / ps, &mut data)
                            .map_err(|e| e.to_string())?;
                    }
                    other => return Err(format!("unexpected event {other:?}")),
                }
            }
        }
    }

    /// Places page `p` and the unreceived pages around it (a quarter of the window before it).
    fn fetch(&mut self, p: usize, data: &mut [u8]) -> Result<(), Box<dyn std::error::Error>> {
        let ps = page_size();
        let dst = |i: usize| (self.base + i * ps) as *mut libc::c_void;
        if p >= self.pages {
            return Err(fail(format!("fault on page {p}, beyond the image")));
        }
        if self.placed[p] {
            // Delivered again after it was resolved: just wake.
            self.uffd.wake(dst(p), ps)?;
            return Ok(());
        }
        let mut first = p;
        while first > 0 && p - (first - 1) < self.prefetch / 4 && !self.placed[first - 1] {
            first -= 1;
        }
        let mut end = p + 1;
        while end < self.pages && end - first < self.prefetch && !self.placed[end] {
            end += 1;
        }
        let count = end - first;
        put(&mut self.conn, first as u64)?;
        put(&mut self.conn, count as u64)?;
        self.conn.read_exact(&mut data[..count * ps])?;
        self.requests += 1;
        self.received += count as u64;
        let mut done = 0;
        while done < count * ps {
            // SAFETY: `[first, end)` are missing pages of the region this program registered and
            // owns; `data` holds their bytes.
            let r = unsafe {
                self.uffd.copy(
                    data[done..].as_ptr().cast(),
                    dst(first).wrapping_byte_add(done),
                    count * ps - done,
                    true,
                )
            };
            match r {
                Ok(n) => done += n,
                Err(Error::PartialProgress { done: d, .. }) => done += d,
                Err(Error::AlreadyMapped { .. }) => {
                    self.uffd.wake(dst(first).wrapping_byte_add(done), ps)?;
                    done += ps;
                }
                Err(e) => return Err(e.into()),
            }
        }
        for x in &mut self.placed[first..end] {
            *x = true;
        }
        Ok(())
    }
}

fn client(addr: &str, prefetch: usize) -> Result<(), Box<dyn std::error::Error>> {
    let ps = page_size();
    let mut conn = TcpStream::connect(addr)?;
    conn.set_read_timeout(Some(IO_TIMEOUT))?;
    conn.set_nodelay(true)?;
    let pages = get(&mut conn)? as usize;
    let remote_ps = get(&mut conn)? as usize;
    if remote_ps != ps || pages == 0 {
        return Err(fail(format!(
            "server has {pages} pages of {remote_ps} bytes; we use {ps}"
        )));
    }
    let len = pages * ps;
    let region = MemoryMappingBuilder::new(len)
        .private()
        .noreserve()
        .build()?;
    region.disable_hugepages()?;
    let uffd = UffdBuilder::new()
        .non_blocking(true)
        .user_mode_only(true)
        .create()?;
    uffd.register_region(&region, userfaultfd::RegisterMode::MISSING)?;
    println!("client: connected to {addr}; {pages} pages ({} MiB) registered at {:p}, prefetch {prefetch}", len >> 20, region.as_ptr());

    let stop = StopSignal::new()?;
    let mut c = Client {
        uffd: &uffd,
        conn,
        base: region.as_ptr() as usize,
        pages,
        prefetch,
        placed: vec![false; pages],
        faults: 0,
        requests: 0,
        received: 0,
    };
    let t = Instant::now();
    let handler_result = std::thread::scope(|s| {
        let h = s.spawn(|| {
            let r = c.run(&stop);
            if r.is_err() {
                let _ = uffd.unregister_region(&region);
            }
            r
        });
        let mut order: Vec<usize> = (0..pages).collect();
        Rng::new(SEED).shuffle(&mut order);
        let mut sink = 0u8;
        for p in order {
            sink ^= region.read_obj::<u8>(p * ps).unwrap_or(0);
        }
        std::hint::black_box(sink);
        stop.signal();
        h.join()
    });
    let elapsed = t.elapsed();
    // Every page is here: let the server go now (it exits on EOF) rather than after the
    // verification below, which could outlast its read time-out on a slow machine.
    let _ = c.conn.shutdown(std::net::Shutdown::Both);
    handler_result
        .map_err(|_| fail("the fault handler panicked"))?
        .map_err(|e| fail(format!("fault handler: {e}")))?;
    println!(
        "faults: {}, requests: {}, pages received: {} ({} prefetched)",
        c.faults,
        c.requests,
        c.received,
        c.received - c.faults.min(c.received)
    );
    println!(
        "elapsed: {:.3} s, throughput: {:.1} MB/s",
        elapsed.as_secs_f64(),
        mb_per_s(len as u64, elapsed)
    );
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
    if c.received != pages as u64 {
        return Err(fail(format!("received {} pages for {pages}", c.received)));
    }
    println!("verified: all {pages} pages match the server's image");
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
    // The client's connection is closed now; the server exits on EOF.
    let status = wait_child(child.id() as libc::pid_t, IO_TIMEOUT)?;
    result?;
    if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
        return Err(fail(format!("the server failed (wait status {status:#x})")));
    }
    Ok(())
}

fn main() -> ExitCode {
    let mut args = Args::from_env(USAGE);
    let mut pages = 8192;
    let mut prefetch = 16;
    let mut serve_mode = false;
    let mut connect: Option<String> = None;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--pages" => pages = args.value_in("--pages", 1, 1 << 22),
            "--prefetch" => prefetch = args.value_in("--prefetch", 1, 1024),
            "--serve" => serve_mode = true,
            "--connect" => connect = Some(args.value("--connect")),
            _ => args.unknown(&a),
        }
    }
    if serve_mode && connect.is_some() {
        args.usage_error("--serve and --connect exclude each other");
    }
    let r = if serve_mode {
        serve(pages)
    } else if let Some(addr) = connect {
        client(&addr, prefetch)
    } else {
        spawn_and_run(pages, prefetch)
    };
    finish("page-server", r)
}
