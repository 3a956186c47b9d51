//! `ask`: one piece, from the node's API (store, else swarm) or, with
//! `--peer`, from one peer directly. The bytes are hashed before anything is
//! written, so what lands on stdout or in the file is the piece asked for.

use std::time::Duration;

use bytes::Bytes;
use peer_node::api::MAX_FETCH_TIMEOUT;
use serde_json::json;
use wire_format::VerifiedPiece;

use crate::cli::{AskArgs, Global};
use crate::error::{CliError, CliResult, Exit};
use crate::explain::{self, EXPLAIN_HEADER};
use crate::http::{Api, MAX_PIECE_BODY_BYTES, Method};
use crate::locate::{locate, resolve};
use crate::{output, wire};

/// `ask`.
pub fn run(global: &Global, args: &AskArgs) -> CliResult {
    // Before any request: a refused terminal must not cost a fetch.
    output::check_stdout(args.output.is_some(), args.force)?;
    let timeout = args.timeout.as_ref().map(|t| t.duration);
    if let Some(peer) = &global.peer {
        if args.explain {
            eprintln!("explain: not available with --peer (only a node explains its fetches)");
        }
        let addr = resolve(peer, "--peer")?;
        return wire::ask(addr, args.id, timeout, args.output.as_deref(), global.json);
    }
    // Without --timeout the node's own --fetch-timeout applies, which this
    // client cannot know: wait as long as the API allows any fetch.
    let extra: Duration = timeout.unwrap_or(MAX_FETCH_TIMEOUT);
    let api = Api::new(locate(global)?, extra);
    let query: Vec<(&str, &str)> = args
        .timeout
        .as_ref()
        .map(|t| ("timeout", t.text.as_str()))
        .into_iter()
        .collect();
    let response = api.call(Method::Get, &format!("/api/v1/pieces/{}", args.id), &query)?;
    let explanation =
        explain::parse_header(response.headers().get(EXPLAIN_HEADER).map(|v| v.as_bytes()));
    let checked = api.check(response, "ask");
    if args.explain {
        eprint!("{}", explain::render(explanation.as_ref(), global.json));
    }
    let bytes = api.bytes(checked?, MAX_PIECE_BODY_BYTES)?;
    let piece = VerifiedPiece::verify(args.id, Bytes::from(bytes)).map_err(|err| {
        CliError::new(
            Exit::BadData,
            format!(
                "the node at {} sent bytes that are not {}: {err}; nothing was written; the node is faulty, check its version and disk",
                api.endpoint().addr,
                args.id
            ),
        )
    })?;
    output::deliver(&piece, args.output.as_deref())?;
    if let Some(path) = &args.output {
        if global.json {
            output::json_line(&json!({
                "sha256": args.id.to_hex(),
                "size": piece.len(),
                "path": path.display().to_string(),
            }))?;
        }
        eprintln!(
            "wrote {} ({} bytes) to {}",
            args.id,
            piece.len(),
            path.display()
        );
    }
    Ok(())
}
