//! S3: moto server (PyPI), in memory.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Result, bail};

use super::{Dirs, HOST, Kind, install, probe};

const MOTO_SPECS: &[&str] = &["moto[s3]==5.2.5", "flask", "flask-cors"];

const S3_REGION: &str = "us-east-1";
/// moto accepts any credentials; these only have to be non-empty.
const S3_ACCESS_KEY_ID: &str = "replica-test";
const S3_SECRET_ACCESS_KEY: &str = "replica-test-secret";

fn ensure(d: &Dirs) -> Result<PathBuf> {
    let dir = d.root.join("moto");
    let bin = dir.join("venv").join("bin").join("moto_server");
    install::ensure_venv(&dir, MOTO_SPECS, &bin)?;
    if !bin.exists() {
        bail!("{} is missing after installing moto", bin.display());
    }
    Ok(bin)
}

/// The moto server binary, installed into `<cache>/emulators/moto` if needed (for
/// `cargo xtask bench`, which runs a private instance).
pub fn moto_server() -> Result<PathBuf> {
    ensure(&Dirs::new()?)
}

pub(super) fn command(d: &Dirs, port: u16) -> Result<Command> {
    let mut c = Command::new(ensure(d)?);
    c.args(["-H", HOST, "-p", &port.to_string()]);
    Ok(c)
}

/// ListBuckets: 200 with any (or no) credentials.
pub(super) fn ready(port: u16) -> bool {
    probe::http_status(port, "/") == Some(200)
}

pub(super) fn exports(port: u16) -> Vec<(String, String)> {
    let kv = |k: &str, v: String| (k.to_string(), v);
    vec![
        kv("REPLICA_S3_ENDPOINT", Kind::S3.endpoint(port)),
        kv("REPLICA_S3_REGION", S3_REGION.into()),
        kv("REPLICA_S3_ACCESS_KEY_ID", S3_ACCESS_KEY_ID.into()),
        kv("REPLICA_S3_SECRET_ACCESS_KEY", S3_SECRET_ACCESS_KEY.into()),
        kv("REPLICA_S3_FORCE_PATH_STYLE", "true".into()),
    ]
}
