//! Running child processes with a visible trace.

use std::ffi::OsString;
use std::process::{Command, ExitCode, ExitStatus, Stdio};

use anyhow::{Context, Result};

/// The cargo that runs us (`$CARGO`), falling back to `cargo` on PATH.
pub fn cargo() -> Command {
    let cargo = std::env::var_os("CARGO")
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| OsString::from("cargo"));
    let mut cmd = Command::new(cargo);
    cmd.current_dir(crate::paths::workspace_root());
    cmd
}

/// Whether `cargo <sub> --version` works (e.g. `fmt`, `clippy`, `nextest`).
pub fn cargo_subcommand_available(sub: &str) -> bool {
    cargo()
        .args([sub, "--version"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Prints a step banner, so the CI log shows what is happening.
pub fn step(msg: &str) {
    eprintln!("\n==> xtask: {msg}");
}

/// Renders a command line for the log.
pub fn display(cmd: &Command) -> String {
    let mut s = String::new();
    if cmd.get_envs().next().is_some() {
        s.push_str("env ");
    }
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => s.push_str(&format!("{}={} ", k.to_string_lossy(), v.to_string_lossy())),
            None => s.push_str(&format!("-u {} ", k.to_string_lossy())),
        }
    }
    s.push_str(&cmd.get_program().to_string_lossy());
    for a in cmd.get_args() {
        let a = a.to_string_lossy();
        if a.is_empty() || a.contains(char::is_whitespace) {
            s.push_str(&format!(" '{a}'"));
        } else {
            s.push(' ');
            s.push_str(&a);
        }
    }
    s
}

/// Runs `cmd` with inherited stdio, echoing it first; returns its status.
pub fn run_status(cmd: &mut Command) -> Result<ExitStatus> {
    eprintln!("$ {}", display(cmd));
    cmd.status()
        .with_context(|| format!("failed to start `{}`", cmd.get_program().to_string_lossy()))
}

/// Maps a child's exit status to our own exit code (128+N for a signal).
pub fn exit_code(status: ExitStatus) -> ExitCode {
    use std::os::unix::process::ExitStatusExt;
    let code = match (status.code(), status.signal()) {
        (Some(c), _) => c,
        (None, Some(sig)) => 128 + sig,
        (None, None) => 1,
    };
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

/// Makes (or, with `--clear`, repairs) a venv at `venv` with the Python `base`.
pub fn make_venv(base: &std::path::Path, venv: &std::path::Path) -> Result<()> {
    let st = run_status(
        Command::new(base)
            .args(["-m", "venv", "--clear"])
            .arg(venv)
            .stdin(Stdio::null())
            .stdout(Stdio::from(std::io::stderr())),
    )?;
    if !st.success() {
        anyhow::bail!(
            "`{} -m venv` failed ({st}); on Debian/Ubuntu install it with \
             `apt-get install python3-venv`",
            base.display()
        );
    }
    Ok(())
}

/// `pip install SPECS…` with the venv Python `python`; pip's output goes to stderr,
/// as xtask's stdout is kept for results.
pub fn pip_install(python: &std::path::Path, specs: &[&str]) -> Result<()> {
    let st = run_status(
        Command::new(python)
            .args([
                "-m",
                "pip",
                "install",
                "-q",
                "--disable-pip-version-check",
                "--no-input",
            ])
            .args(specs)
            .stdin(Stdio::null())
            .stdout(Stdio::from(std::io::stderr())),
    )?;
    if !st.success() {
        anyhow::bail!("pip install {} failed ({st})", specs.join(" "));
    }
    Ok(())
}
