//! One module per subcommand.

mod generations;
mod ltx;
mod replicate;
mod restore;
mod status;

use std::process::ExitCode;

use crate::cli::Command;

pub async fn run(cmd: Command) -> anyhow::Result<ExitCode> {
    match cmd {
        Command::Replicate(a) => replicate::run(*a).await,
        Command::Restore(a) => restore::run(a).await,
        Command::Status(a) => status::run(a).await,
        Command::Ltx(a) => ltx::run(a).await,
        Command::Generations(a) => generations::run(a).await,
        Command::Version => {
            println!("replica {}", env!("CARGO_PKG_VERSION"));
            Ok(ExitCode::SUCCESS)
        }
    }
}
