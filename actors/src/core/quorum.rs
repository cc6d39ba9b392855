//! Pure majority and timing math. No I/O, no clocks read here: callers pass
//! `Instant`s in, so every rule is a table test.
//!
//! The safety rule: a holder's validity ends at the earliest moment another
//! client could hold `M` keys. Each key we hold was written no earlier than the
//! moment we *sent* the write, so it lives at least until `sent + ttl − drift`
//! (drift bounds how much faster the server's clock may run than ours over one
//! TTL). Another client needs `M` keys; with `h ≥ M` keys ours it must wait for
//! `h − M + 1` of them to expire, i.e. for the `M`-th largest expiry.

use super::Time;
use std::time::Duration;

/// Number of keys of a lock for a majority of `m`: `2·m − 1`.
pub(crate) const fn total_keys(majority: usize) -> usize {
    2 * majority - 1
}

/// The placement rank of the node that holds key `index` when there are
/// `nodes` nodes (`Settings::node_of_key` maps the rank to the user's list).
pub(crate) const fn node_of_key(index: usize, nodes: usize) -> usize {
    index % nodes
}

/// The default clock-drift allowance for a TTL: 1 % of it plus 2 ms (the figure
/// from the Redlock description, also used by rslock and redsync).
pub(crate) fn default_drift(ttl: Duration) -> Duration {
    ttl / 100 + Duration::from_millis(2)
}

/// The earliest moment a key written at `sent` with `ttl` can expire, minus the
/// drift allowance.
pub(crate) fn key_expiry(sent: Time, ttl: Duration, drift: Duration) -> Time {
    sent + ttl.saturating_sub(drift)
}

/// How long a write makes its key live: the TTL it sets, and the drift
/// allowance taken off it. Each acquisition and extension carries its own, so
/// grants of one name with different validities (per-call
/// `LockRequest::validity`) are each counted by what their commands wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Life {
    pub(crate) ttl: Duration,
    pub(crate) drift: Duration,
}

impl Life {
    /// A TTL with the default drift allowance ([`default_drift`]).
    #[cfg(test)]
    pub(crate) fn of(ttl: Duration) -> Life {
        Life {
            ttl,
            drift: default_drift(ttl),
        }
    }

    /// The earliest moment a key written at `sent` can expire, drift taken off.
    pub(crate) fn expiry(&self, sent: Time) -> Time {
        key_expiry(sent, self.ttl, self.drift)
    }
}

/// The moment the lock stops being safe: the `majority`-th largest expiry among
/// the keys we hold, or `None` when we hold fewer than `majority` keys.
pub(crate) fn validity_end<T, I>(expiries: I, majority: usize) -> Option<T>
where
    T: Ord + Copy,
    I: IntoIterator<Item = T>,
{
    // At most 2·M−1 keys: up to 15 (M ≤ 8) in a buffer on the stack, more in
    // a vector; sorted descending. This runs at every reply and extension.
    const INLINE: usize = 15;
    let mut buf: [Option<T>; INLINE] = [None; INLINE];
    let mut more: Vec<T> = Vec::new();
    let mut n = 0;
    for expiry in expiries {
        if n < INLINE {
            buf[n] = Some(expiry);
        } else {
            if more.is_empty() {
                more.extend(buf.iter().flatten());
            }
            more.push(expiry);
        }
        n += 1;
    }
    if n < majority || majority == 0 {
        return None;
    }
    if n <= INLINE {
        let held = &mut buf[..n];
        held.sort_unstable_by(|a, b| b.cmp(a));
        held[majority - 1]
    } else {
        more.sort_unstable_by(|a, b| b.cmp(a));
        Some(more[majority - 1])
    }
}

/// Outcome of an acquisition so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tally {
    /// At least `M` keys are ours.
    Won,
    /// More than `M − 1` keys can no longer become ours.
    Lost,
    /// Still waiting for replies.
    Open,
}

/// Decides an acquisition from the counts of keys won, keys that failed, and the
/// total.
pub(crate) fn tally(won: usize, failed: usize, total: usize, majority: usize) -> Tally {
    if won >= majority {
        Tally::Won
    } else if total - failed < majority {
        Tally::Lost
    } else {
        Tally::Open
    }
}

/// Exponential backoff with a cap: `base · 2^attempt`, at most `cap`.
pub(crate) fn backoff(attempt: u32, base: Duration, cap: Duration) -> Duration {
    let factor = 1u32.checked_shl(attempt.min(20)).unwrap_or(u32::MAX);
    base.saturating_mul(factor).min(cap)
}

