//! Handles: the only engine types that cross the crate line. [`Engine`] is a
//! cloneable front for the Supervisor; [`Lease`] is one grant of a lock, with
//! its loss signal. Neither exposes an actor message.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use ractor::{Actor, ActorRef};
use tokio::runtime::Handle;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::clock;
use crate::context::{count_send, Shared};
use crate::core::{RequestKind, Time};
use crate::direct;
use crate::election::{self, Leader, Record};
use crate::error::{ConnectionErrorKind, Error, LostReason};
use crate::failure::startup_verdict;
use crate::inspect::{ForcedRelease, Health, LockInfo};
use crate::keys;
use crate::leader::{self, Announced, LeaderObserver};
use crate::metrics;
use crate::msg::{
    GrantParts, LockPort, NodeMsg, Released, Request, Sends, SupervisorMsg, TokenTag,
};
use crate::observer::{self, LockWatch};
use crate::options::LockerOptions;
use crate::request::LockRequest;
use crate::runtime::EngineRuntime;
use crate::rwlock;
use crate::semaphore::{self, SemaphoreInfo};
use crate::status::{Attach, GrantStatus, StatusRx};
use crate::supervisor::{Supervisor, SupervisorArgs};

/// How long a close waits for the actors to stop once the locks are released.
const STOP_WAIT: Duration = Duration::from_secs(2);

/// How an acquisition treats a lock that is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum AcquireKind {
    /// Wait in line until it is free.
    Wait,
    /// One attempt; fail with [`Error::NotLocked`] if it is held.
    Try,
    /// Take it over, whoever holds it.
    Force,
}

impl AcquireKind {
    /// The core's request kind.
    fn request(self) -> RequestKind {
        match self {
            AcquireKind::Wait => RequestKind::Wait,
            AcquireKind::Try => RequestKind::Try,
            AcquireKind::Force => RequestKind::Force,
        }
    }

    /// The core's request kind for what cannot be taken by force (`what`,
    /// for the error): a read-write lock (a forced key would skip the
    /// gate), a semaphore's permit, leadership.
    fn unforced(self, what: &str) -> Result<RequestKind, Error> {
        match self {
            AcquireKind::Force => Err(Error::InvalidOptions {
                field: "kind",
                reason: format!("{what} cannot be taken by force"),
            }),
            kind => Ok(kind.request()),
        }
    }
}

/// Runs `taking` within `request`'s wait limit, for a waiting `kind`: past
/// the limit it is dropped (which withdraws its requests) and the answer is
/// `Error::Timeout`. Every acquisition's wait limit goes through here.
async fn within<T>(
    name: &str,
    kind: RequestKind,
    request: &LockRequest,
    taking: impl std::future::Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    match (kind, request.wait_limit()) {
        (RequestKind::Wait, Some(limit)) => {
            tokio::time::timeout(limit, taking)
                .await
                .unwrap_or(Err(Error::Timeout {
                    name: name.to_owned(),
                    waited: limit,
                }))
        }
        _ => taking.await,
    }
}

/// A running locker engine: the Supervisor, its `NodeActor`s and `LockActor`s.
#[derive(Debug)]
pub struct Engine {
    supervisor: ActorRef<SupervisorMsg>,
    shared: Arc<Shared>,
    runtime: EngineRuntime,
    next_id: AtomicU64,
    closed: AtomicBool,
}

impl Engine {
    /// Validates `options`, starts the actors and waits for the first
    /// connection attempt to every node.
    ///
    /// # Errors
    /// [`Error::InvalidOptions`]; [`Error::Connection`] when a node refuses us
    /// for good (credentials, permissions, no RESP3) or fewer than a majority
    /// of keys live on nodes that answered.
    pub async fn start(options: &LockerOptions) -> Result<Engine, Error> {
        let settings = options.settings()?;
        metrics::describe();
        let runtime = if settings.dedicated_runtime {
            EngineRuntime::dedicated()?
        } else {
            EngineRuntime::caller()?
        };
        // Everything the engine spawns (the timers' task, the actors, their
        // connections) is spawned from here, so it lives on its runtime.
        let started = runtime
            .spawn(async move {
                let shared = Shared::new(settings);
                let args = SupervisorArgs {
                    shared: shared.clone(),
                };
                Actor::spawn(None, Supervisor, args)
                    .await
                    .map(|(supervisor, _)| (supervisor, shared))
                    .map_err(|e| e.to_string())
            })
            .await;
        let not_started = |e: String| Error::Connection {
            kind: ConnectionErrorKind::Other,
            node: None,
            message: format!("cannot start the supervisor: {e}"),
            source: None,
        };
        let (supervisor, shared) = match started {
            Ok(Ok(started)) => started,
            Ok(Err(e)) => return Err(not_started(e)),
            Err(e) => return Err(not_started(e.to_string())),
        };
        let engine = Engine {
            supervisor,
            shared,
            runtime,
            next_id: AtomicU64::new(1),
            closed: AtomicBool::new(false),
        };
        let s = &engine.shared.settings;
        let wait = s.connect_timeout + Duration::from_secs(2);
        let reports = engine
            .supervisor
            .call(
                |reply| SupervisorMsg::AwaitReady {
                    reply,
                    within: s.connect_timeout + Duration::from_millis(500),
                },
                Some(wait),
            )
            .await;
        let reports = match reports {
            Ok(ractor::rpc::CallResult::Success(r)) => r,
            _ => vec![None; s.nodes.len()],
        };
        if let Err(e) = startup_verdict(s, &reports) {
            engine.shutdown_now();
            return Err(e);
        }
        Ok(engine)
    }

    fn shutdown_now(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.shared.closed.cancel();
        drop(self.runtime.spawn(self.stopping("startup failed")));
    }

