//! Leader election's decisions: where an election lives in Valkey, what a
//! term's record says, who leads given what was read, and what an observer
//! reports next. Plain functions, table-tested; `leader` runs them.
//!
//! # The design
//! An election `name` is the lock `{name}:election`, taken with a fencing
//! token whatever the locker's `fencing` option: the token is the term. A
//! candidate that wins the lock announces itself by adding a record (term,
//! the first characters of its token, its value) to the election's log
//! `{prefix}:terms:{name}` on every node, and leads once a majority of nodes
//! has the record while its lock is still held. The log keeps the last
//! [`LOG_LEN`] terms, ordered by term.
//!
//! Why a log rather than one "current leader" key: an observer that was
//! away (a disconnect, a slow reader) reads the terms it missed, in order,
//! instead of only the latest. Why records carry a token prefix, never the
//! token: anyone may read the log, and a token lets its reader release the
//! lock.
//!
//! The current leader is the lock's holder, named by the record whose token
//! prefix matches the holder's: a holder that has not announced itself yet
//! (or whose announcement was lost) is not reported.

use serde::Serialize;

use crate::error::Error;
use crate::keys;

/// What is appended to an election's name to make its lock's name.
pub(crate) const LOCK_SUFFIX: &str = ":election";

/// How many terms an election's log keeps on each node: an observer that
/// misses more changes than this while away reports the last
/// `LOG_LEN` of them.
pub const LOG_LEN: usize = 64;

/// The longest value a candidate may announce, in bytes: a value is a
/// name or an address, and every record is read by every observer.
pub const MAX_VALUE_LEN: usize = 4096;

/// A term of an election: who led (the value its candidate announced) and
/// the term number (the lock's fencing token: strictly greater for every
/// later leader).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[non_exhaustive]
pub struct Leader {
    /// What the leader announced in `campaign(value)`.
    pub value: String,
    /// The term number.
    pub term: u64,
}

impl Leader {
    /// A leader of `term` with `value`.
    pub fn new(value: impl Into<String>, term: u64) -> Leader {
        Leader {
            value: value.into(),
            term,
        }
    }
}

/// One term's record in the log: its number, the first characters of its
/// holder's token (as `inspect` shows owners), and the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Record {
    pub(crate) term: u64,
    pub(crate) tag: String,
    pub(crate) value: String,
}

impl Record {
    /// The sorted-set member that stores it (the term is the score).
    pub(crate) fn member(&self) -> String {
        let mut m = String::with_capacity(self.tag.len() + 1 + self.value.len());
        m.push_str(&self.tag);
        m.push('\n');
        m.push_str(&self.value);
        m
    }

    /// A member and its score read back; `None` for anything that is not
    /// one of our records (a third party's write never panics the reader).
    pub(crate) fn parse(member: &[u8], score: &[u8]) -> Option<Record> {
        let member = std::str::from_utf8(member).ok()?;
        let (tag, value) = member.split_once('\n')?;
        let term: u64 = std::str::from_utf8(score).ok()?.parse().ok()?;
        if tag.is_empty() || term == 0 {
            return None;
        }
        Some(Record {
            term,
            tag: tag.to_owned(),
            value: value.to_owned(),
        })
    }

    fn leader(&self) -> Leader {
        Leader::new(self.value.clone(), self.term)
    }
}

/// The lock an election runs on.
pub(crate) fn lock_name(name: &str) -> String {
    let mut lock = String::with_capacity(name.len() + LOCK_SUFFIX.len());
    lock.push_str(name);
    lock.push_str(LOCK_SUFFIX);
    lock
}

/// The election a lock name belongs to, if it is an election's lock.
pub(crate) fn of_lock(lock: &str) -> Option<&str> {
    lock.strip_suffix(LOCK_SUFFIX).filter(|n| !n.is_empty())
}

/// The key of an election's log on each node.
pub(crate) fn log_key(prefix: &str, name: &str) -> String {
    format!("{prefix}:terms:{name}")
}

/// The election whose log `key` is, if it is one.
pub(crate) fn of_log_key<'a>(prefix: &str, key: &'a [u8]) -> Option<&'a str> {
    let key = std::str::from_utf8(key).ok()?;
    key.strip_prefix(prefix)?
        .strip_prefix(":terms:")
        .filter(|n| !n.is_empty())
}

