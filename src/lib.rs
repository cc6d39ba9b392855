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
//! # Quick start
//! ```no_run
//! # async fn demo() -> Result<(), valkeylock::Error> {
//! use valkeylock::{Locker, LockerOptions};
//!
//! // One Valkey instance: key_majority 1.
//! let locker = Locker::connect(LockerOptions::new(["redis://127.0.0.1:6379"]).with_key_majority(1)).await?;
//! let guard = locker.lock("my_lock").await?; // waits; drop the future to give up
//! tokio::select! {
//!     reason = guard.lost() => eprintln!("lost the lock: {reason}"),
//!     _ = do_work() => {}
//! }
//! guard.release().await?; // or drop the guard: released in the background
//! locker.close().await;    // deletes held keys, fails waiters with Closed
//! # Ok(()) }
//! # async fn do_work() {}
//! ```
//!
//! # Layout
//! - [`Locker`]: connect, `lock`, `try_lock`, `force_lock`, their `_with`
//!   forms, `lock_for` (message-based, for actors; feature `ractor`), `close`.
//! - [`LockGuard`]: a held lock: `is_held`, `valid_until`, `lost`,
//!   `cancellation_token`, `fencing_token`, `watcher` ([`LeaseWatcher`]),
//!   `release`.
//! - `LockEvent` (feature `ractor`): what an actor receives from `lock_for`.
//! - [`LockRequest`]: one call's options: a wait limit, its own validity, a
//!   maximum hold (`lock_with`, `try_lock_with`).
//! - [`Semaphore`] ([`Locker::semaphore`]): up to N holders, each a
//!   [`PermitGuard`].
//! - [`RwLock`] ([`Locker::rw_lock`]): readers or one writer, a
//!   [`ReadGuard`] or a [`WriteGuard`] (fenced).
//! - [`Election`] ([`Locker::election`]): leader election (`campaign`,
//!   `leader`, `observe`), a [`Leadership`] whose term is a fencing token, a
//!   [`LeaderObserver`] of every term; `ElectionEvent` for actors.
//! - Looking without taking: [`Locker::inspect`] ([`LockInfo`]),
//!   [`Locker::watch`] ([`LockWatch`]), [`Locker::health`] ([`Health`]),
//!   [`Locker::force_release`].
//! - [`LockerOptions`]: configuration (builder and serde); [`NodeAddr`]: the
//!   node URL grammar; [`parse_duration`] / [`format_duration`]: durations
//!   as text.
//! - [`Error`] (with [`ConnectionErrorKind`]), [`LostReason`],
//!   [`ParseNodeError`], [`ParseDurationError`].
//!
//! # The guarantees
//! What a [`LockGuard`] promises (the full account, with what the fault
//! suite measured, is the repository's `docs/SAFETY.md`):
//! 1. **Mutual exclusion, as seen by a careful holder.** While
//!    [`is_held`](LockGuard::is_held) returns true, no other client using
//!    the same `key_prefix`, `key_majority` and servers holds a majority of
//!    the lock's keys. [`valid_until`](LockGuard::valid_until) is the
//!    earliest moment another client could take the majority (computed from
//!    when each command was sent, its TTL and `clock_drift`), less a small
//!    margin; it moves later only with a confirmed extension, and
//!    `is_held` compares it with the clock when called. The engine's clock
//!    is `CLOCK_BOOTTIME` on Linux, which keeps counting through a suspend.
//! 2. **The holder is told.** [`lost`](LockGuard::lost) resolves, and the
//!    [`cancellation_token`](LockGuard::cancellation_token) is cancelled, no
//!    later than `valid_until`, with a [`LostReason`]: `Deleted`,
//!    `Overwritten` or `Forced` as soon as an invalidation and a check show
//!    the keys taken, `Unreachable` or `Expired` at the deadline when
//!    extensions do not get through. Both also watch `valid_until` on their
//!    own, so a late engine cannot make them late. By default the engine runs
//!    on a thread and runtime of its own (`dedicated_runtime`), so a busy
//!    application runtime does not cost the lock.
//! 3. **Only the token holder can extend or release**: every script compares
//!    the key's value with the grant's random token first.
//! 4. **No key outlives its validity**: a release or `close` deletes the
//!    keys; keys left behind by a crash expire within `key_validity`.
//! 5. **No stuck waiter**: a waiting `lock` returns once the lock is free
//!    and a majority of nodes is reachable.
//!
//! They rest on these conditions: a server's clock runs faster than ours by
//! at most `clock_drift` over one `key_validity`; only lockers write the
//! keys (no `DEL`, `FLUSHALL` or eviction by others: use `noeviction` and an
//! ACL); an instance that restarts empty stays down for at least
//! `key_validity` (or persists every write); the holder does not pause
//! between checking `is_held` and acting for longer than its remaining
//! validity (or the protected resource checks a
//! [`fencing_token`](LockGuard::fencing_token)); and all lockers of a name
//! agree on `key_prefix`, `key_majority` and the servers, named the same way
//! (a `key_majority` or node-count disagreement is detected:
//! [`Error::ConfigMismatch`]). Not promised by default: fairness across
//! processes (waiters of one process are served first come, first served;
//! across processes the first `SET` to arrive wins), which
//! `fair_queueing`, or `handover` (a release hands the lock to the waiter
//! of another process that has waited longest), give.
//!
//! # Options
//! [`LockerOptions`] has a `with_*` builder method for every field and
//! `serde::Deserialize` (durations as `"5s"`, `"250ms"`, `"1m30s"`); it is
//! `#[non_exhaustive]`. [`Locker::connect`] (or
//! [`LockerOptions::validate`]) checks every field and fails with
//! [`Error::InvalidOptions`] naming it. The key options:
//!
//! | option | default | meaning |
//! | --- | --- | --- |
//! | `nodes` | required | Valkey URLs ([`NodeAddr::parse`] has the grammar); at most `2·M−1` |
//! | `key_majority` | 2 | `M`: keys needed; a lock has `2·M−1` keys. 1 with one instance |
//! | `key_validity` | 5 s | TTL of each key, renewed while held |
//! | `extend_interval` | `key_validity / 2` | how often a held lock is extended |
//! | `try_next_after` | 200 ms | time limit of one command on one node; raise it on slow links |
//! | `clock_drift` | 1 % of `key_validity` + 2 ms | subtracted from every key's expiry |
//! | `key_prefix` | `"valkeylock"` | keys are `{key_prefix}:{i}:{name}` |
//! | `connect_timeout` | 2 s | how long `connect` waits for each node |
//! | `fencing` | false | a fencing token with every grant |
//! | `disable_cache` | false | no `CLIENT TRACKING`: waiters poll |
//! | `dedicated_runtime` | true | the engine on a thread of its own |
//! | `direct_connections` | true | acquisitions and releases sent from the caller's runtime, tracking redirected to the engine's connection |
//!
//! The others (`no_loop_tracking`, `fallback_set_px`,
//! `local_handover_limit`, `tls_ca_file`, `event_buffer`) are documented on
//! [`LockerOptions`].
//!
//! # Deployments
//! Each node is one Valkey instance, one Sentinel-managed primary, or one
//! whole Valkey Cluster; key `i` of a lock goes to the node of rank
//! `i mod N`, the nodes ranked by address (their order in the list does not
//! matter).
//! ```
//! use valkeylock::LockerOptions;
//!
//! // One instance.
//! let single = LockerOptions::new(["redis://127.0.0.1:6379"]).with_key_majority(1);
//! // Independent instances (Redlock-style): 2·M−1 of them, one key each.
//! let independent = LockerOptions::new([
//!     "redis://10.0.0.1:6379", "redis://10.0.0.2:6379", "redis://10.0.0.3:6379",
//! ]).with_key_majority(2);
//! // Valkey Cluster: ONE node (a seed list); the keys spread over the masters by hash slot.
//! let cluster = LockerOptions::new(["valkey-cluster://10.0.0.1:7000,10.0.0.2:7000"]).with_key_majority(2);
//! // Sentinel: ONE node, the primary found by service name; use key_majority 1.
//! let sentinel = LockerOptions::new(["valkey-sentinel://10.0.0.1:26379,10.0.0.2:26379/mymaster"])
//!     .with_key_majority(1);
//! for options in [single, independent, cluster, sentinel] {
//!     assert!(options.validate().is_ok());
//! }
//! ```
//! - **Independent instances**: a holder with all `2·M−1` keys survives
//!   `M−1` of the instances going down or restarting empty; the lock is
//!   granted as soon as `M` keys are ours and the others are retaken at each
//!   extension.
//! - **Cluster**: the majority is over hash slots, so over the masters that
//!   serve them, whose replication is asynchronous: a failover can lose a
//!   key. Where a name's keys land depends on CRC16 (and on the name's
//!   length); for independence across machines use independent instances.
//! - **Sentinel**: one primary holds everything; a lock is as durable as its
//!   data (asynchronous replication again). The locker follows
//!   `+switch-master` to the new primary.
//!
//! # Per-call options
//! [`Locker::lock`] waits for as long as it takes and uses the locker's
//! `key_validity`. [`Locker::lock_with`] and [`Locker::try_lock_with`] take a
//! [`LockRequest`] instead: a wait limit ([`LockRequest::wait`], then
//! [`Error::Timeout`], the wait withdrawn), this lock's own key TTL
//! ([`LockRequest::validity`]) and a maximum hold ([`LockRequest::max_hold`],
//! then `lost()` says [`LostReason::MaxHold`] and the keys are deleted).
//! ```
//! use std::time::Duration;
//! use valkeylock::LockRequest;
//!
//! let request = LockRequest::new()
//!     .wait(Duration::from_secs(5))
//!     .validity(Duration::from_secs(30))
//!     .max_hold(Duration::from_secs(600));
//! assert_eq!(request.max_hold_limit(), Some(Duration::from_secs(600)));
//! ```
//!
//! # Looking without taking: inspect, watch, health
//! - [`Locker::inspect`] reads every key of a lock and the fencing counter
//!   once: a [`LockInfo`] whose [`LockState`] is held (by whom, until when
//!   unless extended), free or unknown, by the lock's own majority rule. A
//!   key on a node that is down is unknown, never free. Its `waiting` lists
//!   who waits, longest first ([`Waiter`]): the hand-over claims and fair
//!   queue places the servers record beside the keys.
//! - [`Locker::watch`] returns a [`LockWatch`] that reports changes of
//!   state or owner; its reads arm `CLIENT TRACKING`, so it reads again only
//!   when something may have changed.
//! - [`Locker::health`] returns each node's connection state and whether
//!   enough nodes are up ([`Health::ready`]), without sending a command: for
//!   readiness probes.
//! - [`Locker::force_release`] deletes a lock's keys whoever holds them, for
//!   operators.
//!
//! # Errors
//! Every call fails with the one [`Error`] enum (`#[non_exhaustive]`,
//! `Clone`, no client-library type inside): match on its variants. A
//! `connect` that fails says why in [`Error::Connection`]'s
//! [`ConnectionErrorKind`] (credentials, permissions, protocol,
//! configuration and TLS are permanent; unreachable and timeout are not),
//! with the underlying error as its `source`. A held lock's end is not an
//! error: [`LockGuard::lost`] returns its [`LostReason`].
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
//! - `metrics`: counters, gauges and histograms (`valkeylock_*`) through the
//!   [metrics](https://docs.rs/metrics) facade, for any exporter; install
//!   the recorder before `Locker::connect`. The README's Observability
//!   section lists them.
//! - `cli`: the `valkeylock` command-line tool (clap, toml, nix); not a
//!   library API.
//! - `fault-injection`: `Locker::faults()`, kill switches for the engine's
//!   actors in tests. Not a stable API.

