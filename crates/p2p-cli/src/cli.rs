//! The command line: global flags, commands and their long help, parsed by
//! clap. Values are parsed here into types that cannot be wrong (a
//! [`PieceId`], a [`Timeout`] within the API's range), so a malformed
//! argument is a usage error (exit 2) before anything is sent.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use clap_complete::Shell;
use peer_node::api::MAX_FETCH_TIMEOUT;
use peer_node::datadir::DATA_DIR_ENV;
use wire_format::PieceId;

/// Talk to a p2p node: fetch pieces and files, share files, see peers and counters.
///
/// Without --api the node is found through DATA_DIR/api-addr, trusted only
/// while the node runs (holds its lock on the data dir). stdout is data;
/// messages and progress go to stderr.
///
/// Exit codes: 0 success; 1 not found; 2 usage or configuration error;
/// 3 deadline passed while some peers had not answered; 4 node or peer
/// unreachable; 5 local failure (store full, disk, output file); 6 bad data
/// although every piece verified.
#[derive(Debug, Parser)]
#[command(name = "p2p-cli", version, about, long_about)]
pub struct Cli {
    /// Options that apply to every command.
    #[command(flatten)]
    pub global: Global,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Options of every command.
#[derive(Debug, Clone, Args)]
pub struct Global {
    /// The node's API, HOST:PORT (default: read from DATA_DIR/api-addr).
    #[arg(long, global = true, value_name = "HOST:PORT")]
    pub api: Option<String>,
    /// The node's data directory, where api-addr and api-token are.
    #[arg(long, global = true, env = DATA_DIR_ENV, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// The API token (default: read from DATA_DIR/api-token). Given here,
    /// it is sent even to a non-loopback --api.
    #[arg(long, global = true, value_name = "T", hide_env_values = true)]
    pub token: Option<String>,
    /// Print one JSON object per line on stdout.
    #[arg(long, global = true)]
    pub json: bool,
    /// Speak the wire protocol directly to this node or bootstrap server
    /// (for `ask` and `peers` only), instead of going through a local node.
    #[arg(long, global = true, value_name = "HOST:PORT")]
    pub peer: Option<String>,
}

/// The commands.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Fetch one piece by its sha256 and write it (stdout unless -o).
    #[command(after_long_help = "\
Examples:
  p2p-cli ask 46eb387bfeb67f0e88af3383ededcd52af3e8e9321ce660402904b6287b2f021 -o piece.bin
  p2p-cli ask <sha256> --timeout 30 --explain > piece.bin
  p2p-cli --peer 192.0.2.7:7001 ask <sha256> -o piece.bin

The bytes written always hash to the name asked for.")]
    Ask(AskArgs),
    /// List the peers the node knows: address, direction, state, age, bytes, ban reason.
    #[command(after_long_help = "\
Examples:
  p2p-cli peers
  p2p-cli --json peers | jq .addr
  p2p-cli --peer bootstrap.example:7000 peers")]
    Peers,
    /// Add a file to the node's store; prints its manifest sha256 on stdout.
    #[command(after_long_help = "\
Examples:
  p2p-cli put holiday.mkv
  tar c photos | p2p-cli put - --name photos.tar

Share the printed manifest sha256; others fetch the file with `p2p-cli get`.")]
    Put(PutArgs),
    /// Fetch a whole file by its manifest sha256 into FILE.
    #[command(after_long_help = "\
Examples:
  p2p-cli get 5d41402abc4b2a76b9719d911017c592ae1cb5d5d8fb6ab8a9d3c8a1e2f0b1c3 -o holiday.mkv
  p2p-cli get <manifest> -o out.bin --detach   # Ctrl-C leaves the fetch running in the node

The node writes FILE itself and checks the whole file's sha256 before it appears.")]
    Get(GetArgs),
    /// Show what the node's store holds: files, loose pieces, bytes used.
    #[command(after_long_help = "\
Examples:
  p2p-cli ls
  p2p-cli --json ls")]
    Ls,
    /// Keep a file (by manifest) or a piece in the store.
    #[command(after_long_help = "\
Example:
  p2p-cli pin 46eb387bfeb67f0e88af3383ededcd52af3e8e9321ce660402904b6287b2f021")]
    Pin(IdArg),
    /// Release a pinned file or piece (gc may then drop it).
    #[command(after_long_help = "\
Example:
  p2p-cli unpin 46eb387bfeb67f0e88af3383ededcd52af3e8e9321ce660402904b6287b2f021")]
    Unpin(IdArg),
    /// Drop the cached pieces that nothing pins.
    #[command(after_long_help = "\
Example:
  p2p-cli gc")]
    Gc,
    /// Re-hash every piece the node holds; report and drop what no longer
    /// matches (exit 5 if the store's own pieces were damaged).
    #[command(after_long_help = "\
Example:
  p2p-cli verify")]
    Verify,
    /// Print the node's counters, one `name value` line each, sorted.
    #[command(after_long_help = "\
Examples:
  p2p-cli stats
  p2p-cli stats | grep bans")]
    Stats,
    /// Print shell completions on stdout.
    #[command(after_long_help = "\
Examples:
  p2p-cli completions bash > ~/.local/share/bash-completion/completions/p2p-cli
  p2p-cli completions zsh > ~/.zfunc/_p2p-cli
  p2p-cli completions fish > ~/.config/fish/completions/p2p-cli.fish")]
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: CompletionShell,
    },
}