/// Checks an election's name (as the name of its lock, which is longer) and,
/// when campaigning, the value.
pub(crate) fn validate(
    prefix: &str,
    name: &str,
    value: Option<&str>,
    total: usize,
) -> Result<(), Error> {
    keys::validate_name(prefix, name, total)?;
    keys::validate_name(prefix, &lock_name(name), total).map_err(|e| match e {
        Error::InvalidName { reason, .. } => Error::InvalidName {
            name: keys::truncate_for_error(name),
            reason: if reason.starts_with("the name is longer") {
                "the name is too long for an election (its lock adds `:election`)"
            } else {
                reason
            },
        },
        other => other,
    })?;
    match value {
        Some(v) if v.len() > MAX_VALUE_LEN => Err(Error::InvalidOptions {
            field: "value",
            reason: format!(
                "a candidate's value is at most {MAX_VALUE_LEN} bytes, got {}",
                v.len()
            ),
        }),
        _ => Ok(()),
    }
}

/// Whether a failed log command was the server refusing it (permissions,
/// a key of another type, memory full, a script error): trying again does
/// not help, unlike a node that is down or slow.
pub(crate) fn is_refusal(reason: &str) -> bool {
    ["NOPERM", "ACL", "no permissions", "WRONGTYPE", "OOM", "ERR"]
        .iter()
        .any(|marker| reason.contains(marker))
}

/// The records of one look at every node's log, merged: each term once,
/// in term order. Two records of one term can only differ if a third party
/// wrote one; the first read wins.
pub(crate) fn merge(logs: impl IntoIterator<Item = Vec<Record>>) -> Vec<Record> {
    let mut all: Vec<Record> = logs.into_iter().flatten().collect();
    all.sort_by_key(|r| r.term);
    all.dedup_by_key(|r| r.term);
    all
}

/// The current leader: the newest record whose holder holds the lock now
/// (`holder`: the lock holder's token prefix, `None` when nobody holds it).
pub(crate) fn current(holder: Option<&str>, records: &[Record]) -> Option<Leader> {
    let holder = holder?;
    records
        .iter()
        .rev()
        .find(|r| r.tag == holder)
        .map(Record::leader)
}

/// What an observer does with one look.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Step {
    /// Too few nodes answered to be sure no term is missing: look again.
    Unsure,
    /// Report these leaders, in order (maybe none); the last term reported
    /// is now `last`.
    Report { leaders: Vec<Leader>, last: u64 },
}

