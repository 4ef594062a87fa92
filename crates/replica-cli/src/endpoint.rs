//! The operator endpoint, on `metrics_addr`: Prometheus metrics (`/metrics`),
//! Kubernetes probes (`/healthz`, `/readyz`), the JSON that `replica status` reads
//! (`/status`), and two actions for local tools: `POST /sync` (`replica sync`) and
//! `POST /verify` (`replica verify --against`). It is meant for the pod or host
//! network: bind it to 127.0.0.1 or a private interface. Everything is read from the replicators' [`Monitor`]s when asked, so a
//! scrape costs a listing of each spool directory and no object-store request.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use replica_core::error::Chain;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use replica_core::engine::status::{histograms, unix_seconds};
use replica_core::engine::{Monitor, State, Status};
use serde::Serialize;
use tracing::{debug, info};

/// What the endpoint reports on: the running replicators, and whether start-up (the
/// boot restore, the leases) is over. Written by the replicate command, read by
/// the endpoint.
#[derive(Debug, Default)]
pub struct Board {
    /// Each replicator, with the replica URL it was given (unredacted: a verify
    /// opens it).
    monitors: RwLock<Vec<(Monitor, String)>>,
    started: AtomicBool,
    /// Per database: the last successful periodic verify, and failed ones so far.
    /// Written by the verify task, read by the scrape.
    verified: Mutex<HashMap<PathBuf, (Option<SystemTime>, u64)>>,
}

impl Board {
    pub fn add(&self, m: Monitor, url: &str) {
        if let Ok(mut v) = self.monitors.write() {
            v.push((m, url.to_owned()));
        }
    }

    /// The replicators and their URLs; only those of `dbs` unless it is empty.
    pub fn replicators(&self, dbs: &[PathBuf]) -> Vec<(Monitor, String)> {
        match self.monitors.read() {
            Ok(v) => v
                .iter()
                .filter(|(m, _)| dbs.is_empty() || dbs.iter().any(|d| same_path(d, m.db())))
                .cloned()
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Start-up is over: every database is replicating (or has failed).
    pub fn set_started(&self) {
        self.started.store(true, Ordering::Release);
    }

    pub fn statuses(&self) -> Vec<Status> {
        match self.monitors.read() {
            Ok(v) => v.iter().map(|(m, _)| m.status()).collect(),
            Err(_) => Vec::new(),
        }
    }

    pub fn verified(&self, db: &std::path::Path, ok: bool) {
        if let Ok(mut v) = self.verified.lock() {
            let e = v.entry(db.to_path_buf()).or_default();
            if ok {
                e.0 = Some(SystemTime::now());
            } else {
                e.1 += 1;
            }
        }
    }

    pub fn started(&self) -> bool {
        self.started.load(Ordering::Acquire)
    }

    /// Ready: started, and no database has stopped replicating.
    fn ready(&self, statuses: &[Status]) -> Result<(), String> {
        if !self.started.load(Ordering::Acquire) {
            return Err("starting: restoring or waiting for the store or the lease".into());
        }
        match statuses.iter().find(|s| s.state == State::Stopped) {
            Some(s) => Err(format!("replication of {} stopped", s.db.display())),
            None => Ok(()),
        }
    }
}

/// Whether two paths name the same database: equal as given, or the same file.
fn same_path(a: &std::path::Path, b: &std::path::Path) -> bool {
    a == b
        || match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
            (Ok(x), Ok(y)) => x == y,
            _ => false,
        }
}

/// The `/status` document.
#[derive(Debug, Serialize)]
pub struct Report {
    pub version: &'static str,
    pub ready: bool,
    pub uptime_seconds: f64,
    pub databases: Vec<Status>,
}

struct Served {
    board: Arc<Board>,
    prometheus: PrometheusHandle,
    since: Instant,
}

/// Starts serving on `addr`; returns the address bound (port 0 picks one).
pub async fn serve(addr: SocketAddr, board: Arc<Board>) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
        format!(
            "cannot listen on {addr} for /metrics; choose another metrics_addr \
             (--metrics-addr) or stop what listens there"
        )
    })?;
    let local = listener
        .local_addr()
        .context("reading the metrics address")?;
    let served = Arc::new(Served {
        board,
        prometheus: recorder()?,
        since: Instant::now(),
    });
    tokio::spawn(async move {
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    debug!(error = %e, "metrics endpoint: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let served = Arc::clone(&served);
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let served = Arc::clone(&served);
                    async move {
                        let resp = if req.method() == Method::POST {
                            act(&served, &req).await
                        } else {
                            route(&served, &req)
                        };
                        Ok::<_, Infallible>(resp)
                    }
                });
                if let Err(e) = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await
                {
                    debug!(error = %e, "metrics endpoint: connection ended");
                }
            });
        }
    });
    info!(addr = %local, "serving /metrics, /healthz, /readyz, /status, and POST /sync and /verify");
    Ok(local)
}

