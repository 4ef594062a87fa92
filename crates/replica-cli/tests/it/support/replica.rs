//! Driving `replica` (and Litestream) against a replica: starting and stopping the
//! replicator, waiting for uploads, listing the replica's files, restoring.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tempfile::TempDir;

use super::process::{Output, Proc, SIGINT, run};
use super::sqlite::{assert_dumps_eq, assert_file_is_exactly_the_database, dump, integrity_check};
use super::{litestream_cmd, replica_cmd, wait_until};

/// How long an "it has been uploaded" condition may take before the test fails
/// (Litestream syncs once a second).
pub const UPLOAD_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a replicator may take to flush and exit after SIGINT.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(60);

/// `file://` URL of a local directory.
pub fn file_url(root: &Path) -> String {
    format!("file://{}", root.display())
}

/// A temp dir holding a source database (`source.db`), a `file://` replica beside it
/// and the outputs of restores.
pub struct Env {
    dir: TempDir,
    pub db: PathBuf,
    pub url: String,
}

impl Env {
    pub fn new() -> Env {
        let dir = tempfile::Builder::new()
            .prefix("replica-it-")
            .tempdir()
            .expect("tempdir");
        let db = dir.path().join("source.db");
        let url = file_url(&dir.path().join("replica"));
        Env { dir, db, url }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

// ---------------------------------------------------------------------------
// The replicator

/// `replica replicate DB URL --sync-interval 100ms EXTRA…`.
pub fn replicator_cmd(db: &Path, url: &str, extra: &[&str]) -> Command {
    let mut cmd = replica_cmd();
    cmd.arg("replicate")
        .arg(db)
        .arg(url)
        .args(["--sync-interval", "100ms"])
        .args(extra);
    cmd
}

/// Starts `replica replicate DB URL` with a 100 ms sync interval.
pub fn start_replicator(db: &Path, url: &str) -> Proc {
    Proc::spawn("replica replicate", replicator_cmd(db, url, &[]))
}

/// Starts `litestream replicate DB URL` (it syncs once a second).
pub fn start_litestream(db: &Path, url: &str) -> Proc {
    let mut cmd = litestream_cmd();
    cmd.arg("replicate").arg(db).arg(url);
    Proc::spawn("litestream replicate", cmd)
}

/// Waits until the replica holds at least `txid` (the first snapshot is TXID 1) while
/// `p` keeps running.
#[track_caller]
pub fn wait_for_txid(p: &mut Proc, url: &str, txid: u64) {
    let ok = wait_until(UPLOAD_TIMEOUT, || !p.is_running() || max_txid(url) >= txid);
    let running = p.is_running();
    assert!(
        ok && running,
        "{} did not upload TXID {} within {UPLOAD_TIMEOUT:?} (running: {running}, files: {:?})\n{}",
        p.name(),
        txid_hex(txid),
        ltx_list(url),
        p.output_report()
    );
}

/// SIGINT: both tools flush everything and exit 0 on it.
#[track_caller]
pub fn stop_clean(p: &mut Proc) {
    let st = p.stop(SIGINT, STOP_TIMEOUT);
    assert_eq!(
        st.code(),
        Some(0),
        "{} exited with {st} after SIGINT\n{}",
        p.name(),
        p.output_report()
    );
}

// ---------------------------------------------------------------------------
// The replica's files

/// One row of `replica ltx --json`.
#[derive(Debug, Clone)]
pub struct LtxFile {
    pub level: u64,
    pub min: u64,
    pub max: u64,
    pub created: time::OffsetDateTime,
    pub key: String,
    pub size: u64,
}

/// A TXID as LTX names and `replica ltx` print it: 16 hex digits.
pub fn parse_txid(s: &str) -> u64 {
    assert_eq!(s.len(), 16, "TXID {s:?} is not 16 hex digits");
    u64::from_str_radix(s, 16).unwrap_or_else(|e| panic!("TXID {s:?}: {e}"))
}

pub fn txid_hex(t: u64) -> String {
    format!("{t:016x}")
}

/// The TXID range of an LTX file name, `<min>-<max>.ltx`; `None` for other names.
pub fn ltx_name_range(name: &str) -> Option<(u64, u64)> {
    let (min, rest) = name.split_once('-')?;
    let max = rest.strip_suffix(".ltx")?;
    let hex = |s: &str| {
        (s.len() == 16)
            .then(|| u64::from_str_radix(s, 16).ok())
            .flatten()
    };
    Some((hex(min)?, hex(max)?))
}

/// The rows of a successful `replica ltx --json`.
#[track_caller]
pub fn parse_ltx_json(out: &Output) -> Vec<LtxFile> {
    let v: serde_json::Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("replica ltx --json printed invalid JSON ({e})\n{out}"));
    let rows = v
        .as_array()
        .unwrap_or_else(|| panic!("not a JSON array\n{out}"));
    rows.iter()
        .map(|r| {
            let s = |k: &str| {
                r[k].as_str()
                    .unwrap_or_else(|| panic!("field {k} missing or not a string in {r}"))
                    .to_string()
            };
            LtxFile {
                level: r["level"]
                    .as_u64()
                    .unwrap_or_else(|| panic!("bad level in {r}")),
                min: parse_txid(&s("min_txid")),
                max: parse_txid(&s("max_txid")),
                created: time::OffsetDateTime::parse(
                    &s("created"),
                    &time::format_description::well_known::Rfc3339,
                )
                .unwrap_or_else(|e| panic!("bad created in {r}: {e}")),
                key: s("key"),
                size: r["size"]
                    .as_u64()
                    .unwrap_or_else(|| panic!("bad size in {r}")),
            }
        })
        .collect()
}

/// The replica's files, from `replica ltx URL --json`, or `None` if the command fails
/// (the store is unreachable).
pub fn try_ltx_list(url: &str) -> Option<Vec<LtxFile>> {
    let out = run(replica_cmd().args(["ltx", url, "--json"]));
    out.success().then(|| parse_ltx_json(&out))
}

/// The replica's files, from `replica ltx URL --json`; panics if the command fails.
#[track_caller]
pub fn ltx_list(url: &str) -> Vec<LtxFile> {
    let out = run(replica_cmd().args(["ltx", url, "--json"]));
    assert!(out.success(), "replica ltx {url} failed\n{out}");
    parse_ltx_json(&out)
}

/// The highest TXID among `files` (0 for none).
pub fn max_txid_of(files: &[LtxFile]) -> u64 {
    files.iter().map(|f| f.max).max().unwrap_or(0)
}

/// The highest TXID in the replica (0 if it is empty or does not exist yet).
#[track_caller]
pub fn max_txid(url: &str) -> u64 {
    max_txid_of(&ltx_list(url))
}

// ---------------------------------------------------------------------------
// Restoring

/// `replica restore -o OUT EXTRA… URL`.
pub fn restore(url: &str, out: &Path, extra: &[&str]) -> Output {
    run(replica_cmd()
        .arg("restore")
        .arg("-o")
        .arg(out)
        .args(extra)
        .arg(url))
}

/// `litestream restore -o OUT EXTRA… URL`.
pub fn litestream_restore(url: &str, out: &Path, extra: &[&str]) -> Output {
    run(litestream_cmd()
        .arg("restore")
        .arg("-o")
        .arg(out)
        .args(extra)
        .arg(url))
}

/// Checks a restore's outcome (success, a sound database, complete in its file) and
/// returns the restored database's dump.
#[track_caller]
pub fn restored_dump(what: &str, o: &Output, out: &Path) -> Vec<String> {
    assert!(o.success(), "{what} failed\n{o}");
    assert!(
        out.is_file(),
        "{what} exited 0 but {} is missing\n{o}",
        out.display()
    );
    assert_eq!(
        integrity_check(out),
        ["ok"],
        "{what}: {} fails integrity_check",
        out.display()
    );
    assert_file_is_exactly_the_database(out);
    dump(out)
}

/// `replica restore` that must succeed, checked as [`restored_dump`] does.
#[track_caller]
pub fn restore_dump(url: &str, out: &Path, extra: &[&str]) -> Vec<String> {
    restored_dump(
        &format!("replica restore {extra:?} -o {}", out.display()),
        &restore(url, out, extra),
        out,
    )
}

/// Restores the latest state and checks it against the source database; returns the
/// restored file.
#[track_caller]
pub fn assert_restore_matches_source(env: &Env, name: &str) -> PathBuf {
    let out = env.path(name);
    let restored = restore_dump(&env.url, &out, &[]);
    assert!(
        integrity_check(&env.db) == ["ok"],
        "source fails integrity_check"
    );
    let source = dump(&env.db);
    assert!(
        source.len() > 3,
        "the source dump is trivially small: {source:?}"
    );
    assert_dumps_eq("restored latest vs source", &source, &restored);
    out
}
