//! The vocabulary between a lock core and the shell that runs it: the
//! commands the core asks for, what they target, and what came back.

use std::time::Duration;

use crate::scripts::{Fingerprint, KeyState, SetMode, Token};

/// What a command acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Target {
    /// Lock key `i` (`{prefix}:{i}:{name}`), on the node placement gives it.
    Key(usize),
    /// The name's fencing counter on node `n`.
    Fence(usize),
}

/// One waiter's place in the fair queues of a name's keys: who, since when
/// (its locker's wall clock, µs since the Unix epoch; the same on every key,
/// so every queue orders the waiters alike), and how long the place lasts
/// unless refreshed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Place {
    pub(crate) member: u64,
    pub(crate) since_us: u64,
    pub(crate) life: Duration,
}

/// What a fair acquisition adds to the acquire script: the waiter it is for
/// (`None`: a try, which takes only a key nobody queues for), the places of
/// the locker's waiters that are due to be placed or refreshed by the same
/// step, and the locker's other waiters (recognised as its own at the head
/// of the queue, not refreshed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Queue {
    pub(crate) candidate: Option<u64>,
    pub(crate) places: Vec<Place>,
    pub(crate) members: Vec<u64>,
    /// How long a place lasts unless refreshed.
    pub(crate) life: Duration,
    /// The candidate's place was made before: if it is gone from a free
    /// key's queue, the queue was lost, and the script gives the other
    /// waiters `settle` to come back before anyone is served.
    pub(crate) rejoin: bool,
    pub(crate) settle: Duration,
}

/// Hand-over: what an acquisition for a waiter adds so that, finding the key
/// held, it leaves a claim there (`scripts::ACQUIRE_LUA`), which a release
/// of a locker with hand-over turns into the key itself. The shell adds
/// the claimant (its locker's channel) and the command's id, which the
/// hand-over's message brings back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Claim {
    /// When the waiting began (µs since the Unix epoch, the locker's wall
    /// clock): the same on every key, so every key orders its claimants
    /// alike, oldest first.
    pub(crate) arrival_us: u64,
    /// An earlier run of the same attempt may have left a claim: a step that
    /// takes the key takes the claim out.
    pub(crate) before: bool,
}

/// A command on one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Op {
    /// The acquire script, setting `ttl`; with `fence`, it also moves the
    /// name's fencing counter in the same step (one instance only).
    Acquire {
        token: Token,
        mode: SetMode,
        fence: bool,
        ttl: Duration,
        /// Fair queueing: the key is taken only by the head of its queue.
        queue: Option<Box<Queue>>,
        /// Hand-over: the claim it leaves on a key held by another.
        claim: Option<Claim>,
    },
    /// Places (or refreshes) waiters in the key's fair queue.
    Enqueue { places: Vec<Place>, life: Duration },
    /// Takes waiters out of the key's fair queue. `life`: how long a place
    /// lasts (every call of the script catches up on a stall with it).
    Dequeue { members: Vec<u64>, life: Duration },
    /// The same script for a held key, batched with the node's other
    /// extensions of this tick.
    Extend {
        token: Token,
        mode: SetMode,
        ttl: Duration,
    },
    /// Read-only check: is the key still ours, and for how long.
    Verify { token: Token },
    /// Compare-and-delete. With `fence` (hand-over, the counter moved by
    /// the script: one instance), a key handed over moves the fencing
    /// counter in the same script, and its message carries the new value.
    Release { token: Token, fence: bool },
    /// Read the fencing counter.
    FenceRead,
    /// Raise the fencing counter to `value` unless it is there or higher.
    FenceWrite { value: u64 },
    /// Hand-over: take this locker's claim on the key back, if it is still
    /// `token`'s (its waiters gave up).
    Unclaim { token: Token },
}

/// The result of one command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    Key(KeyState),
    /// A compare-and-delete ran: true if it deleted our key.
    Released(bool),
    /// A fencing counter's value.
    Fence(u64),
    /// A fencing write ran: whether it raised the counter itself, and the
    /// counter's value afterwards.
    FenceWritten {
        raised: bool,
        value: u64,
    },
    /// A fair queue was updated (`Enqueue`, `Dequeue`).
    Queued,
    /// A claim was taken back, or was not there (`Unclaim`).
    Unclaimed,
    /// The node did not answer usefully (not connected, error).
    Failed(&'static str),
    /// Sent, and no reply came in time (the client's timeout, or the core's
    /// reply bound): the command may have run, and a write may have taken
    /// its key.
    Unanswered,
}

impl Outcome {
    /// Why the command failed, if it did.
    pub(crate) fn failure(&self) -> Option<&'static str> {
        match self {
            Outcome::Failed(why) => Some(why),
            Outcome::Unanswered => Some("no reply in time"),
            _ => None,
        }
    }
}

/// Where a core gets its randomness: tokens and retry jitter. The engine uses
/// the operating system's generator; the simulator a seeded one, so a seed
/// replays a run exactly.
pub(crate) trait Entropy: Send {
    /// Fills `buf` with random bytes.
    fn fill(&mut self, buf: &mut [u8]);

