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
//! now the reply too. No task stands between the caller and the connection:
//! the caller's own task sends the command and takes its reply while it
//! waits for its answer (`drive`), and a command nobody waits for (a guard
//! dropped) runs on a task of its own on the caller's runtime (`spawn`).
//! The connection is one of our own (`wire`), which the callers' tasks
//! write and read themselves, so a lock and its release cost no wake-up of
//! a connection task at all, where the floor's fred commands cost two each
//! (a node over TLS gets a fred client instead, and pays them). A burst is
//! not what a direct connection is for: past `MAX_OUT` commands out, the
//! rest take the engine's connection and its script calls of many keys.
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
//! knew of. A direct connection is never reconnected (that would lose its
//! tracking without a word; the fred client of a TLS node has no reconnect
//! policy for that reason): one whose connection ends is dropped, and the
//! next caller opens another. The server keeps a read key tracked
//! for the connection that read it, only redirecting where it reports: so
//! when a direct connection ends, every lock re-checks its keys on the node
//! (`Closing`), which reads them again on the engine's connection; without
//! that, a lock taken on it heard of a deleted key only at its next
//! extension (`tests/direct.rs` has the case).
//!
//! What keeps the order of a key's writes: each connection delivers its own
//! commands in order, but nothing orders one connection's against the
//! other's. So only an acquisition or a release goes direct, and only when
//! no other write of its key is out but our own deletes, a read-only check
//! aside (`LockCore::route`: deletes commute, and an acquisition
//! right behind them, a chain, goes on the connection they took; `send_now`
//! hands a dropped guard's delete to it before the next acquisition can
//! be), or acquisitions that went on one direct connection: it then goes
//! behind them there (`Route::Behind`), the delete of a lock released while
//! its last key's acquisition is out. A command made on a caller's thread
//! is handed to its connection before any made after it (`drive`,
//! `send_now`, `detached`); the core is told which connection it took
//! (`LockCore::went_direct`) only then, not for the commands the actor makes
//! on the engine's thread, which wait for a task of their own. Every other
//! command (extensions, checks, fair-queue updates, the fencing counter)
//! stays on the engine's connection, driven by the engine's thread whatever
//! the caller's runtime does. Tokens make a late write harmless to other
//! holders: a delete compares the token, and an acquisition the core gave
//! up on (its reply overdue, the caller's runtime stalled before writing
//! it) can only take a free key, whose expiry it sets from its send time.
//!
//! Where: single instances (`Topology::Standalone`), and from a caller's
//! runtime: not the engine's thread, not a lock actor's handler where the
//! engine runs on the callers' runtime (`dedicated_runtime` off;
//! `runtime::EngineScope`), not outside a runtime. One exception: a waiter's
//! acquisition the engine makes (a retry on an invalidation or a timer) goes
//! on the direct connection if one is open (`open_conn`), on a task of its
//! own on the runtime that opened it, while that runtime answers such
//! commands promptly (`Pace`: a saturated application runtime must not hold
//! up a wake-up that the engine's connection would not). Sent on the
//! engine's connection, its read of the key had that connection track the
//! key too, and our own later writes of it on the direct connection came
//! back as invalidations, since `NOLOOP` spares only the connection that
//! writes: a check or a retry for nothing, which read the key on the
//! engine's connection again. A holder's commands stay on the engine's
//! thread. One connection per locker and node, opened by the first caller
//! that finds none; callers on other runtimes use it too (its socket's
//! readiness comes from the I/O driver of the runtime that opened it). If
//! that runtime shuts down, its socket fails (and a TLS node's fred
//! connection task goes with it), and so does the task that keeps the slot:
//! it takes the connection out as it is dropped, and the next caller opens
//! one on its own runtime.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use fred::clients::Client;
use fred::interfaces::ClientLike;
use fred::types::{ClusterHash, CustomCommand, Value};
use tokio::runtime::Handle;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::addr::Topology;
use crate::context::{lock, DirectConn, DirectInfo, DirectSlot, Pace, Shared};
use crate::exec::Exec;
use crate::few::OneOrMore;
use crate::msg::{DirectCmd, DirectLink, Running, Sends};
use crate::node;
use crate::wire::Wire;

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
        DirectSlot::Open(c) if c.info.redirect == engine => {
            // Busy: this one takes the engine's connection.
            let busy = c.info.out.load(Ordering::Relaxed) >= MAX_OUT;
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

/// Node `node`'s direct connection if one is open, redirected to the
/// engine's current connection, not busy, and its runtime not busy either
/// (`Pace`); never opens one. For the commands the engine's thread makes,
/// which have no caller's runtime to open one on, and run on a task of
/// their own on the connection's.
pub(crate) fn open_conn(shared: &Shared, node: usize) -> Option<DirectConn> {
    if !shared.settings.direct {
        return None;
    }
    let engine = shared.engine_conn(node).filter(|&id| id != 0)?;
    match &*lock(shared.direct.get(node)?) {
        DirectSlot::Open(c)
            if c.info.redirect == engine
                && c.info.out.load(Ordering::Relaxed) < MAX_OUT
                && !c.info.pace.busy(Instant::now()) =>
        {
            Some(c.clone())
        }
        _ => None,
    }
}

/// Opens node `node`'s direct connection on the current runtime, its
/// tracking redirected to the engine's connection `engine`; runs until it
/// closes. A connection of our own (`wire`), which this runtime's callers
/// drive, or for a node over TLS a fred client, whose connection task runs
/// here.
async fn open(shared: Arc<Shared>, node: usize, engine: u64) {
    let generation = shared.direct_generation.fetch_add(1, Ordering::Relaxed) + 1;
    // Dropped unsettled (its runtime shut down meanwhile): the next caller
    // opens one.
    let mut unsettled = Unsettled(Some(&shared.direct[node]));
    let addr = &shared.settings.nodes[node];
    let opened = async {
        if addr.tls {
            return open_fred(&shared, node, engine).await;
        }
        let tracking = shared
            .settings
            .tracking
            .then_some((engine, shared.settings.no_loop));
        let wire = Wire::connect(addr, shared.settings.timeout, tracking).await?;
        Ok(Transport::Wire(Arc::new(wire)))
    };
    let opened = tokio::time::timeout(shared.settings.connect_timeout, opened).await;
    let info = DirectInfo {
        out: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
        node,
        redirect: engine,
        generation,
        pace: Arc::new(Pace::new(Instant::now())),
    };
    let settled = settle(&shared, info.clone(), opened);
    // Settled: from here on the slot may hold another opener's `Opening`,
    // which is not this task's to clear.
    unsettled.0 = None;
    let Some((mut transport, stop)) = settled else {
        return;
    };
    // Out of the slot however this task ends: closed with the locker,
    // replaced, gone by itself, or dropped with its runtime (which takes
    // the connection's task with it), so that no command is sent to a
    // connection nobody drives.
    let open = Closing(&shared, &info);
    // Beside our own connection, the hand-over messages (with `handover`):
    // ended, it leaves them to the engine's copy, and the direct
    // connection goes on.
    let ours = matches!(transport, Transport::Wire(_));
    let listening = async {
        if ours {
            crate::listen::listen(&shared, node).await;
        }
        std::future::pending::<()>().await
    };
    tokio::select! {
        _ = transport.ended(&shared) => {}
        _ = stop.cancelled() => {}
        _ = shared.closed.cancelled() => {}
        _ = listening => {}
    }
    drop(open);
    transport.close().await;
}

/// What a direct connection runs on.
enum Transport {
    /// Our own.
    Wire(Arc<Wire>),
    /// A fred client (TLS), and its connection task.
    Fred(Client, fred::types::ConnectHandle),
}

impl Transport {
    /// Ready once the connection has ended by itself: closed, failed, or
    /// (ours) a reply overdue past the dead-link bound, which fred's client
    /// checks on its own.
    async fn ended(&mut self, shared: &Shared) {
        match self {
            Transport::Fred(_, handle) => {
                let _ = handle.await;
            }
            Transport::Wire(wire) => {
                let (after, every) = (
                    node::unresponsive_after(&shared.settings),
                    node::unresponsive_check(&shared.settings),
                );
                tokio::select! {
                    _ = wire.watch() => {}
                    _ = wire.overdue(after, every) => {}
                }
            }
        }
    }

    /// Closes the connection once the commands out have finished (a second
    /// at most), as fred's `QUIT` does.
    async fn close(self) {
        let within = Duration::from_secs(1);
        match self {
            Transport::Fred(client, _) => {
                let _ = tokio::time::timeout(within, client.quit()).await;
            }
            Transport::Wire(wire) => {
                let _ = tokio::time::timeout(within, wire.quiet()).await;
                wire.end(fred::error::Error::new(
                    fred::error::ErrorKind::Canceled,
                    "direct connection closed",
                ));
            }
        }
    }

    /// The connection as its commands see it.
    fn link(&self, shared: &Arc<Shared>, info: &DirectInfo) -> Arc<dyn DirectLink> {
        fn link<C: Exec + Send + std::fmt::Debug + 'static>(
            client: Arc<C>,
            shared: &Arc<Shared>,
            info: &DirectInfo,
        ) -> Arc<dyn DirectLink> {
            Arc::new(Link {
                client,
                shared: Arc::downgrade(shared),
                info: info.clone(),
            })
        }
        match self {
            Transport::Wire(wire) => link(wire.clone(), shared, info),
            Transport::Fred(client, _) => link(Arc::new(client.clone()), shared, info),
        }
    }
}

