//! The local spool beside a database (`.<db name>-replica/`): LTX files that are
//! captured but not yet uploaded, and the capture position that proves continuity
//! across restarts.
//!
//! Files appear here atomically (temp, fsync, rename) and leave only after their
//! upload succeeded, so a crash or an outage never loses a captured transaction.
//!
//! The spool holds the database's pages, so every file and directory in it gets the
//! database's permission bits ([`FileMode::file`], [`FileMode::dir`]), whatever the
//! umask, and keeps following them when the database's mode changes.

use std::fs::{self, File};
use std::io::{BufWriter, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::file_mode::{self, FileMode};
use crate::layout::{FileId, parse_file_name};
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
    #[error("spool {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("encoding LTX file {path}")]
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
    /// Spent files in `free/`, reused for new ones (see [`Spool::recycle`]).
    free: Arc<Mutex<Vec<PathBuf>>>,
    /// The database's permission bits ([`FileMode::bits`]).
    mode: Arc<AtomicU32>,
}

/// How many spent files a spool keeps for reuse: an L1 interval's worth of L0 files
/// at one sync a second, with room to spare.
const FREE_FILES: usize = 64;

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

    /// Opens (or creates) the spool of `db`, whose permission bits are `mode`. What
    /// an earlier run left there is brought to `mode` too.
    pub fn open(db: &Path, mode: FileMode) -> Result<Self, SpoolError> {
        let dir = Self::dir_for(db);
        for sub in ["pending/0", "pending/9", "shipped/0", "tmp", "free"] {
            let sub = dir.join(sub);
            file_mode::create_dir_all(&sub, mode.dir()).map_err(io(&sub))?;
        }
        apply_mode(&dir, mode)?;
        // Leftovers of an interrupted write are never valid files.
        let tmp = dir.join("tmp");
        if let Ok(entries) = fs::read_dir(&tmp) {
            for e in entries.flatten() {
                let _ = fs::remove_file(e.path());
            }
        }
        // Spent files are reused whatever they hold: they are truncated first.
        let free: Vec<PathBuf> = fs::read_dir(dir.join("free"))
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        Ok(Self {
            dir,
            free: Arc::new(Mutex::new(free)),
            mode: Arc::new(AtomicU32::new(mode.bits())),
        })
    }

    /// The spool of `db` as it is, to read (status): nothing is created, removed or
    /// changed. `None` if there is none.
    pub fn open_existing(db: &Path) -> Option<Self> {
        let dir = Self::dir_for(db);
        dir.join("pending").is_dir().then(|| Self {
            dir,
            free: Arc::new(Mutex::new(Vec::new())),
            mode: Arc::new(AtomicU32::new(FileMode::PRIVATE.bits())),
        })
    }

    /// The database's permission bits, as given to [`Self::open`] or [`Self::set_mode`].
    pub fn mode(&self) -> FileMode {
        FileMode::new(self.mode.load(Ordering::Relaxed)).unwrap_or(FileMode::PRIVATE)
    }

    /// Follows a new mode of the database (a replaced file): files created from now on
    /// get it, and everything already in the spool is changed to it.
    pub fn set_mode(&self, mode: FileMode) -> Result<(), SpoolError> {
        self.mode.store(mode.bits(), Ordering::Relaxed);
        apply_mode(&self.dir, mode)
    }

    /// Disposes of a spooled file that is no longer needed: it joins the free files
    /// (up to [`FREE_FILES`]) rather than being deleted. A spool creates and drops a
    /// file per database per sync; reusing them saves an inode allocation and a free
    /// each time, which is most of the filesystem work at a thousand databases (ext4
    /// without a journal scans past every recently freed inode on each allocation).
    fn recycle(&self, path: &Path) -> std::io::Result<()> {
        let Ok(mut free) = self.free.lock() else {
            return fs::remove_file(path);
        };
        if free.len() >= FREE_FILES {
            drop(free);
            return fs::remove_file(path);
        }
        // Emptied now, not when reused: a pooled file keeps its inode, not its blocks,
        // so the pool costs no disk space (a snapshot's worth per file otherwise).
        fs::OpenOptions::new().write(true).open(path)?.set_len(0)?;
        let to = self
            .dir
            .join("free")
            .join(format!("{:016x}", rand::random::<u64>()));
        fs::rename(path, &to)?;
        free.push(to);
        Ok(())
    }

    /// A file to write a new spool file into: a free one, truncated, or a new one in
    /// `tmp/`. Either way it is complete only once renamed into place, and goes back
    /// to the pool with [`Spool::discard`] when it is not.
    pub fn scratch(&self, what: &str) -> Result<(PathBuf, File), SpoolError> {
        let reuse = self.free.lock().ok().and_then(|mut f| f.pop());
        if let Some(path) = reuse {
            match fs::OpenOptions::new()
                .write(true)
                .truncate(true)
                .open(&path)
                .and_then(|f| file_mode::set_file(&f, self.mode().file()).map(|()| f))
            {
                Ok(f) => return Ok((path, f)),
                // Gone or unusable: fall back to a new file.
                Err(_) => {
                    let _ = fs::remove_file(&path);
                }
            }
        }
        let path = self.scratch_path(what);
        let f = file_mode::create_new(&path, self.mode().file()).map_err(io(&path))?;
        Ok((path, f))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn state_path(&self) -> PathBuf {
        self.dir.join("state")
    }

    /// The state file of earlier versions (plain JSON, replaced by rename).
    fn legacy_state_path(&self) -> PathBuf {
        self.dir.join("state.json")
    }

    pub fn load_state(&self) -> Option<SpoolState> {
        let path = self.state_path();
        let parsed = match fs::read(&path) {
            Ok(bytes) => decode_state(&bytes),
            Err(_) => {
                let legacy = self.legacy_state_path();
                let bytes = fs::read(&legacy).ok()?;
                serde_json::from_slice(&bytes).map_err(|e| e.to_string())
            }
        };
        match parsed {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "ignoring unreadable spool state");
                None
            }
        }
    }

    /// Saves the state in place. Capture saves it every sync, so it is not written to
    /// a new file and renamed: that allocates and frees an inode per database per
    /// second, which at a thousand databases made inode allocation the replicator's
    /// largest cost. A checksum covers the body instead; a state torn by a power loss
    /// fails it and is ignored (a snapshot follows). With `durability: Deferred` it is
    /// not fsynced; [`Self::sync`] makes it durable.
    pub fn save_state(&self, state: &SpoolState, durability: Durability) -> Result<(), SpoolError> {
        let path = self.state_path();
        let body = encode_state(state).map_err(io(&path))?;
        let (f, created) = match fs::OpenOptions::new().write(true).open(&path) {
            Ok(f) => (f, false),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (
                fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .mode(self.mode().file())
                    .open(&path)
                    .and_then(|f| file_mode::set_file(&f, self.mode().file()).map(|()| f))
                    .map_err(io(&path))?,
                true,
            ),
            Err(e) => return Err(io(&path)(e)),
        };
        std::os::unix::fs::FileExt::write_all_at(&f, &body, 0).map_err(io(&path))?;
        if durability == Durability::Now {
            f.sync_all().map_err(io(&path))?;
        }
        if created {
            match fs::remove_file(self.legacy_state_path()) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(&self.legacy_state_path())(e)),
            }
            if durability == Durability::Now {
                sync_dir(&self.dir).map_err(io(&self.dir))?;
            }
        }
        Ok(())
    }

    /// Returns a scratch or spent file to the pool (or deletes it when the pool is
    /// full). A file that is already gone is fine.
    pub fn discard(&self, path: &Path) {
        if let Err(e) = self.recycle(path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            let _ = fs::remove_file(path);
        }
    }

    /// Merges contiguous LTX files (oldest first) into one scratch file: the one merge
    /// of the engine, for uploads of several L0 files, for compaction, and for the
    /// in-place merge of pending files during an outage. Only the last needs
    /// [`Durability::Now`], because its output replaces its inputs; the others are
    /// copies of data that stays available elsewhere until they are uploaded.
    pub fn merge(
        &self,
        inputs: &[PathBuf],
        durability: Durability,
    ) -> Result<(PathBuf, Header), SpoolError> {
        use std::io::BufReader;
        let mut readers: Vec<Box<dyn Read + Send>> = Vec::with_capacity(inputs.len());
        for p in inputs {
            readers.push(Box::new(BufReader::new(File::open(p).map_err(io(p))?)));
        }
        self.merge_from(readers, durability)
    }

    /// [`Self::merge`] of LTX files read from anywhere (local files, or objects
    /// streamed from the store): the inputs are read once, in page order, and only
    /// the output takes room in the spool.
    pub fn merge_from(
        &self,
        readers: Vec<Box<dyn Read + Send>>,
        durability: Durability,
    ) -> Result<(PathBuf, Header), SpoolError> {
        let (out, file) = self.scratch("merge")?;
        let result = (|| {
            let w = BufWriter::with_capacity(64 << 10, file);
            let (w, header, _) =
                crate::ltx::compact(readers, w).map_err(|source| SpoolError::Ltx {
                    path: out.clone(),
                    source,
                })?;
            let file = w.into_inner().map_err(|e| io(&out)(e.into_error()))?;
            if durability == Durability::Now {
                file.sync_all().map_err(io(&out))?;
            }
            Ok(header)
        })();
        match result {
            Ok(h) => Ok((out, h)),
            Err(e) => {
                self.discard(&out);
                Err(e)
            }
        }
    }

    fn scratch_path(&self, what: &str) -> PathBuf {
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
        let id = FileId::of(level, &header);
        let (tmp, file) = self.scratch("ltx")?;
        let result = (|| {
            let ltx = |source| SpoolError::Ltx {
                path: tmp.clone(),
                source,
            };
            // 64 KiB: large enough that a snapshot is written in few syscalls, small
            // enough that a thousand databases cutting files at once (at start, every
            // one takes a snapshot) do not add up to hundreds of MiB.
            let mut enc =
                Encoder::new(BufWriter::with_capacity(64 << 10, file), header).map_err(ltx)?;
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
            self.rename_into(&tmp, &dest)?;
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
    /// merged file contains; `contained` finds them.
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
        self.rename_into(path, &self.shipped_path(id))
    }

    /// Renames `from` to `to`, creating `to`'s directory if it is missing (the common
    /// directories exist from [`Spool::open`], so this is one syscall).
    fn rename_into(&self, from: &Path, to: &Path) -> Result<(), SpoolError> {
        match fs::rename(from, to) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && from.exists() => {
                if let Some(parent) = to.parent() {
                    file_mode::create_dir_all(parent, self.mode().dir()).map_err(io(parent))?;
                }
                fs::rename(from, to).map_err(io(to))
            }
            r => r.map_err(io(to)),
        }
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
        let _ = self.recycle(&self.shipped_path(id));
    }

    pub fn remove(&self, p: &Pending) -> Result<(), SpoolError> {
        match self.recycle(&p.path) {
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
        self.pending().map(|v| Self::bytes_of(&v)).unwrap_or(0)
    }

    /// The size of `pending` on disk now (a file removed meanwhile counts 0).
    pub fn bytes_of(pending: &[Pending]) -> u64 {
        pending
            .iter()
            .filter_map(|p| fs::metadata(&p.path).ok())
            .map(|m| m.len())
            .sum()
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

/// Length of the state file's header line: `<crc64 of body, 16 hex> <body length,
/// 8 hex>\n`.
const STATE_HEAD: usize = 16 + 1 + 8 + 1;

/// The header line, then the JSON body; whatever follows the body is what an earlier,
/// longer state left there.
fn encode_state(state: &SpoolState) -> std::io::Result<Vec<u8>> {
    let json = serde_json::to_vec(state)?;
    let mut out = format!("{:016x} {:08x}\n", crate::ltx::crc64(&json), json.len()).into_bytes();
    debug_assert_eq!(out.len(), STATE_HEAD);
    out.extend_from_slice(&json);
    Ok(out)
}

fn decode_state(bytes: &[u8]) -> Result<SpoolState, String> {
    let head = bytes
        .get(..STATE_HEAD)
        .and_then(|h| std::str::from_utf8(h).ok())
        .ok_or("shorter than its header")?;
    let crc = u64::from_str_radix(&head[..16], 16).map_err(|_| "bad checksum field")?;
    let len = usize::from_str_radix(&head[17..25], 16).map_err(|_| "bad length field")?;
    let body = bytes
        .get(STATE_HEAD..STATE_HEAD + len)
        .ok_or("shorter than its stated length")?;
    if crate::ltx::crc64(body) != crc {
        return Err("checksum mismatch (torn write)".into());
    }
    serde_json::from_slice(body).map_err(|e| e.to_string())
}

/// Gives the spool directory and everything in it `mode`'s bits (files a version
/// before modes were kept, or a database whose mode changed since, left behind). The
/// spool is a few directories and at most a few hundred files.
fn apply_mode(dir: &Path, mode: FileMode) -> Result<(), SpoolError> {
    file_mode::set_path(dir, mode.dir()).map_err(io(dir))?;
    for e in fs::read_dir(dir).map_err(io(dir))?.flatten() {
        let path = e.path();
        match e.file_type() {
            Ok(t) if t.is_dir() => apply_mode(&path, mode)?,
            Ok(t) if t.is_file() => match file_mode::set_path(&path, mode.file()) {
                // Uploaded and removed meanwhile.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                r => r.map_err(io(&path))?,
            },
            _ => {}
        }
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(txid: u64, position: Option<WalPosition>) -> SpoolState {
        SpoolState {
            txid,
            position,
            page_size: 4096,
            db_dev: 1,
            db_ino: 2,
            db_len: None,
            db_mtime_ns: None,
        }
    }

    #[test]
    fn state_is_saved_in_place_and_a_torn_one_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(&dir.path().join("app.db"), FileMode::PRIVATE).unwrap();
        assert_eq!(spool.load_state(), None);
        let long = state(
            u64::MAX,
            Some(WalPosition {
                salt1: u32::MAX,
                salt2: u32::MAX,
                offset: u64::MAX,
                checksum: (u32::MAX, u32::MAX),
            }),
        );
        spool.save_state(&long, Durability::Now).unwrap();
        assert_eq!(spool.load_state(), Some(long));
        // A shorter state over a longer one: the old tail stays and is not read.
        let ino = |p: &Path| std::os::unix::fs::MetadataExt::ino(&fs::metadata(p).unwrap());
        let before = ino(&spool.state_path());
        let short = state(7, None);
        spool.save_state(&short, Durability::Deferred).unwrap();
        assert_eq!(spool.load_state(), Some(short));
        assert_eq!(ino(&spool.state_path()), before, "rewritten, not replaced");

        // A torn write (new header, part of the old body): checksum mismatch, ignored.
        let mut bytes = fs::read(spool.state_path()).unwrap();
        bytes[STATE_HEAD + 5] ^= 0x01;
        fs::write(spool.state_path(), &bytes).unwrap();
        assert_eq!(spool.load_state(), None);
    }

    fn write_l0(spool: &Spool, txid: u64, pages: u32) -> Pending {
        let header = Header {
            flags: crate::ltx::FLAG_NO_CHECKSUM,
            page_size: 512,
            commit: pages,
            min_txid: txid,
            max_txid: txid,
            timestamp_ms: 1_700_000_000_000,
            ..Header::default()
        };
        spool
            .write_ltx(0, header, Durability::Deferred, |enc| {
                for pgno in 1..=pages {
                    enc.write_page(pgno, &[pgno as u8; 512])?;
                }
                Ok(())
            })
            .unwrap()
    }

    #[test]
    fn spent_files_are_reused_not_deleted() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(&dir.path().join("app.db"), FileMode::PRIVATE).unwrap();
        let big = write_l0(&spool, 2, 40);
        let ino = fs::metadata(&big.path).unwrap().ino();
        spool.keep_shipped(&big.path, big.id).unwrap();
        spool.remove_shipped(big.id);
        assert!(spool.shipped(big.id).is_none());
        // A pooled file holds no data: the pool costs inodes, not disk space.
        let pooled: Vec<_> = fs::read_dir(dir.path().join(".app.db-replica/free"))
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap())
            .collect();
        assert_eq!(pooled.len(), 1);
        assert_eq!((pooled[0].ino(), pooled[0].len()), (ino, 0));
        // The next file takes the spent inode, and holds only its own, smaller content.
        let small = write_l0(&spool, 3, 1);
        assert_eq!(fs::metadata(&small.path).unwrap().ino(), ino);
        assert!(spool.verify(&small));
        assert_eq!(spool.pending().unwrap(), vec![small.clone()]);
        // A reopened spool reuses what was left in free/.
        spool.remove(&small).unwrap();
        let again = Spool::open(&dir.path().join("app.db"), FileMode::PRIVATE).unwrap();
        let third = write_l0(&again, 4, 2);
        assert_eq!(fs::metadata(&third.path).unwrap().ino(), ino);
        assert!(again.verify(&third));
        // The pool is bounded: past it, spent files are deleted.
        let many: Vec<Pending> = (5..5 + FREE_FILES as u64 + 10)
            .map(|t| write_l0(&again, t, 1))
            .collect();
        for p in &many {
            again.remove(p).unwrap();
        }
        assert_eq!(
            fs::read_dir(again.dir.join("free")).unwrap().count(),
            FREE_FILES
        );
    }

    #[test]
    fn everything_in_the_spool_follows_the_database_mode() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("app.db");
        let m = |b| FileMode::new(b).unwrap();
        let spool = Spool::open(&db, m(0o640)).unwrap();
        spool.save_state(&state(1, None), Durability::Now).unwrap();
        let kept = write_l0(&spool, 2, 3);
        spool.keep_shipped(&kept.path, kept.id).unwrap();
        spool.remove_shipped(kept.id);
        write_l0(&spool, 3, 1);
        // A scratch file, as merges, compactions and downloads take them.
        let (_path, file) = spool.scratch("merge").unwrap();
        drop(file);
        // Left by an earlier version, with the umask's bits.
        let old = spool
            .dir()
            .join("pending/0/0000000000000004-0000000000000004.ltx");
        fs::write(&old, b"x").unwrap();
        fs::set_permissions(&old, fs::Permissions::from_mode(0o644)).unwrap();

        let modes = |root: &Path| {
            let mut out = Vec::new();
            let mut stack = vec![root.to_path_buf()];
            while let Some(p) = stack.pop() {
                let meta = fs::metadata(&p).unwrap();
                if meta.is_dir() {
                    stack.extend(fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
                }
                out.push((p, meta.is_dir(), meta.mode() & 0o7777));
            }
            out
        };
        let check = |file: u32, dir: u32| {
            let all = modes(spool.dir());
            assert!(all.len() >= 12, "{all:?}");
            for (p, is_dir, bits) in all {
                let want = if is_dir { dir } else { file };
                if p != old {
                    assert_eq!(bits, want, "{}", p.display());
                }
            }
        };
        check(0o640, 0o750);
        assert_eq!(fs::metadata(&old).unwrap().mode() & 0o777, 0o644);
        // Reopened: what was left behind is brought to the mode too.
        let spool = Spool::open(&db, m(0o640)).unwrap();
        assert_eq!(fs::metadata(&old).unwrap().mode() & 0o777, 0o640);
        // A replacing database with a narrower mode: everything follows at once.
        spool.set_mode(m(0o600)).unwrap();
        assert_eq!(spool.mode(), m(0o600));
        let all = modes(spool.dir());
        for (p, is_dir, bits) in all {
            assert_eq!(bits, if is_dir { 0o700 } else { 0o600 }, "{}", p.display());
        }
    }

    #[test]
    fn a_legacy_json_state_is_read_then_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(&dir.path().join("app.db"), FileMode::PRIVATE).unwrap();
        let s = state(3, None);
        fs::write(spool.legacy_state_path(), serde_json::to_vec(&s).unwrap()).unwrap();
        assert_eq!(spool.load_state(), Some(s));
        spool.save_state(&state(4, None), Durability::Now).unwrap();
        assert!(!spool.legacy_state_path().exists());
        assert_eq!(spool.load_state(), Some(state(4, None)));
    }
}
