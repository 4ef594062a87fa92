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
use percent_encoding::{AsciiSet, CONTROLS, percent_decode_str, utf8_percent_encode};
use replica_core::client::{
    ByteStream, Capabilities, ObjectInfo, Payload, PutMode, PutOptions, ReplicaClient, StoreInfo,
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
use url::Url;

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

/// How the server's host key is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostKeyPolicy {
    /// Accept only these keys (OpenSSH public key lines or `SHA256:` fingerprints).
    Pinned(Vec<String>),
    /// Check against a known_hosts file.
    KnownHosts(PathBuf),
    /// Accept anything (warns on every connection).
    Insecure,
}

/// Connection settings parsed from the URL. Holds no secret: the password is read from
/// the environment at connect time.
#[derive(Clone, PartialEq, Eq)]
pub struct SftpConfig {
    pub host: String,
    pub port: u16,
    pub user: String,
    /// Absolute directory on the server holding the replica.
    pub root: String,
    pub key_path: Option<PathBuf>,
    pub password_env: String,
    pub host_key: HostKeyPolicy,
}

impl fmt::Debug for SftpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SftpConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("root", &self.root)
            .field("key_path", &self.key_path)
            .field("password_env", &self.password_env)
            .field("host_key", &self.host_key)
            .finish()
    }
}

/// Why a connection could not be made. Never carries a password.
#[derive(Debug, thiserror::Error)]
enum ConnectError {
    #[error("cannot reach {addr}: {source}")]
    Unreachable { addr: String, source: io::Error },
    #[error("SSH handshake with {addr} failed: {detail}")]
    Handshake { addr: String, detail: String },
    #[error("{0}")]
    HostKey(String),
    #[error("{0}")]
    Auth(String),
    #[error("{0}")]
    Setup(String),
}

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

const QUERY_SET: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'<')
    .add(b'>')
    .add(b'&')
    .add(b'%');

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
    /// it once more.
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

/// Errors inside an operation: SFTP errors (mapped once the retry decision is made,
/// naming the key they concern) or finished store errors.
#[derive(Debug)]
enum OpError {
    Sftp(String, SftpError),
    Store(StoreError),
}

impl From<StoreError> for OpError {
    fn from(e: StoreError) -> Self {
        OpError::Store(e)
    }
}

fn sftp(key: &str) -> impl FnOnce(SftpError) -> OpError + '_ {
    move |e| OpError::Sftp(key.to_owned(), e)
}

fn status_code(e: &SftpError) -> Option<StatusCode> {
    match e {
        SftpError::Status(s) => Some(s.status_code),
        _ => None,
    }
}

fn is_connection_error(e: &SftpError) -> bool {
    match e {
        SftpError::Status(s) => matches!(
            s.status_code,
            StatusCode::NoConnection | StatusCode::ConnectionLost
        ),
        SftpError::IO(_) | SftpError::Timeout | SftpError::UnexpectedBehavior(_) => true,
        SftpError::Limited(_) | SftpError::UnexpectedPacket => false,
    }
}

fn sftp_error(op: Op, key: &str, e: SftpError, transient: bool) -> StoreError {
    let key = key.to_owned();
    match status_code(&e) {
        Some(StatusCode::NoSuchFile) => StoreError::NotFound { key },
        Some(StatusCode::PermissionDenied) => StoreError::PermissionDenied {
            op,
            key,
            detail: e.to_string(),
        },
        _ if transient => StoreError::Transient {
            op,
            key,
            source: Box::new(e),
        },
        _ => StoreError::Other {
            op,
            key,
            source: Box::new(e),
        },
    }
}

fn connect_error(op: Op, key: &str, e: ConnectError) -> StoreError {
    let key = key.to_owned();
    match e {
        ConnectError::Unreachable { .. } | ConnectError::Handshake { .. } => {
            StoreError::Transient {
                op,
                key,
                source: Box::new(e),
            }
        }
        ConnectError::Auth(detail) => StoreError::PermissionDenied { op, key, detail },
        ConnectError::HostKey(_) | ConnectError::Setup(_) => StoreError::Other {
            op,
            key,
            source: Box::new(e),
        },
    }
}

