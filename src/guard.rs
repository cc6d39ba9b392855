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
///
/// # Examples
/// ```no_run
/// # async fn demo(locker: valkeylock::Locker) -> Result<(), valkeylock::Error> {
/// let guard = locker.lock("invoices").await?;
/// tokio::select! {
///     reason = guard.lost() => eprintln!("lost {}: {reason}", guard.name()),
///     _ = work(guard.fencing_token()) => {}
/// }
/// guard.release().await?;
/// # Ok(()) }
/// # async fn work(_token: u64) {}
/// ```
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
    ///
    /// # Examples
    /// ```no_run
    /// # async fn demo(guard: valkeylock::LockGuard) -> Result<(), valkeylock::Error> {
    /// assert_eq!(guard.name(), "invoices");
    /// # Ok(()) }
    /// ```
    pub fn name(&self) -> &str {
        self.lease.name()
    }

    /// True while the lock is held and within its validity: it compares
    /// [`valid_until`](LockGuard::valid_until) with the clock when called, so
    /// it turns false on time even if the engine is busy. A pause between
    /// this check and the protected action can outlast the validity; check
    /// `valid_until` against how long the action takes, or use
    /// [`fencing_token`](LockGuard::fencing_token).
    ///
    /// # Examples
    /// ```no_run
    /// # async fn demo(guard: valkeylock::LockGuard) -> Result<(), valkeylock::Error> {
    /// if guard.is_held() {
    ///     // act on the protected resource
    /// }
    /// # Ok(()) }
    /// ```
    pub fn is_held(&self) -> bool {
        self.lease.is_held()
    }

    /// The earliest moment another client could take the majority, as known
    /// now, less a small margin (1 % of `key_validity`, 1–20 ms); `None` once
    /// the lock ended. It moves later with each confirmed extension, never
    /// without one. A loss is told by this instant: the engine acts early
    /// enough to tell every holder of the process by then.
    ///
    /// # Examples
    /// ```no_run
    /// # async fn demo(guard: valkeylock::LockGuard) -> Result<(), valkeylock::Error> {
    /// use std::time::Duration;
    /// use tokio::time::Instant;
    ///
    /// // Start a step only if the lock is safe for longer than it takes.
    /// let step = Duration::from_millis(500);
    /// if guard.valid_until().is_some_and(|end| end > Instant::now() + step) {
    ///     // …
    /// }
    /// # Ok(()) }
    /// ```
    pub fn valid_until(&self) -> Option<Instant> {
        self.lease.valid_until()
    }

    /// Resolves when the lock ends, with the reason (including
    /// [`LostReason::Released`] after a release). Callable any number of
    /// times. It resolves by `valid_until` on this process's own clock even
    /// if the engine is late to say so (then with [`LostReason::Expired`],
    /// or [`LostReason::MaxHold`] at a maximum hold).
    ///
    /// # Cancel safety
    /// This method is cancel safe. If `lost()` is used as the event in a
    /// `tokio::select!` statement and some other branch completes first, then
    /// the lock is unaffected (still held, not released) and a later call
    /// returns the reason as before.
    ///
    /// # Examples
    /// ```no_run
    /// # async fn demo(guard: valkeylock::LockGuard) -> Result<(), valkeylock::Error> {
    /// tokio::select! {
    ///     reason = guard.lost() => eprintln!("lost: {reason}"),
    ///     _ = work() => {}
    /// }
    /// # Ok(()) }
    /// # async fn work() {}
    /// ```
    pub async fn lost(&self) -> LostReason {
        self.lease.lost().await
    }

    /// Why the lock ended, if the engine has ended it; `None` while held.
    /// Does not wait (see [`lost`](LockGuard::lost)).
    ///
    /// # Examples
    /// ```no_run
    /// # async fn demo(guard: valkeylock::LockGuard) -> Result<(), valkeylock::Error> {
    /// if let Some(reason) = guard.lost_reason() {
    ///     eprintln!("{} ended: {}", guard.name(), reason.as_str());
    /// }
    /// # Ok(()) }
    /// ```
    pub fn lost_reason(&self) -> Option<LostReason> {
        self.lease.lost_reason()
    }

    /// The fencing token of this grant: strictly greater than every token
    /// granted before it for this name, across lockers and processes that use
    /// [`LockerOptions::fencing`](crate::LockerOptions::fencing). Pass it to
    /// the protected resource so it can reject writes from a stale holder.
    /// 0 when the locker was built without `fencing`.
    ///
    /// # Examples
    /// ```no_run
    /// # async fn demo() -> Result<(), valkeylock::Error> {
    /// use valkeylock::{Locker, LockerOptions};
    ///
    /// let options = LockerOptions::new(["redis://127.0.0.1:6379"]).with_key_majority(1).with_fencing(true);
    /// let locker = Locker::connect(options).await?;
    /// let guard = locker.lock("ledger").await?;
    /// let token = guard.fencing_token(); // send it with every write; the store rejects older tokens
    /// # let _ = token;
    /// # Ok(()) }
    /// ```
    pub fn fencing_token(&self) -> u64 {
        self.lease.fencing_token()
    }

    /// Cancelled the moment the lock ends, for any reason: the Rust form of
    /// valkeylock's context. Also cancelled at `valid_until` by this
    /// process's clock if the engine is late. Each call returns a new child
    /// token: cancelling it does not release the lock.
    ///
    /// # Examples
    /// ```no_run
    /// # async fn demo(guard: valkeylock::LockGuard) -> Result<(), valkeylock::Error> {
    /// let token = guard.cancellation_token();
    /// let task = tokio::spawn(async move {
    ///     tokio::select! {
    ///         _ = token.cancelled() => {} // the lock ended: stop
    ///         _ = work() => {}
    ///     }
    /// });
    /// # let _ = task;
    /// # Ok(()) }
    /// # async fn work() {}
    /// ```
    pub fn cancellation_token(&self) -> CancellationToken {
        self.lease.cancellation_token()
    }

    /// A cloneable observer of this lock (for another task or actor), which
    /// never releases it.
    ///
    /// # Examples
    /// ```no_run
    /// # async fn demo(guard: valkeylock::LockGuard) -> Result<(), valkeylock::Error> {
    /// let watcher = guard.watcher();
    /// tokio::spawn(async move {
    ///     let reason = watcher.lost().await;
    ///     eprintln!("{} ended: {reason}", watcher.name());
    /// });
    /// guard.release().await?;
    /// # Ok(()) }
    /// ```
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
    /// `key_validity`. An answer later than `try_next_after` counts as none,
    /// even if the delete ran: a burst of releases too large for the server
    /// to answer within that limit tells the last ones so. Releases queued
    /// together go to each node in calls of many keys; the scale bench in
    /// BENCHMARKS.md releases 10,000 at once and counts the unconfirmed. [`Error::Closed`](crate::Error::Closed) when the engine
    /// stopped before it could release (the keys expire likewise); not after
    /// [`Locker::close`](crate::Locker::close), which released them.
    ///
    /// # Cancel safety
    /// Dropping the future does not keep the lock: if `release()` is used as
    /// the event in a `tokio::select!` statement and some other branch
    /// completes first, then the lock is released all the same (the release
    /// is sent to the engine on the first poll, and a future dropped before
    /// that drops the guard, which releases it too); only the confirmation
    /// of the deletes is lost.
    ///
    /// # Examples
    /// ```no_run
    /// # async fn demo(guard: valkeylock::LockGuard) -> Result<(), valkeylock::Error> {
    /// match guard.release().await {
    ///     Ok(()) => {}
    ///     Err(valkeylock::Error::ReleaseUnconfirmed { unconfirmed, .. }) => {
    ///         eprintln!("{unconfirmed} keys left to expire")
    ///     }
    ///     Err(e) => return Err(e),
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn release(self) -> Result<(), crate::Error> {
        // The engine handle is dropped after the release is confirmed.
        let LockGuard { lease, _engine } = self;
        lease.release().await
    }
}
