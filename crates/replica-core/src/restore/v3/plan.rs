//! Which 0.3 objects a restore applies: Litestream 0.3's rules, so both tools pick
//! the same generation, snapshot and WAL segments.
//!
//! - Generation: the one named, else among those whose [first, last] object time
//!   holds the timestamp (all of them without one), the one updated last.
//! - Snapshot: with an index, the highest snapshot index at or below it; otherwise the
//!   newest snapshot not after the timestamp.
//! - WAL: the segments from the snapshot's index on, in (index, offset) order, up to
//!   the first one after the timestamp or past the index. Every index in between must
//!   be present, starting at offset 0.

use std::time::SystemTime;

use super::V3Error;
use super::layout::{self, GenerationId};
use super::store::{Listing, Segment, Snapshot};

/// The point a 0.3 restore reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct V3Target {
    /// Restore from this generation instead of the one chosen by time.
    pub generation: Option<GenerationId>,
    /// Up to and including this WAL index (needs `generation`).
    pub index: Option<u32>,
    /// As of this time: objects modified at or before it.
    pub timestamp: Option<SystemTime>,
}

/// The objects to apply, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct V3Plan {
    pub generation: GenerationId,
    pub snapshot: Snapshot,
    /// Per WAL index from the snapshot's on, its segments in offset order.
    pub wal: Vec<(u32, Vec<Segment>)>,
}

impl V3Plan {
    pub fn objects(&self) -> usize {
        1 + self.wal.iter().map(|(_, s)| s.len()).sum::<usize>()
    }

    /// The last WAL index applied (the snapshot's when there is no WAL).
    pub fn last_index(&self) -> u32 {
        self.wal
            .last()
            .map(|(i, _)| *i)
            .unwrap_or(self.snapshot.index)
    }
}

/// Picks the generation a restore uses, or `None` when no generation qualifies.
pub fn choose_generation(listing: &Listing, target: &V3Target) -> Option<GenerationId> {
    let mut best: Option<(GenerationId, SystemTime)> = None;
    // Ascending by name, and only a strictly later update replaces: 0.3's tie-break.
    for (id, g) in listing {
        if target.generation.is_some_and(|want| want != *id) {
            continue;
        }
        let Some((created, updated)) = g.time_bounds() else {
            continue;
        };
        if let Some(ts) = target.timestamp
            && (ts < created || ts > updated)
        {
            continue;
        }
        if best.is_none_or(|(_, b)| updated > b) {
            best = Some((*id, updated));
        }
    }
    best.map(|(id, _)| id)
}

/// The snapshot a timestamp (or latest) restore of any generation would start from;
/// used to choose between 0.3 and LTX history.
pub fn newest_snapshot_at(listing: &Listing, timestamp: Option<SystemTime>) -> Option<&Snapshot> {
    listing
        .values()
        .flat_map(|g| g.snapshots.iter())
        .filter(|s| timestamp.is_none_or(|ts| s.modified <= ts))
        .max_by_key(|s| s.modified)
}

/// The newest object time of the whole 0.3 history.
pub fn updated_at(listing: &Listing) -> Option<SystemTime> {
    listing
        .values()
        .filter_map(|g| g.time_bounds())
        .map(|(_, u)| u)
        .max()
}

