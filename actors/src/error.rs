//! The one error type of the public API, and the reasons a held lock can end.

use std::fmt;
use std::sync::Arc;

/// Everything a locker call can fail with. Each variant is something a caller can
/// act on; no client-library type appears here.
///
/// `Clone` (the cause of a connection error is shared), but not `PartialEq`:
/// a cause is an arbitrary error, which has no equality. Match on the
/// variant and its fields instead (`matches!(e, Error::Closed)`).
///
/// `#[non_exhaustive]`: a `match` needs a catch-all arm.
///
/// # Examples
/// Sorting errors into what to do about them:
/// ```
/// # use valkeylock_actors as valkeylock;
/// use std::time::Duration;
/// use valkeylock::{ConnectionErrorKind, Error};
///
/// fn advice(e: &Error) -> &'static str {
///     match e {
///         Error::NotLocked { held_by_others: true, .. } => "held by someone else: try later",
///         Error::NotLocked { .. } => "too few nodes answered: try again",
///         Error::Timeout { .. } => "waited long enough: give up or retry",
///         Error::InvalidOptions { .. } | Error::InvalidName { .. } => "fix the call",
///         Error::ConfigMismatch { .. } => "lockers of this name disagree on key_majority, nodes or permits",
///         Error::ReleaseUnconfirmed { .. } => "released; some keys are left to expire",
///         Error::Connection { kind: ConnectionErrorKind::Authentication, .. } => "fix the credentials",
///         Error::Connection { .. } => "check the servers",
///         Error::Closed => "the locker is closed",
///         _ => "unexpected",
///     }
/// }
///
/// let e = Error::Timeout { name: "report".into(), waited: Duration::from_secs(5) };
/// assert_eq!(advice(&e), "waited long enough: give up or retry");
/// assert_eq!(e.to_string(), "timed out after 5s waiting for lock \"report\"");
/// assert_eq!(advice(&Error::Closed), "the locker is closed");
/// ```
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// One attempt did not get a majority of the keys (from `try_lock`, or a
    /// `force_lock` whose nodes did not answer).
    #[error("not locked: {name:?} acquired {acquired} of {needed} needed keys ({total} in all){}", if *held_by_others { "; held by another owner" } else { "" })]
    NotLocked {
        /// The lock name.
        name: String,
        /// Keys this attempt got.
        acquired: usize,
        /// Keys needed (KeyMajority).
        needed: usize,
        /// Keys of the lock (2·KeyMajority − 1).
        total: usize,
        /// True when at least one key was held by somebody else (as opposed to
        /// nodes that failed or did not answer in time).
        held_by_others: bool,
    },
    /// The locker was closed, or its engine stopped.
    #[error("locker closed")]
    Closed,
    /// A wait set with `LockRequest::wait` ran out before the lock was
    /// held. The wait was withdrawn: nothing is held, nothing is left queued.
    #[error("timed out after {waited:?} waiting for lock {name:?}")]
    Timeout {
        /// The lock name.
        name: String,
        /// The wait limit that ran out.
        waited: std::time::Duration,
    },
    /// An option is out of range or inconsistent with another; checked when the
    /// locker is built.
    #[error("invalid option `{field}`: {reason}")]
    InvalidOptions {
        /// The option's name as in `LockerOptions`.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A lock name that cannot be used.
    #[error("invalid lock name {name:?}: {reason}")]
    InvalidName {
        /// The name (shortened when long).
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The lock's keys are held by another locker of this library whose
    /// configuration places them differently: it was built with another
    /// `key_majority`, or with another number of nodes; or, for a
    /// semaphore, it claims another number of permits (or the name is a
    /// semaphore's slot on one side and a lock on the other). Two such
    /// lockers do not exclude each other, so the attempt fails instead of
    /// waiting or holding. `ours` and `theirs` read `m{key_majority}n{nodes}`,
    /// followed by `p{permits}` for a semaphore's permit.
    #[error("configuration mismatch on lock {name:?}: its keys are held by a locker with {theirs} (key_majority, node count, and permits for a semaphore), this locker has {ours}; users of one name must agree on them")]
    ConfigMismatch {
        /// The lock or semaphore name.
        name: String,
        /// This locker's `m{key_majority}n{nodes}` (and `p{permits}`).
        ours: String,
        /// The other holder's, as written in its key.
        theirs: String,
    },
    /// A release could not confirm every delete: `deleted` keys were
    /// deleted, `unconfirmed` got no answer in time (their node is down or
    /// slow) and are left to expire within `key_validity`. Until then
    /// nobody else can take those keys; whether others can take the lock
    /// depends on how many of its keys are free. "In time" counts from when
    /// the engine queued the delete: on a server too slow for a burst of
    /// releases the last deletes may run after the limit, and those keys are
    /// deleted all the same. (Releases queued together go in calls of many
    /// keys: 10,000 at once are confirmed in the scale bench of
    /// BENCHMARKS.md.)
    #[error("release of {name:?} not confirmed: {deleted} keys deleted, {unconfirmed} left to expire because their node did not answer")]
    ReleaseUnconfirmed {
        /// The lock name.
        name: String,
        /// Keys whose delete was confirmed.
        deleted: usize,
        /// Keys whose delete got no answer.
        unconfirmed: usize,
    },
    /// A look or a write that needs a majority of nodes could not get one:
    /// too many of them could not be read (down, slow), or the server
    /// refused a command the call needs (an ACL without it, a key of
    /// another type, memory full). From `Election::leader`, and from
    /// `Election::campaign` when a majority refuses its announcement.
    #[error("{name:?} unavailable: {reason}")]
    Unavailable {
        /// The election (or lock) name.
        name: String,
        /// What failed, in words.
        reason: String,
    },
    /// Connecting to Valkey failed in a way that makes the locker unusable:
    /// wrong credentials, missing permissions, a server without RESP3, too few
    /// reachable nodes… [`kind`](ConnectionErrorKind) says which, to act on;
    /// the error's [`source`](std::error::Error::source) is the underlying
    /// error (the server's reply, the socket's error) when there is one.
    ///
    /// `#[non_exhaustive]`: match it with `Error::Connection { kind, .. }`.
    #[error("cannot connect to Valkey{}: {message}", node.as_ref().map(|n| format!(" at {n}")).unwrap_or_default())]
    #[non_exhaustive]
    Connection {
        /// What went wrong, to act on.
        kind: ConnectionErrorKind,
        /// The node it concerns, as configured but with its password
        /// replaced by `***`; `None` when it concerns several (the message
        /// then names each) or none (the engine could not start).
        node: Option<String>,
        /// What happened, in words (no passwords).
        message: String,
        /// The underlying error, also given by `std::error::Error::source`.
        source: Option<Arc<dyn std::error::Error + Send + Sync>>,
    },
}

impl Error {
    /// The error of a lock that stands for another name (a semaphore's
    /// slot, an election's lock), as that name's: the lock's name in
    /// `NotLocked`, `Timeout` and `ConfigMismatch` becomes `name`, the one
    /// the caller gave.
    pub(crate) fn named(self, name: &str) -> Error {
        let name = name.to_owned();
        match self {
            Error::NotLocked {
                acquired,
                needed,
                total,
                held_by_others,
                ..
            } => Error::NotLocked {
                name,
                acquired,
                needed,
                total,
                held_by_others,
            },
            Error::Timeout { waited, .. } => Error::Timeout { name, waited },
            Error::ConfigMismatch { ours, theirs, .. } => {
                Error::ConfigMismatch { name, ours, theirs }
            }
            other => other,
        }
    }
}

/// What kind of failure an [`Error::Connection`] is, so a caller can tell
/// "fix the configuration" from "try again later".
///
/// # Examples
/// ```
/// # use valkeylock_actors as valkeylock;
/// use valkeylock::{ConnectionErrorKind, Error};
///
/// fn retry_later(e: &Error) -> bool {
///     matches!(
///         e,
///         Error::Connection { kind: ConnectionErrorKind::Unreachable | ConnectionErrorKind::Timeout, .. }
///     )
/// }
/// assert!(!retry_later(&Error::Closed));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ConnectionErrorKind {
    /// The server refused the credentials: a wrong password, an unknown or
    /// disabled user (`WRONGPASS`), or none given where one is required
    /// (`NOAUTH`). Permanent: `connect` fails at once.
    Authentication,
    /// The user may not run a command the locker needs (`NOPERM`), such as
    /// `CLIENT TRACKING`; the README lists the commands. Permanent.
    Permission,
    /// Nothing answered: connection refused or reset, no route, a name that
    /// does not resolve, no reachable Sentinel or cluster node.
    Unreachable,
    /// A node did not finish connecting within `connect_timeout`.
    Timeout,
    /// The server does not speak what the locker needs: no RESP3
    /// (`NOPROTO`), no `CLIENT TRACKING` (an unknown command), or it sent
    /// something that could not be read. Permanent when the server said so.
    Protocol,
    /// The TLS handshake failed: a certificate not signed by a trusted
    /// authority, a server that does not speak TLS.
    Tls,
    /// The client could not be set up with the options: an unreadable
    /// `tls_ca_file`, a cluster URL for a server without cluster support.
    /// Permanent.
    Configuration,
    /// Anything else: the engine's thread or actors could not start, a
    /// failure not recognised.
    Other,
}

