use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use replica::{Deployment, Mode};
use replica_core::engine::{EngineConfig, Replicator};
use replica_core::lease::LeaseConfig;
use replica_core::replica::Replica;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tracing::{error, info, warn};

use crate::backends;
use crate::child;
use crate::cli::ReplicateArgs;
use crate::endpoint::{self, Board};
use crate::exit::usage;
use crate::heartbeat;

struct Signals {
    int: Signal,
    term: Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Self> {
        Ok(Self {
            int: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
            term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
        })
    }

    /// The next SIGINT or SIGTERM, as its number.
    async fn next(&mut self) -> i32 {
        tokio::select! {
            _ = self.int.recv() => libc::SIGINT,
            _ = self.term.recv() => libc::SIGTERM,
        }
    }
}

pub async fn run(a: ReplicateArgs) -> anyhow::Result<ExitCode> {
    let mut signals = Signals::install()?;
    match (&a.db_path, &a.replica_url, &a.config) {
        (Some(db), Some(url), None) => run_single(&a, db, url, &mut signals).await,
        (Some(_), _, Some(cfg)) => Err(usage(format!(
            "replicate takes DB_PATH and REPLICA_URL, or --config FILE, not both (the config \
             is {}{}); drop one",
            cfg.display(),
            if std::env::var_os("REPLICA_CONFIG").is_some() {
                ", from REPLICA_CONFIG"
            } else {
                ""
            }
        ))),
        (None, None, Some(cfg)) => run_config(&a, cfg, &mut signals).await,
        (Some(_), None, _) => Err(usage("replicate needs a REPLICA_URL after DB_PATH")),
        _ => Err(usage(
            "replicate needs DB_PATH and REPLICA_URL, or --config FILE (or REPLICA_CONFIG)",
        )),
    }
}

async fn run_single(
    a: &ReplicateArgs,
    db: &std::path::Path,
    url: &str,
    signals: &mut Signals,
) -> anyhow::Result<ExitCode> {
    let board = Arc::new(Board::default());
    if let Some(addr) = a.metrics_addr {
        endpoint::serve(addr, Arc::clone(&board)).await?;
    }
    if let Some(hb) = &a.heartbeat_url {
        let every = a.heartbeat_interval.unwrap_or(Duration::from_secs(60));
        heartbeat::spawn(hb.clone(), every, Arc::clone(&board))?;
    }
    let client = backends::open(url).await?;
    let cfg = EngineConfig {
        sync_interval: a.sync_interval,
        snapshot_interval: a.snapshot_interval,
        retention: a.retention,
        levels: a.levels,
        l0_retention: a.l0_retention,
        spool_limit: a.spool_limit,
        lease: LeaseConfig {
            ttl: a.lease_ttl.unwrap_or(LeaseConfig::default().ttl),
            wait: a.lease_wait.unwrap_or(LeaseConfig::default().wait),
        },
        take_over_replica: a.take_over_replica,
        snapshot_at_start: a.force_snapshot,
        ..EngineConfig::default()
    };
    // As with --config: a database on local disk need not wait for the store. Its
    // WAL is held from now on, so nothing the service commits meanwhile is lost.
    let mut child = None;
    let mut pin = None;
    if let Some(cmd) = a.exec.as_deref()
        && db.exists()
    {
        pin = Some(
            Replicator::pin(db, &cfg)
                .await
                .with_context(|| format!("cannot replicate {}", db.display()))?,
        );
        info!(db = %db.display(), "the database is present locally: starting the service now; replication starts once the store answers");
        child = Some(child::spawn(cmd)?);
    }
    let replica = Replica::new(client);
    let start = async {
        let lease = Replicator::take_lease(db, &replica, cfg.lease).await?;
        Replicator::start_pinned(db, replica.clone(), cfg, lease, pin).await
    };
    let started = start_beside(
        async {
            start
                .await
                .with_context(|| format!("cannot replicate {}", db.display()))
        },
        &mut child,
        signals,
        |sig| {
            anyhow::anyhow!(
                "stopped by signal {sig} before replication of {} started",
                db.display()
            )
        },
    )
    .await?;
    let replicator = match started {
        Ok(r) => r,
        Err(code) => return Ok(code),
    };
    let monitor = replicator.monitor();
    board.add(monitor.clone(), url);
    board.set_started();
    info!(
        version = env!("CARGO_PKG_VERSION"),
        sync_interval = %humantime::format_duration(a.sync_interval),
        snapshot_interval = %humantime::format_duration(a.snapshot_interval),
        retention = %humantime::format_duration(a.retention),
        "replica started"
    );
    summaries(Arc::clone(&board));
    if let Some(every) = a.verify_interval {
        super::verify::periodic(every, Arc::clone(&board));
    }
    if a.once {
        flush(signals, replicator.shutdown(a.flush_timeout))
            .await
            .with_context(|| format!("replication of {} failed", db.display()))?;
        log_stopped(&[monitor]);
        return Ok(ExitCode::SUCCESS);
    }
    if child.is_none() {
        child = a.exec.as_deref().map(child::spawn).transpose()?;
    }
    let mut failed = false;
    let mut code = 0u8;
    tokio::select! {
        sig = signals.next() => {
            info!(sig, "signal: stopping");
            if let Some(c) = &child { child::signal(c, sig); }
        }
        _ = replicator.failed() => failed = true,
        st = wait_child(&mut child) => code = child::exit_code(st?),
    }
    if let Some(c) = child.as_mut() {
        if failed {
            child::signal(c, libc::SIGTERM);
        }
        code = child::exit_code(c.wait().await?);
    }
    flush(signals, replicator.shutdown(a.flush_timeout))
        .await
        .with_context(|| format!("replication of {} failed", db.display()))?;
    log_stopped(&[monitor]);
    if failed {
        anyhow::bail!("replication of {} stopped unexpectedly", db.display());
    }
    Ok(ExitCode::from(code))
}

