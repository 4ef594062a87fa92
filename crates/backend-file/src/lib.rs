//! The `file://` backend: a replica kept in a local (or mounted) directory, laid out
//! exactly as Litestream's file replica client lays it out, so either tool can read
//! what the other wrote.
//!
//! Durability: every put writes a temporary file next to its destination, fsyncs it,
//! moves it into place (rename, or a hard link for create-only puts) and fsyncs the
//! directory, so a crash leaves either the old object or the complete new one.
//! Temporary files are named `.<name>.<random>.tmp`; because keys may not contain
//! segments starting with `.`, they can never collide with or be listed as objects.
//!
//! Files and the directories a put creates get the replicated database's permission
//! bits (see [`ReplicaClient::set_file_mode`]), 0600 and 0700 until the engine says
//! otherwise; directories that already exist are left as they are.
//!
//! Unix semantics are assumed (hard links, fsync on directories).

use std::fs::{self, File};
use std::io::{self, ErrorKind};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use replica_core::client::{
    ByteStream, Capabilities, MAX_VERSIONED_LEN, ObjectInfo, Payload, PutMode, PutOptions,
    ReplicaClient, StoreInfo, Version, Versioned, check_version,
};
use replica_core::error::{Op, StoreError};
use replica_core::file_mode::{self, FileMode};
use replica_core::key::{Key, KeyPrefix};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tracing::{debug, warn};
use url::Url;

/// The most an object read takes from the file at a time (see `get`).
const READ_BUF_BYTES: usize = 256 << 10;

/// A replica rooted at a directory. Keys are `/`-separated paths below the root.
#[derive(Debug, Clone)]
pub struct FileClient {
    root: PathBuf,
    info: StoreInfo,
    /// [`FileMode::bits`] of the database.
    mode: Arc<AtomicU32>,
}

/// The mtime carries the LTX time (Litestream reads it back from there), so listings
/// have it and there is no separate upload time.
const CAPABILITIES: Capabilities = Capabilities {
    create_only: true,
    ranged_get: true,
    list_has_ltx_time: true,
};

fn info(url: String) -> StoreInfo {
    // File URLs cannot carry secrets (credentials are refused at parse time).
    StoreInfo::new("file", url, CAPABILITIES)
}

impl FileClient {
    /// A client for `root`, which should be absolute: keys are resolved against it, so a
    /// relative root would depend on the process's working directory.
    pub fn new(root: PathBuf) -> Self {
        let url = match Url::from_file_path(&root) {
            Ok(u) => u.to_string(),
            Err(()) => format!("file://{}", root.display()),
        };
        Self {
            root,
            info: info(url),
            mode: private(),
        }
    }

    /// Accepts `file:///absolute/path` (and `file://localhost/…`, which the URL parser
    /// normalises to the same thing). Hosts, queries, fragments and credentials are
    /// refused: this backend understands no options, and silently ignoring one would
    /// replicate somewhere the user did not ask for.
    ///
    /// A parsed [`Url`] can no longer tell `file:backups` (relative, which we refuse)
    /// from `file:///backups`, because WHATWG parsing makes both absolute. Parse raw
    /// user input with [`FileClient::parse`] to get that check.
    pub fn from_url(url: &Url) -> Result<Self, StoreError> {
        let invalid = |reason: String| StoreError::InvalidUrl {
            url: url.to_string(),
            reason,
        };
        if url.scheme() != "file" {
            return Err(invalid(format!(
                "the file backend only handles file:// URLs, not {}://",
                url.scheme()
            )));
        }
        if let Some(host) = url.host_str() {
            return Err(invalid(format!(
                "file URLs may not name a host ({host:?}); for a local directory write \
                 file:///absolute/path (three slashes)"
            )));
        }
        if !url.username().is_empty() || url.password().is_some() || url.port().is_some() {
            return Err(invalid(
                "file URLs may not carry credentials or a port; write file:///absolute/path".into(),
            ));
        }
        if let Some(q) = url.query() {
            return Err(invalid(format!(
                "the file backend takes no options, but the URL has the query {q:?}; \
                 remove it"
            )));
        }
        if let Some(f) = url.fragment() {
            return Err(invalid(format!(
                "file URLs may not have a fragment (#{f}); remove it, or percent-encode \
                 a '#' that is part of the directory name as %23"
            )));
        }
        let root = url.to_file_path().map_err(|()| {
            invalid(
                "the path cannot be turned into a local path; write file:///absolute/path".into(),
            )
        })?;
        if root.as_os_str().as_encoded_bytes().contains(&0) {
            return Err(invalid("the path contains a NUL byte (%00)".into()));
        }
        if !root.is_absolute() {
            return Err(invalid(
                "the path is relative; write file:///absolute/path".into(),
            ));
        }
        Ok(Self {
            root,
            info: info(url.to_string()),
            mode: private(),
        })
    }

