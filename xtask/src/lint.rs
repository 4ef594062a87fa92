//! `cargo xtask lint`: formatting and clippy.

use std::process::ExitCode;

use anyhow::{Result, bail};

use crate::util;

pub const HELP: &str = "
Runs `cargo fmt --all -- --check`, then
`cargo clippy --workspace --all-targets -- -D warnings`; stops at the first
failure and exits with its code. Fails if rustfmt or clippy is not installed.

OPTIONS:
    --fmt-only     only check formatting
";

/// Fails, naming the rustup component, when rustfmt or clippy is not installed, so a
/// machine without them never reports a lint stage as passed.
pub fn require_tools(fmt_only: bool) -> Result<()> {
    let mut tools = vec![("fmt", "rustfmt")];
    if !fmt_only {
        tools.push(("clippy", "clippy"));
    }
    for (sub, component) in tools {
        if !util::cargo_subcommand_available(sub) {
            bail!(
                "`cargo {sub}` is not available: install it with `rustup component add {component}`"
            );
        }
    }
    Ok(())
}

/// `cargo fmt --all -- --check`; returns the failing exit code, if any.
pub fn fmt_check() -> Result<Option<ExitCode>> {
    util::step("checking formatting (fix with `cargo fmt --all`)");
    let st = util::run_status(util::cargo().args(["fmt", "--all", "--", "--check"]))?;
    Ok((!st.success()).then(|| util::exit_code(st)))
}

/// `cargo clippy --workspace --all-targets -- -D warnings`.
pub fn clippy() -> Result<Option<ExitCode>> {
    util::step("running clippy");
    let st = util::run_status(util::cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    Ok((!st.success()).then(|| util::exit_code(st)))
}

pub fn run(args: &[String]) -> Result<ExitCode> {
    let mut fmt_only = false;
    for a in args {
        match a.as_str() {
            "--fmt-only" => fmt_only = true,
            other => bail!("unknown option `{other}` for `cargo xtask lint`"),
        }
    }
    require_tools(fmt_only)?;
    if let Some(code) = fmt_check()? {
        return Ok(code);
    }
    if !fmt_only && let Some(code) = clippy()? {
        return Ok(code);
    }
    eprintln!("\nxtask: lint passed");
    Ok(ExitCode::SUCCESS)
}
