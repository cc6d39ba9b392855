//! Durations as people write them (`"5s"`, `"250ms"`, `"1m 30s"`), read and
//! written by the `humantime` crate; this module adds the typed error and a
//! bound.

use std::fmt;
use std::time::Duration;

/// The longest duration [`parse_duration`] reads: far beyond any sensible
/// option or timeout, and far below what `Instant + duration` can hold.
const MAX_PARSED: Duration = Duration::from_secs(1_000_000_000_000);

/// Parses a human-readable duration: one or more `<number><unit>` parts,
/// optionally separated by spaces (`"1m30s"`, `"1m 30s"`, `"250ms"`,
/// `"1.5s"`). Units: `ns`, `us`/`µs`, `ms`, `s`/`sec`, `m`/`min`,
/// `h`/`hours`, `d`/`days` and the other spellings of the `humantime` crate.
/// A number needs a unit (`"30"` is refused: seconds or milliseconds?),
/// except `"0"`. Surrounding whitespace is ignored.
///
/// # Errors
/// A [`ParseDurationError`] with the input and what is wrong with it.
///
/// # Examples
/// ```
/// # use valkeylock_actors as valkeylock;
/// use std::time::Duration;
/// use valkeylock::{parse_duration, DurationErrorKind};
/// assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
/// assert_eq!(parse_duration("30").unwrap_err().kind(), &DurationErrorKind::MissingUnit);
/// ```
pub fn parse_duration(text: &str) -> Result<Duration, ParseDurationError> {
    let trimmed = text.trim();
    let lead = text.len() - text.trim_start().len();
    let kind = match humantime::parse_duration(trimmed) {
        Ok(d) if d <= MAX_PARSED => return Ok(d),
        Ok(_) => DurationErrorKind::OutOfRange,
        Err(e) => match e {
            humantime::DurationError::Empty => DurationErrorKind::Empty,
            humantime::DurationError::UnknownUnit { unit, .. } if unit.is_empty() => {
                DurationErrorKind::MissingUnit
            }
            humantime::DurationError::UnknownUnit { unit, .. } => {
                DurationErrorKind::UnknownUnit(unit)
            }
            humantime::DurationError::InvalidCharacter(at)
            | humantime::DurationError::NumberExpected(at) => {
                DurationErrorKind::Malformed { at: lead + at }
            }
            humantime::DurationError::NumberOverflow => DurationErrorKind::OutOfRange,
        },
    };
    Err(ParseDurationError {
        input: text.to_owned(),
        kind,
    })
}

/// Formats a duration the way [`parse_duration`] reads it, for people:
/// `"5s"`, `"250ms"`, `"1m 30s"`, `"1s 500ms"`.
///
/// # Examples
/// ```
/// # use valkeylock_actors as valkeylock;
/// use std::time::Duration;
/// use valkeylock::{format_duration, parse_duration};
///
/// assert_eq!(format_duration(Duration::from_millis(90_000)), "1m 30s");
/// assert_eq!(format_duration(Duration::from_millis(1500)), "1s 500ms");
/// let d = Duration::from_millis(2250);
/// assert_eq!(parse_duration(&format_duration(d)), Ok(d));
/// ```
pub fn format_duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// A duration [`parse_duration`] refused: the input and what is wrong.
///
/// # Examples
/// ```
/// # use valkeylock_actors as valkeylock;
/// use valkeylock::{parse_duration, DurationErrorKind};
///
/// let e = parse_duration("5 parsecs").unwrap_err();
/// assert_eq!(e.input(), "5 parsecs");
/// assert_eq!(e.kind(), &DurationErrorKind::UnknownUnit("parsecs".into()));
/// println!("{e}");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseDurationError {
    input: String,
    kind: DurationErrorKind,
}

impl ParseDurationError {
    /// The text as given.
    pub fn input(&self) -> &str {
        &self.input
    }

