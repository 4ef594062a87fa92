//! The `sftp://` backend: a replica kept in a directory on an SSH server, laid out as
//! Litestream's sftp replica client lays it out (`<path>/ltx/<level>/<min>-<max>.ltx`,
//! file mtime = LTX timestamp), so either tool can read what the other wrote.
//!
//! Pure Rust (russh + russh-sftp); nothing shells out to `ssh`.
//!
//! # URL
//!
//! `sftp://user@host:port/absolute/path?option=value&…` (port 22 by default, user
//! `$USER` by default). Options (values are percent-decoded; `+` is taken literally so
//! that base64 keys need no escaping):
//!
//! - `key_path=/path/to/id_ed25519`: authenticate with this private key. Without it, a
//!   running ssh-agent (`SSH_AUTH_SOCK`) is tried.
//! - `password_env=NAME`: take a password from the environment variable `NAME`
//!   (default `REPLICA_SFTP_PASSWORD`, used when set). Passwords in the URL itself are
//!   refused, and no password ever appears in an error or a log line.
//! - `host_key=…`: pin the server's host key, either as an OpenSSH public key line
//!   (`ssh-ed25519 AAAA…`, with the space written `%20`) or as a fingerprint
//!   (`SHA256:…`). Several pins may be given.
//! - `known_hosts=/path`: the known_hosts file to check the host key against when no
//!   key is pinned (default `~/.ssh/known_hosts`).
//! - `insecure_skip_host_key_check=true`: accept any host key (logs a warning on every
//!   connection).
//!
//! An unknown or changed host key is an error that says so.
//!
//! # Writes
//!
//! A put uploads to `.<name>.<random>.tmp` in the destination directory (names starting
//! with `.` are never keys, so temporary files are never listed), sets the mtime, and
//! renames it into place: a plain `SSH_FXP_RENAME` for create-only puts (OpenSSH's
//! server implements it as link + unlink, which refuses to replace an existing file,
//! atomically), `posix-rename@openssh.com` for overwrites. No partial object is ever
//! visible under its final name. Directories are created as needed.
//!
//! # Connections
//!
//! One SSH connection (one SFTP channel) is shared by all operations and reopened when
//! it fails; at most [`MAX_CONCURRENCY`] operations run at once.
//!
//! SFTP version 3 carries mtimes in whole seconds, so timestamps round-trip to the
//! second (as with Litestream's own sftp client).

