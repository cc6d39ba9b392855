//! Every metric the engine records: its name, labels and meaning, in one
//! place, through the [`metrics`](https://docs.rs/metrics) facade.
//!
//! The shells call the functions here where they observe an outcome; the
//! core decides nothing here and knows nothing of it. Without the `metrics`
//! feature every function is empty and every type is zero-sized, so the
//! callers carry no `cfg` of their own.
//!
//! Labels are bounded: an acquisition's kind and outcome, a loss reason
//! ([`LostReason::as_str`]), a node's address (a locker has a few). Never the
//! lock name: names are unbounded (one per job, per user, per row), and a
//! label per name would make every exporter keep a series per name for ever.
//! Lock names are in the tracing events instead (field `lock`).
//!
//! A recorder must be installed before the locker is connected: the node
//! actors register their series (labelled by node) when they start.
#![cfg_attr(not(feature = "metrics"), allow(unused_variables, dead_code))]

use std::time::Duration;

use crate::core::RequestKind;
use crate::error::{Error, LostReason};

/// Prefix of every name.
macro_rules! name {
    ($n:literal) => {
        concat!("valkeylock_", $n)
    };
}

pub(crate) const ACQUISITIONS: &str = name!("acquisitions_total");
pub(crate) const ACQUIRE_WAIT: &str = name!("acquire_wait_seconds");
pub(crate) const HOLD: &str = name!("hold_seconds");
pub(crate) const LOSSES: &str = name!("losses_total");
pub(crate) const RELEASES: &str = name!("releases_total");
pub(crate) const HANDOVERS: &str = name!("handovers_total");
pub(crate) const HANDOVER_MESSAGES: &str = name!("handover_messages_total");
pub(crate) const HANDOVER_MESSAGES_HERE: &str = name!("handover_messages_on_callers_total");
pub(crate) const DEGRADED: &str = name!("degraded_locks");
pub(crate) const KEYS_LOST: &str = name!("minority_keys_lost_total");
pub(crate) const EXTENSION: &str = name!("extension_seconds");
pub(crate) const EXTENSION_FAILURES: &str = name!("extension_failures_total");
pub(crate) const NODE_UP: &str = name!("node_up");
pub(crate) const NODE_DISCONNECTS: &str = name!("node_disconnects_total");
pub(crate) const NODE_CONNECT_FAILURES: &str = name!("node_connect_failures_total");
pub(crate) const NODE_RECONNECTS: &str = name!("node_reconnects_total");
pub(crate) const INVALIDATIONS: &str = name!("invalidations_total");
pub(crate) const INVALIDATION_LAGS: &str = name!("invalidation_lags_total");

/// Describes every metric to the recorder (help text and unit). Called when
/// an engine starts; describing twice is harmless.
pub(crate) fn describe() {
    #[cfg(feature = "metrics")]
    {
        use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
        describe_counter!(
            ACQUISITIONS,
            "Acquisitions by kind (wait, try, force) and outcome"
        );
        describe_histogram!(
            ACQUIRE_WAIT,
            Unit::Seconds,
            "Time from an acquisition's call to its answer, by kind and outcome"
        );
        describe_histogram!(
            HOLD,
            Unit::Seconds,
            "Time a holder held a lock, from its grant to its end, by how it ended"
        );
        describe_counter!(
            LOSSES,
            "Grants that ended without their holder releasing, by reason"
        );
        describe_counter!(
            RELEASES,
            "Explicit releases (LockGuard::release) by outcome"
        );
        describe_counter!(
            HANDOVERS,
            "Grants handed to a waiter of this process without deleting the keys"
        );
        describe_counter!(
            HANDOVER_MESSAGES,
            "Keys handed to this locker's waiters by another locker's release (handover)"
        );
        describe_counter!(
            HANDOVER_MESSAGES_HERE,
            "Hand-over messages taken as read on a caller's runtime, before the engine's copy"
        );
        describe_gauge!(
            DEGRADED,
            "Locks held with fewer than all of their keys (the majority still holds)"
        );
        describe_counter!(
            KEYS_LOST,
            "Keys of a held lock lost while the majority still held, by node and reason"
        );
        describe_histogram!(
            EXTENSION,
            Unit::Seconds,
            "Duration of one extension batch call, by node"
        );
        describe_counter!(
            EXTENSION_FAILURES,
            "Keys whose extension failed (no answer, error, refused), by node"
        );
        describe_gauge!(NODE_UP, "Connected node actors, by node");
        describe_counter!(
            NODE_DISCONNECTS,
            "Connections to a node that ended, by node"
        );
        describe_counter!(
            NODE_CONNECT_FAILURES,
            "Connection attempts to a node that failed, by node"
        );
        describe_counter!(
            NODE_RECONNECTS,
            "Connections to a node after its first, by node"
        );
        describe_counter!(
            INVALIDATIONS,
            "Invalidated keys received from a node (client-side caching), by node"
        );
        describe_counter!(
            INVALIDATION_LAGS,
            "Times invalidations from a node were dropped (every lock re-checks), by node"
        );
    }
}

