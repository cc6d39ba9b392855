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
//! - [`Locker`]: connect, `lock`, `try_lock`, `force_lock`, `lock_for`
//!   (message-based, for actors), `close`.
//! - [`LockGuard`]: a held lock: `is_held`, `valid_until`, `lost`,
//!   `cancellation_token`, `release`.
//! - [`LockEvent`]: what an actor receives from `lock_for`.
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
//! guard.release().await;
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
    format_duration, parse_duration, Error, LeaseWatcher, LockerOptions, LostReason, MAX_NAME_LEN,
};

use valkeylock_actors::{AcquireKind, Engine, Lease};

/// The README's examples, compiled as doctests so they cannot rot.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