    /// Acquires `name` on the terms of `request`. Dropping the returned
    /// future withdraws the request (a grant already on its way is
    /// released).
    ///
    /// # Errors
    /// [`Error::InvalidName`], [`Error::InvalidOptions`] (the request),
    /// [`Error::NotLocked`] (Try, or a Force whose nodes failed),
    /// [`Error::Timeout`] (Wait with a wait limit), [`Error::Closed`].
    pub async fn acquire(
        &self,
        name: &str,
        kind: AcquireKind,
        request: &LockRequest,
    ) -> Result<Lease, Error> {
        let kind = kind.request();
        let timing = metrics::Acquisition::start(kind);
        let span =
            tracing::debug_span!("acquire", lock = name, ?kind, token = tracing::field::Empty);
        let result = self
            .acquisition(name, kind, request)
            .instrument(span.clone())
            .await;
        timing.finish(&result);
        result.map(|lease| lease.held(&span))
    }

    /// Acquires a permit of semaphore `name` of `permits`: one of its slot
    /// locks (see `semaphore`), on the terms of `request`. Returns the lease
    /// and the slot. Dropping the returned future withdraws every request
    /// it made (a grant already on its way is released).
    ///
    /// It tries each slot once, from a random one; if none is free and
    /// `kind` is `Wait`, it waits on all of them, takes the first grant and
    /// withdraws the rest.
    ///
    /// # Errors
    /// As [`Engine::acquire`]; [`Error::InvalidOptions`] for a count out of
    /// `1..=1024` or a `Force`; [`Error::ConfigMismatch`] when a slot is held
    /// under another count (or by a plain lock of the slot's name).
    pub async fn acquire_permit(
        &self,
        name: &str,
        permits: u32,
        kind: AcquireKind,
        request: &LockRequest,
    ) -> Result<(Lease, u32), Error> {
        let kind = kind.unforced("a permit")?;
        let timing = metrics::Acquisition::start(kind);
        let span = tracing::debug_span!(
            "acquire",
            lock = name,
            permits,
            ?kind,
            token = tracing::field::Empty
        );
        let result = self
            .permit_acquisition(name, permits, kind, request)
            .instrument(span.clone())
            .await;
        timing.finish(&result);
        result.map(|(lease, slot)| (lease.held(&span), slot))
    }

    /// Checks a semaphore's name and count, as `acquire_permit` does.
    ///
    /// # Errors
    /// [`Error::InvalidName`], [`Error::InvalidOptions`] (the count).
    pub fn check_semaphore(&self, name: &str, permits: u32) -> Result<(), Error> {
        let s = &self.shared.settings;
        semaphore::validate(&s.prefix, name, permits, s.total)
    }

    /// Validates the name, the count and the request, then takes a slot,
    /// within the wait limit.
    async fn permit_acquisition(
        &self,
        name: &str,
        permits: u32,
        kind: RequestKind,
        request: &LockRequest,
    ) -> Result<(Lease, u32), Error> {
        let s = &self.shared.settings;
        semaphore::validate(&s.prefix, name, permits, s.total)?;
        let mut terms = request.terms(s)?.unwrap_or(*self.shared.core.terms);
        terms.permits = Some(u16::try_from(permits).unwrap_or(u16::MAX));
        let taking = async {
            self.take_slot(name, permits, kind, terms)
                .await
                .map_err(|e| e.named(name))
        };
        within(name, kind, request, taking).await
    }

    /// Tries every slot once; then, for a waiter, waits on all of them.
    async fn take_slot(
        &self,
        name: &str,
        permits: u32,
        kind: RequestKind,
        terms: crate::core::Terms,
    ) -> Result<(Lease, u32), Error> {
        let slots: Vec<(u32, String)> = semaphore::try_order(semaphore::random_start(), permits)
            .map(|slot| (slot, semaphore::slot_name(name, slot)))
            .collect();
        self.take_any(name, &slots, kind, terms).await
    }

    /// Tries each of `slots` (a slot number and its lock's name) once, in
    /// order; then, for a waiter, waits on all of them: the first grant
    /// wins, and the other requests are dropped, which withdraws them and
    /// releases a grant already on its way. Any error ends the whole wait.
    async fn take_any(
        &self,
        name: &str,
        slots: &[(u32, String)],
        kind: RequestKind,
        terms: crate::core::Terms,
    ) -> Result<(Lease, u32), Error> {
        let s = &self.shared.settings;
        let mut held_by_others = false;
        for (slot, lock) in slots {
            match self.request(lock, RequestKind::Try, Some(terms)).await {
                Ok(lease) => return Ok((lease, *slot)),
                Err(Error::NotLocked {
                    held_by_others: by_others,
                    ..
                }) => held_by_others |= by_others,
                Err(e) => return Err(e),
            }
        }
        if kind == RequestKind::Try {
            return Err(Error::NotLocked {
                name: name.to_owned(),
                acquired: 0,
                needed: s.majority,
                total: s.total,
                held_by_others,
            });
        }
        let mut waits: FuturesUnordered<_> = slots
            .iter()
            .map(|(slot, lock)| async move {
                self.request(lock, RequestKind::Wait, Some(terms))
                    .await
                    .map(|lease| (lease, *slot))
            })
            .collect();
        waits.next().await.unwrap_or(Err(Error::Closed))
    }

    /// Validates the name and the request, then asks, within the wait limit.
    async fn acquisition(
        &self,
        name: &str,
        kind: RequestKind,
        request: &LockRequest,
    ) -> Result<Lease, Error> {
        let s = &self.shared.settings;
        keys::validate_name(&s.prefix, name, s.total)?;
        if rwlock::is_reserved(name) {
            return Err(Error::InvalidName {
                name: keys::truncate_for_error(name),
                reason: "the character U+001F is reserved for read-write locks",
            });
        }
        if s.fair && s.is_cluster() {
            keys::validate_fair_name(&s.prefix, name)?;
        }
        let terms = request.terms(s)?;
        within(name, kind, request, self.request(name, kind, terms)).await
    }

