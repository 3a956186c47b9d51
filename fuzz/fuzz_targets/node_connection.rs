//! A real in-process node's connection handling fed an arbitrary byte
//! stream. Two nodes run for the whole fuzzing process (a `OnceLock`d
//! runtime): one that lets loopback peers be legacy, as a node does, and one
//! that treats loopback like another host (HELLO required). Both hold the
//! pieces of `common::held_pieces` in a memory store and never dial out
//! (`target_outbound = 0`).
//!
//! Per input: byte 0 bit 0 picks the node; the rest is written on a new
//! loopback TCP connection, whose writing side is then closed, and whatever
//! the node sends is read until it closes or `common::INPUT_DEADLINE`. Then
//! the node must still answer a fresh connection's HELLO. A panic anywhere
//! in the node (any of its tasks) aborts the process: libFuzzer's panic hook.
//!
//! Loopback TCP rather than `tokio::io::duplex` with the paused clock: the
//! node's connections are reachable only through its accept loop
//! (`Node::run` owns the listener; the session code is private), and a
//! fuzzing-only entry point into it would be a larger change than the
//! target is worth.

#![no_main]

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use peer_node::node::{Node, NodeConfig};
use piece_store::{Durability, MemStore, PieceStore, Retention};
use tokio::runtime::Runtime;

struct Harness {
    runtime: Runtime,
    /// [legacy allowed on loopback, HELLO required].
    nodes: [SocketAddr; 2],
}

fn harness() -> &'static Harness {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime");
        let nodes = runtime.block_on(async {
            let mut nodes = [SocketAddr::from((Ipv4Addr::LOCALHOST, 0)); 2];
            for (slot, loopback_is_local) in nodes.iter_mut().zip([true, false]) {
                let mut config = NodeConfig::new(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)));
                config.target_outbound = 0;
                config.loopback_is_local = loopback_is_local;
                config.hello_timeout = Duration::from_millis(500);
                let store = Arc::new(MemStore::new(64 << 20));
                for piece in common::held_pieces() {
                    store
                        .put(piece, Retention::Pinned, Durability::Wait)
                        .expect("room for the held pieces");
                }
                let node = Node::bind_with_store(config, store)
                    .await
                    .expect("a node on loopback");
                *slot = node.local_addr();
                tokio::spawn(node.run(std::future::pending::<()>()));
            }
            nodes
        });
        Harness { runtime, nodes }
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, stream)) = data.split_first() else {
        return;
    };
    let harness = harness();
    let addr = harness.nodes[usize::from(flags & 1)];
    harness.runtime.block_on(async {
        common::exchange(addr, stream).await;
        assert!(
            common::answers_hello(addr).await,
            "the node no longer answers a HELLO"
        );
    });
});
