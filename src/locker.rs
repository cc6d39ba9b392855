//! `Locker`: the user's handle to a running engine.

use std::sync::Arc;

#[cfg(feature = "ractor")]
use ractor::{ActorRef, Message};
#[cfg(feature = "ractor")]
use tokio::task::JoinHandle;

use crate::election::Election;
#[cfg(feature = "ractor")]
use crate::event::{ended, serve, LockEvent};
use crate::guard::LockGuard;
use crate::rwlock::RwLock;
use crate::semaphore::Semaphore;
use crate::{
    AcquireKind, Engine, Error, ForcedRelease, Health, LockInfo, LockRequest, LockWatch,
    LockerOptions,
};

/// A distributed locker over one or more Valkey instances. Cheap to clone;
/// all clones share one set of connections. Every [`LockGuard`] it hands out
/// keeps those running too (like tokio's owned guards), so a guard outlives a
/// temporary `Locker`. Once the last clone and the last guard are dropped, it
/// closes in the background; prefer [`Locker::close`], which waits (and ends
/// the guards still held, with `Closed`).
///
/// # Examples
/// ```no_run
/// # async fn demo() -> Result<(), valkeylock::Error> {
/// use valkeylock::{Locker, LockerOptions};
///
/// let locker = Locker::connect(LockerOptions::new(["redis://127.0.0.1:6379"]).with_key_majority(1)).await?;
/// let worker = locker.clone(); // same connections, for another task
/// tokio::spawn(async move {
///     if let Ok(guard) = worker.lock("jobs").await {
///         // …
///         drop(guard);
///     }
/// });
/// locker.close().await;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Locker {
    inner: Arc<Inner>,
}

/// The engine, shared by the `Locker` clones and the guards; closed when the
/// last of them goes.
#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) engine: Engine,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.engine.close_in_background();
    }
}

impl Locker {
    /// Validates `options`, connects to every node and turns on client-side
    /// caching.
    ///
    /// Succeeds when the nodes that answered hold a majority of each lock's
    /// keys; the others are retried in the background.
    ///
    /// # Errors
    /// - [`Error::InvalidOptions`] for options out of range;
    /// - [`Error::Connection`] for wrong credentials, missing permissions, a
    ///   server without RESP3, or too few reachable nodes; its
    ///   [`kind`](crate::ConnectionErrorKind) says which.
    ///
    /// # Examples
    /// ```no_run
    /// # async fn demo() -> Result<(), valkeylock::Error> {
    /// use valkeylock::{Locker, LockerOptions};
    /// let locker = Locker::connect(
    ///     LockerOptions::new(["redis://127.0.0.1:6379"]).with_key_majority(1),
    /// )
    /// .await?;
    /// let guard = locker.lock("my_lock").await?;
    /// // … work while `guard.is_held()`; `guard.lost()` fires if it is lost …
    /// guard.release().await?;
    /// locker.close().await;
    /// # Ok(()) }
    /// ```
    pub async fn connect(options: LockerOptions) -> Result<Locker, Error> {
        let engine = Engine::start(&options).await?;
        Ok(Locker {
            inner: Arc::new(Inner { engine }),
        })
    }

    /// Waits until `name` is held and returns its guard. Waiters in this
    /// process queue first-come first-served; a release anywhere wakes the
    /// next one at once. Dropping the future withdraws the wait.
    ///
    /// It waits for as long as it takes, through an outage too; bound it
    /// with [`Locker::lock_with`] and [`LockRequest::wait`].
    ///
    /// # Errors
    /// [`Error::InvalidName`], [`Error::Closed`] (the locker was closed, or
    /// closes while waiting), [`Error::ConfigMismatch`] (the keys are held
    /// by a locker with another `key_majority` or node count).
    ///
    /// # Cancel safety
    /// This method is cancel safe. If `lock()` is used as the event in a
    /// `tokio::select!` statement and some other branch completes first, then
    /// the request is withdrawn and nothing is held: a grant that arrived just
    /// as the future was dropped is released, never left held by nobody.
    ///
    /// # Examples
    /// ```no_run
    /// # async fn demo(locker: valkeylock::Locker) -> Result<(), valkeylock::Error> {
    /// let guard = locker.lock("invoices").await?;
    /// // … work while `guard.is_held()` …
    /// guard.release().await?;
    /// # Ok(()) }
    /// ```
    pub async fn lock(&self, name: &str) -> Result<LockGuard, Error> {
        self.acquire(name, AcquireKind::Wait, &LockRequest::new())
            .await
    }

