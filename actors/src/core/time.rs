//! The core's notion of time: a point on the engine's clock, in nanoseconds
//! from an arbitrary origin.
//!
//! The core never reads a clock. The shell passes `now` with every event (read
//! from a clock that keeps counting while the host is suspended: the engine
//! module `clock`), and the simulator passes virtual time. Arithmetic
//! saturates: no event, however odd its timing, can make the core panic.

use std::fmt;
use std::ops::{Add, Sub};
use std::time::Duration;

/// A point on the engine's clock.
///
/// Kept as the nanoseconds plus one in a `NonZeroU64`, so that an
/// `Option<Time>` takes no more room than a `Time`: the lock core keeps
/// several (a grant's retry and maximum hold, when the lock went quiet, a
/// key's expiry cap), and its size is every held lock's memory (8 bytes
/// each; with the keys' boxed slices, a lock's state cell went from 664 to
/// 632 bytes: BENCHMARKS.md, section 6). The far end of the clock
/// saturates one nanosecond short of `u64::MAX`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Time(std::num::NonZeroU64);

impl Default for Time {
    fn default() -> Time {
        Time::from_nanos(0)
    }
}

impl Time {
    /// The origin (also the earliest representable instant).
    #[cfg(test)]
    pub(crate) const ZERO: Time = Time::from_nanos(0);

    pub(crate) const fn from_nanos(n: u64) -> Time {
        Time(std::num::NonZeroU64::MIN.saturating_add(n))
    }

    pub(crate) const fn as_nanos(self) -> u64 {
        self.0.get() - 1
    }

    /// How long after `earlier` this is; zero if it is not later.
    pub(crate) fn since(self, earlier: Time) -> Duration {
        Duration::from_nanos(self.as_nanos().saturating_sub(earlier.as_nanos()))
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// A span of time in whole nanoseconds: 8 bytes where a `Duration` takes
/// 16, for what a held lock keeps (see [`Time`] on why its size counts).
/// Saturates some 584 years on, far past anything the engine measures.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub(crate) struct Nanos(u64);

impl From<Duration> for Nanos {
    fn from(d: Duration) -> Nanos {
        Nanos(nanos(d))
    }
}

impl From<Nanos> for Duration {
    fn from(n: Nanos) -> Duration {
        Duration::from_nanos(n.0)
    }
}

impl fmt::Debug for Nanos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&Duration::from(*self), f)
    }
}

impl Add<Duration> for Time {
    type Output = Time;
    fn add(self, d: Duration) -> Time {
        Time::from_nanos(self.as_nanos().saturating_add(nanos(d)))
    }
}

impl Sub<Duration> for Time {
    type Output = Time;
    fn sub(self, d: Duration) -> Time {
        Time::from_nanos(self.as_nanos().saturating_sub(nanos(d)))
    }
}

impl fmt::Debug for Time {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.as_nanos();
        write!(f, "{}.{:06}ms", n / 1_000_000, n % 1_000_000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_saturates() {
        let t = Time::from_nanos(5);
        assert_eq!(t - Duration::from_nanos(9), Time::ZERO);
        assert_eq!(
            Time::from_nanos(u64::MAX) + Duration::MAX,
            Time::from_nanos(u64::MAX)
        );
        assert_eq!(t.since(Time::from_nanos(9)), Duration::ZERO);
        assert_eq!(Time::from_nanos(9).since(t), Duration::from_nanos(4));
        assert_eq!(format!("{:?}", Time::from_nanos(1_500_000)), "1.500000ms");
        assert_eq!(Time::ZERO.as_nanos(), 0);
        assert_eq!(Time::default(), Time::ZERO);
        assert_eq!(Time::from_nanos(7).as_nanos(), 7);
        assert!(Time::ZERO < Time::from_nanos(1));
    }

    #[test]
    fn an_optional_time_is_no_larger_than_a_time() {
        assert_eq!(
            std::mem::size_of::<Option<Time>>(),
            std::mem::size_of::<Time>()
        );
    }
}
