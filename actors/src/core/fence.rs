//! The fencing step on several instances, as a state machine of its own: read
//! the counter from a majority of nodes, then raise a majority to max + 1.
//!
//! Why it is safe: any two majorities of nodes intersect. A write counts only
//! if it raised the counter itself (a max-register that was below the value),
//! so two attempts that read the same max and both write max + 1 cannot both
//! collect a majority of acknowledgements: on each node only the first write
//! raises it. The loser starts a new round, reads at least max + 1 from a
//! majority, and writes above it. Tokens therefore differ and grow in the order
//! grants are handed out. A retried write of our own whose first reply was lost
//! reads as "not raised" and only costs a round.

/// What the step wants next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FenceNext {
    /// Waiting for more replies.
    Wait,
    /// Send the write of `value` to every node (round `round`).
    Write { round: u32, value: u64 },
    /// Send the reads of a new round `round` to every node.
    Read { round: u32 },
    /// The token is `value`.
    Done(u64),
    /// No token can be had now (too many nodes failed, rounds exhausted).
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    Read { max: u64 },
    Write { value: u64 },
}

/// One attempt's fencing step.
#[derive(Debug, Clone)]
pub(crate) struct Fence {
    nodes: usize,
    round: u32,
    phase: Phase,
    /// Per node in this phase: `None` no reply yet, `Some(true)` counted,
    /// `Some(false)` failed or refused.
    replies: Vec<Option<bool>>,
}

/// Rounds tried before the step gives up.
pub(crate) const MAX_ROUNDS: u32 = 3;

impl Fence {
    /// A fresh step over `nodes` nodes; send the reads of round 1.
    pub(crate) fn start(nodes: usize) -> Fence {
        Fence {
            nodes,
            round: 1,
            phase: Phase::Read { max: 0 },
            replies: vec![None; nodes],
        }
    }

    pub(crate) fn round(&self) -> u32 {
        self.round
    }

    fn quorum(&self) -> usize {
        self.nodes / 2 + 1
    }

    fn count(&self, ok: bool) -> usize {
        self.replies.iter().filter(|r| **r == Some(ok)).count()
    }

    /// A reply to a read of round `round` from `node`: the counter, or `None`
    /// if the read failed.
    pub(crate) fn on_read(&mut self, round: u32, node: usize, value: Option<u64>) -> FenceNext {
        if round != self.round || node >= self.nodes {
            return FenceNext::Wait;
        }
        let Phase::Read { max } = &mut self.phase else {
            return FenceNext::Wait;
        };
        if self.replies[node].is_some() {
            return FenceNext::Wait;
        }
        if let Some(v) = value {
            *max = (*max).max(v);
        }
        let max = *max;
        self.replies[node] = Some(value.is_some());
        if self.count(true) >= self.quorum() {
            let value = max.saturating_add(1);
            self.phase = Phase::Write { value };
            self.replies = vec![None; self.nodes];
            return FenceNext::Write {
                round: self.round,
                value,
            };
        }
        self.check_failed()
    }

    /// A reply to a write of round `round` from `node`: whether that write
    /// raised the counter to our value, or `None` if it failed.
    pub(crate) fn on_write(&mut self, round: u32, node: usize, raised: Option<bool>) -> FenceNext {
        if round != self.round || node >= self.nodes {
            return FenceNext::Wait;
        }
        let Phase::Write { value } = self.phase else {
            return FenceNext::Wait;
        };
        if self.replies[node].is_some() {
            return FenceNext::Wait;
        }
        self.replies[node] = Some(raised == Some(true));
        if self.count(true) >= self.quorum() {
            return FenceNext::Done(value);
        }
        self.check_failed()
    }

    /// A round whose majority can no longer be reached: retry while rounds
    /// remain, else fail.
    fn check_failed(&mut self) -> FenceNext {
        if self.count(false) <= self.nodes - self.quorum() {
            return FenceNext::Wait;
        }
        if self.round >= MAX_ROUNDS {
            return FenceNext::Failed;
        }
        self.round += 1;
        self.phase = Phase::Read { max: 0 };
        self.replies = vec![None; self.nodes];
        FenceNext::Read { round: self.round }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_round_reads_a_majority_then_raises_a_majority() {
        let mut f = Fence::start(3);
        assert_eq!(f.on_read(1, 0, Some(4)), FenceNext::Wait);
        assert_eq!(
            f.on_read(1, 2, Some(7)),
            FenceNext::Write { round: 1, value: 8 }
        );
        // A late read of the finished phase changes nothing.
        assert_eq!(f.on_read(1, 1, Some(100)), FenceNext::Wait);
        assert_eq!(f.on_write(1, 1, Some(true)), FenceNext::Wait);
        assert_eq!(f.on_write(1, 1, Some(true)), FenceNext::Wait, "duplicate");
        assert_eq!(f.on_write(1, 0, Some(true)), FenceNext::Done(8));
    }

    #[test]
    fn a_write_that_did_not_raise_is_not_an_ack() {
        // Two attempts read max 5 and both write 6: per node only the first
        // raises it, so at most one of them collects a majority.
        let mut a = Fence::start(3);
        let mut b = Fence::start(3);
        for f in [&mut a, &mut b] {
            f.on_read(1, 0, Some(5));
            assert_eq!(
                f.on_read(1, 1, Some(5)),
                FenceNext::Write { round: 1, value: 6 }
            );
        }
        // Node 0 and 1 were raised by a, node 2 by b.
        assert_eq!(a.on_write(1, 0, Some(true)), FenceNext::Wait);
        assert_eq!(b.on_write(1, 0, Some(false)), FenceNext::Wait);
        assert_eq!(b.on_write(1, 1, Some(false)), FenceNext::Read { round: 2 });
        assert_eq!(a.on_write(1, 1, Some(true)), FenceNext::Done(6));
        // b's next round reads 6 from a majority and writes 7.
        b.on_read(2, 0, Some(6));
        assert_eq!(
            b.on_read(2, 2, Some(6)),
            FenceNext::Write { round: 2, value: 7 }
        );
    }

    #[test]
    fn failures_retry_then_give_up() {
        let mut f = Fence::start(3);
        assert_eq!(f.on_read(1, 0, None), FenceNext::Wait);
        assert_eq!(f.on_read(1, 1, None), FenceNext::Read { round: 2 });
        assert_eq!(f.on_read(1, 2, Some(3)), FenceNext::Wait, "stale round");
        assert_eq!(f.on_read(2, 0, None), FenceNext::Wait);
        assert_eq!(f.on_read(2, 1, None), FenceNext::Read { round: 3 });
        f.on_read(3, 0, None);
        assert_eq!(f.on_read(3, 2, None), FenceNext::Failed);
        assert_eq!(f.round(), MAX_ROUNDS);
    }

    #[test]
    fn one_node_is_its_own_majority() {
        let mut f = Fence::start(1);
        assert_eq!(f.on_read(1, 0, None), FenceNext::Read { round: 2 });
        assert_eq!(
            f.on_read(2, 0, Some(0)),
            FenceNext::Write { round: 2, value: 1 }
        );
        assert_eq!(f.on_write(2, 0, Some(true)), FenceNext::Done(1));
        assert_eq!(f.on_read(9, 5, Some(1)), FenceNext::Wait, "unknown node");
    }
}