    /// [`Locker::lock`] on the terms of `request`: a wait limit (then
    /// [`Error::Timeout`]), this lock's own validity, a maximum hold (then
    /// `lost()` says [`LostReason::MaxHold`](crate::LostReason::MaxHold)).
    ///
    /// # Errors
    /// [`Error::Timeout`] when the wait limit runs out (the wait is
    /// withdrawn, nothing is held); [`Error::InvalidOptions`] for a request
    /// out of range (checked before anything is sent); plus those of
    /// [`Locker::lock`].
    ///
    /// # Cancel safety
    /// This method is cancel safe. If `lock_with()` is used as the event in a
    /// `tokio::select!` statement and some other branch completes first, then
    /// the request is withdrawn and nothing is held: a grant that arrived just
    /// as the future was dropped is released, never left held by nobody.
    /// A wait limit works the same way: when it runs out, the request is
    /// withdrawn.
    ///
    /// # Examples
    /// ```no_run
    /// # async fn demo(locker: valkeylock::Locker) -> Result<(), valkeylock::Error> {
    /// use std::time::Duration;
    /// use valkeylock::{Error, LockRequest};
    ///
    /// let request = LockRequest::new()
    ///     .wait(Duration::from_secs(5))
    ///     .validity(Duration::from_secs(30))
    ///     .max_hold(Duration::from_secs(600));
    /// match locker.lock_with("nightly-report", &request).await {
    ///     Ok(guard) => { /* … */ guard.release().await? }
    ///     Err(Error::Timeout { .. }) => eprintln!("busy; try later"),
    ///     Err(e) => return Err(e),
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn lock_with(&self, name: &str, request: &LockRequest) -> Result<LockGuard, Error> {
        self.acquire(name, AcquireKind::Wait, request).await
    }

    /// One attempt, no waiting.
    ///
    /// # Errors
    /// [`Error::NotLocked`] with the counts when the majority was not reached
    /// (also when another guard of this process holds it), plus those of
    /// [`Locker::lock`].
    ///
    /// # Cancel safety
    /// This method is cancel safe. If `try_lock()` is used as the event in a
    /// `tokio::select!` statement and some other branch completes first, then
    /// the request is withdrawn and nothing is held: a grant that arrived just
    /// as the future was dropped is released, never left held by nobody.
    ///
    /// # Examples
    /// ```no_run
    /// # async fn demo(locker: valkeylock::Locker) -> Result<(), valkeylock::Error> {
    /// use valkeylock::Error;
    ///
    /// match locker.try_lock("invoices").await {
    ///     Ok(guard) => guard.release().await?,
    ///     Err(Error::NotLocked { acquired, needed, held_by_others, .. }) => {
    ///         eprintln!("got {acquired} of {needed} keys (held by others: {held_by_others})")
    ///     }
    ///     Err(e) => return Err(e),
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn try_lock(&self, name: &str) -> Result<LockGuard, Error> {
        self.acquire(name, AcquireKind::Try, &LockRequest::new())
            .await
    }

    /// [`Locker::try_lock`] with this lock's own validity and maximum hold
    /// (a wait limit is ignored: it never waits).
    ///
    /// # Errors
    /// [`Error::InvalidOptions`] for a request out of range, plus those of
    /// [`Locker::try_lock`].
    ///
    /// # Cancel safety
    /// This method is cancel safe. If `try_lock_with()` is used as the event in a
    /// `tokio::select!` statement and some other branch completes first, then
    /// the request is withdrawn and nothing is held: a grant that arrived just
    /// as the future was dropped is released, never left held by nobody.
    ///
    /// # Examples
    /// ```no_run
    /// # async fn demo(locker: valkeylock::Locker) -> Result<(), valkeylock::Error> {
    /// use std::time::Duration;
    /// use valkeylock::LockRequest;
    ///
    /// let request = LockRequest::new().max_hold(Duration::from_secs(60));
    /// if let Ok(guard) = locker.try_lock_with("cleanup", &request).await {
    ///     // at most a minute, whatever happens
    ///     guard.release().await?;
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn try_lock_with(
        &self,
        name: &str,
        request: &LockRequest,
    ) -> Result<LockGuard, Error> {
        self.acquire(name, AcquireKind::Try, request).await
    }

