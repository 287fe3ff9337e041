//! The handshake of Firecracker's UFFD backend: one message, a JSON array of guest region
//! mappings, with the userfaultfd attached (`SCM_RIGHTS`); reading it with a time-out, and
//! checking it.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use serde::Deserialize;
use userfaultfd::Uffd;

/// The largest handshake accepted (Firecracker's is well under a kilobyte per region).
const MAX_MESSAGE: usize = 1 << 20;
/// Descriptors one `recvmsg` can take (more than one is refused, but all are closed).
const MAX_FDS: usize = 16;
/// The huge page size of a hugetlbfs-backed guest.
pub const HUGE_PAGE: usize = 2 << 20;

/// One entry of the handshake, as Firecracker serializes `GuestRegionUffdMapping`.
#[derive(Debug, Deserialize)]
struct RawMapping {
    base_host_virt_addr: u64,
    size: usize,
    offset: u64,
    #[serde(default)]
    page_size: Option<usize>,
    /// Older Firecracker versions: bytes despite the name.
    #[serde(default)]
    page_size_kib: Option<usize>,
}

/// A checked guest region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapping {
    pub addr: usize,
    pub size: usize,
    pub offset: u64,
    pub page_size: usize,
}

/// A checked handshake.
#[derive(Debug)]
pub struct Handshake {
    pub regions: Vec<Mapping>,
    pub uffd: Uffd,
    /// Bytes received after the handshake's JSON (a second message in the same read).
    pub trailing: bool,
}

/// What `recvmsg` returned: bytes (0 at end of file) and the descriptors attached.
pub struct Received {
    pub len: usize,
    pub fds: Vec<OwnedFd>,
    pub truncated_control: bool,
}

/// `recvmsg(2)` into `buf`, taking any descriptors attached (close-on-exec). `flags` may add
/// `MSG_DONTWAIT`.
pub fn recv_with_fds(sock: RawFd, buf: &mut [u8], flags: libc::c_int) -> std::io::Result<Received> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // Room for MAX_FDS descriptors: CMSG_SPACE(16 * 4) = 16 + 64 bytes, 8-aligned.
    let mut cbuf = [0u64; 2 + MAX_FDS / 2];
    // SAFETY: an all-zero msghdr is valid (null pointers, zero lengths); filled below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&cbuf) as _;
    let n = loop {
        // SAFETY: `msg` points at `iov` (over `buf`) and `cbuf`, both live and writable for
        // their stated lengths during the call.
        let n = unsafe { libc::recvmsg(sock, &mut msg, flags | libc::MSG_CMSG_CLOEXEC) };
        if n >= 0 {
            break n as usize;
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    };
    let mut fds = Vec::new();
    // SAFETY: recvmsg filled `msg`; CMSG_FIRSTHDR returns null or a header inside `cbuf`.
    let mut c = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    while !c.is_null() {
        // SAFETY: `c` is a header inside `cbuf` that the kernel wrote.
        let (level, ty, len) = unsafe { ((*c).cmsg_level, (*c).cmsg_type, (*c).cmsg_len as usize) };
        if level == libc::SOL_SOCKET && ty == libc::SCM_RIGHTS {
            // SAFETY: CMSG_LEN only computes a size.
            let header = unsafe { libc::CMSG_LEN(0) } as usize;
            let count = len.saturating_sub(header) / std::mem::size_of::<RawFd>();
            for i in 0..count {
                // SAFETY: an SCM_RIGHTS payload holds `count` ints inside `cbuf` (the kernel
                // truncates to the buffer and sets MSG_CTRUNC); read unaligned.
                let fd =
                    unsafe { std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<RawFd>().add(i)) };
                if fd >= 0 {
                    // SAFETY: the kernel installed this descriptor in this process for us;
                    // nothing else owns it.
                    fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
                }
            }
        }
        // SAFETY: `msg` and `c` are as above; CMSG_NXTHDR returns null or the next header.
        c = unsafe { libc::CMSG_NXTHDR(&msg, c) };
    }
    Ok(Received {
        len: n,
        fds,
        truncated_control: msg.msg_flags & libc::MSG_CTRUNC != 0,
    })
}

