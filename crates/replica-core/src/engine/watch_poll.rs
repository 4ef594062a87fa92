//! Without inotify (not Linux), capture polls the WAL; see `watch.rs`.

use std::path::Path;
use std::time::Duration;

pub const IDLE_WAIT: Duration = Duration::from_millis(250);

#[derive(Debug)]
pub struct WalWatch;

/// Polling cannot be woken: a request waits for the next poll.
#[derive(Debug, Clone)]
pub struct Waker;

impl Waker {
    pub fn wake(&self) {}
}

impl WalWatch {
    pub fn new(_wal: &Path) -> Self {
        Self
    }

    pub fn waker(&self) -> Waker {
        Waker
    }

    pub fn is_active(&self) -> bool {
        false
    }

    pub fn wait(&mut self, timeout: Duration) -> bool {
        std::thread::sleep(timeout);
        false
    }
}
