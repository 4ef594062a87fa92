//! Compaction levels: level N (1..=8) merges the files of level N-1 every interval,
//! at wall-clock multiples of it as Litestream 0.5 does (defaults 30 s, 5 m, 1 h),
//! shifted by a per-database phase.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Levels 1..=8 are compaction levels; 9 holds snapshots.
pub const MAX_COMPACTION_LEVELS: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Levels {
    len: u8,
    intervals: [Duration; MAX_COMPACTION_LEVELS],
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LevelsError {
    #[error("at most {MAX_COMPACTION_LEVELS} compaction levels (1-8) are allowed; got {0}")]
    TooMany(usize),
    #[error("compaction level {level} has a zero interval")]
    Zero { level: usize },
    #[error(
        "compaction level {level} runs every {now:?}, more often than level {prev_level} ({prev:?}); each level must be at least as slow as the one below it"
    )]
    NotIncreasing {
        level: usize,
        now: Duration,
        prev_level: usize,
        prev: Duration,
    },
}

impl Levels {
    /// No compaction: L0 files stay until retention removes them.
    pub const NONE: Self = Self {
        len: 0,
        intervals: [Duration::ZERO; MAX_COMPACTION_LEVELS],
    };

    pub fn new(intervals: &[Duration]) -> Result<Self, LevelsError> {
        if intervals.len() > MAX_COMPACTION_LEVELS {
            return Err(LevelsError::TooMany(intervals.len()));
        }
        let mut l = Self::NONE;
        for (i, &d) in intervals.iter().enumerate() {
            if d.is_zero() {
                return Err(LevelsError::Zero { level: i + 1 });
            }
            if i > 0 && d < intervals[i - 1] {
                return Err(LevelsError::NotIncreasing {
                    level: i + 1,
                    now: d,
                    prev_level: i,
                    prev: intervals[i - 1],
                });
            }
            l.intervals[i] = d;
        }
        l.len = intervals.len() as u8;
        Ok(l)
    }

    /// `(level, interval)` for each compaction level, lowest first.
    pub fn iter(&self) -> impl Iterator<Item = (u8, Duration)> + '_ {
        self.intervals[..usize::from(self.len)]
            .iter()
            .enumerate()
            .map(|(i, &d)| (i as u8 + 1, d))
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Default for Levels {
    fn default() -> Self {
        Self {
            len: 3,
            intervals: [
                Duration::from_secs(30),
                Duration::from_secs(300),
                Duration::from_secs(3600),
                Duration::ZERO,
                Duration::ZERO,
                Duration::ZERO,
                Duration::ZERO,
                Duration::ZERO,
            ],
        }
    }
}

/// The first multiple of `interval` (since the Unix epoch), shifted by `phase`, after
/// `now`.
pub fn next_boundary(now: SystemTime, interval: Duration, phase: Duration) -> SystemTime {
    let step = interval.as_millis().max(1);
    let phase = phase.as_millis() % step;
    let since = now
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    let next = if since < phase {
        phase
    } else {
        ((since - phase) / step + 1) * step + phase
    };
    UNIX_EPOCH + Duration::from_millis(next as u64)
}

/// A database's fixed offset into the compaction intervals, below the shortest one:
/// with every database compacting at the same wall-clock moment, a thousand of them
/// merged and uploaded a thousand files in one burst every 30 s, and every upload
/// queued behind it. Derived from `key` (the spool directory), so it is stable across
/// restarts.
pub fn phase_for(key: &[u8], levels: &Levels) -> Duration {
    let Some((_, shortest)) = levels.iter().next() else {
        return Duration::ZERO;
    };
    // FNV-1a: stable and spreads similar paths (`shard_1`, `shard_2`, ...) apart.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let step = shortest.as_millis().max(1) as u64;
    Duration::from_millis(h % step)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates() {
        let s = Duration::from_secs;
        assert_eq!(
            Levels::new(&[s(30), s(300), s(3600)]),
            Ok(Levels::default())
        );
        assert!(Levels::new(&[]).is_ok_and(|l| l.is_empty()));
        assert_eq!(Levels::new(&[s(0)]), Err(LevelsError::Zero { level: 1 }));
        assert!(matches!(
            Levels::new(&[s(10), s(5)]),
            Err(LevelsError::NotIncreasing { level: 2, .. })
        ));
        assert_eq!(Levels::new(&[s(1); 9]), Err(LevelsError::TooMany(9)));
        let l = Levels::new(&[s(1), s(3)]).unwrap();
        assert_eq!(l.iter().collect::<Vec<_>>(), vec![(1, s(1)), (2, s(3))]);
    }

    #[test]
    fn boundaries_are_wall_clock_multiples_shifted_by_the_phase() {
        let s = Duration::from_secs;
        let t = UNIX_EPOCH + Duration::from_millis(125_400);
        assert_eq!(next_boundary(t, s(30), s(0)), UNIX_EPOCH + s(150));
        let on = UNIX_EPOCH + s(150);
        assert_eq!(next_boundary(on, s(30), s(0)), UNIX_EPOCH + s(180));
        assert_eq!(next_boundary(t, s(30), s(7)), UNIX_EPOCH + s(127));
        assert_eq!(
            next_boundary(UNIX_EPOCH + s(127), s(30), s(7)),
            UNIX_EPOCH + s(157)
        );
        // The same phase keeps higher levels on boundaries of the lower ones.
        assert_eq!(next_boundary(t, s(300), s(7)), UNIX_EPOCH + s(307));
    }

    #[test]
    fn phases_spread_databases_over_the_shortest_interval() {
        let l = Levels::default();
        let phases: Vec<Duration> = (0..1000)
            .map(|i| phase_for(format!("/data/.shard_{i}.db-replica").as_bytes(), &l))
            .collect();
        assert!(phases.iter().all(|p| *p < Duration::from_secs(30)));
        // Every second of the interval gets some, none gets a crowd.
        let mut per_second = [0u32; 30];
        for p in &phases {
            per_second[p.as_secs() as usize] += 1;
        }
        assert!(
            per_second.iter().all(|&n| (10..=70).contains(&n)),
            "{per_second:?}"
        );
        assert_eq!(phase_for(b"x", &Levels::NONE), Duration::ZERO);
    }
}
