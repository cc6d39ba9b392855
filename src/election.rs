//! `Election` and `Leadership`: leader election in the shape of etcd's
//! election API, on a lock.

use std::ops::Deref;
use std::sync::Arc;

#[cfg(feature = "ractor")]
use ractor::{ActorRef, Message};
#[cfg(feature = "ractor")]
use tokio::task::JoinHandle;

#[cfg(feature = "ractor")]
use crate::event::{ended, serve, ElectionEvent};
use crate::{AcquireKind, Error, Leader, LeaderObserver, LockGuard, LockRequest, Locker};

/// A leader election over Valkey, shaped like etcd's: candidates
/// [`campaign`](Election::campaign) with a value, one of them leads at a
/// time, and anyone can ask who [`leads`](Election::leader) or
/// [`observe`](Election::observe) every change. Made by
/// [`Locker::election`]; cheap to clone.
///
/// Leadership is a lock (`{name}:election`) with every guarantee of a
/// [`LockGuard`]: a majority of keys over independent instances, a validity
/// told on the leader's own clock (so a leader that loses its majority is
/// told before any other candidate can lead), extension while it leads,
/// release on drop. Its fencing token is the **term**, strictly greater for
/// every later leader, whatever the locker's `fencing` option: pass it to
/// the resources the leader writes, so they can refuse a deposed one.
///
/// A candidate that wins the lock announces its term and value in the
/// election's log (`{key_prefix}:terms:{name}`, on every node, the last 64
/// terms), and leads once a majority of nodes has it. Observers read the
/// log, so they see every term in order, including the ones that passed
/// while they were disconnected.
///
/// # Examples
/// ```no_run
/// # async fn demo(locker: valkeylock::Locker) -> Result<(), valkeylock::Error> {
/// let election = locker.election("scheduler")?;
/// let leadership = election.campaign("host-a:8080").await?;
/// println!("leading in term {}", leadership.term());
/// tokio::select! {
///     reason = leadership.lost() => eprintln!("deposed: {reason}"),
///     _ = schedule(leadership.term()) => {}
/// }
/// leadership.resign().await?;
/// # Ok(()) }
/// # async fn schedule(_term: u64) {}
/// ```
#[derive(Debug, Clone)]
pub struct Election {
    locker: Locker,
    name: Arc<str>,
}

impl Election {
    pub(crate) fn new(locker: Locker, name: &str) -> Election {
        Election {
            locker,
            name: Arc::from(name),
        }
    }

    /// The election's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Waits until this candidate leads, announcing `value` (at most
    /// [`MAX_VALUE_LEN`](crate::MAX_VALUE_LEN) bytes: an address, a host
    /// name), and returns its leadership. Dropping the future withdraws the
    /// candidacy.
    ///
    /// # Errors
    /// [`Error::InvalidOptions`] (a value too long), [`Error::Unavailable`]
    /// (a majority of nodes refuses the election's log), [`Error::Closed`].
    ///
    /// # Cancel safety
    /// This method is cancel safe: if the future is dropped, the wait is
    /// withdrawn and a leadership won just then is resigned.
    ///
    /// # Examples
    /// ```no_run
    /// # async fn demo(election: valkeylock::Election) -> Result<(), valkeylock::Error> {
    /// let leadership = election.campaign("10.0.0.7:9000").await?;
    /// assert_eq!(leadership.value(), "10.0.0.7:9000");
    /// # Ok(()) }
    /// ```
    pub async fn campaign(&self, value: &str) -> Result<Leadership, Error> {
        self.run(value, AcquireKind::Wait, &LockRequest::new())
            .await
    }

