//! Sockets: connecting with a deadline, the one socket-tuning helper,
//! dual-stack listeners, the accept loop, and [`OpenSockets`], the count of
//! accepted sockets (in total and per host) behind both programs'
//! connection limits.
//!
//! Uses [`super::frame`] for its error type only.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::time::timeout;
use wire_format::host_key;
use wire_format::limits::CONNECT_TIMEOUT;

use super::frame::ConnError;

/// Connects with the [`CONNECT_TIMEOUT`] deadline.
pub async fn connect(addr: SocketAddr) -> Result<TcpStream, ConnError> {
    let stream = timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| ConnError::Timeout {
            what: "connect",
            after: CONNECT_TIMEOUT,
        })??;
    tune(&stream);
    Ok(stream)
}

/// Backlog of a listening socket.
const LISTEN_BACKLOG: u32 = 1024;

/// A dual-stack listener (`IPV6_V6ONLY` off) when `addr` is IPv6.
pub fn bind_listener(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => {
            let socket = TcpSocket::new_v6()?;
            rustix::net::sockopt::set_ipv6_v6only(&socket, false)?;
            socket
        }
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// The warning that the process is out of file descriptors comes at most
/// once per this interval (accept fails every [`ACCEPT_RETRY`] meanwhile).
pub const ACCEPT_WARN_INTERVAL: Duration = Duration::from_secs(60);

/// Pause after a failed accept (out of descriptors, say) before the next.
pub const ACCEPT_RETRY: Duration = Duration::from_millis(50);

/// Accepts connections on `listener`, handing each to `on_accept`, until
/// `shutdown` resolves. A failed accept is logged and retried after
/// [`ACCEPT_RETRY`], so a full descriptor table does not spin.
pub async fn accept_until(
    listener: &TcpListener,
    shutdown: impl Future<Output = ()>,
    mut on_accept: impl FnMut(TcpStream, SocketAddr),
) {
    let accept = async {
        let mut warned = None;
        loop {
            match listener.accept().await {
                Ok((stream, remote)) => on_accept(stream, remote),
                Err(err) => {
                    let out_of_fds =
                        matches!(err.raw_os_error(), Some(libc::EMFILE | libc::ENFILE));
                    let due = warned
                        .is_none_or(|at: std::time::Instant| at.elapsed() >= ACCEPT_WARN_INTERVAL);
                    if out_of_fds && due {
                        tracing::warn!(
                            %err,
                            "accept failed: out of file descriptors; raise the open-files limit (ulimit -n) or lower --max-connections"
                        );
                        warned = Some(std::time::Instant::now());
                    } else if !out_of_fds {
                        tracing::warn!(%err, "accept failed");
                    }
                    tokio::time::sleep(ACCEPT_RETRY).await;
                }
            }
        }
    };
    tokio::select! {
        () = shutdown => {}
        () = accept => {}
    }
}

/// Accepted sockets still open, in total and per IP: connection limits
/// count a socket from accept until its task ends, whether or not it ever
/// sends a HELLO or is registered. Clones share the counts.
#[derive(Debug, Clone, Default)]
pub struct OpenSockets(Arc<Mutex<SocketCounts>>);

#[derive(Debug, Default)]
struct SocketCounts {
    total: usize,
    /// Only IPs with an open socket: never more entries than `total`.
    per_ip: HashMap<IpAddr, usize>,
}

impl OpenSockets {
    fn counts(&self) -> MutexGuard<'_, SocketCounts> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sockets open now.
    pub fn total(&self) -> usize {
        self.counts().total
    }

    /// Distinct IPs with a socket open now.
    pub fn ips(&self) -> usize {
        self.counts().per_ip.len()
    }

    /// Takes a place for a socket from `ip` if `admit(total, of_ip)` allows
    /// it (the counts before this socket), or returns `admit`'s refusal.
    /// Checked and taken under one lock, so concurrent takes and releases
    /// never let the counts pass a limit. "Of its IP" is of its host: a
    /// public IPv6 address counts with its whole /64 ([`host_key`]).
    pub fn take<E>(
        &self,
        ip: IpAddr,
        admit: impl FnOnce(usize, usize) -> Result<(), E>,
    ) -> Result<SocketSlot, E> {
        let ip = host_key(ip);
        let mut guard = self.counts();
        let counts = &mut *guard;
        admit(counts.total, counts.per_ip.get(&ip).copied().unwrap_or(0))?;
        counts.total += 1;
        *counts.per_ip.entry(ip).or_default() += 1;
        Ok(SocketSlot {
            sockets: self.clone(),
            ip,
        })
    }
}

/// One open socket's place in [`OpenSockets`], held by its task and given
/// back when dropped, however the task ends.
#[derive(Debug)]
pub struct SocketSlot {
    sockets: OpenSockets,
    ip: IpAddr,
}

impl Drop for SocketSlot {
    fn drop(&mut self) {
        let mut guard = self.sockets.counts();
        let counts = &mut *guard;
        // `take` counted this slot in both, so neither is zero.
        counts.total = counts.total.saturating_sub(1);
        if let Entry::Occupied(mut of_ip) = counts.per_ip.entry(self.ip) {
            *of_ip.get_mut() = of_ip.get().saturating_sub(1);
            if *of_ip.get() == 0 {
                of_ip.remove();
            }
        }
    }
}

/// Sets the options every peer connection gets: no Nagle delay (frames are
/// written whole). Socket buffers are left to the kernel's autotuning:
/// fixed 4 MiB buffers were measured and were no faster on loopback.
pub fn tune(stream: &TcpStream) {
    // Best effort: a failure only costs speed.
    let _ = stream.set_nodelay(true);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn connect_gives_up_at_the_connect_deadline() {
        // A listener whose accept queue is full: the kernel drops further
        // SYNs, so a connect there hangs (all on loopback).
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = socket.listen(1).unwrap();
        let addr = listener.local_addr().unwrap();
        let mut held = Vec::new();
        let mut timed_out = false;
        // Fill the queue; the first connect that does not complete in time
        // must fail with the connect deadline, measured on the paused clock.
        for _ in 0..16 {
            let start = tokio::time::Instant::now();
            match connect(addr).await {
                Ok(stream) => held.push(stream),
                Err(ConnError::Timeout {
                    what: "connect",
                    after,
                }) => {
                    assert_eq!(after, CONNECT_TIMEOUT);
                    assert_eq!(start.elapsed(), CONNECT_TIMEOUT);
                    timed_out = true;
                    break;
                }
                Err(other) => panic!("unexpected {other}"),
            }
        }
        assert!(timed_out, "the accept queue never filled");
        drop(listener);
    }
}