#[cfg(feature = "metrics")]
fn kind_label(kind: RequestKind) -> &'static str {
    match kind {
        RequestKind::Wait => "wait",
        RequestKind::Try => "try",
        RequestKind::Force => "force",
    }
}

/// The `outcome` label of an acquisition.
#[cfg(feature = "metrics")]
fn outcome_label<T>(result: &Result<T, Error>) -> &'static str {
    match result {
        Ok(_) => "acquired",
        Err(Error::NotLocked { .. }) => "not_locked",
        Err(Error::Closed) => "closed",
        Err(Error::Timeout { .. }) => "timeout",
        Err(Error::InvalidOptions { .. }) => "invalid_options",
        Err(Error::InvalidName { .. }) => "invalid_name",
        Err(Error::ConfigMismatch { .. }) => "config_mismatch",
        Err(Error::ReleaseUnconfirmed { .. }) => "release_unconfirmed",
        Err(Error::Unavailable { .. }) => "unavailable",
        Err(Error::Connection { .. }) => "connection",
    }
}

/// Times one acquisition; counts it as `cancelled` if dropped before
/// [`Acquisition::finish`] (the caller dropped the future).
#[derive(Debug)]
pub(crate) struct Acquisition {
    #[cfg(feature = "metrics")]
    kind: RequestKind,
    #[cfg(feature = "metrics")]
    started: Option<std::time::Instant>,
}

impl Acquisition {
    pub(crate) fn start(kind: RequestKind) -> Acquisition {
        Acquisition {
            #[cfg(feature = "metrics")]
            kind,
            #[cfg(feature = "metrics")]
            started: Some(std::time::Instant::now()),
        }
    }

    pub(crate) fn finish<T>(self, result: &Result<T, Error>) {
        #[cfg(feature = "metrics")]
        {
            let mut this = self;
            this.record(outcome_label(result));
        }
    }

    #[cfg(feature = "metrics")]
    fn record(&mut self, outcome: &'static str) {
        if let Some(started) = self.started.take() {
            let kind = kind_label(self.kind);
            metrics::counter!(ACQUISITIONS, "kind" => kind, "outcome" => outcome).increment(1);
            metrics::histogram!(ACQUIRE_WAIT, "kind" => kind, "outcome" => outcome)
                .record(started.elapsed());
        }
    }
}

#[cfg(feature = "metrics")]
impl Drop for Acquisition {
    fn drop(&mut self) {
        self.record("cancelled");
    }
}

/// An explicit release, by outcome: `confirmed` (every delete answered),
/// `unconfirmed` (some left to expire), `closed` (the engine stopped first).
pub(crate) fn release(outcome: &Result<(), Error>) {
    #[cfg(feature = "metrics")]
    {
        let outcome = match outcome {
            Ok(()) => "confirmed",
            Err(Error::ReleaseUnconfirmed { .. }) => "unconfirmed",
            Err(_) => "closed",
        };
        metrics::counter!(RELEASES, "outcome" => outcome).increment(1);
    }
}

/// A holder's grant ended after `held`: its hold time, and a loss unless
/// it released.
pub(crate) fn hold_ended(held: Duration, reason: LostReason) {
    #[cfg(feature = "metrics")]
    {
        let reason = reason.as_str();
        metrics::histogram!(HOLD, "reason" => reason).record(held);
        if reason != LostReason::Released.as_str() {
            metrics::counter!(LOSSES, "reason" => reason).increment(1);
        }
    }
}

/// The grant passed to a local waiter.
pub(crate) fn handover() {
    #[cfg(feature = "metrics")]
    metrics::counter!(HANDOVERS).increment(1);
}

/// A release of another locker handed a key to one of ours (`handover`).
pub(crate) fn handover_message() {
    #[cfg(feature = "metrics")]
    metrics::counter!(HANDOVER_MESSAGES).increment(1);
}

/// A hand-over's message was taken as read on a caller's runtime (`listen`).
pub(crate) fn handover_taken_here() {
    #[cfg(feature = "metrics")]
    metrics::counter!(HANDOVER_MESSAGES_HERE).increment(1);
}

