//! A real in-process bootstrap server's connection handling fed an
//! arbitrary byte stream. Two servers run for the whole fuzzing process (a
//! `OnceLock`d runtime): one that lets loopback clients be legacy, as the
//! binary does, and one that treats loopback like another host. Their
//! registries persist across inputs, so announces of earlier inputs shape
//! the answers to later ones.
//!
//! Per input: byte 0 bit 0 picks the server; the rest is written on a new
//! loopback TCP connection, whose writing side is then closed, and whatever
//! the server sends is read until it closes or `common::INPUT_DEADLINE`.
//! Then the server must still answer a fresh connection's HELLO. A panic in
//! any of its tasks aborts the process: libFuzzer's panic hook.
//!
//! Loopback TCP, because the server's connections are reachable only
//! through the accept loop of `Server::run`.

#![no_main]

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::OnceLock;
use std::time::Duration;

use bootstrap_server::{Server, ServerConfig};
use libfuzzer_sys::fuzz_target;
use tokio::runtime::Runtime;

struct Harness {
    runtime: Runtime,
    /// [legacy allowed on loopback, HELLO required].
    servers: [SocketAddr; 2],
}

fn harness() -> &'static Harness {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime");
        let servers = runtime.block_on(async {
            let mut servers = [SocketAddr::from((Ipv4Addr::LOCALHOST, 0)); 2];
            for (slot, loopback_is_local) in servers.iter_mut().zip([true, false]) {
                let mut config = ServerConfig::new(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)));
                config.loopback_is_local = loopback_is_local;
                config.max_peers = 1000;
                // Probes of legacy clients: short, so they do not pile up.
                config.legacy_silence = Duration::from_millis(200);
                config.legacy_answer_interval = Duration::from_millis(50);
                let server = Server::bind(config).await.expect("a server on loopback");
                *slot = server.local_addr().expect("a bound server");
                tokio::spawn(server.run(std::future::pending::<()>()));
            }
            servers
        });
        Harness { runtime, servers }
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, stream)) = data.split_first() else {
        return;
    };
    let harness = harness();
    let addr = harness.servers[usize::from(flags & 1)];
    harness.runtime.block_on(async {
        common::exchange(addr, stream).await;
        assert!(
            common::answers_hello(addr).await,
            "the bootstrap server no longer answers a HELLO"
        );
    });
});
