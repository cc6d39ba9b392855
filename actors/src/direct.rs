//! Direct connections: a caller's acquisitions and releases sent from its own
//! runtime, on a connection of their own to the node, instead of through the
//! engine's thread.
//!
//! Why: with the engine on a thread of its own, a command a caller waits for
//! crosses threads twice (in to the engine's command pump, the answer back
//! out), and on a small machine those two wake-ups cost about half a round
//! trip more (BENCHMARKS.md, "Which connection the hot path takes"). Sent
//! from the caller's runtime, the command and its reply stay there: the lock
//! core is fed the request on the caller's thread already (see `lock`), and
//! now the reply too. A direct connection has a command pump of its own
//! (`node::run_pump`, on the caller's runtime), so a burst of calls goes out
//! in script calls of many keys as on the engine's connection.
//!
//! What keeps loss detection: the connection's tracking is redirected to the
//! engine's connection of the node (`CLIENT TRACKING ON REDIRECT <id>`), so
//! the keys its scripts read send their invalidations where every other
//! key's go, and the engine routes them as before. The redirect names one
//! connection of the engine: when that one is replaced (a reconnect), a
//! direct connection redirected to the old one is not used again, but closed
//! and opened anew; and a command that was out across the change (the
//! engine's id before and after it differ) is followed by a re-check of its
//! node's keys of that lock, as the engine's reconnect does for the keys it
//! knew of. fred never reconnects a direct connection by itself (that would
//! lose its tracking without a word): one whose connection ends is dropped,
//! and the next caller opens another.
//!
//! What keeps the order of a key's writes: each connection delivers its own
//! commands in order, but nothing orders one connection's against the
//! other's. So only an acquisition or a release goes direct, and only when
//! nothing else of its key is out (`LockCore::may_go_direct`); every other
//! command (extensions, checks, fair-queue updates, the fencing counter)
//! stays on the engine's connection, driven by the engine's thread whatever
//! the caller's runtime does. Tokens make a late write harmless to other
//! holders: a delete compares the token, and an acquisition the core gave
//! up on (its reply overdue, the caller's runtime stalled before writing
//! it) can only take a free key, whose expiry it sets from its send time.
//!
//! Where: single instances (`Topology::Standalone`) with the engine on its
//! own thread (`dedicated_runtime`), and only from a caller's runtime (not
//! the engine's thread, not outside a runtime). One connection per locker
//! and node, opened by the first caller that finds none; callers on other
//! runtimes use it too (fred's client works across runtimes). If the
//! runtime that opened it shuts down, its pump goes with it: the next send
//! finds it gone and drops the connection, and the next caller opens one on
//! its own runtime.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fred::clients::Client;
use fred::interfaces::ClientLike;
use fred::types::{ClusterHash, CustomCommand, Value};
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

use crate::addr::Topology;
use crate::context::{lock, DirectConn, DirectPump, DirectSlot, Shared};
use crate::node;

/// The most commands a direct connection has out at once; more go on the
/// engine's connection. A bound on the work a burst puts on the caller's
/// runtime (which feeds every reply of its direct connection to its lock
/// core): a direct connection is for the latency of a few callers, a burst
/// is what the engine's connection and its calls of many keys are for. The
/// value is a choice, not a measurement.
pub(crate) const MAX_OUT: usize = 16;

/// How long after a failed attempt to open a direct connection the next is
/// made; meanwhile commands take the engine's connection.
const RETRY_OPEN: Duration = Duration::from_secs(1);

/// The caller's runtime, if a command produced here may go direct: direct
/// connections are on, and this is a caller's runtime (not an engine's
/// thread).
pub(crate) fn caller_runtime(shared: &Shared) -> Option<Handle> {
    if !shared.settings.direct || crate::runtime::on_engine_thread() {
        return None;
    }
    Handle::try_current().ok()
}

/// Node `node`'s direct connection, if one is open and redirected to the
/// engine's current connection. Otherwise `None` (the command takes the
/// engine's connection), and if none is being opened, one is opened on
/// `runtime` for the commands after it.
pub(crate) fn conn(shared: &Arc<Shared>, node: usize, runtime: &Handle) -> Option<DirectConn> {
    let addr = shared.settings.nodes.get(node)?;
    if addr.topology != Topology::Standalone {
        return None;
    }
    // No engine connection (or no id for it): nothing to redirect to.
    let engine = shared.engine_conn(node).filter(|&id| id != 0)?;
    let mut slot = lock(shared.direct.get(node)?);
    match &*slot {
        DirectSlot::Open(c) if c.pump.redirect == engine => {
            // Busy: this one takes the engine's connection.
            let busy = c.pump.out.load(Ordering::Relaxed) >= MAX_OUT;
            return (!busy).then(|| c.clone());
        }
        DirectSlot::Open(c) => {
            tracing::debug!(node = %addr.display(), "the engine reconnected: a new direct connection");
            c.stop.cancel();
        }
        DirectSlot::Opening => return None,
        DirectSlot::Failed { until } if Instant::now() < *until => return None,
        DirectSlot::Closed | DirectSlot::Failed { .. } => {}
    }
    *slot = DirectSlot::Opening;
    runtime.spawn(open(shared.clone(), node, engine));
    None
}