    /// Parses raw user input: rejects relative forms such as `file:backups` or
    /// `file:./backups` (which a URL parser would quietly anchor at `/`), then applies
    /// every check of [`FileClient::from_url`].
    pub fn parse(s: &str) -> Result<Self, StoreError> {
        let invalid = |reason: &str| StoreError::InvalidUrl {
            url: s.to_owned(),
            reason: reason.to_owned(),
        };
        let scheme_len = "file:".len();
        let rest = match s.get(..scheme_len) {
            Some(scheme) if scheme.eq_ignore_ascii_case("file:") => &s[scheme_len..],
            _ => {
                return Url::parse(s)
                    .map_err(|e| invalid(&e.to_string()))
                    .and_then(|u| Self::from_url(&u));
            }
        };
        if rest.is_empty() || rest == "//" {
            return Err(invalid("no directory given; write file:///absolute/path"));
        }
        if !rest.starts_with('/') {
            return Err(invalid(
                "relative paths are not supported; write file:///absolute/path",
            ));
        }
        let url = Url::parse(s).map_err(|e| invalid(&e.to_string()))?;
        Self::from_url(&url)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path_of(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    fn mode(&self) -> FileMode {
        FileMode::new(self.mode.load(Ordering::Relaxed)).unwrap_or(FileMode::PRIVATE)
    }
}

fn private() -> Arc<AtomicU32> {
    Arc::new(AtomicU32::new(FileMode::PRIVATE.bits()))
}

impl FromStr for FileClient {
    type Err = StoreError;

    fn from_str(s: &str) -> Result<Self, StoreError> {
        Self::parse(s)
    }
}

#[async_trait]
impl ReplicaClient for FileClient {
    fn info(&self) -> &StoreInfo {
        &self.info
    }

    fn set_file_mode(&self, mode: FileMode) {
        self.mode.store(mode.bits(), Ordering::Relaxed);
    }

    async fn put(&self, key: &Key, body: Payload, opts: &PutOptions) -> Result<(), StoreError> {
        let dest = self.path_of(key);
        let opts = opts.clone();
        let owned_key = key.to_owned();
        let mode = self.mode();
        blocking(Op::Put, key, move || {
            put_blocking(&owned_key, &dest, body, &opts, mode)
        })
        .await?;
        debug!(%key, "put");
        Ok(())
    }

    /// A `range` reaching past the end of the object yields the bytes that exist (none
    /// if it starts past the end), like a short read rather than an error; callers
    /// that need an exact length check what they received.
    async fn get(&self, key: &Key, range: Option<Range<u64>>) -> Result<ByteStream, StoreError> {
        if let Some(r) = &range
            && r.start > r.end
        {
            return Err(StoreError::Other {
                op: Op::Get,
                key: key.to_string(),
                source: Box::new(io::Error::new(
                    ErrorKind::InvalidInput,
                    format!("invalid byte range {}..{}", r.start, r.end),
                )),
            });
        }
        let io_err = |e| StoreError::from_io(Op::Get, key, e);
        let mut file = tokio::fs::File::open(self.path_of(key))
            .await
            .map_err(io_err)?;
        // Opening a directory succeeds on Unix; it is not an object.
        if file.metadata().await.map_err(io_err)?.is_dir() {
            return Err(StoreError::NotFound {
                key: key.to_string(),
            });
        }
        // Tokio reads on its blocking pool into a buffer of its own (2 MiB by default)
        // and copies out of it; a smaller one keeps that copy in the CPU's cache.
        file.set_max_buf_size(READ_BUF_BYTES);
        match range {
            None => Ok(Box::pin(file)),
            Some(r) => {
                file.seek(io::SeekFrom::Start(r.start))
                    .await
                    .map_err(io_err)?;
                Ok(Box::pin(file.take(r.end - r.start)))
            }
        }
    }

    async fn head(&self, key: &Key) -> Result<ObjectInfo, StoreError> {
        let path = self.path_of(key);
        let meta = blocking(Op::Head, key, move || Ok(fs::metadata(path)?)).await?;
        if !meta.is_file() {
            return Err(StoreError::NotFound {
                key: key.to_string(),
            });
        }
        Ok(ObjectInfo {
            key: key.to_string(),
            size: meta.len(),
            last_modified: None,
            ltx_time: meta.modified().ok(),
        })
    }

    /// Walks only the directories that can hold matching keys. A missing root or
    /// directory is an empty replica. Symbolic links to files are listed; links to
    /// directories are not followed below the prefix, so a link cycle cannot hang us.
    /// Names that are not UTF-8 cannot be keys and are skipped.
    async fn list(
        &self,
        prefix: &KeyPrefix,
        start_after: Option<&str>,
    ) -> Result<Vec<ObjectInfo>, StoreError> {
        let root = self.root.clone();
        let prefix_owned = prefix.to_owned();
        let start_after = start_after.map(str::to_owned);
        let mut out = tokio::task::spawn_blocking(move || {
            list_blocking(&root, &prefix_owned, start_after.as_deref())
        })
        .await
        .map_err(|e| join_error(Op::List, prefix, e))??;
        out.sort_unstable_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn delete_many(&self, keys: &[Key]) -> Result<(), StoreError> {
        let root = self.root.clone();
        let keys = keys.to_vec();
        tokio::task::spawn_blocking(move || delete_blocking(&root, &keys))
            .await
            .map_err(|e| join_error(Op::Delete, "", e))?
    }

    async fn get_versioned(&self, key: &Key) -> Result<Versioned, StoreError> {
        let path = self.path_of(key);
        let body = blocking(Op::Get, key, move || Ok(read_small(&path)?)).await?;
        let body = body.ok_or_else(|| StoreError::NotFound {
            key: key.to_string(),
        })?;
        Ok(Versioned {
            version: Version::of_content(&body),
            body,
        })
    }

    /// Compare and swap under an exclusive `flock` on a hidden lock file beside the
    /// object: read, compare, write a temp file, rename, all while holding it. The
    /// kernel drops the lock when its holder dies, so a crash never leaves it held.
    /// Safe between processes on one machine, and on network file systems whose
    /// `flock` reaches the server (NFSv4).
    async fn put_if(
        &self,
        key: &Key,
        body: Bytes,
        expected: Option<&Version>,
    ) -> Result<Version, StoreError> {
        let dest = self.path_of(key);
        let expected = expected.cloned();
        let owned_key = key.to_owned();
        let mode = self.mode();
        blocking(Op::Put, key, move || {
            put_if_blocking(&owned_key, &dest, body, expected, mode)
        })
        .await?
    }
}

/// The whole file, or `None` if it does not exist; larger than a record may be is an
/// error rather than a read of unbounded size.
fn read_small(path: &Path) -> io::Result<Option<Bytes>> {
    use std::io::Read;
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if is_absent(&e) => return Ok(None),
        Err(e) => return Err(e),
    };
    if !file.metadata()?.is_file() {
        return Ok(None);
    }
    let mut body = Vec::new();
    file.take(MAX_VERSIONED_LEN as u64 + 1)
        .read_to_end(&mut body)?;
    if body.len() > MAX_VERSIONED_LEN {
        return Err(io::Error::new(
            ErrorKind::InvalidData,
            format!(
                "{} is larger than {MAX_VERSIONED_LEN} bytes",
                path.display()
            ),
        ));
    }
    Ok(Some(body.into()))
}

/// How long a compare-and-swap waits for another process's: the section takes
/// milliseconds, so a lock held this long belongs to a frozen process (SIGSTOP), and
/// waiting on would freeze this one too.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Takes `file`'s exclusive lock, or fails with `TimedOut` (a transient error) after
/// `wait`.
fn lock_within(file: &File, wait: std::time::Duration) -> io::Result<()> {
    let deadline = std::time::Instant::now() + wait;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(()),
            Err(fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            Err(fs::TryLockError::WouldBlock) => {
                return Err(io::Error::new(
                    ErrorKind::TimedOut,
                    "another process has held the lock for over 5 s",
                ));
            }
            Err(fs::TryLockError::Error(e)) => return Err(e),
        }
    }
}

fn put_if_blocking(
    key: &str,
    dest: &Path,
    body: Bytes,
    expected: Option<Version>,
    mode: FileMode,
) -> Result<Result<Version, StoreError>, FsError> {
    let dir = dest.parent().ok_or_else(|| {
        FsError::Store(io::Error::new(
            ErrorKind::InvalidInput,
            format!("{key} has no parent directory"),
        ))
    })?;
    ensure_dir(dir, mode.dir())?;
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let lock_path = dir.join(format!(".{name}.lock"));
    let lock = match file_mode::create_new(&lock_path, mode.file()) {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {
            File::options().read(true).write(true).open(&lock_path)?
        }
        Err(e) => return Err(e.into()),
    };
    lock_within(&lock, LOCK_WAIT)?;
    let current = read_small(dest)?.map(|b| Version::of_content(&b));
    if let Err(e) = check_version(key, expected.as_ref(), current.as_ref()) {
        return Ok(Err(e));
    }
    let version = Version::of_content(&body);
    let opts = PutOptions {
        mode: PutMode::Overwrite,
        timestamp: None,
    };
    put_blocking(key, dest, Payload::Bytes(body), &opts, mode)?;
    drop(lock);
    Ok(Ok(version))
}

async fn blocking<T, F>(op: Op, key: &str, f: F) -> Result<T, StoreError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, FsError> + Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.into_store_error(op, key)),
        Err(e) => Err(join_error(op, key, e)),
    }
}

