//! `LockRequest`: what one call asks for beyond the locker's options (a wait
//! limit, its own validity, a maximum hold), and its check against them.

use std::time::Duration;

use crate::core::{quorum, Life, Terms};
use crate::duration::format_duration;
use crate::error::Error;
use crate::options::{extensions_fit, ttl_problem, Settings, MAX_DURATION};

/// Per-call options of an acquisition. Every field is optional; an empty
/// request is the locker's defaults (the same as `lock(name)`).
///
/// Pass it to `Locker::lock_with` or `Locker::try_lock_with`. It is only
/// checked there, against the locker's options: a request out of range fails
/// that call with [`Error::InvalidOptions`] before anything is sent.
///
/// # Examples
/// ```
/// # use valkeylock_actors as valkeylock;
/// use std::time::Duration;
/// use valkeylock::LockRequest;
///
/// let request = LockRequest::new()
///     .wait(Duration::from_secs(10))      // give up with Error::Timeout after 10 s
///     .validity(Duration::from_secs(30))  // keys live 30 s past each extension
///     .max_hold(Duration::from_secs(300)); // and the lock ends after 5 min held
/// assert_eq!(request.wait_limit(), Some(Duration::from_secs(10)));
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LockRequest {
    wait: Option<Duration>,
    validity: Option<Duration>,
    max_hold: Option<Duration>,
}

impl LockRequest {
    /// The locker's defaults: wait without limit, its `key_validity`, no
    /// maximum hold.
    ///
    /// # Examples
    /// ```
    /// # use valkeylock_actors as valkeylock;
    /// use valkeylock::LockRequest;
    ///
    /// let request = LockRequest::new();
    /// assert_eq!(request, LockRequest::default());
    /// assert_eq!(request.wait_limit(), None);
    /// ```
    pub fn new() -> LockRequest {
        LockRequest::default()
    }

    /// Waits at most `limit` for the lock, then fails with
    /// [`Error::Timeout`] and withdraws the wait. The limit is on the
    /// caller's clock, from the call; it covers an outage too (a `lock()`
    /// without one waits through it for as long as it lasts). Ignored by
    /// `try_lock` and `force_lock`, which never wait for a holder.
    ///
    /// # Examples
    /// ```
    /// # use valkeylock_actors as valkeylock;
    /// use std::time::Duration;
    /// use valkeylock::LockRequest;
    ///
    /// let request = LockRequest::new().wait(Duration::from_secs(5));
    /// assert_eq!(request.wait_limit(), Some(Duration::from_secs(5)));
    /// ```
    pub fn wait(mut self, limit: Duration) -> LockRequest {
        self.wait = Some(limit);
        self
    }

    /// The key TTL of this lock instead of the locker's `key_validity`:
    /// how long its keys outlive their last extension, so how long others
    /// wait after this process dies. Extensions come at least every
    /// `validity / 2` (or the locker's `extend_interval` if shorter). It must
    /// satisfy the locker's rules for `key_validity` (at least 10 ms, whole
    /// milliseconds, room for an extension within `try_next_after`); the
    /// acquisition fails with [`Error::InvalidOptions`] (field `validity`)
    /// otherwise.
    ///
    /// # Examples
    /// ```
    /// # use valkeylock_actors as valkeylock;
    /// use std::time::Duration;
    /// use valkeylock::LockRequest;
    ///
    /// let request = LockRequest::new().validity(Duration::from_secs(30));
    /// assert_eq!(request.validity_limit(), Some(Duration::from_secs(30)));
    /// ```
    pub fn validity(mut self, validity: Duration) -> LockRequest {
        self.validity = Some(validity);
        self
    }

    /// Ends the lock this long after it was granted: extensions stop, the
    /// holder's `lost()` says [`LostReason::MaxHold`](crate::LostReason::MaxHold),
    /// and the keys are deleted, whatever the holder is doing. `valid_until`
    /// never lies beyond it. A guard against a holder that hangs while its
    /// process keeps extending. It must be above 0 (the acquisition fails
    /// with [`Error::InvalidOptions`], field `max_hold`, otherwise).
    ///
    /// # Examples
    /// ```
    /// # use valkeylock_actors as valkeylock;
    /// use std::time::Duration;
    /// use valkeylock::LockRequest;
    ///
    /// let request = LockRequest::new().max_hold(Duration::from_secs(600));
    /// assert_eq!(request.max_hold_limit(), Some(Duration::from_secs(600)));
    /// ```
    pub fn max_hold(mut self, max_hold: Duration) -> LockRequest {
        self.max_hold = Some(max_hold);
        self
    }

    /// The wait limit, if any (see [`LockRequest::wait`]).
    ///
    /// # Examples
    /// ```
    /// # use valkeylock_actors as valkeylock;
    /// use std::time::Duration;
    /// use valkeylock::LockRequest;
    ///
    /// assert_eq!(LockRequest::new().wait_limit(), None);
    /// let request = LockRequest::new().wait(Duration::from_millis(250));
    /// assert_eq!(request.wait_limit(), Some(Duration::from_millis(250)));
    /// ```
    pub fn wait_limit(&self) -> Option<Duration> {
        self.wait
    }

    /// The validity asked for, if any (see [`LockRequest::validity`]).
    ///
    /// # Examples
    /// ```
    /// # use valkeylock_actors as valkeylock;
    /// use std::time::Duration;
    /// use valkeylock::LockRequest;
    ///
    /// assert_eq!(LockRequest::new().validity_limit(), None);
    /// let request = LockRequest::new().validity(Duration::from_secs(2));
    /// assert_eq!(request.validity_limit(), Some(Duration::from_secs(2)));
    /// ```
    pub fn validity_limit(&self) -> Option<Duration> {
        self.validity
    }