fn other(op: Op, key: &str, msg: String) -> StoreError {
    StoreError::Other {
        op,
        key: key.to_owned(),
        source: Box::new(io::Error::other(msg)),
    }
}

// ---------------------------------------------------------------------------------
// URL parsing

fn parse_url(raw: &str) -> Result<SftpConfig, StoreError> {
    // Never echo a URL that may hold a password.
    let shown = |u: &Url| {
        let mut u = u.clone();
        let _ = u.set_password(None);
        u.to_string()
    };
    let url = Url::parse(raw).map_err(|e| StoreError::InvalidUrl {
        url: "sftp://…".into(),
        reason: e.to_string(),
    })?;
    let invalid = |reason: String| StoreError::InvalidUrl {
        url: shown(&url),
        reason,
    };
    if url.scheme() != "sftp" {
        return Err(invalid(format!(
            "the sftp backend only handles sftp:// URLs, not {}://",
            url.scheme()
        )));
    }
    if url.password().is_some() {
        return Err(invalid(format!(
            "passwords may not be written in the URL; put it in an environment variable \
             ({DEFAULT_PASSWORD_ENV}, or the one named by password_env=)"
        )));
    }
    let host = match url.host_str() {
        Some(h) if !h.is_empty() => h.trim_start_matches('[').trim_end_matches(']'),
        _ => return Err(invalid("no host given; write sftp://user@host/path".into())),
    };
    let port = url.port().unwrap_or(22);
    let user = if url.username().is_empty() {
        std::env::var("USER").map_err(|_| {
            invalid("no user given and $USER is not set; write sftp://user@host/path".into())
        })?
    } else {
        percent_decode_str(url.username())
            .decode_utf8()
            .map_err(|_| invalid("the user name is not UTF-8".into()))?
            .into_owned()
    };
    if url.fragment().is_some() {
        return Err(invalid(
            "sftp URLs may not have a fragment; write a '#' in the path as %23".into(),
        ));
    }
    let path = percent_decode_str(url.path())
        .decode_utf8()
        .map_err(|_| invalid("the path is not UTF-8".into()))?;
    if path.contains('\0') {
        return Err(invalid("the path contains a NUL byte".into()));
    }
    let mut root = path.trim_end_matches('/').to_owned();
    if root.is_empty() {
        root = "/".into();
    }

    let mut key_path = None;
    let mut password_env = DEFAULT_PASSWORD_ENV.to_owned();
    let mut pins = Vec::new();
    let mut known_hosts = None;
    let mut insecure = false;
    for pair in url
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = percent_decode_str(v)
            .decode_utf8()
            .map_err(|_| invalid(format!("the value of {k} is not UTF-8")))?
            .into_owned();
        match k {
            "key_path" | "key-path" => key_path = Some(PathBuf::from(v)),
            "password_env" => password_env = v,
            "host_key" | "host-key" => {
                check_pin(&v).map_err(invalid)?;
                pins.push(v);
            }
            "known_hosts" => known_hosts = Some(PathBuf::from(v)),
            "insecure_skip_host_key_check" => {
                insecure = match v.as_str() {
                    "" | "true" | "1" | "yes" => true,
                    "false" | "0" | "no" => false,
                    _ => {
                        return Err(invalid(format!(
                            "insecure_skip_host_key_check must be true or false, not {v:?}"
                        )));
                    }
                }
            }
            "password" => {
                return Err(invalid(format!(
                    "passwords may not be written in the URL; set the environment \
                     variable {DEFAULT_PASSWORD_ENV} (or name one with password_env=)"
                )));
            }
            _ => {
                return Err(invalid(format!(
                    "unknown option {k:?}; the sftp backend understands key_path, \
                     password_env, host_key, known_hosts and insecure_skip_host_key_check"
                )));
            }
        }
    }
    let host_key = if !pins.is_empty() {
        if insecure {
            return Err(invalid(
                "host_key and insecure_skip_host_key_check contradict each other".into(),
            ));
        }
        HostKeyPolicy::Pinned(pins)
    } else if insecure {
        HostKeyPolicy::Insecure
    } else {
        match known_hosts {
            Some(p) => HostKeyPolicy::KnownHosts(p),
            None => match std::env::home_dir() {
                Some(h) => HostKeyPolicy::KnownHosts(h.join(".ssh").join("known_hosts")),
                None => {
                    return Err(invalid(
                        "no home directory for ~/.ssh/known_hosts; give known_hosts=, \
                         host_key= or insecure_skip_host_key_check=true"
                            .into(),
                    ));
                }
            },
        }
    };
    Ok(SftpConfig {
        host: host.to_owned(),
        port,
        user,
        root,
        key_path,
        password_env,
        host_key,
    })
}

