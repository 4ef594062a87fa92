//! Compaction levels: level N (1..=8) merges the files of level N-1 every interval,
//! at wall-clock multiples of it, as Litestream 0.5 does (defaults 30 s, 5 m, 1 h).

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

/// The first multiple of `interval` (since the Unix epoch) after `now`.
pub fn next_boundary(now: SystemTime, interval: Duration) -> SystemTime {
    let since = now
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    let step = interval.as_millis().max(1);
    let next = (since / step + 1) * step;
    UNIX_EPOCH + Duration::from_millis(next as u64)
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
    fn boundaries_are_wall_clock_multiples() {
        let t = UNIX_EPOCH + Duration::from_millis(125_400);
        assert_eq!(
            next_boundary(t, Duration::from_secs(30)),
            UNIX_EPOCH + Duration::from_secs(150)
        );
        let on = UNIX_EPOCH + Duration::from_secs(150);
        assert_eq!(
            next_boundary(on, Duration::from_secs(30)),
            UNIX_EPOCH + Duration::from_secs(180)
        );
    }
}
