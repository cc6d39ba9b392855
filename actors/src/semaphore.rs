//! Semaphores: `permits` slots per name, each slot a lock of its own.
//!
//! A permit of semaphore `name` is a grant of one of the locks
//! `{name}:permit:{j}`, `j` in `0..permits`. Every guarantee of a lock
//! (majority over independent instances, validity told on the holder's own
//! clock, extension while held, release on drop, wake-ups by invalidation,
//! fencing) therefore holds for each slot, and "at most `permits` holders"
//! is "each of `permits` locks has at most one". The slot's tokens carry the
//! count in their fingerprint (`m2n3p5`), so lockers that disagree on it
//! fail with `Error::ConfigMismatch` as soon as one meets a slot the other
//! holds.
//!
//! This module holds the decisions: slot names, which slot to try first, and
//! the checks. The engine (`handle`) runs them.

use serde::Serialize;

use crate::error::Error;
use crate::inspect::{LockInfo, LockState};
use crate::keys;

/// The most permits a semaphore may have: a waiter waits on every slot, so
/// the count bounds what one waiter costs (one request per slot).
pub const MAX_PERMITS: u32 = 1024;

/// What a look at a semaphore saw (`Semaphore::inspect`): each permit
/// slot's lock, as `inspect` reports a lock, and how many slots are held,
/// free and unknown. A slot whose keys could not all be read is unknown,
/// never free.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct SemaphoreInfo {
    /// The semaphore's name.
    pub name: String,
    /// Its number of permits (slots).
    pub permits: u32,
    /// Slots held, by anyone (this locker included).
    pub held: u32,
    /// Slots nobody holds: permits an acquisition could take now.
    pub free: u32,
    /// Slots that could not be told (keys unreadable).
    pub unknown: u32,
    /// Every slot's lock (`{name}:permit:{slot}`), in slot order.
    pub slots: Vec<LockInfo>,
}

impl SemaphoreInfo {
    /// Counts the slots' states.
    pub(crate) fn new(name: &str, permits: u32, slots: Vec<LockInfo>) -> SemaphoreInfo {
        let count = |f: fn(&LockState) -> bool| {
            u32::try_from(slots.iter().filter(|s| f(&s.state)).count()).unwrap_or(u32::MAX)
        };
        SemaphoreInfo {
            name: name.to_owned(),
            permits,
            held: count(|s| matches!(s, LockState::Held { .. })),
            free: count(|s| matches!(s, LockState::Free)),
            unknown: count(|s| matches!(s, LockState::Unknown { .. })),
            slots,
        }
    }
}

/// The lock name of slot `slot` of semaphore `name`.
pub(crate) fn slot_name(name: &str, slot: u32) -> String {
    format!("{name}:permit:{slot}")
}

/// Checks a semaphore's name and count: the count in `1..=MAX_PERMITS`, the
/// name valid as a lock name, and so is the longest of its slot names (the
/// same rules: length, and no `{hash tag}` that would put every key of a slot
/// on one cluster slot). Errors name the semaphore, not a slot.
pub(crate) fn validate(prefix: &str, name: &str, permits: u32, total: usize) -> Result<(), Error> {
    if permits == 0 || permits > MAX_PERMITS {
        return Err(Error::InvalidOptions {
            field: "permits",
            reason: format!("must be between 1 and {MAX_PERMITS}, got {permits}"),
        });
    }
    keys::validate_name(prefix, name, total)?;
    keys::validate_name(prefix, &slot_name(name, permits - 1), total).map_err(|e| match e {
        Error::InvalidName { reason, .. } => Error::InvalidName {
            name: keys::truncate_for_error(name),
            reason: if reason.starts_with("the name is longer") {
                "the name is too long for a semaphore (its slot names add `:permit:N`)"
            } else {
                reason
            },
        },
        other => other,
    })
}

/// The order an acquisition tries the slots in: all of them once, from
/// `start` (random per call) round the ring. Acquirers in different
/// processes then rarely race for the same free slot, so a free permit
/// usually costs one round trip, not one per slot held before it.
pub(crate) fn try_order(start: u64, permits: u32) -> impl Iterator<Item = u32> {
    let first = u32::try_from(start % u64::from(permits.max(1))).unwrap_or(0);
    (0..permits).map(move |k| (first + k) % permits)
}

