//! A fault-injecting [`PieceStore`] for tests: [`FaultyStore`] wraps any
//! store and, per operation, can stall calls behind a [`Gate`] the test
//! opens, fail them with an error the test chooses, and record them. It
//! forwards every method, the provided ones too: a wrapper that left one to
//! its default would hide what the inner store can do.
//!
//! Compiled only with the `testing` feature. Uses only the store contract.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use wire_format::{PieceId, VerifiedPiece};

use std::path::{Path, PathBuf};

use crate::store::{
    Durability, Extent, GcReport, PieceStore, Retention, Root, StoreError, StoreStats, VerifyReport,
};

/// Calls kept by [`FaultyStore::calls`]; later ones are only counted
/// ([`FaultyStore::count`]). Worst case memory: this many [`Call`]s, a
/// `put_many` call holding the ids of its group.
pub const MAX_RECORDED_CALLS: usize = 1 << 16;

/// An operation of the [`PieceStore`] trait.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// [`PieceStore::has`].
    Has,
    /// [`PieceStore::size`].
    Size,
    /// [`PieceStore::get`].
    Get,
    /// [`PieceStore::put`].
    Put,
    /// [`PieceStore::put_many`].
    PutMany,
    /// [`PieceStore::pin_root`].
    PinRoot,
    /// [`PieceStore::unpin_root`].
    UnpinRoot,
    /// [`PieceStore::roots`].
    Roots,
    /// [`PieceStore::hold`].
    Hold,
    /// [`PieceStore::release`].
    Release,
    /// [`PieceStore::is_pinned`].
    IsPinned,
    /// [`PieceStore::gc`].
    Gc,
    /// [`PieceStore::list`].
    List,
    /// [`PieceStore::stats`].
    Stats,
    /// [`PieceStore::add_extents`].
    AddExtents,
    /// [`PieceStore::offer_extents`].
    OfferExtents,
    /// [`PieceStore::move_extent_file`].
    MoveExtentFile,
    /// [`PieceStore::forget_extent_file`].
    ForgetExtentFile,
    /// [`PieceStore::extent_files`].
    ExtentFiles,
    /// [`PieceStore::verify_all`].
    VerifyAll,
}

/// One call as the wrapper saw it, before any stall or injected error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// `has(id)`.
    Has(PieceId),
    /// `size(id)`.
    Size(PieceId),
    /// `get(id)`.
    Get(PieceId),
    /// `put(piece, retention, durability)`.
    Put {
        /// The piece's id.
        id: PieceId,
        /// The retention asked for.
        retention: Retention,
        /// The durability asked for.
        durability: Durability,
    },
    /// `put_many(pieces, retention)`.
    PutMany {
        /// The group's ids, in order.
        ids: Vec<PieceId>,
        /// The retention asked for.
        retention: Retention,
    },
    /// `pin_root(root)`.
    PinRoot(Root),
    /// `unpin_root(root)`.
    UnpinRoot(Root),
    /// `roots()`.
    Roots,
    /// `hold(id)`.
    Hold(PieceId),
    /// `release(id)`.
    Release(PieceId),
    /// `is_pinned(id)`.
    IsPinned(PieceId),
    /// `gc()`.
    Gc,
    /// `list()`.
    List,
    /// `stats()`.
    Stats,
    /// `add_extents(file, extents)`: the extents' ids, in order.
    AddExtents(PathBuf, Vec<PieceId>),
    /// `offer_extents(file, extents)`: the extents' ids, in order.
    OfferExtents(PathBuf, Vec<PieceId>),
    /// `move_extent_file(from, to)`.
    MoveExtentFile(PathBuf, PathBuf),
    /// `forget_extent_file(file)`.
    ForgetExtentFile(PathBuf),
    /// `extent_files()`.
    ExtentFiles,
    /// `verify_all()`.
    VerifyAll,
}

