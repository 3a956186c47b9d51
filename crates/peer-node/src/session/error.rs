//! How a connection ends: [`SessionError`] says whose fault it was (the
//! peer, this node, or the shutdown), and every close is counted by its
//! label.

use std::io;

use crate::metrics::{Family, Metrics};
use crate::net::ConnError;

/// Why a connection ended badly, by whose fault.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SessionError {
    /// The peer (or the network between us): it broke the protocol or a
    /// rule, missed a deadline, or its socket failed.
    #[error(transparent)]
    Peer(#[from] ConnError),
    /// The address dialled is this node itself.
    #[error("connected to ourselves")]
    Ourselves,
    /// A bootstrap server closed before it sent its PEERS.
    #[error("bootstrap server closed before its PEERS")]
    NoBootstrapAnswer,
    /// Local: a bootstrap address that does not resolve.
    #[error("cannot resolve {server}: {reason}")]
    Resolve {
        /// The address as configured.
        server: String,
        /// Why.
        reason: String,
    },
    /// Local: the socket gave no peer address.
    #[error("socket has no peer address: {0}")]
    Socket(io::Error),
    /// The node is shutting down.
    #[error("the node is shutting down")]
    Shutdown,
}

/// Counts a connection that ended with `err`, by its close label.
pub(crate) fn count_close(metrics: &Metrics, err: &ConnError) {
    metrics.incr_labelled(Family::ConnectionsClosedTotal, err.reason());
    if let ConnError::Protocol(e) = err {
        metrics.incr_labelled(Family::ProtocolErrorsTotal, e.kind());
    }
}
