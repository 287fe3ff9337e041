//! `uffd-handler`: a page-fault handler for Firecracker snapshots, built on the
//! `userfaultfd::serve` runtime.
//!
//! ```text
//! uffd-handler SOCKET MEMFILE [--no-prefetch] [--no-background-fill]
//!     [--record-working-set FILE] [--replay-working-set FILE] [--dirty-out FILE]
//!     [--stats] [--once]
//! uffd-handler SOCKET --source URL [--source-option KEY=VALUE]... [OPTIONS]
//! ```
//!
//! With `--source` (feature `object-store` of the examples crate), the guest memory image is
//! one object in object storage (`s3://BUCKET/KEY`, settings from the `AWS_*` environment and
//! `--source-option`), read in chunks through `userfaultfd::serve::ObjectStoreSource` shared by
//! every VM (one chunk cache); each fault then prefetches its whole chunk.
//!
//! # The protocol (Firecracker's UFFD snapshot backend)
//!
//! The handler listens on the Unix socket `SOCKET`. Firecracker, on `PUT /snapshot/load` with
//! `mem_backend: {backend_type: "Uffd", backend_path: SOCKET}`, creates the userfaultfd,
//! registers guest memory `MISSING`, connects and sends one message: a JSON array of
//! `{"base_host_virt_addr": u64, "size": usize, "offset": u64, "page_size": usize}`, with the
//! userfaultfd attached (`SCM_RIGHTS`). Older versions name the page size `page_size_kib`
//! although its value is in bytes; either name is accepted, both only when they agree. The
//! page size is 4096, or 2 MiB for a hugetlbfs-backed guest. Region `i`'s bytes are those of
//! `MEMFILE` from its `offset`.
//!
//! Each connection is one VM, served on its own thread by its own
//! [`Server`](userfaultfd::serve::Server) over the one read-only mapping of `MEMFILE` that every
//! VM shares (`MappedFileSource`: many VMs forked from one template share one page cache). The
//! regions are another process's memory, registered by it: the server is built with
//! `register(false)` and watches the VMM through a pidfd of the peer's pid (`SO_PEERCRED`),
//! because a userfaultfd does not hang up when its process exits (the handler's own reference
//! keeps it open). Firecracker may close the socket right after the handshake or keep it open:
//! both are normal; the VM ends when its process exits. With a balloon, `REMOVE` events are
//! served: a removed page reads as zeros when touched again.
//!
//! Bad input ends that connection only, with a line on stderr: a message that is not JSON or
//! not the array above, no descriptor (or more than one) attached, a descriptor that is not a
//! userfaultfd, regions that overlap, are misaligned or run past the memory file, a page size
//! other than 4 KiB or 2 MiB, no complete handshake within `--handshake-timeout-ms`
//! (10 s by default). A second message on a connection
//! already served is refused and the connection closed; the VM it set up stays served (its
//! memory would otherwise silently fill with zero pages). A missing or empty `MEMFILE`, or an
//! unreadable `--replay-working-set` file, stops the program at start (status 1).
//!
//! # Output
//!
//! Log lines on stderr start with `uffd-handler:`; per VM, one when it connects and one when it
//! ends: regions, pages served by path, time to full population, fault latency, and why it
//! ended. With `--stats`, stderr also gets one JSON object per line (it starts with `{`): on
//! `SIGUSR1` one per live VM (`"final": false`), and one per VM when it ends (`"final": true`):
//!
//! ```text
//! {"vm":1,"pid":4242,"final":true,"regions":2,"bytes":268435456,"page_size":4096,
//!  "elapsed_ms":812.5,"populated_ms":95.1,"demand_faults":40,
//!  "pages":{"demand":40,"prefetch":2520,"background":63000,"replay":0,"zero":8100,
//!           "removed_zero":0,"failed":0},
//!  "bytes_copied":225000000,"copy_ioctls":200,"eexist":0,"eagain":0,"events":0,
//!  "wp_faults":0,"source_errors":0,"latency_us":{"count":40,"p50":14.3,"p99":61.4,"max":70.2}}
//! ```
//!
//! (one line; `populated_ms` is `null` until every page is present.)
//!
//! # Dirty pages (`--dirty-out FILE`)
//!
//! Writes are tracked with write protection (the handler adds `WRITE_PROTECT` to the VMM's
//! `MISSING` registration through the same userfaultfd; pages are installed write-protected and
//! the first write to each costs a write-protect fault, which the server records). The file is
//! written (replaced atomically) twice:
//!
//! - on `SIGUSR2`, for every live VM: the pages written since the restore **with their
//!   contents**, read from the VM with `process_vm_readv(2)`. Pause the VM first (Firecracker
//!   `PATCH /vm {"state": "Paused"}`) so the layer is exact; the handler logs
//!   `dirty layer written` when the file is in place.
//! - when the VM exits: the offsets only (the guest memory is gone by then), complete up to
//!   the exit: the server's own record of write-protect faults outlives the process (flag bit 1
//!   set; clear only if that last read failed, as the log then says).
//!
//! Pages a balloon removed read as zeros in the guest but are listed only if written again.
//! In `FILE`, `{pid}` is replaced by the VM's pid and `{vm}` by its connection number (use one
//! of them when serving several VMs; otherwise each VM replaces the file). The format, all
//! little-endian:
//!
//! | bytes | field |
//! |---|---|
//! | 8 | magic `UFFDDIRT` |
//! | 4 | version, `1` |
//! | 4 | flags: bit 0 the contents follow the ranges; bit 1 exact (taken while the VM lived) |
//! | 8 | the page size of the regions |
//! | 8 | `n`, the number of ranges |
//! | 16 × `n` | ranges: offset in `MEMFILE` (`u64`), length in bytes (`u64`); sorted, disjoint |
//! | sum of lengths | with flag bit 0: the ranges' bytes, in order |
//!
//! Nothing follows. Applied over `MEMFILE`, a file with contents gives the guest's memory at the
//! moment of the dump: an incremental snapshot layer.
//!
//! # Working sets
//!
//! `--record-working-set FILE` saves, when each VM ends, the order in which it first demanded
//! its pages (`WorkingSet` file format; `{pid}`/`{vm}` as above); `--replay-working-set FILE`
//! copies those pages first in every VM (entries that name no page of a VM's regions are
//! dropped, with a log line).