impl Call {
    /// The operation called.
    pub fn op(&self) -> Op {
        match self {
            Self::Has(_) => Op::Has,
            Self::Size(_) => Op::Size,
            Self::Get(_) => Op::Get,
            Self::Put { .. } => Op::Put,
            Self::PutMany { .. } => Op::PutMany,
            Self::PinRoot(_) => Op::PinRoot,
            Self::UnpinRoot(_) => Op::UnpinRoot,
            Self::Roots => Op::Roots,
            Self::Hold(_) => Op::Hold,
            Self::Release(_) => Op::Release,
            Self::IsPinned(_) => Op::IsPinned,
            Self::Gc => Op::Gc,
            Self::List => Op::List,
            Self::Stats => Op::Stats,
            Self::AddExtents(..) => Op::AddExtents,
            Self::OfferExtents(..) => Op::OfferExtents,
            Self::MoveExtentFile(..) => Op::MoveExtentFile,
            Self::ForgetExtentFile(_) => Op::ForgetExtentFile,
            Self::ExtentFiles => Op::ExtentFiles,
            Self::VerifyAll => Op::VerifyAll,
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Test bookkeeping only: a panicking test thread leaves it usable.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A gate calls wait at until the test opens it. Once open it stays open.
#[derive(Debug, Default)]
pub struct Gate {
    open: Mutex<bool>,
    opened: Condvar,
}

impl Gate {
    /// A closed gate.
    pub fn closed() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Opens the gate, releasing every call waiting at it.
    pub fn open(&self) {
        *lock(&self.open) = true;
        self.opened.notify_all();
    }

    /// Whether the gate is open.
    pub fn is_open(&self) -> bool {
        *lock(&self.open)
    }

    /// Blocks until the gate is open.
    pub fn wait(&self) {
        let mut open = lock(&self.open);
        while !*open {
            open = self
                .opened
                .wait(open)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// A guard that opens the gate when dropped: keep it alive for the
    /// test, so a failing test does not leave threads stalled forever (a
    /// runtime waits for its blocking threads when it shuts down).
    pub fn open_on_drop(self: &Arc<Self>) -> OpenOnDrop {
        OpenOnDrop(Arc::clone(self))
    }
}

/// Opens its [`Gate`] when dropped; see [`Gate::open_on_drop`].
#[derive(Debug)]
pub struct OpenOnDrop(Arc<Gate>);

impl Drop for OpenOnDrop {
    fn drop(&mut self) {
        self.0.open();
    }
}

/// Makes the error an operation fails with (a `StoreError` is not `Clone`).
type MakeError = Arc<dyn Fn() -> StoreError + Send + Sync>;

#[derive(Default)]
struct Faults {
    gates: HashMap<Op, Arc<Gate>>,
    errors: HashMap<Op, MakeError>,
}

#[derive(Debug, Default)]
struct Record {
    calls: Vec<Call>,
    counts: HashMap<Op, usize>,
}

/// A [`PieceStore`] that forwards to another and injects faults per
/// operation. Each call is first recorded, then waits at the operation's
/// gate if one is set, then fails if an error is set, and otherwise goes
/// to the wrapped store.
///
/// Errors can be injected into the operations that return a `Result`
/// (`get`, `put`, `put_many`, `pin_root`, `unpin_root`, `gc`); every
/// operation can be
/// stalled and is recorded.
pub struct FaultyStore {
    inner: Arc<dyn PieceStore>,
    faults: Mutex<Faults>,
    record: Mutex<Record>,
}

impl std::fmt::Debug for FaultyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultyStore").finish_non_exhaustive()
    }
}

impl FaultyStore {
    /// Wraps `inner` with no fault set.
    pub fn new(inner: Arc<dyn PieceStore>) -> Self {
        Self {
            inner,
            faults: Mutex::new(Faults::default()),
            record: Mutex::new(Record::default()),
        }
    }

    /// The wrapped store, for checking what reached it.
    pub fn inner(&self) -> &Arc<dyn PieceStore> {
        &self.inner
    }

    /// Stalls every later call of `op` until the returned gate is opened.
    pub fn stall(&self, op: Op) -> Arc<Gate> {
        let gate = Gate::closed();
        lock(&self.faults).gates.insert(op, Arc::clone(&gate));
        gate
    }

    /// Fails every later call of `op` with `make()`, until [`Self::heal`].
    /// Has no effect on the operations that cannot fail (`has`, `size`,
    /// `roots`, `hold`, `release`, `is_pinned`, `list`, `stats`).
    pub fn fail(&self, op: Op, make: impl Fn() -> StoreError + Send + Sync + 'static) {
        lock(&self.faults).errors.insert(op, Arc::new(make));
    }

    /// Removes the error and the gate set for `op` (a stalled call stays
    /// stalled until its gate is opened).
    pub fn heal(&self, op: Op) {
        let mut faults = lock(&self.faults);
        faults.errors.remove(&op);
        faults.gates.remove(&op);
    }

    /// The first [`MAX_RECORDED_CALLS`] calls, in order.
    pub fn calls(&self) -> Vec<Call> {
        lock(&self.record).calls.clone()
    }

    /// How many times `op` was called, stalled, failed or not.
    pub fn count(&self, op: Op) -> usize {
        lock(&self.record).counts.get(&op).copied().unwrap_or(0)
    }

    /// The size of every group given to `put_many`, in order.
    pub fn group_sizes(&self) -> Vec<usize> {
        self.calls()
            .iter()
            .filter_map(|call| match call {
                Call::PutMany { ids, .. } => Some(ids.len()),
                _ => None,
            })
            .collect()
    }

    /// Records `call`, waits at its gate, and returns the injected error.
    fn enter(&self, call: Call) -> Option<StoreError> {
        let op = call.op();
        {
            let mut record = lock(&self.record);
            *record.counts.entry(op).or_default() += 1;
            if record.calls.len() < MAX_RECORDED_CALLS {
                record.calls.push(call);
            }
        }
        let gate = lock(&self.faults).gates.get(&op).cloned();
        if let Some(gate) = gate {
            gate.wait();
        }
        let make = lock(&self.faults).errors.get(&op).cloned();
        make.map(|make| make())
    }

    fn enter_infallible(&self, call: Call) {
        // Errors are not injected where the contract has no way to report them.
        let _ = self.enter(call);
    }
}

impl PieceStore for FaultyStore {
    fn has(&self, id: &PieceId) -> bool {
        self.enter_infallible(Call::Has(*id));
        self.inner.has(id)
    }

    fn size(&self, id: &PieceId) -> Option<u64> {
        self.enter_infallible(Call::Size(*id));
        self.inner.size(id)
    }

    fn get(&self, id: &PieceId) -> Result<Option<Bytes>, StoreError> {
        match self.enter(Call::Get(*id)) {
            Some(err) => Err(err),
            None => self.inner.get(id),
        }
    }

    fn put(
        &self,
        piece: VerifiedPiece,
        retention: Retention,
        durability: Durability,
    ) -> Result<(), StoreError> {
        let call = Call::Put {
            id: piece.id(),
            retention,
            durability,
        };
        match self.enter(call) {
            Some(err) => Err(err),
            None => self.inner.put(piece, retention, durability),
        }
    }

    fn put_many(&self, pieces: Vec<VerifiedPiece>, retention: Retention) -> Result<(), StoreError> {
        let call = Call::PutMany {
            ids: pieces.iter().map(VerifiedPiece::id).collect(),
            retention,
        };
        match self.enter(call) {
            Some(err) => Err(err),
            None => self.inner.put_many(pieces, retention),
        }
    }

    fn pin_root(&self, root: Root) -> Result<bool, StoreError> {
        match self.enter(Call::PinRoot(root)) {
            Some(err) => Err(err),
            None => self.inner.pin_root(root),
        }
    }

    fn unpin_root(&self, root: Root) -> Result<bool, StoreError> {
        match self.enter(Call::UnpinRoot(root)) {
            Some(err) => Err(err),
            None => self.inner.unpin_root(root),
        }
    }

    fn roots(&self) -> Vec<Root> {
        self.enter_infallible(Call::Roots);
        self.inner.roots()
    }

    fn hold(&self, id: &PieceId) {
        self.enter_infallible(Call::Hold(*id));
        self.inner.hold(id);
    }

    fn release(&self, id: &PieceId) {
        self.enter_infallible(Call::Release(*id));
        self.inner.release(id);
    }

    fn is_pinned(&self, id: &PieceId) -> bool {
        self.enter_infallible(Call::IsPinned(*id));
        self.inner.is_pinned(id)
    }

    fn gc(&self) -> Result<GcReport, StoreError> {
        match self.enter(Call::Gc) {
            Some(err) => Err(err),
            None => self.inner.gc(),
        }
    }

    fn list(&self) -> Vec<PieceId> {
        self.enter_infallible(Call::List);
        self.inner.list()
    }

    fn stats(&self) -> StoreStats {
        self.enter_infallible(Call::Stats);
        self.inner.stats()
    }

    fn add_extents(&self, file: &Path, extents: &[Extent]) -> Result<(), StoreError> {
        let ids = extents.iter().map(|e| e.id).collect();
        match self.enter(Call::AddExtents(file.to_path_buf(), ids)) {
            Some(err) => Err(err),
            None => self.inner.add_extents(file, extents),
        }
    }

    fn offer_extents(&self, file: &Path, extents: &[Extent]) -> usize {
        let ids = extents.iter().map(|e| e.id).collect();
        self.enter_infallible(Call::OfferExtents(file.to_path_buf(), ids));
        self.inner.offer_extents(file, extents)
    }

    fn move_extent_file(&self, from: &Path, to: &Path) -> Result<bool, StoreError> {
        let call = Call::MoveExtentFile(from.to_path_buf(), to.to_path_buf());
        match self.enter(call) {
            Some(err) => Err(err),
            None => self.inner.move_extent_file(from, to),
        }
    }

    fn forget_extent_file(&self, file: &Path) -> Result<usize, StoreError> {
        match self.enter(Call::ForgetExtentFile(file.to_path_buf())) {
            Some(err) => Err(err),
            None => self.inner.forget_extent_file(file),
        }
    }

    fn extent_files(&self) -> Vec<PathBuf> {
        self.enter_infallible(Call::ExtentFiles);
        self.inner.extent_files()
    }

    fn verify_all(&self) -> Result<VerifyReport, StoreError> {
        match self.enter(Call::VerifyAll) {
            Some(err) => Err(err),
            None => self.inner.verify_all(),
        }
    }
}