fn join_error(op: Op, key: &str, e: tokio::task::JoinError) -> StoreError {
    if e.is_panic() {
        std::panic::resume_unwind(e.into_panic());
    }
    StoreError::Other {
        op,
        key: key.to_string(),
        source: Box::new(e),
    }
}

/// Failures of the blocking halves: errors on the object itself map through
/// [`StoreError::from_io`]; errors reading a put's source file must not, or a missing
/// spool file would be reported as a missing object.
#[derive(Debug)]
enum FsError {
    Store(io::Error),
    Source(PathBuf, io::Error),
}

impl From<io::Error> for FsError {
    fn from(e: io::Error) -> Self {
        FsError::Store(e)
    }
}

impl FsError {
    fn into_store_error(self, op: Op, key: &str) -> StoreError {
        match self {
            FsError::Store(e) => StoreError::from_io(op, key, e),
            FsError::Source(path, e) => StoreError::Other {
                op,
                key: key.to_string(),
                source: Box::new(io::Error::new(
                    e.kind(),
                    format!("reading payload file {}: {e}", path.display()),
                )),
            },
        }
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// `create_dir_all` that also fsyncs the parent of each directory it creates, so the
/// new entries survive a crash along with the file put into them. Created directories
/// get exactly `bits`.
fn ensure_dir(dir: &Path, bits: u32) -> io::Result<()> {
    match fs::metadata(dir) {
        Ok(m) if m.is_dir() => return Ok(()),
        Ok(_) => {
            return Err(io::Error::new(
                ErrorKind::NotADirectory,
                format!("{} exists and is not a directory", dir.display()),
            ));
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty());
    if let Some(parent) = parent {
        ensure_dir(parent, bits)?;
    }
    match file_mode::create_dir(dir, bits) {
        Ok(()) => {
            if let Some(parent) = parent {
                sync_dir(parent)?;
            }
            Ok(())
        }
        // Another put created it concurrently; fine if it is a directory.
        Err(e) if e.kind() == ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(e) => Err(e),
    }
}

fn temp_path(dest: &Path) -> PathBuf {
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // Keep the temp name within NAME_MAX (255) even for long keys.
    let mut cut = name.len().min(200);
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    let nonce: u64 = rand::random();
    dest.with_file_name(format!(".{}.{nonce:016x}.tmp", &name[..cut]))
}

fn put_blocking(
    key: &str,
    dest: &Path,
    body: Payload,
    opts: &PutOptions,
    mode: FileMode,
) -> Result<(), FsError> {
    let dir = dest.parent().ok_or_else(|| {
        FsError::Store(io::Error::new(
            ErrorKind::InvalidInput,
            format!("{key} has no parent directory"),
        ))
    })?;
    ensure_dir(dir, mode.dir())?;
    let tmp = temp_path(dest);
    let mut file = file_mode::create_new(&tmp, mode.file())?;
    let result = write_and_place(&mut file, &tmp, dest, body, opts);
    drop(file);
    match result {
        Ok(linked) => {
            if linked && let Err(e) = fs::remove_file(&tmp) {
                // The object is in place; a stray temp file is harmless (never listed).
                warn!(key, tmp = %tmp.display(), error = %e, "could not remove temp file");
            }
            sync_dir(dir)?;
            Ok(())
        }
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// Fills the temp file and moves it into place. Returns whether the temp file still
/// exists (a create-only put links rather than renames).
fn write_and_place(
    file: &mut File,
    tmp: &Path,
    dest: &Path,
    body: Payload,
    opts: &PutOptions,
) -> Result<bool, FsError> {
    use std::io::Write;
    match body {
        Payload::Bytes(b) => file.write_all(&b)?,
        Payload::File(src) => copy_from(&src, file)?,
    }
    // After the writes, which would otherwise bump the mtime again. Litestream reads
    // the LTX timestamp back from the mtime.
    if let Some(ts) = opts.timestamp {
        file.set_modified(ts)?;
    }
    file.sync_all()?;
    match opts.mode {
        PutMode::Overwrite => {
            fs::rename(tmp, dest)?;
            Ok(false)
        }
        // link(2) fails with EEXIST if dest exists, atomically, so of racing
        // create-only puts exactly one wins and no one sees a partial file.
        PutMode::CreateOnly => {
            fs::hard_link(tmp, dest)?;
            Ok(true)
        }
    }
}

/// Streams `src` into `dest`. Not `io::copy`, because that cannot tell a failing read
/// of the spool file from a failing write of the object (a full disk), and the two need
/// different errors.
fn copy_from(src: &Path, dest: &mut File) -> Result<(), FsError> {
    use std::io::{Read, Write};
    let source_err = |e| FsError::Source(src.to_path_buf(), e);
    let mut reader = File::open(src).map_err(source_err)?;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(source_err(e)),
        };
        dest.write_all(&buf[..n])?;
    }
}

fn list_blocking(
    root: &Path,
    prefix: &str,
    start_after: Option<&str>,
) -> Result<Vec<ObjectInfo>, StoreError> {
    let (dir_key, partial) = match prefix.rsplit_once('/') {
        Some((dirs, partial)) => (format!("{dirs}/"), partial),
        None => (String::new(), prefix),
    };
    let mut out = Vec::new();
    walk(root, &dir_key, partial, start_after, &mut out)?;
    Ok(out)
}

fn is_absent(e: &io::Error) -> bool {
    matches!(e.kind(), ErrorKind::NotFound | ErrorKind::NotADirectory)
}

/// Lists the directory holding keys `dir_key*` (with `dir_key` empty or ending in '/'),
/// keeping only entries whose name starts with `partial`.
fn walk(
    root: &Path,
    dir_key: &str,
    partial: &str,
    start_after: Option<&str>,
    out: &mut Vec<ObjectInfo>,
) -> Result<(), StoreError> {
    let dir = root.join(dir_key);
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if is_absent(&e) => return Ok(()),
        Err(e) => return Err(StoreError::from_io(Op::List, dir_key, e)),
    };
    for entry in entries {
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) => return Err(StoreError::from_io(Op::List, dir_key, e)),
        };
        let Ok(name) = entry.file_name().into_string() else {
            debug!(dir = %dir.display(), "skipping a name that is not UTF-8");
            continue;
        };
        if name.starts_with('.') || !name.starts_with(partial) {
            continue;
        }
        let key = format!("{dir_key}{name}");
        let file_type = match entry.file_type() {
            Ok(t) => t,
            Err(e) if is_absent(&e) => continue,
            Err(e) => return Err(StoreError::from_io(Op::List, &key, e)),
        };
        if file_type.is_dir() {
            let sub = format!("{key}/");
            // Every key below `sub` sorts before `start_after` unless `start_after`
            // itself lies below it, so such subtrees need no walk.
            if let Some(after) = start_after
                && sub.as_str() < after
                && !after.starts_with(&sub)
            {
                continue;
            }
            walk(root, &sub, "", start_after, out)?;
            continue;
        }
        if start_after.is_some_and(|after| key.as_str() <= after) {
            continue;
        }
        // Follows symlinks, so a link to a file lists as that file.
        let meta = match fs::metadata(entry.path()) {
            Ok(m) => m,
            // Deleted since read_dir, or a dangling link.
            Err(e) if is_absent(&e) => continue,
            Err(e) => return Err(StoreError::from_io(Op::List, &key, e)),
        };
        if !meta.is_file() {
            continue;
        }
        out.push(ObjectInfo {
            key,
            size: meta.len(),
            last_modified: None,
            ltx_time: meta.modified().ok(),
        });
    }
    Ok(())
}