    /// Sends one request to the name's `LockActor` and waits for its answer.
    async fn request(
        &self,
        name: &str,
        kind: RequestKind,
        terms: Option<crate::core::Terms>,
    ) -> Result<Lease, Error> {
        let mut retries = 0u32;
        loop {
            if self.closed.load(Ordering::SeqCst) {
                return Err(Error::Closed);
            }
            let (tx, rx) = oneshot::channel();
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            let request = Request {
                id,
                kind,
                terms,
                reply: tx,
                caller: crate::direct::caller_runtime(&self.shared),
            };
            // Fast path: straight into a live LockActor's state, fed here on
            // the caller's thread (see `lock`'s module doc). Otherwise (none
            // yet, or it just stopped) through the Supervisor, which starts
            // one.
            let (request, sends) = match self.shared.lock_route(name) {
                // Counted before it is sent; a retiring actor's mark sends it
                // through the Supervisor instead (see `LockState::retire`).
                Some(route) if count_send(route.port.sent()) => match route.port.request(request) {
                    Ok(sends) => (None, sends),
                    Err(request) => (Some(request), Sends::default()),
                },
                _ => (Some(request), Sends::default()),
            };
            if let Some(request) = request {
                self.supervisor
                    .cast(SupervisorMsg::Request {
                        name: Arc::from(name),
                        request,
                    })
                    .map_err(|_| Error::Closed)?;
            }
            let mut pending = Pending {
                supervisor: &self.supervisor,
                name,
                id,
                rx: Some(rx),
            };
            let result = pending.answer(sends).await;
            match result {
                Ok(result) => {
                    let runtime = self.runtime.handle();
                    return result.map(|parts| Lease::from_parts(parts, runtime));
                }
                // The LockActor went away without answering (retired or
                // killed): ask again; a fresh one takes over. Pause only if
                // it keeps happening.
                Err(_) => {
                    retries += 1;
                    if retries > 1 {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
            }
        }
    }

    /// Releases every held lock (keys deleted), fails waiters with
    /// [`Error::Closed`], stops the actors and ends the engine's thread.
    /// Idempotent.
    pub async fn close(&self) {
        if self.closed.swap(true, Ordering::SeqCst) {
            return;
        }
        self.shared.closed.cancel();
        let _ = self.runtime.spawn(self.closing()).await;
    }

    /// Starts closing without waiting (for `Drop` of the last handle).
    pub fn close_in_background(&self) {
        if self.closed.swap(true, Ordering::SeqCst) {
            return;
        }
        self.shared.closed.cancel();
        drop(self.runtime.spawn(self.closing()));
    }

    /// The close, as a task of the engine's runtime: ask the Supervisor to
    /// release and stop everything, wait for it (bounded), then end the
    /// engine's thread.
    fn closing(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let supervisor = self.supervisor.clone();
        let bound = self.shared.settings.timeout * 4 + Duration::from_secs(2);
        let stopping = self.stopping("closed");
        async move {
            let _ = supervisor
                .call(|reply| SupervisorMsg::Close { reply }, Some(bound))
                .await;
            stopping.await;
        }
    }

    /// Stops the actors, waits for them (bounded), then ends the engine's
    /// thread (a dedicated runtime only).
    fn stopping(&self, reason: &str) -> impl std::future::Future<Output = ()> + Send + 'static {
        let (supervisor, stop) = (self.supervisor.clone(), self.runtime.take_stop());
        let reason = reason.to_owned();
        async move {
            let _ = supervisor
                .stop_and_wait(Some(reason), Some(STOP_WAIT))
                .await;
            if let Some(stop) = stop {
                let _ = stop.send(());
            }
        }
    }

    /// True once `close` was called.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Reads every key of `name` and the fencing counter, without taking
    /// the lock, and says whether it is held (see [`LockInfo`]). Keys on
    /// nodes that are down or do not answer (within about twice
    /// `try_next_after`) are reported unknown, never free.
    ///
    /// # Errors
    /// [`Error::InvalidName`], [`Error::Closed`].
    pub async fn inspect(&self, name: &str) -> Result<LockInfo, Error> {
        self.on_engine(name, |shared, name| async move {
            observer::inspect(&shared, &name, true).await
        })
        .await
    }

    /// Campaigns in election `name` with `value` (see `election`): waits
    /// for the election's lock (`Try`: one attempt), announces the term
    /// (the lock's fencing token) in every node's log, and returns the lease
    /// once a majority of nodes has the record and the lock is still held.
    /// A lock lost while announcing is campaigned for again. Dropping the
    /// future withdraws the campaign (a lock already won is released).
    ///
    /// # Errors
    /// [`Error::InvalidName`], [`Error::InvalidOptions`] (the value, the
    /// request, a `Force`), [`Error::NotLocked`] (`Try`), [`Error::Timeout`]
    /// (a wait limit, over the whole campaign), [`Error::Unavailable`] (a
    /// majority of nodes refuses the log's commands), [`Error::Closed`].
    pub async fn campaign(
        &self,
        name: &str,
        value: &str,
        kind: AcquireKind,
        request: &LockRequest,
    ) -> Result<Lease, Error> {
        let s = &self.shared.settings;
        election::validate(&s.prefix, name, Some(value), s.total)?;
        let waits = kind.unforced("leadership")?;
        within(
            name,
            waits,
            request,
            self.campaigning(name, value, kind, request),
        )
        .await
        .map_err(|e| e.named(name))
    }

    async fn campaigning(
        &self,
        name: &str,
        value: &str,
        kind: AcquireKind,
        request: &LockRequest,
    ) -> Result<Lease, Error> {
        let lock = election::lock_name(name);
        loop {
            let lease = self.acquire(&lock, kind, request).await?;
            let record = Record {
                term: lease.fence,
                tag: lease.token.to_string(),
                value: value.to_owned(),
            };
            loop {
                let (shared, election) = (self.shared.clone(), name.to_owned());
                let record = record.clone();
                let announced = self
                    .runtime
                    .spawn(async move { leader::announce(&shared, &election, &record).await })
                    .await
                    .map_err(|_| Error::Closed)?;
                match announced {
                    Announced::Majority if lease.is_held() => {
                        tracing::info!(election = name, term = lease.fence, token = %lease.token, "leading");
                        return Ok(lease);
                    }
                    Announced::Refused(reason) => {
                        return Err(Error::Unavailable {
                            name: name.to_owned(),
                            reason: format!("the servers refuse the election's log: {reason}"),
                        })
                    }
                    Announced::Short(reason) if lease.is_held() => {
                        tracing::debug!(
                            election = name,
                            term = lease.fence,
                            reason,
                            "announcement short of a majority; again"
                        );
                        tokio::time::sleep(
                            self.shared.settings.timeout.min(Duration::from_millis(100)),
                        )
                        .await;
                    }
                    Announced::Majority | Announced::Short(_) => break,
                }
            }
            // The lock was lost while announcing: its term never led.
            tracing::debug!(election = name, term = lease.fence, "lost while announcing");
            if kind == AcquireKind::Try {
                let s = &self.shared.settings;
                return Err(Error::NotLocked {
                    name: name.to_owned(),
                    acquired: 0,
                    needed: s.majority,
                    total: s.total,
                    held_by_others: false,
                });
            }
        }
    }

    /// Checks a read-write lock's name, as `acquire_read` and
    /// `acquire_write` do.
    ///
    /// # Errors
    /// [`Error::InvalidName`], [`Error::InvalidOptions`] (a key prefix with
    /// braces).
    pub fn check_rwlock(&self, name: &str) -> Result<(), Error> {
        let s = &self.shared.settings;
        rwlock::validate(&s.prefix, name, s.total)
    }

    /// Takes the write side of read-write lock `name` (see `rwlock`): its
    /// writer's lock, through the gate that waits for the readers to leave
    /// and stops new ones meanwhile. The lease has a fencing token.
    ///
    /// # Errors
    /// As [`Engine::acquire`] (a `Force` is refused with
    /// [`Error::InvalidOptions`]), with the read-write lock's name.
    pub async fn acquire_write(
        &self,
        name: &str,
        kind: AcquireKind,
        request: &LockRequest,
    ) -> Result<Lease, Error> {
        let s = &self.shared.settings;
        rwlock::validate(&s.prefix, name, s.total)?;
        let kind = kind.unforced("a read-write lock")?;
        let terms = request.terms(s)?;
        let timing = metrics::Acquisition::start(kind);
        let span = tracing::debug_span!(
            "acquire",
            lock = name,
            side = "write",
            ?kind,
            token = tracing::field::Empty
        );
        let writer = rwlock::writer(name);
        let result = within(name, kind, request, self.request(&writer, kind, terms))
            .instrument(span.clone())
            .await
            .map_err(|e| e.named(name));
        timing.finish(&result);
        result.map(|lease| lease.held(&span))
    }

    /// Takes the read side of read-write lock `name`: one of its reader
    /// slots, through the gate that waits while a writer holds or waits.
    /// Tries a few slots from a random one, then waits on them; returns
    /// the lease and the slot.
    ///
    /// # Errors
    /// As [`Engine::acquire_write`].
    pub async fn acquire_read(
        &self,
        name: &str,
        kind: AcquireKind,
        request: &LockRequest,
    ) -> Result<(Lease, u32), Error> {
        let s = &self.shared.settings;
        rwlock::validate(&s.prefix, name, s.total)?;
        let kind = kind.unforced("a read-write lock")?;
        let mut terms = request.terms(s)?.unwrap_or(*self.shared.core.terms);
        terms.permits = Some(u16::try_from(rwlock::MAX_READERS).unwrap_or(u16::MAX));
        let timing = metrics::Acquisition::start(kind);
        let span = tracing::debug_span!(
            "acquire",
            lock = name,
            side = "read",
            ?kind,
            token = tracing::field::Empty
        );
        let result = within(name, kind, request, self.take_reader(name, kind, terms))
            .instrument(span.clone())
            .await
            .map_err(|e| e.named(name));
        timing.finish(&result);
        result.map(|(lease, slot)| (lease.held(&span), slot))
    }

    /// Tries `READER_TRIES` reader slots from a random one; a waiter then
    /// waits on those, and takes the first grant.
    async fn take_reader(
        &self,
        name: &str,
        kind: RequestKind,
        terms: crate::core::Terms,
    ) -> Result<(Lease, u32), Error> {
        let slots: Vec<(u32, String)> =
            semaphore::try_order(semaphore::random_start(), rwlock::MAX_READERS)
                .take(rwlock::READER_TRIES)
                .map(|slot| (slot, rwlock::reader(name, slot)))
                .collect();
        self.take_any(name, &slots, kind, terms).await
    }

    /// Checks an election's name, as `campaign` does.
    ///
    /// # Errors
    /// [`Error::InvalidName`].
    pub fn check_election(&self, name: &str) -> Result<(), Error> {
        let s = &self.shared.settings;
        election::validate(&s.prefix, name, None, s.total)
    }

    /// Who leads election `name` now, without campaigning: the holder of
    /// its lock, with the value of its term's record; `None` when nobody
    /// holds the lock or its holder has not announced itself yet.
    ///
    /// # Errors
    /// [`Error::InvalidName`], [`Error::Unavailable`] (the lock's state or
    /// the log could not be read on a majority), [`Error::Closed`].
    pub async fn leader(&self, name: &str) -> Result<Option<Leader>, Error> {
        self.check_election(name)?;
        self.on_engine(name, |shared, name| async move {
            leader::leader(&shared, &name).await
        })
        .await?
    }

    /// Follows the terms of election `name`; see [`LeaderObserver`].
    ///
    /// # Errors
    /// [`Error::InvalidName`], [`Error::Closed`].
    pub fn observe(&self, name: &str) -> Result<LeaderObserver, Error> {
        self.check_election(name)?;
        if self.is_closed() {
            return Err(Error::Closed);
        }
        let (observer, task) = leader::observe(self.shared.clone(), name);
        drop(self.runtime.spawn(task));
        Ok(observer)
    }

    /// Runs `work` for a valid `name` on the engine's runtime, where the node
    /// actors and their connections live, and waits for it.
    async fn on_engine<T, F, Fut>(&self, name: &str, work: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: FnOnce(Arc<Shared>, String) -> Fut,
        Fut: std::future::Future<Output = T> + Send + 'static,
    {
        let s = &self.shared.settings;
        keys::validate_name(&s.prefix, name, s.total)?;
        if self.is_closed() {
            return Err(Error::Closed);
        }
        self.runtime
            .spawn(work(self.shared.clone(), name.to_owned()))
            .await
            .map_err(|_| Error::Closed)
    }

    /// Looks at every permit slot of semaphore `name` of `permits` at once,
    /// as [`Engine::inspect`] looks at a lock (see [`SemaphoreInfo`]).
    ///
    /// # Errors
    /// [`Error::InvalidName`], [`Error::InvalidOptions`] (the count),
    /// [`Error::Closed`].
    pub async fn inspect_semaphore(
        &self,
        name: &str,
        permits: u32,
    ) -> Result<SemaphoreInfo, Error> {
        self.check_semaphore(name, permits)?;
        self.on_engine(name, move |shared, name| async move {
            let looks = (0..permits).map(|slot| {
                let shared = shared.clone();
                let slot_name = semaphore::slot_name(&name, slot);
                async move { observer::inspect(&shared, &slot_name, false).await }
            });
            let slots = futures_util::future::join_all(looks).await;
            SemaphoreInfo::new(&name, permits, slots)
        })
        .await
    }

    /// Follows `name`'s state (held by whom, free, unknown) as it changes;
    /// see [`LockWatch`].
    ///
    /// # Errors
    /// [`Error::InvalidName`], [`Error::Closed`].
    pub fn watch(&self, name: &str) -> Result<LockWatch, Error> {
        let s = &self.shared.settings;
        keys::validate_name(&s.prefix, name, s.total)?;
        if self.is_closed() {
            return Err(Error::Closed);
        }
        let (watch, task) = observer::watch(self.shared.clone(), name);
        drop(self.runtime.spawn(task));
        Ok(watch)
    }

    /// Each node's connection (connected or not, since when, reconnects,
    /// last error) and whether enough of them are up to take a lock. Read
    /// from a table the node actors keep: no command is sent.
    pub fn health(&self) -> Health {
        let (ready, nodes) = self.shared.health();
        Health { ready, nodes }
    }

    /// Deletes every key of `name`, whoever holds it: its holder loses the
    /// lock. For operators (`valkeylock release --force`). The fencing
    /// counter is kept. This locker's own locks of the name are told as if
    /// an invalidation had come (NOLOOP sends none for our own `DEL`).
    ///
    /// # Errors
    /// [`Error::InvalidName`], [`Error::Closed`].
    pub async fn force_release(&self, name: &str) -> Result<ForcedRelease, Error> {
        self.on_engine(name, |shared, name| async move {
            force_release(&shared, &name).await
        })
        .await
    }

    /// Number of `LockActor`s alive (names in use in this process).
    pub fn active_locks(&self) -> usize {
        self.shared.lock_count()
    }

    /// Fault injection for tests: kill actors as a crash would.
    #[cfg(feature = "fault-injection")]
    pub fn faults(&self) -> Faults {
        Faults {
            shared: self.shared.clone(),
            supervisor: self.supervisor.clone(),
            runtime: self.runtime.handle().clone(),
        }
    }
}

/// One `DEL` per node for the keys it holds (see `Engine::force_release`).
async fn force_release(shared: &Shared, name: &str) -> ForcedRelease {
    let s = &shared.settings;
    let bound = s.timeout * 2 + Duration::from_millis(500);
    let asks = (0..s.nodes.len()).map(|node| {
        let keys: Vec<Arc<str>> = (0..s.total)
            .filter(|&i| s.node_of_key(i) == node)
            .map(|i| Arc::from(keys::key_name(&s.prefix, i, name)))
            .collect();
        let count = keys.len();
        let (tx, rx) = oneshot::channel();
        let sent = count > 0
            && shared
                .node(node)
                .is_some_and(|a| a.cast(NodeMsg::Delete { keys, reply: tx }).is_ok());
        async move {
            let result = if count == 0 {
                Ok(0)
            } else if !sent {
                Err("node not running".to_owned())
            } else {
                match tokio::time::timeout(bound, rx).await {
                    Ok(Ok(r)) => r,
                    Ok(Err(_)) => Err("the node's actor stopped".to_owned()),
                    Err(_) => Err(format!("no answer within {bound:?}")),
                }
            };
            (node, count, result)
        }
    });
    let mut out = ForcedRelease {
        deleted: 0,
        total: s.total,
        failed: 0,
        errors: Vec::new(),
    };
    for (node, count, result) in futures_util::future::join_all(asks).await {
        match result {
            Ok(n) => out.deleted += n,
            Err(e) => {
                out.failed += count;
                out.errors.push(format!("{}: {e}", s.nodes[node].display()));
            }
        }
    }
    out
}

/// A request waiting for its answer. Dropped before the answer is taken (the
/// caller's future dropped, or its wait limit run out), it withdraws the
/// request, and releases a grant that was already sent: one that arrived
/// just before the drop would otherwise be held, and extended, by nobody.
struct Pending<'a> {
    supervisor: &'a ActorRef<SupervisorMsg>,
    name: &'a str,
    id: u64,
    rx: Option<oneshot::Receiver<Result<GrantParts, Error>>>,
}

impl Pending<'_> {
    /// The answer (`Err` if the actor went away without one), driving
    /// meanwhile the commands the request sent on direct connections.
    async fn answer(
        &mut self,
        sends: Sends,
    ) -> Result<Result<GrantParts, Error>, oneshot::error::RecvError> {
        let Some(rx) = self.rx.as_mut() else {
            direct::send_now(sends);
            return Ok(Err(Error::Closed));
        };
        let result = direct::drive(sends, rx).await;
        self.rx = None;
        result
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        let Some(mut rx) = self.rx.take() else {
            return;
        };
        let _ = self.supervisor.cast(SupervisorMsg::Cancel {
            name: Arc::from(self.name),
            id: self.id,
        });
        // The actor answers at most once. Closing the channel first makes
        // it one or the other: the grant is here now, or its send fails and
        // the actor releases it itself. (Looking before closing left a
        // window: a grant sent between the look and the drop was lost, and
        // its lock held by nobody until the locker closed.)
        rx.close();
        if let Ok(Ok(parts)) = rx.try_recv() {
            if let Some(sends) = parts.lock.release(parts.holder, None) {
                direct::send_now(sends);
            }
        }
    }
}

