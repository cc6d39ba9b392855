//! Engine of [valkeylock](https://docs.rs/valkeylock): distributed locks over
//! Valkey, as actors on ractor, woken by client-side caching.
//!
//! Implementation detail of the `valkeylock` crate: only the items it
//! re-exports are stable. Actor messages and states are `pub(crate)`; only
//! handles ([`Engine`], [`Lease`], [`LeaseWatcher`]) leave this crate.
//!
//! # Layout
//! - `supervisor`: the root actor; spawns and restarts node
//!   actors, spawns and retires lock actors, closes the locker.
//! - `node`: `NodeActor`, one fred client per Valkey instance; runs scripts,
//!   routes invalidations.
//! - `lock`: `LockActor`, one per lock name; queue, attempts, tally,
//!   extension, loss.
//! - `quorum`: pure majority and timing math.
//! - `keys`: key naming and invalidation parsing.
//! - `scripts`: the Lua scripts and the token.
//! - `timers`: the lock actors' timers, one task per locker.
//! - `options`: `LockerOptions` and their validation.
//! - `handle`: the public handles.
//! - `error`: `Error` and `LostReason`.

mod context;
mod core;
mod error;
mod handle;
mod keys;
mod lock;
mod node;
mod options;
mod quorum;
mod scripts;
#[cfg(test)]
mod sim;
mod supervisor;
mod timers;

pub use error::{Error, LostReason};
#[cfg(feature = "fault-injection")]
pub use handle::Faults;
pub use handle::{AcquireKind, Engine, Lease, LeaseWatcher};
pub use keys::MAX_NAME_LEN;
pub use options::{format_duration, parse_duration, LockerOptions, NodeAddr, Topology};

#[cfg(test)]
use serde_json as _;
