//! The local spool beside a database (`.<db name>-replica/`): LTX files that are
//! captured but not yet uploaded, and the capture position that proves continuity
//! across restarts.
//!
//! Files appear here atomically (temp, fsync, rename) and leave only after their
//! upload succeeded, so a crash or an outage never loses a captured transaction.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::layout::{FileId, TxRange, parse_file_name};
use crate::ltx::{Encoder, Header, LtxError};
use crate::wal::WalPosition;

/// What the capture had reached when it last cut an LTX file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpoolState {
    /// The last TXID assigned.
    pub txid: u64,
    /// WAL position of that cut; `None` if it was taken from the database file alone.
    pub position: Option<WalPosition>,
    pub page_size: u32,
    /// Identity of the database file: a replaced file is a new history.
    pub db_dev: u64,
    pub db_ino: u64,
    /// With no WAL position (a database written by `restore`): the file's size and
    /// modification time, which prove it unchanged since.
    #[serde(default)]
    pub db_len: Option<u64>,
    #[serde(default)]
    pub db_mtime_ns: Option<i64>,
}

impl SpoolState {
    /// The state of a database file that holds exactly the replica's TXID `txid`.
    pub fn for_file(txid: u64, page_size: u32, meta: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        Self {
            txid,
            position: None,
            page_size,
            db_dev: meta.dev(),
            db_ino: meta.ino(),
            db_len: Some(meta.len()),
            db_mtime_ns: Some(mtime_ns(meta)),
        }
    }

    /// Whether `meta` is still the unchanged file [`Self::for_file`] described.
    pub fn describes_unchanged(&self, meta: &std::fs::Metadata) -> bool {
        use std::os::unix::fs::MetadataExt;
        self.position.is_none()
            && (self.db_dev, self.db_ino) == (meta.dev(), meta.ino())
            && self.db_len == Some(meta.len())
            && self.db_mtime_ns == Some(mtime_ns(meta))
    }
}

fn mtime_ns(meta: &std::fs::Metadata) -> i64 {
    use std::os::unix::fs::MetadataExt;
    meta.mtime()
        .saturating_mul(1_000_000_000)
        .saturating_add(meta.mtime_nsec())
}

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("encoding LTX file {path}: {source}")]
    Ltx {
        path: PathBuf,
        #[source]
        source: LtxError,
    },
}

/// When a spool write must reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Before the call returns.
    Now,
    /// At the next [`Spool::sync`]: used under the write barrier, where an fsync would
    /// stall the application's writers. A crash before the sync can only lose files
    /// whose frames are still in the WAL or whose loss the resume check detects.
    Deferred,
}

#[derive(Debug, Clone)]
pub struct Spool {
    dir: PathBuf,
}

/// A spooled file waiting for upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub id: FileId,
    pub path: PathBuf,
}

