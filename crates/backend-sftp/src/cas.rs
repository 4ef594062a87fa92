//! Compare-and-swap of small records (the lease). SFTP has no conditional write and
//! no locks, so the swap runs inside a mutex: a hidden directory beside the object,
//! created with `mkdir` (atomic on the server's file system: of racing creators
//! exactly one succeeds). Inside it: read, compare the content digest with the
//! version named, write a temp file, rename it over the object, remove the mutex.
//!
//! A mutex left by a process that died inside those few requests is removed once it
//! has been seen, unchanged, for [`STALE_AFTER`]. That is the weaker point: two
//! contenders that both judge the same mutex stale at the same moment could both
//! enter. The window needs a crash inside a sub-second section and a simultaneous
//! race, and the lease built on this only changes hands every few seconds.

use std::time::Instant;

use super::*;
use replica_core::client::{MAX_VERSIONED_LEN, check_version, record_too_large};

/// A mutex older than this is taken to belong to a dead process.
const STALE_AFTER: Duration = Duration::from_secs(10);

/// The whole file, or `None` if it does not exist.
pub(crate) async fn read_small(c: &Conn, key: &str, path: &str) -> Result<Option<Bytes>, OpError> {
    let s = &c.sftp;
    let h = match s.open(path, OpenFlags::READ, FileAttributes::empty()).await {
        Ok(h) => h.handle,
        Err(e) if status_code(&e) == Some(StatusCode::NoSuchFile) => return Ok(None),
        Err(e) => return Err(OpError::Sftp(key.to_owned(), e)),
    };
    let mut body = Vec::new();
    let result = loop {
        match s.read(h.as_str(), body.len() as u64, CHUNK as u32).await {
            Ok(d) if d.data.is_empty() => break Ok(()),
            Ok(d) => {
                body.extend_from_slice(&d.data);
                if body.len() > MAX_VERSIONED_LEN {
                    break Err(OpError::Store(record_too_large(key)));
                }
            }
            Err(e) if status_code(&e) == Some(StatusCode::Eof) => break Ok(()),
            Err(e) => break Err(OpError::Sftp(key.to_owned(), e)),
        }
    };
    let _ = s.close(h.as_str()).await;
    result.map(|()| Some(body.into()))
}

pub(crate) async fn get_versioned(
    c: Arc<Conn>,
    key: &str,
    path: &str,
) -> Result<Versioned, OpError> {
    match read_small(&c, key, path).await? {
        Some(body) => Ok(Versioned {
            version: Version::of_content(&body),
            body,
        }),
        None => Err(StoreError::NotFound {
            key: key.to_owned(),
        }
        .into()),
    }
}

pub(crate) async fn put_if(
    c: Arc<Conn>,
    key: &str,
    dest: &str,
    body: &Bytes,
    expected: Option<&Version>,
    mode: FileMode,
) -> Result<Version, OpError> {
    let (dir, name) = dest.rsplit_once('/').unwrap_or(("", dest));
    let mutex = format!("{dir}/.{name}.mutex");
    lock(&c, key, dir, &mutex, mode).await?;
    let result = swap(c.clone(), key, dest, body, expected, mode).await;
    if let Err(e) = c.sftp.rmdir(mutex.as_str()).await {
        warn!(key, mutex = %mutex, error = %e, "could not remove the lease mutex; it is taken as stale after a while");
    }
    result
}

async fn lock(c: &Conn, key: &str, dir: &str, mutex: &str, mode: FileMode) -> Result<(), OpError> {
    let s = &c.sftp;
    let mut seen_since: Option<Instant> = None;
    // mkdir failures with no mutex in the way: a holder that let go in between (a
    // race, retried) or a real refusal (reported after a few tries).
    let mut unexplained = 0;
    loop {
        match s.mkdir(mutex, with_permissions(mode.dir())).await {
            Ok(_) => return Ok(()),
            Err(e) if is_connection_error(&e) => return Err(OpError::Sftp(key.to_owned(), e)),
            Err(e) => match s.stat(mutex).await {
                Ok(_) => {
                    let since = *seen_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= STALE_AFTER {
                        warn!(
                            key,
                            mutex, "removing a lease mutex left by a process that died holding it"
                        );
                        let _ = s.rmdir(mutex).await;
                        seen_since = None;
                    } else {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
                Err(_) if !dir.is_empty() && s.stat(dir).await.is_err() => {
                    mkdir_all(s, dir, mode.dir()).await.map_err(sftp(key))?;
                }
                Err(_) => {
                    unexplained += 1;
                    if unexplained >= 20 {
                        return Err(OpError::Sftp(key.to_owned(), e));
                    }
                }
            },
        }
    }
}

async fn swap(
    c: Arc<Conn>,
    key: &str,
    dest: &str,
    body: &Bytes,
    expected: Option<&Version>,
    mode: FileMode,
) -> Result<Version, OpError> {
    let current = read_small(&c, key, dest)
        .await?
        .map(|b| Version::of_content(&b));
    check_version(key, expected, current.as_ref())?;
    let opts = PutOptions {
        mode: PutMode::Overwrite,
        timestamp: None,
    };
    put_once(c, key, dest, &Payload::Bytes(body.clone()), &opts, mode).await?;
    Ok(Version::of_content(body))
}