/// One grant of a lock. Dropping it releases the lock in the background.
#[derive(Debug)]
#[must_use = "the lock is released as soon as the lease is dropped"]
pub struct Lease {
    name: Arc<str>,
    token: TokenTag,
    /// The `hold` span, open from the grant until the lease is gone: boxed,
    /// and only when a subscriber records it. Kept inline, a disabled span
    /// was 40 of the lease's 136 bytes, in every guard (and every future
    /// that holds one across an `.await`), where logs at `debug` are rarely
    /// on.
    span: Option<Box<tracing::Span>>,
    grant: u64,
    lock: Arc<dyn LockPort>,
    status: StatusRx,
    fence: u64,
    /// When its maximum hold ends it, if it has one.
    hold_until: Option<Time>,
    armed: bool,
    /// The engine's runtime, where the own-clock token's timer runs.
    runtime: Handle,
}

impl Lease {
    /// Opens the lease's `hold` span once `acquire` (the span `acquiring`)
    /// granted it: opened here, not inside `acquire`, so that its parent is
    /// the caller's span.
    fn held(mut self, acquiring: &tracing::Span) -> Lease {
        acquiring.record("token", tracing::field::display(self.token));
        let span = tracing::debug_span!("hold", lock = &*self.name, token = %self.token, fence = self.fence);
        self.span = (!span.is_disabled()).then(|| Box::new(span));
        self
    }

