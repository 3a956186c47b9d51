//! From parsed arguments to an exit code: picks the command, refuses
//! combinations that mean nothing, prints the error on stderr.

use std::process::ExitCode;

use clap::{CommandFactory, Parser};

use crate::cli::{Cli, Command};
use crate::commands::{ask, files, info, store};
use crate::error::{CliError, CliResult, Exit};
use crate::output;

/// Parses the process's arguments and runs the command. A clap error exits
/// 2 (0 for `--help` and `--version`).
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            // Printing can only fail if stderr/stdout is gone; the exit
            // code still tells.
            let _ = err.print();
            return if err.use_stderr() {
                Exit::Usage.into()
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("p2p-cli: {err}");
            err.exit.into()
        }
    }
}

/// Runs one parsed command line.
pub fn run(cli: &Cli) -> CliResult {
    let global = &cli.global;
    if global.peer.is_some() && !matches!(cli.command, Command::Ask(_) | Command::Peers) {
        return Err(CliError::usage(
            "--peer works with `ask` and `peers` only: drop --peer to use your node's API",
        ));
    }
    match &cli.command {
        Command::Ask(args) => ask::run(global, args),
        Command::Peers => info::peers(global),
        Command::Stats => info::stats(global),
        Command::Put(args) => files::put(global, args),
        Command::Get(args) => files::get(global, args),
        Command::Ls => store::ls(global),
        Command::Pin(arg) => store::pin(global, arg.id, true),
        Command::Unpin(arg) => store::pin(global, arg.id, false),
        Command::Gc => store::gc(global),
        Command::Verify => store::verify(global),
        Command::Completions { shell } => {
            let mut buf = Vec::new();
            clap_complete::generate(
                clap_complete::Shell::from(*shell),
                &mut Cli::command(),
                "p2p-cli",
                &mut buf,
            );
            output::print(&String::from_utf8_lossy(&buf))
        }
    }
}
