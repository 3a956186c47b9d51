//! [`NodeApi`]: the [`ApiBackend`] of a running node, over its [`Shared`]
//! handle. Hashing and store writes run on the blocking pool.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use piece_store::{Durability, Retention};
use wire_format::{PieceId, VerifiedPiece};

use super::backend::{ApiBackend, BoxFuture, ExplainedPiece, FileAccess, Identity, PutError};
use crate::metrics::Metrics;
use crate::node::Shared;
use crate::pieces::FetchError;
use crate::swarm::PeerView;

/// The node as the local API sees it.
#[derive(Debug, Clone)]
pub struct NodeApi(pub Arc<Shared>);

impl ApiBackend for NodeApi {
    fn peers(&self) -> Vec<PeerView> {
        self.0.peer_views()
    }

    fn metrics(&self) -> &Metrics {
        self.0.metrics()
    }

    fn fetch_piece(
        &self,
        id: PieceId,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<Bytes, FetchError>> {
        let node = Arc::clone(&self.0);
        Box::pin(async move { node.fetch(id, timeout).await })
    }

    fn identity(&self) -> Option<Identity> {
        Some(Identity {
            node_id: self.0.node_id().to_string(),
            listen_port: self.0.listen_port(),
        })
    }

    fn files(&self) -> Option<FileAccess> {
        Some(FileAccess {
            store: Arc::clone(self.0.store()),
            jobs: Arc::clone(self.0.jobs()),
        })
    }

    fn fetch_piece_explained(
        &self,
        id: PieceId,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<ExplainedPiece, FetchError>> {
        let node = Arc::clone(&self.0);
        Box::pin(async move {
            let fetched = node.fetch_from(id, timeout).await?;
            Ok(ExplainedPiece {
                bytes: fetched.bytes,
                explain: Some(fetched.explain),
            })
        })
    }

    fn default_fetch_timeout(&self) -> Duration {
        self.0.fetch_timeout()
    }

    fn put_piece(&self, bytes: Bytes) -> BoxFuture<'static, Result<PieceId, PutError>> {
        let store = Arc::clone(self.0.store());
        Box::pin(async move {
            let stored = tokio::task::spawn_blocking(move || {
                // Hashing 1 MiB takes about half a millisecond: blocking pool.
                let piece =
                    VerifiedPiece::new(bytes).map_err(|e| PutError::Invalid(e.to_string()))?;
                let id = piece.id();
                store
                    .put(piece, Retention::Pinned, Durability::Wait)
                    .map_err(|e| {
                        if e.is_out_of_space() {
                            PutError::Full(e.to_string())
                        } else {
                            PutError::Store(e.to_string())
                        }
                    })?;
                Ok(id)
            })
            .await;
            stored.unwrap_or_else(|e| Err(PutError::Store(e.to_string())))
        })
    }
}
