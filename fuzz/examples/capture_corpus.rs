//! Writes the committed seed corpus of the fuzz targets: real frames
//! captured from short exchanges with an in-process node and bootstrap
//! server, the test vectors of docs/PROTOCOL.md, real manifests from
//! `piece_store::file::add_file`, and a few API requests.
//!
//! Run from `fuzz/`: `cargo run --release --example capture_corpus -- corpus`.
//! It rewrites only the files it names, so the corpus stays reproducible.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bootstrap_server::{Server, ServerConfig};
use bytes::BytesMut;
use peer_node::node::{Node, NodeConfig};
use piece_store::file::add_file;
use piece_store::manifest::{Layout, Level, MANIFEST_MAX_DEPTH, Manifest};
use piece_store::{Durability, MemStore, PieceStore, Retention};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wire_format::{Decoder, Hello, HelloFlags, Message, NodeId, PeerAddr, Peers, PieceId};

/// The fuzz targets' own helpers: the corpus starts from the pieces a node
/// under test holds, so it is written against the same `held_pieces`.
#[path = "../fuzz_targets/common/mod.rs"]
mod common;

type Corpus = BTreeMap<String, Vec<u8>>;

fn unhex(spaced: &str) -> Vec<u8> {
    let compact: String = spaced.split_whitespace().collect();
    (0..compact.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&compact[i..i + 2], 16).expect("hex"))
        .collect()
}

/// docs/PROTOCOL.md §2 and §3.
fn vectors() -> Vec<(&'static str, Vec<u8>)> {
    let d = "46eb387bfeb67f0e88af3383ededcd52af3e8e9321ce660402904b6287b2f021";
    let lo = "00000000000000000000000000000001";
    vec![
        ("ask", unhex(&format!("21000000 00 {d}"))),
        ("peers_one", unhex(&format!("13000000 02 {lo} fbdd"))),
        (
            "peers_four",
            unhex(&format!(
                "49000000 02 {lo} a41f {lo} 3f84 {lo} 07cc {lo} fbdd"
            )),
        ),
        ("peers_empty", unhex("01000000 02")),
        ("give_header", unhex(&format!("21000200 01 {d}"))),
        (
            "hello",
            unhex("11000000 03 5032504e 01 01 591b 0102030405060708"),
        ),
        ("dont_have", unhex(&format!("21000000 04 {d}"))),
        ("want_have", unhex(&format!("21000000 05 {d}"))),
        ("have", unhex(&format!("21000000 06 {d}"))),
        ("cancel", unhex(&format!("21000000 07 {d}"))),
    ]
}

fn frames(messages: &[Message]) -> Vec<u8> {
    let mut buf = BytesMut::new();
    for message in messages {
        message.encode(&mut buf);
    }
    buf.to_vec()
}

/// Writes `sent`, closes the writing side, and returns what came back
/// until the other side closed (or a deadline).
async fn exchange(addr: SocketAddr, sent: &[u8], linger: Duration) -> Vec<u8> {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut rd, mut wr) = stream.into_split();
    wr.write_all(sent).await.expect("write");
    // Give the other side time to answer everything before our close.
    tokio::time::sleep(linger).await;
    wr.shutdown().await.expect("shutdown");
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), rd.read_to_end(&mut got)).await;
    got
}

/// Every whole frame of `bytes`, re-checked by the decoder.
fn decoded(bytes: &[u8]) -> Vec<Message> {
    let mut buf = BytesMut::from(bytes);
    let mut out = Vec::new();
    while let Ok(Some(message)) = Decoder::new().decode(&mut buf) {
        out.push(message);
    }
    out
}

fn with_flags(flags: u8, bytes: &[u8]) -> Vec<u8> {
    let mut out = vec![flags];
    out.extend_from_slice(bytes);
    out
}

/// `hello_peers` input: flags, the first frames, then offers.
fn hello_peers_input(flags: u8, first: &[u8], offers: &[(u8, Vec<u8>, Vec<PeerAddr>)]) -> Vec<u8> {
    let mut out = vec![flags];
    out.extend_from_slice(&u16::try_from(first.len()).expect("short").to_le_bytes());
    out.extend_from_slice(first);
    for (control, sender, entries) in offers {
        out.push(*control);
        out.extend_from_slice(sender);
        out.push(u8::try_from(entries.len()).expect("few entries"));
        for entry in entries {
            out.extend_from_slice(&entry.to_wire());
        }
    }
    out
}

