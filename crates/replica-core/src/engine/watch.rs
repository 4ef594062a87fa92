//! Waking the capture thread when the WAL changes, instead of polling it.
//!
//! With inotify (Linux) a commit wakes capture at once and an idle database costs one
//! wake-up per [`IDLE_WAIT`]; polling every 20 ms costs fifty `stat`s and thread
//! wake-ups a second per database. One inotify instance, read by one thread, serves
//! every database of the process: the per-user limit of instances is 128 by default,
//! while the limit of watches is in the tens of thousands, so an instance per database
//! left all but 128 of a thousand databases polling. Where inotify is unavailable,
//! capture polls: every `poll_interval` while the WAL changes, every [`IDLE_WAIT`]
//! once it has been quiet for a second.

use std::collections::HashMap;
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Duration;

/// The longest capture sleeps when nothing happens; also bounds how long a stop
/// request waits for the thread.
pub const IDLE_WAIT: Duration = Duration::from_millis(250);

/// How long the reader lets events accumulate after each read.
const COALESCE: Duration = Duration::from_millis(2);

/// One event per arming (`IN_ONESHOT`): a watched file costs every write the
/// application makes a kernel event (measured: 4% of a flat-out writer's CPU), an
/// unwatched one nothing. Capture arms the watch again each
/// time it waits, after reading the WAL, so at most one of the application's writes
/// per capture round pays for the event.
const MASK: u32 = libc::IN_MODIFY | libc::IN_DELETE_SELF | libc::IN_MOVE_SELF | libc::IN_ONESHOT;

/// What the reader thread tells one watch.
#[derive(Debug, Default)]
struct Flags {
    changed: bool,
    /// The watch is gone (its one event fired, or the file was deleted or moved): the
    /// path must be watched anew.
    lost: bool,
}

#[derive(Debug, Default)]
struct Signal {
    flags: Mutex<Flags>,
    cv: Condvar,
}

impl Signal {
    fn raise(&self, lost: bool) {
        if let Ok(mut f) = self.flags.lock() {
            let wake = !f.changed;
            f.changed = true;
            f.lost |= lost;
            if wake {
                self.cv.notify_one();
            }
        }
    }
}

/// The process's inotify instance and who listens to each watch descriptor.
#[derive(Debug)]
struct Hub {
    fd: OwnedFd,
    subscribers: Mutex<HashMap<i32, Vec<Arc<Signal>>>>,
}

fn hub() -> Option<&'static Hub> {
    static HUB: OnceLock<Option<&'static Hub>> = OnceLock::new();
    *HUB.get_or_init(|| {
        let fd = inotify_init()?;
        // Lives as long as the process, like the thread that reads it.
        let hub: &'static Hub = Box::leak(Box::new(Hub {
            fd,
            subscribers: Mutex::new(HashMap::new()),
        }));
        match std::thread::Builder::new()
            .name("replica-inotify".into())
            .spawn(move || hub.read_forever())
        {
            Ok(_) => Some(hub),
            Err(e) => {
                tracing::debug!(error = %e, "no inotify reader thread; polling WALs");
                None
            }
        }
    })
}

