//! Replica maintenance, off the upload path: compaction of level N-1 into level N at
//! wall-clock multiples of each level's interval, L0 retention and history retention.
//! Every decision is taken from the in-memory [`Manifest`], so when nothing changed
//! nothing is requested: an idle database costs no object-store request.

use std::io::{BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tracing::{debug, warn};

use super::levels::{next_boundary, phase_for};
use super::manifest::Manifest;
use super::{EngineConfig, EngineError, Shared};
use crate::error::Chain;
use crate::layout::FileId;
use crate::remote_read::StreamReader;
use crate::replica::{RemoteFile, Replica};
use crate::spool::{Durability, Spool, SpoolError};

/// How often retention looks at the manifest when no compaction level is faster.
const RETENTION_TICK: Duration = Duration::from_secs(15);

pub struct Maintenance {
    pub replica: Replica,
    pub spool: Spool,
    pub manifest: Arc<Mutex<Manifest>>,
    pub cfg: EngineConfig,
    pub shared: Arc<Shared>,
}

impl Maintenance {
    pub async fn run(self) {
        self.drop_compacted_copies();
        let now = SystemTime::now();
        let phase = phase_for(self.spool.dir().as_os_str().as_bytes(), &self.cfg.levels);
        let mut next: Vec<(u8, Duration, SystemTime)> = self
            .cfg
            .levels
            .iter()
            .map(|(l, iv)| (l, iv, next_boundary(now, iv, phase)))
            .collect();
        let mut next_retention = now + RETENTION_TICK;
        loop {
            let wake = next
                .iter()
                .map(|n| n.2)
                .chain([next_retention])
                .min()
                .unwrap_or(next_retention);
            let wait = wake
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO);
            tokio::time::sleep(wait).await;
            if self.shared.stop.load(Ordering::Acquire) {
                return;
            }
            let now = SystemTime::now();
            // Lower levels first, so a higher level due at the same boundary already
            // sees the file just written below it.
            for (level, interval, at) in next.iter_mut() {
                if *at <= now {
                    if let Err(e) = self.compact(*level).await {
                        self.shared.stats.errors.record(e.kind());
                        warn!(url = %self.replica.url(), level = *level, error = %Chain(&e), "compaction failed; retrying at the next interval");
                    }
                    *at = next_boundary(now, *interval, phase);
                }
            }
            // In memory, so cheap enough to run on every wake.
            self.enforce_retention(now).await;
            next_retention = now + RETENTION_TICK;
        }
    }

    /// Local L0 copies already merged into L1 (or no longer in the replica) are
    /// useless; a previous run may have died before removing them.
    fn drop_compacted_copies(&self) {
        let Ok(m) = self.manifest.lock() else { return };
        let covered = m.max_txid(1);
        for id in self.spool.shipped_files(0) {
            let known = m.level(0).any(|f| f.id == id);
            if !known || id.range.max <= covered {
                self.spool.remove_shipped(id);
            }
        }
    }

    /// Merges the level-below files that follow this level's last file into one file.
    async fn compact(&self, level: u8) -> Result<(), EngineError> {
        let inputs = {
            let m = self.manifest.lock().map_err(poisoned)?;
            sources(&m, level)
        };
        if inputs.is_empty() {
            return Ok(());
        }
        let mut out = None;
        let result = async {
            // Local copies where the spool kept them; the rest streamed from the
            // store, so a compaction takes room for its output only, not for a
            // level's worth of downloaded inputs.
            let mut readers: Vec<Box<dyn Read + Send>> = Vec::with_capacity(inputs.len());
            for f in &inputs {
                match self.spool.shipped(f.id) {
                    Some(p) => {
                        let file = std::fs::File::open(&p)
                            .map_err(|source| EngineError::Io { path: p, source })?;
                        readers.push(Box::new(BufReader::new(file)));
                    }
                    None => {
                        let client = self.replica.client().clone();
                        let remote = StreamReader::open(client, f.key.clone(), f.size).await?;
                        readers.push(Box::new(BufReader::with_capacity(256 << 10, remote)));
                    }
                }
            }
            let spool = self.spool.clone();
            let (path, header) = super::off_thread("compaction", move || {
                Ok(spool.merge_from(readers, Durability::Deferred)?)
            })
            .await?;
            out = Some(path.clone());
            let id = FileId::of(level, &header);
            let file = super::ship::publish(&self.replica, &self.manifest, id, &path, &header).await?;
            self.shared.stats.compactions.fetch_add(1, Ordering::Relaxed);
            debug!(url = %self.replica.url(), file = %id, inputs = inputs.len(), bytes = file.size, "compacted");
            Ok::<_, EngineError>(())
        }
        .await;
        if let Some(p) = &out {
            self.spool.discard(p);
        }
        match &result {
            Ok(()) => {
                for f in &inputs {
                    self.spool.remove_shipped(f.id);
                }
            }
            Err(EngineError::Ltx { .. } | EngineError::Spool(SpoolError::Ltx { .. })) => {
                // A damaged local copy must not block compaction for ever: the next
                // attempt downloads the uploaded file instead.
                for f in &inputs {
                    self.spool.remove_shipped(f.id);
                }
            }
            Err(_) => {}
        }
        result
    }

    /// Deletes what retention and L0 retention allow, deciding from the manifest.
    async fn enforce_retention(&self, now: SystemTime) {
        let doomed = {
            let Ok(m) = self.manifest.lock() else { return };
            doomed(&m, now, &self.cfg)
        };
        if doomed.is_empty() {
            return;
        }
        let keys: Vec<_> = doomed.iter().map(|f| f.key.clone()).collect();
        match self.replica.client().delete_many(&keys).await {
            Ok(()) => {
                if let Ok(mut m) = self.manifest.lock() {
                    for f in &doomed {
                        m.remove(f.id);
                    }
                }
                for f in &doomed {
                    self.spool.remove_shipped(f.id);
                }
                self.shared
                    .stats
                    .deleted_files
                    .fetch_add(keys.len() as u64, Ordering::Relaxed);
                // Routine (every compaction interval once history ages out): debug.
                debug!(url = %self.replica.url(), files = keys.len(), "retention deleted old files");
            }
            Err(e) => {
                self.shared.stats.errors.record(e.kind());
                warn!(url = %self.replica.url(), error = %Chain(&e), "retention could not delete old files; retrying later")
            }
        }
    }
}