impl ConnectionErrorKind {
    /// A short, stable, lowercase label, for metrics and logs (also its
    /// `Display`).
    ///
    /// # Examples
    /// ```
    /// # use valkeylock_actors as valkeylock;
    /// use valkeylock::ConnectionErrorKind;
    ///
    /// assert_eq!(ConnectionErrorKind::Authentication.as_str(), "authentication");
    /// assert_eq!(ConnectionErrorKind::Timeout.to_string(), "timeout");
    /// ```
    pub fn as_str(&self) -> &'static str {
        match self {
            ConnectionErrorKind::Authentication => "authentication",
            ConnectionErrorKind::Permission => "permission",
            ConnectionErrorKind::Unreachable => "unreachable",
            ConnectionErrorKind::Timeout => "timeout",
            ConnectionErrorKind::Protocol => "protocol",
            ConnectionErrorKind::Tls => "tls",
            ConnectionErrorKind::Configuration => "configuration",
            ConnectionErrorKind::Other => "other",
        }
    }
}

impl fmt::Display for ConnectionErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a held lock ended: what `LockGuard::lost` and
/// [`LeaseWatcher::lost`](crate::LeaseWatcher::lost) return, what
/// `LockGuard::lost_reason` says once the engine has ended the grant, and
/// the payload of a `LockEvent::Lost`.
///
/// Its `Display` is a sentence for people; [`as_str`](LostReason::as_str)
/// is a stable label for metrics. `#[non_exhaustive]`: reasons may be added.
///
/// # Examples
/// ```
/// # use valkeylock_actors as valkeylock;
/// use valkeylock::LostReason;
///
/// let reason = LostReason::Deleted;
/// assert_eq!(reason.as_str(), "deleted");
/// assert_eq!(reason.to_string(), "its keys were deleted by someone else");
/// assert!(reason.is_loss());
/// assert!(!LostReason::Released.is_loss());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LostReason {
    /// The holder released it (explicitly or by dropping the guard).
    Released,
    /// A majority of its keys was deleted by someone else: a `DEL`, `FLUSHALL`
    /// or `FLUSHDB`, a server that restarted empty, or eviction.
    Deleted,
    /// A majority of its keys now holds a value written by someone else.
    Overwritten,
    /// Another locker took it over with `force_lock`.
    Forced,
    /// Its validity ran out before an extension was confirmed by a majority:
    /// the nodes answered too slowly, or their answers arrived too late.
    Expired,
    /// The nodes holding a majority of its keys became unreachable (connection
    /// closed or commands failing) and the validity ran out.
    Unreachable,
    /// The locker was closed.
    Closed,
    /// The engine actor that kept this lock stopped or was killed, so nobody
    /// extends the keys any more.
    EngineStopped,
    /// A key of the lock turned out to be held by a locker of this library
    /// configured with another `key_majority` or node count: the two could
    /// both hold the name, so this one lets go (see `Error::ConfigMismatch`).
    ConfigMismatch,
    /// It was held for its maximum hold (`LockRequest::max_hold`): the
    /// engine stopped extending it and deleted its keys.
    MaxHold,
}