    /// Takes the lock over whoever holds it (their `lost()` says
    /// [`LostReason::Forced`](crate::LostReason::Forced)).
    ///
    /// # Errors
    /// [`Error::NotLocked`] when too few nodes answered, plus those of
    /// [`Locker::lock`] (except [`Error::ConfigMismatch`]: it overwrites
    /// without reading).
    ///
    /// # Cancel safety
    /// This method is cancel safe. If `force_lock()` is used as the event in a
    /// `tokio::select!` statement and some other branch completes first, then
    /// the request is withdrawn and nothing is held by this call: a grant that arrived just
    /// as the future was dropped is released, never left held by nobody.
    /// Keys already overwritten stay overwritten: the old holder may have
    /// lost the lock even so.
    ///
    /// # Examples
    /// ```no_run
    /// # async fn demo(locker: valkeylock::Locker) -> Result<(), valkeylock::Error> {
    /// let guard = locker.force_lock("stuck-job").await?; // the old holder's lost() says Forced
    /// guard.release().await?;
    /// # Ok(()) }
    /// ```
    pub async fn force_lock(&self, name: &str) -> Result<LockGuard, Error> {
        self.acquire(name, AcquireKind::Force, &LockRequest::new())
            .await
    }

    /// A counting semaphore named `name` with `permits` permits: at most
    /// that many holders at once across every process using it, each
    /// permit with the guarantees of a lock. See [`Semaphore`].
    ///
    /// # Errors
    /// [`Error::InvalidName`] (the name, or the slot names it makes, would
    /// not be valid lock names); [`Error::InvalidOptions`] for `permits`
    /// outside `1..=`[`MAX_PERMITS`](crate::MAX_PERMITS).
    ///
    /// # Examples
    /// ```no_run
    /// # async fn demo(locker: valkeylock::Locker) -> Result<(), valkeylock::Error> {
    /// let pool = locker.semaphore("db-connections", 10)?;
    /// let permit = pool.acquire().await?;
    /// # drop(permit);
    /// # Ok(()) }
    /// ```
    pub fn semaphore(&self, name: &str, permits: u32) -> Result<Semaphore, Error> {
        self.inner.engine.check_semaphore(name, permits)?;
        Ok(Semaphore::new(self.clone(), name, permits))
    }

    /// A read-write lock named `name` (see [`RwLock`]): readers share it,
    /// a writer holds it alone, and a waiting writer stops new readers.
    ///
    /// # Errors
    /// [`Error::InvalidName`] (empty, too long, braces); and
    /// [`Error::InvalidOptions`] when the locker's `key_prefix` has braces.
    ///
    /// # Examples
    /// ```no_run
    /// # async fn demo(locker: valkeylock::Locker) -> Result<(), valkeylock::Error> {
    /// let table = locker.rw_lock("prices")?;
    /// let read = table.read().await?;
    /// # drop(read);
    /// # Ok(()) }
    /// ```
    pub fn rw_lock(&self, name: &str) -> Result<RwLock, Error> {
        self.inner.engine.check_rwlock(name)?;
        Ok(RwLock::new(self.clone(), name))
    }

    /// A leader election named `name` (see [`Election`]): candidates
    /// campaign with a value, one leads at a time, with a term that
    /// strictly increases, and anyone can follow who leads.
    ///
    /// # Errors
    /// [`Error::InvalidName`] (the name, or its lock's name
    /// `{name}:election`, would not be a valid lock name).
    ///
    /// # Examples
    /// ```no_run
    /// # async fn demo(locker: valkeylock::Locker) -> Result<(), valkeylock::Error> {
    /// let election = locker.election("scheduler")?;
    /// let leadership = election.campaign("host-a").await?;
    /// # drop(leadership);
    /// # Ok(()) }
    /// ```
    pub fn election(&self, name: &str) -> Result<Election, Error> {
        self.inner.engine.check_election(name)?;
        Ok(Election::new(self.clone(), name))
    }

    pub(crate) fn inner(&self) -> &Arc<Inner> {
        &self.inner
    }

    async fn acquire(
        &self,
        name: &str,
        kind: AcquireKind,
        request: &LockRequest,
    ) -> Result<LockGuard, Error> {
        self.inner
            .engine
            .acquire(name, kind, request)
            .await
            .map(|lease| LockGuard::new(lease, self.inner.clone()))
    }