fn recorder() -> anyhow::Result<PrometheusHandle> {
    // Uploads take milliseconds to tens of seconds; a checkpoint barrier should take
    // micro- to milliseconds.
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(histograms::UPLOAD_SECONDS.into()),
            &[
                0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
            ],
        )
        .and_then(|b| {
            b.set_buckets_for_metric(
                Matcher::Full(histograms::CHECKPOINT_BARRIER_SECONDS.into()),
                &[
                    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 1.0,
                ],
            )
        })
        .context("configuring the Prometheus recorder")?
        .install_recorder()
        .context("installing the Prometheus recorder")?;
    describe();
    Ok(handle)
}

fn route(s: &Served, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "GET, or POST /sync and /verify\n".into(),
        );
    }
    match req.uri().path() {
        "/metrics" => {
            let statuses = s.board.statuses();
            let ready = s.board.ready(&statuses).is_ok();
            record(&statuses, ready, s.since);
            if let Ok(v) = s.board.verified.lock() {
                for (db, (last, failures)) in v.iter() {
                    let db = db.display().to_string();
                    if let Some(t) = last {
                        gauge!("replica_verify_last_success_timestamp_seconds", "db" => db.clone())
                            .set(unix_seconds(*t));
                    }
                    counter!("replica_verify_failures_total", "db" => db).absolute(*failures);
                }
            }
            let mut r = text(StatusCode::OK, s.prometheus.render());
            r.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            r
        }
        "/healthz" => text(StatusCode::OK, "ok\n".into()),
        "/readyz" => match s.board.ready(&s.board.statuses()) {
            Ok(()) => text(StatusCode::OK, "ready\n".into()),
            Err(why) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {why}\n"),
            ),
        },
        "/status" => {
            let databases = s.board.statuses();
            let report = Report {
                version: env!("CARGO_PKG_VERSION"),
                ready: s.board.ready(&databases).is_ok(),
                uptime_seconds: s.since.elapsed().as_secs_f64(),
                databases,
            };
            let body = serde_json::to_string_pretty(&report).unwrap_or_default();
            let mut r = text(StatusCode::OK, body + "\n");
            r.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("application/json"),
            );
            r
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; try /metrics, /healthz, /readyz or /status\n".into(),
        ),
    }
}

