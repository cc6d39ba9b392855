//! What `inspect` reports about a lock, and the pure decision of whether it
//! is held: from what each key was seen to hold to a [`LockState`].
//!
//! The rule is documented on [`LockState`], where users read it.

use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::scripts::{KeyState, Look, Recorded, Seen, Token};

/// How many characters of an owner's token `inspect` shows: enough to tell
/// owners apart in a listing, far too few to forge a release.
pub(crate) const OWNER_PREFIX: usize = 8;

/// What `Locker::inspect` saw of one lock (and what a
/// [`LockWatch`](crate::LockWatch) reports). Serializes to the JSON of
/// `valkeylock status --json`.
///
/// # Examples
/// ```no_run
/// # use valkeylock_actors as valkeylock;
/// use valkeylock::{KeyValue, LockInfo};
///
/// // `info` is `locker.inspect("invoices").await?`.
/// fn report(info: &LockInfo) {
///     println!("{}: {:?} ({} of {} keys needed)", info.name, info.state, info.needed, info.total);
///     for key in &info.keys {
///         match &key.value {
///             KeyValue::Present { owner, ttl, .. } => println!("  {} on {}: {owner}, ttl {ttl:?}", key.key, key.address),
///             KeyValue::Absent => println!("  {} on {}: absent", key.key, key.address),
///             KeyValue::Unknown { error } => println!("  {} on {}: unreadable ({error})", key.key, key.address),
///             _ => {}
///         }
///     }
///     println!("  fencing counter: {:?}", info.fencing_counter());
/// }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct LockInfo {
    /// The lock name.
    pub name: String,
    /// Held, free or unknown, by the lock's majority rule (see
    /// [`LockState`]).
    #[serde(flatten)]
    pub state: LockState,
    /// Keys an owner needs (`key_majority`).
    pub needed: usize,
    /// Keys of the lock (`2·key_majority − 1`).
    pub total: usize,
    /// Every key, in key order.
    pub keys: Vec<KeyInfo>,
    /// The fencing counter (`{prefix}:fence:{name}`) on each node, in node
    /// order.
    pub fencing: Vec<FenceInfo>,
    /// Who waits for the lock, longest first, as the servers record it: the
    /// hand-over claims (`LockerOptions::handover`) and fair queue places
    /// (`LockerOptions::fair_queueing`) beside its keys that have not
    /// lapsed. Waiters of lockers with neither leave nothing on the
    /// servers and are not listed; nor are the callers queued inside a
    /// locker behind another of its own. Read by `Locker::inspect` (and
    /// `valkeylock status`); empty in a [`LockWatch`](crate::LockWatch)'s
    /// reports, which follow state and owner only.
    pub waiting: Vec<Waiter>,
    /// Why who waits could not be read beside some key whose value was
    /// read (an ACL user without `+hgetall` or `+zrange`, say): `waiting`
    /// may then miss some. `None` when nothing was missed that way.
    pub waiting_unreadable: Option<String>,
}

/// A waiter of a lock, as the servers record it (see
/// [`LockInfo::waiting`]): one per waiting attempt, over all the keys it
/// waits beside.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Waiter {
    /// How it waits.
    pub how: WaitKind,
    /// Who: the first characters of its token (what
    /// [`LockState::Held`]'s `owner` shows once the lock is handed to it)
    /// or of its queue place's id.
    pub who: String,
    /// The keys it waits beside, of [`LockInfo::total`].
    pub keys: usize,
    /// How long it has waited: from the arrival its locker recorded to the
    /// server's clock now (the longest over its keys).
    #[serde(rename = "waited_ms", serialize_with = "ms")]
    pub waited: Duration,
    /// How long its claim or place stands unless its locker refreshes it
    /// (which a live waiter does well before): the longest over its keys.
    /// A waiter whose process is gone lapses after this.
    #[serde(rename = "lapses_in_ms", serialize_with = "ms")]
    pub lapses_in: Duration,
}

