//! Read-write locks: what a read-write lock is made of, and the rule that
//! keeps readers and writers apart. Plain functions, table-tested; the
//! engine (`handle`) and the node's gated acquire script run them.
//!
//! # The design
//! A read-write lock `name` is `MAX_READERS + 1` locks of the engine:
//! - the writer's lock, taken with a fencing token (whatever the locker's
//!   `fencing` option);
//! - one lock per reader slot, `MAX_READERS` of them: a reader holds one
//!   slot, as a permit of a semaphore.
//!
//! Each is a lock with all a lock's guarantees (majority, validity on the
//! holder's clock, extension, loss signal, release on drop). What makes them
//! a read-write lock is a gate in the script that takes a free key
//! (`RW_ACQUIRE_LUA`): key `i` of a reader's slot is taken only if key `i`
//! of the writer's lock is absent, and so is the writer's intent key `i`;
//! key `i` of the writer's lock only if key `i` of every reader slot is
//! absent. All keys of index `i` share one hash tag, `{prefix:i:name}`
//! (`{valkeylock:0:db}:w`, `{valkeylock:0:db}:r5`, `{valkeylock:0:db}:i`),
//! and the node placement of index `i`: each gate is one atomic step on one
//! node or cluster slot, while the indices still spread over the nodes (or
//! the cluster's slots) as a lock's keys do.
//!
//! Why that excludes a reader and a writer: a reader holds a majority of its
//! slot's keys and the writer a majority of its keys, so some index `i` has
//! both. On that node, whichever key was taken second was taken while the
//! other was absent: the other had expired or been deleted in between, and
//! a holder is told before its keys can expire. Lost keys are taken back
//! only through the same gate.
//!
//! Writers do not starve: a writer refused by a reader leaves its intent (a
//! key that lapses after the validity, refreshed at every retry, which comes
//! at least every extension interval), and new readers are refused while it
//! is there. Readers already in hold on; the writer is woken as each leaves.
//!
//! The engine knows these locks by internal names, `{name}\u{1f}w` and
//! `{name}\u{1f}r{j}` (a separator no lock name may contain), which route
//! requests and invalidations to their `LockActor`s.

use std::sync::Arc;

use crate::error::Error;
use crate::keys;

/// How many readers may hold a read-write lock at once: each holds one of
/// this many slots, and a writer's gate looks at every slot's key.
pub const MAX_READERS: u32 = 128;

/// How many slots a reader tries, and then waits on, before it holds one.
pub(crate) const READER_TRIES: usize = 3;

/// Which side of a read-write lock a lock name is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    /// A reader's slot.
    Read,
    /// The writer's lock.
    Write,
}

impl Side {
    /// The script's argument for the side.
    pub(crate) fn as_arg(self) -> &'static str {
        match self {
            Side::Read => "r",
            Side::Write => "w",
        }
    }
}

/// What gates one key of a side of a read-write lock: the side, and the
/// keys of [`gates`] for its index.
#[derive(Debug)]
pub(crate) struct Gates {
    pub(crate) side: Side,
    pub(crate) keys: Vec<Arc<str>>,
}

/// The separator of the internal lock names.
const SEP: char = '\u{1f}';

/// The writer's lock of read-write lock `name`.
pub(crate) fn writer(name: &str) -> String {
    format!("{name}{SEP}w")
}

/// Reader slot `slot` of read-write lock `name`.
pub(crate) fn reader(name: &str, slot: u32) -> String {
    format!("{name}{SEP}r{slot}")
}

/// The read-write lock an internal lock name belongs to, and its side (the
/// writer's intent is neither).
pub(crate) fn side_of(lock: &str) -> Option<(&str, Side)> {
    let (base, part) = lock.rsplit_once(SEP)?;
    if base.is_empty() {
        return None;
    }
    if part == "w" {
        return Some((base, Side::Write));
    }
    let slot = part.strip_prefix('r')?;
    let valid = !slot.is_empty()
        && slot.len() <= 3
        && slot.bytes().all(|b| b.is_ascii_digit())
        && (slot == "0" || !slot.starts_with('0'))
        && slot.parse::<u32>().is_ok_and(|j| j < MAX_READERS);
    valid.then_some((base, Side::Read))
}

/// The Valkey key `index` of an internal lock name (`lock` from
/// [`writer`] or [`reader`], or the intent's `{name}\u{1f}i`):
/// `{prefix:index:name}:part`.
pub(crate) fn key_name(prefix: &str, index: usize, lock: &str) -> String {
    let (base, part) = lock.rsplit_once(SEP).unwrap_or((lock, ""));
    format!("{{{}}}:{part}", keys::key_name(prefix, index, base))
}

/// Parses a key of a read-write lock back into its index and internal
/// lock name; `None` for anything else.
pub(crate) fn parse_key(prefix: &str, total: usize, key: &[u8]) -> Option<(usize, String)> {
    let rest = key.strip_prefix(b"{")?;
    let close = rest.iter().position(|&b| b == b'}')?;
    let (index, base) = keys::parse_key(prefix, total, &rest[..close])?;
    let part = std::str::from_utf8(rest[close + 1..].strip_prefix(b":")?).ok()?;
    let lock = format!("{base}{SEP}{part}");
    (part == "i" || side_of(&lock).is_some()).then_some((index, lock))
}

/// The keys that gate key `index` of a side of read-write lock `base`: for
/// a reader, the writer's key and its intent; for the writer, its intent
/// (set when refused), then every reader slot's key.
pub(crate) fn gates(prefix: &str, base: &str, side: Side, index: usize) -> Vec<String> {
    let intent = key_name(prefix, index, &format!("{base}{SEP}i"));
    match side {
        Side::Read => vec![key_name(prefix, index, &writer(base)), intent],
        Side::Write => std::iter::once(intent)
            .chain((0..MAX_READERS).map(|j| key_name(prefix, index, &reader(base, j))))
            .collect(),
    }
}