/// The actions a local tool asks of the process: `POST /sync` (wait until what is
/// committed is stored: `replica sync`) and `POST /verify` (`replica verify
/// --against`). Databases are named by `db=PATH` query parameters.
async fn act(s: &Served, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let mut dbs = Vec::new();
    let (mut now, mut timeout) = (false, Duration::from_secs(60));
    for (k, v) in url::form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes()) {
        match &*k {
            "db" => dbs.push(PathBuf::from(&*v)),
            "now" => now = v == "1",
            "timeout_ms" => match v.parse() {
                Ok(ms) => timeout = Duration::from_millis(ms),
                Err(_) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        format!("timeout_ms={v} is not a number"),
                    );
                }
            },
            _ => return error(StatusCode::BAD_REQUEST, format!("unknown parameter {k}")),
        }
    }
    let replicators = s.board.replicators(&dbs);
    if let Some(missing) = dbs
        .iter()
        .find(|d| !replicators.iter().any(|(m, _)| same_path(d, m.db())))
    {
        return error(
            StatusCode::NOT_FOUND,
            format!("this process does not replicate {}", missing.display()),
        );
    }
    match req.uri().path() {
        "/sync" => {
            let waits: Vec<_> = replicators
                .iter()
                .map(|(m, _)| {
                    let m = m.clone();
                    tokio::spawn(async move {
                        let r = if now { m.sync_now(timeout).await } else { m.sync(timeout).await };
                        match r {
                            Ok(txid) => serde_json::json!({ "db": m.db(), "status": "stored", "txid": format!("{txid:016x}") }),
                            Err(e) => serde_json::json!({ "db": m.db(), "status": "failed", "error": Chain(&e).to_string() }),
                        }
                    })
                })
                .collect();
            let mut databases = Vec::with_capacity(waits.len());
            for w in waits {
                databases.push(w.await.unwrap_or_else(
                    |e| serde_json::json!({ "status": "failed", "error": e.to_string() }),
                ));
            }
            json(
                StatusCode::OK,
                &serde_json::json!({ "databases": databases }),
            )
        }
        "/verify" => {
            let [(monitor, url)] = &replicators[..] else {
                return error(
                    StatusCode::BAD_REQUEST,
                    "name one database: /verify?db=PATH".into(),
                );
            };
            match crate::commands::verify::against_running(monitor, url).await {
                Ok((ok, report)) => {
                    s.board.verified(monitor.db(), ok);
                    json(StatusCode::OK, &report)
                }
                Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")),
            }
        }
        _ => error(StatusCode::NOT_FOUND, "POST /sync or /verify".into()),
    }
}