/// How a [`Waiter`] waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum WaitKind {
    /// A hand-over claim: a release gives the key to the oldest
    /// (`LockerOptions::handover`).
    HandoverClaim,
    /// A place in the lock's fair queue (`LockerOptions::fair_queueing`).
    QueuePlace,
}

impl LockInfo {
    /// True when held, by anyone.
    ///
    /// # Examples
    /// ```no_run
    /// # use valkeylock_actors as valkeylock;
    /// # fn demo(info: valkeylock::LockInfo) {
    /// if info.is_held() {
    ///     println!("{} is held", info.name);
    /// }
    /// # }
    /// ```
    pub fn is_held(&self) -> bool {
        matches!(self.state, LockState::Held { .. })
    }

    /// True when free (see [`LockState::Free`]). Neither this nor
    /// [`is_held`](LockInfo::is_held) is true when the state is
    /// [`LockState::Unknown`].
    ///
    /// # Examples
    /// ```no_run
    /// # use valkeylock_actors as valkeylock;
    /// # fn demo(info: valkeylock::LockInfo) {
    /// let verdict = if info.is_held() { "held" } else if info.is_free() { "free" } else { "unknown" };
    /// # }
    /// ```
    pub fn is_free(&self) -> bool {
        matches!(self.state, LockState::Free)
    }

    /// The highest fencing counter any node reported; `None` when no node
    /// could be read. 0 when no locker with `fencing` has taken the lock.
    ///
    /// # Examples
    /// ```no_run
    /// # use valkeylock_actors as valkeylock;
    /// # fn demo(info: valkeylock::LockInfo) {
    /// match info.fencing_counter() {
    ///     Some(n) => println!("the next fenced grant gets a token above {n}"),
    ///     None => println!("no node could be read"),
    /// }
    /// # }
    /// ```
    pub fn fencing_counter(&self) -> Option<u64> {
        self.fencing.iter().filter_map(|f| f.value).max()
    }

    /// Whether `other` says the same about the lock: the same state and
    /// owner, whatever the TTLs (a [`LockWatch`](crate::LockWatch) reports
    /// only such changes).
    pub(crate) fn same_state(&self, other: &LockInfo) -> bool {
        match (&self.state, &other.state) {
            (
                LockState::Held {
                    owner: a, ours: x, ..
                },
                LockState::Held {
                    owner: b, ours: y, ..
                },
            ) => a == b && x == y,
            (LockState::Free, LockState::Free) => true,
            (LockState::Unknown { .. }, LockState::Unknown { .. }) => true,
            _ => false,
        }
    }
}

/// Whether a lock is held, by the lock's own majority rule.
///
/// # The rule
/// A lock of `key_majority` M has `2·M−1` keys. Keys count for an owner when
/// they hold the same value (every key of one attempt gets the same token,
/// in this library and in the Go valkeylock alike). Then:
/// - **held** by an owner whose value is in at least M keys. At most one
///   owner can be: two would need 2·M keys.
/// - **unknown** when no owner has M keys but some owner could with the keys
///   that could not be read: the largest owner's count plus the unreadable
///   keys reaches M. An unreachable node is never taken for a free one.
/// - **free** otherwise: no owner holds, nor could hold, M keys. Keys of a
///   minority owner may still be there until they expire (a split attempt,
///   a holder that lost some keys); free does not promise that an attempt
///   succeeds at once, only that nobody holds the lock.
///
/// This is the lock's own majority rule, read from outside: a holder keeps
/// its lock while M of its keys are there, and an attempt gets it with M.
///
/// # Examples
/// ```no_run
/// # use valkeylock_actors as valkeylock;
/// use valkeylock::LockState;
///
/// // `info` is `locker.inspect("invoices").await?`.
/// # fn demo(info: valkeylock::LockInfo) {
/// match &info.state {
///     LockState::Held { owner, ours: true, .. } => println!("we hold it ({owner})"),
///     LockState::Held { owner, expires_in, .. } => println!("{owner} holds it, {expires_in:?} left unless extended"),
///     LockState::Free => println!("free"),
///     LockState::Unknown { unreadable } => println!("cannot tell: {unreadable} keys unreadable"),
///     _ => {}
/// }
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
#[non_exhaustive]
pub enum LockState {
    /// An owner's value is in at least `needed` keys.
    Held {
        /// The first characters of the owner's token (never all of it).
        owner: String,
        /// The owner is this locker (a grant it holds, or an attempt of its
        /// own in progress).
        ours: bool,
        /// The owner's token says it came from `force_lock`.
        forced: bool,
        /// Keys the owner has (`owner_keys` in JSON, beside the key list).
        #[serde(rename = "owner_keys")]
        keys: usize,
        /// How long until fewer than `needed` of the owner's keys remain,
        /// unless they are extended: the `needed`-th longest remaining TTL.
        /// `None` when that many keys have no expiry.
        #[serde(rename = "expires_in_ms", serialize_with = "ms_opt")]
        expires_in: Option<Duration>,
    },
    /// Nobody holds the lock, and the keys that could not be read could not
    /// change that.
    Free,
    /// No owner was seen with enough keys, but some keys could not be read
    /// (their node is down or did not answer) and could make one.
    Unknown {
        /// Keys that could not be read.
        unreadable: usize,
    },
}