impl Spool {
    /// The spool directory of `db`: `.<name>-replica` in the same directory.
    pub fn dir_for(db: &Path) -> PathBuf {
        let name = db
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "db".into());
        db.with_file_name(format!(".{name}-replica"))
    }

    pub fn open(db: &Path) -> Result<Self, SpoolError> {
        let dir = Self::dir_for(db);
        for sub in [dir.join("pending"), dir.join("tmp")] {
            fs::create_dir_all(&sub).map_err(io(&sub))?;
        }
        let spool = Self { dir };
        // Leftovers of an interrupted write are never valid files.
        let tmp = spool.dir.join("tmp");
        if let Ok(entries) = fs::read_dir(&tmp) {
            for e in entries.flatten() {
                let _ = fs::remove_file(e.path());
            }
        }
        Ok(spool)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn state_path(&self) -> PathBuf {
        self.dir.join("state.json")
    }

    pub fn load_state(&self) -> Option<SpoolState> {
        let bytes = fs::read(self.state_path()).ok()?;
        match serde_json::from_slice(&bytes) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(path = %self.state_path().display(), error = %e, "ignoring unreadable spool state");
                None
            }
        }
    }

    /// Replaces the saved state. With `durability: Deferred` the new file is not yet
    /// fsynced; [`Self::sync`] makes it durable.
    pub fn save_state(&self, state: &SpoolState, durability: Durability) -> Result<(), SpoolError> {
        let path = self.state_path();
        let tmp = self.tmp_path("state");
        let body = serde_json::to_vec(state).map_err(|e| SpoolError::Io {
            path: path.clone(),
            source: e.into(),
        })?;
        write_file(&tmp, &body, durability == Durability::Now).map_err(io(&tmp))?;
        fs::rename(&tmp, &path).map_err(io(&path))?;
        if durability == Durability::Now {
            sync_dir(&self.dir).map_err(io(&self.dir))?;
        }
        Ok(())
    }

    /// A fresh path in the spool's scratch directory.
    pub fn tmp_path(&self, what: &str) -> PathBuf {
        self.dir
            .join("tmp")
            .join(format!("{what}-{:016x}", rand::random::<u64>()))
    }

    fn pending_path(&self, id: FileId) -> PathBuf {
        self.dir
            .join("pending")
            .join(id.level.to_string())
            .join(crate::layout::file_name(id.range))
    }

    /// Encodes an LTX file with `write_pages` and moves it into `pending/` once it is
    /// complete and on disk.
    pub fn write_ltx(
        &self,
        level: u8,
        header: Header,
        durability: Durability,
        write_pages: impl FnOnce(&mut Encoder<BufWriter<File>>) -> Result<(), LtxError>,
    ) -> Result<Pending, SpoolError> {
        let id = FileId {
            level,
            range: TxRange {
                min: header.min_txid,
                max: header.max_txid,
            },
        };
        let tmp = self.tmp_path("ltx");
        let result = (|| {
            let file = File::create(&tmp).map_err(io(&tmp))?;
            let ltx = |source| SpoolError::Ltx {
                path: tmp.clone(),
                source,
            };
            let mut enc =
                Encoder::new(BufWriter::with_capacity(256 << 10, file), header).map_err(ltx)?;
            write_pages(&mut enc).map_err(ltx)?;
            let (w, _) = enc.finish().map_err(ltx)?;
            let file = w.into_inner().map_err(|e| SpoolError::Io {
                path: tmp.clone(),
                source: e.into_error(),
            })?;
            if durability == Durability::Now {
                file.sync_all().map_err(io(&tmp))?;
            }
            let dest = self.pending_path(id);
            if let Some(parent) = dest.parent() {
                fs::create_dir_all(parent).map_err(io(parent))?;
            }
            fs::rename(&tmp, &dest).map_err(io(&dest))?;
            if let (Durability::Now, Some(parent)) = (durability, dest.parent()) {
                sync_dir(parent).map_err(io(parent))?;
            }
            Ok(Pending { id, path: dest })
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    /// Makes deferred writes durable: the given spool files, the state, and the
    /// directories that name them.
    pub fn sync(&self, files: &[PathBuf]) -> Result<(), SpoolError> {
        let mut dirs: Vec<&Path> = Vec::new();
        for path in files {
            match File::open(path).and_then(|f| f.sync_all()) {
                // The shipper may already have uploaded and removed it.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                r => r.map_err(io(path))?,
            }
            if let Some(parent) = path.parent().filter(|p| !dirs.contains(p)) {
                dirs.push(parent);
            }
        }
        let state = self.state_path();
        File::open(&state)
            .and_then(|f| f.sync_all())
            .map_err(io(&state))?;
        dirs.push(&self.dir);
        for d in dirs {
            sync_dir(d).map_err(io(d))?;
        }
        Ok(())
    }

    /// Decodes a spooled file completely. A file torn by a crash that came before its
    /// deferred sync fails here rather than in the shipper.
    pub fn verify(&self, p: &Pending) -> bool {
        let Ok(f) = File::open(&p.path) else {
            return false;
        };
        let Ok(mut dec) = crate::ltx::Decoder::new(std::io::BufReader::new(f)) else {
            return false;
        };
        let h = *dec.header();
        if h.min_txid != p.id.range.min || h.max_txid != p.id.range.max {
            return false;
        }
        let mut buf = vec![0u8; h.page_size as usize];
        loop {
            match dec.next_page(&mut buf) {
                Ok(Some(_)) => continue,
                Ok(None) => break,
                Err(_) => return false,
            }
        }
        dec.finish().is_ok()
    }

    /// Spooled files in upload order: by last TXID, a snapshot after the L0 files it
    /// supersedes.
    pub fn pending(&self) -> Result<Vec<Pending>, SpoolError> {
        let root = self.dir.join("pending");
        let mut out = Vec::new();
        let levels = match fs::read_dir(&root) {
            Ok(l) => l,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(io(&root)(e)),
        };
        for level_dir in levels.flatten() {
            let Some(level) = level_dir
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u8>().ok())
            else {
                continue;
            };
            let entries = fs::read_dir(level_dir.path()).map_err(io(&level_dir.path()))?;
            for e in entries.flatten() {
                if let Some(range) = e.file_name().to_str().and_then(parse_file_name) {
                    out.push(Pending {
                        id: FileId { level, range },
                        path: e.path(),
                    });
                }
            }
        }
        out.sort_by_key(|p| (p.id.range.max, p.id.level, p.id.range.min));
        Ok(out)
    }

    /// Puts `merged` (a complete, synced LTX file covering every input) in place of
    /// `inputs`. A crash between the rename and the removals leaves inputs that the
    /// merged file contains; [`contained`] finds them.
    pub fn replace_pending(
        &self,
        merged: &Path,
        id: FileId,
        inputs: &[Pending],
    ) -> Result<Pending, SpoolError> {
        let dest = self.pending_path(id);
        fs::rename(merged, &dest).map_err(io(&dest))?;
        if let Some(parent) = dest.parent() {
            sync_dir(parent).map_err(io(parent))?;
        }
        for p in inputs.iter().filter(|p| p.path != dest) {
            self.remove(p)?;
        }
        Ok(Pending { id, path: dest })
    }

    fn shipped_path(&self, id: FileId) -> PathBuf {
        self.dir
            .join("shipped")
            .join(id.level.to_string())
            .join(crate::layout::file_name(id.range))
    }

    /// Keeps an uploaded file (moved from `path`) as a local copy for compaction, so
    /// merging L0 into L1 needs no GET. Only a cache: a missing copy is downloaded.
    pub fn keep_shipped(&self, path: &Path, id: FileId) -> Result<(), SpoolError> {
        let dest = self.shipped_path(id);
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent).map_err(io(parent))?;
        }
        fs::rename(path, &dest).map_err(io(&dest))
    }

    /// The local copy of an uploaded file, if there is one.
    pub fn shipped(&self, id: FileId) -> Option<PathBuf> {
        let p = self.shipped_path(id);
        p.is_file().then_some(p)
    }

    /// The local copies of uploaded files of `level`.
    pub fn shipped_files(&self, level: u8) -> Vec<FileId> {
        let dir = self.dir.join("shipped").join(level.to_string());
        let Ok(entries) = fs::read_dir(dir) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| e.file_name().to_str().and_then(parse_file_name))
            .map(|range| FileId { level, range })
            .collect()
    }

    pub fn remove_shipped(&self, id: FileId) {
        let _ = fs::remove_file(self.shipped_path(id));
    }

    pub fn remove(&self, p: &Pending) -> Result<(), SpoolError> {
        match fs::remove_file(&p.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(&p.path)(e)),
        }
    }

    /// Whether a file of `level` waits for upload (one directory read).
    pub fn has_pending(&self, level: u8) -> bool {
        fs::read_dir(self.dir.join("pending").join(level.to_string()))
            .map(|mut d| {
                d.any(|e| {
                    e.is_ok_and(|e| e.file_name().to_str().and_then(parse_file_name).is_some())
                })
            })
            .unwrap_or(false)
    }

    /// Bytes waiting for upload.
    pub fn pending_bytes(&self) -> u64 {
        self.pending()
            .map(|v| {
                v.iter()
                    .filter_map(|p| fs::metadata(&p.path).ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0)
    }
}

/// Pending L0 files whose range another pending L0 file covers (left by a crash in
/// the middle of [`Spool::replace_pending`]).
pub fn contained(pending: &[Pending]) -> Vec<Pending> {
    pending
        .iter()
        .filter(|p| {
            p.id.level == 0
                && pending.iter().any(|q| {
                    q.id.level == 0
                        && q.id != p.id
                        && q.id.range.min <= p.id.range.min
                        && q.id.range.max >= p.id.range.max
                })
        })
        .cloned()
        .collect()
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn write_file(path: &Path, body: &[u8], sync: bool) -> std::io::Result<()> {
    let mut f = File::create(path)?;
    f.write_all(body)?;
    if sync { f.sync_all() } else { Ok(()) }
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}
