//! Hand-over messages read on a caller's runtime: a connection subscribed to
//! this locker's hand-over channel beside each direct connection, read by a
//! task of the runtime that opened it.
//!
//! Why: a hand-over's message (`LockerOptions::handover`) reaches the
//! engine's connection, on the engine's thread, which feeds the lock core
//! and wakes the waiting caller on its own runtime: two threads woken in
//! turn before the caller holds the lock, where a waiter reading its own
//! connection needs one. On a small machine that second wake-up is most of
//! what separates a hand-over between two lockers from the protocol's own
//! cost (BENCHMARKS.md, "Hand-over messages read on the caller's runtime").
//! Here the message wakes the caller's runtime, which feeds the core on its
//! own thread and wakes the caller there.
//!
//! What keeps it safe: the engine's connection is still subscribed and gets
//! every message too, so a hand-over never waits for the application's
//! runtime (a saturated one reads this connection late, and the engine's
//! copy is taken first). The lock takes whichever copy comes first
//! (`Shared::first_handed`). A copy read here is taken only when none of the
//! lock's commands is out on the engine's connection (`LockCore::engine_quiet`),
//! so that the core sees the events in an order the engine's connection
//! could have given: that connection carries the message behind the replies
//! of every command the server ran before it, and here none is to come.
//! Otherwise it is left to the engine's copy.
//!
//! What ends it: the direct connection it stands beside ending (the locker
//! closing, the engine reconnecting, the runtime shutting down), or anything
//! on this connection going wrong (a refused `AUTH`, bytes that are no reply,
//! the server closing it), which leaves the engine's copy to every message
//! until the next direct connection opens one again.

use std::sync::Arc;

use fred::types::Value;

use crate::context::Shared;
use crate::node;
use crate::resp::Frame;
use crate::wire::Wire;

/// Reads node `node`'s hand-over messages until the connection ends; logs
/// why it ended. Nothing if hand-over is off.
pub(crate) async fn listen(shared: &Arc<Shared>, node: usize) {
    let Some(channel) = shared.settings.handover.as_deref() else {
        return;
    };
    let why = run(shared, node, channel).await;
    let node = shared
        .settings
        .nodes
        .get(node)
        .map(|n| n.display())
        .unwrap_or_default();
    tracing::debug!(%node, error = %why, "hand-over connection ended");
}

/// Connects as a direct connection does (the credentials, the database),
/// subscribes, and offers each message to its lock; why it ended.
async fn run(shared: &Arc<Shared>, node: usize, channel: &str) -> String {
    let Some(addr) = shared.settings.nodes.get(node) else {
        return "no such node".into();
    };
    let s = &shared.settings;
    let wire =
        match tokio::time::timeout(s.connect_timeout, Wire::connect(addr, s.timeout, None)).await {
            Ok(Ok(wire)) => wire,
            Ok(Err(e)) => return e.to_string(),
            Err(_) => return "connect timed out".into(),
        };
    let mut subscription = match wire.subscribe(&[b"SUBSCRIBE", channel.as_bytes()]) {
        Ok(subscription) => subscription,
        Err(e) => return e.to_string(),
    };
    let mut frames = Vec::new();
    loop {
        if let Err(e) = subscription.next(&mut frames).await {
            return e.to_string();
        }
        for frame in frames.drain(..) {
            match frame {
                Frame::Reply(Ok(Value::Array(parts))) => take(shared, channel, &parts),
                Frame::Reply(Err(e)) => return e.to_string(),
                // Anything else that is no message.
                _ => {}
            }
        }
    }
}

/// A message on `channel` (`message`, the channel, the payload), offered to
/// the lock of its key. The subscription's own reply, and anything else, is
/// passed over; so is a message for a name with no lock here (the engine's
/// copy deals with it).
fn take(shared: &Arc<Shared>, channel: &str, parts: &[Value]) {
    let [kind, on, payload] = parts else {
        return;
    };
    if kind.as_bytes() != Some(b"message") || on.as_bytes() != Some(channel.as_bytes()) {
        return;
    }
    let Some(msg) = payload.as_bytes() else {
        return;
    };
    let Some(h) = node::read_handover(shared, msg) else {
        return;
    };
    let Some(route) = shared.lock_route(h.name) else {
        return;
    };
    let (name, index, token) = (h.name, h.index, h.token.clone());
    if route.port.handed(index, h.token, h.cmd, h.fence) {
        let token = token.short();
        tracing::trace!(
            lock = name,
            key = index,
            token,
            "handed over, read on a caller's runtime"
        );
        crate::metrics::handover_taken_here();
    }
}
