//! What the engine knows about the replica, kept in memory: listed once at start,
//! then updated by every upload and delete this process makes. Compaction and
//! retention decide from it, so an idle database makes no LIST requests at all.
//!
//! The engine assumes it is the only writer of its replica path (as Litestream does);
//! another writer's files are seen at the next start.

use std::collections::BTreeMap;
use std::time::SystemTime;

use crate::layout::{FileId, MAX_LEVEL, SNAPSHOT_LEVEL, TxRange};
use crate::replica::RemoteFile;

#[derive(Debug, Default)]
pub struct Manifest {
    levels: [BTreeMap<TxRange, RemoteFile>; MAX_LEVEL as usize + 1],
}

impl Manifest {
    pub fn new(files: Vec<RemoteFile>) -> Self {
        let mut m = Self::default();
        for f in files {
            m.insert(f);
        }
        m
    }

    pub fn insert(&mut self, f: RemoteFile) {
        if let Some(level) = self.levels.get_mut(usize::from(f.id.level)) {
            level.insert(f.id.range, f);
        }
    }

    pub fn remove(&mut self, id: FileId) {
        if let Some(level) = self.levels.get_mut(usize::from(id.level)) {
            level.remove(&id.range);
        }
    }

    /// The files of one level in TXID order.
    pub fn level(&self, level: u8) -> impl Iterator<Item = &RemoteFile> {
        self.levels
            .get(usize::from(level))
            .into_iter()
            .flat_map(|l| l.values())
    }

    /// The files of `level` that lie inside `range`, in TXID order.
    pub fn within(&self, level: u8, range: TxRange) -> impl Iterator<Item = &RemoteFile> {
        let from = TxRange {
            min: range.min,
            max: range.min,
        };
        let to = TxRange {
            min: range.max,
            max: range.max,
        };
        self.levels
            .get(usize::from(level))
            .into_iter()
            .flat_map(move |l| l.range(from..=to).map(|(_, f)| f))
            .filter(move |f| f.id.range.max <= range.max)
    }

    /// Highest TXID covered by `level`.
    pub fn max_txid(&self, level: u8) -> u64 {
        self.level(level).map(|f| f.id.range.max).max().unwrap_or(0)
    }

    /// Highest TXID in the replica.
    pub fn replica_max(&self) -> u64 {
        (0..=MAX_LEVEL).map(|l| self.max_txid(l)).max().unwrap_or(0)
    }

    /// The newest snapshot: its TXID and creation time.
    pub fn newest_snapshot(&self) -> Option<(u64, Option<SystemTime>)> {
        self.level(SNAPSHOT_LEVEL)
            .max_by_key(|f| f.id.range.max)
            .map(|f| (f.id.range.max, f.time()))
    }

    /// The earliest and latest times a restore can reach: the oldest snapshot (a
    /// restore starts from one) and the newest file of any level.
    pub fn time_window(&self) -> Option<(SystemTime, SystemTime)> {
        let from = self
            .level(SNAPSHOT_LEVEL)
            .filter_map(RemoteFile::time)
            .min()?;
        let to = self
            .levels
            .iter()
            .flat_map(|l| l.values())
            .filter_map(RemoteFile::time)
            .max()?;
        Some((from, to.max(from)))
    }

    pub fn all(&self) -> Vec<RemoteFile> {
        self.levels
            .iter()
            .flat_map(|l| l.values().cloned())
            .collect()
    }

    pub fn len(&self) -> usize {
        self.levels.iter().map(BTreeMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