pub fn plan(listing: &Listing, target: &V3Target) -> Result<V3Plan, V3Error> {
    if target.index.is_some() && target.generation.is_none() {
        return Err(V3Error::IndexWithoutGeneration);
    }
    if target.index.is_some() && target.timestamp.is_some() {
        return Err(V3Error::IndexAndTimestamp);
    }
    if let Some(want) = target.generation
        && !listing.contains_key(&want)
    {
        return Err(V3Error::NoSuchGeneration {
            generation: want,
            available: listing.keys().map(|g| g.to_string()).collect(),
        });
    }
    let generation = choose_generation(listing, target).ok_or_else(|| V3Error::NoGenerationAt {
        timestamp: target.timestamp,
    })?;
    let Some(g) = listing.get(&generation) else {
        return Err(V3Error::NoGenerationAt {
            timestamp: target.timestamp,
        });
    };

    let snapshot = match target.index {
        Some(index) => g.snapshots.iter().rfind(|s| s.index <= index),
        None => {
            let mut best: Option<&Snapshot> = None;
            // Ascending by index, a strictly newer time replaces: 0.3's tie-break.
            for s in &g.snapshots {
                if target.timestamp.is_some_and(|ts| s.modified > ts) {
                    continue;
                }
                if best.is_none_or(|b| s.modified > b.modified) {
                    best = Some(s);
                }
            }
            best
        }
    }
    .ok_or_else(|| V3Error::NoSnapshot {
        prefix: generation.prefix(),
        detail: match (g.snapshots.is_empty(), target.index, target.timestamp) {
            (true, _, _) => "it holds WAL segments but no snapshot".into(),
            (false, Some(i), _) => format!("none at or below WAL index {i:08x}"),
            (false, None, Some(ts)) => {
                format!("none at or before {}", humantime::format_rfc3339_millis(ts))
            }
            (false, None, None) => "none".into(),
        },
    })?
    .clone();

    let mut wal: Vec<(u32, Vec<Segment>)> = Vec::new();
    for s in g.segments.iter().filter(|s| s.index >= snapshot.index) {
        if target.timestamp.is_some_and(|ts| s.modified > ts)
            || target.index.is_some_and(|i| s.index > i)
        {
            break;
        }
        match wal.last_mut() {
            Some((i, segs)) if *i == s.index => segs.push(s.clone()),
            _ => {
                if s.offset != 0 {
                    return Err(V3Error::MissingSegment {
                        key: layout::wal_segment_key(generation, s.index, 0),
                        detail: format!("WAL index {:08x} starts at {}", s.index, s.key),
                    });
                }
                wal.push((s.index, vec![s.clone()]));
            }
        }
    }
    // Every index from the snapshot's to the last one must be there: a WAL file missing
    // in the middle would silently drop its transactions.
    let mut expect = snapshot.index;
    for (i, _) in &wal {
        if *i != expect {
            return Err(V3Error::MissingSegment {
                key: layout::wal_segment_key(generation, expect, 0),
                detail: format!(
                    "WAL index {expect:08x} is missing between the snapshot {} and WAL index {i:08x}",
                    snapshot.key
                ),
            });
        }
        expect = i + 1;
    }
    if let Some(want) = target.index {
        let reached = wal.last().map(|(i, _)| *i).unwrap_or(snapshot.index);
        if reached < want {
            return Err(V3Error::IndexNotAvailable {
                generation,
                want,
                have: reached,
            });
        }
    }
    Ok(V3Plan {
        generation,
        snapshot,
        wal,
    })
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::super::store::Generation;
    use super::*;

    fn t(s: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(s)
    }

    fn snap(g: GenerationId, index: u32, at: u64) -> Snapshot {
        Snapshot {
            index,
            key: layout::snapshot_key(g, index),
            size: 1,
            modified: t(at),
        }
    }

    fn seg(g: GenerationId, index: u32, offset: u32, at: u64) -> Segment {
        Segment {
            index,
            offset,
            key: layout::wal_segment_key(g, index, offset),
            size: 1,
            modified: t(at),
        }
    }

    const A: GenerationId = GenerationId(0xa);
    const B: GenerationId = GenerationId(0xb);

    /// A: snapshot 0 at 10, WAL 0 at 11/12, WAL 1 at 13, snapshot 2 at 14, WAL 2 at 15.
    /// B: snapshot 0 at 20, WAL 0 at 21.
    fn listing() -> Listing {
        let mut l = Listing::new();
        l.insert(
            A,
            Generation {
                snapshots: vec![snap(A, 0, 10), snap(A, 2, 14)],
                segments: vec![
                    seg(A, 0, 0, 11),
                    seg(A, 0, 4152, 12),
                    seg(A, 1, 0, 13),
                    seg(A, 2, 0, 15),
                ],
            },
        );
        l.insert(
            B,
            Generation {
                snapshots: vec![snap(B, 0, 20)],
                segments: vec![seg(B, 0, 0, 21)],
            },
        );
        l
    }

    fn shape(p: &V3Plan) -> (GenerationId, u32, Vec<(u32, Vec<u32>)>) {
        (
            p.generation,
            p.snapshot.index,
            p.wal
                .iter()
                .map(|(i, s)| (*i, s.iter().map(|s| s.offset).collect()))
                .collect(),
        )
    }

    #[test]
    fn latest_is_the_generation_updated_last() {
        let p = plan(&listing(), &V3Target::default()).unwrap();
        assert_eq!(shape(&p), (B, 0, vec![(0, vec![0])]));
    }

    #[test]
    fn timestamp_picks_generation_snapshot_and_segments() {
        let at = |s| V3Target {
            timestamp: Some(t(s)),
            ..Default::default()
        };
        let l = listing();
        // Inclusive bounds, as 0.3: an object modified exactly at the time counts.
        assert_eq!(
            shape(&plan(&l, &at(12)).unwrap()),
            (A, 0, vec![(0, vec![0, 4152])])
        );
        assert_eq!(
            shape(&plan(&l, &at(13)).unwrap()),
            (A, 0, vec![(0, vec![0, 4152]), (1, vec![0])])
        );
        assert_eq!(shape(&plan(&l, &at(14)).unwrap()), (A, 2, vec![]));
        assert_eq!(
            shape(&plan(&l, &at(15)).unwrap()),
            (A, 2, vec![(2, vec![0])])
        );
        assert_eq!(shape(&plan(&l, &at(20)).unwrap()), (B, 0, vec![]));
        assert!(matches!(
            plan(&l, &at(17)),
            Err(V3Error::NoGenerationAt { .. })
        ));
        assert!(matches!(
            plan(&l, &at(9)),
            Err(V3Error::NoGenerationAt { .. })
        ));
    }

    #[test]
    fn explicit_generation_and_index() {
        let l = listing();
        let p = plan(
            &l,
            &V3Target {
                generation: Some(A),
                index: Some(1),
                timestamp: None,
            },
        )
        .unwrap();
        assert_eq!(shape(&p), (A, 0, vec![(0, vec![0, 4152]), (1, vec![0])]));
        let p = plan(
            &l,
            &V3Target {
                generation: Some(A),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(shape(&p), (A, 2, vec![(2, vec![0])]));
        assert!(matches!(
            plan(
                &l,
                &V3Target {
                    generation: Some(A),
                    index: Some(7),
                    timestamp: None
                }
            ),
            Err(V3Error::IndexNotAvailable {
                want: 7,
                have: 2,
                ..
            })
        ));
        assert!(matches!(
            plan(
                &l,
                &V3Target {
                    index: Some(1),
                    ..Default::default()
                }
            ),
            Err(V3Error::IndexWithoutGeneration)
        ));
        assert!(matches!(
            plan(
                &l,
                &V3Target {
                    generation: Some(GenerationId(0xc)),
                    ..Default::default()
                }
            ),
            Err(V3Error::NoSuchGeneration { .. })
        ));
    }

    #[test]
    fn damage_is_named() {
        let mut l = listing();
        // A missing WAL index in the middle.
        if let Some(g) = l.get_mut(&A) {
            g.segments.retain(|s| s.index != 1);
            g.snapshots.retain(|s| s.index == 0);
        }
        let target = V3Target {
            generation: Some(A),
            ..Default::default()
        };
        let err = plan(&l, &target).unwrap_err();
        assert!(
            err.to_string()
                .contains("generations/000000000000000a/wal/00000001_00000000.wal.lz4"),
            "{err}"
        );
        // A missing first segment of an index.
        if let Some(g) = l.get_mut(&A) {
            g.segments.retain(|s| s.index == 0 && s.offset != 0);
        }
        let err = plan(&l, &target).unwrap_err();
        assert!(
            err.to_string()
                .contains("generations/000000000000000a/wal/00000000_00000000.wal.lz4"),
            "{err}"
        );
        // A generation with WAL but no snapshot.
        if let Some(g) = l.get_mut(&B) {
            g.snapshots.clear();
        }
        let err = plan(&l, &V3Target::default()).unwrap_err();
        assert!(
            err.to_string().contains("generations/000000000000000b/"),
            "{err}"
        );
    }
}