fn poisoned<T>(_: T) -> EngineError {
    EngineError::Poisoned("maintenance")
}

/// The inputs of the next compaction into `level`: the contiguous run of files of the
/// level below that starts after the last TXID `level` already covers.
pub fn sources(m: &Manifest, level: u8) -> Vec<RemoteFile> {
    let covered = m.max_txid(level);
    let mut run: Vec<RemoteFile> = Vec::new();
    for f in m.level(level - 1) {
        if f.id.range.min <= covered {
            continue;
        }
        if let Some(last) = run.last()
            && f.id.range.min != last.id.range.max + 1
        {
            // A gap (history restarted at a snapshot): compact up to it now, the rest
            // at the next interval.
            break;
        }
        run.push(f.clone());
    }
    run
}

/// Files that retention removes at `now`: everything the retention window no longer
/// needs, and the L0 files of an L1 file once all of them are older than
/// `l0_retention`. An L1 file's L0 files go together or not at all, so every L0 file
/// left is a restore point (deleting them one by one by age would leave L0 files whose
/// predecessors are gone, reachable by neither `--txid` nor `--timestamp`). The newest
/// L0 file is never deleted, so the replica's head is always an L0 file.
pub fn doomed(m: &Manifest, now: SystemTime, cfg: &EngineConfig) -> Vec<RemoteFile> {
    let mut out = super::retention::expired(&m.all(), now, cfg.retention);
    if cfg.levels.is_empty() {
        return out;
    }
    let Some(cutoff) = now.checked_sub(cfg.l0_retention) else {
        return out;
    };
    let newest = m.max_txid(0);
    for group in m.level(1) {
        let members: Vec<&RemoteFile> = m.within(0, group.id.range).collect();
        let aged = members
            .iter()
            .all(|f| f.id.range.max < newest && f.time().is_some_and(|c| c < cutoff));
        if !aged {
            continue;
        }
        for f in members {
            if !out.iter().any(|o| o.id == f.id) {
                out.push(f.clone());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::{LayoutStyle, TxRange};
    use crate::restore::{Target, plan};
    use std::time::UNIX_EPOCH;

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
    fn sources_follow_the_level_and_stop_at_gaps() {
        let m = Manifest::new(vec![
            f(0, 1, 1, 1),
            f(0, 2, 3, 2),
            f(0, 4, 4, 3),
            f(1, 1, 3, 2),
            f(9, 1, 6, 5),
            f(0, 7, 7, 6),
        ]);
        let ids: Vec<_> = sources(&m, 1).iter().map(|f| f.id.range).collect();
        assert_eq!(ids, vec![TxRange { min: 4, max: 4 }]);
        let m = Manifest::new(vec![f(0, 7, 7, 6), f(0, 8, 9, 7)]);
        assert_eq!(sources(&m, 1).len(), 2);
        assert!(sources(&m, 2).is_empty());
    }

    #[test]
    fn l0_retention_keeps_per_sync_history_then_l1() {
        let cfg = EngineConfig {
            l0_retention: Duration::from_secs(100),
            retention: Duration::from_secs(10_000),
            ..EngineConfig::default()
        };
        // L0 every second from t=1; L1 every 30 s up to txid 90; snapshot at txid 1.
        let mut files = vec![f(9, 1, 1, 0)];
        for t in 2..=100 {
            files.push(f(0, t, t, t));
        }
        for s in 0..3 {
            files.push(f(1, 2 + 30 * s, 31 + 30 * s, 31 + 30 * s));
        }
        let m = Manifest::new(files.clone());
        let now = UNIX_EPOCH + Duration::from_secs(160);
        let gone = doomed(&m, now, &cfg);
        // Only L0 files covered by L1 go, and only whole L1 groups older than 60 s:
        // 2..=31 (all older), not 32..=61 (61 is younger).
        assert!(gone.iter().all(|g| g.id.level == 0 && g.id.range.max <= 31));
        assert_eq!(gone.len(), 30);
        let kept: Vec<_> = files
            .iter()
            .filter(|f| !gone.contains(f))
            .cloned()
            .collect();
        // Every point restores at least at L1 granularity, and exactly where L0 stays.
        for t in 2..=160 {
            let ts =
                Target::Timestamp(UNIX_EPOCH + Duration::from_secs(t) + Duration::from_millis(1));
            let before = plan(&files, ts).unwrap().last().unwrap().id.range.max;
            let after = plan(&kept, ts).unwrap().last().unwrap().id.range.max;
            assert!(after <= before, "t={t}");
            // L0 files from txid 60 stay, but the L1 file bridging up to them (created at
            // t=61) is usable only after its creation: per-sync from then on.
            if t >= 62 {
                assert_eq!(after, before, "t={t}");
            } else {
                assert!(before - after < 30, "t={t}: {after} vs {before}");
            }
        }
        // Every L0 file left is a restore point by TXID.
        for f in kept.iter().filter(|f| f.id.level == 0) {
            let p = plan(&kept, Target::Txid(f.id.range.max)).unwrap();
            assert_eq!(p.last().unwrap().id.range.max, f.id.range.max);
        }
        // Without compaction levels, L0 is left to the retention window.
        let none = EngineConfig {
            levels: super::super::Levels::NONE,
            ..cfg
        };
        assert!(doomed(&m, now, &none).is_empty());
    }
}