/// Spreads `d` by ±`pct` percent using `entropy` (any random u64), so that many
/// lockers with the same period do not retry in lock step.
pub(crate) fn jitter(d: Duration, pct: u32, entropy: u64) -> Duration {
    if pct == 0 {
        return d;
    }
    let span = u64::from(pct.min(100)) * 2 + 1;
    let offset = (entropy % span) as i64 - i64::from(pct.min(100));
    let nanos = d.as_nanos() as i128;
    let shifted = nanos + nanos * i128::from(offset) / 100;
    Duration::from_nanos(shifted.max(0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn totals_and_placement() {
        assert_eq!(total_keys(1), 1);
        assert_eq!(total_keys(2), 3);
        assert_eq!(total_keys(3), 5);
        let cases = [
            (0, 1, 0),
            (2, 1, 0),
            (0, 3, 0),
            (1, 3, 1),
            (2, 3, 2),
            (2, 2, 0),
            (4, 3, 1),
        ];
        for (i, n, want) in cases {
            assert_eq!(node_of_key(i, n), want, "key {i} nodes {n}");
        }
    }

    #[test]
    fn drift() {
        assert_eq!(default_drift(ms(5000)), ms(52));
        assert_eq!(default_drift(ms(100)), ms(3));
        let t0 = Time::from_nanos(7);
        assert_eq!(key_expiry(t0, ms(5000), ms(52)), t0 + ms(4948));
        assert_eq!(key_expiry(t0, ms(10), ms(52)), t0);
    }

    #[test]
    fn validity() {
        let t0 = Time::from_nanos(7);
        let at = |n: u64| t0 + ms(n);
        let cases: &[(&[u64], usize, Option<u64>)] = &[
            (&[], 1, None),
            (&[100], 1, Some(100)),
            (&[100, 300, 200], 1, Some(300)),
            (&[100, 300, 200], 2, Some(200)),
            (&[100, 300, 200], 3, Some(100)),
            (&[100, 300], 2, Some(100)),
            (&[300], 2, None),
            (&[100, 100, 50, 400, 20], 3, Some(100)),
        ];
        for (exp, m, want) in cases {
            let got = validity_end(exp.iter().map(|&e| at(e)), *m);
            assert_eq!(got, want.map(at), "expiries {exp:?} majority {m}");
        }
        // Past the buffer on the stack (15): the same rule. Expiries 1..=n
        // in a scrambled order; the m-th largest is n + 1 − m.
        for (n, m) in [
            (15u64, 8usize),
            (16, 9),
            (17, 9),
            (31, 16),
            (127, 64),
            (16, 17),
        ] {
            let exp: Vec<u64> = (1..=n).map(|i| (i * 7) % n + 1).collect();
            let want = (m as u64 <= n).then(|| at(n + 1 - m as u64));
            let got = validity_end(exp.iter().map(|&e| at(e)), m);
            assert_eq!(got, want, "{n} keys, majority {m}");
        }
    }

    #[test]
    fn tallies() {
        let cases = [
            (0, 0, 3, 2, Tally::Open),
            (1, 0, 3, 2, Tally::Open),
            (2, 0, 3, 2, Tally::Won),
            (1, 1, 3, 2, Tally::Open),
            (0, 2, 3, 2, Tally::Lost),
            (1, 2, 3, 2, Tally::Lost),
            (1, 0, 1, 1, Tally::Won),
            (0, 1, 1, 1, Tally::Lost),
            (2, 3, 5, 3, Tally::Lost),
            (3, 2, 5, 3, Tally::Won),
        ];
        for (won, failed, total, m, want) in cases {
            assert_eq!(
                tally(won, failed, total, m),
                want,
                "{won}/{failed}/{total} m={m}"
            );
        }
    }

    #[test]
    fn backoffs() {
        let cases = [
            (0, 50),
            (1, 100),
            (2, 200),
            (5, 1600),
            (6, 2000),
            (40, 2000),
        ];
        for (n, want) in cases {
            assert_eq!(backoff(n, ms(50), ms(2000)), ms(want), "attempt {n}");
        }
    }

    #[test]
    fn jitters() {
        for entropy in [0u64, 1, 7, 20, 21, 40, 41, 12345, u64::MAX] {
            let j = jitter(ms(1000), 20, entropy);
            assert!(j >= ms(800) && j <= ms(1200), "{j:?}");
        }
        assert_eq!(jitter(ms(1000), 0, 99), ms(1000));
    }
}