/// Reads the handshake from `sock`, waiting at most `timeout` for all of it, and checks it
/// against a memory file of `file_len` bytes.
pub fn read(sock: &UnixStream, file_len: u64, timeout: Duration) -> Result<Handshake, String> {
    let deadline = Instant::now() + timeout;
    let mut data: Vec<u8> = Vec::new();
    let mut fds: Vec<OwnedFd> = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    let mut truncated = false;
    let (parsed, consumed) = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!(
                "no complete handshake within {timeout:?} ({} bytes received)",
                data.len()
            ));
        }
        sock.set_read_timeout(Some(left))
            .map_err(|e| format!("cannot set the socket's read time-out: {e}"))?;
        let got = match recv_with_fds(sock.as_raw_fd(), &mut buf, 0) {
            Ok(r) => r,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(e) => return Err(format!("reading the handshake failed: {e}")),
        };
        truncated |= got.truncated_control;
        fds.extend(got.fds);
        if got.len == 0 {
            if data.is_empty() {
                return Err("the connection closed before any handshake".into());
            }
            // Parse what came: its error says what is wrong (or that it was cut short).
            return match parse(&data) {
                Err(e) => Err(e),
                Ok(_) => unreachable!("a complete message is parsed as soon as it arrives"),
            }
            .map_err(|e| format!("{e} (the connection closed after {} bytes)", data.len()));
        }
        data.extend_from_slice(&buf[..got.len]);
        match parse(&data) {
            Ok(v) => break v,
            Err(e) if e.ends_with(INCOMPLETE) && data.len() < MAX_MESSAGE => continue,
            Err(e) => return Err(e),
        }
    };
    let trailing = data[consumed..].iter().any(|b| !b.is_ascii_whitespace());
    if truncated {
        return Err(format!(
            "more descriptors attached than the {MAX_FDS} accepted (expected 1)"
        ));
    }
    let fd = match fds.len() {
        0 => return Err(
            "no file descriptor attached to the handshake (expected the userfaultfd, SCM_RIGHTS)"
                .into(),
        ),
        1 => fds.pop().expect("one descriptor"),
        n => {
            return Err(format!(
                "{n} file descriptors attached to the handshake (expected 1, the userfaultfd)"
            ))
        }
    };
    let uffd = Uffd::try_from(fd)
        .map_err(|e| format!("the descriptor attached is not a userfaultfd: {e}"))?;
    let regions = check(parsed, file_len)?;
    Ok(Handshake {
        regions,
        uffd,
        trailing,
    })
}

const INCOMPLETE: &str = "(incomplete)";

/// Parses the first JSON value of `data`: the mappings and how many bytes they took.
fn parse(data: &[u8]) -> Result<(Vec<RawMapping>, usize), String> {
    let mut it = serde_json::Deserializer::from_slice(data).into_iter::<Vec<RawMapping>>();
    match it.next() {
        Some(Ok(v)) => Ok((v, it.byte_offset())),
        Some(Err(e)) => Err(match e.classify() {
            serde_json::error::Category::Eof => {
                format!("the handshake is cut short: {e} {INCOMPLETE}")
            }
            serde_json::error::Category::Syntax | serde_json::error::Category::Io => {
                format!("the handshake is not JSON: {e}")
            }
            serde_json::error::Category::Data => format!(
                "the handshake is not an array of guest region mappings \
                 {{base_host_virt_addr, size, offset, page_size}}: {e}"
            ),
        }),
        None => Err(format!("the handshake is empty {INCOMPLETE}")),
    }
}

