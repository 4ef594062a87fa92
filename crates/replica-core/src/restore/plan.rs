//! Which files a restore applies, and in what order.
//!
//! The rules are Litestream 0.5's, so that both tools pick the same chain from the
//! same replica: start from the newest usable snapshot (level 9, else any file from
//! TXID 1), then repeatedly take the file that reaches furthest among those that
//! continue the chain without a gap.

use std::time::SystemTime;

use crate::layout::SNAPSHOT_LEVEL;
use crate::replica::RemoteFile;

/// The state a restore should reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Latest,
    /// Everything up to and including this TXID.
    Txid(u64),
    /// Everything created strictly before this time (Litestream's rule, so both tools
    /// stop at the same file).
    Timestamp(SystemTime),
    /// A point of a Litestream 0.3 generation (never an LTX one).
    V3(super::v3::V3Target),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    #[error("the replica holds no LTX files")]
    Empty,
    #[error("no snapshot (file starting at TXID 1) is available{for_target}")]
    NoSnapshot { for_target: String },
    #[error(
        "the replica has a gap: files reach TXID {have:016x} but the next file, {next_key}, starts at {next_min:016x}"
    )]
    Gap {
        have: u64,
        next_key: String,
        next_min: u64,
    },
    #[error("TXID {want:016x} is not available: {}", not_available(*.have, *.next))]
    TxidNotAvailable {
        want: u64,
        /// The restore point below `want`.
        have: u64,
        /// The restore point above `want`, when history past it exists but at a coarser
        /// granularity (its per-sync files were compacted and aged out).
        next: Option<u64>,
    },
}

/// Plans a restore. `files` is every LTX file in the replica, any order.
pub fn plan(files: &[RemoteFile], target: Target) -> Result<Vec<RemoteFile>, PlanError> {
    if files.is_empty() {
        return Err(PlanError::Empty);
    }
    let usable = |f: &&RemoteFile| match target {
        Target::Latest => true,
        Target::Txid(t) => f.id.range.max <= t,
        // A file with no known creation time cannot be placed in time; leave it out
        // rather than guess.
        Target::Timestamp(ts) => f.time().is_some_and(|c| c < ts),
        Target::V3(_) => false,
    };
    let candidates: Vec<&RemoteFile> = files.iter().filter(usable).collect();

    let base = candidates
        .iter()
        .filter(|f| f.id.level == SNAPSHOT_LEVEL)
        .max_by_key(|f| f.id.range.max)
        .or_else(|| {
            candidates
                .iter()
                .filter(|f| f.id.range.min == 1)
                .max_by_key(|f| (f.id.range.max, f.id.level))
        })
        .copied()
        .ok_or_else(|| PlanError::NoSnapshot {
            for_target: match target {
                Target::Latest => String::new(),
                Target::Txid(t) => format!(" at or before TXID {t:016x}"),
                Target::Timestamp(ts) => {
                    format!(" before {}", humantime::format_rfc3339_millis(ts))
                }
                Target::V3(_) => " (a Litestream 0.3 target)".into(),
            },
        })?;

    let mut chain = vec![base.clone()];
    let mut current = base.id.range.max;
    loop {
        // Furthest reach wins; ties go to the smaller start, then the higher level,
        // which is Litestream's order.
        let next = candidates
            .iter()
            .filter(|f| f.id.range.min <= current + 1 && f.id.range.max > current)
            .max_by(|a, b| {
                a.id.range
                    .max
                    .cmp(&b.id.range.max)
                    .then(b.id.range.min.cmp(&a.id.range.min))
                    .then(a.id.level.cmp(&b.id.level))
            });
        match next {
            Some(f) => {
                current = f.id.range.max;
                chain.push((*f).clone());
            }
            None => break,
        }
    }

    match target {
        Target::Latest => {
            if let Some(f) = files
                .iter()
                .filter(|f| f.id.range.min > current + 1)
                .min_by_key(|f| f.id.range.min)
            {
                return Err(PlanError::Gap {
                    have: current,
                    next_key: f.key.to_string(),
                    next_min: f.id.range.min,
                });
            }
        }
        Target::Txid(want) if current < want => {
            let next = files
                .iter()
                .filter(|f| f.id.range.min <= current + 1 && f.id.range.max > current)
                .map(|f| f.id.range.max)
                .min();
            return Err(PlanError::TxidNotAvailable {
                want,
                have: current,
                next,
            });
        }
        _ => {}
    }
    Ok(chain)
}

