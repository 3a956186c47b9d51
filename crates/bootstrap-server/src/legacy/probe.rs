//! The dial-back probe of a legacy client: connect to the port its PEERS
//! names and listen. A legacy client accepts, reads, and never writes on a
//! connection it did not open, so a connection that is accepted and stays
//! silent through the silence deadline (the hello timeout outside tests) is
//! one. The probe sends nothing: the only frame a legacy client could be sent
//! harmlessly besides PEERS is a HELLO, and it asks for nothing.
//!
//! The probe closes only when the other side is not writing: a legacy client
//! dies if a connection it writes to is closed under it. After a silent
//! deadline it closes at once; if the other side writes, the probe fails,
//! and it reads and drops the bytes until they stop for [`PROBE_QUIET`],
//! for at most [`PROBE_DRAIN_MAX`], before it closes.
//!
//! Uses `peer_node::net` for the connect deadline, nothing of this crate.

use std::net::SocketAddr;
use std::time::Duration;

use peer_node::net::{self, ConnError};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::time::{Instant, timeout};
use wire_format::limits::{CONNECT_TIMEOUT, HELLO_TIMEOUT};

/// The other side counts as no longer writing once no byte has come for
/// this long.
pub const PROBE_QUIET: Duration = Duration::from_secs(1);

/// Longest a probe keeps reading a probed port that writes before it
/// closes anyway: whatever writes that long is not a legacy client.
pub const PROBE_DRAIN_MAX: Duration = Duration::from_secs(10);

/// Longest one probe holds its socket (and its probe slot): the connect
/// deadline, the hello timeout, then the drain bound.
pub const PROBE_LONGEST: Duration = CONNECT_TIMEOUT
    .saturating_add(HELLO_TIMEOUT)
    .saturating_add(PROBE_DRAIN_MAX);

/// Bytes read at a time while watching or draining; they are dropped.
const DRAIN_CHUNK_BYTES: usize = 4 << 10;

