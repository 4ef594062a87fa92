//! Restores and what they are checked against: `replica restore` into a fresh file,
//! then `workload.py verify`, which accepts it only if it is exactly the state after
//! some commit k (integrity ok, every row, count and digest as journaled for k).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};

/// The outcome of a check that ran.
#[derive(Debug)]
pub enum Verdict {
    /// The state after commit `k`.
    Commit {
        k: u64,
    },
    Mismatch(String),
}

#[derive(Debug)]
pub struct Checker {
    pub bin: PathBuf,
    pub url: String,
    pub python: String,
    pub workload: PathBuf,
    pub journal: PathBuf,
    pub seed: u64,
    pub dir: PathBuf,
    /// Set for `replica` and Litestream (the S3 credentials of a `--faults` soak).
    pub env: Vec<(String, String)>,
    /// Litestream reads an S3 replica from a config (`-config FILE DB`), a file://
    /// one from its URL.
    pub litestream_config: Option<(PathBuf, PathBuf)>,
}

/// RFC 3339 with milliseconds: LTX timestamps have millisecond precision, so a target
/// on a whole millisecond compares exactly with them.
pub fn rfc3339_ms(t_ns: u64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(t_ns / 1_000_000);
    humantime::format_rfc3339_millis(t).to_string()
}

fn output(cmd: &mut Command) -> Result<(bool, String)> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", cmd.get_program().to_string_lossy()))?;
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    Ok((out.status.success(), text.trim().to_string()))
}

impl Checker {
    /// `replica restore` of the latest state, or of `--timestamp` `at_ms` (ns since the
    /// epoch, a whole millisecond), into `<dir>/<name>.db`. Err(text) if it fails.
    pub fn restore(&self, name: &str, at_ns: Option<u64>) -> Result<Result<PathBuf, String>> {
        let out = self.dir.join(format!("{name}.db"));
        let mut cmd = Command::new(&self.bin);
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)))
            .arg("restore")
            .arg("-o")
            .arg(&out)
            .arg(&self.url);
        if let Some(t) = at_ns {
            cmd.args(["--timestamp", &rfc3339_ms(t)]);
        }
        let (ok, text) = output(&mut cmd)?;
        if !ok {
            return Ok(Err(format!("`replica restore` of {name} failed: {text}")));
        }
        if !out.is_file() {
            return Ok(Err(format!(
                "`replica restore` of {name} exited 0 but wrote no {}",
                out.display()
            )));
        }
        Ok(Ok(out))
    }

    /// Which commit's state `db` holds, if any.
    pub fn verify(&self, db: &Path) -> Result<Verdict> {
        let (ok, text) = output(
            Command::new(&self.python)
                .arg(&self.workload)
                .arg("verify")
                .arg("--db")
                .arg(db)
                .arg("--journal")
                .arg(&self.journal)
                .args(["--seed", &self.seed.to_string()]),
        )?;
        if !ok {
            return Ok(Verdict::Mismatch(text));
        }
        let k = text
            .strip_prefix("ok k=")
            .and_then(|r| r.split_whitespace().next())
            .and_then(|k| k.parse().ok());
        match k {
            Some(k) => Ok(Verdict::Commit { k }),
            None => bail!("unexpected output of workload.py verify: {text}"),
        }
    }

    /// `None` if `a` and `b` hold the same schema and rows, else the first difference.
    pub fn compare(&self, a: &Path, b: &Path) -> Result<Option<String>> {
        let (ok, text) = output(
            Command::new(&self.python)
                .arg(&self.workload)
                .arg("compare")
                .arg(a)
                .arg(b),
        )?;
        Ok((!ok).then_some(text))
    }

    /// Litestream's restore of the same replica (AWS_CA_BUNDLE breaks its S3 client,
    /// and it reads the environment even for file://).
    pub fn litestream_restore(
        &self,
        litestream: &Path,
        name: &str,
    ) -> Result<Result<PathBuf, String>> {
        let out = self.dir.join(format!("{name}.db"));
        let mut cmd = Command::new(litestream);
        cmd.env_remove("AWS_CA_BUNDLE")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .arg("restore")
            .arg("-o")
            .arg(&out);
        match &self.litestream_config {
            Some((config, db)) => cmd.arg("-config").arg(config).arg(db),
            None => cmd.arg(&self.url),
        };
        let (ok, text) = output(&mut cmd)?;
        if !ok || !out.is_file() {
            return Ok(Err(format!("`litestream restore` failed: {text}")));
        }
        Ok(Ok(out))
    }
}

/// Removes a restored database (and any -wal/-shm a check left) once it has passed.
pub fn discard(db: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let mut p = db.as_os_str().to_owned();
        p.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(p));
    }
}

pub fn secs(ns: u64) -> f64 {
    ns as f64 / 1e9
}

pub fn system_ns(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}