    fn from_parts(p: GrantParts, runtime: &Handle) -> Lease {
        Lease {
            runtime: runtime.clone(),
            span: None,
            name: p.name,
            token: p.token,
            grant: p.holder,
            lock: p.lock,
            status: p.status,
            fence: p.fence,
            hold_until: p.hold_until,
            armed: true,
        }
    }

    /// The grant's fencing token: strictly greater than every token granted
    /// before it for this name by lockers with `fencing` on. 0 when this
    /// locker was built without `fencing`.
    pub fn fencing_token(&self) -> u64 {
        self.fence
    }

    /// The lock name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// True while held and within its validity, by this process's clock:
    /// false from `valid_until` on even if the engine has not said so yet.
    pub fn is_held(&self) -> bool {
        held(&self.status)
    }

    /// The instant the lock stops being safe unless extended; `None` once
    /// ended. It is a small margin (1 % of the validity, 1–20 ms) earlier
    /// than the earliest moment another client could take the majority, and
    /// the engine tells the holder a loss by this instant.
    pub fn valid_until(&self) -> Option<Instant> {
        match self.status.get() {
            GrantStatus::Held { valid_until } => Some(clock::to_instant(valid_until)),
            GrantStatus::Ended(_) => None,
        }
    }

    /// A cloneable observer of this grant.
    pub fn watcher(&self) -> LeaseWatcher {
        LeaseWatcher {
            name: self.name.clone(),
            status: self.status.clone(),
            hold_until: self.hold_until,
            runtime: self.runtime.clone(),
        }
    }

