//! Well-known locations shared by the commands (and mirrored by
//! `crates/replica-cli/tests/support/mod.rs`).

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

/// The workspace root (the parent of the `xtask` crate).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
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