/// Opens node `node`'s direct connection on the current runtime, its
/// tracking redirected to the engine's connection `engine`, and starts its
/// command pump there; runs until it closes.
async fn open(shared: Arc<Shared>, node: usize, engine: u64) {
    let generation = shared.direct_generation.fetch_add(1, Ordering::Relaxed) + 1;
    // Dropped unsettled (its runtime shut down meanwhile): the next caller
    // opens one.
    let mut unsettled = Unsettled(Some(&shared.direct[node]));
    let opened = async {
        // The engine's client settings: no reconnect policy, so a broken
        // connection stays broken (and is replaced) rather than coming back
        // without tracking.
        let client = node::build_client(&shared.settings.nodes[node], &shared.settings)?;
        let handle = client.init().await?;
        if let Err(e) = redirect(&client, &shared, engine).await {
            handle.abort();
            return Err(e);
        }
        Ok((client, handle))
    };
    let opened = tokio::time::timeout(shared.settings.connect_timeout, opened).await;
    let pump = DirectPump {
        out: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
        node,
        redirect: engine,
        generation,
    };
    let settled = settle(&shared, pump.clone(), opened);
    // Settled: from here on the slot may hold another opener's `Opening`,
    // which is not this task's to clear.
    unsettled.0 = None;
    let Some((client, handle, stop)) = settled else {
        return;
    };
    // Closed with the locker, when replaced or failing, or gone by itself:
    // out of the slot either way. The pump ends once the slot's queue is
    // dropped and its calls are answered.
    tokio::select! {
        _ = handle => {}
        _ = stop.cancelled() => {}
        _ = shared.closed.cancelled() => {}
    }
    shared.close_direct(&pump);
    let _ = tokio::time::timeout(Duration::from_secs(1), client.quit()).await;
}

/// Turns tracking on for `client`, redirected to the engine's connection
/// `engine` (with `NOLOOP` if the engine's has it).
async fn redirect(client: &Client, shared: &Shared, engine: u64) -> Result<(), fred::error::Error> {
    if !shared.settings.tracking {
        return Ok(());
    }
    let id = engine.to_string();
    let mut args = vec!["TRACKING", "ON", "REDIRECT", id.as_str()];
    if shared.settings.no_loop {
        args.push("NOLOOP");
    }
    let _: Value = client
        .custom(
            CustomCommand::new_static("CLIENT", ClusterHash::FirstKey, false),
            args,
        )
        .await?;
    Ok(())
}

type Opened = Result<
    Result<(Client, fred::types::ConnectHandle), fred::error::Error>,
    tokio::time::error::Elapsed,
>;

/// Puts the outcome of opening connection `pump` in its node's slot, and
/// starts its pump; the connection and what stops it, if it is to be used.
fn settle(
    shared: &Arc<Shared>,
    pump: DirectPump,
    opened: Opened,
) -> Option<(Client, fred::types::ConnectHandle, CancellationToken)> {
    let addr = &shared.settings.nodes[pump.node];
    let mut slot = lock(&shared.direct[pump.node]);
    let (client, handle) = match opened {
        Ok(Ok(opened)) => opened,
        failed => {
            let why = match failed {
                Ok(Err(e)) => e.to_string(),
                _ => "timed out".to_owned(),
            };
            tracing::debug!(node = %addr.display(), error = %why, "no direct connection: commands take the engine's");
            if matches!(*slot, DirectSlot::Opening) {
                *slot = DirectSlot::Failed {
                    until: Instant::now() + RETRY_OPEN,
                };
            }
            return None;
        }
    };
    // The engine reconnected meanwhile (the redirect is stale already), or
    // the slot is no longer this opener's.
    let stale = shared.engine_conn(pump.node) != Some(pump.redirect);
    if stale || shared.closed.is_cancelled() || !matches!(*slot, DirectSlot::Opening) {
        if matches!(*slot, DirectSlot::Opening) {
            *slot = DirectSlot::Closed;
        }
        handle.abort();
        return None;
    }
    tracing::debug!(node = %addr.display(), redirect = pump.redirect, "direct connection open");
    let (lane, jobs) = tokio::sync::mpsc::unbounded_channel();
    // Exempt from the cooperative budget, as the engine's pump (see
    // `NodeActor::pre_start`).
    tokio::spawn(tokio::task::unconstrained(node::run_pump(
        client.clone(),
        shared.clone(),
        jobs,
        false,
        Some(pump.clone()),
    )));
    let stop = CancellationToken::new();
    *slot = DirectSlot::Open(DirectConn {
        lane,
        pump,
        stop: stop.clone(),
    });
    Some((client, handle, stop))
}

/// Leaves a slot still marked `Opening` closed when dropped, unless
/// disarmed (`None`) once the opening settled.
struct Unsettled<'a>(Option<&'a std::sync::Mutex<DirectSlot>>);

impl Drop for Unsettled<'_> {
    fn drop(&mut self) {
        if let Some(slot) = self.0 {
            let mut slot = lock(slot);
            if matches!(*slot, DirectSlot::Opening) {
                *slot = DirectSlot::Closed;
            }
        }
    }
}