fn delete_blocking(root: &Path, keys: &[Key]) -> Result<(), StoreError> {
    let mut touched = std::collections::BTreeSet::new();
    for key in keys {
        let path = root.join(key.as_str());
        match fs::remove_file(&path) {
            Ok(()) => {
                if let Some(dir) = path.parent() {
                    touched.insert(dir.to_path_buf());
                }
            }
            // A directory at the key is a key prefix, not an object: nothing to delete.
            Err(e) if is_absent(&e) || e.kind() == ErrorKind::IsADirectory => {}
            Err(e) => return Err(StoreError::from_io(Op::Delete, key.as_str(), e)),
        }
    }
    for dir in touched {
        sync_dir(&dir).map_err(|e| {
            let key = dir
                .strip_prefix(root)
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default();
            StoreError::from_io(Op::Delete, &key, e)
        })?;
    }
    Ok(())
}

/// Adds this backend's schemes (`file://`) to `registry`.
pub fn register(registry: &mut replica_core::registry::Registry) {
    registry.register("file", open);
}

fn open(url: String) -> replica_core::registry::OpenFuture {
    Box::pin(async move {
        let client = FileClient::parse(&url)?;
        Ok(std::sync::Arc::new(client) as std::sync::Arc<dyn ReplicaClient>)
    })
}