fn check_pin(v: &str) -> Result<(), String> {
    if v.starts_with("SHA256:") {
        return Ok(());
    }
    PublicKey::from_openssh(v.trim()).map(|_| ()).map_err(|e| {
        format!(
            "host_key must be an OpenSSH public key (\"ssh-ed25519 AAAA…\", space written \
             %20) or a SHA256: fingerprint: {e}"
        )
    })
}

/// The URL as parsed, for logs: no password can be in it (they are refused).
fn redact(cfg: &SftpConfig) -> String {
    let mut s = format!(
        "sftp://{}@{}",
        utf8_percent_encode(&cfg.user, QUERY_SET),
        if cfg.host.contains(':') {
            format!("[{}]", cfg.host)
        } else {
            cfg.host.clone()
        }
    );
    if cfg.port != 22 {
        s.push_str(&format!(":{}", cfg.port));
    }
    s.push_str(&utf8_percent_encode(&cfg.root, QUERY_SET).to_string());
    s
}

fn join(root: &str, key: &str) -> String {
    if key.is_empty() {
        root.to_owned()
    } else if root.ends_with('/') {
        format!("{root}{key}")
    } else {
        format!("{root}/{key}")
    }
}

// ---------------------------------------------------------------------------------
// Connections

struct Handler {
    policy: HostKeyPolicy,
    host: String,
    port: u16,
    /// Why the host key was refused, for the error.
    refusal: Arc<StdMutex<Option<String>>>,
}

impl Handler {
    fn check(&self, key: &PublicKey) -> Result<(), String> {
        let fp = key.fingerprint(HashAlg::Sha256).to_string();
        let addr = format!("{}:{}", self.host, self.port);
        match &self.policy {
            HostKeyPolicy::Insecure => {
                warn!(
                    host = %addr,
                    fingerprint = %fp,
                    "insecure_skip_host_key_check is set: accepting the SSH host key \
                     without verification"
                );
                Ok(())
            }
            HostKeyPolicy::Pinned(pins) => {
                let ok = pins.iter().any(|p| {
                    if p.starts_with("SHA256:") {
                        *p == fp
                    } else {
                        PublicKey::from_openssh(p.trim())
                            .is_ok_and(|pk| pk.key_data() == key.key_data())
                    }
                });
                if ok {
                    Ok(())
                } else {
                    Err(format!(
                        "host key verification failed for {addr}: the server presented \
                         {} key {fp}, which does not match the pinned host_key; refusing \
                         to connect (possible man-in-the-middle, or the server's key \
                         changed)",
                        key.algorithm()
                    ))
                }
            }
            HostKeyPolicy::KnownHosts(path) => {
                let known =
                    russh::keys::known_hosts::known_host_keys_path(&self.host, self.port, path)
                        .map_err(|e| {
                            format!(
                                "host key verification failed for {addr}: cannot read known_hosts \
                         file {}: {e}",
                                path.display()
                            )
                        })?;
                if known.iter().any(|(_, k)| k.key_data() == key.key_data()) {
                    return Ok(());
                }
                if let Some((line, _)) =
                    known.iter().find(|(_, k)| k.algorithm() == key.algorithm())
                {
                    return Err(format!(
                        "host key verification failed for {addr}: the {} host key \
                         changed (now {fp}; {}:{line} records another); refusing to \
                         connect (possible man-in-the-middle)",
                        key.algorithm(),
                        path.display()
                    ));
                }
                Err(format!(
                    "host key verification failed for {addr}: unknown host ({} key {fp} \
                     is not in {}); add it (ssh-keyscan -p {} {} >> {}), pin it with \
                     host_key=, or set insecure_skip_host_key_check=true",
                    key.algorithm(),
                    path.display(),
                    self.port,
                    self.host,
                    path.display()
                ))
            }
        }
    }
}