/// A fred client as node `node`'s direct connection: the engine's client
/// settings, but no reconnect policy, so a broken connection stays broken
/// (and is replaced) rather than coming back without tracking.
async fn open_fred(
    shared: &Shared,
    node: usize,
    engine: u64,
) -> Result<Transport, fred::error::Error> {
    let client = node::build_client(
        &shared.settings.nodes[node],
        &shared.settings,
        node::Role::Direct,
    )?;
    let handle = client.init().await?;
    if let Err(e) = redirect(&client, shared, engine).await {
        handle.abort();
        return Err(e);
    }
    Ok(Transport::Fred(client, handle))
}

/// Dropped when a direct connection ends: takes it out of its slot, and has
/// every lock re-check its keys on the node. The server tracks a key for the
/// connection that read it, not for the one its invalidations are
/// redirected to: once the direct connection is gone, a key acquired on it
/// would send its invalidations nowhere until its next extension. The
/// re-check reads the keys again on the engine's connection, which tracks
/// them from then on (and finds a key lost meanwhile).
struct Closing<'a>(&'a Shared, &'a DirectInfo);

impl Drop for Closing<'_> {
    fn drop(&mut self) {
        let (shared, info) = (self.0, self.1);
        shared.close_direct(info);
        if shared.closed.is_cancelled() {
            return;
        }
        tracing::debug!(
            node = %shared.settings.nodes[info.node].display(),
            "direct connection closed: locks re-check their keys there"
        );
        shared.recheck_all(Some(info.node));
    }
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