/// A random starting slot, from the thread's block of the operating
/// system's randomness (a `getrandom` call per permit or reader before).
pub(crate) fn random_start() -> u64 {
    let mut b = [0u8; 8];
    // A failing OS generator only costs the spread: start at slot 0.
    match crate::core::os_random(&mut b) {
        Ok(()) => u64::from_le_bytes(b),
        Err(_) => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_names_and_order() {
        assert_eq!(slot_name("pool", 0), "pool:permit:0");
        assert_eq!(slot_name("a:b", 12), "a:b:permit:12");
        let cases: [(u64, u32, &[u32]); 5] = [
            (0, 1, &[0]),
            (7, 1, &[0]),
            (0, 3, &[0, 1, 2]),
            (5, 3, &[2, 0, 1]),
            (u64::MAX, 4, &[3, 0, 1, 2]),
        ];
        for (start, permits, want) in cases {
            assert_eq!(
                try_order(start, permits).collect::<Vec<_>>(),
                want,
                "{start} {permits}"
            );
        }
    }

    #[test]
    fn a_look_counts_held_free_and_unknown_slots() {
        let slot = |j: u32, state: LockState| LockInfo {
            name: slot_name("pool", j),
            state,
            needed: 1,
            total: 1,
            keys: Vec::new(),
            fencing: Vec::new(),
            waiting: Vec::new(),
            waiting_unreadable: None,
        };
        let held = LockState::Held {
            owner: "ab12cd34".into(),
            ours: false,
            forced: false,
            keys: 1,
            expires_in: None,
        };
        let info = SemaphoreInfo::new(
            "pool",
            4,
            vec![
                slot(0, held.clone()),
                slot(1, LockState::Free),
                slot(2, LockState::Unknown { unreadable: 1 }),
                slot(3, held),
            ],
        );
        assert_eq!(
            (
                info.name.as_str(),
                info.permits,
                info.held,
                info.free,
                info.unknown
            ),
            ("pool", 4, 2, 1, 1)
        );
        assert_eq!(info.slots[2].name, "pool:permit:2");
    }

    #[test]
    fn slot_errors_name_the_semaphore() {
        let mismatch = Error::named(
            Error::ConfigMismatch {
                name: slot_name("pool", 2),
                ours: "m1n1p3".into(),
                theirs: "m1n1p5".into(),
            },
            "pool",
        );
        assert!(
            matches!(&mismatch, Error::ConfigMismatch { name, ours, theirs }
                if name == "pool" && ours == "m1n1p3" && theirs == "m1n1p5"),
            "{mismatch:?}"
        );
        let refused = Error::named(
            Error::NotLocked {
                name: slot_name("pool", 0),
                acquired: 1,
                needed: 2,
                total: 3,
                held_by_others: true,
            },
            "pool",
        );
        assert!(
            matches!(&refused, Error::NotLocked { name, acquired: 1, needed: 2, total: 3, held_by_others: true } if name == "pool"),
            "{refused:?}"
        );
        assert!(matches!(Error::named(Error::Closed, "pool"), Error::Closed));
    }

    #[test]
    fn validation() {
        let ok = |name: &str, permits| validate("valkeylock", name, permits, 3);
        assert!(ok("pool", 1).is_ok());
        assert!(ok("pool", MAX_PERMITS).is_ok());
        for permits in [0, MAX_PERMITS + 1, u32::MAX] {
            assert!(
                matches!(
                    ok("pool", permits),
                    Err(Error::InvalidOptions {
                        field: "permits",
                        ..
                    })
                ),
                "{permits}"
            );
        }
        assert!(matches!(ok("", 2), Err(Error::InvalidName { .. })));
        // A hash tag would put every key of a slot on one cluster slot.
        assert!(matches!(ok("{pool}", 2), Err(Error::InvalidName { .. })));
        // Valid as a lock name, too long once `:permit:N` is added: the error
        // names the semaphore and says why.
        let long = "x".repeat(keys::MAX_NAME_LEN);
        match ok(&long, 10) {
            Err(Error::InvalidName { name, reason }) => {
                assert!(name.len() < 100, "{name}");
                assert!(reason.contains("semaphore"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        let fits = "x".repeat(keys::MAX_NAME_LEN - ":permit:9".len());
        assert!(ok(&fits, 10).is_ok());
        assert!(ok(&fits, 11).is_err());
    }
}
