//! Litestream 0.3's replica layout, below the replica root:
//!
//! ```text
//! generations/<generation: 16 lowercase hex>/snapshots/<index %08x>.snapshot.lz4
//! generations/<generation>/wal/<index %08x>_<offset %08x>.wal.lz4
//! ```
//!
//! Names are parsed exactly as 0.3 wrote them; anything else under `generations/` is
//! not part of the replica and is skipped, as 0.3 itself skips it.

use std::fmt;

/// The prefix every 0.3 object lives under.
pub const GENERATIONS_PREFIX: &str = "generations/";

/// A generation's name: 8 random bytes, written as 16 lowercase hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GenerationId(pub u64);

impl fmt::Display for GenerationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl GenerationId {
    /// Parses exactly 16 lowercase hex digits, as 0.3 names generations.
    pub fn parse(s: &str) -> Option<GenerationId> {
        parse_hex(s, 16).map(GenerationId)
    }

    /// The key prefix of the generation, ending in `/`.
    pub fn prefix(self) -> String {
        format!("{GENERATIONS_PREFIX}{self}/")
    }
}

/// What a key under `generations/` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectName {
    Snapshot {
        generation: GenerationId,
        index: u32,
    },
    WalSegment {
        generation: GenerationId,
        index: u32,
        offset: u32,
    },
}

pub fn snapshot_key(generation: GenerationId, index: u32) -> String {
    format!("{}snapshots/{index:08x}.snapshot.lz4", generation.prefix())
}

pub fn wal_segment_key(generation: GenerationId, index: u32, offset: u32) -> String {
    format!(
        "{}wal/{index:08x}_{offset:08x}.wal.lz4",
        generation.prefix()
    )
}

/// Recognises a 0.3 object key; `None` for anything else.
pub fn parse_key(key: &str) -> Option<ObjectName> {
    let rest = key.strip_prefix(GENERATIONS_PREFIX)?;
    let (generation, rest) = rest.split_once('/')?;
    let generation = GenerationId::parse(generation)?;
    let (dir, name) = rest.split_once('/')?;
    match dir {
        "snapshots" => {
            let index = name.strip_suffix(".snapshot.lz4")?;
            Some(ObjectName::Snapshot {
                generation,
                index: parse_index(index)?,
            })
        }
        "wal" => {
            let stem = name.strip_suffix(".wal.lz4")?;
            let (index, offset) = stem.split_once('_')?;
            Some(ObjectName::WalSegment {
                generation,
                index: parse_index(index)?,
                offset: u32::try_from(parse_hex(offset, 8)?).ok()?,
            })
        }
        _ => None,
    }
}

/// 0.3 never used an index past `0x7fffffff` (it starts a new generation instead).
fn parse_index(s: &str) -> Option<u32> {
    u32::try_from(parse_hex(s, 8)?)
        .ok()
        .filter(|i| *i <= 0x7fff_ffff)
}

fn parse_hex(s: &str, len: usize) -> Option<u64> {
    if s.len() != len
        || !s
            .bytes()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
    {
        return None;
    }
    u64::from_str_radix(s, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip() {
        let g = GenerationId(0x0123_4567_89ab_cdef);
        assert_eq!(
            snapshot_key(g, 0x2a),
            "generations/0123456789abcdef/snapshots/0000002a.snapshot.lz4"
        );
        assert_eq!(
            wal_segment_key(g, 3, 0x1020),
            "generations/0123456789abcdef/wal/00000003_00001020.wal.lz4"
        );
        assert_eq!(
            parse_key(&snapshot_key(g, 0x2a)),
            Some(ObjectName::Snapshot {
                generation: g,
                index: 0x2a
            })
        );
        assert_eq!(
            parse_key(&wal_segment_key(g, 3, 0x1020)),
            Some(ObjectName::WalSegment {
                generation: g,
                index: 3,
                offset: 0x1020
            })
        );
    }

    #[test]
    fn foreign_names_are_skipped() {
        for k in [
            "generations/0123456789abcdef/snapshots/0000002a.snapshot.lz4.tmp",
            "generations/0123456789ABCDEF/snapshots/0000002a.snapshot.lz4",
            "generations/0123456789abcde/snapshots/0000002a.snapshot.lz4",
            "generations/0123456789abcdef/snapshots/2a.snapshot.lz4",
            "generations/0123456789abcdef/snapshots/0000002A.snapshot.lz4",
            "generations/0123456789abcdef/snapshots/80000000.snapshot.lz4",
            "generations/0123456789abcdef/wal/00000003.wal.lz4",
            "generations/0123456789abcdef/wal/00000003_1020.wal.lz4",
            "generations/0123456789abcdef/wal/00000003_000001020.wal.lz4",
            "generations/0123456789abcdef/wal/00000003_00001020.wal",
            "generations/0123456789abcdef/other/00000003_00001020.wal.lz4",
            "generations/0123456789abcdef/wal/x/00000003_00001020.wal.lz4",
            "generations/0123456789abcdef",
            "ltx/0/0000000000000001-0000000000000001.ltx",
        ] {
            assert_eq!(parse_key(k), None, "{k}");
        }
    }
}
