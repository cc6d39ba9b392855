//! `LockEvent`: what an actor receives from [`Locker::lock_for`](crate::Locker::lock_for),
//! and how the grant and its end reach it in order.

use ractor::{ActorRef, Message};

use crate::{Error, Leadership, LeaseWatcher, LockGuard, LostReason, PermitGuard};

/// Events of message-based locking. Implement `From<LockEvent>` for your
/// actor's message type to receive them.
#[derive(Debug)]
#[non_exhaustive]
pub enum LockEvent {
    /// The lock is held; keep the guard as long as you need it.
    Acquired(LockGuard),
    /// The grant ended without being released.
    Lost {
        /// The lock name.
        name: String,
        /// Why.
        reason: LostReason,
    },
    /// The wait ended with an error (for example, the locker closed).
    Failed {
        /// The lock name.
        name: String,
        /// What went wrong.
        error: Error,
    },
}

/// Events of message-based semaphore acquisition
/// ([`Semaphore::acquire_for`](crate::Semaphore::acquire_for)). Implement
/// `From<PermitEvent>` for your actor's message type to receive them.
#[derive(Debug)]
#[non_exhaustive]
pub enum PermitEvent {
    /// A permit is held; keep the guard as long as you need it.
    Acquired(PermitGuard),
    /// The permit ended without being released.
    Lost {
        /// The semaphore's name.
        name: String,
        /// The slot it held.
        slot: u32,
        /// Why.
        reason: LostReason,
    },
    /// The wait ended with an error (for example, the locker closed).
    Failed {
        /// The semaphore's name.
        name: String,
        /// What went wrong.
        error: Error,
    },
}

/// Events of message-based campaigning
/// ([`Election::campaign_for`](crate::Election::campaign_for)). Implement
/// `From<ElectionEvent>` for your actor's message type to receive them.
#[derive(Debug)]
#[non_exhaustive]
pub enum ElectionEvent {
    /// This candidate leads; keep the leadership as long as it should.
    Elected(Leadership),
    /// The leadership ended without a resignation: act as leader no more.
    /// The next leader cannot have been elected before this was sent by
    /// the leader's own clock.
    Deposed {
        /// The election's name.
        name: String,
        /// The term that ended.
        term: u64,
        /// Why.
        reason: LostReason,
    },
    /// The campaign ended with an error (for example, the locker closed).
    Failed {
        /// The election's name.
        name: String,
        /// What went wrong.
        error: Error,
    },
}

/// Takes grants with `take` and forwards each to `actor` (`hand` makes its
/// watcher, its `Acquired` and its `Lost`; see [`forward`]) until one
/// reaches it; a failure of `take` is cast as `failed` makes it. What
/// `lock_for`, `acquire_for` and `campaign_for` run.
pub(crate) async fn serve<M, G, L, Fut>(
    actor: &ActorRef<M>,
    mut take: impl FnMut() -> Fut,
    mut hand: impl FnMut(G) -> (LeaseWatcher, M, L),
    failed: impl FnOnce(Error) -> M,
) where
    M: Message,
    L: FnOnce(LostReason) + Send + 'static,
    Fut: std::future::Future<Output = Result<G, Error>>,
{
    loop {
        match take().await {
            Ok(grant) => {
                let (watcher, acquired, lost) = hand(grant);
                if forward(&watcher, actor, acquired, lost).await {
                    return;
                }
                // Ended before it reached the actor: wait again.
            }
            Err(error) => {
                let _ = actor.cast(failed(error));
                return;
            }
        }
    }
}

/// Casts `acquired` (which holds the guard) to `actor`, then the grant's
/// end as `lost` makes it, in that order, and returns once the grant has
/// ended. The end is cast by the engine as it ends the grant
/// ([`LeaseWatcher::announce`]), so an actor that asks for the same lock
/// again hears this grant's end before it hears the next grant: a `Lost`
/// never follows the `Acquired` it does not belong to.
///
/// False if the grant ended before it could be handed over: nothing was
/// cast, the actor never had it, and the caller waits for the lock again.
async fn forward<M: Message>(
    watcher: &LeaseWatcher,
    actor: &ActorRef<M>,
    acquired: M,
    lost: impl FnOnce(LostReason) + Send + 'static,
) -> bool {
    // A refused message holds the guard: it must be dropped here, not while
    // `announce` holds the grant's state (dropping a guard releases it).
    let mut refused = None;
    let told = watcher
        .announce(
            || match actor.cast(acquired) {
                Ok(()) => true,
                Err(e) => {
                    refused = Some(e);
                    false
                }
            },
            lost,
        )
        .await;
    told.is_some() || refused.is_some()
}

/// The end of a grant as `actor` is told it: `event(reason)` for a loss,
/// nothing for a release.
pub(crate) fn ended<M, E>(
    actor: ActorRef<M>,
    event: impl FnOnce(LostReason) -> E + Send + 'static,
) -> impl FnOnce(LostReason) + Send + 'static
where
    M: Message + From<E>,
{
    move |reason| {
        if reason.is_loss() {
            let _ = actor.cast(M::from(event(reason)));
        }
    }
}
