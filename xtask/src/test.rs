//! `cargo xtask test`: the project's test command (README, CI).

use std::process::{Command, ExitCode};

use anyhow::{Result, bail};

use crate::{litestream, util};

pub const HELP: &str = "
Installs Litestream 0.5.17 into the cache venv if needed (see `cargo xtask
litestream`), then runs every test of the workspace with
    cargo nextest run --workspace --no-fail-fast [RUNNER_ARGS...]
or, when cargo-nextest is not installed (or with --cargo-test),
    cargo test --workspace --no-fail-fast [RUNNER_ARGS...]
with REPLICA_LITESTREAM_BIN set to the installed binary and AWS_CA_BUNDLE
removed from the environment. Exits with the test runner's exit code.

OPTIONS:
    --no-capture   show test output as it happens (nextest `--no-capture`,
                   cargo test `-- --nocapture`)
    --cargo-test   use `cargo test` even if cargo-nextest is installed
    -- ARGS...     passed verbatim to the runner (`--workspace` is dropped when
                   they select packages with -p/--package), e.g.
                   `cargo xtask test -- -p replica-cli restore` (nextest filters),
                   `cargo xtask test --cargo-test -- -p replica-core -- --ignored`
";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Runner {
    Nextest,
    CargoTest,
}

/// Parses `test`'s own options and builds the runner command.
fn build(args: &[String], nextest: bool) -> Result<(Runner, Command)> {
    let mut no_capture = false;
    let mut force_cargo_test = false;
    let mut passthrough: Vec<String> = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--no-capture" | "--nocapture" => no_capture = true,
            "--cargo-test" => force_cargo_test = true,
            "--" => {
                passthrough.extend(it.by_ref().cloned());
                break;
            }
            other => bail!(
                "unknown option `{other}` for `cargo xtask test`; \
                 put runner arguments after `--` (see `cargo xtask help test`)"
            ),
        }
    }

    let runner = if nextest && !force_cargo_test {
        Runner::Nextest
    } else {
        Runner::CargoTest
    };
    // `--workspace` would override a package selection passed through.
    let runner_args = passthrough.split(|a| a == "--").next().unwrap_or(&[]);
    let selects_packages = runner_args
        .iter()
        .any(|a| a == "-p" || a.starts_with("--package") || (a.starts_with("-p") && a.len() > 2));
    let scope: &[&str] = if selects_packages {
        &[]
    } else {
        &["--workspace"]
    };
    let mut cmd = util::cargo();
    match runner {
        Runner::Nextest => {
            cmd.args(["nextest", "run"])
                .args(scope)
                .arg("--no-fail-fast");
            if no_capture {
                cmd.arg("--no-capture");
            }
            cmd.args(&passthrough);
        }
        Runner::CargoTest => {
            cmd.arg("test").args(scope).arg("--no-fail-fast");
            cmd.args(&passthrough);
            if no_capture {
                // Arguments after the first `--` go to the test binaries.
                if !passthrough.iter().any(|a| a == "--") {
                    cmd.arg("--");
                }
                cmd.arg("--nocapture");
            }
        }
    }
    Ok((runner, cmd))
}

/// Installs the oracle and runs the tests; returns the runner's exit code.
pub fn run(args: &[String]) -> Result<ExitCode> {
    // Reject bad options before doing any slow work.
    build(args, false)?;

    util::step(&format!("ensuring Litestream {}", litestream::VERSION));
    let bin = litestream::ensure()?;

    let nextest = util::cargo_subcommand_available("nextest");
    let (runner, mut cmd) = build(args, nextest)?;
    cmd.env("REPLICA_LITESTREAM_BIN", &bin)
        .env_remove("AWS_CA_BUNDLE");
    util::step(&match runner {
        Runner::Nextest => "running the workspace tests with cargo-nextest".to_string(),
        Runner::CargoTest if nextest => "running the workspace tests with cargo test".to_string(),
        Runner::CargoTest => {
            "cargo-nextest not found; running the workspace tests with cargo test".to_string()
        }
    });
    let status = util::run_status(&mut cmd)?;
    if status.success() {
        eprintln!("\nxtask: tests passed");
    } else {
        eprintln!("\nxtask: tests FAILED ({status})");
    }
    Ok(util::exit_code(status))
}