/// One key of a lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct KeyInfo {
    /// Its index, 0 to `total − 1`.
    pub index: usize,
    /// The Valkey key (`{prefix}:{index}:{name}`).
    pub key: String,
    /// The node it lives on (an index into `LockerOptions::nodes`).
    pub node: usize,
    /// That node's address, without credentials.
    pub address: String,
    /// What it holds.
    #[serde(flatten)]
    pub value: KeyValue,
}

/// What one key holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
#[non_exhaustive]
pub enum KeyValue {
    /// The key does not exist.
    Absent,
    /// The key holds an owner's value.
    Present {
        /// The first characters of the owner's token (hex digits of the
        /// first bytes for a value not in this library's format, such as the
        /// Go valkeylock's raw bytes).
        owner: String,
        /// The value is this locker's live token.
        ours: bool,
        /// The token says it came from `force_lock`.
        forced: bool,
        /// The configuration a locker of this library wrote with its token,
        /// `m{key_majority}n{nodes}`; `None` for other values.
        written_with: Option<String>,
        /// Remaining TTL; `None` when the key has no expiry.
        #[serde(rename = "ttl_ms", serialize_with = "ms_opt")]
        ttl: Option<Duration>,
    },
    /// The key could not be read.
    Unknown {
        /// Why (node down, timeout, a server error).
        error: String,
    },
}

/// The fencing counter on one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct FenceInfo {
    /// The node (an index into `LockerOptions::nodes`).
    pub node: usize,
    /// Its address, without credentials.
    pub address: String,
    /// The counter (0 when absent); `None` when it could not be read.
    pub value: Option<u64>,
}

/// The health of one node's connection, as the engine last saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct NodeHealth {
    /// The node (an index into `LockerOptions::nodes`).
    pub node: usize,
    /// Its address, without credentials.
    pub address: String,
    /// Connected, with tracking armed and scripts loaded.
    pub connected: bool,
    /// When it last connected or lost its connection (or, before the first
    /// connection, when the locker started).
    #[serde(rename = "since_unix_ms", serialize_with = "unix_ms")]
    pub since: SystemTime,
    /// How long it had been in that state when this snapshot was taken
    /// (measured on a monotonic clock).
    #[serde(rename = "for_ms", serialize_with = "ms")]
    pub duration: Duration,
    /// Times it connected again after the first connection.
    pub reconnects: u64,
    /// Why the last connection ended or the last attempt failed.
    pub last_error: Option<String>,
}

