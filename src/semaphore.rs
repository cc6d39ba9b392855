//! `Semaphore` and `PermitGuard`: a counting semaphore whose permits expire
//! with their holder.

use std::ops::Deref;
use std::sync::Arc;

#[cfg(feature = "ractor")]
use ractor::{ActorRef, Message};
#[cfg(feature = "ractor")]
use tokio::task::JoinHandle;

#[cfg(feature = "ractor")]
use crate::event::{ended, serve, PermitEvent};
use crate::{AcquireKind, Error, LockGuard, LockRequest, Locker, SemaphoreInfo};

/// A counting semaphore over Valkey: at most [`permits`](Semaphore::permits)
/// holders of [`name`](Semaphore::name) at any moment, across every process
/// that uses it, each holding a [`PermitGuard`]. Made by
/// [`Locker::semaphore`]; cheap to clone. Like a [`Locker`] clone, it keeps
/// the locker's connections running while it lives.
///
/// Each permit is one of `permits` slots, and each slot is a lock of its own
/// (the lock `{name}:permit:{slot}`): a permit has every guarantee of a
/// [`LockGuard`] — a majority of keys over independent instances, a
/// validity told on the holder's own clock, extension while held, release on
/// drop, expiry within one validity when its holder dies, waiters woken by
/// invalidations, fencing per slot. An acquisition tries each slot once from
/// a random one, then waits on all of them and takes the first that frees.
///
/// Everyone who shares a semaphore must agree on `permits`: a permit's keys
/// record the count, and an acquisition that meets a slot held under
/// another count fails with [`Error::ConfigMismatch`].
///
/// # Examples
/// ```no_run
/// # async fn demo(locker: valkeylock::Locker) -> Result<(), valkeylock::Error> {
/// let pool = locker.semaphore("gpu", 4)?; // at most 4 jobs on the GPUs at once
/// let permit = pool.acquire().await?;
/// println!("running on slot {} of {}", permit.slot(), permit.name());
/// tokio::select! {
///     reason = permit.lost() => eprintln!("permit lost: {reason}"),
///     _ = train() => {}
/// }
/// permit.release().await?;
/// # Ok(()) }
/// # async fn train() {}
/// ```
#[derive(Debug, Clone)]
pub struct Semaphore {
    locker: Locker,
    name: Arc<str>,
    permits: u32,
}

impl Semaphore {
    pub(crate) fn new(locker: Locker, name: &str, permits: u32) -> Semaphore {
        Semaphore {
            locker,
            name: Arc::from(name),
            permits,
        }
    }

    /// The semaphore's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// How many holders it allows at once.
    pub fn permits(&self) -> u32 {
        self.permits
    }

    /// Waits for a permit and returns its guard. Dropping the future
    /// withdraws the wait.
    ///
    /// # Errors
    /// [`Error::Closed`], [`Error::ConfigMismatch`] (a slot held under
    /// another count, or by a lock named like a slot).
    ///
    /// # Cancel safety
    /// This method is cancel safe: if the future is dropped, every request
    /// it made is withdrawn and a grant that arrived just then is released.
    ///
    /// # Examples
    /// ```no_run
    /// # async fn demo(pool: valkeylock::Semaphore) -> Result<(), valkeylock::Error> {
    /// let permit = pool.acquire().await?;
    /// // … work while `permit.is_held()` …
    /// drop(permit); // released in the background
    /// # Ok(()) }
    /// ```
    pub async fn acquire(&self) -> Result<PermitGuard, Error> {
        self.take(AcquireKind::Wait, &LockRequest::new()).await
    }