impl russh::client::Handler for Handler {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        server_public_key: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let key = match server_public_key {
            russh::keys::PublicKeyOrCertificate::PublicKey { key, .. } => key.clone(),
            russh::keys::PublicKeyOrCertificate::Certificate(c) => {
                PublicKey::from(c.public_key().clone())
            }
        };
        match self.check(&key) {
            Ok(()) => Ok(true),
            Err(msg) => {
                if let Ok(mut r) = self.refusal.lock() {
                    *r = Some(msg);
                }
                Ok(false)
            }
        }
    }
}

struct Conn {
    handle: russh::client::Handle<Handler>,
    sftp: Arc<RawSftpSession>,
    posix_rename: bool,
    fsync: bool,
}

impl Conn {
    fn is_closed(&self) -> bool {
        self.handle.is_closed()
    }
}

async fn connect(cfg: &SftpConfig) -> Result<Conn, ConnectError> {
    let addr = format!("{}:{}", cfg.host, cfg.port);
    let refusal = Arc::new(StdMutex::new(None));
    let handler = Handler {
        policy: cfg.host_key.clone(),
        host: cfg.host.clone(),
        port: cfg.port,
        refusal: refusal.clone(),
    };
    let config = Arc::new(russh::client::Config {
        keepalive_interval: Some(Duration::from_secs(30)),
        keepalive_max: 4,
        ..Default::default()
    });
    let tcp = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::net::TcpStream::connect((cfg.host.as_str(), cfg.port)),
    )
    .await
    .map_err(|_| ConnectError::Unreachable {
        addr: addr.clone(),
        source: io::Error::new(ErrorKind::TimedOut, "connection timed out"),
    })?
    .map_err(|source| ConnectError::Unreachable {
        addr: addr.clone(),
        source,
    })?;
    let _ = tcp.set_nodelay(true);
    let mut handle = match russh::client::connect_stream(config, tcp, handler).await {
        Ok(h) => h,
        Err(e) => {
            let refused = refusal.lock().ok().and_then(|mut r| r.take());
            return Err(match refused {
                Some(msg) => ConnectError::HostKey(msg),
                None => ConnectError::Handshake {
                    addr,
                    detail: e.to_string(),
                },
            });
        }
    };
    authenticate(&mut handle, cfg, &addr).await?;

    let channel = handle
        .channel_open_session()
        .await
        .map_err(|e| ConnectError::Setup(format!("opening an SSH channel to {addr}: {e}")))?;
    channel
        .request_subsystem(true, "sftp")
        .await
        .map_err(|e| ConnectError::Setup(format!("starting the sftp subsystem on {addr}: {e}")))?;
    let sftp = RawSftpSession::new(channel.into_stream());
    sftp.set_timeout(60);
    let version = sftp
        .init()
        .await
        .map_err(|e| ConnectError::Setup(format!("SFTP handshake with {addr}: {e}")))?;
    let has = |name: &str| version.extensions.contains_key(name);
    debug!(host = %addr, extensions = ?version.extensions.keys(), "SFTP connected");
    Ok(Conn {
        posix_rename: has(POSIX_RENAME),
        fsync: has(FSYNC),
        handle,
        sftp: Arc::new(sftp),
    })
}