type Opened = Result<Result<Transport, fred::error::Error>, tokio::time::error::Elapsed>;

/// Puts the outcome of opening connection `info` in its node's slot; the
/// connection and what stops it, if it is to be used.
fn settle(
    shared: &Arc<Shared>,
    info: DirectInfo,
    opened: Opened,
) -> Option<(Transport, CancellationToken)> {
    let addr = &shared.settings.nodes[info.node];
    let mut slot = lock(&shared.direct[info.node]);
    let transport = match opened {
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
    let stale = shared.engine_conn(info.node) != Some(info.redirect);
    if stale || shared.closed.is_cancelled() || !matches!(*slot, DirectSlot::Opening) {
        if matches!(*slot, DirectSlot::Opening) {
            *slot = DirectSlot::Closed;
        }
        // A wire's socket closes as it is dropped.
        if let Transport::Fred(_, handle) = &transport {
            handle.abort();
        }
        return None;
    }
    tracing::debug!(node = %addr.display(), redirect = info.redirect, "direct connection open");
    let stop = CancellationToken::new();
    *slot = DirectSlot::Open(DirectConn {
        link: transport.link(shared, &info),
        info,
        stop: stop.clone(),
        runtime: Handle::current(),
    });
    Some((transport, stop))
}

/// A direct connection as its commands see it. Holds its locker weakly: it
/// lives in the locker's own slot.
#[derive(Debug)]
struct Link<C> {
    client: Arc<C>,
    shared: Weak<Shared>,
    info: DirectInfo,
}

impl<C: Exec + Send + std::fmt::Debug + 'static> DirectLink for Link<C> {
    fn run(&self, cmd: DirectCmd) -> Running {
        let (client, shared) = (self.client.clone(), self.shared.clone());
        let (node, redirect) = (self.info.node, self.info.redirect);
        let pace = self.info.pace.clone();
        Box::pin(async move {
            // The locker is gone: nobody to tell.
            let Some(shared) = shared.upgrade() else {
                return Sends::default();
            };
            let outcome = node::outcome_of(&*client, &shared, &cmd.job).await;
            // How long the runtime took to write it and read its reply.
            if let Some(made) = cmd.made {
                pace.answered(made, Instant::now());
            }
            node::wake_for(&shared, &cmd.job);
            let (id, port) = (cmd.job.cmd, cmd.port.upgrade());
            drop(cmd);
            // Gone: the actor stopped, and its holders were told.
            let Some(port) = port else {
                return Sends::default();
            };
            // The engine's connection changed while this was out: the
            // invalidations of this node's keys may have gone to the old one.
            let moved = shared.engine_conn(node) != Some(redirect);
            port.reply(id, outcome, moved.then_some(node))
        })
    }

    fn done(&self) {
        self.info.out.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Runs `sends` on tasks of their own, each on its caller's runtime: what
/// nobody waits for (a grant's first acquisition sent by the engine). On a
/// runtime that has shut down, a command is dropped unsent, and its lock
/// core counts its reply overdue.
pub(crate) fn spawn(sends: Sends) {
    for cmd in sends {
        let runtime = cmd.runtime.clone();
        runtime.spawn(detached(start(cmd)));
    }
}

/// [`spawn`], for commands made on this very thread for the runtime it runs
/// in (a guard dropped, a caller gone): each is polled once here first,
/// which hands it to its connection in the order the core made it. A
/// task spawned would write it only when it first runs, after whatever the
/// caller sends next (the acquisition a loop of `lock()` and a dropped
/// guard sends right behind this delete, see `LockCore`'s chains) had
/// overtaken it on the very connection meant to keep them in order. Only
/// here: polled from elsewhere, on a runtime that has shut down, the
/// command's time limit (its reply timeout) would panic.
pub(crate) fn send_now(sends: Sends) {
    for cmd in sends {
        let runtime = cmd.runtime.clone();
        let mut running = start(cmd);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match running.as_mut().poll(&mut cx) {
            Poll::Ready(more) => send_now(more),
            Poll::Pending => {
                runtime.spawn(detached(running));
            }
        }
    }
}

fn start(cmd: DirectCmd) -> Running {
    let link = cmd.link.clone();
    link.run(cmd)
}

/// Runs `running` on a task of its own, spawned on its runtime, and with it
/// the commands its reply produces: those are handed to their connections
/// at once, as a caller's own are (the lock core counts on it, see
/// `LockCore::went_direct`), not when a task spawned for them first runs.
async fn detached(running: Running) {
    let mut driver = Driver(OneOrMore::default());
    driver.0.push((Handle::current(), running));
    std::future::poll_fn(|cx| {
        driver.poll(cx);
        match driver.0.is_empty() {
            true => Poll::Ready(()),
            false => Poll::Pending,
        }
    })
    .await
}

/// Drives `sends` on the calling task until `answer` is ready, which is what
/// saves the wake-ups of a task in between: the caller sends its own
/// command and takes its reply. What is still out then (another caller's
/// command its reply produced, or all of them if the caller is dropped
/// first) goes on running on tasks of its own.
pub(crate) async fn drive<T>(
    sends: Sends,
    answer: &mut oneshot::Receiver<T>,
) -> Result<T, oneshot::error::RecvError> {
    let mut driver = Driver(OneOrMore::default());
    driver.add(sends);
    let mut early = None;
    std::future::poll_fn(|cx| {
        // The answer is mostly made right here, by a reply the commands'
        // poll feeds to the lock core. Were this task's waker registered on
        // it then, the answer would wake the very task that is running, and
        // the runtime would put it back in its queue as if it had yielded:
        // on a multi-thread runtime that wakes another worker, which takes
        // the task, and a lock + release went from one worker to the other
        // and back (BENCHMARKS.md, "What limits", item 1).
        // So the answer holds a no-op waker while the commands are polled,
        // and gets this task's back when it is looked at after them; one
        // sent in between, from another thread, is found then.
        let mut idle = Context::from_waker(std::task::Waker::noop());
        if let Poll::Ready(got) = Pin::new(&mut *answer).poll(&mut idle) {
            early = Some(got);
        }
        driver.poll(cx);
        match early.take() {
            Some(got) => Poll::Ready(got),
            None => Pin::new(&mut *answer).poll(cx),
        }
    })
    .await
}

/// Commands a caller drives, each with its runtime.
struct Driver(OneOrMore<(Handle, Running)>);

impl Driver {
    fn add(&mut self, sends: Sends) {
        for cmd in sends {
            self.0.push((cmd.runtime.clone(), start(cmd)));
        }
    }

    /// Polls every command, and the ones their replies produce.
    fn poll(&mut self, cx: &mut Context<'_>) {
        let mut todo = std::mem::take(&mut self.0);
        while !todo.is_empty() {
            let mut next = Driver(OneOrMore::default());
            for (runtime, mut running) in todo {
                match running.as_mut().poll(cx) {
                    Poll::Ready(more) => next.add(more),
                    Poll::Pending => self.0.push((runtime, running)),
                }
            }
            todo = std::mem::take(&mut next.0);
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        for (runtime, running) in std::mem::take(&mut self.0) {
            runtime.spawn(detached(running));
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lock::LockCell;
    use crate::msg::testing::{job, Sink};
    use crate::msg::{LockMsg, LockPort};
    use ractor::{Actor, ActorRef};
    use std::sync::atomic::AtomicUsize;
    use std::sync::Mutex;
    use std::task::Wake;

    /// A connection whose one command waits for its reply on its first
    /// poll, and on the next answers the caller, as a reply fed to the lock
    /// core does, from inside the caller's poll.
    #[derive(Debug)]
    struct Answering(Mutex<Option<oneshot::Sender<u32>>>);

    impl DirectLink for Answering {
        fn run(&self, cmd: DirectCmd) -> Running {
            let answer = self.0.lock().unwrap().take();
            Box::pin(async move {
                drop(cmd);
                let mut out = true;
                std::future::poll_fn(|_| match std::mem::take(&mut out) {
                    true => Poll::Pending,
                    false => Poll::Ready(()),
                })
                .await;
                if let Some(answer) = answer {
                    let _ = answer.send(7);
                }
                Sends::default()
            })
        }

        fn done(&self) {}
    }

    /// Counts its wake-ups.
    struct Count(AtomicUsize);

    impl Count {
        /// A waker that counts into the `Count` returned beside it.
        fn waker() -> (Arc<Count>, std::task::Waker) {
            let count = Arc::new(Count(AtomicUsize::new(0)));
            (count.clone(), std::task::Waker::from(count))
        }
    }

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    async fn one_command(answer: oneshot::Sender<u32>) -> (Sends, ActorRef<LockMsg>) {
        let (sink, _) = Actor::spawn(None, Sink, ()).await.unwrap();
        let port: std::sync::Weak<dyn LockPort> = std::sync::Weak::<LockCell>::new();
        let cmd = DirectCmd {
            link: Arc::new(Answering(Mutex::new(Some(answer)))),
            job: job(&sink),
            port,
            runtime: Handle::current(),
            made: None,
        };
        let mut sends = Sends::default();
        sends.push(cmd);
        (sends, sink)
    }

    #[tokio::test]
    async fn an_answer_made_while_driving_does_not_wake_the_driver() {
        // On a multi-thread runtime a task that wakes itself is queued again
        // as if it had yielded, and another worker is woken to take it: the
        // caller's answer, made by the reply its own poll feeds, must not.
        let (tx, mut rx) = oneshot::channel();
        let (sends, sink) = one_command(tx).await;
        let (count, waker) = Count::waker();
        let mut cx = Context::from_waker(&waker);
        let mut driving = std::pin::pin!(drive(sends, &mut rx));
        assert!(driving.as_mut().poll(&mut cx).is_pending());
        assert!(matches!(driving.as_mut().poll(&mut cx), Poll::Ready(Ok(7))));
        assert_eq!(count.0.load(Ordering::SeqCst), 0, "the driver woke itself");
        sink.stop(None);
    }

    #[tokio::test]
    async fn an_answer_made_elsewhere_still_wakes_the_driver() {
        // The answer's waker is a no-op only during the commands' poll: an
        // answer from another thread (a refusal, the locker closing) while a
        // command is out wakes the caller.
        let (tx, mut rx) = oneshot::channel();
        let (unused, _) = oneshot::channel();
        let (sends, sink) = one_command(unused).await;
        let (count, waker) = Count::waker();
        let mut cx = Context::from_waker(&waker);
        let mut driving = std::pin::pin!(drive(sends, &mut rx));
        assert!(driving.as_mut().poll(&mut cx).is_pending());
        std::thread::spawn(move || tx.send(9))
            .join()
            .unwrap()
            .unwrap();
        assert_eq!(
            count.0.load(Ordering::SeqCst),
            1,
            "the driver was not woken"
        );
        assert!(matches!(driving.as_mut().poll(&mut cx), Poll::Ready(Ok(9))));
        sink.stop(None);
    }
}