    /// What is wrong with it.
    pub fn kind(&self) -> &DurationErrorKind {
        &self.kind
    }
}

impl fmt::Display for ParseDurationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid duration {:?}: {}", self.input, self.kind)
    }
}

impl std::error::Error for ParseDurationError {}

/// What is wrong with a duration's text.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DurationErrorKind {
    /// Nothing but whitespace.
    Empty,
    /// A number without a unit (`"30"`).
    MissingUnit,
    /// A unit that is not one of those [`parse_duration`] lists (the unit as
    /// written).
    UnknownUnit(String),
    /// A character that cannot start or continue a `<number><unit>` part
    /// (`"-1s"`, `"1..2s"`); `at` is its byte offset in the input.
    Malformed {
        /// Byte offset of the offending character in the input.
        at: usize,
    },
    /// Too large (more than 10¹² seconds), or finer than a nanosecond.
    OutOfRange,
}

impl fmt::Display for DurationErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DurationErrorKind::Empty => f.write_str("empty"),
            DurationErrorKind::MissingUnit => {
                f.write_str("missing unit (for example 500ms, 5s, 1m30s)")
            }
            DurationErrorKind::UnknownUnit(unit) => {
                write!(f, "unknown unit {unit:?} (ns, us, ms, s, m, h, d…)")
            }
            DurationErrorKind::Malformed { at } => {
                write!(f, "unexpected character at byte {at}")
            }
            DurationErrorKind::OutOfRange => f.write_str("too large, or finer than a nanosecond"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn parses() {
        let ok = [
            ("5s", ms(5000)),
            ("250ms", ms(250)),
            ("1.5s", ms(1500)),
            ("1m30s", ms(90_000)),
            ("1m 30s", ms(90_000)),
            ("2h", ms(7_200_000)),
            ("100us", Duration::from_micros(100)),
            ("100µs", Duration::from_micros(100)),
            ("7ns", Duration::from_nanos(7)),
            (" 3s ", ms(3000)),
            ("5sec", ms(5000)),
            ("2min", ms(120_000)),
            ("1d", ms(86_400_000)),
            ("0", Duration::ZERO),
            ("0s", Duration::ZERO),
        ];
        for (text, want) in ok {
            assert_eq!(parse_duration(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn refuses_with_the_reason() {
        use DurationErrorKind::*;
        let bad: [(&str, DurationErrorKind); 10] = [
            ("", Empty),
            ("   ", Empty),
            ("5", MissingUnit),
            ("1.5", MissingUnit),
            ("5 parsecs", UnknownUnit("parsecs".into())),
            ("s", Malformed { at: 0 }),
            (" -1s", Malformed { at: 1 }),
            ("1..2s", Malformed { at: 1 }),
            ("99999999999999999999s", OutOfRange),
            ("1000000000001s", OutOfRange),
        ];
        for (text, want) in bad {
            let e = parse_duration(text).expect_err(text);
            assert_eq!((e.input(), e.kind()), (text, &want), "{text}");
        }
        assert_eq!(
            parse_duration("5 parsecs").unwrap_err().to_string(),
            "invalid duration \"5 parsecs\": unknown unit \"parsecs\" (ns, us, ms, s, m, h, d…)"
        );
        assert_eq!(
            parse_duration("1000000000000s"),
            Ok(Duration::from_secs(1_000_000_000_000))
        );
    }

    #[test]
    fn formats_for_people_and_reads_back() {
        let cases = [
            (ms(5000), "5s"),
            (ms(250), "250ms"),
            (ms(90_000), "1m 30s"),
            (ms(1500), "1s 500ms"),
            (Duration::from_micros(1500), "1ms 500us"),
            (ms(86_400_000), "1day"),
            (Duration::ZERO, "0s"),
        ];
        for (d, want) in cases {
            assert_eq!(format_duration(d), want);
            assert_eq!(parse_duration(want), Ok(d), "{want}");
        }
    }
}