async fn authenticate(
    handle: &mut russh::client::Handle<Handler>,
    cfg: &SftpConfig,
    addr: &str,
) -> Result<(), ConnectError> {
    let user = cfg.user.as_str();
    let mut tried: Vec<String> = Vec::new();
    let handshake = |e: russh::Error| ConnectError::Handshake {
        addr: addr.to_owned(),
        detail: e.to_string(),
    };

    if let Some(path) = &cfg.key_path {
        let key = russh::keys::load_secret_key(path, None).map_err(|e| {
            ConnectError::Auth(format!(
                "cannot load the private key {}: {e}",
                path.display()
            ))
        })?;
        let hash = handle
            .best_supported_rsa_hash()
            .await
            .map_err(handshake)?
            .flatten();
        let res = handle
            .authenticate_publickey(user, PrivateKeyWithHashAlg::new(Arc::new(key), hash))
            .await
            .map_err(handshake)?;
        if res.success() {
            return Ok(());
        }
        tried.push(format!("the key {}", path.display()));
    } else if std::env::var_os("SSH_AUTH_SOCK").is_some() {
        match russh::keys::agent::client::AgentClient::connect_env().await {
            Ok(mut agent) => {
                let ids = agent.request_identities().await.unwrap_or_default();
                let n = ids.len();
                for id in ids {
                    let russh::keys::agent::AgentIdentity::PublicKey { key, .. } = id else {
                        continue;
                    };
                    match handle
                        .authenticate_publickey_with(user, key, None, &mut agent)
                        .await
                    {
                        Ok(r) if r.success() => return Ok(()),
                        Ok(_) => {}
                        Err(e) => debug!(error = %e, "ssh-agent signing failed"),
                    }
                }
                tried.push(format!("{n} ssh-agent key(s)"));
            }
            Err(e) => debug!(error = %e, "ssh-agent unavailable"),
        }
    }

    if let Ok(password) = std::env::var(&cfg.password_env) {
        let res = handle
            .authenticate_password(user, password)
            .await
            .map_err(handshake)?;
        if res.success() {
            return Ok(());
        }
        tried.push(format!("the password from ${}", cfg.password_env));
    }

    Err(ConnectError::Auth(if tried.is_empty() {
        format!(
            "no SSH credentials for {user}@{addr}: give key_path=, run an ssh-agent, or \
             set ${}",
            cfg.password_env
        )
    } else {
        format!(
            "SSH authentication as {user}@{addr} failed (tried {})",
            tried.join(", ")
        )
    }))
}

// ---------------------------------------------------------------------------------
// Keys

fn unix_secs(t: SystemTime) -> u32 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX))
        .unwrap_or(0)
}

fn mtime_of(a: &FileAttributes) -> Option<SystemTime> {
    a.mtime
        .map(|s| UNIX_EPOCH + Duration::from_secs(u64::from(s)))
}

// ---------------------------------------------------------------------------------
// Operations

/// Only the permission bits `bits`, for an open, mkdir or setstat.
fn with_permissions(bits: u32) -> FileAttributes {
    FileAttributes {
        permissions: Some(bits),
        ..FileAttributes::empty()
    }
}