/// The shells completions are made for.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum CompletionShell {
    /// GNU bash.
    Bash,
    /// Z shell.
    Zsh,
    /// fish.
    Fish,
}

impl From<CompletionShell> for Shell {
    fn from(shell: CompletionShell) -> Self {
        match shell {
            CompletionShell::Bash => Self::Bash,
            CompletionShell::Zsh => Self::Zsh,
            CompletionShell::Fish => Self::Fish,
        }
    }
}

/// `ask`'s arguments.
#[derive(Debug, Clone, Args)]
pub struct AskArgs {
    /// The piece's sha256 (64 hex characters).
    #[arg(value_name = "SHA256", value_parser = parse_id)]
    pub id: PieceId,
    /// Write the piece to FILE (through a temporary name beside it).
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Give up after SECS seconds (default: the node's --fetch-timeout).
    #[arg(long, value_name = "SECS", value_parser = parse_timeout)]
    pub timeout: Option<Timeout>,
    /// Show on stderr which peers were asked and what each answered.
    #[arg(long)]
    pub explain: bool,
    /// Write binary data even to a terminal.
    #[arg(long)]
    pub force: bool,
}

/// `put`'s arguments.
#[derive(Debug, Clone, Args)]
pub struct PutArgs {
    /// The file, or `-` for stdin (then --name is required).
    #[arg(value_name = "FILE|-")]
    pub file: PathBuf,
    /// The name the store lists the file under (default: the file's name).
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Share the file where it is, without copying it into the store (the
    /// node reads it; pieces that change afterwards are no longer shared).
    #[arg(long)]
    pub in_place: bool,
}

/// `get`'s arguments.
#[derive(Debug, Clone, Args)]
pub struct GetArgs {
    /// The file's manifest sha256 (what `put` printed).
    #[arg(value_name = "MANIFEST_SHA256", value_parser = parse_id)]
    pub manifest: PieceId,
    /// Where the node writes the file.
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: PathBuf,
    /// Show on stderr which peers gave what, once the fetch ends.
    #[arg(long)]
    pub explain: bool,
    /// On Ctrl-C, leave the fetch running in the node instead of cancelling it.
    #[arg(long)]
    pub detach: bool,
}

/// One sha256 argument.
#[derive(Debug, Clone, Args)]
pub struct IdArg {
    /// A piece's sha256, or a file's manifest sha256.
    #[arg(value_name = "SHA256", value_parser = parse_id)]
    pub id: PieceId,
}

/// A fetch deadline as the user wrote it (sent to the node as written) and
/// as a duration (added to the client's own read deadline).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timeout {
    /// Decimal seconds, e.g. `2.5`.
    pub text: String,
    /// The same, as a duration.
    pub duration: Duration,
}

/// Most decimal places of `--timeout`: nanoseconds, as the API takes.
const TIMEOUT_MAX_DECIMALS: usize = 9;

fn parse_id(text: &str) -> Result<PieceId, String> {
    text.parse::<PieceId>()
        .map_err(|err| format!("{err}: give the sha256 as 64 hex characters"))
}

/// `--timeout`: decimal seconds (`10`, `2.5`), more than 0 and at most the
/// API's [`MAX_FETCH_TIMEOUT`].
pub fn parse_timeout(text: &str) -> Result<Timeout, String> {
    let bad = || {
        format!(
            "a timeout is decimal seconds (like 10 or 2.5), more than 0 and at most {}",
            MAX_FETCH_TIMEOUT.as_secs()
        )
    };
    let (whole, frac) = text.split_once('.').unwrap_or((text, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty()
        || !digits(whole)
        || !digits(frac)
        || (text.contains('.') && frac.is_empty())
        || frac.len() > TIMEOUT_MAX_DECIMALS
    {
        return Err(bad());
    }
    let secs: u64 = whole.parse().map_err(|_| bad())?;
    let nanos: u32 = format!("{frac:0<width$}", width = TIMEOUT_MAX_DECIMALS)
        .parse()
        .map_err(|_| bad())?;
    let duration = Duration::new(secs, nanos);
    if duration.is_zero() || duration > MAX_FETCH_TIMEOUT {
        return Err(bad());
    }
    Ok(Timeout {
        text: text.to_owned(),
        duration,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn timeouts() {
        assert_eq!(
            parse_timeout("10").unwrap().duration,
            Duration::from_secs(10)
        );
        assert_eq!(
            parse_timeout("2.5").unwrap().duration,
            Duration::from_millis(2500)
        );
        assert_eq!(parse_timeout("2.5").unwrap().text, "2.5");
        assert_eq!(parse_timeout("600").unwrap().duration, MAX_FETCH_TIMEOUT);
        assert_eq!(
            parse_timeout("0.000000001").unwrap().duration,
            Duration::from_nanos(1)
        );
        for bad in [
            "",
            "0",
            "0.0",
            "-1",
            "+1",
            "1e3",
            ".5",
            "5.",
            "601",
            "600.000000001",
            "abc",
            " 1",
            "0.0000000001",
        ] {
            assert!(parse_timeout(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn every_command_has_an_example_in_its_long_help() {
        let mut cli = Cli::command();
        for sub in cli.get_subcommands_mut() {
            let help = sub.render_long_help().to_string();
            assert!(help.contains("p2p-cli "), "{}: {help}", sub.get_name());
        }
    }

    #[test]
    fn a_malformed_sha256_is_a_usage_error() {
        let err = Cli::try_parse_from(["p2p-cli", "ask", "abc"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("64 hex"), "{err}");
    }
}
