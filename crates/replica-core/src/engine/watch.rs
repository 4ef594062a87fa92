//! Waking the capture thread when the WAL changes, instead of polling it.
//!
//! With inotify (Linux) a commit wakes capture at once and an idle database costs one
//! wake-up per [`IDLE_WAIT`]; polling every 20 ms costs fifty `stat`s a second per
//! database. Where inotify is unavailable (another OS, or the per-user limit of
//! instances, 128 by default, is reached), capture polls: every `poll_interval` while
//! the WAL changes, and every [`IDLE_WAIT`] once it has been quiet for a second.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The longest capture sleeps when nothing happens; also bounds how long a stop
/// request waits for the thread.
pub const IDLE_WAIT: Duration = Duration::from_millis(250);

#[derive(Debug)]
pub struct WalWatch {
    fd: Option<OwnedFd>,
    path: PathBuf,
    watching: bool,
}

impl WalWatch {
    pub fn new(wal: &Path) -> Self {
        let mut w = Self {
            fd: inotify_init(),
            path: wal.to_path_buf(),
            watching: false,
        };
        if w.fd.is_none() {
            tracing::debug!(wal = %wal.display(), "inotify unavailable; polling the WAL");
        }
        w.arm();
        w
    }

    /// Whether changes wake us (otherwise the caller polls).
    pub fn is_active(&self) -> bool {
        self.fd.is_some() && self.watching
    }

    /// Watches the WAL file; it may not exist yet, or may have been replaced.
    fn arm(&mut self) {
        let Some(fd) = &self.fd else { return };
        let Ok(path) = CString::new(self.path.as_os_str().as_bytes()) else {
            return;
        };
        let mask = libc::IN_MODIFY | libc::IN_DELETE_SELF | libc::IN_MOVE_SELF;
        // SAFETY: a valid inotify descriptor and a NUL-terminated path.
        #[allow(unsafe_code)]
        let wd = unsafe { libc::inotify_add_watch(fd.as_raw_fd(), path.as_ptr(), mask) };
        self.watching = wd >= 0;
    }

    /// Sleeps until the WAL changes or `timeout` passes; returns whether it changed.
    pub fn wait(&mut self, timeout: Duration) -> bool {
        if !self.watching {
            self.arm();
        }
        let Some(fd) = &self.fd else {
            std::thread::sleep(timeout);
            return false;
        };
        if !self.watching {
            std::thread::sleep(timeout);
            return false;
        }
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd.
        #[allow(unsafe_code)]
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n <= 0 {
            return false;
        }
        let mut buf = [0u8; 4096];
        let mut changed = false;
        loop {
            // SAFETY: reading into a buffer we own, of the length given.
            #[allow(unsafe_code)]
            let len = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if len <= 0 {
                break;
            }
            changed = true;
            let mut off = 0usize;
            while off + std::mem::size_of::<libc::inotify_event>() <= len as usize {
                // The kernel writes whole events; read the header field by field so
                // that no alignment is assumed.
                let at = |o: usize| {
                    u32::from_ne_bytes([
                        buf[off + o],
                        buf[off + o + 1],
                        buf[off + o + 2],
                        buf[off + o + 3],
                    ])
                };
                let mask = at(4);
                let name_len = at(12) as usize;
                if mask & (libc::IN_IGNORED | libc::IN_DELETE_SELF | libc::IN_MOVE_SELF) != 0 {
                    // The WAL was removed or replaced: watch the new one next time.
                    self.watching = false;
                }
                off += std::mem::size_of::<libc::inotify_event>() + name_len;
            }
        }
        changed
    }
}

fn inotify_init() -> Option<OwnedFd> {
    // SAFETY: no pointers; the result is checked.
    #[allow(unsafe_code)]
    let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
    if fd < 0 {
        return None;
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    #[allow(unsafe_code)]
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}