    /// [`Election::campaign`] on the terms of `request`: a wait limit over
    /// the whole campaign (then [`Error::Timeout`]), the leadership's own
    /// validity, a maximum hold (a term limit).
    ///
    /// # Errors
    /// As [`Election::campaign`]; [`Error::Timeout`];
    /// [`Error::InvalidOptions`] for a request out of range.
    ///
    /// # Cancel safety
    /// As [`Election::campaign`].
    ///
    /// # Examples
    /// ```no_run
    /// # async fn demo(election: valkeylock::Election) -> Result<(), valkeylock::Error> {
    /// use std::time::Duration;
    /// use valkeylock::LockRequest;
    ///
    /// let request = LockRequest::new().wait(Duration::from_secs(10)).max_hold(Duration::from_secs(3600));
    /// match election.campaign_with("me", &request).await {
    ///     Ok(leadership) => drop(leadership),
    ///     Err(valkeylock::Error::Timeout { .. }) => eprintln!("someone else leads"),
    ///     Err(e) => return Err(e),
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn campaign_with(
        &self,
        value: &str,
        request: &LockRequest,
    ) -> Result<Leadership, Error> {
        self.run(value, AcquireKind::Wait, request).await
    }

    /// One attempt: leadership if nobody leads, [`Error::NotLocked`]
    /// otherwise.
    ///
    /// # Errors
    /// [`Error::NotLocked`], and those of [`Election::campaign`].
    ///
    /// # Examples
    /// ```no_run
    /// # async fn demo(election: valkeylock::Election) -> Result<(), valkeylock::Error> {
    /// match election.try_campaign("me").await {
    ///     Ok(leadership) => drop(leadership),
    ///     Err(valkeylock::Error::NotLocked { .. }) => eprintln!("someone else leads"),
    ///     Err(e) => return Err(e),
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn try_campaign(&self, value: &str) -> Result<Leadership, Error> {
        self.run(value, AcquireKind::Try, &LockRequest::new()).await
    }

    async fn run(
        &self,
        value: &str,
        kind: AcquireKind,
        request: &LockRequest,
    ) -> Result<Leadership, Error> {
        let inner = self.locker.inner();
        let lease = inner
            .engine
            .campaign(&self.name, value, kind, request)
            .await?;
        Ok(Leadership {
            guard: LockGuard::new(lease, inner.clone()),
            election: self.name.clone(),
            value: Arc::from(value),
        })
    }

    /// Who leads now, without campaigning: the holder of the election's
    /// lock, with the value it announced; `None` when nobody leads (or the
    /// holder has not announced itself yet).
    ///
    /// # Errors
    /// [`Error::Unavailable`] when the lock or the log could not be read on
    /// a majority of nodes, [`Error::Closed`].
    ///
    /// # Examples
    /// ```no_run
    /// # async fn demo(election: valkeylock::Election) -> Result<(), valkeylock::Error> {
    /// match election.leader().await? {
    ///     Some(leader) => println!("{} leads (term {})", leader.value, leader.term),
    ///     None => println!("no leader"),
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn leader(&self) -> Result<Option<Leader>, Error> {
        self.locker.inner().engine.leader(&self.name).await
    }

    /// Follows the leaders: the current one (if any), then every new term in
    /// order, each once, driven by invalidations (see [`LeaderObserver`],
    /// which is also a `Stream` of them).
    ///
    /// # Errors
    /// [`Error::Closed`].
    ///
    /// # Examples
    /// ```no_run
    /// # async fn demo(election: valkeylock::Election) -> Result<(), valkeylock::Error> {
    /// let mut leaders = election.observe()?;
    /// loop {
    ///     let leader = leaders.next().await?;
    ///     println!("term {}: {} leads", leader.term, leader.value);
    /// }
    /// # }
    /// ```
    pub fn observe(&self) -> Result<LeaderObserver, Error> {
        self.locker.inner().engine.observe(&self.name)
    }

