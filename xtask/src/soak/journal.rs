//! The writer's journal: one 32-byte record per commit, appended after COMMIT returns
//! (see `workload.py`): time before BEGIN, time after COMMIT (ns since the epoch),
//! digest and row count. Record `k - 1` is commit `k`.

use std::path::Path;

use anyhow::{Context, Result};

const RECORD: usize = 32;

#[derive(Debug, Clone, Copy)]
struct Rec {
    begin_ns: u64,
    end_ns: u64,
}

/// The journal as read at one moment.
#[derive(Debug, Default)]
pub struct Commits {
    recs: Vec<Rec>,
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

impl Commits {
    /// Reads the journal; a record still being appended is left out.
    pub fn load(path: &Path) -> Result<Commits> {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let recs = bytes
            .chunks_exact(RECORD)
            .map(|r| Rec {
                begin_ns: u64_at(r, 0),
                end_ns: u64_at(r, 8),
            })
            .collect();
        Ok(Commits { recs })
    }

    /// Commits journaled so far.
    pub fn len(&self) -> u64 {
        self.recs.len() as u64
    }

    fn rec(&self, k: u64) -> Option<Rec> {
        let i = usize::try_from(k.checked_sub(1)?).ok()?;
        self.recs.get(i).copied()
    }

    /// When commit `k` (>= 1) began (before its BEGIN).
    pub fn begin_ns(&self, k: u64) -> Option<u64> {
        self.rec(k).map(|r| r.begin_ns)
    }

    /// When commit `k` (>= 1) had returned from COMMIT.
    pub fn end_ns(&self, k: u64) -> Option<u64> {
        self.rec(k).map(|r| r.end_ns)
    }

    /// How many commits had returned by `t_ns`: the writer's commit count at that time.
    pub fn committed_by(&self, t_ns: u64) -> u64 {
        // One thread appends in order, so end times are sorted.
        self.recs.partition_point(|r| r.end_ns <= t_ns) as u64
    }
}