fn json(status: StatusCode, v: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut r = text(
        status,
        serde_json::to_string_pretty(v).unwrap_or_default() + "\n",
    );
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

fn error(status: StatusCode, msg: String) -> Response<Full<Bytes>> {
    json(status, &serde_json::json!({ "error": msg }))
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r
}

/// Brings every gauge and counter up to the replicators' state.
fn record(statuses: &[Status], ready: bool, since: Instant) {
    gauge!("replica_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    gauge!("replica_uptime_seconds").set(since.elapsed().as_secs_f64());
    gauge!("replica_ready").set(if ready { 1.0 } else { 0.0 });
    let now = unix_seconds(SystemTime::now());
    for s in statuses {
        let db = s.db.display().to_string();
        let g = |name: &'static str, v: f64| gauge!(name, "db" => db.clone()).set(v);
        g("replica_lag_seconds", s.lag_seconds);
        g("replica_local_txid", s.local_txid as f64);
        g("replica_remote_txid", s.remote_txid as f64);
        g("replica_spool_bytes", s.spool_bytes as f64);
        g("replica_spool_files", s.spool_files as f64);
        g("replica_wal_bytes", s.wal_bytes as f64);
        g("replica_disk_full", if s.disk_full { 1.0 } else { 0.0 });
        if let Some(t) = s.last_upload {
            g("replica_last_upload_timestamp_seconds", unix_seconds(t));
        }
        if let Some(t) = s.last_snapshot {
            g(
                "replica_snapshot_age_seconds",
                (now - unix_seconds(t)).max(0.0),
            );
        }
        for lease in ["held", "lapsed", "lost"] {
            let on = if s.lease == lease { 1.0 } else { 0.0 };
            gauge!("replica_lease", "db" => db.clone(), "state" => lease).set(on);
        }
        for state in [State::Replicating, State::Failing, State::Stopped] {
            let on = if s.state == state { 1.0 } else { 0.0 };
            gauge!("replica_state", "db" => db.clone(), "state" => state.as_str()).set(on);
        }
        let c = &s.counters;
        let n = |name: &'static str, v: u64| counter!(name, "db" => db.clone()).absolute(v);
        n("replica_ltx_files_total", c.ltx_files);
        n("replica_snapshots_total", c.snapshots);
        n("replica_checkpoints_total", c.checkpoints);
        n("replica_uploads_total", c.uploads);
        n("replica_upload_bytes_total", c.upload_bytes);
        n("replica_upload_errors_total", c.upload_errors);
        n("replica_compactions_total", c.compactions);
        n("replica_retention_deleted_files_total", c.deleted_files);
        n("replica_disk_full_pauses_total", c.disk_full_pauses);
        for (kind, v) in &c.errors {
            counter!("replica_errors_total", "db" => db.clone(), "kind" => *kind).absolute(*v);
        }
        let r = &c.requests;
        for (op, v) in [
            ("put", r.put),
            ("get", r.get),
            ("head", r.head),
            ("list", r.list),
            ("delete", r.delete),
        ] {
            counter!("replica_store_requests_total", "db" => db.clone(), "op" => op).absolute(v);
        }
    }
}

fn describe() {
    describe_gauge!(
        "replica_build_info",
        "Always 1; the version label says which build runs."
    );
    describe_gauge!(
        "replica_uptime_seconds",
        "Seconds since the endpoint started."
    );
    describe_gauge!(
        "replica_ready",
        "1 once every database replicates (what /readyz says)."
    );
    describe_gauge!(
        "replica_lag_seconds",
        "Age of the oldest captured commit not yet in the store; 0 when in sync."
    );
    describe_gauge!(
        "replica_local_txid",
        "Highest TXID captured into the spool."
    );
    describe_gauge!(
        "replica_remote_txid",
        "Highest TXID in the store, as this process knows it."
    );
    describe_gauge!(
        "replica_spool_bytes",
        "Bytes of spooled files waiting for upload."
    );
    describe_gauge!("replica_spool_files", "Spooled files waiting for upload.");
    describe_gauge!("replica_wal_bytes", "Size of the database's WAL file.");
    describe_gauge!(
        "replica_disk_full",
        "1 while capture is paused because the disk is full."
    );
    describe_counter!(
        "replica_errors_total",
        "Failures of uploads, compactions, retention and capture, by kind."
    );
    describe_gauge!(
        "replica_last_upload_timestamp_seconds",
        "Unix time of the last successful upload."
    );
    describe_gauge!(
        "replica_snapshot_age_seconds",
        "Age of the newest snapshot in the store."
    );
    describe_gauge!(
        "replica_state",
        "1 for the database's current state, else 0."
    );
    describe_gauge!(
        "replica_lease",
        "1 for the lease's state (held, lapsed: writes wait for a renewal, lost), else 0."
    );
    describe_counter!(
        "replica_ltx_files_total",
        "LTX files captured from the WAL."
    );
    describe_counter!("replica_snapshots_total", "Snapshots taken.");
    describe_counter!("replica_checkpoints_total", "Checkpoints run.");
    describe_counter!("replica_uploads_total", "Objects uploaded by the shipper.");
    describe_counter!(
        "replica_upload_bytes_total",
        "Bytes uploaded by the shipper."
    );
    describe_counter!(
        "replica_upload_errors_total",
        "Failed upload attempts (retried)."
    );
    describe_counter!("replica_compactions_total", "Compacted files written.");
    describe_counter!(
        "replica_retention_deleted_files_total",
        "Files removed by retention."
    );
    describe_counter!(
        "replica_disk_full_pauses_total",
        "Times capture paused because the local disk was full."
    );
    describe_counter!(
        "replica_store_requests_total",
        "Object-store requests, by operation."
    );
    describe_gauge!(
        "replica_verify_last_success_timestamp_seconds",
        "Unix time of the last periodic verify that restored the replica (verify_interval)."
    );
    describe_counter!(
        "replica_verify_failures_total",
        "Periodic verifies that failed."
    );
    describe_histogram!(
        histograms::UPLOAD_SECONDS,
        "Duration of successful uploads."
    );
    describe_histogram!(
        histograms::CHECKPOINT_BARRIER_SECONDS,
        "Time the checkpoint barrier held SQLite's write lock."
    );
}