    /// Message-based locking for actors: waits for `name` in the background,
    /// then sends `LockEvent::Acquired(guard)` to `actor`, and later
    /// `LockEvent::Lost { .. }` when that grant ends for any reason other than
    /// its release. Failures arrive as `LockEvent::Failed`. Abort the returned
    /// handle to withdraw the wait (or, once granted, the `Lost` to come).
    ///
    /// In order: a grant's `Lost` reaches the actor before the `Acquired` of
    /// any later grant of the same lock made by this locker, so an actor
    /// that asks again while it holds the lock never takes the old grant's
    /// `Lost` for the new one's. The engine sends `Lost` itself as it ends
    /// the grant, before it answers the next request, and by this process's
    /// clock at the grant's validity if it is late
    /// ([`LeaseWatcher::announce`](crate::LeaseWatcher::announce)). A grant
    /// that ends before its `Acquired` is sent (the caller's runtime was
    /// too busy to send it in time) is not sent at all: the wait goes on.
    ///
    /// The actor's message type only needs `From<LockEvent>`.
    ///
    /// Needs the `ractor` feature (off by default): it takes ractor's
    /// `ActorRef`, so it follows ractor's versions.
    ///
    /// # Panics
    /// When called outside a tokio runtime (it spawns a task on the caller's
    /// runtime).
    ///
    /// # Examples
    /// ```no_run
    /// use ractor::ActorRef;
    /// use valkeylock::{LockEvent, Locker};
    ///
    /// enum Msg {
    ///     Lock(LockEvent),
    /// }
    /// impl From<LockEvent> for Msg {
    ///     fn from(e: LockEvent) -> Msg {
    ///         Msg::Lock(e)
    ///     }
    /// }
    ///
    /// fn ask(locker: &Locker, me: ActorRef<Msg>) {
    ///     let wait = locker.lock_for("invoices", me); // abort `wait` to give up
    ///     # let _ = wait;
    /// }
    /// ```
    #[cfg(feature = "ractor")]
    pub fn lock_for<M>(&self, name: &str, actor: ActorRef<M>) -> JoinHandle<()>
    where
        M: Message + From<LockEvent>,
    {
        let locker = self.clone();
        let name = name.to_owned();
        // On the caller's runtime, where the actor lives: the engine's
        // runtime ends with `close`, and a task of it still waiting to send
        // `Failed` or `Lost { Closed }` could be dropped unsent.
        tokio::spawn(async move {
            let hand = |guard: LockGuard| {
                let name = name.clone();
                let lost = ended(actor.clone(), move |reason| LockEvent::Lost {
                    name,
                    reason,
                });
                (guard.watcher(), M::from(LockEvent::Acquired(guard)), lost)
            };
            let failed = |error| {
                let name = name.clone();
                M::from(LockEvent::Failed { name, error })
            };
            serve(&actor, || locker.lock(&name), hand, failed).await;
        })
    }

    /// Releases every lock this locker holds (keys deleted, not left to
    /// expire), fails its waiters with [`Error::Closed`], and stops its actors.
    /// Later calls on any clone fail with [`Error::Closed`], and every
    /// [`LockWatch`] ends with it. Idempotent: a second call returns at once.
    ///
    /// # Cancel safety
    /// Dropping the future does not stop the close: from its first poll the
    /// locker is closed and the close runs on the engine's runtime; only the
    /// wait for it to finish is given up.
    ///
    /// # Examples
    /// ```no_run
    /// # async fn demo(locker: valkeylock::Locker) -> Result<(), valkeylock::Error> {
    /// locker.close().await;
    /// assert!(locker.is_closed());
    /// assert!(matches!(locker.lock("x").await, Err(valkeylock::Error::Closed)));
    /// # Ok(()) }
    /// ```
    pub async fn close(&self) {
        self.inner.engine.close().await;
    }

