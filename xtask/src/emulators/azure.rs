//! Azure Blob Storage: Azurite (npm), in memory.

use std::fs;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};

use super::{Dirs, HOST, Kind, install, probe};
use crate::util;

/// The last release that runs on Node 20.
const AZURITE_PACKAGE: &str = "azurite@3.35.0";
/// Azurite's well-known development account.
pub(super) const ACCOUNT: &str = "devstoreaccount1";
const ACCOUNT_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

fn ensure(d: &Dirs) -> Result<PathBuf> {
    let dir = d.root.join("azurite");
    let bin = dir.join("node_modules").join(".bin").join("azurite-blob");
    if install::marker_ok(&dir, AZURITE_PACKAGE, &bin) {
        return Ok(bin);
    }
    let npm_ok = Command::new("npm")
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !npm_ok {
        bail!(
            "npm not found: Azurite is installed from npm; install Node.js 20 and npm \
             (Azurite 3.35.0 is the last release that runs on Node 20)"
        );
    }
    util::step(&format!(
        "installing {AZURITE_PACKAGE} (npm) into {}",
        dir.display()
    ));
    let t0 = Instant::now();
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    super::remove_if_exists(&dir.join(".xtask-installed"))?;
    let st = install::run_to_stderr(
        Command::new("npm")
            .arg("install")
            .arg("--prefix")
            .arg(&dir)
            .args([
                "--no-audit",
                "--no-fund",
                "--no-update-notifier",
                "--loglevel=error",
                AZURITE_PACKAGE,
            ]),
    )?;
    if !st.success() {
        bail!("npm install {AZURITE_PACKAGE} failed ({st})");
    }
    if !bin.exists() {
        bail!("{} is missing after npm install", bin.display());
    }
    install::write_marker(&dir, AZURITE_PACKAGE)?;
    eprintln!(
        "xtask: installed {AZURITE_PACKAGE} in {:.1}s",
        t0.elapsed().as_secs_f64()
    );
    Ok(bin)
}

pub(super) fn command(d: &Dirs, port: u16) -> Result<Command> {
    let mut c = Command::new(ensure(d)?);
    c.args([
        "--blobHost",
        HOST,
        "--blobPort",
        &port.to_string(),
        "--inMemoryPersistence",
        "--skipApiVersionCheck",
        "--loose",
        "--disableTelemetry",
    ]);
    Ok(c)
}

/// Any HTTP status proves Azurite is up (unauthenticated: 400/403).
pub(super) fn ready(port: u16) -> bool {
    probe::http_status(port, &format!("/{ACCOUNT}?comp=list")).is_some()
}

pub(super) fn exports(port: u16) -> Vec<(String, String)> {
    let kv = |k: &str, v: String| (k.to_string(), v);
    vec![
        kv("REPLICA_AZURE_ENDPOINT", Kind::Azure.endpoint(port)),
        kv("REPLICA_AZURE_ACCOUNT_NAME", ACCOUNT.into()),
        kv("REPLICA_AZURE_ACCOUNT_KEY", ACCOUNT_KEY.into()),
    ]
}
