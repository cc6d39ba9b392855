//! The terms of a grant: what one caller's request (or the locker's
//! options) sets for the keys it writes and for how long it may be held.

use std::time::Duration;

use super::quorum::Life;

/// The timing of one grant: the locker's options, or a caller's
/// `LockRequest`. Fixed for each command when it is sent (see [`Life`]), so a
/// grant that changes hands keeps counting what its keys really got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Terms {
    /// What each write sets on its key.
    pub(crate) life: Life,
    /// The longest wait between two extensions.
    pub(crate) extend: Duration,
    /// The holder is told this long before the computed end of validity.
    pub(crate) margin: Duration,
    /// How long after it was granted the grant ends on its own (extensions
    /// stop, the holder is told `LostReason::MaxHold`, the keys deleted).
    pub(crate) max_hold: Option<Duration>,
    /// `Some(n)` when the grant is a permit of a semaphore of `n` (one of
    /// its `n` slots, each a lock of its own): its tokens say so in their
    /// fingerprint, so that lockers that disagree on `n` meet as a
    /// configuration mismatch instead of each trusting its own count.
    pub(crate) permits: Option<u16>,
}

impl Terms {
    /// The terms of a validity with the default margin and no maximum hold.
    pub(crate) fn new(life: Life, extend: Duration) -> Terms {
        Terms {
            life,
            extend,
            margin: default_margin(life.ttl),
            max_hold: None,
            permits: None,
        }
    }
}

/// The early-notice margin for a validity: 1 % of it, between 1 ms and
/// 20 ms.
pub(crate) fn default_margin(validity: Duration) -> Duration {
    (validity / 100).clamp(Duration::from_millis(1), Duration::from_millis(20))
}