mod election;
#[cfg(feature = "ractor")]
mod event;
mod guard;
mod locker;
mod rwlock;
mod semaphore;

pub use election::{Election, Leadership};
#[cfg(feature = "ractor")]
pub use event::{ElectionEvent, LockEvent, PermitEvent};
pub use guard::LockGuard;
pub use locker::Locker;
pub use rwlock::{ReadGuard, RwLock, WriteGuard};
pub use semaphore::{PermitGuard, Semaphore};
pub use valkeylock_actors::{
    format_duration, parse_duration, ConnectionErrorKind, DurationErrorKind, Error, FenceInfo,
    ForcedRelease, Health, KeyInfo, KeyValue, Leader, LeaderObserver, LeaseWatcher, LockInfo,
    LockRequest, LockState, LockWatch, LockerOptions, LostReason, NodeAddr, NodeHealth,
    NodeUrlErrorKind, ParseDurationError, ParseNodeError, SemaphoreInfo, Topology, WaitKind,
    Waiter, LOG_LEN, MAX_NAME_LEN, MAX_PERMITS, MAX_READERS, MAX_VALUE_LEN,
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
        send_sync_static::<Semaphore>();
        send_sync_static::<PermitGuard>();
        send_sync_static::<LeaseWatcher>();
        #[cfg(feature = "ractor")]
        send_sync_static::<LockEvent>();
        #[cfg(feature = "ractor")]
        send_sync_static::<PermitEvent>();
        send_sync_static::<LockerOptions>();
        send_sync_static::<LockRequest>();
        send_sync_static::<Error>();
        send_sync_static::<LostReason>();
        send_sync_static::<LockWatch>();
        send_sync_static::<LockInfo>();
        send_sync_static::<Health>();
        send_sync_static::<SemaphoreInfo>();
        send_sync_static::<Election>();
        send_sync_static::<RwLock>();
        send_sync_static::<ReadGuard>();
        send_sync_static::<WriteGuard>();
        send_sync_static::<Leadership>();
        send_sync_static::<LeaderObserver>();
        send_sync_static::<Leader>();
        #[cfg(feature = "ractor")]
        send_sync_static::<ElectionEvent>();
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
        let pool = locker.semaphore("x", 2).expect("a valid semaphore");
        send(&pool.acquire());
        send(&pool.try_acquire());
        send(&pool.acquire_with(&LockRequest::new()));
        send(&pool.inspect());
        let election = locker.election("x").expect("a valid election");
        send(&election.campaign("me"));
        send(&election.try_campaign("me"));
        send(&election.leader());
        let rw = locker.rw_lock("x").expect("a valid read-write lock");
        send(&rw.read());
        send(&rw.write());
        send(&rw.try_read());
        send(&rw.try_write());
    }
}

/// The README's examples, compiled as doctests so they cannot rot.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