/// The health of a locker's nodes, for readiness probes: what
/// `Locker::health` returns, read from a table the node actors keep (no
/// command is sent).
///
/// # Examples
/// ```no_run
/// # use valkeylock_actors as valkeylock;
/// use valkeylock::Health;
///
/// // `health` is `locker.health()`.
/// fn probe(health: &Health) -> Result<(), String> {
///     if health.ready {
///         return Ok(());
///     }
///     let down: Vec<String> = health
///         .nodes
///         .iter()
///         .filter(|n| !n.connected)
///         .map(|n| format!("{} ({})", n.address, n.last_error.as_deref().unwrap_or("no error yet")))
///         .collect();
///     Err(format!("not ready; down: {}", down.join(", ")))
/// }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Health {
    /// Enough keys of every lock (`key_majority`) live on connected nodes
    /// for a lock to be taken and kept.
    pub ready: bool,
    /// Every node, in the order of `LockerOptions::nodes`.
    pub nodes: Vec<NodeHealth>,
}

/// What `Locker::force_release` did.
///
/// # Examples
/// ```no_run
/// # use valkeylock_actors as valkeylock;
/// // `done` is `locker.force_release("invoices").await?`.
/// # fn demo(done: valkeylock::ForcedRelease) {
/// println!("{} of {} keys deleted", done.deleted, done.total);
/// for error in &done.errors {
///     eprintln!("not deleted: {error}");
/// }
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct ForcedRelease {
    /// Keys deleted (those that existed).
    pub deleted: usize,
    /// Keys of the lock.
    pub total: usize,
    /// Keys whose node could not be asked or did not answer: they stay
    /// until they expire.
    pub failed: usize,
    /// Why, per node that failed (address without credentials, and error).
    pub errors: Vec<String>,
}

fn ms<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn ms_opt<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => ms(d, s),
        None => s.serialize_none(),
    }
}

fn unix_ms<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    ms(
        &t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default(),
        s,
    )
}

/// The owner's prefix shown for a value: the first [`OWNER_PREFIX`]
/// characters of this library's token (after the `F` of a forced one), or
/// the hex digits of the first bytes of anything else.
pub(crate) fn owner_prefix(value: &[u8]) -> String {
    let rest = value.strip_prefix(b"F").unwrap_or(value);
    if rest.len() >= OWNER_PREFIX && rest[..OWNER_PREFIX].iter().all(u8::is_ascii_hexdigit) {
        return String::from_utf8_lossy(&rest[..OWNER_PREFIX]).into_owned();
    }
    value
        .iter()
        .take(OWNER_PREFIX / 2)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The verdict over what each key was seen to hold, in key order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict<'a> {
    /// Held by the owner of `value`, which is in `keys` keys.
    Held {
        value: &'a [u8],
        keys: usize,
    },
    Free,
    Unknown {
        unreadable: usize,
    },
}

/// The rule documented on [`LockState`].
pub(crate) fn decide(seen: &[Seen], needed: usize) -> Verdict<'_> {
    let mut best: Option<(&[u8], usize)> = None; // (value, count)
    let mut unreadable = 0;
    for (i, s) in seen.iter().enumerate() {
        match s {
            Seen::Present { value, .. } => {
                let first = seen
                    .iter()
                    .position(|o| matches!(o, Seen::Present { value: v, .. } if v == value))
                    .unwrap_or(i);
                if first != i {
                    continue; // counted with its first key
                }
                let count = seen
                    .iter()
                    .filter(|o| matches!(o, Seen::Present { value: v, .. } if v == value))
                    .count();
                if best.is_none_or(|(_, c)| count > c) {
                    best = Some((value, count));
                }
            }
            Seen::Unreadable(_) => unreadable += 1,
            Seen::Absent => {}
        }
    }
    let most = best.map_or(0, |(_, c)| c);
    match best {
        Some((value, keys)) if keys >= needed => Verdict::Held { value, keys },
        _ if most + unreadable >= needed => Verdict::Unknown { unreadable },
        _ => Verdict::Free,
    }
}

