//! `p2p-cli`: see the library for what it does.

use std::process::ExitCode;

fn main() -> ExitCode {
    p2p_cli::app::main()
}
