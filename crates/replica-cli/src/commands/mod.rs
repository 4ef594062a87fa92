//! One module per subcommand.

mod follow;
mod generations;
mod ltx;
mod replicate;
mod restore;
mod status;
mod sync;
pub(crate) mod verify;

use std::process::ExitCode;

use crate::cli::Command;

pub async fn run(cmd: Command) -> anyhow::Result<ExitCode> {
    match cmd {
        Command::Replicate(a) => replicate::run(*a).await,
        Command::Restore(a) => restore::run(a).await,
        Command::Status(a) => status::run(a).await,
        Command::Verify(a) => verify::run(a).await,
        Command::Sync(a) => sync::run(a).await,
        Command::Ltx(a) => ltx::run(a).await,
        Command::Generations(a) => generations::run(a).await,
        Command::Version => {
            println!(
                "replica {} (commit {}; backends: {})",
                env!("CARGO_PKG_VERSION"),
                env!("REPLICA_COMMIT"),
                replica::backends().schemes().join(", ")
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Completions { shell } => {
            let mut cmd = <crate::cli::Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "replica", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
    }
}
