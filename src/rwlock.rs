//! `RwLock`, `ReadGuard` and `WriteGuard`: a read-write lock over Valkey.

use std::ops::Deref;
use std::sync::Arc;

use crate::{AcquireKind, Error, LockGuard, LockRequest, Locker};

/// A read-write lock over Valkey: up to [`MAX_READERS`](crate::MAX_READERS)
/// readers at once, or one writer, never both, across every process that
/// uses it. Made by [`Locker::rw_lock`]; cheap to clone.
///
/// Each side is a lock with every guarantee of a [`LockGuard`] (a majority
/// of keys over independent instances, a validity told on the holder's own
/// clock, extension while held, release on drop, waiters woken by
/// invalidations): the writer's lock, with a fencing token, and one lock per
/// reader slot. The script that takes a free key keeps them apart: a reader's
/// key is taken only while the writer's key of the same index is absent, the
/// writer's only while every reader's is. A writer that waits stops new
/// readers (writers do not starve); the readers already in hold on, and the
/// writer is woken when the last of them leaves.
///
/// # Examples
/// ```no_run
/// # async fn demo(locker: valkeylock::Locker) -> Result<(), valkeylock::Error> {
/// let config = locker.rw_lock("config")?;
/// {
///     let read = config.read().await?; // many readers at once
///     // read the configuration while `read.is_held()`
/// }
/// let write = config.write().await?; // alone: readers and writers wait
/// println!("writing with fencing token {}", write.fencing_token());
/// write.release().await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct RwLock {
    locker: Locker,
    name: Arc<str>,
}

impl RwLock {
    pub(crate) fn new(locker: Locker, name: &str) -> RwLock {
        RwLock {
            locker,
            name: Arc::from(name),
        }
    }

    /// The read-write lock's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Waits for the read side: returns once no writer holds or waits.
    /// Dropping the future withdraws the wait.
    ///
    /// # Errors
    /// [`Error::Closed`].
    ///
    /// # Cancel safety
    /// This method is cancel safe: the wait is withdrawn and a grant that
    /// arrived just then is released.
    pub async fn read(&self) -> Result<ReadGuard, Error> {
        self.take_read(AcquireKind::Wait, &LockRequest::new()).await
    }

    /// [`RwLock::read`] on the terms of `request` (a wait limit, then
    /// [`Error::Timeout`]; the guard's own validity; a maximum hold).
    ///
    /// # Errors
    /// As [`RwLock::read`]; [`Error::Timeout`]; [`Error::InvalidOptions`].
    ///
    /// # Cancel safety
    /// As [`RwLock::read`].
    pub async fn read_with(&self, request: &LockRequest) -> Result<ReadGuard, Error> {
        self.take_read(AcquireKind::Wait, request).await
    }

    /// One attempt at the read side: [`Error::NotLocked`] while a writer
    /// holds or waits.
    ///
    /// # Errors
    /// [`Error::NotLocked`], and those of [`RwLock::read`].
    pub async fn try_read(&self) -> Result<ReadGuard, Error> {
        self.take_read(AcquireKind::Try, &LockRequest::new()).await
    }

    /// Waits for the write side: returns once no reader or other writer
    /// holds it. While it waits, new readers wait behind it.
    ///
    /// # Errors
    /// [`Error::Closed`].
    ///
    /// # Cancel safety
    /// As [`RwLock::read`]. A withdrawn writer's mark that stops new
    /// readers lapses within `key_validity`.
    pub async fn write(&self) -> Result<WriteGuard, Error> {
        self.take_write(AcquireKind::Wait, &LockRequest::new())
            .await
    }

    /// [`RwLock::write`] on the terms of `request`.
    ///
    /// # Errors
    /// As [`RwLock::write`]; [`Error::Timeout`]; [`Error::InvalidOptions`].
    ///
    /// # Cancel safety
    /// As [`RwLock::write`].
    pub async fn write_with(&self, request: &LockRequest) -> Result<WriteGuard, Error> {
        self.take_write(AcquireKind::Wait, request).await
    }

    /// One attempt at the write side: [`Error::NotLocked`] while anyone
    /// holds the lock. A refused attempt still stops new readers for up to
    /// `key_validity`.
    ///
    /// # Errors
    /// [`Error::NotLocked`], and those of [`RwLock::write`].
    pub async fn try_write(&self) -> Result<WriteGuard, Error> {
        self.take_write(AcquireKind::Try, &LockRequest::new()).await
    }

    async fn take_read(
        &self,
        kind: AcquireKind,
        request: &LockRequest,
    ) -> Result<ReadGuard, Error> {
        let inner = self.locker.inner();
        let (lease, slot) = inner.engine.acquire_read(&self.name, kind, request).await?;
        Ok(ReadGuard {
            guard: LockGuard::new(lease, inner.clone()),
            name: self.name.clone(),
            slot,
        })
    }

    async fn take_write(
        &self,
        kind: AcquireKind,
        request: &LockRequest,
    ) -> Result<WriteGuard, Error> {
        let inner = self.locker.inner();
        let lease = inner
            .engine
            .acquire_write(&self.name, kind, request)
            .await?;
        Ok(WriteGuard {
            guard: LockGuard::new(lease, inner.clone()),
            name: self.name.clone(),
        })
    }
}

/// A held read side of an [`RwLock`]: the [`LockGuard`] of one reader slot
/// (it derefs to it: [`is_held`](LockGuard::is_held),
/// [`valid_until`](LockGuard::valid_until), [`lost`](LockGuard::lost) and
/// the rest behave as for a lock). Dropping it releases in the background.
/// Readers have no fencing token (0): fence the writes, with the
/// [`WriteGuard`]'s.
#[derive(Debug)]
#[must_use = "the read side is released as soon as the guard is dropped"]
pub struct ReadGuard {
    guard: LockGuard,
    name: Arc<str>,
    slot: u32,
}

impl ReadGuard {
    /// The read-write lock's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The reader slot held, in `0..MAX_READERS`.
    pub fn slot(&self) -> u32 {
        self.slot
    }

    /// Releases the read side and waits until its keys are deleted, as
    /// [`LockGuard::release`]: a writer waiting on it is woken.
    ///
    /// # Errors
    /// As [`LockGuard::release`].
    pub async fn release(self) -> Result<(), Error> {
        self.guard.release().await
    }
}

impl Deref for ReadGuard {
    type Target = LockGuard;

    fn deref(&self) -> &LockGuard {
        &self.guard
    }
}

/// The held write side of an [`RwLock`]: the [`LockGuard`] of its writer's
/// lock (it derefs to it), with a fencing token that strictly increases
/// from one writer to the next. Dropping it releases in the background.
#[derive(Debug)]
#[must_use = "the write side is released as soon as the guard is dropped"]
pub struct WriteGuard {
    guard: LockGuard,
    name: Arc<str>,
}

impl WriteGuard {
    /// The read-write lock's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Releases the write side and waits until its keys are deleted:
    /// waiting readers and writers are woken.
    ///
    /// # Errors
    /// As [`LockGuard::release`].
    pub async fn release(self) -> Result<(), Error> {
        self.guard.release().await
    }
}

impl Deref for WriteGuard {
    type Target = LockGuard;

    fn deref(&self) -> &LockGuard {
        &self.guard
    }
}
