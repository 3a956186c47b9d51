//! `put` and `get`: whole files. `put` streams the file to the node (never
//! whole in memory); `get` starts a fetch job in the node, which writes the
//! output file itself after checking the whole file's sha256, and follows
//! the job until it ends, with a progress bar on a terminal.

use std::fs::File;
use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};

use crate::cli::{GetArgs, Global, PutArgs};
use crate::error::{CliError, CliResult, Exit};
use crate::explain;
use crate::http::{Api, Method};
use crate::locate::locate;
use crate::output::{human_bytes, json_line, print};

/// How often a running fetch job is polled.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// How often it is polled once every byte is in (it is checking the whole
/// file and renaming it: the end is near, and waiting for the next poll
/// would add to the `get`'s time).
pub const FINISH_POLL_INTERVAL: Duration = Duration::from_millis(10);

/// How long a fetch job may go without progress before the CLI gives up on
/// it (the node bounds each piece's fetch far below this).
pub const JOB_STALL_TIMEOUT: Duration = Duration::from_secs(10 * 60);

/// Longest job id accepted from the node (it goes into a URL path).
const MAX_JOB_ID_CHARS: usize = 128;

/// `put`.
pub fn put(global: &Global, args: &PutArgs) -> CliResult {
    let from_stdin = args.file.as_os_str() == "-";
    if args.in_place && from_stdin {
        return Err(CliError::usage(
            "put --in-place shares a file where it is: give its path, not `-`",
        ));
    }
    let name = match (&args.name, from_stdin) {
        (Some(name), _) => name.clone(),
        (None, true) => {
            return Err(CliError::usage(
                "put - reads the file from stdin and needs a name: pass --name NAME",
            ));
        }
        (None, false) => match args.file.file_name() {
            Some(name) => name.to_string_lossy().into_owned(),
            None => {
                return Err(CliError::usage(format!(
                    "{} names no file: give a file's path, or pass --name NAME",
                    args.file.display()
                )));
            }
        },
    };
    let api = Api::new(locate(global)?, Duration::ZERO);
    let query = [("name", name.as_str())];
    let response = if args.in_place {
        // The node reads the file itself: it needs the whole path.
        let path = std::path::absolute(&args.file)
            .ok()
            .filter(|p| p.is_file())
            .ok_or_else(|| {
                CliError::usage(format!(
                    "{} is not a regular file: --in-place shares a file where it is",
                    args.file.display()
                ))
            })?;
        let path = path.to_str().ok_or_else(|| {
            CliError::usage(format!(
                "{} is not UTF-8: --in-place needs a path the node's API can carry; put it without --in-place",
                path.display()
            ))
        })?;
        api.post_stream(
            "/api/v1/files",
            &[("name", name.as_str()), ("in_place", path)],
            &[][..],
        )?
    } else if from_stdin {
        api.post_stream("/api/v1/files", &query, std::io::stdin())?
    } else {
        let file = File::open(&args.file).map_err(|err| {
            CliError::local(format!(
                "cannot read {}: {err}; check the path and its permissions",
                args.file.display()
            ))
        })?;
        let is_file = file.metadata().map(|m| m.is_file()).unwrap_or(false);
        if !is_file {
            return Err(CliError::usage(format!(
                "{} is not a regular file: give a file, or `-` with --name to read stdin",
                args.file.display()
            )));
        }
        api.post_stream("/api/v1/files", &query, file)?
    };
    let body = api.json(api.check(response, "put")?)?;
    let Some(manifest) = body.get("manifest").and_then(Value::as_str) else {
        return Err(malformed(&api, "no `manifest` in the answer"));
    };
    if global.json {
        json_line(&body)?;
    } else {
        print(&format!("{manifest}\n"))?;
    }
    let number = |key: &str| body.get(key).and_then(Value::as_u64).unwrap_or(0);
    let how = if args.in_place {
        "shared in place (not copied; keep the file where it is, unchanged)"
    } else {
        "stored"
    };
    eprintln!(
        "{how} {name}: {} in {} pieces; fetch it elsewhere with `p2p-cli get {manifest} -o FILE`",
        human_bytes(number("size")),
        number("pieces"),
    );
    Ok(())
}