/// Creates `dir` and its missing parents (never above the root's parent chain that
/// already exists), each with exactly `bits`: asked for at mkdir (so it is never
/// wider, whatever the server's umask), then set, since the umask may have narrowed it.
async fn mkdir_all(s: &RawSftpSession, dir: &str, bits: u32) -> Result<(), SftpError> {
    let mut missing = Vec::new();
    let mut cur = dir.to_owned();
    loop {
        match s.stat(cur.as_str()).await {
            Ok(_) => break,
            Err(e) if status_code(&e) == Some(StatusCode::NoSuchFile) => {
                missing.push(cur.clone());
                match cur.rsplit_once('/') {
                    Some((parent, _)) if !parent.is_empty() => cur = parent.to_owned(),
                    _ => break,
                }
            }
            Err(e) => return Err(e),
        }
    }
    for d in missing.into_iter().rev() {
        match s.mkdir(d.as_str(), with_permissions(bits)).await {
            Ok(_) => {
                s.setstat(d.as_str(), with_permissions(bits)).await?;
            }
            // A concurrent put may have created it (then it is left as it is).
            Err(e) => {
                if !s.stat(d.as_str()).await.is_ok_and(|a| a.attrs.is_dir()) {
                    return Err(e);
                }
            }
        }
    }
    Ok(())
}

fn temp_name(dest: &str) -> String {
    let (dir, name) = dest.rsplit_once('/').unwrap_or(("", dest));
    let mut cut = name.len().min(200);
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    let nonce: u64 = rand::random();
    format!("{dir}/.{}.{nonce:016x}.tmp", &name[..cut])
}

/// Uploads `body` to the open `handle`, keeping several writes in flight.
async fn upload(c: &Conn, handle: &str, key: &str, body: &Payload) -> Result<(), OpError> {
    let mut inflight: JoinSet<Result<(), SftpError>> = JoinSet::new();
    let mut offset = 0u64;
    let mut failed: Option<SftpError> = None;
    let mut file = match body {
        Payload::Bytes(_) => None,
        Payload::File(p) => Some((
            p,
            tokio::fs::File::open(p)
                .await
                .map_err(|e| source_error(key, p, e))?,
        )),
    };
    loop {
        let data = match (&mut file, body) {
            (Some((p, f)), _) => {
                let mut buf = vec![0u8; CHUNK];
                let mut n = 0;
                while n < CHUNK {
                    let r = f
                        .read(&mut buf[n..])
                        .await
                        .map_err(|e| source_error(key, p, e))?;
                    if r == 0 {
                        break;
                    }
                    n += r;
                }
                buf.truncate(n);
                buf
            }
            (None, Payload::Bytes(b)) => {
                let start = usize::try_from(offset).unwrap_or(usize::MAX).min(b.len());
                let end = (start + CHUNK).min(b.len());
                b[start..end].to_vec()
            }
            (None, Payload::File(_)) => Vec::new(),
        };
        if data.is_empty() {
            break;
        }
        let len = data.len() as u64;
        let s = c.sftp.clone();
        let h = handle.to_owned();
        let at = offset;
        inflight.spawn(async move { s.write(h, at, data).await.map(|_| ()) });
        offset += len;
        if inflight.len() >= WRITES_IN_FLIGHT
            && let Some(r) = inflight.join_next().await
            && let Err(e) = r.unwrap_or_else(|e| Err(SftpError::IO(e.to_string())))
        {
            failed = Some(e);
            break;
        }
    }
    while let Some(r) = inflight.join_next().await {
        if let Err(e) = r.unwrap_or_else(|e| Err(SftpError::IO(e.to_string()))) {
            failed.get_or_insert(e);
        }
    }
    match failed {
        Some(e) => Err(OpError::Sftp(key.to_owned(), e)),
        None => Ok(()),
    }
}

fn source_error(key: &str, path: &std::path::Path, e: io::Error) -> OpError {
    OpError::Store(StoreError::Other {
        op: Op::Put,
        key: key.to_owned(),
        source: Box::new(io::Error::new(
            e.kind(),
            format!("reading payload file {}: {e}", path.display()),
        )),
    })
}