/// Whom else a change to a key of internal lock `lock` may let in, besides
/// its own waiters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Wakes<'a> {
    /// The readers of this read-write lock: the writer released, or its
    /// intent lapsed.
    Readers(&'a str),
    /// This writer's lock: a reader released.
    Writer(String),
}

/// Who else to wake when a key of `lock` changes.
pub(crate) fn wakes(lock: &str) -> Option<Wakes<'_>> {
    if let Some(base) = lock
        .strip_suffix(&format!("{SEP}i"))
        .filter(|b| !b.is_empty())
    {
        return Some(Wakes::Readers(base));
    }
    match side_of(lock)? {
        (base, Side::Write) => Some(Wakes::Readers(base)),
        (base, Side::Read) => Some(Wakes::Writer(writer(base))),
    }
}

/// The prefix of the reader slots' internal names of `base`.
pub(crate) fn readers_prefix(base: &str) -> String {
    format!("{base}{SEP}r")
}

/// A lock name a caller may not use: it is one of a read-write lock's.
pub(crate) fn is_reserved(name: &str) -> bool {
    name.contains(SEP)
}

/// Checks a read-write lock's name (valid as a lock name, without braces
/// or the internal separator) and the key prefix (no braces: the keys' hash tag
/// holds the prefix, and a brace there would put every index on one slot).
pub(crate) fn validate(prefix: &str, name: &str, total: usize) -> Result<(), Error> {
    if prefix.contains(['{', '}']) {
        return Err(Error::InvalidOptions {
            field: "key_prefix",
            reason:
                "read-write locks need a key prefix without braces: their keys' hash tags hold it"
                    .into(),
        });
    }
    keys::validate_name(prefix, name, total)?;
    if is_reserved(name) || name.contains(['{', '}']) {
        return Err(Error::InvalidName {
            name: keys::truncate_for_error(name),
            reason: "a read-write lock's name may not contain braces (its keys' hash tags hold it) or U+001F",
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_sides() {
        assert_eq!(side_of(&writer("db")), Some(("db", Side::Write)));
        assert_eq!(side_of(&reader("db", 0)), Some(("db", Side::Read)));
        assert_eq!(side_of(&reader("db", 127)), Some(("db", Side::Read)));
        assert_eq!(side_of(&reader("a:b", 3)), Some(("a:b", Side::Read)));
        for not in [
            "db",
            "db:write",
            "\u{1f}w",
            "db\u{1f}",
            "db\u{1f}r",
            "db\u{1f}r128",
            "db\u{1f}r07",
            "db\u{1f}rx",
            "db\u{1f}i",
            "db\u{1f}ww",
        ] {
            assert_eq!(side_of(not), None, "{not:?}");
        }
        assert!(is_reserved("a\u{1f}b"));
        assert!(!is_reserved("a:b"));
    }

    #[test]
    fn keys_round_trip_and_share_a_tag_per_index() {
        let w = key_name("vl", 2, &writer("db"));
        assert_eq!(w, "{vl:2:db}:w");
        assert_eq!(key_name("vl", 0, &reader("db", 5)), "{vl:0:db}:r5");
        for lock in [
            writer("db"),
            reader("db", 9),
            reader("a:b", 1),
            format!("db{SEP}i"),
        ] {
            for index in 0..3 {
                let key = key_name("vl", index, &lock);
                assert_eq!(
                    parse_key("vl", 3, key.as_bytes()),
                    Some((index, lock.clone())),
                    "{key}"
                );
            }
        }
        for junk in [
            "vl:0:db",
            "{vl:0:db}",
            "{vl:0:db}:x",
            "{vl:3:db}:w",
            "{other:0:db}:w",
            "{vl:0:db}:r200",
            "{vl:0:db:w",
        ] {
            assert_eq!(parse_key("vl", 3, junk.as_bytes()), None, "{junk}");
        }
        let r = gates("vl", "db", Side::Read, 2);
        assert_eq!(r, ["{vl:2:db}:w", "{vl:2:db}:i"]);
        let g = gates("vl", "db", Side::Write, 0);
        assert_eq!(g.len(), 1 + MAX_READERS as usize);
        assert_eq!(g[0], "{vl:0:db}:i");
        assert_eq!(g[1], "{vl:0:db}:r0");
        // One cluster slot per index, another for each index.
        for k in r.iter() {
            assert_eq!(keys::hashed_part(k), "vl:2:db");
        }
        for k in g.iter() {
            assert_eq!(keys::hashed_part(k), "vl:0:db");
        }
    }

    #[test]
    fn who_else_wakes() {
        assert_eq!(wakes(&writer("db")), Some(Wakes::Readers("db")));
        assert_eq!(wakes(&format!("db{SEP}i")), Some(Wakes::Readers("db")));
        assert_eq!(wakes(&reader("db", 5)), Some(Wakes::Writer(writer("db"))));
        assert_eq!(wakes("db"), None);
        assert!(reader("db", 7).starts_with(&readers_prefix("db")));
    }

    #[test]
    fn validation() {
        assert!(validate("valkeylock", "db", 3).is_ok());
        assert!(matches!(
            validate("valkeylock", "", 3),
            Err(Error::InvalidName { .. })
        ));
        for bad in ["a\u{1f}w", "a{b}c", "a}"] {
            assert!(
                matches!(
                    validate("valkeylock", bad, 3),
                    Err(Error::InvalidName { .. })
                ),
                "{bad:?}"
            );
        }
        assert!(matches!(
            validate("x{y}", "db", 3),
            Err(Error::InvalidOptions {
                field: "key_prefix",
                ..
            })
        ));
    }
}
