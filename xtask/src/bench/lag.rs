//! Replication lag: from the moment a commit returned to the moment the first replica
//! object containing it was complete in the store (restorable).
//!
//! * `file://`: a watcher thread polls each database's `ltx/0` directory and notes when
//!   a new `.ltx` name appears. Both tools write a temporary name and rename it into
//!   place after fsync (backend-file's `put`; Litestream's `file.ReplicaClient.
//!   WriteLTXFile`), so appearance is restorability. A directory is read only when its
//!   mtime changed or is recent (file times are jiffy-coarse), which keeps polling
//!   1,000 directories cheap.
//! * S3: the counting proxy records when the emulator answered each `.ltx` PUT and
//!   keeps its body.
//!
//! Afterwards every new L0 file is decoded ([`ltxscan`]) for the highest commit it
//! carries. Later levels (compaction, snapshots) only repeat what L0 already made
//! restorable, so L0 alone decides first appearance.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};

use super::env::is_ltx_name;
use super::ltxscan;
use super::proxy::Request;

pub fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

fn ns(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// One commit, from the writer's `--times` file.
#[derive(Debug, Clone, Copy)]
pub struct Commit {
    pub db: usize,
    pub k: u64,
    /// Wall clock when the commit returned.
    pub end_ns: i64,
    pub latency_ns: u64,
}

pub fn read_commits(path: &Path) -> Result<Vec<Commit>> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let parse = || -> Option<Commit> {
            Some(Commit {
                db: f.first()?.parse().ok()?,
                k: f.get(1)?.parse().ok()?,
                end_ns: f.get(2)?.parse().ok()?,
                latency_ns: f.get(3)?.parse().ok()?,
            })
        };
        out.push(parse().with_context(|| format!("bad line {line:?} in {}", path.display()))?);
    }
    Ok(out)
}

/// An L0 object of database `db` that became restorable at `at_ns`.
#[derive(Debug, Clone)]
pub struct Appearance {
    pub db: usize,
    pub at_ns: i64,
    /// Highest commit counter in it; `None` if none (or undecodable).
    pub max_k: Option<u64>,
    pub decode_error: bool,
}

/// Polls `ltx/0` directories of `file://` replicas.
#[derive(Debug)]
pub struct Watcher {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<Vec<(usize, PathBuf, i64)>>>,
}

impl Watcher {
    /// `dirs[i]` is database i's L0 directory. Files present now are not reported.
    pub fn start(dirs: Vec<PathBuf>, period: Duration) -> Result<Watcher> {
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let mut known: Vec<HashSet<String>> = dirs.iter().map(|d| names(d)).collect();
        let handle = std::thread::Builder::new()
            .name("lag-watcher".into())
            .spawn(move || {
                let mut seen = Vec::new();
                let mut mtimes: Vec<Option<SystemTime>> = vec![None; dirs.len()];
                while !st.load(Ordering::Acquire) {
                    for (i, d) in dirs.iter().enumerate() {
                        let m = fs::metadata(d).and_then(|m| m.modified()).ok();
                        let recent = m.is_some_and(|m| {
                            SystemTime::now()
                                .duration_since(m)
                                .is_ok_and(|age| age < Duration::from_millis(100))
                        });
                        if m == mtimes[i] && !recent {
                            continue;
                        }
                        mtimes[i] = m;
                        let at = now_ns();
                        for n in names(d) {
                            if known[i].insert(n.clone()) {
                                seen.push((i, d.join(&n), at));
                            }
                        }
                    }
                    std::thread::sleep(period);
                }
                seen
            })
            .context("starting the lag watcher")?;
        Ok(Watcher {
            stop,
            handle: Some(handle),
        })
    }