mod dirty;
mod handshake;
mod report;
mod signals;
mod vm;

use std::io;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use clap::Parser;
use userfaultfd::serve::{MappedFileSource, PageSource, WorkingSet};

mod objstore;

/// The command line.
#[derive(Debug, Parser)]
#[command(
    name = "uffd-handler",
    version,
    about = "A page-fault handler for Firecracker snapshots (UFFD memory backend).",
    long_about = "A page-fault handler for Firecracker snapshots (UFFD memory backend).\n\n\
        Listens on SOCKET; every connection is one VM (Firecracker's `PUT /snapshot/load` \
        with `mem_backend: {backend_type: \"Uffd\", backend_path: SOCKET}`), served from \
        MEMFILE, the snapshot's guest memory file, mapped once read-only and shared by every \
        VM. Each VM gets its own server and thread: one VM's failure never affects another. \
        A VM ends when its process exits. Logs and stats go to stderr.\n\n\
        Prefetch and background fill are on by default: a VM runs at once, each fault also \
        brings the pages around it, and the rest of memory is copied in the background while \
        faults go first, so the VM soon runs without faults at all. Turn background fill off \
        when many VMs fan out from one image and touch little of it: their memory then stays \
        lazily populated (only touched chunks become resident).",
    after_help = "Files: --record-working-set, --replay-working-set use the `WorkingSet` format \
        of userfaultfd::serve; --dirty-out writes the UFFDDIRT format documented in the \
        program's source (examples/src/bin/uffd-handler/main.rs). In FILE names, {pid} is \
        replaced by the VM's pid and {vm} by its connection number.\n\
        Signals: SIGUSR1 prints stats (with --stats); SIGUSR2 writes the dirty layer with \
        contents (with --dirty-out; pause the VM first)."
)]
pub struct Cli {
    /// Unix socket to listen on (Firecracker's `backend_path`).
    pub socket: PathBuf,
    /// The snapshot's guest memory file (Firecracker's `mem_file_path`); not with --source.
    #[arg(required_unless_present = "source", conflicts_with = "source")]
    pub memfile: Option<PathBuf>,
    /// Serve the guest memory image from object storage instead of MEMFILE: `s3://BUCKET/KEY`
    /// (also `file:///PATH`, `memory:///KEY`), read in 2 MiB chunks with a bounded cache.
    /// S3 settings come from the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
    /// AWS_REGION, AWS_ENDPOINT, AWS_ALLOW_HTTP, ...) and --source-option. Needs the
    /// `object-store` feature of the examples crate.
    #[arg(long, value_name = "URL")]
    pub source: Option<String>,
    /// An object-store setting, overriding the environment: KEY=VALUE with a key of
    /// object_store's AmazonS3ConfigKey (endpoint, access_key_id, secret_access_key, region,
    /// allow_http, ...). Repeatable.
    #[arg(long, value_name = "KEY=VALUE", requires = "source")]
    pub source_option: Vec<String>,
    /// With --source: keep fetched chunks in a local file at PATH too (its index beside it, at
    /// PATH.index), so a later run restoring the same object version reads them from disk
    /// instead of the store. One handler at a time holds the file.
    #[arg(long, value_name = "PATH", requires = "source")]
    pub cache_file: Option<PathBuf>,
    /// Copy the aligned 256 KiB chunk around each fault after resolving it, growing to 2 MiB
    /// for sequential faults (the default).
    #[arg(long, overrides_with = "no_prefetch")]
    pub prefetch: bool,
    /// Resolve each fault alone (only the touched page becomes resident).
    #[arg(long, overrides_with = "prefetch")]
    pub no_prefetch: bool,
    /// Copy every page not yet present in the background, demand faults first (the default):
    /// the VM soon runs without faults.
    #[arg(long, overrides_with = "no_background_fill")]
    pub background_fill: bool,
    /// Populate only what the VM touches (with prefetch): memory stays lazily populated, for
    /// many VMs forked from one image that touch little of it.
    #[arg(long, overrides_with = "background_fill")]
    pub no_background_fill: bool,
    /// When a VM ends, save the order in which it first demanded pages to FILE.
    #[arg(long, value_name = "FILE")]
    pub record_working_set: Option<PathBuf>,
    /// Copy the pages of this recorded working set first, in order, in every VM.
    #[arg(long, value_name = "FILE")]
    pub replay_working_set: Option<PathBuf>,
    /// Track the pages each VM writes (a write-protect fault on the first write to a page);
    /// write them to FILE with their contents on SIGUSR2 (pause the VM first), and their
    /// offsets only when the VM exits (its memory is gone by then).
    #[arg(long, value_name = "FILE")]
    pub dirty_out: Option<PathBuf>,
    /// Print JSON stats of every live VM on SIGUSR1, and of each VM when it ends, to stderr.
    #[arg(long)]
    pub stats: bool,
    /// Serve one VM, then exit (status 0 when it was served until its process exited).
    #[arg(long)]
    pub once: bool,
    /// How long a connection may take to send its handshake before it is closed, in
    /// milliseconds (1 to 3600000).
    #[arg(long, value_name = "MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub handshake_timeout_ms: u64,
}