impl LostReason {
    /// A short, stable, lowercase label (`snake_case`), for metrics and logs.
    ///
    /// # Examples
    /// ```
    /// # use valkeylock_actors as valkeylock;
    /// use valkeylock::LostReason;
    ///
    /// assert_eq!(LostReason::MaxHold.as_str(), "max_hold");
    /// assert_eq!(LostReason::EngineStopped.as_str(), "engine_stopped");
    /// ```
    pub fn as_str(&self) -> &'static str {
        match self {
            LostReason::Released => "released",
            LostReason::Deleted => "deleted",
            LostReason::Overwritten => "overwritten",
            LostReason::Forced => "forced",
            LostReason::Expired => "expired",
            LostReason::Unreachable => "unreachable",
            LostReason::Closed => "closed",
            LostReason::EngineStopped => "engine_stopped",
            LostReason::ConfigMismatch => "config_mismatch",
            LostReason::MaxHold => "max_hold",
        }
    }

    /// True for every reason except [`LostReason::Released`]: the lock ended
    /// without its holder asking.
    ///
    /// # Examples
    /// ```
    /// # use valkeylock_actors as valkeylock;
    /// use valkeylock::LostReason;
    ///
    /// assert!(LostReason::Expired.is_loss());
    /// assert!(!LostReason::Released.is_loss());
    /// ```
    pub fn is_loss(&self) -> bool {
        !matches!(self, LostReason::Released)
    }
}