    /// Stops polling and decodes every new file.
    pub fn finish(mut self) -> Vec<Appearance> {
        self.stop.store(true, Ordering::Release);
        let seen = self
            .handle
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        seen.into_iter()
            .map(|(db, path, at_ns)| decode_file(db, &path, at_ns))
            .collect()
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn names(dir: &Path) -> HashSet<String> {
    match fs::read_dir(dir) {
        Ok(rd) => rd
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| is_ltx_name(n))
            .collect(),
        Err(_) => HashSet::new(),
    }
}

fn decode_file(db: usize, path: &Path, at_ns: i64) -> Appearance {
    let r = fs::read(path)
        .map_err(anyhow::Error::from)
        .and_then(|b| ltxscan::max_counter(&b));
    Appearance {
        db,
        at_ns,
        max_k: r.as_ref().ok().copied().flatten(),
        decode_error: r.is_err(),
    }
}

/// L0 uploads seen by the proxy, for databases whose key prefixes are `prefixes[i]`.
/// Pass only requests made while the proxy captured bodies.
pub fn s3_appearances(reqs: &[Request], prefixes: &[String]) -> Vec<Appearance> {
    let mut out = Vec::new();
    for r in reqs {
        if !r.is_ltx_put() {
            continue;
        }
        let Some(key) = r.key() else { continue };
        let Some(db) = prefixes.iter().position(|p| key.starts_with(p.as_str())) else {
            continue;
        };
        // `<prefix>/<stem>/0000/<min>-<max>.ltx`: level 0 only.
        if !key[prefixes[db].len()..].starts_with("0000/") {
            continue;
        }
        let decoded = r.body.as_ref().map(|b| ltxscan::max_counter(b));
        if let Some(Err(e)) = &decoded {
            eprintln!("xtask bench: cannot decode the upload of {key}: {e:#}");
        }
        out.push(Appearance {
            db,
            at_ns: ns(r.done),
            max_k: decoded
                .as_ref()
                .and_then(|d| d.as_ref().ok().copied().flatten()),
            decode_error: !matches!(decoded, Some(Ok(_))),
        });
    }
    out
}

#[derive(Debug, Default, Clone)]
pub struct LagResult {
    /// Lag of every commit that appeared, in milliseconds.
    pub lags_ms: Vec<f64>,
    /// Commits not seen by the end; counted with their lag up to `end_ns` (a lower bound).
    pub missing: usize,
    pub undecodable: usize,
    pub l0_files: usize,
    /// Shortest time between two L0 uploads of the same database.
    pub min_gap_ms: Option<f64>,
}

/// Matches commits to the first L0 object carrying them. Commits ending before
/// `from_ns` are ignored (warm-up).
pub fn compute(commits: &[Commit], apps: &[Appearance], from_ns: i64, end_ns: i64) -> LagResult {
    let mut per_db: HashMap<usize, Vec<&Appearance>> = HashMap::new();
    for a in apps {
        per_db.entry(a.db).or_default().push(a);
    }
    let mut r = LagResult {
        undecodable: apps.iter().filter(|a| a.decode_error).count(),
        l0_files: apps.len(),
        ..LagResult::default()
    };
    // Per database: appearance times with the running maximum of commits carried.
    let mut frontier: HashMap<usize, Vec<(i64, u64)>> = HashMap::new();
    for (db, list) in per_db.iter_mut() {
        list.sort_by_key(|a| a.at_ns);
        for w in list.windows(2) {
            let gap = (w[1].at_ns - w[0].at_ns) as f64 / 1e6;
            r.min_gap_ms = Some(r.min_gap_ms.map_or(gap, |g: f64| g.min(gap)));
        }
        let mut best = 0u64;
        let f = frontier.entry(*db).or_default();
        for a in list.iter() {
            if let Some(k) = a.max_k
                && k > best
            {
                best = k;
                f.push((a.at_ns, best));
            }
        }
    }
    for c in commits.iter().filter(|c| c.end_ns >= from_ns) {
        let f = frontier.get(&c.db).map(Vec::as_slice).unwrap_or(&[]);
        let i = f.partition_point(|&(_, k)| k < c.k);
        match f.get(i) {
            // An object listed before the commit returned cannot carry it, unless the
            // clocks were read in the other order within the same instant: clamp at 0.
            Some(&(at, _)) => r.lags_ms.push(((at - c.end_ns).max(0)) as f64 / 1e6),
            None => {
                r.missing += 1;
                r.lags_ms.push((end_ns - c.end_ns).max(0) as f64 / 1e6);
            }
        }
    }
    r
}

/// Writes what a lag result was computed from into `dir` (`objects.tsv`: db, time,
/// highest commit; `commits.tsv` is the writer's file), for `--keep-work` inspection.
pub fn write_objects(dir: &Path, apps: &[Appearance]) -> Result<()> {
    let mut s = String::from("db\tat_ns\tmax_k\n");
    for a in apps {
        s.push_str(&format!(
            "{}\t{}\t{}\n",
            a.db,
            a.at_ns,
            a.max_k.map_or("-".into(), |k| k.to_string())
        ));
    }
    let p = dir.join("objects.tsv");
    fs::write(&p, s).with_context(|| format!("writing {}", p.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_matches_first_object() {
        let c = |k, end_ns| Commit {
            db: 0,
            k,
            end_ns,
            latency_ns: 0,
        };
        let a = |at_ns, k| Appearance {
            db: 0,
            at_ns,
            max_k: Some(k),
            decode_error: false,
        };
        let commits = [
            c(1, 1_000_000),
            c(2, 2_000_000),
            c(3, 3_000_000),
            c(4, 9_000_000),
        ];
        let apps = [a(5_000_000, 2), a(7_000_000, 3)];
        let r = compute(&commits, &apps, 0, 10_000_000);
        assert_eq!(r.lags_ms, vec![4.0, 3.0, 4.0, 1.0]);
        assert_eq!(r.missing, 1);
        assert_eq!(r.min_gap_ms, Some(2.0));
    }
}
