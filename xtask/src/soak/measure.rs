//! Sizes the soak watches: the WAL, the replicator's spool and the replica.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::SystemTime;

/// A file's length; 0 if it does not exist (a truncated or deleted WAL).
pub fn file_len(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

/// Files and bytes under `dir`, recursively (0 if it does not exist). Entries that
/// vanish while we walk (the spool's files are removed as they upload) are skipped.
pub fn dir_size(dir: &Path) -> (u64, u64) {
    let (mut files, mut bytes) = (0, 0);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.is_dir() {
                stack.push(e.path());
            } else {
                files += 1;
                bytes += m.len();
            }
        }
    }
    (files, bytes)
}

/// The spool's bytes by what they are: `pending/` (captured, not yet uploaded),
/// `shipped/` (uploaded L0 copies kept for compaction), and the rest (temporary files
/// of merges and compactions, state).
#[derive(Debug, Default, Clone, Copy)]
pub struct Spool {
    pub pending: u64,
    pub shipped: u64,
    pub other: u64,
}

impl Spool {
    /// One walk, each file classed by the top directory it is in, so a file renamed
    /// from `tmp/` into `pending/` during the walk is never counted twice.
    pub fn measure(dir: &Path) -> Spool {
        let mut out = Spool::default();
        let Ok(top) = std::fs::read_dir(dir) else {
            return out;
        };
        for e in top.flatten() {
            let Ok(m) = e.metadata() else { continue };
            let bytes = if m.is_dir() {
                dir_size(&e.path()).1
            } else {
                m.len()
            };
            match e.file_name().to_str() {
                Some("pending") => out.pending += bytes,
                Some("shipped") => out.shipped += bytes,
                _ => out.other += bytes,
            }
        }
        out
    }

    pub fn total(&self) -> u64 {
        self.pending + self.shipped + self.other
    }
}

#[derive(Debug, Default, Clone, Copy)]
pub struct Level {
    pub files: u64,
    pub bytes: u64,
    pub oldest: Option<SystemTime>,
}

/// LTX files per level of a `file://` replica (`ltx/<level>/<min>-<max>.ltx`; hidden
/// temporary files are not part of the replica).
pub fn levels(root: &Path) -> BTreeMap<u8, Level> {
    let mut out = BTreeMap::new();
    let Ok(rd) = std::fs::read_dir(root.join("ltx")) else {
        return out;
    };
    for e in rd.flatten() {
        let Some(level) = e.file_name().to_str().and_then(|n| n.parse::<u8>().ok()) else {
            continue;
        };
        let mut l = Level::default();
        for f in std::fs::read_dir(e.path()).into_iter().flatten().flatten() {
            let name = f.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') || !name.ends_with(".ltx") {
                continue;
            }
            let Ok(m) = f.metadata() else { continue };
            l.files += 1;
            l.bytes += m.len();
            if let Ok(t) = m.modified() {
                l.oldest = Some(l.oldest.map_or(t, |o: SystemTime| o.min(t)));
            }
        }
        out.insert(level, l);
    }
    out
}

pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}