/// The `needed`-th longest TTL among the keys holding `value`: how long
/// until fewer than `needed` remain. `None` (no expiry) sorts longest.
fn expires_in(seen: &[Seen], value: &[u8], needed: usize) -> Option<Duration> {
    let mut ttls: Vec<Option<u64>> = seen
        .iter()
        .filter_map(|s| match s {
            Seen::Present { value: v, pttl_ms } if v == value => Some(*pttl_ms),
            _ => None,
        })
        .collect();
    // Longest first, `None` (no expiry) before every number.
    ttls.sort_by(|a, b| match (a, b) {
        (None, None) => std::cmp::Ordering::Equal,
        (None, Some(_)) => std::cmp::Ordering::Less,
        (Some(_), None) => std::cmp::Ordering::Greater,
        (Some(x), Some(y)) => y.cmp(x),
    });
    ttls.get(needed.checked_sub(1)?)
        .copied()
        .flatten()
        .map(Duration::from_millis)
}

/// Where the keys are and how to show them: the parts of a [`LockInfo`]
/// that are not read from the nodes.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    pub(crate) name: String,
    pub(crate) needed: usize,
    /// Per key: its name and node.
    pub(crate) keys: Vec<(String, usize)>,
    /// Per node: its address, without credentials.
    pub(crate) addresses: Vec<String>,
}

/// Who waits, from what each key recorded: one [`Waiter`] per claim token
/// or queue place, over all the keys, longest waiting first; and the first
/// reason the waiters beside a key whose value was read could not be.
fn waiters(looks: &[Look]) -> (Vec<Waiter>, Option<String>) {
    let mut by_who: std::collections::HashMap<(WaitKind, &[u8]), Waiter> = Default::default();
    let mut unreadable = None;
    for look in looks {
        let recorded: &[Recorded] = match &look.waiting {
            Ok(r) => r,
            Err(why) => {
                if !matches!(look.seen, Seen::Unreadable(_)) && unreadable.is_none() {
                    unreadable = Some(why.clone());
                }
                continue;
            }
        };
        for r in recorded {
            let how = if r.claim {
                WaitKind::HandoverClaim
            } else {
                WaitKind::QueuePlace
            };
            let waited = Duration::from_micros(r.waited_us);
            let lapses_in = Duration::from_millis(r.lapses_in_ms);
            by_who
                .entry((how, &r.who))
                .and_modify(|w| {
                    w.keys += 1;
                    w.waited = w.waited.max(waited);
                    w.lapses_in = w.lapses_in.max(lapses_in);
                })
                .or_insert_with(|| Waiter {
                    how,
                    who: owner_prefix(&r.who),
                    keys: 1,
                    waited,
                    lapses_in,
                });
        }
    }
    let mut out: Vec<Waiter> = by_who.into_values().collect();
    out.sort_by(|a, b| b.waited.cmp(&a.waited).then_with(|| a.who.cmp(&b.who)));
    (out, unreadable)
}

