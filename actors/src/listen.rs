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

use std::io::ErrorKind;

use fred::types::Value;
use tokio::net::TcpStream;

use crate::context::Shared;
use crate::node;
use crate::resp::{self, Frame};

/// The most bytes read and not yet a whole message: a hand-over's message is
/// under two hundred bytes.
const MAX_BUFFERED: usize = 1 << 20;

/// How much room each read asks for.
const READ_CHUNK: usize = 4096;

/// Reads node `node`'s hand-over messages until the connection ends; logs
/// why it ended. Nothing if hand-over is off.
pub(crate) async fn listen(shared: &Arc<Shared>, node: usize) {
    let Some(channel) = shared.settings.handover.as_deref() else {
        return;
    };
    let result = run(shared, node, channel).await;
    let node = shared
        .settings
        .nodes
        .get(node)
        .map(|n| n.display())
        .unwrap_or_default();
    match result {
        Ok(()) => tracing::debug!(%node, "hand-over connection closed by the server"),
        Err(why) => tracing::debug!(%node, error = %why, "hand-over connection ended"),
    }
}

async fn run(shared: &Arc<Shared>, node: usize, channel: &str) -> Result<(), String> {
    let addr = shared.settings.nodes.get(node).ok_or("no such node")?;
    let (host, port) = addr.hosts.first().ok_or("no host")?;
    let connect = TcpStream::connect((host.as_str(), *port));
    let stream = tokio::time::timeout(shared.settings.connect_timeout, connect)
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| e.to_string())?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    if let Some(password) = &addr.password {
        let mut args: Vec<&[u8]> = vec![b"AUTH"];
        if let Some(user) = &addr.username {
            args.push(user.as_bytes());
        }
        args.push(password.as_bytes());
        resp::encode(&mut out, args.into_iter());
    }
    resp::encode(
        &mut out,
        [&b"SUBSCRIBE"[..], channel.as_bytes()].into_iter(),
    );
    let mut written = 0;
    while written < out.len() {
        stream.writable().await.map_err(|e| e.to_string())?;
        match stream.try_write(&out[written..]) {
            Ok(n) => written += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    let mut input = Vec::with_capacity(READ_CHUNK);
    loop {
        let mut at = 0;
        while let Some((frame, used)) = resp::parse(&input[at..]).map_err(|m| m.0.to_string())? {
            at += used;
            match frame {
                Frame::Reply(Ok(Value::Array(parts))) => take(shared, channel, &parts),
                Frame::Reply(Err(e)) => return Err(e.to_string()),
                // `AUTH`'s `OK`, and anything else that is no message.
                _ => {}
            }
        }
        input.drain(..at);
        if input.len() > MAX_BUFFERED {
            return Err("a message longer than any hand-over's".into());
        }
        stream.readable().await.map_err(|e| e.to_string())?;
        let len = input.len();
        input.resize(len + READ_CHUNK, 0);
        let read = stream.try_read(&mut input[len..]);
        input.truncate(len + *read.as_ref().unwrap_or(&0));
        match read {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(e) => return Err(e.to_string()),
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