    /// Waits until the grant ends and says why. Cancel-safe; may be awaited
    /// any number of times. Resolves by `valid_until` on this process's own
    /// clock even if the engine is late to say so (then with
    /// [`LostReason::Expired`]).
    pub async fn lost(&self) -> LostReason {
        wait_end(&self.status, self.hold_until).await
    }

    /// Why it ended, if it has.
    pub fn lost_reason(&self) -> Option<LostReason> {
        match self.status.get() {
            GrantStatus::Ended(r) => Some(r),
            GrantStatus::Held { .. } => None,
        }
    }

    /// Cancelled when the grant ends, for any reason, and at `valid_until`
    /// by this process's clock if the engine is late.
    pub fn cancellation_token(&self) -> CancellationToken {
        own_clock_token(&self.status, self.hold_until, &self.runtime)
    }

    /// Releases the lock and waits until its keys are deleted (bounded by
    /// `try_next_after`). Releasing a lock that was already lost is not an
    /// error.
    ///
    /// # Errors
    /// [`Error::ReleaseUnconfirmed`] when a node did not answer a delete
    /// (those keys expire within `key_validity`); [`Error::Closed`] when the
    /// engine stopped before it could release (the keys expire likewise),
    /// but not after `close`, which released them.
    pub async fn release(mut self) -> Result<(), Error> {
        self.armed = false;
        let parent = self.span.as_deref().and_then(tracing::Span::id);
        let span = tracing::debug_span!(parent: parent, "release", lock = &*self.name, token = %self.token);
        let result = self.releasing().instrument(span).await;
        metrics::release(&result);
        result
    }

