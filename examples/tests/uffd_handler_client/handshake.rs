//! Firecracker's part of the handshake: the JSON of `GuestRegionUffdMapping`s, sent with the
//! userfaultfd attached (`SCM_RIGHTS`).

use std::io::Read;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;

use super::vm::PageSizeField;
use super::LIMIT;

/// Sends `bytes` on `sock` in one `sendmsg(2)` with `fds` attached (`SCM_RIGHTS`), as
/// Firecracker's `send_with_fd` does.
pub fn send_with_fds(sock: RawFd, bytes: &[u8], fds: &[RawFd]) -> std::io::Result<()> {
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr() as *mut libc::c_void,
        iov_len: bytes.len(),
    };
    let mut cbuf = [0u64; 16];
    // SAFETY: an all-zero msghdr is valid (null pointers, zero lengths).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        let payload = std::mem::size_of_val(fds) as u32;
        msg.msg_control = cbuf.as_mut_ptr().cast();
        // SAFETY: CMSG_SPACE only computes a size.
        msg.msg_controllen = unsafe { libc::CMSG_SPACE(payload) } as _;
        assert!(msg.msg_controllen as usize <= std::mem::size_of_val(&cbuf));
        // SAFETY: msg_control points at `cbuf`, large enough for one header and the fds (checked
        // above), so CMSG_FIRSTHDR is non-null and CMSG_DATA points inside `cbuf`.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(payload) as _;
            std::ptr::copy_nonoverlapping(
                fds.as_ptr(),
                libc::CMSG_DATA(c).cast::<RawFd>(),
                fds.len(),
            );
        }
    }
    // SAFETY: `msg` and everything it points to are live for the call.
    let n = unsafe { libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    assert_eq!(n as usize, bytes.len(), "short sendmsg");
    Ok(())
}

/// Connects to `socket` and sends one message with `fds`.
pub fn send_handshake(socket: &Path, bytes: &[u8], fds: &[RawFd]) -> UnixStream {
    let s = UnixStream::connect(socket).expect("connect to the handler");
    send_with_fds(s.as_raw_fd(), bytes, fds).expect("sendmsg");
    s
}

/// Waits (bounded) for the handler to close `s`: true if it did (end of file or reset).
pub fn closed_by_peer(s: &UnixStream) -> bool {
    s.set_read_timeout(Some(LIMIT)).unwrap();
    let mut b = [0u8; 64];
    match (&*s).read(&mut b) {
        Ok(0) => true,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        Ok(_) => false,
    }
}

/// The JSON Firecracker sends: `GuestRegionUffdMapping`s in its field order.
pub fn mappings_json(
    regions: &[(usize, usize, u64)],
    page_size: usize,
    field: PageSizeField,
) -> String {
    let items: Vec<String> = regions
        .iter()
        .map(|&(addr, size, offset)| {
            let ps = match field {
                PageSizeField::PageSize => format!("\"page_size\":{page_size}"),
                PageSizeField::PageSizeKib => format!("\"page_size_kib\":{page_size}"),
                PageSizeField::Both => {
                    format!("\"page_size\":{page_size},\"page_size_kib\":{page_size}")
                }
            };
            format!("{{\"base_host_virt_addr\":{addr},\"size\":{size},\"offset\":{offset},{ps}}}")
        })
        .collect();
    format!("[{}]", items.join(","))
}
