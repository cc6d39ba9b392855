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
//! The timer task sleeps on this clock too ([`Sleeper`]: a `timerfd` on
//! `CLOCK_BOOTTIME`, to the nanosecond). Tokio's timers would round every
//! deadline up to the next millisecond tick, which turns a pause of a few
//! hundred microseconds (the head start a release gives other processes) into
//! one to two milliseconds, and they sleep on the monotonic clock. Elsewhere
//! than Linux the task sleeps on tokio's timer, at most [`MAX_SLEEP`] at a
//! time, and compares deadlines against this clock when it wakes.

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

/// Sleeps until an instant of the engine's clock: a `timerfd` on
/// `CLOCK_BOOTTIME` armed with an absolute deadline, polled by the runtime's
/// I/O driver. Precise to the kernel's timer slack (tens of microseconds),
/// and it counts suspended time like the deadlines it waits for.
#[cfg(target_os = "linux")]
pub(crate) struct Sleeper {
    fd: Option<tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>>,
}

#[cfg(target_os = "linux")]
impl Sleeper {
    /// Must be called inside the runtime that will poll it. Without a timerfd
    /// (a seccomp filter, no file descriptors left) it falls back to tokio's
    /// timer.
    pub(crate) fn new() -> Sleeper {
        use rustix::time::{timerfd_create, TimerfdClockId, TimerfdFlags};
        let fd = timerfd_create(
            TimerfdClockId::Boottime,
            TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC,
        )
        .ok()
        .and_then(|fd| {
            // Deprecated in recent tokio as unsound for types whose raw fd
            // can change or close while registered; an `OwnedFd` owned by the
            // `AsyncFd` itself cannot (it closes only after deregistration),
            // and the replacement does not exist in the tokio versions this
            // crate supports.
            #[allow(deprecated)]
            tokio::io::unix::AsyncFd::new(fd).ok()
        });
        Sleeper { fd }
    }

    /// Returns at `at` or soon after; may return earlier (a stale expiry of
    /// an earlier deadline), so callers compare with [`now`] again.
    pub(crate) async fn until(&self, at: Time) {
        use rustix::time::{timerfd_settime, Itimerspec, TimerfdTimerFlags, Timespec};
        let Some(fd) = &self.fd else {
            return tokio::time::sleep(at.since(now()).min(MAX_SLEEP)).await;
        };
        let n = at.as_nanos().max(1);
        let spec = Itimerspec {
            it_interval: Timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: Timespec {
                tv_sec: i64::try_from(n / 1_000_000_000).unwrap_or(i64::MAX),
                tv_nsec: (n % 1_000_000_000) as _,
            },
        };
        if timerfd_settime(fd.get_ref(), TimerfdTimerFlags::ABSTIME, &spec).is_err() {
            return tokio::time::sleep(at.since(now()).min(MAX_SLEEP)).await;
        }
        loop {
            let Ok(mut ready) = fd.readable().await else {
                return tokio::time::sleep(at.since(now()).min(MAX_SLEEP)).await;
            };
            let mut ticks = [0u8; 8];
            match rustix::io::read(fd.get_ref(), &mut ticks) {
                Ok(_) => return,
                Err(rustix::io::Errno::AGAIN) => ready.clear_ready(),
                Err(_) => return tokio::time::sleep(at.since(now()).min(MAX_SLEEP)).await,
            }
        }
    }
}

/// Sleeps until an instant of the engine's clock: tokio's timer, at most
/// [`MAX_SLEEP`] at a time.
#[cfg(not(target_os = "linux"))]
pub(crate) struct Sleeper;

#[cfg(not(target_os = "linux"))]
impl Sleeper {
    pub(crate) fn new() -> Sleeper {
        Sleeper
    }

    /// Returns at `at`, or after [`MAX_SLEEP`], whichever is first.
    pub(crate) async fn until(&self, at: Time) {
        tokio::time::sleep(at.since(now()).min(MAX_SLEEP)).await
    }
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
    #[tokio::test]
    async fn the_sleeper_wakes_at_its_deadline_not_before() {
        let sleeper = Sleeper::new();
        for micros in [0u64, 300, 2_000] {
            let at = now() + Duration::from_micros(micros);
            // A wake may be early only from a stale expiry, which a fresh
            // deadline after a fired one cannot leave.
            sleeper.until(at).await;
            assert!(now() >= at, "woke before a deadline {micros} µs away");
        }
        // Re-arming for a later deadline before the earlier one fires.
        let far = now() + Duration::from_secs(60);
        let near = now() + Duration::from_millis(1);
        tokio::select! {
            _ = sleeper.until(far) => panic!("woke a minute early"),
            _ = tokio::time::sleep(Duration::from_millis(1)) => {}
        }
        sleeper.until(near).await;
        assert!(now() >= near);
    }

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
