//! `LockEvent`: what an actor receives from [`Locker::lock_for`](crate::Locker::lock_for).

use crate::{Error, Leadership, LockGuard, LostReason, PermitGuard};

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
