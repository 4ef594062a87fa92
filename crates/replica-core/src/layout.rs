//! Litestream 0.5's replica layout: where each LTX file lives under the replica root.
//!
//! File-like backends (file, sftp, gs, abs) use `ltx/<level>/<min>-<max>.ltx`; S3 uses
//! `<level %04x>/<min>-<max>.ltx`. Anything else under the root is ignored.

use std::fmt;

use crate::key::{Key, KeyPrefix};

/// Snapshot level: a full image from TXID 1.
pub const SNAPSHOT_LEVEL: u8 = 9;
pub const MAX_LEVEL: u8 = 9;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayoutStyle {
    /// `ltx/<level decimal>/…` (file, sftp, gs, abs).
    LtxDir,
    /// `<level %04x>/…` (s3 and S3-compatible stores).
    HexLevel,
}

/// A TXID range `[min, max]`, inclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TxRange {
    pub min: u64,
    pub max: u64,
}

/// One LTX file in the replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileId {
    pub level: u8,
    pub range: TxRange,
}

impl FileId {
    /// The id of a file of `level` with this header's TXID range.
    pub fn of(level: u8, h: &crate::ltx::Header) -> FileId {
        FileId {
            level,
            range: TxRange {
                min: h.min_txid,
                max: h.max_txid,
            },
        }
    }
}

impl fmt::Display for FileId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "L{} {}", self.level, file_name(self.range))
    }
}

pub fn file_name(r: TxRange) -> String {
    format!("{:016x}-{:016x}.ltx", r.min, r.max)
}

/// Parses `<16 lowercase hex>-<16 lowercase hex>.ltx`, exactly as Litestream does.
pub fn parse_file_name(name: &str) -> Option<TxRange> {
    let b = name.as_bytes();
    if b.len() != 37 || b[16] != b'-' || !name.ends_with(".ltx") {
        return None;
    }
    let hex = |s: &str| {
        if s.bytes()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
        {
            u64::from_str_radix(s, 16).ok()
        } else {
            None
        }
    };
    let min = hex(&name[0..16])?;
    let max = hex(&name[17..33])?;
    (min >= 1 && min <= max).then_some(TxRange { min, max })
}

impl LayoutStyle {
    /// The key prefix of a level, ending in `/`.
    pub fn level_prefix(self, level: u8) -> KeyPrefix {
        KeyPrefix::from_layout(self.level_dir(level))
    }

    /// One prefix below which every level lies, so the whole replica lists in one
    /// request: `ltx/`, or `000` for the hex layout (levels 0-9 are `0000/`-`0009/`).
    pub fn levels_prefix(self) -> KeyPrefix {
        KeyPrefix::from_layout(
            match self {
                LayoutStyle::LtxDir => "ltx/",
                LayoutStyle::HexLevel => "000",
            }
            .to_owned(),
        )
    }

    fn level_dir(self, level: u8) -> String {
        match self {
            LayoutStyle::LtxDir => format!("ltx/{level}/"),
            LayoutStyle::HexLevel => format!("{level:04x}/"),
        }
    }

    pub fn key(self, id: FileId) -> Key {
        Key::from_layout(format!(
            "{}{}",
            self.level_dir(id.level),
            file_name(id.range)
        ))
    }

    /// Recognises a key of this layout; unknown objects give `None` and are skipped.
    pub fn parse_key(self, key: &str) -> Option<FileId> {
        let (dir, name) = key.rsplit_once('/')?;
        let level = match self {
            LayoutStyle::LtxDir => {
                let l = dir.strip_prefix("ltx/")?;
                if l.len() != 1 {
                    return None;
                }
                l.parse::<u8>().ok()?
            }
            LayoutStyle::HexLevel => {
                if dir.len() != 4 {
                    return None;
                }
                u8::from_str_radix(dir, 16).ok()?
            }
        };
        if level > MAX_LEVEL {
            return None;
        }
        Some(FileId {
            level,
            range: parse_file_name(name)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_in_both_styles() {
        let id = FileId {
            level: 9,
            range: TxRange { min: 1, max: 0x2a },
        };
        assert_eq!(
            LayoutStyle::LtxDir.key(id),
            "ltx/9/0000000000000001-000000000000002a.ltx"
        );
        assert_eq!(
            LayoutStyle::HexLevel.key(id),
            "0009/0000000000000001-000000000000002a.ltx"
        );
        for s in [LayoutStyle::LtxDir, LayoutStyle::HexLevel] {
            assert_eq!(s.parse_key(&s.key(id)), Some(id));
        }
    }

    #[test]
    fn foreign_names_are_skipped() {
        let s = LayoutStyle::LtxDir;
        for k in [
            "ltx/0/0000000000000001-0000000000000001.ltx.tmp",
            "ltx/0/000000000000000A-000000000000000A.ltx",
            "ltx/abc/0000000000000001-0000000000000001.ltx",
            "ltx/10/0000000000000001-0000000000000001.ltx",
            "other/0000000000000001-0000000000000001.ltx",
            "ltx/0/0000000000000002-0000000000000001.ltx",
            "ltx/0/0000000000000000-0000000000000001.ltx",
            "lock.json",
        ] {
            assert_eq!(s.parse_key(k), None, "{k}");
        }
    }
}
