//! Who the node knows and who it is connected to: the peer table with the
//! peer-exchange rules, the live connections as peers (and the duplicate
//! rule), bans, admission limits, choosing whom to dial, the bootstrap
//! re-announce schedule's view of "hungry", and `peers.json`.
//!
//! The swarm decides; it never runs a connection itself. Dials it chooses
//! go out on a queue that the node drains (the receiver `Swarm::new`
//! returns).
//!
//! Uses [`crate::net`], the config, the clock and the metrics; never the
//! piece exchange, the sessions or the API.
//!
//! Inside, dependencies point one way, down this list:
//! * `conns`, `dial`, `admission`, `pex`, `persist`, `rows` — the jobs, each
//!   over the state.
//! * `state` — [`Swarm`]: connections, dials, table and budget under one
//!   lock; bans; socket counts; the dial queue.
//! * `budget` — the dial rate as a token bucket.
//! * [`table`] — candidates, PEX drop rules, quotas, caps, backoff.
//! * [`bans`] — the ban list: scope by address class, expiry, a bounded size.
//! * `conns` — registering a connection, the duplicate rule, dial-back probes.
//! * `dial` — choosing candidates within the dial rate, the dialler's tick.
//! * `admission` — the connection limits for accepted sockets.
//! * `pex` — PEERS we send and PEERS we take.
//! * `persist` — `peers.json`.
//! * `rows` — the rows of `GET /api/v1/peers`.
//! * [`views`] — the types of those rows.

mod admission;
pub mod bans;
mod budget;
mod conns;
mod dial;
mod persist;
mod pex;
mod rows;
mod state;
pub mod table;
pub mod views;

pub use admission::{
    MAX_CONNECTIONS_PER_IP, REPLACE_INTERVAL, REPLACE_MAX_BYTES, REPLACE_MIN_AGE, REPLACED_CLOSE,
};
pub use budget::DIAL_QUEUE;
pub(crate) use conns::NewConn;
pub use conns::{DUPLICATE_CLOSE, keep_new};
pub(crate) use dial::{Widened, run_dialler};
pub use persist::PEERS_SAVE_INTERVAL;
pub(crate) use persist::{known_peers, load_peers, run_saver, write_peers};
pub(crate) use pex::{first_peers, offer};
pub use state::Swarm;
pub use views::{BanView, Direction, PeerSource, PeerState, PeerView};
