//! Well-known locations shared by the commands (and mirrored by
//! `crates/replica-cli/tests/it/support/mod.rs`).

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

/// The workspace root (the parent of the `xtask` crate).
///
/// Taken from the `CARGO_MANIFEST_DIR` that `cargo run` sets at run time: the
/// compile-time value names the checkout that happened to build the binary, and a
/// target directory shared between checkouts (as CI's cache is) keeps that binary,
/// so `cargo xtask test` would test another checkout.
pub fn workspace_root() -> PathBuf {
    let manifest = non_empty_env("CARGO_MANIFEST_DIR")
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    manifest.parent().map(Path::to_path_buf).unwrap_or(manifest)
}

fn non_empty_env(name: &str) -> Option<PathBuf> {
    std::env::var_os(name)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// `${REPLICA_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/replica}`.
pub fn cache_dir() -> Result<PathBuf> {
    if let Some(dir) = non_empty_env("REPLICA_CACHE_DIR") {
        return Ok(dir);
    }
    if let Some(xdg) = non_empty_env("XDG_CACHE_HOME") {
        return Ok(xdg.join("replica"));
    }
    match non_empty_env("HOME") {
        Some(home) => Ok(home.join(".cache").join("replica")),
        None => bail!("cannot find a cache directory: set REPLICA_CACHE_DIR (or HOME)"),
    }
}