    /// [`Semaphore::acquire`] on the terms of `request`: a wait limit (then
    /// [`Error::Timeout`]), the permit's own validity, a maximum hold.
    ///
    /// # Errors
    /// As [`Semaphore::acquire`]; [`Error::Timeout`];
    /// [`Error::InvalidOptions`] for a request out of range.
    ///
    /// # Cancel safety
    /// As [`Semaphore::acquire`].
    ///
    /// # Examples
    /// ```no_run
    /// # async fn demo(pool: valkeylock::Semaphore) -> Result<(), valkeylock::Error> {
    /// use std::time::Duration;
    /// use valkeylock::LockRequest;
    ///
    /// let request = LockRequest::new().wait(Duration::from_secs(5));
    /// match pool.acquire_with(&request).await {
    ///     Ok(permit) => drop(permit),
    ///     Err(valkeylock::Error::Timeout { .. }) => eprintln!("all permits busy for 5 s"),
    ///     Err(e) => return Err(e),
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn acquire_with(&self, request: &LockRequest) -> Result<PermitGuard, Error> {
        self.take(AcquireKind::Wait, request).await
    }

    /// One attempt at each slot: a permit, or [`Error::NotLocked`] when
    /// every slot is held.
    ///
    /// # Errors
    /// [`Error::NotLocked`], and those of [`Semaphore::acquire`].
    ///
    /// # Examples
    /// ```no_run
    /// # async fn demo(pool: valkeylock::Semaphore) -> Result<(), valkeylock::Error> {
    /// match pool.try_acquire().await {
    ///     Ok(permit) => drop(permit),
    ///     Err(valkeylock::Error::NotLocked { .. }) => eprintln!("busy"),
    ///     Err(e) => return Err(e),
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn try_acquire(&self) -> Result<PermitGuard, Error> {
        self.take(AcquireKind::Try, &LockRequest::new()).await
    }

    /// [`Semaphore::try_acquire`] on the terms of `request` (its wait limit
    /// does not apply).
    ///
    /// # Errors
    /// As [`Semaphore::try_acquire`]; [`Error::InvalidOptions`].
    ///
    /// # Examples
    /// ```no_run
    /// # async fn demo(pool: valkeylock::Semaphore) -> Result<(), valkeylock::Error> {
    /// use std::time::Duration;
    /// let request = valkeylock::LockRequest::new().validity(Duration::from_secs(30));
    /// let permit = pool.try_acquire_with(&request).await?;
    /// # drop(permit);
    /// # Ok(()) }
    /// ```
    pub async fn try_acquire_with(&self, request: &LockRequest) -> Result<PermitGuard, Error> {
        self.take(AcquireKind::Try, request).await
    }

    /// Looks at every permit slot without taking one: how many are held,
    /// free and unknown, and each slot's lock as [`Locker::inspect`]
    /// reports it (holder's token prefix, keys, TTLs). Slots whose keys
    /// could not be read are unknown, never free. The slots are read at
    /// once, not one after another.
    ///
    /// # Errors
    /// [`Error::Closed`].
    ///
    /// # Examples
    /// ```no_run
    /// # async fn demo(pool: valkeylock::Semaphore) -> Result<(), valkeylock::Error> {
    /// let info = pool.inspect().await?;
    /// println!("{}: {} of {} permits held, {} free", info.name, info.held, info.permits, info.free);
    /// # Ok(()) }
    /// ```
    pub async fn inspect(&self) -> Result<SemaphoreInfo, Error> {
        self.locker
            .inner()
            .engine
            .inspect_semaphore(&self.name, self.permits)
            .await
    }

    async fn take(&self, kind: AcquireKind, request: &LockRequest) -> Result<PermitGuard, Error> {
        let inner = self.locker.inner();
        let (lease, slot) = inner
            .engine
            .acquire_permit(&self.name, self.permits, kind, request)
            .await?;
        Ok(PermitGuard {
            guard: LockGuard::new(lease, inner.clone()),
            name: self.name.clone(),
            slot,
        })
    }

