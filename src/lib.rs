//! Distributed locks over Valkey, woken by client-side caching.
//!
//! [`Locker::lock`] waits and returns a [`LockGuard`] whose
//! [`lost`](LockGuard::lost) signal fires as soon as the majority of its keys
//! is gone (keys deleted or overwritten, nodes unreachable, validity run out).
//! Waiters retry the instant the holder releases: each failed attempt arms a
//! RESP3 `CLIENT TRACKING` invalidation on the keys, so a release, delete or
//! expiry wakes them without polling. The wire layout is that of the Go
//! `valkeylock` (valkey-go): keys `{prefix}:{i}:{name}` for `i` in
//! `0..2·M−1`, so Go and Rust lockers with the same prefix exclude each other.
//!
//! # Layout
//! - [`Locker`]: connect, `lock`, `try_lock`, `force_lock`, their `_with`
//!   forms, `lock_for` (message-based, for actors), `close`.
//! - [`LockGuard`]: a held lock: `is_held`, `valid_until`, `lost`,
//!   `cancellation_token`, `release`.
//! - [`LockEvent`]: what an actor receives from `lock_for`.
//! - [`LockRequest`]: one call's options: a wait limit, its own validity, a
//!   maximum hold (`lock_with`, `try_lock_with`).
//! - [`LockerOptions`]: configuration (builder and serde).
//! - [`Error`], [`LostReason`].
//!
//! The engine (Supervisor, NodeActor, LockActor) lives in the
//! `valkeylock-actors` crate; only the handles re-exported here are stable.
//!
//! # Example
//! ```no_run
//! # async fn demo() -> Result<(), valkeylock::Error> {
//! use valkeylock::{Locker, LockerOptions};
//!
//! let locker = Locker::connect(LockerOptions::new(["redis://127.0.0.1:6379"]).with_key_majority(1)).await?;
//! let guard = locker.lock("my_lock").await?;
//! tokio::select! {
//!     reason = guard.lost() => eprintln!("lost the lock: {reason}"),
//!     _ = do_work() => {}
//! }
//! guard.release().await?;
//! locker.close().await;
//! # Ok(()) }
//! # async fn do_work() {}
//! ```

mod event;
mod guard;
mod locker;

pub use event::LockEvent;
pub use guard::LockGuard;
pub use locker::Locker;
pub use valkeylock_actors::{
    format_duration, parse_duration, ConnectionErrorKind, DurationErrorKind, Error, LeaseWatcher,
    LockRequest, LockerOptions, LostReason, NodeAddr, NodeUrlErrorKind, ParseDurationError, ParseNodeError,
    Topology, MAX_NAME_LEN,
};

use valkeylock_actors::{AcquireKind, Engine, Lease};

/// Compile-time checks: the handles can cross threads and tasks, and so can
/// the futures of every call (`tokio::spawn` needs `Send + 'static`).
#[cfg(test)]
mod assertions {
    use super::*;

    fn send_sync_static<T: Send + Sync + 'static>() {}
    fn send<T: Send>(_: &T) {}

    #[test]
    fn handles_are_send_sync_static() {
        send_sync_static::<Locker>();
        send_sync_static::<LockGuard>();
        send_sync_static::<LeaseWatcher>();
        send_sync_static::<LockEvent>();
        send_sync_static::<LockerOptions>();
        send_sync_static::<LockRequest>();
        send_sync_static::<Error>();
        send_sync_static::<LostReason>();
    }

    /// Never called: it only has to compile.
    #[allow(dead_code)]
    fn futures_are_send(locker: &Locker, guard: LockGuard, watcher: &LeaseWatcher) {
        send(&Locker::connect(LockerOptions::default()));
        send(&locker.lock("x"));
        send(&locker.try_lock("x"));
        send(&locker.force_lock("x"));
        send(&locker.lock_with("x", &LockRequest::new()));
        send(&locker.try_lock_with("x", &LockRequest::new()));
        send(&locker.close());
        send(&watcher.lost());
        send(&guard.lost());
        send(&guard.release());
    }
}

/// The README's examples, compiled as doctests so they cannot rot.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