async fn run_config(
    a: &ReplicateArgs,
    file: &std::path::Path,
    signals: &mut Signals,
) -> anyhow::Result<ExitCode> {
    let mut dep = Deployment::from_config(file)?;
    dep.config.take_over_replica |= a.take_over_replica;
    dep.config.snapshot_at_start = a.force_snapshot;
    let board = Arc::new(Board::default());
    if let Some(addr) = a.metrics_addr.or(dep.config.metrics_addr) {
        endpoint::serve(addr, Arc::clone(&board)).await?;
    }
    if let Some(hb) = a.heartbeat_url.clone().or(dep.config.heartbeat_url.clone()) {
        let every = a
            .heartbeat_interval
            .unwrap_or(dep.config.heartbeat_interval);
        heartbeat::spawn(hb, every, Arc::clone(&board))?;
    }
    if let Some(ttl) = a.lease_ttl {
        dep.config.lease.ttl = ttl;
    }
    if let Some(wait) = a.lease_wait {
        dep.config.lease.wait = wait;
    }
    if dep.config.mode == Mode::Embedded {
        return Err(usage(format!(
            "{} sets replication.mode: embedded, so the service replicates its databases in-process; \
             a sidecar would be a second replicator on the same files. Run the service directly, or set mode: sidecar",
            file.display()
        )));
    }
    if !dep.config.enabled {
        let Some(cmd) = a.exec.as_deref() else {
            return Err(usage(format!(
                "replication is disabled in {} (replication.enabled is false) and there is no --exec command to run",
                file.display()
            )));
        };
        warn!(config = %file.display(), "replication is disabled: running the command WITHOUT replication");
        let mut c = child::spawn(cmd)?;
        let status = loop {
            tokio::select! {
                sig = signals.next() => child::signal(&c, sig),
                st = c.wait() => break st?,
            }
        };
        return Ok(ExitCode::from(child::exit_code(status)));
    }

    // With every database on local disk, the service need not wait for the store:
    // their WALs are held until replication starts, so nothing is lost meanwhile.
    let mut child = None;
    if let Some(cmd) = a.exec.as_deref()
        && dep.pin_present().await?
    {
        info!(
            "every database is present locally: starting the service now; replication starts once the store answers"
        );
        child = Some(child::spawn(cmd)?);
    }
    let prepare = async {
        // Nothing is written anywhere before the shard guard has passed.
        dep.check_shards().await?;
        if dep.config.restore_on_boot {
            let restored = dep.restore_missing().await?;
            info!(databases = restored.len(), "boot restore done");
        }
        dep.start().await
    };
    // The lease wait and the restore stop at a signal; a restore dropped halfway
    // removes its work directory.
    let prepared = start_beside(
        async { prepare.await.map_err(anyhow::Error::from) },
        &mut child,
        signals,
        |sig| anyhow::anyhow!(
            "stopped by signal {sig} before replication started (waiting for the store or the lease, or restoring); nothing was left half-restored"
        ),
    )
    .await?;
    let running = match prepared {
        Ok(r) => r,
        Err(code) => return Ok(code),
    };
    let monitors = running.monitors();
    for m in &monitors {
        let url = dep
            .config
            .databases
            .iter()
            .find(|d| d.path == m.db())
            .map(|d| d.url.as_str());
        board.add(m.clone(), url.unwrap_or_default());
    }
    board.set_started();
    info!(
        version = env!("CARGO_PKG_VERSION"),
        config = %file.display(),
        databases = monitors.len(),
        url = dep.config.replica_url.as_deref().unwrap_or_default(),
        sync_interval = %humantime::format_duration(dep.config.sync_interval),
        snapshot_interval = %humantime::format_duration(dep.config.snapshot_interval),
        retention = %humantime::format_duration(dep.config.retention),
        "replica started"
    );
    summaries(Arc::clone(&board));
    if let Some(every) = a.verify_interval.or(dep.config.verify_interval) {
        super::verify::periodic(every, Arc::clone(&board));
    }
    if a.once {
        flush(signals, running.shutdown(a.flush_timeout)).await?;
        log_stopped(&monitors);
        return Ok(ExitCode::SUCCESS);
    }
    if child.is_none() {
        child = a.exec.as_deref().map(child::spawn).transpose()?;
    }
    let mut failed = None;
    let mut code = 0u8;
    tokio::select! {
        sig = signals.next() => {
            info!(sig, "signal: stopping");
            if let Some(c) = &child { child::signal(c, sig); }
        }
        db = running.failed() => failed = Some(db),
        st = wait_child(&mut child) => code = child::exit_code(st?),
    }
    if let Some(c) = child.as_mut() {
        if let Some(db) = &failed {
            error!(db = %db.display(), "replication failed; stopping the service");
            child::signal(c, libc::SIGTERM);
        }
        loop {
            tokio::select! {
                sig = signals.next() => child::signal(c, sig),
                st = c.wait() => { code = child::exit_code(st?); break; }
            }
        }
    }
    flush(signals, running.shutdown(a.flush_timeout)).await?;
    log_stopped(&monitors);
    if let Some(db) = failed {
        anyhow::bail!("replication of {} stopped unexpectedly", db.display());
    }
    Ok(ExitCode::from(code))
}

