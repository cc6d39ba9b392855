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
//!   forms, `lock_for` (message-based, for actors; feature `ractor`), `close`.
//! - [`LockGuard`]: a held lock: `is_held`, `valid_until`, `lost`,
//!   `cancellation_token`, `release`.
//! - `LockEvent` (feature `ractor`): what an actor receives from `lock_for`.
//! - [`LockRequest`]: one call's options: a wait limit, its own validity, a
//!   maximum hold (`lock_with`, `try_lock_with`).
//! - Looking without taking: [`Locker::inspect`] ([`LockInfo`]),
//!   [`Locker::watch`] ([`LockWatch`]), [`Locker::health`] ([`Health`]).
//! - [`LockerOptions`]: configuration (builder and serde); [`NodeAddr`]: the
//!   node URL grammar; [`parse_duration`] / [`format_duration`]: durations
//!   as text.
//! - [`Error`] (with [`ConnectionErrorKind`]), [`LostReason`],
//!   [`ParseNodeError`], [`ParseDurationError`].
//!
//! The engine (Supervisor, NodeActor, LockActor) lives in the
//! `valkeylock-actors` crate. That crate is not a stable API: only the items
//! re-exported here are; its other public items are hidden from its docs and
//! may change in any release.
//!
//! # Feature flags
//! All off by default: a plain `valkeylock` dependency compiles the locker
//! and nothing else.
//! - `ractor`: `Locker::lock_for` and `LockEvent`, message-based locking for
//!   [ractor](https://docs.rs/ractor) actors. These items take ractor's
//!   `ActorRef`, so they follow ractor's versions; behind a feature, the rest
//!   of the API does not tie you to them (the engine uses ractor inside
//!   either way).
//! - `tls`: `rediss://` / `valkeys://` nodes, through rustls (ring), and the
//!   `tls_ca_file` option.
//! - `cli`: the `valkeylock` command-line tool (clap, toml, nix); not a
//!   library API.
//! - `fault-injection`: `Locker::faults()`, kill switches for the engine's
//!   actors in tests. Not a stable API.
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

#[cfg(feature = "ractor")]
mod event;
mod guard;
mod locker;

#[cfg(feature = "ractor")]
pub use event::LockEvent;
pub use guard::LockGuard;
pub use locker::Locker;
pub use valkeylock_actors::{
    format_duration, parse_duration, ConnectionErrorKind, DurationErrorKind, Error, FenceInfo,
    ForcedRelease, Health, KeyInfo, KeyValue, LeaseWatcher, LockInfo, LockRequest, LockState,
    LockWatch, LockerOptions, LostReason, NodeAddr, NodeHealth, NodeUrlErrorKind,
    ParseDurationError, ParseNodeError, Topology, MAX_NAME_LEN,
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
        #[cfg(feature = "ractor")]
        send_sync_static::<LockEvent>();
        send_sync_static::<LockerOptions>();
        send_sync_static::<LockRequest>();
        send_sync_static::<Error>();
        send_sync_static::<LostReason>();
        send_sync_static::<LockWatch>();
        send_sync_static::<LockInfo>();
        send_sync_static::<Health>();
    }

    /// Never called: it only has to compile.
    #[allow(dead_code)]
    fn futures_are_send(
        locker: &Locker,
        guard: LockGuard,
        watcher: &LeaseWatcher,
        watch: &mut LockWatch,
    ) {
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
        send(&locker.inspect("x"));
        send(&locker.force_release("x"));
        send(&watch.changed());
    }
}

/// The README's examples, compiled as doctests so they cannot rot.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