#[tokio::main]
async fn main() {
    let dir = std::env::args().nth(1).unwrap_or_else(|| "corpus".into());
    let dir = Path::new(&dir);
    let pieces = common::held_pieces();
    let (demo, small) = (pieces[0].id(), pieces[1].id());
    let unknown = PieceId::of(b"nobody holds this");

    // A node as the fuzz target runs it.
    let mut config = NodeConfig::new(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)));
    config.target_outbound = 0;
    let store = Arc::new(MemStore::new(64 << 20));
    for piece in common::held_pieces() {
        store
            .put(piece, Retention::Pinned, Durability::Wait)
            .expect("room");
    }
    let node = Node::bind_with_store(config, store).await.expect("node");
    let node_addr = node.local_addr();
    tokio::spawn(node.run(std::future::pending::<()>()));

    let server = Server::bind(ServerConfig::new(SocketAddr::from((
        Ipv4Addr::LOCALHOST,
        0,
    ))))
    .await
    .expect("server");
    let server_addr = server.local_addr().expect("bound");
    tokio::spawn(server.run(std::future::pending::<()>()));

    let me: PeerAddr = "127.0.0.1:40001".parse().expect("addr");
    let hello = Message::Hello(
        Hello::new(
            1,
            HelloFlags(HelloFlags::LISTENING),
            40001,
            NodeId(*b"capture1"),
        )
        .expect("hello"),
    );
    let client_hello = Message::Hello(Hello::ours(None, true, NodeId(*b"capture2")));
    let announce = Message::Peers(Peers::new(vec![me]).expect("one entry"));

    // An extended peer: HELLO, PEERS, WANT_HAVE/HAVE, ASK/GIVE of a small
    // piece, DONT_HAVE, CANCEL.
    let extended = frames(&[
        hello.clone(),
        announce.clone(),
        Message::WantHave(small),
        Message::WantHave(unknown),
        Message::Ask(small),
        Message::Ask(unknown),
        Message::Cancel(unknown),
        Message::Peers(Peers::empty()),
    ]);
    let extended_answer = exchange(node_addr, &extended, Duration::from_millis(300)).await;
    // A legacy peer (the reference implementation): core messages only.
    let legacy = frames(&[announce.clone(), Message::Ask(demo), Message::Ask(small)]);
    let legacy_answer = exchange(node_addr, &legacy, Duration::from_millis(300)).await;
    // A CLIENT tool asking for the demo piece by WANT_HAVE only (the GIVE
    // itself is too large for a seed).
    let client = frames(&[client_hello.clone(), Message::WantHave(demo)]);
    let client_answer = exchange(node_addr, &client, Duration::from_millis(300)).await;
    // The bootstrap exchange, extended and legacy.
    let boot = frames(&[hello.clone(), announce.clone()]);
    let boot_answer = exchange(server_addr, &boot, Duration::from_millis(300)).await;
    let boot_legacy = frames(std::slice::from_ref(&announce));
    let boot_legacy_answer = exchange(server_addr, &boot_legacy, Duration::from_millis(300)).await;

    for (name, bytes) in [
        ("extended_answer", &extended_answer),
        ("legacy_answer", &legacy_answer),
        ("client_answer", &client_answer),
        ("bootstrap_answer", &boot_answer),
        ("bootstrap_legacy_answer", &boot_legacy_answer),
    ] {
        let kinds: Vec<&str> = decoded(bytes).iter().map(|m| m.kind().name()).collect();
        eprintln!("{name}: {} bytes: {kinds:?}", bytes.len());
    }
    // The legacy answer carries a 128 KiB GIVE: kept out of the seeds, which
    // would otherwise raise every target's input size limit to it.
    let legacy_answer: Vec<u8> = {
        let kept: Vec<Message> = decoded(&legacy_answer)
            .into_iter()
            .filter(|m| m.encoded_len() <= 4096)
            .collect();
        frames(&kept)
    };

    let mut frame_decoder = Corpus::new();
    let mut node_connection = Corpus::new();
    let mut bootstrap_connection = Corpus::new();
    let mut hello_peers = Corpus::new();
    for (name, bytes) in vectors() {
        frame_decoder.insert(format!("vector_{name}"), with_flags(0, &bytes));
        node_connection.insert(format!("vector_{name}"), with_flags(0, &bytes));
        bootstrap_connection.insert(format!("vector_{name}"), with_flags(0, &bytes));
    }
    let captured = [
        ("extended_sent", &extended),
        ("extended_answer", &extended_answer),
        ("legacy_sent", &legacy),
        ("legacy_answer", &legacy_answer),
        ("client_sent", &client),
        ("client_answer", &client_answer),
        ("bootstrap_sent", &boot),
        ("bootstrap_answer", &boot_answer),
        ("bootstrap_legacy_sent", &boot_legacy),
        ("bootstrap_legacy_answer", &boot_legacy_answer),
    ];
    for (name, bytes) in captured {
        frame_decoder.insert(format!("captured_{name}"), with_flags(0, bytes));
        // Chunks of 1, 5, 37 and 256 bytes.
        let mut chunked = vec![4, 0, 4, 36, 255];
        chunked.extend_from_slice(bytes);
        frame_decoder.insert(format!("captured_{name}_chunked"), chunked);
    }
    for (name, bytes) in [
        ("extended", &extended),
        ("legacy", &legacy),
        ("client", &client),
    ] {
        node_connection.insert(format!("captured_{name}_legacy_node"), with_flags(0, bytes));
        node_connection.insert(format!("captured_{name}_hello_node"), with_flags(1, bytes));
    }
    for (name, bytes) in [
        ("extended", &boot),
        ("legacy", &boot_legacy),
        ("client", &client),
    ] {
        bootstrap_connection.insert(
            format!("captured_{name}_legacy_server"),
            with_flags(0, bytes),
        );
        bootstrap_connection.insert(
            format!("captured_{name}_hello_server"),
            with_flags(1, bytes),
        );
    }

    // hello_peers: captured first frames, then PEERS entries from senders of
    // each kind.
    let answered_peers: Vec<PeerAddr> = decoded(&boot_answer)
        .into_iter()
        .chain(decoded(&extended_answer))
        .filter_map(|m| match m {
            Message::Peers(p) => Some(p.into_entries()),
            _ => None,
        })
        .flatten()
        .collect();
    let mixed: Vec<PeerAddr> = [
        "127.0.0.1:8100",
        "[::1]:33855",
        "10.0.0.7:7001",
        "192.168.1.9:7001",
        "8.8.8.8:7001",
        "8.8.8.9:80",
        "[2a00:1450::1]:7001",
        "224.0.0.1:7001",
        "192.0.2.1:7001",
        "[::ffff:8.8.4.4]:7001",
    ]
    .iter()
    .map(|s| s.parse().expect("addr"))
    .chain(answered_peers)
    .chain([me])
    .collect();
    let offers = vec![
        (0u8, vec![127, 0, 0, 1], mixed.clone()),
        (0u8, vec![8, 8, 8, 8], mixed.clone()),
        (0x14, vec![10, 0, 0, 3], mixed.clone()),
        (1u8, vec![127, 0, 0, 1], mixed.clone()),
        (
            2u8,
            unhex("2a001450000000000000000000000002"),
            mixed.clone(),
        ),
    ];
    for (name, bytes) in [
        ("extended", &extended),
        ("legacy", &legacy),
        ("client", &client),
    ] {
        for flags in [0u8, 1] {
            hello_peers.insert(
                format!("captured_{name}_{flags}"),
                hello_peers_input(flags, bytes, &offers),
            );
        }
    }
    hello_peers.insert(
        "vector_hello".into(),
        hello_peers_input(0, &vectors()[5].1, &[]),
    );
    hello_peers.insert("silence".into(), hello_peers_input(1, &[], &offers));

    // Manifests: the root of files of a few sizes, and every manifest of a
    // tree built with the smallest fan-out.
    let mut manifests = Corpus::new();
    let mib = 1usize << 20;
    for (layout, sizes) in [
        (Layout::STANDARD, vec![0, 1, 1000, mib, mib + 1, 3 * mib]),
        (
            Layout::with_fan_out(2).expect("fan-out 2"),
            vec![3 * mib, 5 * mib + 7],
        ),
    ] {
        for size in sizes {
            let store = MemStore::new(1 << 30);
            let data: Vec<u8> = (0..size).map(|i| (i % 253) as u8).collect();
            let name = format!("file-{size}.bin");
            add_file(&store, &data[..], &name, &layout).expect("add_file");
            for id in store.list() {
                let Ok(Some(bytes)) = store.get(&id) else {
                    continue;
                };
                let is_manifest = (1..=MANIFEST_MAX_DEPTH).any(|depth| {
                    let level = Level::new(depth).expect("level");
                    Manifest::parse(&bytes, &layout, level).is_ok()
                });
                if is_manifest {
                    manifests.insert(
                        format!("fanout{}_{size}_{}", layout.fan_out(), &id.to_hex()[..12]),
                        bytes.to_vec(),
                    );
                }
            }
        }
    }

    // API requests: flags (Host, token, method in bits 2..5), target, body.
    let get = 0x03;
    let post = 0x03 | (1 << 2);
    let put = 0x03 | (2 << 2);
    let delete = 0x03 | (3 << 2);
    let req = |flags: u8, target: &str, body: &str| {
        let mut out = vec![flags];
        out.extend_from_slice(target.as_bytes());
        out.push(b'\n');
        out.extend_from_slice(body.as_bytes());
        out
    };
    let mut api = Corpus::new();
    for (name, bytes) in [
        ("index", req(get, "/", "")),
        ("metrics", req(get, "/metrics", "")),
        ("peers", req(get, "/api/v1/peers", "")),
        ("stats", req(get, "/api/v1/stats", "")),
        ("piece", req(get, &format!("/api/v1/pieces/{small}"), "")),
        (
            "piece_timeout",
            req(get, &format!("/api/v1/pieces/{small}?timeout=2.5"), ""),
        ),
        (
            "piece_timeout_max",
            req(get, &format!("/api/v1/pieces/{demo}?timeout=600"), ""),
        ),
        (
            "piece_bad_query",
            req(get, &format!("/api/v1/pieces/{demo}?timeout=1e3&x=1"), ""),
        ),
        ("post_piece", req(post, "/api/v1/pieces", "hello piece")),
        (
            "post_file",
            req(post, "/api/v1/files?name=a.bin", "file bytes"),
        ),
        (
            "get_file",
            req(get, &format!("/api/v1/files/{unknown}"), ""),
        ),
        (
            "fetch",
            req(
                post | 0x20,
                "/api/v1/fetches",
                &format!("{{\"manifest\":\"{unknown}\",\"path\":null}}"),
            ),
        ),
        (
            "fetch_path",
            req(
                post,
                "/api/v1/fetches",
                &format!("{{\"manifest\":\"{unknown}\",\"path\":\"/absolute/output\"}}"),
            ),
        ),
        (
            "fetch_get",
            req(get, "/api/v1/fetches/0123456789abcdef", ""),
        ),
        (
            "fetch_delete",
            req(delete, "/api/v1/fetches/0123456789abcdef", ""),
        ),
        ("store", req(get, "/api/v1/store", "")),
        ("pin", req(put, &format!("/api/v1/pins/{small}"), "")),
        ("unpin", req(delete, &format!("/api/v1/pins/{small}"), "")),
        ("gc", req(post, "/api/v1/gc", "")),
        ("no_token", req(0x01, "/api/v1/peers", "")),
        ("no_host", req(0x02, "/api/v1/peers", "")),
    ] {
        api.insert(name.into(), bytes);
    }

    for (target, corpus) in [
        ("frame_decoder", frame_decoder),
        ("manifest", manifests),
        ("hello_peers", hello_peers),
        ("node_connection", node_connection),
        ("bootstrap_connection", bootstrap_connection),
        ("api_input", api),
    ] {
        let target_dir = dir.join(target);
        std::fs::create_dir_all(&target_dir).expect("corpus dir");
        for (name, bytes) in &corpus {
            std::fs::write(target_dir.join(name), bytes).expect("write seed");
        }
        eprintln!("{target}: {} seeds", corpus.len());
    }
}