    async fn releasing(&self) -> Result<(), Error> {
        let (tx, mut rx) = oneshot::channel();
        let answer = match self.lock.release(self.grant, Some(tx)) {
            Some(sends) => direct::drive(sends, &mut rx).await.ok(),
            None => None,
        };
        match answer {
            Some(Released { unconfirmed: 0, .. }) => Ok(()),
            Some(Released {
                deleted,
                unconfirmed,
            }) => Err(Error::ReleaseUnconfirmed {
                name: self.name.to_string(),
                deleted,
                unconfirmed,
            }),
            None if self.lost_reason() == Some(LostReason::Closed) => Ok(()),
            None => Err(Error::Closed),
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.armed {
            if let Some(sends) = self.lock.release(self.grant, None) {
                direct::send_now(sends);
            }
        }
    }
}

/// Observes a grant without owning it: cloneable, never releases. Made by
/// `LockGuard::watcher`, for another task or actor that must stop when the
/// lock ends while the guard stays with its owner. Dropping a watcher does
/// nothing to the lock.
///
/// # Examples
/// ```no_run
/// # use valkeylock_actors as valkeylock;
/// use valkeylock::LeaseWatcher;
///
/// // `watcher` is `guard.watcher()`, handed to a background task.
/// async fn background(watcher: LeaseWatcher) {
///     tokio::select! {
///         reason = watcher.lost() => eprintln!("{}: lost ({reason}), stopping", watcher.name()),
///         _ = work() => {}
///     }
/// }
/// # async fn work() {}
/// ```
#[derive(Debug, Clone)]
pub struct LeaseWatcher {
    name: Arc<str>,
    status: StatusRx,
    hold_until: Option<Time>,
    runtime: Handle,
}

impl LeaseWatcher {
    /// The lock name.
    ///
    /// # Examples
    /// ```no_run
    /// # use valkeylock_actors as valkeylock;
    /// # fn demo(watcher: valkeylock::LeaseWatcher) {
    /// println!("watching {}", watcher.name());
    /// # }
    /// ```
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Waits until the grant ends and says why, as `LockGuard::lost` does:
    /// callable any number of times, from any number of clones, also after
    /// the guard was released or dropped ([`LostReason::Released`]). It
    /// resolves by the grant's validity on this process's own clock even if
    /// the engine is late to say so (then with [`LostReason::Expired`], or
    /// [`LostReason::MaxHold`] at a maximum hold).
    ///
    /// # Cancel safety
    /// This method is cancel safe. If `lost()` is used as the event in a
    /// `tokio::select!` statement and some other branch completes first, then
    /// nothing is lost: the lock is unaffected, and a later call returns the
    /// reason as before.
    ///
    /// # Examples
    /// ```no_run
    /// # use valkeylock_actors as valkeylock;
    /// # async fn demo(watcher: valkeylock::LeaseWatcher) {
    /// let reason = watcher.lost().await;
    /// if reason.is_loss() {
    ///     eprintln!("{} lost: {reason}", watcher.name());
    /// }
    /// # }
    /// ```
    pub async fn lost(&self) -> LostReason {
        wait_end(&self.status, self.hold_until).await
    }

    /// True while held and within its validity, by this process's clock:
    /// false from the grant's `valid_until` on, even if the engine has not
    /// said so yet.
    ///
    /// # Examples
    /// ```no_run
    /// # use valkeylock_actors as valkeylock;
    /// # fn demo(watcher: valkeylock::LeaseWatcher) {
    /// if watcher.is_held() {
    ///     // still safe to act on the protected resource
    /// }
    /// # }
    /// ```
    pub fn is_held(&self) -> bool {
        held(&self.status)
    }

    /// Cancelled when the grant ends (or its validity runs out by this
    /// process's clock), for code that takes a
    /// `tokio_util::sync::CancellationToken`. Each call returns a new child
    /// token; cancelling it does not release the lock.
    ///
    /// # Examples
    /// ```no_run
    /// # use valkeylock_actors as valkeylock;
    /// # async fn demo(watcher: valkeylock::LeaseWatcher) {
    /// let token = watcher.cancellation_token();
    /// tokio::select! {
    ///     _ = token.cancelled() => eprintln!("lock ended"),
    ///     _ = work() => {}
    /// }
    /// # }
    /// # async fn work() {}
    /// ```
    pub fn cancellation_token(&self) -> CancellationToken {
        own_clock_token(&self.status, self.hold_until, &self.runtime)
    }