/// What every VM's thread shares.
pub(crate) struct Shared {
    pub(crate) cli: Cli,
    pub(crate) source: Arc<dyn PageSource>,
    /// The prefetch chunk: the object store's chunk size, so a fault brings its whole chunk.
    pub(crate) prefetch_bytes: usize,
    pub(crate) replay: Option<WorkingSet>,
}

impl Shared {
    pub(crate) fn prefetch(&self) -> bool {
        !self.cli.no_prefetch
    }

    pub(crate) fn background_fill(&self) -> bool {
        !self.cli.no_background_fill
    }
}

/// Prints a log line on stderr, `uffd-handler: ...`.
#[macro_export]
macro_rules! log {
    ($($arg:tt)*) => {
        eprintln!("uffd-handler: {}", format_args!($($arg)*))
    };
}

/// `path` with `{pid}` and `{vm}` replaced.
pub fn per_vm_path(path: &Path, vm: u64, pid: libc::pid_t) -> PathBuf {
    let s = path.to_string_lossy();
    PathBuf::from(
        s.replace("{pid}", &pid.to_string())
            .replace("{vm}", &vm.to_string()),
    )
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            log!("{e}");
            ExitCode::from(1)
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode, String> {
    let (source, what, prefetch_bytes): (Arc<dyn PageSource>, String, usize) =
        match (&cli.source, &cli.memfile) {
            (Some(url), _) => {
                let (src, chunk) =
                    objstore::open(url, &cli.source_option, cli.cache_file.as_deref())?;
                (src, format!("object {url}"), chunk)
            }
            (None, Some(memfile)) => {
                let src = MappedFileSource::open(memfile).map_err(|e| {
                    format!("cannot open the memory file {}: {e}", memfile.display())
                })?;
                (
                    Arc::new(src),
                    format!("memory file {}", memfile.display()),
                    userfaultfd::serve::DEFAULT_PREFETCH,
                )
            }
            (None, None) => return Err("no memory file and no --source".into()),
        };
    if source.is_empty() {
        return Err(format!("the {what} is empty"));
    }
    let replay = match &cli.replay_working_set {
        Some(p) => Some(
            WorkingSet::load(p)
                .map_err(|e| format!("cannot load the working set {}: {e}", p.display()))?,
        ),
        None => None,
    };
    signals::install().map_err(|e| format!("cannot install signal handlers: {e}"))?;
    let listener = bind(&cli.socket)?;
    log!(
        "listening on {} ({what}, {} bytes; prefetch {}, background fill {}{}{})",
        cli.socket.display(),
        source.len(),
        on_off(!cli.no_prefetch),
        on_off(!cli.no_background_fill),
        if cli.dirty_out.is_some() {
            ", dirty tracking"
        } else {
            ""
        },
        if cli.once { ", one VM" } else { "" },
    );
    let shared = Arc::new(Shared {
        cli,
        source,
        prefetch_bytes,
        replay,
    });
    let next_vm = AtomicU64::new(1);
    loop {
        let stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                // EMFILE, ENOBUFS...: this connection is lost, the handler goes on.
                log!("accept on {} failed: {e}", shared.cli.socket.display());
                if shared.cli.once {
                    return Err("no VM could be accepted".into());
                }
                continue;
            }
        };
        let id = next_vm.fetch_add(1, Ordering::Relaxed);
        if shared.cli.once {
            let served = vm::run_guarded(&shared, id, stream);
            let _ = std::fs::remove_file(&shared.cli.socket);
            return Ok(if served {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            });
        }
        let s = Arc::clone(&shared);
        let spawned = std::thread::Builder::new()
            .name(format!("vm-{id}"))
            .spawn(move || {
                vm::run_guarded(&s, id, stream);
            });
        if let Err(e) = spawned {
            log!("vm {id}: cannot start a thread for the connection, closed: {e}");
        }
    }
}

fn on_off(b: bool) -> &'static str {
    if b {
        "on"
    } else {
        "off"
    }
}

/// Binds the socket, replacing a stale socket file (one nobody listens on).
fn bind(path: &Path) -> Result<UnixListener, String> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(format!(
                "{} exists and is not a socket: not replaced",
                path.display()
            ));
        }
        match UnixStream::connect(path) {
            Ok(_) => {
                return Err(format!(
                    "{} is in use: another handler listens there",
                    path.display()
                ))
            }
            Err(_) => {
                let _ = std::fs::remove_file(path);
            }
        }
    }
    UnixListener::bind(path).map_err(|e| format!("cannot listen on {}: {e}", path.display()))
}
