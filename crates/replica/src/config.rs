//! The deployment config file: which databases to replicate, where, and how.
//!
//! ```yaml
//! replication:
//!   enabled: true
//!   mode: sidecar            # sidecar | embedded
//!   replica_url: s3://my-backups/prod
//!   sync_interval: 1s
//!   restore_on_boot: true
//!   snapshot_interval: 1h
//!   retention: 72h
//!   levels: [30s, 5m, 1h]    # compaction intervals of L1, L2, …; [] for none
//!   l0_retention: 1h         # per-sync point-in-time recovery for this long
//!   restore_mode: "0640"     # mode of restored databases (default: the source's)
//!   lease_ttl: 30s           # one writer per replica: the lease's lifetime
//!   lease_wait: 5m           # how long to wait for another holder to let go
//!   take_over_replica: false # replace a replica that records another database
//!   metrics_addr: 127.0.0.1:9090  # /metrics, /healthz, /readyz, /status (":9090": all interfaces)
//!   heartbeat_url: https://hc-ping.com/…   # GET while every database is in sync
//!   heartbeat_interval: 1m
//!   verify_interval: 24h     # restore each replica beside its database and check it
//! shards:
//!   count: 8
//!   path: ./data/shard_{index}.db
//! databases:
//!   - ./data/dlq.db
//! ```
//!
//! `${VAR}` is replaced by the environment variable before parsing; relative paths are
//! resolved against the config file's directory; unknown keys are errors.

use std::path::{Path, PathBuf};
use std::time::Duration;

