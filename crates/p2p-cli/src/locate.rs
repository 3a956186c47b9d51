//! Finding the node: its API address and the token to send it.
//!
//! With `--api` the address is the user's. Without it, `DATA/api-addr` names
//! it, and is trusted only while the node holds its lock on the data dir
//! (`DATA/lock`): after a crash the file stays behind, and whoever took the
//! port since must not receive the token. The lock is probed without
//! blocking and released at once. The token (`DATA/api-token`, a regular
//! file of ours, never a link) goes only to loopback addresses unless
//! `--token` was given.

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};

use peer_node::datadir::{DataDir, DataDirError, default_path};
use piece_store::DirLock;
use piece_store::lock::LOCK_FILE;

use crate::cli::Global;
use crate::error::{CliError, CliResult};

/// Where the node's API is and how to authenticate to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The API's address (its `Host` header is this, which the API accepts).
    pub addr: SocketAddr,
    /// Where the address came from, for messages: `--api` or the file.
    pub origin: String,
    /// The token, if one may be sent to `addr`.
    pub token: Option<String>,
    /// Where the token came from, for the message when it is refused.
    pub token_origin: String,
}

/// Whether a process holds the data dir's lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockState {
    /// A node runs on the data dir.
    Held,
    /// Nobody holds it (or there is no lock file): no node runs.
    Free,
}

/// Finds the API from the global flags.
pub fn locate(global: &Global) -> CliResult<Endpoint> {
    match &global.api {
        Some(api) => explicit(global, api),
        None => from_data_dir(global),
    }
}

fn data_dir_path(global: &Global) -> CliResult<PathBuf> {
    match &global.data_dir {
        Some(path) => Ok(path.clone()),
        None => default_path().map_err(|err| CliError::usage(err.to_string())),
    }
}

/// The data dir, checked as the node checks it; a missing one means no
/// node ever ran there.
fn open_data_dir(path: &Path) -> CliResult<DataDir> {
    DataDir::open(path).map_err(|err| match &err {
        DataDirError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound => {
            CliError::unreachable(format!(
                "no node runs on the data dir {}: it does not exist; start one with `peer-node --data-dir {}`, or pass --data-dir or --api",
                path.display(),
                path.display()
            ))
        }
        _ => CliError::usage(err.to_string()),
    })
}

fn from_data_dir(global: &Global) -> CliResult<Endpoint> {
    let path = data_dir_path(global)?;
    let dir = open_data_dir(&path)?;
    let addr_path = dir.api_addr_path();
    let Some(addr) = dir
        .read_api_addr()
        .map_err(|err| CliError::usage(err.to_string()))?
    else {
        return Err(CliError::unreachable(format!(
            "no node runs on the data dir {} (there is no {}): start one with `peer-node --data-dir {}`, or pass --api HOST:PORT",
            path.display(),
            addr_path.display(),
            path.display()
        )));
    };
    match probe_lock(dir.path()) {
        Ok(LockState::Held) => {}
        Ok(LockState::Free) => {
            return Err(CliError::unreachable(format!(
                "the node of {} is not running (nobody holds {}), so {} is stale, left by a node that stopped without removing it; not trusting it: start peer-node again, or pass --api HOST:PORT",
                path.display(),
                dir.path().join(LOCK_FILE).display(),
                addr_path.display()
            )));
        }
        Err(err) => {
            return Err(CliError::usage(format!(
                "cannot tell whether a node runs on {}: {err}; check the data dir, or pass --api HOST:PORT",
                path.display()
            )));
        }
    }
    let origin = format!("from {}", addr_path.display());
    let (token, token_origin) = token_for(global, addr, Some(&dir))?;
    Ok(Endpoint {
        addr,
        origin,
        token,
        token_origin,
    })
}

fn explicit(global: &Global, api: &str) -> CliResult<Endpoint> {
    let addr = resolve(api, "--api")?;
    let dir = match &global.token {
        Some(_) => None,
        None => Some(open_data_dir(&data_dir_path(global)?)?),
    };
    let (token, token_origin) = token_for(global, addr, dir.as_ref())?;
    Ok(Endpoint {
        addr,
        origin: format!("from --api {api}"),
        token,
        token_origin,
    })
}