    /// Message-based campaigning for actors: campaigns with `value` in the
    /// background, then sends `ElectionEvent::Elected(leadership)` to
    /// `actor`, and later `ElectionEvent::Deposed { .. }` when that
    /// leadership ends for any reason other than its resignation. Failures
    /// arrive as `ElectionEvent::Failed`. Abort the returned handle to
    /// withdraw the candidacy. A term's `Deposed` arrives before the
    /// `Elected` of a later term won through this locker, as for `lock_for`.
    ///
    /// Needs the `ractor` feature.
    ///
    /// # Panics
    /// When called outside a tokio runtime.
    ///
    /// # Examples
    /// ```no_run
    /// use ractor::ActorRef;
    /// use valkeylock::{Election, ElectionEvent};
    ///
    /// enum Msg {
    ///     Election(ElectionEvent),
    /// }
    /// impl From<ElectionEvent> for Msg {
    ///     fn from(e: ElectionEvent) -> Msg {
    ///         Msg::Election(e)
    ///     }
    /// }
    ///
    /// fn stand(election: &Election, me: ActorRef<Msg>) {
    ///     let candidacy = election.campaign_for("worker-3", me); // abort to withdraw
    ///     # let _ = candidacy;
    /// }
    /// ```
    #[cfg(feature = "ractor")]
    pub fn campaign_for<M>(&self, value: &str, actor: ActorRef<M>) -> JoinHandle<()>
    where
        M: Message + From<ElectionEvent>,
    {
        let election = self.clone();
        let value = value.to_owned();
        // On the caller's runtime, as `lock_for` (see there).
        tokio::spawn(async move {
            let hand = |leadership: Leadership| {
                let (name, term) = (election.name().to_owned(), leadership.term());
                let deposed = ended(actor.clone(), move |reason| ElectionEvent::Deposed {
                    name,
                    term,
                    reason,
                });
                let watcher = leadership.watcher();
                (
                    watcher,
                    M::from(ElectionEvent::Elected(leadership)),
                    deposed,
                )
            };
            let failed = |error| {
                let name = election.name().to_owned();
                M::from(ElectionEvent::Failed { name, error })
            };
            serve(&actor, || election.campaign(&value), hand, failed).await;
        })
    }
}

/// This candidate's leadership in an [`Election`]. It is the
/// [`LockGuard`] of the election's lock (it derefs to it:
/// [`is_held`](LockGuard::is_held), [`valid_until`](LockGuard::valid_until),
/// [`lost`](LockGuard::lost),
/// [`cancellation_token`](LockGuard::cancellation_token) behave as for a
/// lock), with the election's [`name`](Leadership::name), the
/// [`value`](Leadership::value) announced and the [`term`](Leadership::term).
/// Dropping it resigns in the background; [`Leadership::resign`] waits.
///
/// # Examples
/// ```no_run
/// # async fn demo(election: valkeylock::Election) -> Result<(), valkeylock::Error> {
/// let leadership = election.campaign("me").await?;
/// if leadership.is_held() {
///     // act as leader, sending `leadership.term()` with every write
/// }
/// leadership.resign().await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
#[must_use = "leadership is resigned as soon as it is dropped: bind it (`let leadership = …`) for as long as this candidate should lead"]
pub struct Leadership {
    guard: LockGuard,
    election: Arc<str>,
    value: Arc<str>,
}

impl Leadership {
    /// The election's name (its lock is `{name}:election`).
    pub fn name(&self) -> &str {
        &self.election
    }

    /// What this leader announced.
    pub fn value(&self) -> &str {
        &self.value
    }

    /// The term: the lock's fencing token, strictly greater than every
    /// earlier leader's.
    pub fn term(&self) -> u64 {
        self.guard.fencing_token()
    }

    /// The leadership as the [`LockGuard`] of the election's lock. Dropping
    /// it still resigns.
    pub fn into_guard(self) -> LockGuard {
        self.guard
    }

    /// Resigns and waits until the election's keys are deleted, as
    /// [`LockGuard::release`]: the next candidate's campaign is woken at
    /// once.
    ///
    /// # Errors
    /// As [`LockGuard::release`].
    ///
    /// # Cancel safety
    /// As [`LockGuard::release`]: the leadership is resigned all the same.
    pub async fn resign(self) -> Result<(), Error> {
        self.guard.release().await
    }
}

impl Deref for Leadership {
    type Target = LockGuard;

    fn deref(&self) -> &LockGuard {
        &self.guard
    }
}
