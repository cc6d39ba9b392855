//! Engine of [valkeylock](https://docs.rs/valkeylock): distributed locks over
//! Valkey, as actors on ractor, woken by client-side caching.
//!
//! **Not a stable API.** This crate is an implementation detail of the
//! `valkeylock` crate: depend on that one. Only the items `valkeylock`
//! re-exports are stable; the handles it uses internally (`Engine`, `Lease`,
//! `AcquireKind`, `Faults`) are public but hidden from these docs, and may
//! change in any release. Actor messages and states are `pub(crate)`; only
//! handles ([`LeaseWatcher`], [`LockWatch`]) and plain reports
//! ([`LockInfo`], [`Health`]) leave this crate.
//!
//! # Layout
//! Decisions are pure code; actors are thin shells that move messages and
//! run I/O. Dependencies point down this list, never up.
//!
//! The sans-IO core (no actors, no client, no clock):
//! - `core`: one lock name's state machine (`core::lock`), its in-flight
//!   command table, fencing step, local queue and hand-over policy, and the
//!   majority and timing arithmetic (`core::quorum`).
//!
//! Leaves the core and the actors share:
//! - `keys`: key naming and invalidation parsing.
//! - `few`: `OneOrMore`, a list that nearly always holds one item, inline.
//! - `inspect`: what `inspect` reports, and the pure rule that decides
//!   whether a lock is held from what its keys hold.
//! - `health`: the node health table.
//! - `scripts`: the Lua scripts, the token, and parsing of replies.
//! - `addr`: node URLs (`NodeAddr`), read with the `url` crate.
//! - `duration`: durations as text, read and written with `humantime`.
//! - `options`: `LockerOptions` and their validation.
//! - `request`: `LockRequest`, one call's options, checked against them.
//! - `rwlock`: a read-write lock's locks (the writer's, a slot per reader),
//!   their keys under one hash tag per index, the gates of the script that
//!   keeps the sides apart, and whom a change wakes.
//! - `semaphore`: a semaphore's permit slots (each a lock of its own): their
//!   names, the order they are tried in, the checks, and what a look at
//!   them reports (`SemaphoreInfo`).
//! - `election`: leader election's decisions: the names of an election's
//!   lock and log, a term's record, who leads given what was read, and what
//!   an observer reports next (`Leader`).
//! - `error`: `Error`, `ConnectionErrorKind` and `LostReason`.
//! - `status`: what a holder sees of its grant (held until when, or ended
//!   and why), one writer and many readers, and the grant's token.
//! - `failure`: fred's connection errors sorted into `ConnectionErrorKind`,
//!   and the verdict on a locker's first connections.
//! - `clock`: the engine's clock (`CLOCK_BOOTTIME`).
//! - `metrics`: every metric's name and labels, recorded through the
//!   `metrics` facade (feature `metrics`; empty functions without it).
//!
//! The actor system:
//! - `msg`: every actor message, below all the actors.
//! - `context`: the settings and routing tables every actor of a locker reads.
//! - `timers`: the lock actors' timers, one task per locker.
//! - `direct`: direct connections, on which a caller's runtime sends its
//!   acquisitions and releases itself, their tracking redirected to the
//!   engine's connection.
//! - `listen`: hand-over messages read on a caller's runtime, beside each
//!   direct connection, as well as on the engine's.
//! - `lock`: `LockActor`, one per lock name: the shell around the core.
//! - `node`: `NodeActor`, one fred client per Valkey instance; runs scripts
//!   through its command pump, batches extensions, routes invalidations.
//! - `supervisor`: the root actor; spawns and restarts node actors, spawns
//!   and retires lock actors, closes the locker.
//! - `runtime`: the engine's own thread and tokio runtime, where all of the
//!   above run, whatever the application's runtime is doing.
//! - `observer`: `inspect` and `LockWatch`, the handle's side of looking at
//!   a lock without taking it.
//! - `leader`: elections on the handle's side: announcing a term in every
//!   node's log, `leader()`, and `LeaderObserver`.
//! - `handle`: the public handles.

mod addr;
mod clock;
mod context;
mod core;
mod direct;
mod duration;
mod election;
mod error;
mod exec;
mod failure;
mod few;
mod handle;
mod health;
mod inspect;
mod keys;
mod leader;
mod listen;
mod lock;
mod metrics;
mod msg;
mod node;
mod observer;
mod options;
mod request;
mod resp;
mod runtime;
mod rwlock;
mod scripts;
mod semaphore;
#[cfg(test)]
mod sim;
mod status;
mod supervisor;
#[cfg(test)]
mod test_server;
mod timers;
mod wire;

pub use addr::{NodeAddr, NodeUrlErrorKind, ParseNodeError, Topology};
pub use duration::{format_duration, parse_duration, DurationErrorKind, ParseDurationError};
pub use election::{Leader, LOG_LEN, MAX_VALUE_LEN};
pub use error::{ConnectionErrorKind, Error, LostReason};
// Used by the `valkeylock` facade, not re-exported by it: not stable.
#[cfg(feature = "fault-injection")]
#[doc(hidden)]
pub use handle::Faults;
pub use handle::LeaseWatcher;
#[doc(hidden)]
pub use handle::{AcquireKind, Engine, Lease};
pub use inspect::{
    FenceInfo, ForcedRelease, Health, KeyInfo, KeyValue, LockInfo, LockState, NodeHealth, WaitKind,
    Waiter,
};
pub use keys::MAX_NAME_LEN;
pub use leader::LeaderObserver;
pub use observer::LockWatch;
pub use options::LockerOptions;
pub use request::LockRequest;
pub use rwlock::MAX_READERS;
pub use semaphore::{SemaphoreInfo, MAX_PERMITS};

#[cfg(test)]
use serde_json as _;