use replica_core::engine::Levels;
use replica_core::file_mode::FileMode;
use replica_core::lease::LeaseConfig;
use serde::Deserialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Sidecar,
    Embedded,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path}: {detail}")]
    Parse { path: PathBuf, detail: String },
    #[error("config file {path}: `{key}` {detail}")]
    Invalid {
        path: PathBuf,
        key: String,
        detail: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    replication: RawReplication,
    shards: Option<RawShards>,
    #[serde(default)]
    databases: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReplication {
    enabled: Option<bool>,
    mode: Option<Mode>,
    replica_url: Option<String>,
    sync_interval: Option<String>,
    restore_on_boot: Option<bool>,
    snapshot_interval: Option<String>,
    retention: Option<String>,
    levels: Option<Vec<String>>,
    l0_retention: Option<String>,
    restore_mode: Option<String>,
    lease_ttl: Option<String>,
    lease_wait: Option<String>,
    take_over_replica: Option<bool>,
    metrics_addr: Option<String>,
    heartbeat_url: Option<String>,
    heartbeat_interval: Option<String>,
    verify_interval: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawShards {
    count: u32,
    path: String,
}

/// One database of the deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Database {
    pub path: PathBuf,
    /// `<replica_url>/<file stem>`, the path Litestream configs use too.
    pub url: String,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub file: PathBuf,
    pub enabled: bool,
    pub mode: Mode,
    pub replica_url: Option<String>,
    pub sync_interval: Duration,
    pub snapshot_interval: Duration,
    pub retention: Duration,
    pub levels: Levels,
    pub l0_retention: Duration,
    pub restore_on_boot: bool,
    /// Permission bits of restored databases; `None`: the source database's.
    pub restore_mode: Option<FileMode>,
    pub lease: LeaseConfig,
    pub take_over_replica: bool,
    /// Where the operator endpoint listens, if anywhere.
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// A URL to GET every `heartbeat_interval` while every database is in sync.
    pub heartbeat_url: Option<String>,
    pub heartbeat_interval: Duration,
    /// Take a snapshot of every database when replication starts. Not a config key:
    /// `replicate --force-snapshot` sets it.
    pub snapshot_at_start: bool,
    /// How often `replicate` verifies each replica by restoring it (off when `None`).
    pub verify_interval: Option<Duration>,
    pub shard_count: Option<u32>,
    pub databases: Vec<Database>,
}

impl Config {
    pub fn load(file: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(file).map_err(|source| ConfigError::Read {
            path: file.to_path_buf(),
            source,
        })?;
        Self::parse(file, &text)
    }

    /// Parses `text` as if read from `file` (whose directory anchors relative paths).
    pub fn parse(file: &Path, text: &str) -> Result<Config, ConfigError> {
        let invalid = |key: &str, detail: String| ConfigError::Invalid {
            path: file.to_path_buf(),
            key: key.to_owned(),
            detail,
        };
        let expanded = expand_env(text).map_err(|var| {
            invalid(
                &format!("${{{var}}}"),
                "names an environment variable that is not set".into(),
            )
        })?;
        let raw: RawConfig = serde_norway::from_str(&expanded).map_err(|e| ConfigError::Parse {
            path: file.to_path_buf(),
            detail: e.to_string(),
        })?;
        let r = raw.replication;
        // Zero where it means "not at all" (lease_wait), otherwise refused.
        let any_duration = |key: &str, v: Option<String>, default: Duration| match v {
            None => Ok(default),
            Some(s) => humantime::parse_duration(&s).map_err(|e| {
                invalid(
                    key,
                    format!("is not a duration ({e}); examples: 100ms, 1s, 1h, 72h"),
                )
            }),
        };
        let duration = |key: &str, v: Option<String>, default: Duration| match any_duration(
            key, v, default,
        )? {
            d if d.is_zero() => Err(invalid(key, "must be greater than zero".into())),
            d => Ok(d),
        };
        let enabled = r.enabled.unwrap_or(false);
        let sync_interval = duration(
            "replication.sync_interval",
            r.sync_interval,
            Duration::from_secs(1),
        )?;
        let snapshot_interval = duration(
            "replication.snapshot_interval",
            r.snapshot_interval,
            Duration::from_secs(3600),
        )?;
        let retention = duration(
            "replication.retention",
            r.retention,
            Duration::from_secs(72 * 3600),
        )?;
        let l0_retention = duration(
            "replication.l0_retention",
            r.l0_retention,
            Duration::from_secs(3600),
        )?;
        let default_lease = LeaseConfig::default();
        let lease = LeaseConfig {
            ttl: duration("replication.lease_ttl", r.lease_ttl, default_lease.ttl)?,
            wait: any_duration("replication.lease_wait", r.lease_wait, default_lease.wait)?,
        };
        let levels = match r.levels {
            None => Levels::default(),
            Some(list) => {
                let mut intervals = Vec::with_capacity(list.len());
                for (i, v) in list.into_iter().enumerate() {
                    intervals.push(duration(
                        &format!("replication.levels[{i}]"),
                        Some(v),
                        Duration::ZERO,
                    )?);
                }
                Levels::new(&intervals).map_err(|e| invalid("replication.levels", e.to_string()))?
            }
        };
        let restore_mode = r
            .restore_mode
            .map(|m| FileMode::parse(&m))
            .transpose()
            .map_err(|e| invalid("replication.restore_mode", e))?;
        let replica_url = r.replica_url.filter(|u| !u.trim().is_empty());
        if enabled && replica_url.is_none() {
            return Err(invalid(
                "replication.replica_url",
                "is required when replication.enabled is true".into(),
            ));
        }

        let base = file
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let resolve = |p: &str| {
            let p = Path::new(p);
            let joined = if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            };
            // Drops the `.` segments, so paths print and compare as users expect.
            joined.components().collect::<PathBuf>()
        };
        let mut paths = Vec::new();
        let shard_count = match raw.shards {
            Some(s) => {
                if s.count == 0 {
                    return Err(invalid("shards.count", "must be at least 1".into()));
                }
                if s.count > 1 && !s.path.contains("{index}") {
                    return Err(invalid(
                        "shards.path",
                        format!(
                            "must contain {{index}} when shards.count is {} (every shard needs its own file)",
                            s.count
                        ),
                    ));
                }
                for i in 0..s.count {
                    paths.push(resolve(&s.path.replace("{index}", &i.to_string())));
                }
                Some(s.count)
            }
            None => None,
        };
        for (i, d) in raw.databases.iter().enumerate() {
            if d.trim().is_empty() {
                return Err(invalid(&format!("databases[{i}]"), "is empty".into()));
            }
            paths.push(resolve(d));
        }

        let mut databases: Vec<Database> = Vec::new();
        for path in paths {
            let Some(stem) = path.file_stem().and_then(|s| s.to_str()).map(str::to_owned) else {
                return Err(invalid(
                    "databases",
                    format!("{} has no file name", path.display()),
                ));
            };
            if let Some(other) = databases
                .iter()
                .find(|d| d.path.file_stem().and_then(|s| s.to_str()) == Some(stem.as_str()))
            {
                return Err(invalid(
                    "databases",
                    format!(
                        "{} and {} would share the replica path .../{stem}; give them different file names",
                        other.path.display(),
                        path.display()
                    ),
                ));
            }
            let url = replica_url
                .as_deref()
                .map(|u| join_url(u, &stem))
                .unwrap_or_default();
            databases.push(Database { path, url });
        }
        if enabled && databases.is_empty() {
            return Err(invalid(
                "shards",
                "no databases configured: add `shards` or `databases`".into(),
            ));
        }
        Ok(Config {
            file: file.to_path_buf(),
            enabled,
            mode: r.mode.unwrap_or_default(),
            replica_url,
            sync_interval,
            snapshot_interval,
            retention,
            levels,
            l0_retention,
            restore_on_boot: r.restore_on_boot.unwrap_or(true),
            restore_mode,
            lease,
            take_over_replica: r.take_over_replica.unwrap_or(false),
            heartbeat_url: r.heartbeat_url.filter(|u| !u.trim().is_empty()),
            snapshot_at_start: false,
            verify_interval: r
                .verify_interval
                .map(|v| duration("replication.verify_interval", Some(v), Duration::ZERO))
                .transpose()?,
            heartbeat_interval: duration(
                "replication.heartbeat_interval",
                r.heartbeat_interval,
                Duration::from_secs(60),
            )?,
            metrics_addr: r
                .metrics_addr
                .map(|a| parse_addr(&a))
                .transpose()
                .map_err(|e| invalid("replication.metrics_addr", e))?,
            shard_count,
            databases,
        })
    }
}

