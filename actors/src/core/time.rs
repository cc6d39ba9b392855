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
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub(crate) struct Time(u64);

impl Time {
    /// The origin (also the earliest representable instant).
    #[cfg(test)]
    pub(crate) const ZERO: Time = Time(0);

    pub(crate) const fn from_nanos(n: u64) -> Time {
        Time(n)
    }

    pub(crate) const fn as_nanos(self) -> u64 {
        self.0
    }

    /// How long after `earlier` this is; zero if it is not later.
    pub(crate) fn since(self, earlier: Time) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Add<Duration> for Time {
    type Output = Time;
    fn add(self, d: Duration) -> Time {
        Time(self.0.saturating_add(nanos(d)))
    }
}

impl Sub<Duration> for Time {
    type Output = Time;
    fn sub(self, d: Duration) -> Time {
        Time(self.0.saturating_sub(nanos(d)))
    }
}

impl fmt::Debug for Time {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:06}ms", self.0 / 1_000_000, self.0 % 1_000_000)
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
    }
}