    /// Message-based acquisition for actors, like
    /// [`Locker::lock_for`]: waits for a permit in the background, then
    /// sends `PermitEvent::Acquired(permit)` to `actor`, and later
    /// `PermitEvent::Lost { .. }` when that permit ends for any reason other
    /// than its release. Failures arrive as `PermitEvent::Failed`. Abort the
    /// returned handle to withdraw the wait. A slot's `Lost` arrives before
    /// the `Acquired` of a later grant of that slot, as for `lock_for`.
    ///
    /// Needs the `ractor` feature.
    ///
    /// # Panics
    /// When called outside a tokio runtime.
    ///
    /// # Examples
    /// ```no_run
    /// use ractor::ActorRef;
    /// use valkeylock::{PermitEvent, Semaphore};
    ///
    /// enum Msg {
    ///     Permit(PermitEvent),
    /// }
    /// impl From<PermitEvent> for Msg {
    ///     fn from(e: PermitEvent) -> Msg {
    ///         Msg::Permit(e)
    ///     }
    /// }
    ///
    /// fn ask(pool: &Semaphore, me: ActorRef<Msg>) {
    ///     let wait = pool.acquire_for(me); // abort `wait` to give up
    ///     # let _ = wait;
    /// }
    /// ```
    #[cfg(feature = "ractor")]
    pub fn acquire_for<M>(&self, actor: ActorRef<M>) -> JoinHandle<()>
    where
        M: Message + From<PermitEvent>,
    {
        let pool = self.clone();
        // On the caller's runtime, as `lock_for` (see there).
        tokio::spawn(async move {
            let hand = |permit: PermitGuard| {
                let (name, slot) = (pool.name().to_owned(), permit.slot());
                let lost = ended(actor.clone(), move |reason| PermitEvent::Lost {
                    name,
                    slot,
                    reason,
                });
                (
                    permit.watcher(),
                    M::from(PermitEvent::Acquired(permit)),
                    lost,
                )
            };
            let failed = |error| {
                let name = pool.name().to_owned();
                M::from(PermitEvent::Failed { name, error })
            };
            serve(&actor, || pool.acquire(), hand, failed).await;
        })
    }
}

/// A held permit of a [`Semaphore`]. It is the [`LockGuard`] of its slot
/// (it derefs to it: [`is_held`](LockGuard::is_held),
/// [`valid_until`](LockGuard::valid_until), [`lost`](LockGuard::lost),
/// [`cancellation_token`](LockGuard::cancellation_token),
/// [`fencing_token`](LockGuard::fencing_token) and the rest behave as for a
/// lock), with the semaphore's [`name`](PermitGuard::name) and its
/// [`slot`](PermitGuard::slot). Dropping it releases the permit in the
/// background; [`PermitGuard::release`] waits for the deletes.
///
/// The fencing token counts per slot: pass `(slot, fencing_token)` to a
/// resource that checks them.
///
/// # Examples
/// ```no_run
/// # async fn demo(pool: valkeylock::Semaphore) -> Result<(), valkeylock::Error> {
/// let permit = pool.acquire().await?;
/// if permit.is_held() {
///     // use the resource of slot `permit.slot()`
/// }
/// permit.release().await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
#[must_use = "the permit is released as soon as the guard is dropped: bind it (`let permit = …`) for as long as the work it protects"]
pub struct PermitGuard {
    guard: LockGuard,
    name: Arc<str>,
    slot: u32,
}

impl PermitGuard {
    /// The semaphore's name (the slot's own lock name is
    /// `{name}:permit:{slot}`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Which of the semaphore's slots this permit holds, in
    /// `0..permits`.
    pub fn slot(&self) -> u32 {
        self.slot
    }

    /// The permit as the [`LockGuard`] of its slot (whose
    /// [`name`](LockGuard::name) is the slot's lock name), for code written
    /// for locks. Dropping it still releases the permit.
    pub fn into_guard(self) -> LockGuard {
        self.guard
    }

    /// Releases the permit and waits until its keys are deleted, as
    /// [`LockGuard::release`].
    ///
    /// # Errors
    /// As [`LockGuard::release`].
    ///
    /// # Cancel safety
    /// As [`LockGuard::release`]: the permit is released all the same.
    pub async fn release(self) -> Result<(), Error> {
        self.guard.release().await
    }
}

impl Deref for PermitGuard {
    type Target = LockGuard;

    fn deref(&self) -> &LockGuard {
        &self.guard
    }
}