use std::fmt;
use std::io::{self, ErrorKind};
use std::ops::Range;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use replica_core::client::{
    ByteStream, Capabilities, ObjectInfo, Payload, PutMode, PutOptions, ReplicaClient, StoreInfo,
    Version, Versioned,
};
use replica_core::error::{Op, StoreError};
use replica_core::file_mode::FileMode;
use replica_core::key::{Key, KeyPrefix};
use russh::keys::{HashAlg, PrivateKeyWithHashAlg, PublicKey};
use russh_sftp::client::RawSftpSession;
use russh_sftp::client::error::Error as SftpError;
use russh_sftp::protocol::{FileAttributes, OpenFlags, Packet, StatusCode};
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};
use tokio::sync::{Mutex, OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinSet;
use tracing::{debug, warn};

mod cas;
mod config;
mod conn;
mod error;
mod list;
mod read;
mod write;

use config::*;
pub use config::{HostKeyPolicy, SftpConfig};
use conn::*;
use error::*;
use list::*;
use read::*;
use write::*;

/// Operations in flight at once over the shared connection.
pub const MAX_CONCURRENCY: usize = 16;
/// Bytes per SFTP read or write request (OpenSSH accepts up to 255 KiB; 32 KiB is what
/// every server must accept).
const CHUNK: usize = 32 * 1024;
/// Write requests in flight per upload.
const WRITES_IN_FLIGHT: usize = 16;
/// Removes in flight per delete_many.
const DELETES_IN_FLIGHT: usize = 32;
/// The default environment variable holding a password.
pub const DEFAULT_PASSWORD_ENV: &str = "REPLICA_SFTP_PASSWORD";
const POSIX_RENAME: &str = "posix-rename@openssh.com";
const FSYNC: &str = "fsync@openssh.com";

/// A replica on an SFTP server.
pub struct SftpClient {
    cfg: Arc<SftpConfig>,
    info: StoreInfo,
    conn: Mutex<Option<Arc<Conn>>>,
    limit: Arc<Semaphore>,
    /// [`FileMode::bits`] of the database: files and created directories get its
    /// file and directory bits.
    mode: AtomicU32,
}

impl fmt::Debug for SftpClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SftpClient")
            .field("url", &self.info.redacted_url)
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl SftpClient {
    /// Parses the URL; the connection is made on first use.
    pub async fn from_url(url: &str) -> Result<SftpClient, StoreError> {
        Self::parse(url)
    }

    /// Parses the URL without connecting.
    pub fn parse(url: &str) -> Result<SftpClient, StoreError> {
        let cfg = parse_url(url)?;
        let redacted = redact(&cfg);
        // SFTP v3 file times are whole seconds; Litestream's SFTP replicas have the same
        // resolution. The mtime carries the LTX time, so listings have it.
        let mut info = StoreInfo::new(
            "sftp",
            redacted,
            Capabilities {
                create_only: true,
                ranged_get: true,
                list_has_ltx_time: true,
            },
        );
        info.timestamp_precision = std::time::Duration::from_secs(1);
        Ok(SftpClient {
            cfg: Arc::new(cfg),
            info,
            conn: Mutex::new(None),
            limit: Arc::new(Semaphore::new(MAX_CONCURRENCY)),
            mode: AtomicU32::new(FileMode::PRIVATE.bits()),
        })
    }

    pub fn config(&self) -> &SftpConfig {
        &self.cfg
    }

    fn path_of(&self, key: &str) -> String {
        join(&self.cfg.root, key)
    }

    fn mode(&self) -> FileMode {
        FileMode::new(self.mode.load(Ordering::Relaxed)).unwrap_or(FileMode::PRIVATE)
    }

    /// The shared connection, opened (or reopened) as needed.
    async fn conn(&self, op: Op, key: &str) -> Result<Arc<Conn>, StoreError> {
        let mut slot = self.conn.lock().await;
        if let Some(c) = slot.as_ref()
            && !c.is_closed()
        {
            return Ok(c.clone());
        }
        *slot = None;
        let c = Arc::new(
            connect(&self.cfg)
                .await
                .map_err(|e| connect_error(op, key, e))?,
        );
        *slot = Some(c.clone());
        Ok(c)
    }

    /// Forgets `c` if it is still the shared connection, so the next use reconnects.
    async fn drop_conn(&self, c: &Arc<Conn>) {
        let mut slot = self.conn.lock().await;
        if slot.as_ref().is_some_and(|cur| Arc::ptr_eq(cur, c)) {
            *slot = None;
        }
    }

    /// Runs `f` on the shared connection; if the connection broke, reconnects and runs
    /// it once more at once, as an HTTP client replaces a stale keep-alive connection
    /// (an idle SSH session the server or a NAT dropped). Retrying with backoff is left
    /// to `replica_core::retry`, as for every backend.
    async fn run<T, F, Fut>(&self, op: Op, key: &str, f: F) -> Result<T, StoreError>
    where
        F: Fn(Arc<Conn>) -> Fut,
        Fut: std::future::Future<Output = Result<T, OpError>>,
    {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let c = self.conn(op, key).await?;
            match f(c.clone()).await {
                Ok(v) => return Ok(v),
                Err(OpError::Store(e)) => return Err(e),
                Err(OpError::Sftp(k, e)) => {
                    let broken = is_connection_error(&e) || c.is_closed();
                    if broken {
                        self.drop_conn(&c).await;
                        if attempt < 2 {
                            debug!(key, error = %e, "SFTP connection lost; reconnecting");
                            continue;
                        }
                    }
                    return Err(sftp_error(op, &k, e, broken));
                }
            }
        }
    }

    async fn permit(&self) -> Result<OwnedSemaphorePermit, StoreError> {
        self.limit
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| StoreError::Other {
                op: Op::Get,
                key: String::new(),
                source: Box::new(e),
            })
    }
}

#[async_trait]
impl ReplicaClient for SftpClient {
    fn info(&self) -> &StoreInfo {
        &self.info
    }

    fn set_file_mode(&self, mode: FileMode) {
        self.mode.store(mode.bits(), Ordering::Relaxed);
    }

    async fn put(&self, key: &Key, body: Payload, opts: &PutOptions) -> Result<(), StoreError> {
        let key = key.as_str();
        let _permit = self.permit().await?;
        let dest = self.path_of(key);
        let mode = self.mode();
        self.run(Op::Put, key, |c| put_once(c, key, &dest, &body, opts, mode))
            .await?;
        debug!(key, "put");
        Ok(())
    }

