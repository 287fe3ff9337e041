//! `--dirty-out`: the pages a VM wrote, accumulated from the server's scans, and the `UFFDDIRT`
//! file (format in the program's documentation, `main.rs`).

use std::io::{self, Write};
use std::path::Path;

use userfaultfd::serve::DirtyRange;

use crate::handshake::Mapping;

const MAGIC: &[u8; 8] = b"UFFDDIRT";
const VERSION: u32 = 1;
/// Flag: the ranges' bytes follow the ranges.
pub const FLAG_CONTENTS: u32 = 1;
/// Flag: taken while the VM lived (complete at that moment).
pub const FLAG_EXACT: u32 = 2;

/// Every page written since the restore, per region.
pub struct DirtySet {
    regions: Vec<Mapping>,
    written: Vec<Vec<bool>>,
}

impl DirtySet {
    pub fn new(regions: &[Mapping]) -> DirtySet {
        DirtySet {
            regions: regions.to_vec(),
            written: regions
                .iter()
                .map(|r| vec![false; r.size / r.page_size])
                .collect(),
        }
    }

    /// Adds what a `Server::dirty_pages` call returned.
    pub fn add(&mut self, ranges: &[DirtyRange]) {
        for d in ranges {
            let (Some(r), Some(w)) = (self.regions.get(d.region), self.written.get_mut(d.region))
            else {
                continue;
            };
            let first = d.offset / r.page_size;
            let end = (d.offset + d.len).div_ceil(r.page_size).min(w.len());
            for bit in &mut w[first.min(end)..end] {
                *bit = true;
            }
        }
    }

    /// The written ranges as (offset in the memory file, length, address in the VM), sorted by
    /// file offset, adjacent ones merged.
    pub fn ranges(&self) -> Vec<(u64, u64, usize)> {
        let mut out: Vec<(u64, u64, usize)> = Vec::new();
        for (r, w) in self.regions.iter().zip(&self.written) {
            let mut p = 0;
            while p < w.len() {
                if !w[p] {
                    p += 1;
                    continue;
                }
                let first = p;
                while p < w.len() && w[p] {
                    p += 1;
                }
                out.push((
                    r.offset + (first * r.page_size) as u64,
                    ((p - first) * r.page_size) as u64,
                    r.addr + first * r.page_size,
                ));
            }
        }
        out.sort_unstable();
        let mut merged: Vec<(u64, u64, usize)> = Vec::with_capacity(out.len());
        for (off, len, addr) in out {
            match merged.last_mut() {
                Some(m) if m.0 + m.1 == off && m.2 + m.1 as usize == addr => m.1 += len,
                _ => merged.push((off, len, addr)),
            }
        }
        merged
    }

    pub fn page_size(&self) -> usize {
        self.regions.first().map_or(0, |r| r.page_size)
    }
}

/// Writes the `UFFDDIRT` file to `path` (through `path.tmp` and a rename, so a reader never
/// sees a partial file). With `contents_of`, the ranges' bytes are read from that process's
/// memory (`process_vm_readv(2)`); returns the bytes of ranges written.
pub fn write_file(
    path: &Path,
    set: &DirtySet,
    contents_of: Option<libc::pid_t>,
    exact: bool,
) -> io::Result<u64> {
    let ranges = set.ranges();
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    let mut w = io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&tmp)?);
    let result = (|| {
        let flags = if contents_of.is_some() {
            FLAG_CONTENTS
        } else {
            0
        } | if exact { FLAG_EXACT } else { 0 };
        w.write_all(MAGIC)?;
        w.write_all(&VERSION.to_le_bytes())?;
        w.write_all(&flags.to_le_bytes())?;
        w.write_all(&(set.page_size() as u64).to_le_bytes())?;
        w.write_all(&(ranges.len() as u64).to_le_bytes())?;
        for &(off, len, _) in &ranges {
            w.write_all(&off.to_le_bytes())?;
            w.write_all(&len.to_le_bytes())?;
        }
        if let Some(pid) = contents_of {
            let mut buf = vec![0u8; 1 << 20];
            for &(_, len, addr) in &ranges {
                let mut done = 0usize;
                while done < len as usize {
                    let n = (len as usize - done).min(buf.len());
                    read_remote(pid, addr + done, &mut buf[..n])?;
                    w.write_all(&buf[..n])?;
                    done += n;
                }
            }
        }
        w.flush()?;
        w.get_ref().sync_all()
    })();
    drop(w);
    match result {
        Ok(()) => {
            std::fs::rename(&tmp, path)?;
            Ok(ranges.iter().map(|r| r.1).sum())
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// Reads `buf.len()` bytes at `addr` of process `pid`.
fn read_remote(pid: libc::pid_t, addr: usize, buf: &mut [u8]) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let local = libc::iovec {
            iov_base: buf[done..].as_mut_ptr().cast(),
            iov_len: buf.len() - done,
        };
        let remote = libc::iovec {
            iov_base: (addr + done) as *mut libc::c_void,
            iov_len: buf.len() - done,
        };
        // SAFETY: `local` covers the writable rest of `buf`; `remote` names memory of another
        // process, which the kernel reads (checking access) without touching ours otherwise.
        let n = unsafe { libc::process_vm_readv(pid, &local, 1, &remote, 1, 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(io::Error::new(
                e.kind(),
                format!("reading the VM's memory at {:#x}: {e}", addr + done),
            ));
        }
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("the VM's memory at {:#x} is not readable", addr + done),
            ));
        }
        done += n as usize;
    }
    Ok(())
}