/// Why a legacy probe failed.
#[derive(Debug, thiserror::Error)]
pub enum LegacyProbeError {
    /// No connection within the connect deadline.
    #[error("connect: {0}")]
    Connect(#[from] ConnError),
    /// The other side closed: nobody stays there.
    #[error("closed by the probed port")]
    Closed,
    /// The other side wrote: not a legacy client.
    #[error("the probed port wrote {bytes} bytes")]
    Wrote {
        /// Bytes read and dropped before the probe closed.
        bytes: u64,
    },
    /// The socket failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// What the probed side did while watched.
#[derive(Debug, PartialEq, Eq)]
pub enum Heard {
    /// Nothing through the whole silence deadline.
    Silence,
    /// It closed.
    Closed,
    /// It wrote `bytes`, all read and dropped; then it stopped, or closed,
    /// or the drain bound passed (`stopped` false).
    Wrote {
        /// Bytes read and dropped.
        bytes: u64,
        /// Whether it stopped writing (quiet or closed) within the bound.
        stopped: bool,
    },
}

/// Probes a legacy client listening at `addr`: succeeds if a connection is
/// accepted and stays silent for `silence`.
pub async fn probe(addr: SocketAddr, silence: Duration) -> Result<(), LegacyProbeError> {
    let mut stream = net::connect(addr).await?;
    let heard = listen(&mut stream, silence).await?;
    // Dropped here: closed while the other side is not writing.
    drop(stream);
    match heard {
        Heard::Silence => Ok(()),
        Heard::Closed => Err(LegacyProbeError::Closed),
        Heard::Wrote { bytes, .. } => Err(LegacyProbeError::Wrote { bytes }),
    }
}

/// Watches `io` for `silence`, then, if it wrote, drains it (see the
/// [module docs](self)).
pub async fn listen<S: AsyncRead + Unpin>(io: &mut S, silence: Duration) -> std::io::Result<Heard> {
    let mut chunk = vec![0u8; DRAIN_CHUNK_BYTES];
    let first = match timeout(silence, io.read(&mut chunk)).await {
        Err(_) => return Ok(Heard::Silence),
        Ok(Ok(0)) => return Ok(Heard::Closed),
        Ok(Ok(n)) => n,
        Ok(Err(err)) => return Err(err),
    };
    let mut bytes = first as u64;
    let end = Instant::now() + PROBE_DRAIN_MAX;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(Heard::Wrote {
                bytes,
                stopped: false,
            });
        }
        match timeout(PROBE_QUIET.min(left), io.read(&mut chunk)).await {
            // Quiet for PROBE_QUIET, or the bound came first.
            Err(_) if left >= PROBE_QUIET => {
                return Ok(Heard::Wrote {
                    bytes,
                    stopped: true,
                });
            }
            Err(_) => {}
            Ok(Ok(0)) => {
                return Ok(Heard::Wrote {
                    bytes,
                    stopped: true,
                });
            }
            Ok(Ok(n)) => bytes += n as u64,
            Ok(Err(err)) => return Err(err),
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn silence_through_the_deadline_and_not_a_moment_less_verifies() {
        let (_client, mut probe_side) = tokio::io::duplex(1024);
        let start = Instant::now();
        assert_eq!(
            listen(&mut probe_side, HELLO_TIMEOUT).await.unwrap(),
            Heard::Silence
        );
        assert_eq!(start.elapsed(), HELLO_TIMEOUT);

        // A byte just before the deadline fails it.
        let (mut client, mut probe_side) = tokio::io::duplex(1024);
        let writer = tokio::spawn(async move {
            tokio::time::sleep(HELLO_TIMEOUT - Duration::from_millis(1)).await;
            client.write_all(&[1]).await.unwrap();
            client
        });
        let heard = listen(&mut probe_side, HELLO_TIMEOUT).await.unwrap();
        assert_eq!(
            heard,
            Heard::Wrote {
                bytes: 1,
                stopped: true
            }
        );
        drop(writer.await.unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn a_close_is_a_failure_at_once() {
        let (client, mut probe_side) = tokio::io::duplex(1024);
        drop(client);
        let start = Instant::now();
        assert_eq!(
            listen(&mut probe_side, HELLO_TIMEOUT).await.unwrap(),
            Heard::Closed
        );
        assert_eq!(start.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn a_writer_is_read_until_it_stops_and_only_then_left() {
        let (mut client, mut probe_side) = tokio::io::duplex(64);
        // Writes a byte every half PROBE_QUIET for three seconds, then
        // stops but keeps the connection open.
        let writes = 6u64;
        let writer = tokio::spawn(async move {
            for _ in 0..writes {
                client.write_all(&[7; 100]).await.unwrap();
                tokio::time::sleep(PROBE_QUIET / 2).await;
            }
            client
        });
        let start = Instant::now();
        let heard = listen(&mut probe_side, HELLO_TIMEOUT).await.unwrap();
        assert_eq!(
            heard,
            Heard::Wrote {
                bytes: 100 * writes,
                stopped: true
            }
        );
        // The last write came at (writes - 1) half-quiets; then one quiet.
        let last = (PROBE_QUIET / 2) * u32::try_from(writes - 1).unwrap();
        assert_eq!(start.elapsed(), last + PROBE_QUIET);
        let _client = writer.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_writer_that_never_stops_is_left_at_the_drain_bound() {
        let (mut client, mut probe_side) = tokio::io::duplex(64);
        let writer = tokio::spawn(async move {
            while client.write_all(&[7; 10]).await.is_ok() {
                tokio::time::sleep(PROBE_QUIET / 4).await;
            }
        });
        let start = Instant::now();
        let heard = listen(&mut probe_side, HELLO_TIMEOUT).await.unwrap();
        assert!(
            matches!(heard, Heard::Wrote { stopped: false, .. }),
            "{heard:?}"
        );
        assert_eq!(start.elapsed(), PROBE_DRAIN_MAX);
        drop(probe_side);
        writer.await.unwrap();
    }
}