/// `get`.
pub fn get(global: &Global, args: &GetArgs) -> CliResult {
    let path = std::path::absolute(&args.output).map_err(|err| {
        CliError::usage(format!(
            "cannot make {} an absolute path: {err}",
            args.output.display()
        ))
    })?;
    // Before the job starts, so a Ctrl-C never leaves a job we do not know of.
    let interrupted = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGINT, Arc::clone(&interrupted))
        .map_err(|err| CliError::local(format!("cannot catch Ctrl-C: {err}")))?;
    let api = Api::new(locate(global)?, Duration::ZERO);
    // A node on this machine writes where we would: an output it cannot
    // write is a local failure (exit 5, as for `ask -o`), not the usage
    // error its refusal of the path would be. A remote node's paths are
    // its own, so only it can judge them.
    if api.endpoint().addr.ip().is_loopback()
        && let Some(dir) = path.parent()
        && !dir.is_dir()
    {
        return Err(CliError::local(format!(
            "cannot write {}: {} is not a directory; create it, or give -o a path in an existing directory",
            path.display(),
            dir.display()
        )));
    }
    let request = json!({
        "manifest": args.manifest.to_hex(),
        "path": path.to_string_lossy(),
    });
    let response = api.post_json("/api/v1/fetches", &request)?;
    let started = api.json(api.check(response, "get")?)?;
    let id = match started.get("id").and_then(Value::as_str) {
        Some(id) if valid_job_id(id) => id.to_owned(),
        _ => return Err(malformed(&api, "no usable job `id` in the answer")),
    };
    if started.get("attached").and_then(Value::as_bool) == Some(true) {
        eprintln!(
            "the node was already fetching this file to {}: following that fetch",
            path.display()
        );
    }
    let bar = (std::io::stderr().is_terminal() && !global.json).then(progress_bar);
    let job_path = format!("/api/v1/fetches/{id}");
    let mut last_progress = (0u64, Instant::now());
    let job = loop {
        if interrupted.load(Ordering::SeqCst) {
            if let Some(bar) = &bar {
                bar.abandon();
            }
            return Err(stop(&api, &job_path, &id, args.detach));
        }
        let response = api.call(Method::Get, &job_path, &[])?;
        let job = api.json(api.check(response, "get")?)?;
        let done = job.get("bytes_done").and_then(Value::as_u64).unwrap_or(0);
        let total = job.get("bytes_total").and_then(Value::as_u64).unwrap_or(0);
        if let Some(bar) = &bar {
            bar.set_length(total);
            bar.set_position(done);
        }
        match job.get("state").and_then(Value::as_str) {
            Some("running") => {}
            Some("done" | "failed") => break job,
            _ => return Err(malformed(&api, "the job has no known `state`")),
        }
        if done != last_progress.0 {
            last_progress = (done, Instant::now());
        } else if last_progress.1.elapsed() > JOB_STALL_TIMEOUT {
            let _ = stop(&api, &job_path, &id, false);
            return Err(CliError::new(
                Exit::Deadline,
                format!(
                    "the fetch made no progress for {} s and was cancelled: try again later",
                    JOB_STALL_TIMEOUT.as_secs()
                ),
            ));
        }
        std::thread::sleep(if total > 0 && done >= total {
            FINISH_POLL_INTERVAL
        } else {
            POLL_INTERVAL
        });
    };
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    if args.explain {
        eprint!("{}", explain::render(job.get("explain"), global.json));
    }
    if global.json {
        json_line(&job)?;
    }
    match job.get("state").and_then(Value::as_str) {
        Some("done") => {
            let size = job.get("bytes_total").and_then(Value::as_u64).unwrap_or(0);
            eprintln!("wrote {} to {}", human_bytes(size), path.display());
            Ok(())
        }
        _ => Err(job_failure(&job)),
    }
}

/// The error of a failed job: its class picks the exit code.
pub fn job_failure(job: &Value) -> CliError {
    let text = job
        .get("error")
        .and_then(Value::as_str)
        .unwrap_or("unknown: the node gave no reason");
    let class = text.split_once(':').map_or(text, |(class, _)| class).trim();
    let advice = match class {
        "not_found" => {
            "no peer that was asked has some piece of the file; try again when a peer that has it is online"
        }
        "deadline" => "some peers did not answer in time; try again",
        "store_full" => "unpin files, run `p2p-cli gc`, or give the node a larger --max-store",
        "io" => "check the output directory, its permissions and free space",
        "bad_manifest" => "check the manifest sha256: it is what `p2p-cli put` printed",
        _ => "see the node's log",
    };
    CliError::new(
        Exit::of_job_class(class),
        format!("the fetch failed: {text}; {advice}"),
    )
}

/// Ctrl-C: cancel the job unless `detach`; the error to exit with.
fn stop(api: &Api, job_path: &str, id: &str, detach: bool) -> CliError {
    if detach {
        return CliError::new(
            Exit::Interrupted,
            format!("interrupted; the node goes on with the fetch (job {id})"),
        );
    }
    let cancelled = api
        .call(Method::Delete, job_path, &[])
        .and_then(|response| api.check(response, "get"));
    match cancelled {
        Ok(_) => CliError::new(Exit::Interrupted, "interrupted; the fetch was cancelled"),
        Err(err) => CliError::new(
            Exit::Interrupted,
            format!("interrupted, but cancelling the fetch (job {id}) failed: {err}"),
        ),
    }
}

fn progress_bar() -> ProgressBar {
    let bar = ProgressBar::new(0);
    // The template is a constant known to be valid; a bar without style
    // still shows progress.
    if let Ok(style) = ProgressStyle::with_template(
        "{bar:30} {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
    ) {
        bar.set_style(style);
    }
    bar
}

fn valid_job_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_JOB_ID_CHARS
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn malformed(api: &Api, what: &str) -> CliError {
    CliError::new(
        Exit::BadData,
        format!(
            "the node at {} answered with JSON this client cannot read ({what}): is it a peer-node API of a matching version?",
            api.endpoint().addr
        ),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn failed_jobs_exit_by_their_class() {
        for (error, code) in [
            ("not_found: piece 12ab has no holder", 1),
            ("deadline: 3 pieces timed out", 3),
            ("store_full: 10 GiB used", 5),
            ("io: permission denied", 5),
            ("bad_manifest: not a manifest", 6),
        ] {
            let err = job_failure(&json!({"state": "failed", "error": error}));
            assert_eq!(err.exit.code(), code, "{error}");
            assert!(err.message.contains(error), "{}", err.message);
        }
    }

    #[test]
    fn job_ids_are_path_safe() {
        assert!(valid_job_id("a1-B_2"));
        assert!(!valid_job_id(""));
        assert!(!valid_job_id("../x"));
        assert!(!valid_job_id("a/b"));
        assert!(!valid_job_id(&"a".repeat(MAX_JOB_ID_CHARS + 1)));
    }
}