/// Prose, for people; [`LostReason::as_str`] is the label for machines.
impl fmt::Display for LostReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LostReason::Released => "released by its holder",
            LostReason::Deleted => "its keys were deleted by someone else",
            LostReason::Overwritten => "its keys were overwritten by another owner",
            LostReason::Forced => "taken over by another locker's force_lock",
            LostReason::Expired => "its validity ran out before an extension was confirmed",
            LostReason::Unreachable => "the nodes of a majority of its keys became unreachable",
            LostReason::Closed => "the locker was closed",
            LostReason::EngineStopped => "the engine that extended it stopped",
            LostReason::ConfigMismatch => {
                "its keys are held by a locker with another key_majority or node count"
            }
            LostReason::MaxHold => "it was held for its maximum hold time",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages() {
        let e = Error::NotLocked {
            name: "n".into(),
            acquired: 1,
            needed: 2,
            total: 3,
            held_by_others: true,
        };
        assert_eq!(
            e.to_string(),
            "not locked: \"n\" acquired 1 of 2 needed keys (3 in all); held by another owner"
        );
        assert_eq!(Error::Closed.to_string(), "locker closed");
        let io = std::io::Error::other("refused");
        let e = Error::Connection {
            kind: ConnectionErrorKind::Unreachable,
            node: Some("redis://u:***@h:1".into()),
            message: "only 0 of 1 keys live on reachable nodes, 1 needed".into(),
            source: Some(Arc::new(io)),
        };
        assert_eq!(
            e.to_string(),
            "cannot connect to Valkey at redis://u:***@h:1: only 0 of 1 keys live on reachable nodes, 1 needed"
        );
        let source = std::error::Error::source(&e).expect("a source");
        assert_eq!(source.to_string(), "refused");
        // Clones share the source.
        let copy = e.clone();
        assert!(std::error::Error::source(&copy).is_some());
        let e = Error::Connection {
            kind: ConnectionErrorKind::Other,
            node: None,
            message: "cannot start the engine's thread".into(),
            source: None,
        };
        assert_eq!(
            e.to_string(),
            "cannot connect to Valkey: cannot start the engine's thread"
        );
        assert!(std::error::Error::source(&e).is_none());
        assert_eq!(
            ConnectionErrorKind::Authentication.to_string(),
            "authentication"
        );
        assert_eq!(LostReason::EngineStopped.as_str(), "engine_stopped");
        assert_eq!(
            LostReason::EngineStopped.to_string(),
            "the engine that extended it stopped"
        );
        assert!(!LostReason::Released.is_loss());
        assert!(LostReason::Deleted.is_loss());
        assert!(LostReason::MaxHold.is_loss());
        assert_eq!(
            Error::Timeout {
                name: "n".into(),
                waited: std::time::Duration::from_millis(1500),
            }
            .to_string(),
            "timed out after 1.5s waiting for lock \"n\""
        );
    }
}