impl Hub {
    fn read_forever(&self) {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            // SAFETY: reading into a buffer we own, of the length given.
            #[allow(unsafe_code)]
            let len =
                unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if len < 0 {
                if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                // Should not happen to a valid descriptor; wake everyone and let them
                // fall back to their idle timeout rather than spin.
                self.wake_all();
                std::thread::sleep(IDLE_WAIT);
                continue;
            }
            self.dispatch(&buf[..len as usize]);
            // A busy WAL is written thousands of times a second; let its events
            // coalesce in the kernel's queue (identical unread events merge) instead of
            // waking this thread for each. Capture batches for `poll_interval` anyway.
            std::thread::sleep(COALESCE);
        }
    }

    fn dispatch(&self, events: &[u8]) {
        let Ok(mut subs) = self.subscribers.lock() else {
            return;
        };
        let header = std::mem::size_of::<libc::inotify_event>();
        let mut off = 0usize;
        while off + header <= events.len() {
            // The kernel writes whole events; read the header field by field so that
            // no alignment is assumed.
            let at = |o: usize| {
                let b = &events[off + o..off + o + 4];
                u32::from_ne_bytes([b[0], b[1], b[2], b[3]])
            };
            let wd = at(0) as i32;
            let mask = at(4);
            off += header + at(12) as usize;
            if mask & libc::IN_Q_OVERFLOW != 0 {
                // Events were dropped: anyone may have missed a change.
                for s in subs.values().flatten() {
                    s.raise(false);
                }
                continue;
            }
            let gone = mask & (libc::IN_IGNORED | libc::IN_DELETE_SELF | libc::IN_MOVE_SELF) != 0;
            if gone {
                // A moved file keeps its watch; drop it so the path is watched anew.
                if let Some(list) = subs.remove(&wd) {
                    if mask & libc::IN_IGNORED == 0 {
                        self.rm_watch(wd);
                    }
                    for s in list {
                        s.raise(true);
                    }
                }
            } else if let Some(list) = subs.remove(&wd) {
                // A one-shot watch: the kernel removed it with this event, so each
                // subscriber watches the file anew when it next waits.
                for s in list {
                    s.raise(true);
                }
            }
        }
    }

    fn wake_all(&self) {
        if let Ok(subs) = self.subscribers.lock() {
            for s in subs.values().flatten() {
                s.raise(false);
            }
        }
    }

    /// Watches `path` for `signal`; the watch descriptor, or None if the file does not
    /// exist (yet).
    fn subscribe(&self, path: &Path, signal: &Arc<Signal>) -> Option<i32> {
        let cpath = CString::new(path.as_os_str().as_bytes()).ok()?;
        // Under the lock, so that the reader cannot see an event for the new
        // descriptor before its subscriber is registered.
        let mut subs = self.subscribers.lock().ok()?;
        // SAFETY: a valid inotify descriptor and a NUL-terminated path.
        #[allow(unsafe_code)]
        let wd = unsafe { libc::inotify_add_watch(self.fd.as_raw_fd(), cpath.as_ptr(), MASK) };
        if wd < 0 {
            return None;
        }
        let list = subs.entry(wd).or_default();
        if !list.iter().any(|s| Arc::ptr_eq(s, signal)) {
            list.push(signal.clone());
        }
        Some(wd)
    }

    fn unsubscribe(&self, wd: i32, signal: &Arc<Signal>) {
        let Ok(mut subs) = self.subscribers.lock() else {
            return;
        };
        if let Some(list) = subs.get_mut(&wd) {
            list.retain(|s| !Arc::ptr_eq(s, signal));
            if list.is_empty() {
                subs.remove(&wd);
                self.rm_watch(wd);
            }
        }
    }

    fn rm_watch(&self, wd: i32) {
        // SAFETY: plain integer arguments; an already removed descriptor is an error
        // we have nothing to do about.
        #[allow(unsafe_code)]
        unsafe {
            libc::inotify_rm_watch(self.fd.as_raw_fd(), wd);
        }
    }
}

/// Wakes a capture thread's wait as a change of its WAL would: a caller's request
/// (`engine::points`) is then served at once rather than after the idle wait.
#[derive(Debug, Clone)]
pub struct Waker(Arc<Signal>);

impl Waker {
    pub fn wake(&self) {
        self.0.raise(false);
    }
}

/// One capture thread's view of its WAL.
#[derive(Debug)]
pub struct WalWatch {
    path: PathBuf,
    signal: Arc<Signal>,
    wd: Option<i32>,
    /// The watch was armed anew since the last wait (see [`WalWatch::is_active`]).
    rearmed: bool,
}

impl WalWatch {
    pub fn new(wal: &Path) -> Self {
        let mut w = Self {
            path: wal.to_path_buf(),
            signal: Arc::new(Signal::default()),
            wd: None,
            rearmed: false,
        };
        if hub().is_none() {
            tracing::debug!(wal = %wal.display(), "inotify unavailable; polling the WAL");
        }
        w.arm();
        w
    }

    /// A handle that wakes [`WalWatch::wait`] from another thread.
    pub fn waker(&self) -> Waker {
        Waker(Arc::clone(&self.signal))
    }

    /// Whether changes wake us (otherwise the caller polls). A WAL that was deleted
    /// (a TRUNCATE checkpoint by the last connection, a database replaced) is watched
    /// again as soon as it exists, so a database polls only while it has no WAL.
    pub fn is_active(&mut self) -> bool {
        if self.wd.is_none() {
            self.arm();
            // Unwatched since the last event (one-shot watches): the file may have
            // changed after the caller last read it, so the next wait returns at once.
            self.rearmed = self.wd.is_some();
        }
        self.wd.is_some()
    }

    /// Watches the WAL file; it may not exist yet, or may have been replaced.
    fn arm(&mut self) {
        let Some(hub) = hub() else { return };
        if let Some(old) = self.wd.take() {
            hub.unsubscribe(old, &self.signal);
        }
        self.wd = hub.subscribe(&self.path, &self.signal);
    }