async fn put_once(
    c: Arc<Conn>,
    key: &str,
    dest: &str,
    body: &Payload,
    opts: &PutOptions,
    mode: FileMode,
) -> Result<(), OpError> {
    let s = &c.sftp;
    let tmp = temp_name(dest);
    let flags = OpenFlags::WRITE | OpenFlags::CREATE | OpenFlags::EXCLUDE | OpenFlags::TRUNCATE;
    // Asked for at open, so the file is never wider while it is written.
    let create = with_permissions(mode.file());
    let handle = match s.open(tmp.as_str(), flags, create.clone()).await {
        Ok(h) => h.handle,
        Err(e) if status_code(&e) == Some(StatusCode::NoSuchFile) => {
            if let Some((dir, _)) = dest.rsplit_once('/') {
                mkdir_all(s, dir, mode.dir()).await.map_err(sftp(key))?;
            }
            s.open(tmp.as_str(), flags, create)
                .await
                .map_err(sftp(key))?
                .handle
        }
        Err(e) => return Err(OpError::Sftp(key.to_owned(), e)),
    };
    let result = async {
        upload(&c, &handle, key, body).await?;
        // The server's umask may have narrowed the bits asked for at open: set them
        // exactly, with the LTX time, in one request.
        let secs = opts.timestamp.map(unix_secs);
        let attrs = FileAttributes {
            atime: secs,
            mtime: secs,
            ..with_permissions(mode.file())
        };
        s.fsetstat(handle.as_str(), attrs)
            .await
            .map_err(sftp(key))?;
        if c.fsync {
            s.fsync(handle.as_str()).await.map_err(sftp(key))?;
        }
        Ok::<(), OpError>(())
    }
    .await;
    let closed = s.close(handle.as_str()).await;
    let result = result.and_then(|()| closed.map(|_| ()).map_err(sftp(key)));
    let result = match result {
        Ok(()) => place(&c, key, &tmp, dest, opts.mode).await,
        Err(e) => Err(e),
    };
    if result.is_err() {
        let _ = s.remove(tmp.as_str()).await;
    }
    result
}

/// Moves the finished temporary file into place.
async fn place(c: &Conn, key: &str, tmp: &str, dest: &str, mode: PutMode) -> Result<(), OpError> {
    let s = &c.sftp;
    match mode {
        PutMode::CreateOnly => match s.rename(tmp, dest).await {
            Ok(_) => Ok(()),
            Err(e) if !is_connection_error(&e) => {
                // OpenSSH reports EEXIST from link(2) as a generic failure.
                if s.lstat(dest).await.is_ok() {
                    Err(StoreError::AlreadyExists {
                        key: key.to_owned(),
                    }
                    .into())
                } else {
                    Err(OpError::Sftp(key.to_owned(), e))
                }
            }
            Err(e) => Err(OpError::Sftp(key.to_owned(), e)),
        },
        PutMode::Overwrite => {
            if c.posix_rename {
                let mut data = Vec::with_capacity(tmp.len() + dest.len() + 8);
                for p in [tmp, dest] {
                    let len = u32::try_from(p.len()).unwrap_or(u32::MAX);
                    data.extend_from_slice(&len.to_be_bytes());
                    data.extend_from_slice(p.as_bytes());
                }
                match s.extended(POSIX_RENAME, data).await.map_err(sftp(key))? {
                    Packet::Status(st) if st.status_code == StatusCode::Ok => Ok(()),
                    Packet::Status(st) => Err(OpError::Sftp(key.to_owned(), SftpError::Status(st))),
                    _ => Err(OpError::Sftp(key.to_owned(), SftpError::UnexpectedPacket)),
                }
            } else {
                // Without posix-rename the replace cannot be atomic: remove, then
                // rename. Readers may briefly see no object, never a partial one.
                warn!(
                    key,
                    "server lacks posix-rename@openssh.com; overwrite is not atomic"
                );
                match s.remove(dest).await {
                    Ok(_) => {}
                    Err(e) if status_code(&e) == Some(StatusCode::NoSuchFile) => {}
                    Err(e) => return Err(OpError::Sftp(key.to_owned(), e)),
                }
                s.rename(tmp, dest).await.map(|_| ()).map_err(sftp(key))
            }
        }
    }
}

