//! What the connection targets share: a runtime that lives as long as the
//! fuzzing process, the pieces a node under test holds, and one exchange
//! over loopback TCP.
//!
//! Every connection comes from its own address in 127.77.0.0/16 (all of
//! 127.0.0.0/8 is loopback on Linux), so the per-IP limits of a server that
//! treats loopback like any other host do not pile up, and any dial-back
//! probe a fuzz input provokes goes to that address, where nothing but a
//! wildcard listener can answer it.

#![allow(dead_code)]

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use bytes::Bytes;
use peer_node::net::{FrameReader, read_one};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::timeout;
use wire_format::limits::LEGACY_PIECE_BYTES;
use wire_format::{Hello, Message, NodeId, VerifiedPiece};

/// How long one input may take: connect, write, and read until the other
/// side closes.
pub const INPUT_DEADLINE: Duration = Duration::from_secs(2);

/// Most bytes kept of what a program sends back to one input (the rest is
/// read and dropped).
const KEEP_BYTES: usize = 1 << 20;

/// The pieces a node under test holds: the reference implementation's demo
/// piece 23 (the digest of docs/PROTOCOL.md's test vectors, and the one piece
/// size a legacy peer is served) and a small piece.
pub fn held_pieces() -> Vec<VerifiedPiece> {
    let mut demo = vec![0u8; LEGACY_PIECE_BYTES];
    demo[..4].copy_from_slice(&23u32.to_le_bytes());
    let small: Vec<u8> = (0..1000u32).map(|i| (i * 7 % 251) as u8).collect();
    [demo, small]
        .into_iter()
        .map(|bytes| VerifiedPiece::new(Bytes::from(bytes)).expect("a valid piece"))
        .collect()
}

/// The next source address: 127.77.x.y, never .0.
fn next_source() -> Ipv4Addr {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed) % (255 * 256);
    let [_, _, hi, lo] = n.to_be_bytes();
    Ipv4Addr::new(127, 77, hi, lo.saturating_add(1).max(1))
}

async fn connect(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    // Best effort: a kernel without the wide loopback range still lets us
    // connect from 127.0.0.1.
    let _ = socket.bind(SocketAddr::from((next_source(), 0)));
    match timeout(INPUT_DEADLINE, socket.connect(addr)).await {
        Ok(result) => result,
        Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
    }
}

/// Connects to `addr`, writes `input` (then closes the writing side), and
/// reads whatever comes back until the other side closes or
/// [`INPUT_DEADLINE`] passes; returns the first bytes received. A refused or
/// failed connection is an empty answer: the liveness check decides whether
/// that matters.
pub async fn exchange(addr: SocketAddr, input: &[u8]) -> Vec<u8> {
    let Ok(stream) = connect(addr).await else {
        return Vec::new();
    };
    let (mut rd, mut wr) = stream.into_split();
    // Read while writing: a program answering ASKs with GIVEs would
    // otherwise wait on a reader that is still writing.
    let reader = tokio::spawn(async move {
        let mut kept = Vec::new();
        let mut chunk = vec![0u8; 64 << 10];
        let read_all = async {
            loop {
                match rd.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let room = KEEP_BYTES.saturating_sub(kept.len()).min(n);
                        kept.extend_from_slice(&chunk[..room]);
                    }
                }
            }
        };
        let _ = timeout(INPUT_DEADLINE, read_all).await;
        kept
    });
    let write = async {
        wr.write_all(input).await?;
        wr.shutdown().await
    };
    // A program that closed on a protocol error makes this fail: expected.
    let _ = timeout(INPUT_DEADLINE, write).await;
    let kept = reader.await.unwrap_or_default();
    drop(wr);
    kept
}

/// Whether the program at `addr` still answers a new connection's HELLO
/// (a `CLIENT` HELLO, so nothing is recorded) with its own HELLO. Tries a few
/// times, so a connection of the last input that is still closing cannot
/// make it fail.
pub async fn answers_hello(addr: SocketAddr) -> bool {
    for _ in 0..5 {
        if hello_round_trip(addr).await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

async fn hello_round_trip(addr: SocketAddr) -> bool {
    let Ok(mut stream) = connect(addr).await else {
        return false;
    };
    let hello = Message::Hello(Hello::ours(None, true, NodeId(*b"fuzzlive")));
    if stream.write_all(&hello.to_bytes()).await.is_err() {
        return false;
    }
    let mut reader = FrameReader::new(stream);
    matches!(
        read_one(&mut reader, INPUT_DEADLINE).await,
        Ok(Some(Message::Hello(_)))
    )
}