    /// Sleeps until the WAL changes or `timeout` passes; returns whether it changed.
    pub fn wait(&mut self, timeout: Duration) -> bool {
        if !self.is_active() {
            std::thread::sleep(timeout);
            return false;
        }
        if std::mem::take(&mut self.rearmed) {
            return true;
        }
        let Ok(guard) = self.signal.flags.lock() else {
            std::thread::sleep(timeout);
            return false;
        };
        let Ok((mut flags, _)) = self
            .signal
            .cv
            .wait_timeout_while(guard, timeout, |f| !f.changed)
        else {
            return false;
        };
        let changed = std::mem::take(&mut flags.changed);
        let lost = std::mem::take(&mut flags.lost);
        drop(flags);
        if lost {
            // The reader already dropped the descriptor; watch the new file next time.
            self.wd = None;
        }
        changed
    }
}

impl Drop for WalWatch {
    fn drop(&mut self) {
        if let (Some(hub), Some(wd)) = (hub(), self.wd.take()) {
            hub.unsubscribe(wd, &self.signal);
        }
    }
}

fn inotify_init() -> Option<OwnedFd> {
    // SAFETY: no pointers; the result is checked.
    #[allow(unsafe_code)]
    let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC) };
    if fd < 0 {
        return None;
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    #[allow(unsafe_code)]
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::time::Instant;

    use super::*;

    #[test]
    fn a_write_wakes_every_watch_and_a_replaced_file_is_followed() {
        let dir = tempfile::tempdir().unwrap();
        // More watches than the default per-user limit of inotify instances.
        let paths: Vec<PathBuf> = (0..200)
            .map(|i| dir.path().join(format!("{i}-wal")))
            .collect();
        for p in &paths {
            std::fs::write(p, b"x").unwrap();
        }
        let mut watches: Vec<WalWatch> = paths.iter().map(|p| WalWatch::new(p)).collect();
        assert!(watches.iter_mut().all(|w| w.is_active()));
        for (p, w) in paths.iter().zip(&mut watches) {
            std::fs::OpenOptions::new()
                .append(true)
                .open(p)
                .unwrap()
                .write_all(b"y")
                .unwrap();
            let t = Instant::now();
            assert!(
                w.wait(Duration::from_secs(5)),
                "{}: no wake-up",
                p.display()
            );
            assert!(t.elapsed() < Duration::from_secs(5));
            // The one-shot watch is armed again, and the change that may have come
            // while it was not is reported at once; then the next wait times out.
            assert!(
                w.wait(Duration::from_secs(5)),
                "{}: re-armed wait",
                p.display()
            );
            assert!(!w.wait(Duration::from_millis(10)));
        }

        // Replaced underneath (as a WAL deleted and created anew): the new file wakes.
        let w = &mut watches[0];
        std::fs::remove_file(&paths[0]).unwrap();
        assert!(w.wait(Duration::from_secs(5)));
        assert!(!w.is_active() || !w.wait(Duration::from_millis(10)));
        assert!(
            !w.is_active(),
            "no file, nothing to watch: the caller polls"
        );
        std::fs::write(&paths[0], b"new").unwrap();
        assert!(w.is_active(), "the recreated file is watched again");
        // Arming reports a possible change at once (the file was unwatched); the next
        // wake can only be the write's.
        assert!(
            w.wait(Duration::from_millis(1)),
            "arming does not report at once"
        );
        std::fs::OpenOptions::new()
            .append(true)
            .open(&paths[0])
            .unwrap()
            .write_all(b"z")
            .unwrap();
        assert!(
            w.wait(Duration::from_secs(5)),
            "the recreated file does not wake"
        );
        // Then the watch is armed again (one more immediate wake) and quiet.
        let mut extra = 0;
        while w.wait(Duration::from_millis(200)) {
            extra += 1;
            assert!(extra < 4, "wakes without changes");
        }

        // Dropped watches leave nothing behind (other tests may share the hub).
        let dropped: Vec<i32> = watches[1..].iter().filter_map(|w| w.wd).collect();
        assert_eq!(dropped.len(), 199);
        watches.truncate(1);
        let subs = hub().unwrap().subscribers.lock().unwrap();
        assert!(dropped.iter().all(|wd| !subs.contains_key(wd)));
        assert!(subs.contains_key(&watches[0].wd.unwrap()));
    }
}
