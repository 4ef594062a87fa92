//! Command-line interface. Names here are a contract other tools rely on.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use replica_core::engine::Levels;
use replica_core::file_mode::FileMode;
use replica_core::restore::v3::GenerationId;

#[derive(Debug, Parser)]
#[command(
    name = "replica",
    about = "Continuously replicate SQLite databases to object storage",
    version
)]
pub struct Cli {
    /// More log output (-v debug, -vv trace); REPLICA_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Only warnings and errors.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// Log level (error, warn, info, debug, trace) or a filter such as
    /// "info,replica_core=debug"; wins over -v/-q; REPLICA_LOG wins over it.
    #[arg(long, global = true, value_name = "LEVEL")]
    pub log_level: Option<String>,
    /// Log lines as text or as one JSON object per line (for log shippers).
    #[arg(long, global = true, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Replicate a database continuously until SIGINT/SIGTERM, then flush and exit.
    #[command(after_help = "Examples:
  replica replicate ./app.db file:///backups/app
  replica replicate ./app.db s3://bucket/app --metrics-addr 127.0.0.1:9090
  replica replicate --config replica.yml --exec \"./server --port 8080\"
  replica replicate --once --force-snapshot ./app.db s3://bucket/app")]
    Replicate(Box<ReplicateArgs>),
    /// Restore a database from a replica.
    #[command(after_help = "Examples:
  replica restore -o ./app.db file:///backups/app
  replica restore -o ./app.db --timestamp 2026-12-01T09:30:00Z s3://bucket/app
  replica restore -o ./app.db --dry-run --json s3://bucket/app
  replica restore -o ./replica.db --follow s3://bucket/app
  replica restore --config replica.yml")]
    Restore(RestoreArgs),
    /// Show where replication stands: positions, lag, spool, snapshots, restorable
    /// window. Asks the running `replicate` process (its metrics address), else reads
    /// the spool and the replica.
    #[command(after_help = "Examples:
  replica status --config replica.yml
  replica status ./app.db s3://bucket/app --json
  replica status --addr 127.0.0.1:9090")]
    Status(StatusArgs),
    /// Prove a replica restores: restore it into a temporary directory with every
    /// check (CRCs, chain, SQLite's integrity_check), report, delete. Exit 0 OK, 1
    /// failure.
    #[command(after_help = "Examples:
  replica verify s3://bucket/app
  replica verify --txid 00000000000000a3 --json s3://bucket/app
  replica verify --against ./app.db --addr 127.0.0.1:9090 s3://bucket/app")]
    Verify(VerifyArgs),
    /// Wait until everything committed so far is in the store: asks the running
    /// `replicate` process, which answers after its next upload (about one sync
    /// interval; no extra upload unless --now). Exit 0 when stored, 1 otherwise.
    #[command(after_help = "Examples:
  replica sync --addr 127.0.0.1:9090
  replica sync --config replica.yml --db data/shard_0.db --timeout 10s")]
    Sync(SyncArgs),
    /// List the LTX files in a replica.
    #[command(after_help = "Examples:
  replica ltx s3://bucket/app
  replica ltx --level 0 --json file:///backups/app")]
    Ltx(LtxArgs),
    /// List the Litestream 0.3 generations in a replica: time ranges, snapshots, WAL.
    #[command(after_help = "Examples:
  replica generations s3://bucket/app-litestream-0.3")]
    Generations(GenerationsArgs),
    /// Print the version, the commit and the backends built in.
    Version,
    /// Print a shell completion script: `replica completions bash > /etc/bash_completion.d/replica`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Args)]
pub struct ReplicateArgs {
    /// The SQLite database (created in WAL mode if missing). Not with --config.
    pub db_path: Option<PathBuf>,
    /// Where to replicate to, e.g. file:///backups/db. Not with --config.
    pub replica_url: Option<String>,
    /// Replicate every database of a deployment config file (also REPLICA_CONFIG):
    /// restore missing ones first, then replicate them all.
    #[arg(long, env = "REPLICA_CONFIG")]
    pub config: Option<PathBuf>,
    /// Run this command once replication runs; signals go to it, and replica exits
    /// with its exit code after a final flush. Split into words as a shell would
    /// (quotes respected) but not run by one: for `&&`, pipes or `$VAR`, give
    /// `sh -c '…'` or a script.
    #[arg(long)]
    pub exec: Option<String>,
    /// How often captured WAL frames are shipped.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub sync_interval: Duration,
    /// How often a full snapshot is written.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub snapshot_interval: Duration,
    /// How long history is kept.
    #[arg(long, default_value = "72h", value_parser = parse_duration)]
    pub retention: Duration,
    /// Compaction intervals of levels 1, 2, … (comma-separated), or "none".
    #[arg(long, default_value = "30s,5m,1h", value_parser = parse_levels)]
    pub levels: Levels,
    /// How long per-sync (L0) files are kept once compacted: the span of per-sync
    /// point-in-time recovery.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub l0_retention: Duration,
    /// Spool size that triggers a warning when uploads keep failing (e.g. 512MiB).
    #[arg(long, default_value = "1GiB", value_parser = parse_size)]
    pub spool_limit: u64,
    /// How long to keep retrying uploads at shutdown.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub flush_timeout: Duration,
    /// Lifetime of the replica's lease (one writer per replica), renewed every third
    /// of it [default: 30s, or replication.lease_ttl]
    #[arg(long, value_parser = parse_duration)]
    pub lease_ttl: Option<Duration>,
    /// How long to wait for another replicator to release the lease before giving
    /// up [default: 5m, or replication.lease_wait]
    #[arg(long, value_parser = parse_duration_or_zero)]
    pub lease_wait: Option<Duration>,
    /// Replicate even to a replica that records another database, making this one
    /// its latest state.
    #[arg(long)]
    pub take_over_replica: bool,
    /// Capture and upload everything committed so far, then exit 0 (a backup from
    /// cron, or a final sync before a migration). Not with --exec.
    #[arg(long, conflicts_with = "exec")]
    pub once: bool,
    /// Take a snapshot of every database as replication starts (with --once: a
    /// backup that restores from one snapshot plus nothing else).
    #[arg(long)]
    pub force_snapshot: bool,
    /// GET this URL every --heartbeat-interval while every database replicates with
    /// less than a minute of lag (a dead man's switch, e.g. healthchecks.io)
    /// [default: replication.heartbeat_url]
    #[arg(long)]
    pub heartbeat_url: Option<String>,
    /// How often the heartbeat is sent [default: 1m, or replication.heartbeat_interval]
    #[arg(long, value_parser = parse_duration)]
    pub heartbeat_interval: Option<Duration>,
    /// Restore each database's replica into a temporary copy beside it every this
    /// often, with the full integrity check (see `replica verify`); the outcome is
    /// logged and exported as replica_verify_last_success_timestamp_seconds
    /// [default: off, or replication.verify_interval]
    #[arg(long, value_parser = parse_duration)]
    pub verify_interval: Option<Duration>,
    /// Serve /metrics (Prometheus), /healthz, /readyz and /status on this address,
    /// e.g. 127.0.0.1:9090 or :9090 [default: replication.metrics_addr]
    #[arg(long, value_parser = replica::config::parse_addr)]
    pub metrics_addr: Option<std::net::SocketAddr>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum IntegrityArg {
    None,
    Quick,
    Full,
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// Where to write the restored database; never overwritten. Not with --config.
    #[arg(short = 'o', long = "output")]
    pub output: Option<PathBuf>,
    /// The replica URL to restore from; with --config, the configured database paths to
    /// restore (all when none are given).
    pub targets: Vec<String>,
    /// Restore the databases of a deployment config file (also REPLICA_CONFIG), each to
    /// its configured path, in parallel.
    #[arg(long, env = "REPLICA_CONFIG")]
    pub config: Option<PathBuf>,
    /// Restore the state as of this time (RFC 3339, e.g. 2026-11-24T07:18:55Z).
    #[arg(long, conflicts_with = "txid", value_parser = parse_timestamp)]
    pub timestamp: Option<std::time::SystemTime>,
    /// Restore up to and including this TXID (hex).
    #[arg(long, value_parser = parse_txid)]
    pub txid: Option<u64>,
    /// Restore from this Litestream 0.3 generation (16 hex digits; see `replica
    /// generations`), its latest state or the one at --timestamp/--index.
    #[arg(long, conflicts_with = "txid", value_parser = parse_generation)]
    pub generation: Option<GenerationId>,
    /// With --generation: up to and including this WAL index (hex).
    #[arg(long, requires = "generation", conflicts_with = "timestamp", value_parser = parse_wal_index)]
    pub index: Option<u32>,
    /// Exit 0 without doing anything if the output already exists.
    #[arg(long)]
    pub if_db_not_exists: bool,
    /// Exit 0 without doing anything if the replica has no files.
    #[arg(long)]
    pub if_replica_exists: bool,
    /// Downloads in flight at once.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub parallelism: u16,
    /// Check run on the restored database before it is moved into place.
    #[arg(long, value_enum, default_value = "quick")]
    pub integrity_check: IntegrityArg,
    /// Permission bits of the restored database, in octal (e.g. 0640). Default: the
    /// source database's, as the replica records them, else 0600.
    #[arg(long, value_parser = FileMode::parse)]
    pub mode: Option<FileMode>,
    /// Print the plan (files, levels, bytes, the restore point's TXID and time) and
    /// write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the result (or with --dry-run the plan) as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// After the restore, keep applying the replica's new files until SIGINT/SIGTERM:
    /// a read replica that applications query while it follows. A restarted follower
    /// resumes from its position.
    #[arg(short = 'f', long, conflicts_with_all = ["txid", "timestamp", "generation", "dry_run", "if_db_not_exists"])]
    pub follow: bool,
    /// How often a follower polls the replica.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration, requires = "follow")]
    pub follow_interval: Duration,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The database. Not with --config.
    pub db_path: Option<PathBuf>,
    /// Its replica URL. Not with --config.
    pub replica_url: Option<String>,
    /// The deployment config file (also REPLICA_CONFIG): every database in it.
    #[arg(long, env = "REPLICA_CONFIG")]
    pub config: Option<PathBuf>,
    /// The running process's --metrics-addr [default: replication.metrics_addr].
    #[arg(long, value_parser = replica::config::parse_addr)]
    pub addr: Option<std::net::SocketAddr>,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    pub replica_url: String,
    /// Verify the state up to and including this TXID (hex) instead of the latest.
    #[arg(long, value_parser = parse_txid)]
    pub txid: Option<u64>,
    /// Verify the state as of this time (RFC 3339).
    #[arg(long, conflicts_with = "txid", value_parser = parse_timestamp)]
    pub timestamp: Option<std::time::SystemTime>,
    /// Where the temporary restore goes [default: the system's temporary directory].
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// Also compare the restored content, table by table, with this live database
    /// at the same TXID. While `replicate` runs for it, give that process's --addr;
    /// otherwise nothing may be replicating it (the lease is checked).
    #[arg(long, value_name = "DB_PATH", conflicts_with_all = ["txid", "timestamp"])]
    pub against: Option<PathBuf>,
    /// The running replicate process's metrics address (--metrics-addr): it fixes a
    /// point both sides hold while the application writes, and runs the comparison.
    #[arg(long, requires = "against", value_parser = replica::config::parse_addr)]
    pub addr: Option<std::net::SocketAddr>,
    /// Machine-readable report.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct SyncArgs {
    /// The running replicate process's metrics address (--metrics-addr)
    /// [default: replication.metrics_addr of --config].
    #[arg(long, value_parser = replica::config::parse_addr)]
    pub addr: Option<std::net::SocketAddr>,
    /// The deployment config file (also REPLICA_CONFIG), for its metrics_addr.
    #[arg(long, env = "REPLICA_CONFIG")]
    pub config: Option<PathBuf>,
    /// Only this database (repeatable) [default: every database of the process].
    #[arg(long = "db", value_name = "DB_PATH")]
    pub dbs: Vec<PathBuf>,
    /// Upload at once instead of at the next sync interval (one extra upload).
    #[arg(long)]
    pub now: bool,
    /// Give up after this long (exit 1).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct LtxArgs {
    pub replica_url: String,
    /// A level 0-9, or "all".
    #[arg(long, default_value = "all", value_parser = parse_level)]
    pub level: LevelSel,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct GenerationsArgs {
    pub replica_url: String,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

fn parse_generation(s: &str) -> Result<GenerationId, String> {
    GenerationId::parse(s)
        .ok_or_else(|| format!("{s:?} is not a generation name (16 lowercase hex digits)"))
}

fn parse_wal_index(s: &str) -> Result<u32, String> {
    let h = s.strip_prefix("0x").unwrap_or(s);
    match u32::from_str_radix(h, 16) {
        Ok(v) if v <= 0x7fff_ffff => Ok(v),
        _ => Err(format!(
            "{s:?} is not a hexadecimal WAL index such as 0000002a"
        )),
    }
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d =
        humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 100ms, 1s, 1h, 72h)"))?;
    if d.is_zero() {
        return Err("must be greater than zero".into());
    }
    Ok(d)
}

/// A duration that may be zero ("do not wait").
fn parse_duration_or_zero(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 0s, 30s, 5m)"))
}

fn parse_levels(s: &str) -> Result<Levels, String> {
    if s == "none" {
        return Ok(Levels::NONE);
    }
    let intervals = s
        .split(',')
        .map(|p| parse_duration(p.trim()))
        .collect::<Result<Vec<_>, _>>()?;
    Levels::new(&intervals).map_err(|e| e.to_string())
}

/// Bytes, with an optional binary suffix: 1048576, 512KiB, 64MiB, 1GiB.
fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let shift = match unit.trim() {
        "" | "B" => 0,
        "K" | "KiB" => 10,
        "M" | "MiB" => 20,
        "G" | "GiB" => 30,
        _ => {
            return Err(format!(
                "{s:?} is not a size; examples: 1048576, 64MiB, 1GiB"
            ));
        }
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
        .ok_or_else(|| format!("{s:?} is not a size; examples: 1048576, 64MiB, 1GiB"))
}

fn parse_timestamp(s: &str) -> Result<std::time::SystemTime, String> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map_err(|e| {
            // A time without an offset is ambiguous: say how to mean UTC.
            let no_offset = s.contains('T')
                && !s.ends_with(['Z', 'z'])
                && !s.rsplit('T').next().is_some_and(|t| t.contains(['+', '-']));
            if no_offset {
                format!(
                    "{s:?} has no UTC offset; append Z for UTC ({s}Z) or give one such as +02:00"
                )
            } else {
                format!("{e}; expected RFC 3339 such as 2026-11-24T07:18:55Z")
            }
        })?;
    Ok(t.into())
}

fn parse_txid(s: &str) -> Result<u64, String> {
    let h = s.strip_prefix("0x").unwrap_or(s);
    match u64::from_str_radix(h, 16) {
        Ok(0) => Err("TXIDs start at 1".into()),
        Ok(v) if h.len() <= 16 => Ok(v),
        _ => Err(format!(
            "{s:?} is not a hexadecimal TXID such as 000000000000002a"
        )),
    }
}

/// One level, or all of them.
#[derive(Debug, Clone, Copy)]
pub struct LevelSel(pub Option<u8>);

fn parse_level(s: &str) -> Result<LevelSel, String> {
    if s == "all" {
        return Ok(LevelSel(None));
    }
    match s.parse::<u8>() {
        Ok(l) if l <= 9 => Ok(LevelSel(Some(l))),
        _ => Err(format!("{s:?} is not a level; use 0-9 or all")),
    }
}