/// An observer's next step. `last` is the newest term reported so far
/// (`None` before the first look). `read` of `nodes` nodes answered; a term
/// is announced to a majority of them before its leader leads, so a look
/// at a majority misses no announced term.
///
/// The first look reports the current leader only (`holder` as in
/// [`current`]), not the history before it; every later look reports every
/// term newer than `last`, in order, whether or not it still leads.
pub(crate) fn observe(
    last: Option<u64>,
    read: usize,
    nodes: usize,
    holder: Option<&str>,
    records: &[Record],
) -> Step {
    if read < nodes / 2 + 1 {
        return Step::Unsure;
    }
    let newest = records.last().map_or(0, |r| r.term);
    match last {
        None => {
            let leaders: Vec<Leader> = current(holder, records)
                .filter(|l| l.term == newest)
                .into_iter()
                .collect();
            Step::Report {
                leaders,
                last: newest,
            }
        }
        Some(last) => Step::Report {
            leaders: records
                .iter()
                .filter(|r| r.term > last)
                .map(Record::leader)
                .collect(),
            last: last.max(newest),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(term: u64, tag: &str, value: &str) -> Record {
        Record {
            term,
            tag: tag.to_owned(),
            value: value.to_owned(),
        }
    }

    #[test]
    fn records_round_trip_and_junk_is_skipped() {
        let r = rec(7, "0a1b2c3d", "host-1:8080\nwith a newline");
        let back = Record::parse(r.member().as_bytes(), b"7").expect("parses");
        assert_eq!(back, r);
        for (member, score) in [
            (&b"no newline"[..], &b"3"[..]),
            (b"\nvalue", b"3"),
            (b"tag\nvalue", b"-1"),
            (b"tag\nvalue", b"0"),
            (b"tag\nvalue", b"1.5"),
            (b"tag\nvalue", b"inf"),
            (b"\xff\xfe\nvalue", b"3"),
        ] {
            assert_eq!(Record::parse(member, score), None, "{member:?} {score:?}");
        }
    }

    #[test]
    fn names() {
        assert_eq!(lock_name("db"), "db:election");
        assert_eq!(of_lock("db:election"), Some("db"));
        assert_eq!(of_lock(":election"), None);
        assert_eq!(of_lock("db"), None);
        assert_eq!(log_key("valkeylock", "db"), "valkeylock:terms:db");
        assert_eq!(of_log_key("valkeylock", b"valkeylock:terms:db"), Some("db"));
        assert_eq!(of_log_key("valkeylock", b"valkeylock:terms:"), None);
        assert_eq!(of_log_key("valkeylock", b"valkeylock:0:db"), None);
        assert_eq!(of_log_key("valkeylock", b"other:terms:db"), None);
    }

    #[test]
    fn validation() {
        assert!(validate("valkeylock", "db", Some("me"), 3).is_ok());
        assert!(matches!(
            validate("valkeylock", "", None, 3),
            Err(Error::InvalidName { .. })
        ));
        let long = "x".repeat(crate::keys::MAX_NAME_LEN - 4);
        match validate("valkeylock", &long, None, 3) {
            Err(Error::InvalidName { reason, .. }) => assert!(reason.contains("election")),
            other => panic!("{other:?}"),
        }
        let big = "v".repeat(MAX_VALUE_LEN + 1);
        assert!(matches!(
            validate("valkeylock", "db", Some(&big), 3),
            Err(Error::InvalidOptions { field: "value", .. })
        ));
    }

    #[test]
    fn refusals() {
        for refused in [
            "NOPERM User x has no permissions to run the 'zadd' command",
            "WRONGTYPE Operation against a key holding the wrong kind of value",
            "OOM command not allowed when used memory > 'maxmemory'.",
            "ERR Error running script",
        ] {
            assert!(is_refusal(refused), "{refused}");
        }
        for transient in ["node not connected", "no answer within 1s", "Timeout Error"] {
            assert!(!is_refusal(transient), "{transient}");
        }
    }

    #[test]
    fn merging_orders_terms_once() {
        let merged = merge([
            vec![rec(3, "c", "C"), rec(5, "e", "E")],
            vec![rec(4, "d", "D"), rec(5, "e", "E")],
            vec![],
        ]);
        let terms: Vec<u64> = merged.iter().map(|r| r.term).collect();
        assert_eq!(terms, [3, 4, 5]);
    }

    #[test]
    fn the_current_leader_is_the_holder_with_a_record() {
        let log = [rec(3, "aaaa", "A"), rec(4, "bbbb", "B")];
        assert_eq!(current(Some("bbbb"), &log), Some(Leader::new("B", 4)));
        // An older holder still holding (its successor never won): itself.
        assert_eq!(current(Some("aaaa"), &log), Some(Leader::new("A", 3)));
        // A holder that has not announced itself yet: nobody.
        assert_eq!(current(Some("cccc"), &log), None);
        assert_eq!(current(None, &log), None);
    }

    #[test]
    fn observing() {
        let log = [
            rec(3, "aaaa", "A"),
            rec(4, "bbbb", "B"),
            rec(6, "cccc", "C"),
        ];
        // First look: the current leader only, if it is the newest term.
        assert_eq!(
            observe(None, 1, 1, Some("cccc"), &log),
            Step::Report {
                leaders: vec![Leader::new("C", 6)],
                last: 6
            }
        );
        // First look with nobody leading: nothing, but later terms count
        // from the newest.
        assert_eq!(
            observe(None, 1, 1, None, &log),
            Step::Report {
                leaders: vec![],
                last: 6
            }
        );
        // An old holder whose successor already announced: not current.
        assert_eq!(
            observe(None, 1, 1, Some("bbbb"), &log),
            Step::Report {
                leaders: vec![],
                last: 6
            }
        );
        // Later: every newer term, in order, led or gone.
        assert_eq!(
            observe(Some(3), 3, 3, None, &log),
            Step::Report {
                leaders: vec![Leader::new("B", 4), Leader::new("C", 6)],
                last: 6
            }
        );
        // Nothing new.
        assert_eq!(
            observe(Some(6), 2, 3, Some("cccc"), &log),
            Step::Report {
                leaders: vec![],
                last: 6
            }
        );
        // A minority of nodes read: a term may be missing.
        assert_eq!(observe(Some(3), 1, 3, None, &log), Step::Unsure);
        assert_eq!(observe(None, 2, 5, None, &log), Step::Unsure);
        // An empty log (a node restarted empty) never moves `last` back.
        assert_eq!(
            observe(Some(6), 1, 1, None, &[]),
            Step::Report {
                leaders: vec![],
                last: 6
            }
        );
    }
}
