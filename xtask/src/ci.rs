//! `cargo xtask ci`: what `.ci/run` executes.
//!
//! 1. `cargo fmt --all -- --check`
//! 2. `cargo clippy --workspace --all-targets -- -D warnings`
//! 3. exactly what `cargo xtask test` does.
//!
//! Clippy is included because it is cheap next to the test build: about 27 s
//! from a cold target dir on the 2-core CI machine (measured with the initial
//! workspace) and a few seconds warm, against a 90-minute CI budget. Stages
//! stop at the first failure, so a lint failure is reported quickly.
//! Run `cargo xtask lint` before submitting to avoid surprises.

use std::process::ExitCode;

use anyhow::{Result, bail};

use crate::{lint, test, util};

pub fn run(args: &[String]) -> Result<ExitCode> {
    if let Some(a) = args.first() {
        bail!("unexpected argument `{a}` for `cargo xtask ci`");
    }
    // A machine without the rustfmt/clippy components (they cannot be
    // downloaded in CI) skips that stage loudly instead of failing the tests.
    if !util::cargo_subcommand_available("fmt") {
        eprintln!("\nxtask ci: WARNING: rustfmt is not installed; skipping the format check");
    } else if let Some(code) = lint::fmt_check()? {
        eprintln!("\nxtask ci: FAILED: formatting check (fix with `cargo fmt --all`)");
        return Ok(code);
    }
    if !util::cargo_subcommand_available("clippy") {
        eprintln!("\nxtask ci: WARNING: clippy is not installed; skipping clippy");
    } else if let Some(code) = lint::clippy()? {
        eprintln!("\nxtask ci: FAILED: clippy (reproduce with `cargo xtask lint`)");
        return Ok(code);
    }
    util::step("lint passed; running `cargo xtask test`");
    test::run(&[])
}
