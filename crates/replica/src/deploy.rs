//! A whole deployment from one config file: the shards and extra databases, restored on
//! boot when missing, then replicated together. The sidecar CLI and an embedding
//! service use the same code, so they behave the same.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use replica_core::client::{Payload, PutMode, PutOptions};
use replica_core::engine::{EngineConfig, EngineError, Pin, Replicator};
use replica_core::error::{Chain, StoreError};
use replica_core::key::Key;
use replica_core::lease::Lease;
use replica_core::registry::Registry;
use replica_core::replica::Replica;
use replica_core::restore::{self, RestoreError, RestoreOptions, RestoreOutcome};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use tracing::{info, warn};

use crate::config::{Config, ConfigError, Database};

/// The object at the replica root that records the shard count the replicas were
/// written with. Litestream ignores it (it is not an LTX file).
pub const SHARDS_KEY: &str = "replica-shards.json";

/// Restores run at most this many at once.
/// Restores in flight at once: downloads overlap with decoding and writing.
const RESTORE_PARALLELISM: usize = 8;
/// Replicator starts in flight at once (each lists its replica).
const START_PARALLELISM: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error(transparent)]
    Config(#[from] ConfigError),

    #[error("replica {url}")]
    Store {
        url: String,
        #[source]
        source: StoreError,
    },

    #[error(
        "the replicas at {url} were written with shards.count = {recorded}, but {config} says {configured}. \
         Keys hash to a different shard when the count changes, so these replicas no longer match their shards: {affected}. \
         Point replication.replica_url at a new location, or re-shard the data and then delete {url}/{SHARDS_KEY}"
    )]
    ShardCountChanged {
        url: String,
        config: PathBuf,
        recorded: u32,
        configured: u32,
        affected: String,
    },

    #[error("restore of {db} failed")]
    Restore {
        db: PathBuf,
        #[source]
        source: RestoreError,
    },

    #[error("replication of {db} failed")]
    Engine {
        db: PathBuf,
        // Boxed: an engine error is large, and this enum is returned on every path.
        #[source]
        source: Box<EngineError>,
    },

    #[error("replication is disabled in {0} (replication.enabled is false)")]
    Disabled(PathBuf),
}

impl DeployError {
    /// A mistake in the configuration rather than a failure at run time.
    fn engine(db: PathBuf, source: EngineError) -> Self {
        DeployError::Engine {
            db,
            source: Box::new(source),
        }
    }