/// Checks the mappings: page sizes, alignment, overlap, the memory file's length.
fn check(raw: Vec<RawMapping>, file_len: u64) -> Result<Vec<Mapping>, String> {
    if raw.is_empty() {
        return Err("the handshake names no guest region".into());
    }
    let base = userfaultfd::page_size();
    let mut out: Vec<Mapping> = Vec::with_capacity(raw.len());
    for (i, r) in raw.iter().enumerate() {
        let page_size = match (r.page_size, r.page_size_kib) {
            (Some(a), Some(b)) if a != b => {
                return Err(format!(
                    "region {i}: page_size {a} and page_size_kib {b} disagree (both are bytes)"
                ))
            }
            (Some(a), _) | (None, Some(a)) => a,
            (None, None) => return Err(format!("region {i}: no page_size (or page_size_kib)")),
        };
        if page_size != base && page_size != HUGE_PAGE {
            return Err(format!(
                "region {i}: page size {page_size} is neither {base} (4 KiB) nor {HUGE_PAGE} (2 MiB)"
            ));
        }
        let addr = usize::try_from(r.base_host_virt_addr).map_err(|_| {
            format!(
                "region {i}: address {:#x} does not fit",
                r.base_host_virt_addr
            )
        })?;
        if r.size == 0 || r.size % page_size != 0 || addr % page_size != 0 {
            return Err(format!(
                "region {i}: {addr:#x}+{:#x} is empty or not aligned to its {page_size}-byte pages",
                r.size
            ));
        }
        let Some(end) = addr.checked_add(r.size) else {
            return Err(format!("region {i}: {addr:#x}+{:#x} wraps around", r.size));
        };
        match r.offset.checked_add(r.size as u64) {
            Some(e) if e <= file_len => {}
            _ => {
                return Err(format!(
                "region {i}: {} bytes at offset {} extend past the memory file ({file_len} bytes)",
                r.size, r.offset
            ))
            }
        }
        for (j, o) in out.iter().enumerate() {
            if addr < o.addr + o.size && o.addr < end {
                return Err(format!(
                    "regions {j} ({:#x}+{:#x}) and {i} ({addr:#x}+{:#x}) overlap",
                    o.addr, o.size, r.size
                ));
            }
        }
        out.push(Mapping {
            addr,
            size: r.size,
            offset: r.offset,
            page_size,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checked(json: &str) -> Result<Vec<Mapping>, String> {
        let (raw, _) = parse(json.as_bytes())?;
        check(raw, 1 << 30)
    }

    #[test]
    fn page_size_names() {
        let one = |f: &str| {
            checked(&format!(
                r#"[{{"base_host_virt_addr":4096,"size":8192,"offset":0,{f}}}]"#
            ))
        };
        assert_eq!(one(r#""page_size":4096"#).unwrap()[0].page_size, 4096);
        assert_eq!(one(r#""page_size_kib":4096"#).unwrap()[0].page_size, 4096);
        assert!(one(r#""page_size":4096,"page_size_kib":4096"#).is_ok());
        assert!(one(r#""page_size":4096,"page_size_kib":4"#)
            .unwrap_err()
            .contains("disagree"));
        assert!(one(r#""page_size":8192"#).unwrap_err().contains("neither"));
    }

    #[test]
    fn bad_messages() {
        assert!(checked("hello").unwrap_err().contains("not JSON"));
        assert!(checked(r#"{"a":1}"#).unwrap_err().contains("not an array"));
        assert!(checked("[").unwrap_err().contains(INCOMPLETE));
        assert!(checked("[]").unwrap_err().contains("no guest region"));
        let two = r#"[{"base_host_virt_addr":4096,"size":8192,"offset":0,"page_size":4096},
                      {"base_host_virt_addr":8192,"size":4096,"offset":0,"page_size":4096}]"#;
        assert!(checked(two).unwrap_err().contains("overlap"));
        let past =
            r#"[{"base_host_virt_addr":4096,"size":8192,"offset":1073737728,"page_size":4096}]"#;
        assert!(checked(past).unwrap_err().contains("past the memory file"));
    }
}
