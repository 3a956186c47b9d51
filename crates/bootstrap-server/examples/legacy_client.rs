//! A raw client that behaves like one of the original design's C clients,
//! written from its observed behaviour (docs/PROTOCOL.md, "Legacy peers"),
//! to try the bootstrap server against legacy clients
//! (`scripts/legacy-swarm.sh`):
//!
//! * it listens, connects to its bootstrap address and never sends HELLO;
//! * every 1–2 s it writes a PEERS naming itself (`::1` and its listening
//!   port) on every connection it opened, and on no other;
//! * it accepts connections and reads frames from every connection, never
//!   writing on one it accepted;
//! * it makes a blocking connect to every PEERS entry it receives (once per
//!   address while that connection lasts, so repeats do not pile up
//!   connections);
//! * it dies if a write to a connection it opened fails (the original dies
//!   of SIGPIPE), and on a frame the original cannot read: longer than
//!   `LEGACY_MAX_FRAME_BYTES`, or a GIVE of other than `LEGACY_PIECE_BYTES`
//!   piece bytes.
//!
//! It holds no piece, so it never answers an ASK. It prints one line per
//! event on stdout: `listening ADDR`, `dialled ADDR`, `lost ADDR`,
//! `accepted ADDR`, and `died: WHY` before exiting with status 1.
//!
//! Usage: `legacy_client BOOTSTRAP_ADDR [LISTEN_ADDR]` (listen default
//! `[::1]:0`).

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::process::exit;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use wire_format::limits::{
    DIGEST_BYTES, LEGACY_MAX_FRAME_BYTES, LEGACY_PIECE_BYTES, LEN_FIELD_BYTES, PEER_INFO_BYTES,
};
use wire_format::{MessageType, PeerAddr};

/// Deadline of one blocking connect, so a dead entry does not hang it.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The connections it opened, by the address it dialled (the bootstrap's
/// included), to broadcast on. A lost one stays: the next write to it
/// fails, and the client dies, as the original does.
type Opened = Arc<Mutex<Vec<(SocketAddr, TcpStream)>>>;

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    // Nothing to do if stdout is gone.
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn die(why: &str) -> ! {
    say(&format!("died: {why}"));
    exit(1);
}

/// One client: its address, the connections it opened.
struct Client {
    me: SocketAddr,
    opened: Opened,
    /// Addresses with an open connection it dialled: one connection each.
    dialled: Mutex<HashSet<SocketAddr>>,
}

impl Client {
    /// Makes a blocking connect to `addr` unless connected already, and
    /// reads that connection on a thread of its own.
    fn dial(self: &Arc<Self>, addr: SocketAddr) {
        if addr == self.me || !self.lock_dialled().insert(addr) {
            return;
        }
        match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
            Ok(stream) => {
                say(&format!("dialled {addr}"));
                self.add_opened(addr, stream);
            }
            Err(_) => {
                self.lock_dialled().remove(&addr);
            }
        }
    }

    fn add_opened(self: &Arc<Self>, addr: SocketAddr, stream: TcpStream) {
        let Ok(reader) = stream.try_clone() else {
            die("cannot clone a socket");
        };
        self.opened
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((addr, stream));
        let client = Arc::clone(self);
        thread::spawn(move || {
            client.read(reader);
            say(&format!("lost {addr}"));
        });
    }

    fn lock_dialled(&self) -> std::sync::MutexGuard<'_, HashSet<SocketAddr>> {
        self.dialled.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Reads frames until the connection ends; dials every PEERS entry.
    fn read(self: &Arc<Self>, mut stream: TcpStream) {
        loop {
            let mut len = [0u8; 4];
            if stream.read_exact(&mut len).is_err() {
                return;
            }
            let len = u32::from_le_bytes(len) as usize;
            if len == 0 || len.saturating_add(LEN_FIELD_BYTES) > LEGACY_MAX_FRAME_BYTES {
                die(&format!("a frame of len {len}"));
            }
            let mut body = vec![0u8; len];
            if stream.read_exact(&mut body).is_err() {
                return;
            }
            let (kind, rest) = (body[0], &body[1..]);
            if kind == MessageType::Ask as u8 {
                continue;
            }
            if kind == MessageType::Give as u8 {
                if rest.len() != DIGEST_BYTES + LEGACY_PIECE_BYTES {
                    die(&format!("a GIVE of {} piece bytes", rest.len()));
                }
                continue;
            }
            // Any other type is a list of peers, as the original reads it.
            for chunk in rest.chunks_exact(PEER_INFO_BYTES) {
                if let Ok(wire) = chunk.try_into() {
                    self.dial(PeerAddr::from_wire(wire).socket_addr());
                }
            }
        }
    }

    /// Every 1–2 s, a PEERS naming itself on every connection it opened.
    fn announce_forever(&self) -> ! {
        let me = PeerAddr::new(Ipv6Addr::LOCALHOST.into(), self.me.port());
        let mut frame = Vec::with_capacity(LEN_FIELD_BYTES + 1 + PEER_INFO_BYTES);
        let len = u32::try_from(1 + PEER_INFO_BYTES).unwrap_or(u32::MAX);
        frame.extend_from_slice(&len.to_le_bytes());
        frame.push(MessageType::Peers as u8);
        frame.extend_from_slice(&me.to_wire());
        loop {
            for (addr, stream) in self
                .opened
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .iter_mut()
            {
                if let Err(err) = stream.write_all(&frame) {
                    die(&format!("write to {addr} failed: {err}"));
                }
            }
            thread::sleep(Duration::from_millis(1000 + jitter_ms(1000)));
        }
    }
}

/// A pause of up to `max` ms, from the clock's nanoseconds.
fn jitter_ms(max: u64) -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::from(d.subsec_nanos()));
    nanos % max
}

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(Ok(bootstrap)) = args.next().map(|a| a.parse::<SocketAddr>()) else {
        eprintln!("usage: legacy_client BOOTSTRAP_ADDR [LISTEN_ADDR]");
        exit(2);
    };
    let listen: SocketAddr = match args.next().map(|a| a.parse()) {
        Some(Ok(addr)) => addr,
        Some(Err(_)) => {
            eprintln!("usage: legacy_client BOOTSTRAP_ADDR [LISTEN_ADDR]");
            exit(2);
        }
        None => SocketAddr::from((Ipv6Addr::LOCALHOST, 0)),
    };
    let listener = TcpListener::bind(listen).unwrap_or_else(|e| die(&format!("listen: {e}")));
    let me = listener
        .local_addr()
        .unwrap_or_else(|e| die(&format!("listen: {e}")));
    say(&format!("listening {me}"));
    let client = Arc::new(Client {
        me,
        opened: Arc::default(),
        dialled: Mutex::default(),
    });
    {
        let client = Arc::clone(&client);
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                if let Ok(peer) = stream.peer_addr() {
                    say(&format!("accepted {peer}"));
                }
                let client = Arc::clone(&client);
                thread::spawn(move || client.read(stream));
            }
        });
    }
    match TcpStream::connect_timeout(&bootstrap, CONNECT_TIMEOUT) {
        Ok(stream) => client.add_opened(bootstrap, stream),
        Err(err) => die(&format!("cannot connect to {bootstrap}: {err}")),
    }
    client.announce_forever();
}
