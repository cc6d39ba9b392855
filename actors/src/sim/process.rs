//! A simulated locker process: its own clock, one `LockCore` per name, and
//! the callers using them.

use crate::core::{HolderId, HolderStatus, LockCore, RequestKind, Time};
use crate::scripts::Token;

/// A process's clock: `local = offset + real · (1 + ppm / 10⁶)`, nanoseconds.
/// The rate error stays well inside the drift allowance the cores assume.
#[derive(Debug, Clone, Copy)]
pub(super) struct Clock {
    pub(super) offset: u64,
    pub(super) ppm: i64,
}

impl Clock {
    pub(super) fn local(&self, real: u64) -> Time {
        // i64 suffices for runs shorter than ~20 days of virtual time; the
        // checker calls this on every step.
        let skew = i64::try_from(real)
            .ok()
            .and_then(|r| r.checked_mul(self.ppm))
            .map(|x| x / 1_000_000);
        let Some(skew) = skew else {
            let r = i128::from(real);
            let l = i128::from(self.offset) + r + r * i128::from(self.ppm) / 1_000_000;
            return Time::from_nanos(u64::try_from(l.max(0)).unwrap_or(u64::MAX));
        };
        Time::from_nanos((self.offset + real).saturating_add_signed(skew))
    }

    /// The earliest real instant at which the local clock shows `local`.
    pub(super) fn real_at(&self, local: Time) -> u64 {
        let l = i128::from(local.as_nanos()) - i128::from(self.offset);
        if l <= 0 {
            return 0;
        }
        let guess = l * 1_000_000 / (1_000_000 + i128::from(self.ppm));
        let mut r = u64::try_from(guess.max(0)).unwrap_or(u64::MAX / 2);
        // `local` is monotonic; the guess is off by a nanosecond or two.
        while self.local(r) < local {
            r += 1;
        }
        while r > 0 && self.local(r - 1) >= local {
            r -= 1;
        }
        r
    }
}

/// One name's core in a process. A core that reported `Idle` may be retired
/// and replaced by a fresh one (a new incarnation), as the shell does.
#[derive(Debug)]
pub(super) struct CoreSlot {
    pub(super) core: LockCore,
    pub(super) inc: u32,
    /// When (real time) the core wants `Event::Timeout`.
    pub(super) timer: Option<u64>,
    /// The core's attempt or grant token after the last event, to see when
    /// it stops being live (invariant 4).
    pub(super) live: Option<Token>,
    pub(super) closed: bool,
    /// Timeouts handled at the same instant in a row (a busy loop).
    pub(super) spins: u32,
}

/// Where a caller is.
#[derive(Debug, Clone)]
pub(super) enum Stage {
    Waiting,
    Held {
        inc: u32,
        holder: HolderId,
        status: HolderStatus,
        /// The grant's token (None: the grant ended in the same batch).
        token: Option<Token>,
        /// The real instant the local clock reaches `valid_until` of the
        /// current status (cached: the checker needs it on every step).
        until_real: u64,
    },
    /// Refused, or cancelled before a grant. (A caller that was granted
    /// stays `Held`, with its last status, once released.)
    Done,
}

/// A caller of `lock()`, `try_lock()` or `force_lock()`.
#[derive(Debug, Clone)]
pub(super) struct Caller {
    pub(super) name: usize,
    pub(super) kind: RequestKind,
    pub(super) cancelled: bool,
    pub(super) stage: Stage,
    /// Real time of the request.
    pub(super) asked: u64,
    /// Holds forever (until the run winds down).
    pub(super) forever: bool,
    /// Its grant was released (or a release is no longer expected).
    pub(super) released: bool,
    /// The permit count it claims for the name (`permits` knob).
    pub(super) permits: Option<u16>,
}

/// One process.
#[derive(Debug)]
pub(super) struct Process {
    pub(super) clock: Clock,
    /// Whether its locks settle at the grant, as those of a process with
    /// many holders do (`LockCore::settled`).
    pub(super) crowded: bool,
    /// Its lockers' configuration (the fair queues' wall clock is its own).
    pub(super) cfg: std::sync::Arc<crate::core::Config>,
    pub(super) cores: Vec<CoreSlot>,
    /// Request ids are indices + 1.
    pub(super) callers: Vec<Caller>,
    /// Callers not yet done, by index.
    pub(super) active: Vec<usize>,
    /// `release()` calls waiting for `Effect::Released`.
    pub(super) acks: Vec<u64>,
    pub(super) next_ack: u64,
}

impl Process {
    pub(super) fn caller(&mut self, req: u64) -> Option<&mut Caller> {
        usize::try_from(req)
            .ok()
            .and_then(|r| r.checked_sub(1))
            .and_then(|i| self.callers.get_mut(i))
    }

    /// The caller holding (or having held) `holder` of core `inc` of `name`.
    pub(super) fn holder_index(&self, name: usize, inc: u32, holder: HolderId) -> Option<usize> {
        // Newest first: the caller is usually recent.
        (0..self.callers.len()).rev().find(|&i| {
            let c = &self.callers[i];
            c.name == name
                && matches!(c.stage, Stage::Held { inc: ci, holder: h, .. } if ci == inc && h == holder)
        })
    }
}