/// A held lock started (`true`) or stopped (`false`) missing keys.
pub(crate) fn degraded(now: bool) {
    #[cfg(feature = "metrics")]
    {
        let g = metrics::gauge!(DEGRADED);
        if now {
            g.increment(1.0);
        } else {
            g.decrement(1.0);
        }
    }
}

/// A key of a held lock, on `node`, was lost while the majority still held.
pub(crate) fn key_lost(node: &str, reason: LostReason) {
    #[cfg(feature = "metrics")]
    metrics::counter!(KEYS_LOST, "node" => node.to_owned(), "reason" => reason.as_str())
        .increment(1);
}

/// Node `node` connected again (not its first connection in this locker).
pub(crate) fn node_reconnected(node: &str) {
    #[cfg(feature = "metrics")]
    metrics::counter!(NODE_RECONNECTS, "node" => node.to_owned()).increment(1);
}

/// One node's series, registered once when its actor starts (a hot path
/// then costs an atomic add, no lookup). The actor's own copy marks the node
/// down when dropped; clones (for its tasks) share the series, not the state.
#[derive(Debug)]
pub(crate) struct NodeMetrics {
    #[cfg(feature = "metrics")]
    node: std::sync::Arc<NodeSeries>,
    #[cfg(feature = "metrics")]
    up: bool,
}

#[cfg(feature = "metrics")]
#[derive(Debug)]
struct NodeSeries {
    addr: String,
    up: metrics::Gauge,
    extension: metrics::Histogram,
    extension_failures: metrics::Counter,
    invalidations: metrics::Counter,
    lags: metrics::Counter,
}

impl NodeMetrics {
    pub(crate) fn new(addr: &str) -> NodeMetrics {
        NodeMetrics {
            #[cfg(feature = "metrics")]
            node: std::sync::Arc::new(NodeSeries {
                addr: addr.to_owned(),
                up: metrics::gauge!(NODE_UP, "node" => addr.to_owned()),
                extension: metrics::histogram!(EXTENSION, "node" => addr.to_owned()),
                extension_failures: metrics::counter!(EXTENSION_FAILURES, "node" => addr.to_owned()),
                invalidations: metrics::counter!(INVALIDATIONS, "node" => addr.to_owned()),
                lags: metrics::counter!(INVALIDATION_LAGS, "node" => addr.to_owned()),
            }),
            #[cfg(feature = "metrics")]
            up: false,
        }
    }

    /// The connection is up.
    pub(crate) fn connected(&mut self) {
        #[cfg(feature = "metrics")]
        if !self.up {
            self.up = true;
            self.node.up.increment(1.0);
        }
    }

    /// The connection ended (it was up).
    pub(crate) fn disconnected(&mut self) {
        #[cfg(feature = "metrics")]
        {
            metrics::counter!(NODE_DISCONNECTS, "node" => self.node.addr.clone()).increment(1);
            self.down();
        }
    }

    /// A connection attempt failed.
    pub(crate) fn connect_failed(&self) {
        #[cfg(feature = "metrics")]
        metrics::counter!(NODE_CONNECT_FAILURES, "node" => self.node.addr.clone()).increment(1);
    }

    #[cfg(feature = "metrics")]
    fn down(&mut self) {
        if std::mem::take(&mut self.up) {
            self.node.up.decrement(1.0);
        }
    }

    /// One extension batch call took `took`; `failed` of its keys failed.
    pub(crate) fn extension(&self, took: Duration, failed: usize) {
        #[cfg(feature = "metrics")]
        {
            self.node.extension.record(took);
            if failed > 0 {
                self.node.extension_failures.increment(failed as u64);
            }
        }
    }

    /// `keys` invalidated keys arrived.
    pub(crate) fn invalidations(&self, keys: usize) {
        #[cfg(feature = "metrics")]
        self.node.invalidations.increment(keys as u64);
    }

    /// The invalidation channel lagged (some were dropped).
    pub(crate) fn invalidation_lag(&self) {
        #[cfg(feature = "metrics")]
        self.node.lags.increment(1);
    }
}

impl Clone for NodeMetrics {
    fn clone(&self) -> NodeMetrics {
        NodeMetrics {
            #[cfg(feature = "metrics")]
            node: self.node.clone(),
            #[cfg(feature = "metrics")]
            up: false,
        }
    }
}

#[cfg(feature = "metrics")]
impl Drop for NodeMetrics {
    fn drop(&mut self) {
        self.down();
    }
}