/// Reads `[start, end)` (end `None` = to EOF) and sends the chunks down `tx`.
async fn pump(
    c: Arc<Conn>,
    handle: String,
    start: u64,
    end: Option<u64>,
    tx: mpsc::Sender<io::Result<Bytes>>,
    _permit: OwnedSemaphorePermit,
) {
    let s = &c.sftp;
    let mut off = start;
    loop {
        let want = match end {
            Some(e) if off >= e => break,
            Some(e) => (e - off).min(CHUNK as u64),
            None => CHUNK as u64,
        };
        let len = u32::try_from(want).unwrap_or(CHUNK as u32);
        match s.read(handle.as_str(), off, len).await {
            Ok(d) if d.data.is_empty() => break,
            Ok(d) => {
                off += d.data.len() as u64;
                if tx.send(Ok(Bytes::from(d.data))).await.is_err() {
                    break;
                }
            }
            Err(e) if status_code(&e) == Some(StatusCode::Eof) => break,
            Err(e) => {
                let _ = tx.send(Err(io::Error::other(e))).await;
                break;
            }
        }
    }
    let _ = s.close(handle.as_str()).await;
}

/// An `AsyncRead` over chunks arriving on a channel; an error chunk fails the read.
struct ChannelReader {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    cur: Bytes,
}

impl AsyncRead for ChannelReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if !self.cur.is_empty() {
                let n = self.cur.len().min(buf.remaining());
                let chunk = self.cur.split_to(n);
                buf.put_slice(&chunk);
                return Poll::Ready(Ok(()));
            }
            match self.rx.poll_recv(cx) {
                Poll::Ready(Some(Ok(b))) => self.cur = b,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// Walks the directory for keys `dir_key*` (dir_key empty or ending in '/').
async fn walk(
    s: &RawSftpSession,
    root: &str,
    dir_key: &str,
    partial: &str,
    start_after: Option<&str>,
    out: &mut Vec<ObjectInfo>,
) -> Result<(), OpError> {
    let dir = join(root, dir_key.trim_end_matches('/'));
    let handle = match s.opendir(dir.as_str()).await {
        Ok(h) => h.handle,
        Err(e) if status_code(&e) == Some(StatusCode::NoSuchFile) => return Ok(()),
        // Not a directory (a file at a prefix position): no keys below it.
        Err(e) if status_code(&e) == Some(StatusCode::Failure) => return Ok(()),
        Err(e) => return Err(OpError::Sftp(dir_key.to_owned(), e)),
    };
    let mut entries = Vec::new();
    let res = loop {
        match s.readdir(handle.as_str()).await {
            Ok(name) => entries.extend(name.files),
            Err(e) if status_code(&e) == Some(StatusCode::Eof) => break Ok(()),
            Err(e) => break Err(OpError::Sftp(dir_key.to_owned(), e)),
        }
    };
    let _ = s.close(handle.as_str()).await;
    res?;
    for entry in entries {
        let name = entry.filename;
        if name.starts_with('.') || !name.starts_with(partial) {
            continue;
        }
        let key = format!("{dir_key}{name}");
        let mut attrs = entry.attrs;
        if attrs.file_type().is_symlink() {
            match s.stat(join(root, &key)).await {
                Ok(a) => attrs = a.attrs,
                Err(_) => continue,
            }
        }
        if attrs.is_dir() {
            let sub = format!("{key}/");
            if let Some(after) = start_after
                && sub.as_str() < after
                && !after.starts_with(&sub)
            {
                continue;
            }
            Box::pin(walk(s, root, &sub, "", start_after, out)).await?;
            continue;
        }
        if !attrs.file_type().is_file() {
            continue;
        }
        if start_after.is_some_and(|a| key.as_str() <= a) {
            continue;
        }
        out.push(ObjectInfo {
            key,
            size: attrs.len(),
            last_modified: None,
            ltx_time: mtime_of(&attrs),
        });
    }
    Ok(())
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
        Ok(Box::pin(ChannelReader {
            rx,
            cur: Bytes::new(),
        }))
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