    /// Looks at `name` without taking it: each key's node, owner (the first
    /// characters of its token), remaining TTL and whether it is this
    /// locker's, the fencing counter on each node, whether the lock is
    /// held, free or unknown by the lock's own majority rule, and who waits
    /// for it ([`LockInfo::waiting`]: the hand-over claims and fair queue
    /// places beside its keys, longest waiting first). Keys that cannot be
    /// read (node down, no answer) are unknown, never free.
    ///
    /// # Errors
    /// [`Error::InvalidName`], [`Error::Closed`].
    ///
    /// # Cancel safety
    /// This method is cancel safe. If `inspect()` is used as the event in a
    /// `tokio::select!` statement and some other branch completes first, then
    /// nothing has changed: it only reads.
    ///
    /// # Examples
    /// ```no_run
    /// # async fn demo(locker: valkeylock::Locker) -> Result<(), valkeylock::Error> {
    /// use valkeylock::LockState;
    /// let info = locker.inspect("my_lock").await?;
    /// match &info.state {
    ///     LockState::Held { owner, ours, expires_in, .. } => {
    ///         println!("held by {owner} (ours: {ours}), expires in {expires_in:?} unless extended")
    ///     }
    ///     LockState::Free => println!("free"),
    ///     LockState::Unknown { unreadable } => println!("unknown: {unreadable} keys unreadable"),
    ///     _ => {}
    /// }
    /// for key in &info.keys {
    ///     println!("{} on {}: {:?}", key.key, key.address, key.value);
    /// }
    /// for w in &info.waiting {
    ///     println!("{} waits ({:?}) for {:?}, on {} keys", w.who, w.how, w.waited, w.keys);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn inspect(&self, name: &str) -> Result<LockInfo, Error> {
        self.inner.engine.inspect(name).await
    }

    /// Follows `name`'s state (held by whom, free, unknown) without taking
    /// it. Cheap: it reads the keys again only when an invalidation, a
    /// reconnect or this locker's own grant or release says they may have
    /// changed (plus a slow backstop). Dropping the [`LockWatch`] stops it.
    ///
    /// # Errors
    /// [`Error::InvalidName`], [`Error::Closed`].
    ///
    /// # Examples
    /// ```no_run
    /// # async fn demo(locker: valkeylock::Locker) -> Result<(), valkeylock::Error> {
    /// let mut watch = locker.watch("my_lock")?;
    /// loop {
    ///     let info = watch.changed().await?; // the first call: the current state
    ///     println!("{}: {:?}", info.name, info.state);
    /// }
    /// # }
    /// ```
    pub fn watch(&self, name: &str) -> Result<LockWatch, Error> {
        self.inner.engine.watch(name)
    }

    /// The health of each node's connection (connected or not, since when,
    /// reconnects, last error) and whether enough nodes are up to take a
    /// lock, for readiness probes. Sends no command.
    ///
    /// # Examples
    /// ```no_run
    /// # fn demo(locker: &valkeylock::Locker) {
    /// let health = locker.health();
    /// for node in &health.nodes {
    ///     println!("{}: connected {} for {:?}, {} reconnects", node.address, node.connected, node.duration, node.reconnects);
    /// }
    /// let ready = health.ready;
    /// # }
    /// ```
    pub fn health(&self) -> Health {
        self.inner.engine.health()
    }

    /// Deletes every key of `name` whoever holds it (its holder loses the
    /// lock), keeping the fencing counter: what `valkeylock release --force`
    /// does, for operators. One `DEL` per node. A holder in another process
    /// hears of it by its invalidation; one in this locker is told as soon
    /// as the `DEL` is answered (the server sends no invalidation for a
    /// connection's own writes), and a waiter here tries again at once.
    ///
    /// # Errors
    /// [`Error::InvalidName`], [`Error::Closed`]. Nodes that fail are counted
    /// in [`ForcedRelease::failed`].
    ///
    /// # Cancel safety
    /// Dropping the future does not stop it: from its first poll the deletes
    /// are under way on the engine's runtime; only the report is lost.
    ///
    /// # Examples
    /// ```no_run
    /// # async fn demo(locker: valkeylock::Locker) -> Result<(), valkeylock::Error> {
    /// let done = locker.force_release("stuck-job").await?;
    /// println!("{} of {} keys deleted, {} failed", done.deleted, done.total, done.failed);
    /// # Ok(()) }
    /// ```
    pub async fn force_release(&self, name: &str) -> Result<ForcedRelease, Error> {
        self.inner.engine.force_release(name).await
    }

    /// True once [`close`](Locker::close) was called on any clone.
    ///
    /// # Examples
    /// ```no_run
    /// # async fn demo(locker: valkeylock::Locker) -> Result<(), valkeylock::Error> {
    /// if !locker.is_closed() {
    ///     let _guard = locker.lock("x").await?;
    /// }
    /// # Ok(()) }
    /// ```
    pub fn is_closed(&self) -> bool {
        self.inner.engine.is_closed()
    }

    /// Names with a live `LockActor` in this process (held, waited for, or
    /// about to be retired).
    ///
    /// # Examples
    /// ```no_run
    /// # async fn demo(locker: valkeylock::Locker) -> Result<(), valkeylock::Error> {
    /// let guard = locker.lock("a").await?;
    /// assert!(locker.active_locks() >= 1);
    /// # drop(guard);
    /// # Ok(()) }
    /// ```
    pub fn active_locks(&self) -> usize {
        self.inner.engine.active_locks()
    }

    /// Kill switches for fault-injection tests (`fault-injection` feature).
    #[cfg(feature = "fault-injection")]
    pub fn faults(&self) -> valkeylock_actors::Faults {
        self.inner.engine.faults()
    }
}