/// Builds the report from what was read: `looks` per key, the fencing
/// counter per node, and this locker's live token for the name, if any.
pub(crate) fn assemble(
    layout: &Layout,
    looks: Vec<Look>,
    fences: Vec<Option<u64>>,
    ours: Option<&Token>,
) -> LockInfo {
    let (waiting, waiting_unreadable) = waiters(&looks);
    let seen: Vec<Seen> = looks.into_iter().map(|l| l.seen).collect();
    let is_ours = |value: &[u8]| ours.is_some_and(|t| t.as_str().as_bytes() == value);
    let state = match decide(&seen, layout.needed) {
        Verdict::Held { value, keys } => {
            let forced = matches!(
                Token::owner_state(value),
                KeyState::Other { forced: true, .. }
            );
            LockState::Held {
                owner: owner_prefix(value),
                ours: is_ours(value),
                forced,
                keys,
                expires_in: expires_in(&seen, value, layout.needed),
            }
        }
        Verdict::Free => LockState::Free,
        Verdict::Unknown { unreadable } => LockState::Unknown { unreadable },
    };
    let keys = seen
        .into_iter()
        .zip(&layout.keys)
        .enumerate()
        .map(|(index, (s, (key, node)))| KeyInfo {
            index,
            key: key.clone(),
            node: *node,
            address: layout.addresses.get(*node).cloned().unwrap_or_default(),
            value: match s {
                Seen::Absent => KeyValue::Absent,
                Seen::Unreadable(error) => KeyValue::Unknown { error },
                Seen::Present { value, pttl_ms } => {
                    let (forced, written_with) = match Token::owner_state(&value) {
                        KeyState::Other { forced, owner } => (forced, owner.map(|f| f.to_string())),
                        _ => (false, None),
                    };
                    KeyValue::Present {
                        owner: owner_prefix(&value),
                        ours: is_ours(&value),
                        forced,
                        written_with,
                        ttl: pttl_ms.map(Duration::from_millis),
                    }
                }
            },
        })
        .collect();
    let fencing = fences
        .into_iter()
        .enumerate()
        .map(|(node, value)| FenceInfo {
            node,
            address: layout.addresses.get(node).cloned().unwrap_or_default(),
            value,
        })
        .collect();
    LockInfo {
        name: layout.name.clone(),
        state,
        needed: layout.needed,
        total: layout.keys.len(),
        keys,
        fencing,
        waiting,
        waiting_unreadable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scripts::Fingerprint;

    fn p(v: &str) -> Seen {
        Seen::Present {
            value: v.as_bytes().to_vec(),
            pttl_ms: Some(1000),
        }
    }
    const A: Seen = Seen::Absent;
    fn u() -> Seen {
        Seen::Unreadable("down".into())
    }

    #[test]
    fn verdicts() {
        // Owners by their value ("x", "y"); (keys as seen, needed, verdict).
        let held = |v: &'static str, keys| Verdict::Held {
            value: v.as_bytes(),
            keys,
        };
        let unknown = |unreadable| Verdict::Unknown { unreadable };
        let cases: Vec<(Vec<Seen>, usize, Verdict<'static>)> = vec![
            (vec![A], 1, Verdict::Free),
            (vec![p("x")], 1, held("x", 1)),
            (vec![u()], 1, unknown(1)),
            (vec![A, A, A], 2, Verdict::Free),
            (vec![p("x"), p("x"), p("x")], 2, held("x", 3)),
            (vec![A, p("x"), p("x")], 2, held("x", 2)),
            // A minority owner and a free key: nobody holds it.
            (vec![p("x"), A, A], 2, Verdict::Free),
            // A split: two minorities.
            (vec![p("x"), p("y"), A], 2, Verdict::Free),
            // One unreadable key could complete x's majority.
            (vec![p("x"), u(), A], 2, unknown(1)),
            // ... but not if x already has it: held whatever the rest says.
            (vec![p("x"), p("x"), u()], 2, held("x", 2)),
            // One unreadable key and nothing present: no owner can reach 2.
            (vec![u(), A, A], 2, Verdict::Free),
            // Two unreadable keys: an unseen owner could hold them.
            (vec![u(), u(), A], 2, unknown(2)),
            (vec![u(), u(), u()], 2, unknown(3)),
            // x on one key, y on one, one unreadable: either could reach 2.
            (vec![p("x"), p("y"), u()], 2, unknown(1)),
            // Five keys (M = 3).
            (
                vec![p("x"), p("y"), p("x"), p("y"), p("x")],
                3,
                held("x", 3),
            ),
            (vec![p("x"), p("y"), p("x"), p("y"), A], 3, Verdict::Free),
            (vec![p("x"), p("y"), p("x"), p("y"), u()], 3, unknown(1)),
            (vec![p("x"), A, A, u(), A], 3, Verdict::Free),
            (vec![p("x"), A, A, u(), u()], 3, unknown(2)),
            (vec![p("y"), p("x"), p("x"), p("x"), u()], 3, held("x", 3)),
        ];
        for (seen, needed, want) in cases {
            assert_eq!(decide(&seen, needed), want, "{seen:?} needed {needed}");
        }
    }

    #[test]
    fn ttls() {
        let t = |v: &str, ms: Option<u64>| Seen::Present {
            value: v.as_bytes().to_vec(),
            pttl_ms: ms,
        };
        let seen = vec![t("x", Some(300)), t("x", Some(100)), t("x", Some(200))];
        // Fewer than 2 remain once the second longest (200 ms) runs out.
        assert_eq!(expires_in(&seen, b"x", 2), Some(Duration::from_millis(200)));
        assert_eq!(expires_in(&seen, b"x", 3), Some(Duration::from_millis(100)));
        let seen = vec![t("x", None), t("x", Some(100)), t("y", Some(900))];
        assert_eq!(expires_in(&seen, b"x", 2), Some(Duration::from_millis(100)));
        assert_eq!(expires_in(&seen, b"x", 1), None);
        let seen = vec![t("x", None), t("x", None), A];
        assert_eq!(expires_in(&seen, b"x", 2), None);
        assert_eq!(expires_in(&seen, b"x", 0), None);
    }

    #[test]
    fn owners() {
        let token = Token::from_bytes(&[0xab; 24], false, Fingerprint::new(2, 3));
        assert_eq!(owner_prefix(token.as_str().as_bytes()), "abababab");
        let forced = Token::from_bytes(&[0x12; 24], true, Fingerprint::new(2, 3));
        assert_eq!(owner_prefix(forced.as_str().as_bytes()), "12121212");
        // Go's raw bytes, and anything short.
        assert_eq!(owner_prefix(&[0xff, 0, 7, 9, 1, 2]), "ff000709");
        assert_eq!(owner_prefix(b"ab"), "6162");
        assert_eq!(owner_prefix(b""), "");
        // Never the whole token.
        assert!(owner_prefix(token.as_str().as_bytes()).len() < token.as_str().len() / 4);
    }

    #[test]
    fn reports() {
        let ours = Token::from_bytes(&[0xab; 24], false, Fingerprint::new(2, 2));
        let theirs = Token::from_bytes(&[0xcd; 24], true, Fingerprint::new(2, 3));
        let layout = Layout {
            name: "n".into(),
            needed: 2,
            keys: vec![
                ("vl:0:n".into(), 0),
                ("vl:1:n".into(), 1),
                ("vl:2:n".into(), 0),
            ],
            addresses: vec!["a:1".into(), "b:2".into()],
        };
        let present = |t: &Token, ms| Seen::Present {
            value: t.as_str().as_bytes().to_vec(),
            pttl_ms: Some(ms),
        };
        let info = assemble(
            &layout,
            looks(vec![present(&ours, 900), u(), present(&ours, 800)]),
            vec![Some(4), None],
            Some(&ours),
        );
        assert_eq!(
            info.state,
            LockState::Held {
                owner: "abababab".into(),
                ours: true,
                forced: false,
                keys: 2,
                expires_in: Some(Duration::from_millis(800)),
            }
        );
        assert_eq!(info.fencing_counter(), Some(4));
        assert_eq!(info.keys[1].address, "b:2");
        assert_eq!(
            info.keys[1].value,
            KeyValue::Unknown {
                error: "down".into()
            }
        );
        assert_eq!(
            info.keys[2].value,
            KeyValue::Present {
                owner: "abababab".into(),
                ours: true,
                forced: false,
                written_with: Some("m2n2".into()),
                ttl: Some(Duration::from_millis(800)),
            }
        );
        // Someone else's forced grant, seen without our token.
        let info = assemble(
            &layout,
            looks(vec![present(&theirs, 900), present(&theirs, 500), A]),
            vec![Some(0), Some(0)],
            Some(&ours),
        );
        assert!(matches!(
            info.state,
            LockState::Held { ours: false, forced: true, ref owner, .. } if owner == "cdcdcdcd"
        ));
        assert!(matches!(
            &info.keys[0].value,
            KeyValue::Present { written_with: Some(w), forced: true, ours: false, .. } if w == "m2n3"
        ));
        let json = serde_json::to_value(&info).unwrap();
        assert_eq!(json["state"], "held");
        assert_eq!(json["owner"], "cdcdcdcd");
        assert_eq!(json["expires_in_ms"], 500);
        assert_eq!(json["owner_keys"], 2);
        assert_eq!(json["keys"][0]["status"], "present");
        assert_eq!(json["keys"][0]["ttl_ms"], 900);
        assert_eq!(json["keys"][2]["status"], "absent");
        assert_eq!(json["fencing"][1]["value"], 0);
        // Changes a watch reports: owner and ours, not TTLs.
        let later = assemble(
            &layout,
            looks(vec![present(&theirs, 100), present(&theirs, 50), A]),
            vec![Some(0), Some(0)],
            Some(&ours),
        );
        assert!(info.same_state(&later));
        let free = assemble(&layout, looks(vec![A, A, A]), vec![None, None], None);
        assert!(!info.same_state(&free));
        assert!(free.is_free());
        assert_eq!(free.fencing_counter(), None);
        assert!(free.waiting.is_empty() && free.waiting_unreadable.is_none());
    }

    /// Keys seen, with nobody recorded waiting beside them.
    fn looks(seen: Vec<Seen>) -> Vec<Look> {
        seen.into_iter()
            .map(|seen| Look {
                seen,
                waiting: Ok(Vec::new()),
            })
            .collect()
    }

    #[test]
    fn waiters_over_the_keys() {
        let rec = |claim, who: &str, waited_ms: u64, lapses_in_ms| Recorded {
            claim,
            who: who.as_bytes().to_vec(),
            waited_us: waited_ms * 1000,
            lapses_in_ms,
        };
        let t1 = "1111111111111111aaaa";
        let t2 = "2222222222222222bbbb";
        let at = |seen: Seen, waiting| Look { seen, waiting };
        let (waiting, unreadable) = waiters(&[
            at(
                p("x"),
                Ok(vec![rec(true, t1, 300, 900), rec(true, t2, 100, 950)]),
            ),
            // The same claims on another key, a little later and sooner.
            at(
                A,
                Ok(vec![
                    rec(true, t1, 290, 1000),
                    rec(false, "98765432101", 500, 40),
                ]),
            ),
            // A key that could not be read: its waiters are not "missed".
            Look::unreadable("down".into()),
        ]);
        assert_eq!(unreadable, None);
        let got: Vec<_> = waiting
            .iter()
            .map(|w| {
                (
                    w.how,
                    w.who.as_str(),
                    w.keys,
                    w.waited.as_millis(),
                    w.lapses_in.as_millis(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (WaitKind::QueuePlace, "98765432", 1, 500, 40),
                (WaitKind::HandoverClaim, "11111111", 2, 300, 1000),
                (WaitKind::HandoverClaim, "22222222", 1, 100, 950),
            ]
        );
        // Beside a key that was read, a refused read of the waiters is
        // reported: the list may miss some.
        let (waiting, unreadable) = waiters(&[
            at(p("x"), Err("NOPERM".into())),
            at(A, Ok(vec![rec(true, t2, 100, 950)])),
        ]);
        assert_eq!(waiting.len(), 1);
        assert_eq!(unreadable.as_deref(), Some("NOPERM"));
        let layout = Layout {
            name: "n".into(),
            needed: 1,
            keys: vec![("vl:0:n".into(), 0)],
            addresses: vec!["a:1".into()],
        };
        let info = assemble(
            &layout,
            vec![at(A, Ok(vec![rec(true, t1, 1500, 2500)]))],
            vec![None],
            None,
        );
        let json = serde_json::to_value(&info).unwrap();
        assert_eq!(json["waiting"][0]["how"], "handover_claim");
        assert_eq!(json["waiting"][0]["who"], "11111111");
        assert_eq!(json["waiting"][0]["keys"], 1);
        assert_eq!(json["waiting"][0]["waited_ms"], 1500);
        assert_eq!(json["waiting"][0]["lapses_in_ms"], 2500);
        assert_eq!(json["waiting_unreadable"], serde_json::Value::Null);
    }
}