/// Resolves `HOST:PORT` (an IP address, or a name) to its first address.
pub fn resolve(text: &str, flag: &str) -> CliResult<SocketAddr> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    if !text.contains(':') {
        return Err(CliError::usage(format!(
            "{flag} {text} has no port: give HOST:PORT, like 127.0.0.1:7070 or [::1]:7070"
        )));
    }
    match text.to_socket_addrs() {
        Ok(mut addrs) => addrs.next().ok_or_else(|| {
            CliError::unreachable(format!(
                "{flag} {text} resolves to no address: check the name, or give an IP address"
            ))
        }),
        Err(err) => Err(CliError::unreachable(format!(
            "cannot resolve {flag} {text}: {err}; check the name, or give an IP address"
        ))),
    }
}

/// The token to send to `addr`: `--token` as given, else the data dir's,
/// which goes to loopback addresses only.
fn token_for(
    global: &Global,
    addr: SocketAddr,
    dir: Option<&DataDir>,
) -> CliResult<(Option<String>, String)> {
    if let Some(token) = &global.token {
        return Ok((Some(token.clone()), "the --token given".to_owned()));
    }
    if !is_loopback(addr) {
        return Err(CliError::usage(format!(
            "{addr} is not a loopback address, and the API token of the data dir is sent only to loopback addresses: pass --token T to send a token there"
        )));
    }
    let Some(dir) = dir else {
        return Ok((None, "no token".to_owned()));
    };
    let token_path = dir.api_token_path();
    match dir.read_token() {
        Ok(Some(token)) => Ok((Some(token), token_path.display().to_string())),
        Ok(None) => Err(CliError::usage(format!(
            "there is no {}: the node creates it when it starts; start peer-node on {}, or pass --token",
            token_path.display(),
            dir.path().display()
        ))),
        Err(err) => Err(CliError::usage(err.to_string())),
    }
}

/// Whether `addr` is on this machine's loopback (127.0.0.0/8, ::1, or an
/// IPv4-mapped loopback address).
pub fn is_loopback(addr: SocketAddr) -> bool {
    addr.ip().to_canonical().is_loopback()
}

/// Tests, without blocking, whether a process holds the lock on `dir`
/// ([`DirLock::is_held`]: no link followed, released at once).
pub fn probe_lock(dir: &Path) -> io::Result<LockState> {
    match DirLock::is_held(dir) {
        Ok(true) => Ok(LockState::Held),
        Ok(false) => Ok(LockState::Free),
        Err(err) => Err(io::Error::other(err.to_string())),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn the_lock_probe_sees_a_holder_and_releases_what_it_takes() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(probe_lock(dir.path()).unwrap(), LockState::Free, "no file");
        let held = DirLock::acquire(dir.path()).unwrap();
        assert_eq!(probe_lock(dir.path()).unwrap(), LockState::Held);
        drop(held);
        assert_eq!(probe_lock(dir.path()).unwrap(), LockState::Free);
        // The probe released it: a node can take it.
        let _again = DirLock::acquire(dir.path()).unwrap();
    }

    #[test]
    fn a_lock_symlink_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("elsewhere");
        std::fs::write(&target, b"").unwrap();
        std::os::unix::fs::symlink(&target, dir.path().join(LOCK_FILE)).unwrap();
        assert!(probe_lock(dir.path()).is_err());
    }

    #[test]
    fn loopback_addresses() {
        for yes in [
            "127.0.0.1:1",
            "127.9.9.9:1",
            "[::1]:1",
            "[::ffff:127.0.0.1]:1",
        ] {
            assert!(is_loopback(yes.parse().unwrap()), "{yes}");
        }
        for no in ["0.0.0.0:1", "192.0.2.1:1", "[::]:1", "[2001:db8::1]:1"] {
            assert!(!is_loopback(no.parse().unwrap()), "{no}");
        }
    }

    #[test]
    fn an_address_without_a_port_is_a_usage_error() {
        let err = resolve("localhost", "--api").unwrap_err();
        assert_eq!(err.exit, crate::error::Exit::Usage);
        assert!(resolve("127.0.0.1:7070", "--api").is_ok());
        assert!(resolve("[::1]:7070", "--api").is_ok());
    }
}
