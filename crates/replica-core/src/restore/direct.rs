//! Writing a restored snapshot around the page cache (`O_DIRECT`).
//!
//! A buffered write copies every byte into page-cache memory the kernel must first
//! find and, on a virtual machine that hands free memory back to its host (free page
//! reporting), fault in from the host: on the benchmark VM that copy was two thirds of
//! a 1 GiB restore's time and swung between 0.9 and 2.4 s with the guest's memory
//! state. A direct write goes from our buffer to the device: `dd oflag=direct bs=4M`
//! writes the same GiB in 0.58-0.68 s whatever that state, where `cp` took 0.67-2.1 s.
//!
//! The price is a cold page cache: `PRAGMA quick_check` of a directly written GiB read
//! it back page by page from the disk in 22 s (under 1 s warm), so only a restore
//! that runs no integrity check writes this way.
//!
//! Only whole runs with aligned offsets, lengths and buffers go direct; anything else,
//! and every write on a filesystem that refuses `O_DIRECT` (tmpfs before Linux 6.6,
//! some FUSE and network filesystems), goes through the page cache. Both descriptors
//! name the same file and the kernel keeps them coherent; the final `fsync` covers
//! both.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

use tracing::debug;

/// The alignment `O_DIRECT` needs on every filesystem we expect (the logical block
/// size is 512 or 4096 bytes).
pub(super) const ALIGN: usize = 4096;

/// A zeroed buffer of `len` bytes starting at an [`ALIGN`]-aligned address.
#[derive(Debug)]
pub(super) struct AlignedBuf {
    mem: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    pub fn new(len: usize) -> Self {
        let mem = vec![0u8; len + ALIGN];
        let start = mem.as_ptr().align_offset(ALIGN);
        Self { mem, start, len }
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.mem[self.start..self.start + self.len]
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.mem[self.start..self.start + self.len]
    }
}

/// Writes runs of pages to the database file being restored.
#[derive(Debug)]
pub(super) struct RunWriter<'a> {
    buffered: &'a File,
    direct: Option<File>,
}

impl<'a> RunWriter<'a> {
    /// `buffered` is the open database file at `path`; a second descriptor with
    /// `O_DIRECT` is opened beside it if the filesystem allows.
    pub fn new(buffered: &'a File, path: &Path) -> Self {
        let direct = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(path);
        let direct = match direct {
            Ok(f) => Some(f),
            Err(e) => {
                debug!(path = %path.display(), error = %e, "no direct I/O here; writing through the page cache");
                None
            }
        };
        Self { buffered, direct }
    }

    /// A writer that always goes through the page cache.
    pub fn buffered(file: &'a File) -> Self {
        Self {
            buffered: file,
            direct: None,
        }
    }

    /// Whether runs go around the page cache (for tests and logs).
    pub fn is_direct(&self) -> bool {
        self.direct.is_some()
    }

    pub fn write(&mut self, data: &[u8], offset: u64) -> io::Result<()> {
        if let Some(direct) = &self.direct
            && offset.is_multiple_of(ALIGN as u64)
            && data.len().is_multiple_of(ALIGN)
            && data.as_ptr().align_offset(ALIGN) == 0
        {
            match direct.write_all_at(data, offset) {
                Ok(()) => return Ok(()),
                // Refused after all (a filesystem that accepts the flag at open but
                // not the write): the same bytes go through the page cache, and so
                // does everything after.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    debug!(error = %e, "direct write refused; writing through the page cache");
                    self.direct = None;
                }
                Err(e) => return Err(e),
            }
        }
        self.buffered.write_all_at(data, offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_buffers_are_aligned_and_sized() {
        for len in [ALIGN, 3 * ALIGN, 1 << 20] {
            let mut b = AlignedBuf::new(len);
            assert_eq!(b.as_slice().as_ptr().align_offset(ALIGN), 0);
            assert_eq!(b.as_mut_slice().len(), len);
        }
    }

    /// Aligned runs go direct, unaligned ones through the page cache, and the file
    /// holds exactly what was written either way.
    #[test]
    fn mixed_runs_land_where_they_belong() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("db");
        let file = File::create(&path).expect("create");
        let mut w = RunWriter::new(&file, &path);
        let mut a = AlignedBuf::new(2 * ALIGN);
        a.as_mut_slice().fill(0xaa);
        w.write(a.as_slice(), 0).expect("aligned");
        let b = vec![0xbbu8; 1024];
        w.write(&b, 2 * ALIGN as u64).expect("unaligned length");
        w.write(&a.as_slice()[..ALIGN], 3 * ALIGN as u64)
            .expect("aligned again");
        drop(w);
        let got = std::fs::read(&path).expect("read");
        let mut want = vec![0xaau8; 2 * ALIGN];
        want.extend_from_slice(&b);
        want.resize(3 * ALIGN, 0);
        want.extend(std::iter::repeat_n(0xaa, ALIGN));
        assert_eq!(got, want);
    }
}
