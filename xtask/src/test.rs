//! `cargo xtask test`: the project's test command (README, CI).

use std::process::{Command, ExitCode};

use anyhow::{Result, bail};

use crate::{emulators, litestream, util};

pub const HELP: &str = "
Installs Litestream 0.5.17 into the cache venv if needed (see `cargo xtask
litestream`), brings up the S3/Azure/GCS/SFTP emulators (see `cargo xtask
help emulators`; installed on first use), then runs every test of the
workspace with
    cargo nextest run --workspace --no-fail-fast [RUNNER_ARGS...]
or, when cargo-nextest is not installed (or with --cargo-test),
    cargo test --workspace --no-fail-fast [RUNNER_ARGS...]
with REPLICA_LITESTREAM_BIN set to the installed binary, the emulators'
REPLICA_S3_* / REPLICA_AZURE_* / REPLICA_GCS_* / REPLICA_SFTP_* variables set,
and AWS_CA_BUNDLE removed from the environment. Afterwards (pass or fail) it
stops the emulators it started; emulators that were already running (e.g.
from `cargo xtask emulators up`) are left running. An emulator that cannot be
installed or started fails the command. Exits with the test runner's exit code.

OPTIONS:
    --no-capture       show test output as it happens (nextest `--no-capture`,
                       cargo test `-- --nocapture`)
    --cargo-test       use `cargo test` even if cargo-nextest is installed
    --no-emulators     do not start the emulators nor set their variables (quick
                       local runs; tests that need an emulator then fail)
    --keep-emulators   leave the emulators running afterwards (stop them with
                       `cargo xtask emulators down`)
    -- ARGS...         passed verbatim to the runner (`--workspace` is dropped
                       when they select packages with -p/--package), e.g.
                       `cargo xtask test -- -p replica-cli restore` (nextest filters),
                       `cargo xtask test --cargo-test -- -p replica-core -- --ignored`
";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Runner {
    Nextest,
    CargoTest,
}

/// `test`'s own options.
#[derive(Debug, Default)]
struct Options {
    no_capture: bool,
    force_cargo_test: bool,
    no_emulators: bool,
    keep_emulators: bool,
    passthrough: Vec<String>,
}

fn parse(args: &[String]) -> Result<Options> {
    let mut o = Options::default();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--no-capture" | "--nocapture" => o.no_capture = true,
            "--cargo-test" => o.force_cargo_test = true,
            "--no-emulators" => o.no_emulators = true,
            "--keep-emulators" => o.keep_emulators = true,
            "--" => {
                o.passthrough.extend(it.by_ref().cloned());
                break;
            }
            other => bail!(
                "unknown option `{other}` for `cargo xtask test`; \
                 put runner arguments after `--` (see `cargo xtask help test`)"
            ),
        }
    }
    if o.no_emulators && o.keep_emulators {
        bail!("--no-emulators and --keep-emulators contradict each other");
    }
    Ok(o)
}

/// Builds the runner command.
fn build(o: &Options, nextest: bool) -> (Runner, Command) {
    let Options {
        no_capture,
        force_cargo_test,
        ref passthrough,
        ..
    } = *o;

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
            cmd.args(passthrough);
        }
        Runner::CargoTest => {
            cmd.arg("test").args(scope).arg("--no-fail-fast");
            cmd.args(passthrough);
            if no_capture {
                // Arguments after the first `--` go to the test binaries.
                if !passthrough.iter().any(|a| a == "--") {
                    cmd.arg("--");
                }
                cmd.arg("--nocapture");
            }
        }
    }
    (runner, cmd)
}

/// Installs the oracle, brings up the emulators and runs the tests; returns
/// the runner's exit code.
pub fn run(args: &[String]) -> Result<ExitCode> {
    // Reject bad options before doing any slow work.
    let opts = parse(args)?;

    util::step(&format!("ensuring Litestream {}", litestream::VERSION));
    let bin = litestream::ensure()?;
    util::step(&format!(
        "ensuring Litestream {} (writes the legacy replicas of the migration tests)",
        litestream::LEGACY.version
    ));
    let legacy_bin = litestream::ensure_release(&litestream::LEGACY)?;
    util::step(&format!(
        "ensuring Litestream's VFS extension {} (read by the VFS tests)",
        litestream::VERSION
    ));
    let vfs_python = litestream::ensure_vfs()?;

    let session = if opts.no_emulators {
        util::step("--no-emulators: not starting the emulators; tests that need one will fail");
        None
    } else {
        match emulators::Session::start() {
            Ok(s) => Some(s),
            Err(e) if emulators::is_ci() => {
                return Err(e.context("the emulators could not be started (CI=true: hard failure)"));
            }
            Err(e) => {
                eprintln!(
                    "\nxtask: the tests need the S3/Azure/GCS/SFTP emulators, and they did not start.\n\
                     hint: retry with `cargo xtask emulators up`; logs are in {}/<name>.log\n\
                     hint: or run only the tests that need no emulator: `cargo xtask test --no-emulators`",
                    emulators::state_dir_display()
                );
                return Err(e);
            }
        }
    };

    let result = run_tests(&opts, &bin, &legacy_bin, &vfs_python, session.as_ref());

    // Pass or fail (or a runner that did not start), stop what we started.
    if let Some(s) = session
        && let Err(e) = s.finish(opts.keep_emulators)
    {
        eprintln!("xtask: WARNING: stopping the emulators: {e:#}");
    }
    result
}

fn run_tests(
    opts: &Options,
    litestream_bin: &std::path::Path,
    legacy_bin: &std::path::Path,
    vfs_python: &std::path::Path,
    session: Option<&emulators::Session>,
) -> Result<ExitCode> {
    let nextest = util::cargo_subcommand_available("nextest");
    let (runner, mut cmd) = build(opts, nextest);
    cmd.env("REPLICA_LITESTREAM_BIN", litestream_bin)
        .env(litestream::LEGACY.env_var, legacy_bin)
        .env("REPLICA_LITESTREAM_VFS_PYTHON", vfs_python)
        .env_remove("AWS_CA_BUNDLE");
    if let Some(s) = session {
        cmd.envs(s.env().iter().map(|(k, v)| (k, v)));
    }
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