/// Appends a path segment to a replica URL, before any query string.
pub fn join_url(base: &str, segment: &str) -> String {
    let (path, query) = match base.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (base, None),
    };
    let mut out = format!("{}/{segment}", path.trim_end_matches('/'));
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

/// Replaces `${VAR}`; returns the name of the first variable that is not set.
fn expand_env(text: &str) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            out.push_str(&rest[start..]);
            return Ok(out);
        };
        let name = &after[..end];
        match std::env::var(name) {
            Ok(v) => out.push_str(&v),
            Err(_) => return Err(name.to_owned()),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// A listen address: `host:port`, `[v6]:port`, or `:port` for every interface (as
/// Litestream's `addr` is written).
pub fn parse_addr(s: &str) -> Result<std::net::SocketAddr, String> {
    let full = match s.strip_prefix(':') {
        Some(port) => format!("0.0.0.0:{port}"),
        None => s.to_owned(),
    };
    full.parse().map_err(|_| {
        format!("{s:?} is not a listen address; examples: 127.0.0.1:9090, :9090, [::1]:9090")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("/etc/app/replica.yml"), text)
    }

    const FULL: &str = "
replication:
  enabled: true
  mode: sidecar
  replica_url: s3://bk/prod?endpoint=http://127.0.0.1:9000&region=us-east-1
  sync_interval: 100ms
  restore_on_boot: true
  snapshot_interval: 1h
  retention: 72h
shards:
  count: 3
  path: ./data/shard_{index}.db
databases:
  - ./data/dlq.db
  - /abs/other.db
";

    #[test]
    fn full_config() {
        let c = parse(FULL).unwrap();
        assert!(c.enabled && c.restore_on_boot);
        assert_eq!(c.sync_interval, Duration::from_millis(100));
        assert_eq!(c.shard_count, Some(3));
        let paths: Vec<_> = c
            .databases
            .iter()
            .map(|d| d.path.display().to_string())
            .collect();
        assert_eq!(
            paths,
            [
                "/etc/app/data/shard_0.db",
                "/etc/app/data/shard_1.db",
                "/etc/app/data/shard_2.db",
                "/etc/app/data/dlq.db",
                "/abs/other.db"
            ]
        );
        assert_eq!(
            c.databases[3].url,
            "s3://bk/prod/dlq?endpoint=http://127.0.0.1:9000&region=us-east-1"
        );
    }

    #[test]
    fn errors_name_the_key_and_file() {
        let cases = [
            (
                "replication:\n  enabled: true\n  replica_url: file:///x\n  bogus: 1\ndatabases: [a.db]\n",
                "bogus",
            ),
            (
                "replication:\n  enabled: true\n  replica_url: file:///x\n  sync_interval: 5parsecs\ndatabases: [a.db]\n",
                "replication.sync_interval",
            ),
            (
                "replication:\n  enabled: true\ndatabases: [a.db]\n",
                "replication.replica_url",
            ),
            (
                "replication:\n  enabled: true\n  replica_url: file:///x\nshards:\n  count: 4\n  path: ./shard.db\n",
                "shards.path",
            ),
            (
                "replication:\n  enabled: true\n  replica_url: file:///x/${REPLICA_TEST_UNSET_VAR}\ndatabases: [a.db]\n",
                "REPLICA_TEST_UNSET_VAR",
            ),
            (
                "replication:\n  enabled: true\n  replica_url: file:///x\ndatabases: [a/x.db, b/x.db]\n",
                "databases",
            ),
        ];
        for (text, key) in cases {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains(key), "{key}: {e}");
            assert!(e.contains("/etc/app/replica.yml"), "{key}: {e}");
        }
    }

    #[test]
    fn restore_mode_is_octal_quoted_or_not() {
        let with = |v: &str| {
            parse(&format!(
                "replication:\n  replica_url: file:///r\n  restore_mode: {v}\ndatabases: [a.db]\n"
            ))
        };
        for v in ["\"0640\"", "0640", "'640'"] {
            assert_eq!(with(v).unwrap().restore_mode, FileMode::new(0o640), "{v}");
        }
        let e = with("rw-r-----").unwrap_err().to_string();
        assert!(
            e.contains("replication.restore_mode") && e.contains("octal"),
            "{e}"
        );
        assert_eq!(parse(FULL).unwrap().restore_mode, None);
    }

    #[test]
    fn env_expansion_and_defaults() {
        // PATH is always set.
        let c =
            parse("replication:\n  replica_url: file:///r/${PATH}\ndatabases: [a.db]\n").unwrap();
        assert!(!c.enabled);
        assert_eq!(c.mode, Mode::Sidecar);
        assert!(c.replica_url.unwrap().starts_with("file:///r/"));
        assert_eq!(c.retention, Duration::from_secs(72 * 3600));
    }

    #[test]
    fn join_url_keeps_the_query() {
        assert_eq!(join_url("file:///r/", "s"), "file:///r/s");
        assert_eq!(join_url("s3://b?region=x", "s"), "s3://b/s?region=x");
    }
}
