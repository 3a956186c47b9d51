//! Store throughput with 1 MiB pieces under each fsync policy.
//!
//! `cargo bench -p piece-store --bench store`. Pieces are hashed before the
//! clock starts (the store takes verified pieces); each timed run writes into
//! a fresh store on the same filesystem as the system temp directory (set
//! `TMPDIR` to measure another disk).

use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use piece_store::{DiskStore, DiskStoreConfig, Durability, FsyncPolicy, PieceStore, Retention};
use wire_format::VerifiedPiece;

const MIB: usize = 1 << 20;
/// Pieces per fresh store; bounds the bench's memory to this many MiB.
const POOL: usize = 256;
/// Pieces per `put_many` group under `batch`.
const GROUP: usize = 64;

fn pool() -> Vec<VerifiedPiece> {
    (0..POOL)
        .map(|i| {
            let mut bytes = vec![0xa5u8; MIB];
            bytes[..8].copy_from_slice(&(i as u64).to_le_bytes());
            VerifiedPiece::new(Bytes::from(bytes)).unwrap_or_else(|e| unreachable!("{e}"))
        })
        .collect()
}

fn fresh_store(policy: FsyncPolicy) -> (tempfile::TempDir, DiskStore) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| unreachable!("tempdir: {e}"));
    let mut config = DiskStoreConfig::new(u64::MAX);
    config.fsync = policy;
    let store = DiskStore::open(dir.path(), config).unwrap_or_else(|e| unreachable!("open: {e}"));
    (dir, store)
}

/// Times `iters` puts, in runs of at most [`POOL`] pieces per fresh store.
fn time_puts(iters: u64, policy: FsyncPolicy, pieces: &[VerifiedPiece], grouped: bool) -> Duration {
    let mut total = Duration::ZERO;
    let mut left = usize::try_from(iters).unwrap_or(usize::MAX);
    while left > 0 {
        let n = left.min(POOL);
        let (dir, store) = fresh_store(policy);
        let start = Instant::now();
        if grouped {
            for group in pieces[..n].chunks(GROUP) {
                store
                    .put_many(group.to_vec(), Retention::Pinned)
                    .unwrap_or_else(|e| unreachable!("put: {e}"));
            }
        } else {
            for piece in &pieces[..n] {
                store
                    .put(piece.clone(), Retention::Pinned, Durability::Wait)
                    .unwrap_or_else(|e| unreachable!("put: {e}"));
            }
        }
        total += start.elapsed();
        drop(store);
        drop(dir);
        left -= n;
    }
    total
}

fn puts(c: &mut Criterion) {
    let pieces = pool();
    let mut group = c.benchmark_group("store_put_1mib");
    group
        .throughput(Throughput::Bytes(MIB as u64))
        .sample_size(10)
        .measurement_time(Duration::from_secs(8))
        .warm_up_time(Duration::from_secs(1));
    group.bench_function("always", |b| {
        b.iter_custom(|iters| time_puts(iters, FsyncPolicy::Always, &pieces, false))
    });
    group.bench_function("batch_put_many", |b| {
        b.iter_custom(|iters| time_puts(iters, FsyncPolicy::Batch, &pieces, true))
    });
    group.bench_function("batch_put_one_at_a_time", |b| {
        b.iter_custom(|iters| time_puts(iters, FsyncPolicy::Batch, &pieces, false))
    });
    group.bench_function("never", |b| {
        b.iter_custom(|iters| time_puts(iters, FsyncPolicy::Never, &pieces, false))
    });
    group.finish();
}

fn gets(c: &mut Criterion) {
    let pieces = pool();
    let dir = tempfile::tempdir().unwrap_or_else(|e| unreachable!("tempdir: {e}"));
    {
        let store = DiskStore::open(dir.path(), DiskStoreConfig::new(u64::MAX))
            .unwrap_or_else(|e| unreachable!("open: {e}"));
        store
            .put_many(pieces.clone(), Retention::Pinned)
            .unwrap_or_else(|e| unreachable!("put: {e}"));
    }
    let mut group = c.benchmark_group("store_get_1mib");
    group
        .throughput(Throughput::Bytes(MIB as u64))
        .sample_size(10)
        .measurement_time(Duration::from_secs(5))
        .warm_up_time(Duration::from_secs(1));
    // First read after open: read + SHA-256 verification.
    group.bench_function("first_read_verified", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut left = usize::try_from(iters).unwrap_or(usize::MAX);
            while left > 0 {
                let n = left.min(POOL);
                let store = DiskStore::open(dir.path(), DiskStoreConfig::new(u64::MAX))
                    .unwrap_or_else(|e| unreachable!("open: {e}"));
                let start = Instant::now();
                for piece in &pieces[..n] {
                    std::hint::black_box(store.get(&piece.id()).ok());
                }
                total += start.elapsed();
                left -= n;
            }
            total
        })
    });
    // Later reads: the piece was verified this run, so only the read remains.
    let store = DiskStore::open(dir.path(), DiskStoreConfig::new(u64::MAX))
        .unwrap_or_else(|e| unreachable!("open: {e}"));
    for piece in &pieces {
        let _ = store.get(&piece.id());
    }
    let mut i = 0;
    group.bench_function("hot_read", |b| {
        b.iter(|| {
            i = (i + 1) % POOL;
            std::hint::black_box(store.get(&pieces[i].id()).ok())
        })
    });
    group.finish();
}

criterion_group!(benches, puts, gets);
criterion_main!(benches);
