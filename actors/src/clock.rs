//! The engine's clock: `CLOCK_BOOTTIME` on Linux.
//!
//! Why not `Instant` (`CLOCK_MONOTONIC`): it stops while the host is suspended
//! or a VM is paused, but key TTLs on the servers keep running. A holder that
//! woke from a suspend would compute its validity on a clock that missed the
//! pause and call a long-expired lock held. `CLOCK_BOOTTIME` counts the
//! suspended time, so every deadline the lock core computes stays a deadline
//! in server time (up to the drift allowance). Elsewhere the monotonic clock is
//! the best there is.
//!
//! Tokio's timers still sleep on the monotonic clock, so the engine never
//! sleeps long on one: the timer task wakes at least every [`MAX_SLEEP`] and
//! compares deadlines against this clock (see `timers`).

use std::time::Duration;

use crate::core::Time;

/// The longest the engine sleeps on tokio's (monotonic) timer before it looks
/// at this clock again: bounds how late a deadline fires after a resume.
pub(crate) const MAX_SLEEP: Duration = Duration::from_millis(250);

/// Now, on the engine's clock.
#[cfg(target_os = "linux")]
pub(crate) fn now() -> Time {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
    let nanos = u64::try_from(ts.tv_sec)
        .unwrap_or(0)
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::try_from(ts.tv_nsec).unwrap_or(0));
    Time::from_nanos(nanos)
}

/// Now, on the engine's clock.
#[cfg(not(target_os = "linux"))]
pub(crate) fn now() -> Time {
    use std::sync::OnceLock;
    static ORIGIN: OnceLock<std::time::Instant> = OnceLock::new();
    let origin = *ORIGIN.get_or_init(std::time::Instant::now);
    Time::from_nanos(u64::try_from(origin.elapsed().as_nanos()).unwrap_or(u64::MAX))
}

/// The tokio instant that corresponds to `t` now (for the public API, which
/// speaks `tokio::time::Instant`).
pub(crate) fn to_instant(t: Time) -> tokio::time::Instant {
    let (clock, mono) = (now(), tokio::time::Instant::now());
    if t >= clock {
        mono + t.since(clock)
    } else {
        mono.checked_sub(clock.since(t)).unwrap_or(mono)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    #[test]
    fn reads_boottime_not_monotonic() {
        // Read CLOCK_BOOTTIME and CLOCK_MONOTONIC around `now()`: the engine's
        // clock lies between the boottime readings. Where the host was ever
        // suspended, the monotonic clock is behind by the time spent asleep,
        // so this fails for an implementation on `Instant`.
        use rustix::time::{clock_gettime, ClockId};
        let read = |id| {
            let ts = clock_gettime(id);
            ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
        };
        let before = read(ClockId::Boottime);
        let t = now().as_nanos();
        let after = read(ClockId::Boottime);
        assert!(before <= t && t <= after, "{before} {t} {after}");
    }

    #[test]
    fn instants_round_trip() {
        let t = now() + Duration::from_secs(3);
        let i = to_instant(t);
        let left = i.saturating_duration_since(tokio::time::Instant::now());
        assert!(left > Duration::from_millis(2900) && left <= Duration::from_secs(3));
        let past = to_instant(Time::ZERO);
        assert!(past <= tokio::time::Instant::now());
    }
}