    /// The maximum hold, if any (see [`LockRequest::max_hold`]).
    ///
    /// # Examples
    /// ```
    /// # use valkeylock_actors as valkeylock;
    /// use std::time::Duration;
    /// use valkeylock::LockRequest;
    ///
    /// assert_eq!(LockRequest::new().max_hold_limit(), None);
    /// let request = LockRequest::new().max_hold(Duration::from_secs(60));
    /// assert_eq!(request.max_hold_limit(), Some(Duration::from_secs(60)));
    /// ```
    pub fn max_hold_limit(&self) -> Option<Duration> {
        self.max_hold
    }

    /// The terms of the grant this request asks for, checked against the
    /// locker's settings; `None` when it asks for the locker's own.
    pub(crate) fn terms(&self, s: &Settings) -> Result<Option<Terms>, Error> {
        let bad = |field: &'static str, reason: String| {
            Err(Error::InvalidOptions {
                field,
                reason: format!("in LockRequest: {reason}"),
            })
        };
        for (field, value) in [
            ("wait", self.wait),
            ("validity", self.validity),
            ("max_hold", self.max_hold),
        ] {
            if value.is_some_and(|d| d > MAX_DURATION) {
                return bad(
                    field,
                    format!("must be at most {}", format_duration(MAX_DURATION)),
                );
            }
        }
        if self.max_hold.is_some_and(|d| d.is_zero()) {
            return bad("max_hold", "must be above 0".into());
        }
        if self.validity.is_none() && self.max_hold.is_none() {
            return Ok(None);
        }
        let mut terms = Terms::new(
            Life {
                ttl: s.validity,
                drift: s.drift,
            },
            s.extend,
        );
        if let Some(ttl) = self.validity {
            if let Some(problem) = ttl_problem(ttl) {
                return bad("validity", problem);
            }
            let drift = s.drift_option.unwrap_or_else(|| quorum::default_drift(ttl));
            let extend = s.extend.min(ttl / 2);
            // The locker's own rule: an extension must land before the last
            // one runs out.
            if !extensions_fit(extend, s.timeout, ttl, drift) {
                return bad(
                    "validity",
                    format!(
                        "{} leaves no room for an extension: extension period ({}) + try_next_after ({}) must be below validity − clock_drift ({})",
                        format_duration(ttl),
                        format_duration(extend),
                        format_duration(s.timeout),
                        format_duration(ttl.saturating_sub(drift))
                    ),
                );
            }
            terms = Terms::new(Life { ttl, drift }, extend);
        }
        terms.max_hold = self.max_hold;
        Ok(Some(terms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::options::LockerOptions;

    fn settings() -> Settings {
        LockerOptions::new(["redis://127.0.0.1:6379"])
            .with_key_majority(1)
            .settings()
            .unwrap()
    }

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn an_empty_request_is_the_lockers_terms() {
        assert!(matches!(LockRequest::new().terms(&settings()), Ok(None)));
        let waits = LockRequest::new().wait(5 * MS);
        assert!(matches!(waits.terms(&settings()), Ok(None)));
    }

    #[test]
    fn a_validity_brings_its_own_drift_extension_and_margin() {
        let s = settings();
        // (validity ms, want: extend ms, drift ms, margin ms)
        let cases = [
            (30_000, s.extend.as_millis() as u64, 302, 20),
            (1000, 500, 12, 10),
            (600, 300, 8, 6),
        ];
        for (ttl, extend, drift, margin) in cases {
            let t = LockRequest::new()
                .validity(Duration::from_millis(ttl))
                .terms(&s)
                .unwrap()
                .unwrap();
            let ms = |n: u64| Duration::from_millis(n);
            assert_eq!(t.life.ttl, ms(ttl), "{ttl}");
            assert_eq!(t.extend, ms(extend), "{ttl}");
            assert_eq!(t.life.drift, ms(drift), "{ttl}");
            assert_eq!(t.margin, ms(margin), "{ttl}");
            assert_eq!(t.max_hold, None);
        }
    }

    #[test]
    fn a_max_hold_alone_keeps_the_lockers_validity() {
        let s = settings();
        let t = LockRequest::new()
            .max_hold(2000 * MS)
            .terms(&s)
            .unwrap()
            .unwrap();
        assert_eq!(t.life.ttl, s.validity);
        assert_eq!(t.life.drift, s.drift);
        assert_eq!(t.extend, s.extend);
        assert_eq!(t.max_hold, Some(2000 * MS));
    }

    #[test]
    fn bad_requests_name_their_field() {
        let s = settings();
        let field = |r: LockRequest| match r.terms(&s) {
            Err(Error::InvalidOptions { field, reason }) => {
                assert!(reason.starts_with("in LockRequest: "), "{reason}");
                field
            }
            other => panic!("{other:?}"),
        };
        let huge = MAX_DURATION + MS;
        assert_eq!(field(LockRequest::new().validity(5 * MS)), "validity");
        assert_eq!(
            field(LockRequest::new().validity(Duration::from_micros(20_500))),
            "validity"
        );
        // try_next_after defaults to 200 ms: 300 ms leaves no room
        // (150 ms between extensions + 200 ms > 300 ms − 5 ms).
        assert_eq!(field(LockRequest::new().validity(300 * MS)), "validity");
        assert_eq!(field(LockRequest::new().validity(huge)), "validity");
        assert_eq!(
            field(LockRequest::new().max_hold(Duration::ZERO)),
            "max_hold"
        );
        assert_eq!(field(LockRequest::new().max_hold(huge)), "max_hold");
        assert_eq!(field(LockRequest::new().wait(huge)), "wait");
    }
}
