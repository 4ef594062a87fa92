//! `cargo xtask ci`: what `.ci/run` executes. Stages, stopping at the first failure:
//!
//! 1. `cargo xtask lint`: `cargo fmt --all -- --check`, then
//!    `cargo clippy --workspace --all-targets -- -D warnings`; a machine without
//!    rustfmt or clippy fails here rather than skipping them;
//! 2. exactly what `cargo xtask test` does (the README's test command);
//! 3. `cargo check -p replica --no-default-features`, once with no feature and once
//!    with each `backend-*` feature of `crates/replica` alone, warnings denied: the
//!    workspace build unifies features, so a backend that only compiles with another
//!    one enabled (or an import only one feature uses) goes unnoticed otherwise;
//! 4. `cargo doc --workspace --no-deps` with `RUSTDOCFLAGS=-D warnings` (broken
//!    intra-doc links, bad code blocks).
//!
//! Warnings are denied in stage 3 by reading cargo's JSON messages, not through
//! `RUSTFLAGS`: changing `RUSTFLAGS` would change every dependency's fingerprint and
//! rebuild them all next to the normal build.

use std::io::{BufRead, BufReader};
use std::process::{ExitCode, Stdio};

use anyhow::{Context, Result, bail};

use crate::{lint, test, util};

pub const HELP: &str = "
Stages, stopping at the first failure (exit code: the failing stage's):
    1. `cargo xtask lint`: cargo fmt --all -- --check, then
       cargo clippy --workspace --all-targets -- -D warnings
       (fails if rustfmt or clippy is not installed)
    2. `cargo xtask test`, exactly as the README runs it
    3. cargo check -p replica --no-default-features, with no feature and with
       each backend-* feature of crates/replica alone; warnings fail the stage
    4. RUSTDOCFLAGS='-D warnings' cargo doc --workspace --no-deps
";

/// The facade crate whose backend features are checked one at a time.
const FACADE: &str = "replica";

pub fn run(args: &[String]) -> Result<ExitCode> {
    if let Some(a) = args.first() {
        bail!("unexpected argument `{a}` for `cargo xtask ci`");
    }
    lint::require_tools(false)?;
    if let Some(code) = lint::fmt_check()? {
        eprintln!("\nxtask ci: FAILED: formatting check (fix with `cargo fmt --all`)");
        return Ok(code);
    }
    if let Some(code) = lint::clippy()? {
        eprintln!("\nxtask ci: FAILED: clippy (reproduce with `cargo xtask lint`)");
        return Ok(code);
    }

    util::step("lint passed; running `cargo xtask test`");
    let code = test::run(&[])?;
    if code != ExitCode::SUCCESS {
        eprintln!("\nxtask ci: FAILED: tests (reproduce with `cargo xtask test`)");
        return Ok(code);
    }

    let features = backend_features()?;
    let mut sets: Vec<Option<&str>> = vec![None];
    sets.extend(features.iter().map(|f| Some(f.as_str())));
    for set in sets {
        let what = match set {
            Some(f) => format!("`{FACADE}` with only `{f}`"),
            None => format!("`{FACADE}` with no backend"),
        };
        util::step(&format!("checking {what}"));
        let mut cmd = util::cargo();
        cmd.args(["check", "-p", FACADE, "--no-default-features"]);
        if let Some(f) = set {
            cmd.args(["--features", f]);
        }
        if let Some(code) = check_denying_warnings(&mut cmd)? {
            eprintln!("\nxtask ci: FAILED: {what} does not build cleanly");
            return Ok(code);
        }
    }

    util::step("building the docs (RUSTDOCFLAGS=-D warnings)");
    let st = util::run_status(
        util::cargo()
            .args(["doc", "--workspace", "--no-deps"])
            .env("RUSTDOCFLAGS", "-D warnings"),
    )?;
    if !st.success() {
        eprintln!("\nxtask ci: FAILED: `cargo doc --workspace --no-deps` has warnings");
        return Ok(util::exit_code(st));
    }

    eprintln!("\nxtask ci: passed");
    Ok(ExitCode::SUCCESS)
}

/// The `backend-*` features of the facade crate, from `cargo metadata`, so that a new
/// backend is checked without editing this file.
fn backend_features() -> Result<Vec<String>> {
    let out = util::cargo()
        .args(["metadata", "--no-deps", "--format-version", "1"])
        .stderr(Stdio::inherit())
        .output()
        .context("failed to run `cargo metadata`")?;
    if !out.status.success() {
        bail!("`cargo metadata` failed ({})", out.status);
    }
    let meta: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("`cargo metadata` printed invalid JSON")?;
    let package = meta["packages"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == FACADE))
        .with_context(|| format!("`cargo metadata` lists no package `{FACADE}`"))?;
    let mut features: Vec<String> = package["features"]
        .as_object()
        .map(|fs| {
            fs.keys()
                .filter(|k| k.starts_with("backend-"))
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    features.sort();
    if features.is_empty() {
        bail!(
            "package `{FACADE}` has no `backend-*` features; is `crates/{FACADE}/Cargo.toml` intact?"
        );
    }
    Ok(features)
}

/// Runs a `cargo check` with JSON messages, printing each diagnostic as cargo would;
/// returns a failing exit code if the build failed or any workspace crate warned
/// (dependencies' warnings are capped by cargo and never reach us).
fn check_denying_warnings(cmd: &mut std::process::Command) -> Result<Option<ExitCode>> {
    cmd.arg("--message-format=json").stdout(Stdio::piped());
    eprintln!("$ {}", util::display(cmd));
    let mut child = cmd
        .spawn()
        .with_context(|| format!("failed to start `{}`", util::display(cmd)))?;
    let stdout = child
        .stdout
        .take()
        .context("cargo's stdout was not captured")?;
    let mut warnings = 0usize;
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading cargo's JSON messages")?;
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if msg["reason"] != "compiler-message" {
            continue;
        }
        let diag = &msg["message"];
        if diag["level"] == "warning" {
            warnings += 1;
        }
        if let Some(rendered) = diag["rendered"].as_str() {
            eprint!("{rendered}");
        }
    }
    let st = child.wait().context("waiting for cargo check")?;
    if !st.success() {
        return Ok(Some(util::exit_code(st)));
    }
    if warnings > 0 {
        eprintln!("xtask ci: {warnings} warning(s); warnings are errors here");
        return Ok(Some(ExitCode::FAILURE));
    }
    Ok(None)
}