    pub fn is_config(&self) -> bool {
        match self {
            DeployError::Config(_) | DeployError::ShardCountChanged { .. } => true,
            DeployError::Engine { source, .. } => source.is_config(),
            DeployError::Store { source, .. } => matches!(source, StoreError::InvalidUrl { .. }),
            _ => false,
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct ShardRecord {
    shard_count: u32,
}

#[derive(Debug)]
pub struct Deployment {
    pub config: Config,
    registry: Registry,
    /// Leases taken before the boot restore, handed to the replicators by `start`.
    leases: std::sync::Mutex<std::collections::HashMap<PathBuf, Lease>>,
    /// WALs held since before the store answered ([`Deployment::pin_present`]),
    /// handed to the replicators by `start`.
    pins: std::sync::Mutex<std::collections::HashMap<PathBuf, Pin>>,
}

impl Deployment {
    pub fn new(config: Config, registry: Registry) -> Self {
        Self {
            config,
            registry,
            leases: Default::default(),
            pins: Default::default(),
        }
    }

    /// Loads `file` and resolves URLs with every backend built into this crate.
    pub fn from_config(file: &Path) -> Result<Self, DeployError> {
        Ok(Self::new(Config::load(file)?, crate::backends()))
    }

    fn engine_config(&self) -> EngineConfig {
        EngineConfig {
            sync_interval: self.config.sync_interval,
            snapshot_interval: self.config.snapshot_interval,
            retention: self.config.retention,
            levels: self.config.levels,
            l0_retention: self.config.l0_retention,
            lease: self.config.lease,
            take_over_replica: self.config.take_over_replica,
            snapshot_at_start: self.config.snapshot_at_start,
            ..EngineConfig::default()
        }
    }

    async fn open(&self, url: &str) -> Result<Replica, DeployError> {
        let client = self
            .registry
            .open(url)
            .await
            .map_err(|source| DeployError::Store {
                url: url.to_owned(),
                source,
            })?;
        Ok(Replica::new(client))
    }

    /// Refuses to go on if the replicas were written with another shard count. Reads
    /// only; run it before anything is written.
    pub async fn check_shards(&self) -> Result<(), DeployError> {
        let (Some(configured), Some(url)) = (self.config.shard_count, &self.config.replica_url)
        else {
            return Ok(());
        };
        let root = self.open(url).await?;
        let store = |source| DeployError::Store {
            url: url.clone(),
            source,
        };
        let key = Key::from_static(SHARDS_KEY);
        // An unreachable store is waited for as long as a lease would be.
        let read = replica_core::retry::while_transient(
            self.config.lease.wait,
            url,
            "the shard-count check",
            || async {
                let mut body = root.client().get(&key, None).await?;
                let mut bytes = Vec::new();
                tokio::io::AsyncReadExt::read_to_end(&mut body, &mut bytes)
                    .await
                    .map_err(|e| {
                        StoreError::body_broken(replica_core::error::Op::Get, SHARDS_KEY, e)
                    })?;
                Ok(bytes)
            },
        )
        .await;
        let bytes = match read {
            Ok(b) => b,
            Err(StoreError::NotFound { .. }) => return Ok(()),
            Err(e) => return Err(store(e)),
        };
        let record: ShardRecord = serde_json::from_slice(&bytes).map_err(|e| {
            store(StoreError::Other {
                op: replica_core::error::Op::Get,
                key: SHARDS_KEY.into(),
                source: Box::new(e),
            })
        })?;
        if record.shard_count != configured {
            let affected = (0..record.shard_count)
                .map(|i| format!("shard {i}"))
                .collect::<Vec<_>>()
                .join(", ");
            return Err(DeployError::ShardCountChanged {
                url: url.clone(),
                config: self.config.file.clone(),
                recorded: record.shard_count,
                configured,
                affected,
            });
        }
        Ok(())
    }

    /// Records the shard count at the replica root, once.
    async fn record_shards(&self) -> Result<(), DeployError> {
        let (Some(count), Some(url)) = (self.config.shard_count, &self.config.replica_url) else {
            return Ok(());
        };
        let root = self.open(url).await?;
        let body = serde_json::to_vec(&ShardRecord { shard_count: count }).map_err(|e| {
            DeployError::Store {
                url: url.clone(),
                source: StoreError::Other {
                    op: replica_core::error::Op::Put,
                    key: SHARDS_KEY.into(),
                    source: Box::new(e),
                },
            }
        })?;
        let opts = PutOptions {
            mode: PutMode::CreateOnly,
            timestamp: None,
        };
        match root
            .client()
            .put(
                &Key::from_static(SHARDS_KEY),
                Payload::Bytes(body.into()),
                &opts,
            )
            .await
        {
            Ok(()) | Err(StoreError::AlreadyExists { .. }) => Ok(()),
            Err(source) => Err(DeployError::Store {
                url: url.clone(),
                source,
            }),
        }
    }

    /// Restores every configured database whose file is missing, in parallel. A
    /// database without a replica yet starts empty; an existing file is never touched.
    ///
    /// Each database's lease is taken first, so that a restore includes everything
    /// the previous owner flushed before it let go; `start` then replicates under it.
    pub async fn restore_missing(&self) -> Result<Vec<(PathBuf, RestoreOutcome)>, DeployError> {
        self.take_leases().await?;
        let template = RestoreOptions {
            if_db_not_exists: true,
            if_replica_exists: true,
            // Replication starts right after: no snapshot of what was just downloaded.
            seed_spool: true,
            ..RestoreOptions::new(PathBuf::new())
        };
        self.restore(&[], template).await
    }

    /// Restores the configured databases (all, or those in `only`) with `template`'s
    /// options, each to its configured path, at most four at a time.
    pub async fn restore(
        &self,
        only: &[PathBuf],
        template: RestoreOptions,
    ) -> Result<Vec<(PathBuf, RestoreOutcome)>, DeployError> {
        let chosen: Vec<&Database> = self
            .config
            .databases
            .iter()
            .filter(|d| only.is_empty() || only.iter().any(|p| same_path(p, &d.path)))
            .collect();
        let sem = Arc::new(Semaphore::new(RESTORE_PARALLELISM));
        // A JoinSet aborts its tasks when dropped: a restore interrupted by a signal
        // stops every download, and each removes its work directory.
        let mut tasks = tokio::task::JoinSet::new();
        for (i, db) in chosen.into_iter().enumerate() {
            let replica = self.open(&db.url).await?;
            let opts = RestoreOptions {
                output: db.path.clone(),
                mode: template.mode.or(self.config.restore_mode),
                ..template.clone()
            };
            let sem = sem.clone();
            let path = db.path.clone();
            tasks.spawn(async move {
                let _permit = sem.acquire_owned().await;
                let r = restore::restore(&replica, &opts).await;
                (i, path, r)
            });
        }
        let mut out = Vec::new();
        let mut first_err = None;
        while let Some(t) = tasks.join_next().await {
            match t {
                Ok((i, path, Ok(outcome))) => {
                    info!(db = %path.display(), ?outcome, "boot restore");
                    out.push((i, path, outcome));
                }
                Ok((_, db, Err(source))) => {
                    first_err.get_or_insert(DeployError::Restore { db, source });
                }
                Err(e) => {
                    first_err.get_or_insert(DeployError::Restore {
                        db: PathBuf::from("?"),
                        source: RestoreError::Task(e.to_string()),
                    });
                }
            }
        }
        out.sort_by_key(|(i, _, _)| *i);
        match first_err {
            Some(e) => Err(e),
            None => Ok(out.into_iter().map(|(_, p, o)| (p, o)).collect()),
        }
    }

    /// Takes the lease of every database's replica that this deployment does not hold
    /// yet, all at once (each may wait for a previous owner).
    pub async fn take_leases(&self) -> Result<(), DeployError> {
        let cfg = self.config.lease;
        let mut tasks = Vec::new();
        for db in &self.config.databases {
            if self.held(&db.path) {
                continue;
            }
            let replica = self.open(&db.url).await?;
            let path = db.path.clone();
            tasks.push(tokio::spawn(async move {
                let r = Replicator::take_lease(&path, &replica, cfg).await;
                (path, r)
            }));
        }
        let mut first_err = None;
        for t in tasks {
            match t.await {
                Ok((path, Ok(lease))) => {
                    if let Ok(mut leases) = self.leases.lock() {
                        leases.insert(path, lease);
                    }
                }
                Ok((db, Err(e))) => {
                    first_err.get_or_insert(DeployError::engine(db, e.into()));
                }
                Err(e) => {
                    first_err.get_or_insert(DeployError::engine(
                        PathBuf::from("?"),
                        EngineError::joined("lease", &e),
                    ));
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// When every configured database exists locally, holds each one's WAL
    /// ([`Replicator::pin`]) and returns true: the service can start before the
    /// store answers, and nothing it commits meanwhile is checkpointed out of
    /// capture's sight. Returns false, pinning nothing, when a database is
    /// missing (its boot restore needs the store first).
    pub async fn pin_present(&self) -> Result<bool, DeployError> {
        if !self.config.databases.iter().all(|d| d.path.exists()) {
            return Ok(false);
        }
        let cfg = self.engine_config();
        for db in &self.config.databases {
            let pin = Replicator::pin(&db.path, &cfg)
                .await
                .map_err(|source| DeployError::engine(db.path.clone(), source))?;
            if let Ok(mut pins) = self.pins.lock() {
                pins.insert(db.path.clone(), pin);
            }
        }
        Ok(true)
    }

    fn held(&self, db: &Path) -> bool {
        self.leases.lock().is_ok_and(|l| l.contains_key(db))
    }

    fn take_lease(&self, db: &Path) -> Option<Lease> {
        self.leases.lock().ok().and_then(|mut l| l.remove(db))
    }

    /// Starts replicating every configured database, and records the shard count.
    pub async fn start(&self) -> Result<Running, DeployError> {
        if !self.config.enabled {
            return Err(DeployError::Disabled(self.config.file.clone()));
        }
        // Started together: each start lists its replica once, and a thousand
        // sequential listings would keep the service waiting.
        self.take_leases().await?;
        let sem = Arc::new(Semaphore::new(START_PARALLELISM));
        let mut tasks = Vec::new();
        for db in &self.config.databases {
            if let Some(dir) = db.path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|source| {
                    DeployError::engine(
                        db.path.clone(),
                        EngineError::Io {
                            path: dir.to_path_buf(),
                            source,
                        },
                    )
                })?;
            }
            let replica = self.open(&db.url).await?;
            let lease = self.take_lease(&db.path);
            let pin = self.pins.lock().ok().and_then(|mut p| p.remove(&db.path));
            let (path, cfg, sem) = (db.path.clone(), self.engine_config(), sem.clone());
            tasks.push(tokio::spawn(async move {
                let _permit = sem.acquire_owned().await;
                let r = match lease {
                    Some(lease) => Replicator::start_pinned(&path, replica, cfg, lease, pin).await,
                    None => Replicator::start(&path, replica, cfg).await,
                };
                (path, r)
            }));
        }
        let mut running = Running {
            replicators: Vec::new(),
        };
        let mut first_err = None;
        for t in tasks {
            match t.await {
                Ok((_, Ok(r))) => running.replicators.push(r),
                Ok((db, Err(source))) => {
                    first_err.get_or_insert(DeployError::engine(db, source));
                }
                Err(e) => {
                    first_err.get_or_insert(DeployError::engine(
                        PathBuf::from("?"),
                        EngineError::joined("start", &e),
                    ));
                }
            }
        }
        if let Some(e) = first_err {
            // Stop what already runs; the error is what matters.
            let _ = running.shutdown(Duration::from_secs(10)).await;
            return Err(e);
        }
        self.record_shards().await?;
        Ok(running)
    }
}

fn same_path(a: &Path, b: &Path) -> bool {
    a == b
        || match (
            std::fs::canonicalize(a),
            b.parent().map(std::fs::canonicalize),
        ) {
            (Ok(ca), Some(Ok(pb))) => b.file_name().is_some_and(|n| ca == pb.join(n)),
            _ => {
                a.file_name().is_some()
                    && a.file_name() == b.file_name()
                    && a.parent() == b.parent()
            }
        }
}

/// The replicators of a running deployment.
#[derive(Debug)]
pub struct Running {
    replicators: Vec<Replicator>,
}

impl Running {
    /// A status handle per database, for metrics and `replica status`.
    pub fn monitors(&self) -> Vec<replica_core::engine::Monitor> {
        self.replicators.iter().map(Replicator::monitor).collect()
    }

    /// Waits until everything committed to every database before the call is in the
    /// store: about one sync interval, with no extra upload. Returns each database's
    /// TXID that holds it; the first error (a timeout, a stopped replicator) otherwise.
    pub async fn sync(&self, timeout: Duration) -> Result<Vec<(PathBuf, u64)>, DeployError> {
        let mut tasks = Vec::with_capacity(self.replicators.len());
        for r in &self.replicators {
            let m = r.monitor();
            tasks.push(tokio::spawn(async move {
                let txid = m.sync(timeout).await;
                (m.db().to_path_buf(), txid)
            }));
        }
        let mut out = Vec::with_capacity(tasks.len());
        for t in tasks {
            match t.await {
                Ok((db, Ok(txid))) => out.push((db, txid)),
                Ok((db, Err(e))) => return Err(DeployError::engine(db, e)),
                Err(e) => {
                    return Err(DeployError::engine(
                        PathBuf::from("?"),
                        EngineError::joined("sync", &e),
                    ));
                }
            }
        }
        Ok(out)
    }

    /// Resolves with the database whose replication stopped on its own (an error).
    pub async fn failed(&self) -> PathBuf {
        if self.replicators.is_empty() {
            return std::future::pending().await;
        }
        let futs = self.replicators.iter().map(|r| {
            Box::pin(async move {
                r.failed().await;
                r.db().to_path_buf()
            })
        });
        futures_select_first(futs).await
    }

    /// Flushes and stops every replicator, in parallel; the first error is returned
    /// after all have stopped.
    pub async fn shutdown(self, flush_timeout: Duration) -> Result<(), DeployError> {
        let mut tasks = Vec::new();
        for r in self.replicators {
            let db = r.db().to_path_buf();
            tasks.push(tokio::spawn(async move {
                (db, r.shutdown(flush_timeout).await)
            }));
        }
        let mut first = None;
        for t in tasks {
            match t.await {
                Ok((_, Ok(()))) => {}
                Ok((db, Err(source))) => {
                    warn!(db = %db.display(), error = %Chain(&source), "shutdown");
                    first.get_or_insert(DeployError::engine(db, source));
                }
                Err(e) => {
                    first.get_or_insert(DeployError::engine(
                        PathBuf::from("?"),
                        EngineError::joined("shutdown", &e),
                    ));
                }
            }
        }
        first.map_or(Ok(()), Err)
    }
}

/// The first of several futures to complete.
async fn futures_select_first<F: std::future::Future<Output = PathBuf> + Unpin>(
    futs: impl IntoIterator<Item = F>,
) -> PathBuf {
    let mut futs: Vec<F> = futs.into_iter().collect();
    std::future::poll_fn(move |cx| {
        for f in futs.iter_mut() {
            if let std::task::Poll::Ready(v) = std::pin::Pin::new(f).poll(cx) {
                return std::task::Poll::Ready(v);
            }
        }
        std::task::Poll::Pending
    })
    .await
}
