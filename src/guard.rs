//! `LockGuard`: a held lock.

use std::sync::Arc;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::locker::Inner;
use crate::{Lease, LeaseWatcher, LostReason};

/// A held lock. Dropping it releases the lock in the background without
/// blocking; [`LockGuard::release`] releases and waits for the deletes.
///
/// A guard keeps its locker's engine (connections and actors) running until
/// it is released or dropped, even when every [`Locker`](crate::Locker)
/// handle is gone, so `Locker::connect(o).await?.lock("x").await?` holds the
/// lock for as long as the guard lives. [`Locker::close`](crate::Locker::close)
/// still ends it.
///
/// Check [`LockGuard::is_held`] before acting on the protected resource, or
/// race your work against [`LockGuard::lost`] / the
/// [`cancellation_token`](LockGuard::cancellation_token). The lock is safe
/// until [`LockGuard::valid_until`], which moves forward with each confirmed
/// extension; `is_held()` turns false at that instant, while `lost()` and the
/// token fire when a timer set for it has run and told the lock's actor, a
/// little later (milliseconds, more on a busy process).
#[derive(Debug)]
#[must_use = "the lock is released as soon as the guard is dropped: bind it (`let guard = …`) for as long as the work it protects"]
pub struct LockGuard {
    // Field order matters: the lease is dropped first (its release is sent to
    // the engine), then the engine handle (closing it if this was the last).
    lease: Lease,
    _engine: Arc<Inner>,
}

impl LockGuard {
    pub(crate) fn new(lease: Lease, engine: Arc<Inner>) -> LockGuard {
        LockGuard {
            lease,
            _engine: engine,
        }
    }

    /// The lock name.
    pub fn name(&self) -> &str {
        self.lease.name()
    }

    /// True while the lock is held and within its validity.
    pub fn is_held(&self) -> bool {
        self.lease.is_held()
    }

    /// The earliest moment another client could take the majority, as known
    /// now; `None` once the lock ended.
    pub fn valid_until(&self) -> Option<Instant> {
        self.lease.valid_until()
    }

    /// Resolves when the lock ends, with the reason (including
    /// [`LostReason::Released`] after a release). Cancel-safe; callable any
    /// number of times.
    pub async fn lost(&self) -> LostReason {
        self.lease.lost().await
    }

    /// Why the lock ended, if it has.
    pub fn lost_reason(&self) -> Option<LostReason> {
        self.lease.lost_reason()
    }

    /// The fencing token of this grant: strictly greater than every token
    /// granted before it for this name, across lockers and processes that use
    /// [`LockerOptions::fencing`](crate::LockerOptions::fencing). Pass it to
    /// the protected resource so it can reject writes from a stale holder.
    /// 0 when the locker was built without `fencing`.
    pub fn fencing_token(&self) -> u64 {
        self.lease.fencing_token()
    }

    /// Cancelled the moment the lock ends, for any reason: the Rust form of
    /// valkeylock's context.
    pub fn cancellation_token(&self) -> CancellationToken {
        self.lease.cancellation_token()
    }

    /// A cloneable observer of this lock (for another task or actor), which
    /// never releases it.
    pub fn watcher(&self) -> LeaseWatcher {
        self.lease.watcher()
    }

    /// Releases the lock and waits until its keys are deleted (each node
    /// bounded by `try_next_after`). A lock already lost releases nothing and
    /// is not an error.
    ///
    /// # Errors
    /// [`Error::ReleaseUnconfirmed`](crate::Error::ReleaseUnconfirmed) when a
    /// node did not answer a delete: those keys are left to expire within
    /// `key_validity`. [`Error::Closed`](crate::Error::Closed) when the engine
    /// stopped before it could release (the keys expire likewise); not after
    /// [`Locker::close`](crate::Locker::close), which released them.
    pub async fn release(self) -> Result<(), crate::Error> {
        // The engine handle is dropped after the release is confirmed.
        let LockGuard { lease, _engine } = self;
        lease.release().await
    }
}