    async fn get(&self, key: &Key, range: Option<Range<u64>>) -> Result<ByteStream, StoreError> {
        let key = key.as_str();
        if let Some(r) = &range
            && r.start > r.end
        {
            return Err(other(
                Op::Get,
                key,
                format!("invalid byte range {}..{}", r.start, r.end),
            ));
        }
        let permit = self.permit().await?;
        let path = self.path_of(key);
        let (c, handle) = self
            .run(Op::Get, key, |c| {
                let path = path.clone();
                async move {
                    let s = &c.sftp;
                    let h = s
                        .open(path.as_str(), OpenFlags::READ, FileAttributes::empty())
                        .await
                        .map_err(sftp(key))?
                        .handle;
                    match s.fstat(h.as_str()).await {
                        Ok(a) if a.attrs.is_dir() => {
                            let _ = s.close(h.as_str()).await;
                            Err(StoreError::NotFound {
                                key: key.to_owned(),
                            }
                            .into())
                        }
                        Ok(_) => Ok((c.clone(), h)),
                        Err(e) => {
                            let _ = s.close(h.as_str()).await;
                            Err(OpError::Sftp(key.to_owned(), e))
                        }
                    }
                }
            })
            .await?;
        let (start, end) = match range {
            Some(r) => (r.start, Some(r.end)),
            None => (0, None),
        };
        let (tx, rx) = mpsc::channel(8);
        tokio::spawn(pump(c, handle, start, end, tx, permit));
        Ok(Box::pin(ChannelReader::new(rx)))
    }

    async fn head(&self, key: &Key) -> Result<ObjectInfo, StoreError> {
        let key = key.as_str();
        let _permit = self.permit().await?;
        let path = self.path_of(key);
        let attrs = self
            .run(Op::Head, key, |c| {
                let path = path.clone();
                async move { c.sftp.stat(path).await.map_err(sftp(key)) }
            })
            .await?
            .attrs;
        if !attrs.file_type().is_file() {
            return Err(StoreError::NotFound {
                key: key.to_owned(),
            });
        }
        Ok(ObjectInfo {
            key: key.to_owned(),
            size: attrs.len(),
            last_modified: None,
            ltx_time: mtime_of(&attrs),
        })
    }