    /// Hands the grant over and then its end, in that order, for code that
    /// forwards both (as `Locker::lock_for` does to an actor): while the
    /// grant is held, runs `first` (the hand-over); unless that returns
    /// false, tells `then` once how the grant ended, and returns that
    /// reason. `None` when nothing was handed over: `first` returned false,
    /// or the grant had ended before (then neither closure runs: ask for
    /// the lock again).
    ///
    /// Why not `first(); then(self.lost().await)`: a task woken by the end
    /// may run after the engine has granted the lock again, and the next
    /// grant's forwarder may hand its grant over first. Here the engine
    /// tells `then` itself as it ends the grant, before it answers any
    /// other request of the lock; and no end can fall between `first` and
    /// the watch. If the engine is late, `then` is told by this process's
    /// own clock at the grant's validity, as [`lost`](Self::lost) is, and
    /// the engine cannot answer another request of the lock meanwhile.
    ///
    /// Both closures may run while the engine holds a lock's state: keep
    /// them short and non-blocking (a channel send, an actor's `cast`), and
    /// drop nothing in them that releases a lock (a guard). A panic in
    /// `then` is caught and logged. Dropping the future withdraws `then`
    /// untold.
    ///
    /// # Examples
    /// ```no_run
    /// # use valkeylock_actors as valkeylock;
    /// # async fn demo(watcher: valkeylock::LeaseWatcher, tx: tokio::sync::mpsc::UnboundedSender<String>) {
    /// let ends = tx.clone();
    /// let handed = || tx.send("acquired".into()).is_ok();
    /// let told = move |reason| drop(ends.send(format!("ended: {reason}")));
    /// if watcher.announce(handed, told).await.is_none() {
    ///     // not handed over: ask for the lock again, or give up
    /// }
    /// # }
    /// ```
    pub async fn announce(
        &self,
        first: impl FnOnce() -> bool,
        then: impl FnOnce(LostReason) + Send + 'static,
    ) -> Option<LostReason> {
        /// Withdraws the hook if the wait is dropped.
        struct Withdraw<'a>(&'a StatusRx);
        impl Drop for Withdraw<'_> {
            fn drop(&mut self) {
                self.0.detach();
            }
        }
        if self.status.attach(first, Box::new(then)) != Attach::Attached {
            return None;
        }
        let withdraw = Withdraw(&self.status);
        let reason = wait_end(&self.status, self.hold_until).await;
        // Still there only if this clock saw the end before the engine did.
        self.status.tell_hook(reason);
        drop(withdraw);
        Some(reason)
    }
}

fn held(status: &StatusRx) -> bool {
    matches!(status.get(), GrantStatus::Held { valid_until } if clock::now() < valid_until)
}

/// Waits for the end of a grant: the engine's word, or its validity (or
/// maximum hold, `hold_until`) running out by the holder's own clock,
/// whichever comes first. The holder must never learn late because the
/// engine's actor was slow to run.
async fn wait_end(status: &StatusRx, hold_until: Option<Time>) -> LostReason {
    loop {
        let step = status
            .step(|shown| match shown {
                GrantStatus::Ended(r) => Ok(r),
                GrantStatus::Held { valid_until } => {
                    let now = clock::now();
                    if now < valid_until {
                        return Err(valid_until.since(now).min(clock::MAX_SLEEP));
                    }
                    Ok(if hold_until.is_some_and(|h| h <= valid_until) {
                        LostReason::MaxHold
                    } else {
                        LostReason::Expired
                    })
                }
            })
            .await;
        if let Some(reason) = step {
            return reason;
        }
    }
}

/// A child of the grant's token that is also cancelled at `valid_until` by
/// this process's clock, by a small task on the engine's runtime (so it fires
/// on time even while the caller's runtime is busy).
fn own_clock_token(
    status: &StatusRx,
    hold_until: Option<Time>,
    runtime: &Handle,
) -> CancellationToken {
    let child = status.token().child_token();
    // Already over (ended, or past its validity by this clock): cancelled
    // from the start, not once a task has run, so a token taken after
    // `lost()` returned is never seen uncancelled.
    if !held(status) {
        child.cancel();
        return child;
    }
    let (c, rx) = (child.clone(), status.clone());
    runtime.spawn(async move {
        tokio::select! {
            _ = wait_end(&rx, hold_until) => c.cancel(),
            _ = c.cancelled() => {}
        }
    });
    child
}

/// Kills actors the way a crash would. Only with the `fault-injection` feature.
#[cfg(feature = "fault-injection")]
#[derive(Debug, Clone)]
pub struct Faults {
    shared: Arc<Shared>,
    supervisor: ActorRef<SupervisorMsg>,
    runtime: Handle,
}

#[cfg(feature = "fault-injection")]
impl Faults {
    /// Kills the `NodeActor` of node `index`; false if none is running.
    pub fn kill_node(&self, index: usize) -> bool {
        match self.shared.node(index) {
            Some(a) => {
                a.kill();
                true
            }
            None => false,
        }
    }

    /// True if node `index` has a running `NodeActor`.
    pub fn node_running(&self, index: usize) -> bool {
        self.shared.node(index).is_some()
    }

    /// The actor id of node `index`'s actor, to observe restarts.
    pub fn node_actor_id(&self, index: usize) -> Option<String> {
        self.shared.node(index).map(|a| a.get_id().to_string())
    }

    /// Kills the `LockActor` of `name`; false if none is running.
    pub fn kill_lock(&self, name: &str) -> bool {
        match self.shared.lock(name) {
            Some(a) => {
                a.kill();
                true
            }
            None => false,
        }
    }

    /// Makes the `LockActor` of `name` fail, as a handler returning an error
    /// would (ractor then hands its supervisor no state); false if none is
    /// running.
    pub fn fail_lock(&self, name: &str) -> bool {
        self.shared
            .lock(name)
            .is_some_and(|a| a.cast(crate::msg::LockMsg::Fail).is_ok())
    }

    /// Kills the Supervisor (and with it every actor of the locker).
    pub fn kill_supervisor(&self) {
        self.supervisor.kill();
    }

    /// Blocks the thread the engine runs on for `d`, as a long stop of that
    /// thread alone would: no actor, timer or connection of the locker runs
    /// meanwhile. (With `dedicated_runtime` off it blocks one worker of the
    /// caller's runtime instead.) Resolves once the stall has begun; the
    /// flag it returns is true until it ends.
    pub async fn stall_engine(&self, d: Duration) -> Arc<AtomicBool> {
        let stalled = Arc::new(AtomicBool::new(false));
        let (tx, rx) = oneshot::channel();
        let flag = stalled.clone();
        self.runtime.spawn(async move {
            flag.store(true, Ordering::SeqCst);
            let _ = tx.send(());
            std::thread::sleep(d);
            flag.store(false, Ordering::SeqCst);
        });
        let _ = rx.await;
        stalled
    }
}
