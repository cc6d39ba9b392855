//! `LockEvent`: what an actor receives from [`Locker::lock_for`](crate::Locker::lock_for).

use crate::{Error, LockGuard, LostReason};

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