fn not_available(have: u64, next: Option<u64>) -> String {
    match next {
        Some(next) => format!(
            "history this old is kept at compaction granularity; the nearest restore points are {have:016x} and {next:016x}"
        ),
        None => format!("the replica reaches only {have:016x}"),
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;
    use crate::layout::{FileId, LayoutStyle, TxRange};

    fn f(level: u8, min: u64, max: u64) -> RemoteFile {
        let id = FileId {
            level,
            range: TxRange { min, max },
        };
        RemoteFile {
            id,
            key: LayoutStyle::LtxDir.key(id),
            size: 200,
            ltx_time: Some(UNIX_EPOCH + Duration::from_secs(max)),
            last_modified: None,
        }
    }

    fn ranges(p: &[RemoteFile]) -> Vec<(u8, u64, u64)> {
        p.iter()
            .map(|f| (f.id.level, f.id.range.min, f.id.range.max))
            .collect()
    }

    #[test]
    fn snapshot_then_l0_chain() {
        let files = vec![f(9, 1, 1), f(0, 2, 2), f(0, 3, 3), f(0, 4, 4)];
        let p = plan(&files, Target::Latest).unwrap();
        assert_eq!(ranges(&p), vec![(9, 1, 1), (0, 2, 2), (0, 3, 3), (0, 4, 4)]);
    }

    #[test]
    fn prefers_newest_snapshot_and_compacted_levels() {
        let files = vec![
            f(9, 1, 1),
            f(0, 2, 2),
            f(0, 3, 3),
            f(1, 2, 3),
            f(9, 1, 3),
            f(0, 4, 4),
            f(0, 5, 5),
            f(1, 4, 5),
        ];
        let p = plan(&files, Target::Latest).unwrap();
        assert_eq!(ranges(&p), vec![(9, 1, 3), (1, 4, 5)]);
    }

    #[test]
    fn overlaps_are_fine_and_first_l0_is_a_snapshot() {
        let files = vec![f(0, 1, 1), f(1, 1, 4), f(0, 5, 5)];
        let p = plan(&files, Target::Latest).unwrap();
        assert_eq!(ranges(&p), vec![(1, 1, 4), (0, 5, 5)]);
    }

    #[test]
    fn gap_fails_latest_but_not_an_earlier_txid() {
        let files = vec![f(9, 1, 1), f(0, 2, 2), f(0, 4, 4)];
        let err = plan(&files, Target::Latest).unwrap_err();
        assert!(
            matches!(
                err,
                PlanError::Gap {
                    have: 2,
                    next_min: 4,
                    ..
                }
            ),
            "{err}"
        );
        assert!(
            err.to_string()
                .contains("0000000000000004-0000000000000004.ltx")
        );
        let p = plan(&files, Target::Txid(2)).unwrap();
        assert_eq!(ranges(&p), vec![(9, 1, 1), (0, 2, 2)]);
        assert!(matches!(
            plan(&files, Target::Txid(4)),
            Err(PlanError::TxidNotAvailable {
                want: 4,
                have: 2,
                next: None
            })
        ));
    }

    #[test]
    fn a_txid_inside_a_compacted_range_names_the_nearest_points() {
        // L0 2..=4 were compacted into L1 and aged out; 5 is per-sync again.
        let files = vec![f(9, 1, 1), f(1, 2, 4), f(0, 5, 5)];
        let err = plan(&files, Target::Txid(3)).unwrap_err();
        assert_eq!(
            err,
            PlanError::TxidNotAvailable {
                want: 3,
                have: 1,
                next: Some(4)
            }
        );
        assert!(
            err.to_string()
                .contains("nearest restore points are 0000000000000001 and 0000000000000004"),
            "{err}"
        );
    }

    #[test]
    fn timestamp_cuts_the_chain() {
        let files = vec![f(9, 1, 1), f(0, 2, 2), f(0, 3, 3), f(0, 4, 4)];
        // Strictly before, as Litestream: the file created at exactly t=4 is left out.
        let p = plan(
            &files,
            Target::Timestamp(UNIX_EPOCH + Duration::from_secs(4)),
        )
        .unwrap();
        assert_eq!(ranges(&p), vec![(9, 1, 1), (0, 2, 2), (0, 3, 3)]);
        assert!(matches!(
            plan(&files, Target::Timestamp(UNIX_EPOCH)),
            Err(PlanError::NoSnapshot { .. })
        ));
    }

    #[test]
    fn no_snapshot_and_empty() {
        assert_eq!(plan(&[], Target::Latest), Err(PlanError::Empty));
        assert!(matches!(
            plan(&[f(0, 2, 2)], Target::Latest),
            Err(PlanError::NoSnapshot { .. })
        ));
    }
}