    /// A fresh token for one acquisition attempt of a locker with
    /// `fingerprint`.
    fn token(&mut self, forced: bool, fingerprint: Fingerprint) -> Token {
        let mut bytes = [0u8; 24];
        self.fill(&mut bytes);
        Token::from_bytes(&bytes, forced, fingerprint)
    }

    /// A random `u64`.
    fn next_u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        self.fill(&mut b);
        u64::from_le_bytes(b)
    }
}

/// The operating system's generator, drawn in blocks.
///
/// Every acquisition takes 32 bytes (its token and its waiter's place in the
/// fair queues), and a waiter's retry 8 more (its jitter). Asking the
/// kernel for each was two `getrandom` system calls per lock + release on
/// the caller's thread, about 2 % of the client's CPU with ten tasks
/// (BENCHMARKS.md, "What limits", item 2). The bytes now come from a block
/// of [`POOL_BYTES`] the thread fetched in one call: the same operating
/// system randomness, each byte handed out once and wiped from the block as
/// it is.
///
/// A block is per thread, not per lock, so it costs a held lock no memory.
/// A process that forks keeps a copy of its threads' blocks in the child;
/// the engine's threads, timers and connections do not survive a fork
/// either, so a child must build its own `Locker`, whose threads start
/// with empty blocks.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct OsEntropy;

/// The bytes one `getrandom` call fetches for a thread's block.
const POOL_BYTES: usize = 512;

struct Pool {
    bytes: [u8; POOL_BYTES],
    /// Where the next unread byte is (`POOL_BYTES`: the block is used up).
    next: usize,
}

thread_local! {
    static POOL: std::cell::RefCell<Pool> = const {
        std::cell::RefCell::new(Pool { bytes: [0; POOL_BYTES], next: POOL_BYTES })
    };
}

/// Fills `buf` with the operating system's randomness, drawn through this
/// thread's block (see [`OsEntropy`]); what the generator's failure was,
/// if it failed. The lock core's draws go through [`OsEntropy`], which
/// cannot go on without them; a semaphore's random first slot comes here
/// too and starts at slot 0 instead.
pub(crate) fn os_random(buf: &mut [u8]) -> Result<(), getrandom::Error> {
    if buf.len() > POOL_BYTES / 2 {
        return getrandom::getrandom(buf);
    }
    // A thread whose locals are being torn down asks the kernel.
    let pooled = POOL.try_with(|pool| {
        let mut pool = pool.borrow_mut();
        let mut out = &mut buf[..];
        while !out.is_empty() {
            if pool.next == POOL_BYTES {
                getrandom::getrandom(&mut pool.bytes)?;
                pool.next = 0;
            }
            let at = pool.next;
            let n = out.len().min(POOL_BYTES - at);
            let taken = &mut pool.bytes[at..at + n];
            out[..n].copy_from_slice(taken);
            taken.fill(0);
            pool.next = at + n;
            out = &mut out[n..];
        }
        Ok(())
    });
    pooled.unwrap_or_else(|_| getrandom::getrandom(buf))
}

impl Entropy for OsEntropy {
    fn fill(&mut self, buf: &mut [u8]) {
        // The OS RNG failing is not something a lock can recover from safely:
        // a predictable token would let others release our lock.
        os_random(buf).expect("the operating system's random number generator failed");
    }
}

/// Where a lock core draws its randomness: the operating system's,
/// through the thread's block ([`OsEntropy`]), which takes no room in the
/// core (a boxed generator took 16 bytes of every held lock's state), or,
/// in the table tests and the simulator, a generator they give it.
pub(crate) enum Draws {
    Os(OsEntropy),
    #[cfg(test)]
    Given(Box<dyn Entropy>),
}

impl Draws {
    pub(crate) fn source(&mut self) -> &mut dyn Entropy {
        match self {
            Draws::Os(os) => os,
            #[cfg(test)]
            Draws::Given(given) => given.as_mut(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Draws of every size a lock makes, across many refills of the block:
    /// none repeats and none is the wiped (zero) bytes of a block; a draw
    /// larger than half a block, which goes to the kernel, is filled too.
    #[test]
    fn os_entropy_hands_out_each_byte_once() {
        let mut e = OsEntropy;
        let mut seen = std::collections::HashSet::new();
        for i in 0..20_000 {
            let mut b = vec![0u8; [8, 24, 5, 1][i % 4]];
            e.fill(&mut b);
            if b.len() >= 8 {
                assert!(b.iter().any(|&x| x != 0), "draw {i} is all zeros");
                assert!(seen.insert(b), "draw {i} repeats an earlier one");
            }
        }
        let mut big = vec![0u8; POOL_BYTES];
        e.fill(&mut big);
        assert!(big.iter().filter(|&&x| x != 0).count() > POOL_BYTES / 2);
        assert!(seen.insert(big[..8].to_vec()));
    }

    /// Each thread draws from its own block: two threads never get the same
    /// bytes.
    #[test]
    fn os_entropy_threads_draw_apart() {
        let draw = || {
            (0..1000)
                .map(|_| OsEntropy.next_u64())
                .collect::<std::collections::HashSet<_>>()
        };
        let other = std::thread::spawn(draw).join().unwrap();
        let mine = draw();
        assert_eq!(mine.len(), 1000);
        assert_eq!(other.len(), 1000);
        assert!(mine.is_disjoint(&other));
    }
}
