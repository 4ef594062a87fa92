//! Without inotify (not Linux), capture polls the WAL; see `watch.rs`.

use std::path::Path;
use std::time::Duration;

pub const IDLE_WAIT: Duration = Duration::from_millis(250);

#[derive(Debug)]
pub struct WalWatch;

impl WalWatch {
    pub fn new(_wal: &Path) -> Self {
        Self
    }

    pub fn is_active(&self) -> bool {
        false
    }

    pub fn wait(&mut self, timeout: Duration) -> bool {
        std::thread::sleep(timeout);
        false
    }
}