    async fn list(
        &self,
        prefix: &KeyPrefix,
        start_after: Option<&str>,
    ) -> Result<Vec<ObjectInfo>, StoreError> {
        let prefix = prefix.as_str();
        let _permit = self.permit().await?;
        let (dir_key, partial) = match prefix.rsplit_once('/') {
            Some((d, p)) => (format!("{d}/"), p),
            None => (String::new(), prefix),
        };
        let root = self.cfg.root.clone();
        let mut out = self
            .run(Op::List, prefix, |c| {
                let (root, dir_key) = (root.clone(), dir_key.clone());
                async move {
                    let mut out = Vec::new();
                    walk(&c.sftp, &root, &dir_key, partial, start_after, &mut out).await?;
                    Ok(out)
                }
            })
            .await?;
        out.sort_unstable_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn delete_many(&self, keys: &[Key]) -> Result<(), StoreError> {
        let _permit = self.permit().await?;
        let paths: Vec<(String, String)> = keys
            .iter()
            .map(|k| (k.to_string(), self.path_of(k)))
            .collect();
        for batch in paths.chunks(DELETES_IN_FLIGHT * 8) {
            let first = batch.first().map(|(k, _)| k.as_str()).unwrap_or("");
            self.run(Op::Delete, first, |c| async move {
                let mut set: JoinSet<Result<(), OpError>> = JoinSet::new();
                let mut iter = batch.iter();
                let mut first_err = None;
                loop {
                    while set.len() < DELETES_IN_FLIGHT {
                        let Some((key, path)) = iter.next() else {
                            break;
                        };
                        let s = c.sftp.clone();
                        let (key, path) = (key.clone(), path.clone());
                        set.spawn(async move {
                            match s.remove(path.as_str()).await {
                                Ok(_) => Ok(()),
                                Err(e) if status_code(&e) == Some(StatusCode::NoSuchFile) => Ok(()),
                                Err(e) if !is_connection_error(&e) => {
                                    // A directory at the key is a prefix, not an object.
                                    match s.lstat(path.as_str()).await {
                                        Ok(a) if a.attrs.is_dir() => Ok(()),
                                        Err(e2)
                                            if status_code(&e2) == Some(StatusCode::NoSuchFile) =>
                                        {
                                            Ok(())
                                        }
                                        _ => Err(OpError::Sftp(key, e)),
                                    }
                                }
                                Err(e) => Err(OpError::Sftp(key, e)),
                            }
                        });
                    }
                    match set.join_next().await {
                        None => break,
                        Some(Ok(Ok(()))) => {}
                        Some(Ok(Err(e))) => {
                            first_err.get_or_insert(e);
                        }
                        Some(Err(e)) => {
                            first_err.get_or_insert(OpError::Sftp(
                                String::new(),
                                SftpError::IO(e.to_string()),
                            ));
                        }
                    }
                }
                match first_err {
                    Some(e) => Err(e),
                    None => Ok(()),
                }
            })
            .await?;
        }
        Ok(())
    }

    async fn get_versioned(&self, key: &Key) -> Result<Versioned, StoreError> {
        let key = key.as_str();
        let _permit = self.permit().await?;
        let path = self.path_of(key);
        self.run(Op::Get, key, |c| cas::get_versioned(c, key, &path))
            .await
    }

    async fn put_if(
        &self,
        key: &Key,
        body: Bytes,
        expected: Option<&Version>,
    ) -> Result<Version, StoreError> {
        let key = key.as_str();
        let _permit = self.permit().await?;
        let dest = self.path_of(key);
        let mode = self.mode();
        self.run(Op::Put, key, |c| {
            cas::put_if(c, key, &dest, &body, expected, mode)
        })
        .await
    }
}

/// Adds this backend's schemes (`sftp://`) to `registry`.
pub fn register(registry: &mut replica_core::registry::Registry) {
    registry.register("sftp", open);
}

fn open(url: String) -> replica_core::registry::OpenFuture {
    Box::pin(async move {
        let client = SftpClient::from_url(&url).await?;
        Ok(std::sync::Arc::new(client) as std::sync::Arc<dyn ReplicaClient>)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(url: &str) -> SftpConfig {
        parse_url(url).expect("parse")
    }

    #[test]
    fn parses_user_host_port_path() {
        let c = cfg("sftp://alice@example.com:2222/backups/db?known_hosts=/tmp/kh");
        assert_eq!(c.user, "alice");
        assert_eq!(c.host, "example.com");
        assert_eq!(c.port, 2222);
        assert_eq!(c.root, "/backups/db");
        assert_eq!(c.host_key, HostKeyPolicy::KnownHosts("/tmp/kh".into()));
        let c = cfg("sftp://bob@h/x/?key_path=/k/id%20x&insecure_skip_host_key_check=true");
        assert_eq!(c.port, 22);
        assert_eq!(c.root, "/x");
        assert_eq!(c.key_path, Some(PathBuf::from("/k/id x")));
        assert_eq!(c.host_key, HostKeyPolicy::Insecure);
    }

    #[test]
    fn pins_keep_plus_signs() {
        let c = cfg("sftp://u@h/p?host_key=SHA256:ab+cd/ef");
        assert_eq!(
            c.host_key,
            HostKeyPolicy::Pinned(vec!["SHA256:ab+cd/ef".into()])
        );
    }

    #[test]
    fn refuses_passwords_and_unknown_options() {
        let e = parse_url("sftp://u:hunter2@h/p").expect_err("password");
        let text = format!("{e} {e:?}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("environment variable"), "{text}");
        assert!(parse_url("sftp://u@h/p?password=hunter2").is_err());
        assert!(parse_url("sftp://u@h/p?bogus=1").is_err());
        assert!(parse_url("s3://u@h/p").is_err());
        assert!(parse_url("sftp://u@h/p?host_key=nonsense").is_err());
        assert!(
            parse_url("sftp://u@h/p?host_key=SHA256:x&insecure_skip_host_key_check=true").is_err()
        );
    }

    #[test]
    fn redacted_url_has_no_query() {
        let c = SftpClient::parse("sftp://u@h:2022/a%20b?key_path=/k").expect("parse");
        assert_eq!(c.info().redacted_url, "sftp://u@h:2022/a%20b");
    }

    #[test]
    fn temp_names_are_hidden() {
        let t = temp_name("/r/ltx/0/a.ltx");
        assert!(t.starts_with("/r/ltx/0/.a.ltx."), "{t}");
        assert!(t.ends_with(".tmp"));
    }
}