/// Waits for replication to start while a service started early may already run.
/// A signal or a failure to start stops that service and is the error; the service
/// exiting first ends the run with its exit code (`Ok(Err(code))`).
async fn start_beside<T>(
    start: impl std::future::Future<Output = anyhow::Result<T>>,
    child: &mut Option<tokio::process::Child>,
    signals: &mut Signals,
    stopped: impl FnOnce(i32) -> anyhow::Error,
) -> anyhow::Result<Result<T, ExitCode>> {
    let started = tokio::select! {
        r = start => r,
        sig = signals.next() => Err(stopped(sig)),
        st = wait_child(child) => {
            let code = child::exit_code(st?);
            warn!(code, "the service exited before replication started");
            return Ok(Err(ExitCode::from(code)));
        }
    };
    match started {
        Ok(r) => Ok(Ok(r)),
        Err(e) => {
            if let Some(c) = child.as_mut() {
                error!("replication could not start; stopping the service");
                child::signal(c, libc::SIGTERM);
                let _ = c.wait().await;
            }
            Err(e)
        }
    }
}

/// How often a one-line summary per database is logged at INFO (per-sync lines are
/// debug).
const SUMMARY_EVERY: Duration = Duration::from_secs(300);

/// Logs, every [`SUMMARY_EVERY`], what each database did since the last summary.
fn summaries(board: Arc<Board>) {
    tokio::spawn(async move {
        let mut last: std::collections::HashMap<std::path::PathBuf, (u64, u64)> =
            std::collections::HashMap::new();
        loop {
            tokio::time::sleep(SUMMARY_EVERY).await;
            for s in board.statuses() {
                let c = &s.counters;
                let (uploads, bytes) = last.get(&s.db).copied().unwrap_or_default();
                info!(
                    db = %s.db.display(),
                    state = s.state.as_str(),
                    txid = format!("{:016x}", s.remote_txid),
                    lag_s = format!("{:.1}", s.lag_seconds),
                    uploads = c.uploads - uploads,
                    upload_bytes = c.upload_bytes - bytes,
                    spool_files = s.spool_files,
                    "summary of the last {} min",
                    SUMMARY_EVERY.as_secs() / 60
                );
                last.insert(s.db.clone(), (c.uploads, c.upload_bytes));
            }
        }
    });
}

/// One line per database after a clean flush: where its replica stands.
fn log_stopped(monitors: &[replica_core::engine::Monitor]) {
    for m in monitors {
        let s = m.status();
        info!(
            db = %s.db.display(),
            txid = format!("{:016x}", s.remote_txid),
            uploads = s.counters.uploads,
            upload_bytes = s.counters.upload_bytes,
            "stopped: everything committed is in the replica"
        );
    }
}

/// Waits for the child, or forever when there is none.
async fn wait_child(
    child: &mut Option<tokio::process::Child>,
) -> std::io::Result<std::process::ExitStatus> {
    match child {
        Some(c) => c.wait().await,
        None => std::future::pending().await,
    }
}

/// Runs the final flush; a signal during it abandons the flush (what is spooled stays
/// for the next start) and exits 1.
async fn flush<E>(
    signals: &mut Signals,
    shutdown: impl std::future::Future<Output = Result<(), E>>,
) -> anyhow::Result<()>
where
    E: std::error::Error + Send + Sync + 'static,
{
    tokio::select! {
        r = shutdown => Ok(r?),
        _ = signals.next() => {
            warn!("second signal: stopping without finishing the flush");
            anyhow::bail!("flush abandoned on a second signal; spooled changes are uploaded on the next start")
        }
        _ = tokio::time::sleep(Duration::from_secs(24 * 3600)) => unreachable!(),
    }
}
