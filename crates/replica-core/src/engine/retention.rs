//! Retention: history older than the window is deleted, while a restore to any point
//! inside the window keeps working.
//!
//! The base of the window is the newest snapshot created before its start; it
//! and everything after it are kept, everything it supersedes is deleted. With no
//! snapshot that old, nothing is deleted. The newest snapshot is therefore never
//! deleted. The maintenance task applies it to the in-memory manifest (see
//! `maintain.rs`), so deciding costs no request.

use std::time::{Duration, SystemTime};

use crate::layout::SNAPSHOT_LEVEL;
use crate::replica::RemoteFile;

/// The files that retention deletes from `files` at time `now`.
pub fn expired(files: &[RemoteFile], now: SystemTime, retention: Duration) -> Vec<RemoteFile> {
    let Some(boundary) = now.checked_sub(retention) else {
        return Vec::new();
    };
    let Some(base) = files
        .iter()
        .filter(|f| f.id.level == SNAPSHOT_LEVEL && f.time().is_some_and(|c| c < boundary))
        .max_by_key(|f| f.id.range.max)
    else {
        return Vec::new();
    };
    files
        .iter()
        .filter(|f| {
            if f.id.level == SNAPSHOT_LEVEL {
                f.id.range.max < base.id.range.max
            } else {
                f.id.range.max <= base.id.range.max
            }
        })
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;
    use crate::layout::{FileId, LayoutStyle, TxRange};
    use crate::restore::{Target, plan};

    fn f(level: u8, min: u64, max: u64, created_s: u64) -> RemoteFile {
        let id = FileId {
            level,
            range: TxRange { min, max },
        };
        RemoteFile {
            id,
            key: LayoutStyle::LtxDir.key(id),
            size: 1,
            ltx_time: Some(UNIX_EPOCH + Duration::from_secs(created_s)),
            last_modified: None,
        }
    }

    #[test]
    fn keeps_the_window_restorable() {
        // Snapshots at t=0 (txid 1), t=100 (txid 10), t=200 (txid 20); L0s every 10 s.
        let mut files = vec![f(9, 1, 1, 0), f(9, 1, 10, 100), f(9, 1, 20, 200)];
        for t in 2..=25 {
            files.push(f(0, t, t, t * 10));
        }
        let now = UNIX_EPOCH + Duration::from_secs(250);
        let gone = expired(&files, now, Duration::from_secs(130)); // window starts at t=120
        let kept: Vec<_> = files
            .iter()
            .filter(|f| !gone.contains(f))
            .cloned()
            .collect();
        // Base is the t=100 snapshot: the older snapshot and L0s up to txid 10 go.
        assert!(gone.contains(&files[0]));
        assert!(!gone.contains(&files[1]) && !gone.contains(&files[2]));
        assert!(kept.iter().all(|f| f.id.level == 9 || f.id.range.min > 10));
        // Every point in the window still restores, to the same TXID as before.
        for t in 120..=250 {
            let ts = Target::Timestamp(UNIX_EPOCH + Duration::from_secs(t));
            let before = plan(&files, ts).unwrap();
            let after = plan(&kept, ts).unwrap();
            assert_eq!(
                before.last().unwrap().id.range.max,
                after.last().unwrap().id.range.max,
                "t={t}"
            );
        }
    }

    #[test]
    fn never_deletes_without_an_old_enough_snapshot() {
        let files = vec![f(9, 1, 5, 1000), f(0, 6, 6, 1001)];
        let now = UNIX_EPOCH + Duration::from_secs(1002);
        assert!(expired(&files, now, Duration::from_secs(10)).is_empty());
        // Even far past the window, the newest snapshot and what follows it stay.
        let later = UNIX_EPOCH + Duration::from_secs(100_000);
        assert!(expired(&files, later, Duration::from_secs(10)).is_empty());
    }
}
