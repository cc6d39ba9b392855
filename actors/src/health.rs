//! The node health table: per node, connected or not, since when, how many
//! times it reconnected, and why it last went down. Written by the node
//! actors as their connections come and go, read by `Engine::health` without
//! a round trip through any actor (a readiness probe must answer even when
//! the actors are busy).
//!
//! A connection belongs to the actor that made it: only that actor's loss
//! marks the node down, so an old actor's exit cannot mark its successor's
//! fresh connection down.

use std::time::{Instant, SystemTime};

use crate::inspect::NodeHealth;

/// One node's entry.
#[derive(Debug, Clone)]
pub(crate) struct NodeSlot {
    link: Link,
    since: (Instant, SystemTime),
    connections: u64,
    last_error: Option<String>,
}

/// The node's connection.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Link {
    /// Up, made by this actor.
    Up(ractor::ActorId),
    Down,
}

/// Every node's entry, in node order.
#[derive(Debug)]
pub(crate) struct HealthTable {
    slots: Vec<NodeSlot>,
}

impl HealthTable {
    pub(crate) fn new(nodes: usize) -> HealthTable {
        let now = (Instant::now(), SystemTime::now());
        HealthTable {
            slots: vec![
                NodeSlot {
                    link: Link::Down,
                    since: now,
                    connections: 0,
                    last_error: None,
                };
                nodes
            ],
        }
    }

    /// Actor `owner` connected node `index`. True if this changed the table.
    pub(crate) fn up(&mut self, index: usize, owner: ractor::ActorId) -> bool {
        let Some(slot) = self.slots.get_mut(index) else {
            return false;
        };
        slot.link = Link::Up(owner);
        slot.since = (Instant::now(), SystemTime::now());
        slot.connections += 1;
        true
    }

    /// Actor `owner`'s connection to node `index` ended, for `why`. Only
    /// the connection's own actor can mark the node down. True if it did.
    pub(crate) fn lost(&mut self, index: usize, owner: ractor::ActorId, why: &str) -> bool {
        let Some(slot) = self.slots.get_mut(index) else {
            return false;
        };
        if slot.link != Link::Up(owner) {
            return false;
        }
        slot.link = Link::Down;
        slot.since = (Instant::now(), SystemTime::now());
        slot.last_error = Some(why.to_owned());
        true
    }

    /// An attempt to connect node `index` failed, for `why`: recorded while
    /// the node is down (a connection another actor holds is not touched).
    pub(crate) fn failed(&mut self, index: usize, why: &str) {
        if let Some(slot) = self.slots.get_mut(index) {
            if slot.link == Link::Down {
                slot.last_error = Some(why.to_owned());
            }
        }
    }

    /// Which nodes are up, in node order.
    pub(crate) fn up_flags(&self) -> Vec<bool> {
        self.slots
            .iter()
            .map(|s| matches!(s.link, Link::Up(_)))
            .collect()
    }

    /// A snapshot, with each node's address.
    pub(crate) fn snapshot(&self, addresses: &[String]) -> Vec<NodeHealth> {
        let now = Instant::now();
        self.slots
            .iter()
            .enumerate()
            .map(|(node, s)| NodeHealth {
                node,
                address: addresses.get(node).cloned().unwrap_or_default(),
                connected: matches!(s.link, Link::Up(_)),
                since: s.since.1,
                duration: now.saturating_duration_since(s.since.0),
                reconnects: s.connections.saturating_sub(1),
                last_error: s.last_error.clone(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ractor::ActorId;

    #[test]
    fn connections_belong_to_their_actor() {
        let (a, b) = (ActorId::Local(1), ActorId::Local(2));
        let mut t = HealthTable::new(2);
        let addrs = vec!["n0".to_owned(), "n1".to_owned()];
        let s = t.snapshot(&addrs);
        assert!(!s[0].connected && s[0].reconnects == 0 && s[0].last_error.is_none());
        // A failed first attempt: still down, with its error; the exit of
        // its actor, which never connected, changes nothing.
        t.failed(0, "refused");
        assert!(!t.lost(0, a, "actor stopped"));
        assert_eq!(t.snapshot(&addrs)[0].last_error.as_deref(), Some("refused"));
        assert!(t.up(0, a));
        let s = t.snapshot(&addrs);
        assert!(s[0].connected);
        assert_eq!(s[0].reconnects, 0);
        assert_eq!(t.up_flags(), [true, false]);
        // Actor a's connection breaks; actor b reconnects; a's late exit
        // does not take b's connection down.
        assert!(t.lost(0, a, "reset"));
        assert!(!t.snapshot(&addrs)[0].connected);
        assert!(t.up(0, b));
        assert!(!t.lost(0, a, "actor stopped"));
        // A failed attempt elsewhere does not overwrite a live connection's state.
        t.failed(0, "late");
        let s = t.snapshot(&addrs);
        assert!(s[0].connected);
        assert_eq!(s[0].reconnects, 1);
        assert_eq!(s[0].last_error.as_deref(), Some("reset"));
        assert_eq!(s[1].address, "n1");
        // Out of range: ignored.
        assert!(!t.up(9, a) && !t.lost(9, a, "x"));
        t.failed(9, "x");
    }
}
