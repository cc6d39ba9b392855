//! Elections, the engine's side: announcing a term in every node's log,
//! looking at who leads, and following the terms ([`LeaderObserver`]). The
//! decisions (who leads, what an observer reports) are `election`'s; this
//! module reads and writes through the node actors, which own the
//! connections, and bounds every wait.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use tokio::sync::{mpsc, oneshot, Notify};

use crate::context::Shared;
use crate::election::{self, Leader, Record, Step};
use crate::error::Error;
use crate::inspect::LockState;
use crate::msg::NodeMsg;
use crate::observer;

/// How soon an observer looks again after too few nodes answered.
const UNSURE_RETRY: Duration = Duration::from_millis(500);

/// What one node's log gave: its records, or why not (`refused`: the server
/// answered with a refusal, which trying again does not cure).
#[derive(Debug)]
pub(crate) enum LogRead {
    Records(Vec<Record>),
    Failed { reason: String, refused: bool },
}

/// Runs the log script of election `name` on every node at once: adds
/// `write` if given, then reads the terms above `after`. One answer per
/// node, in node order.
async fn logs(shared: &Shared, name: &str, write: Option<&Record>, after: u64) -> Vec<LogRead> {
    let key: Arc<str> = Arc::from(election::log_key(&shared.settings.prefix, name));
    let bound = shared.settings.timeout * 2 + Duration::from_millis(500);
    let asks = (0..shared.settings.nodes.len()).map(|node| {
        let (tx, rx) = oneshot::channel();
        let sent = shared.node(node).is_some_and(|actor| {
            actor
                .cast(NodeMsg::Log {
                    key: key.clone(),
                    write: write.cloned(),
                    after,
                    reply: tx,
                })
                .is_ok()
        });
        async move {
            if !sent {
                return LogRead::Failed {
                    reason: "node not running".to_owned(),
                    refused: false,
                };
            }
            match tokio::time::timeout(bound, rx).await {
                Ok(Ok(Ok(records))) => LogRead::Records(records),
                Ok(Ok(Err(reason))) => LogRead::Failed {
                    refused: election::is_refusal(&reason),
                    reason,
                },
                Ok(Err(_)) => LogRead::Failed {
                    reason: "the node's actor stopped".to_owned(),
                    refused: false,
                },
                Err(_) => LogRead::Failed {
                    reason: format!("no answer within {bound:?}"),
                    refused: false,
                },
            }
        }
    });
    join_all(asks).await
}

/// How an announcement ended.
#[derive(Debug)]
pub(crate) enum Announced {
    /// A majority of nodes has the record.
    Majority,
    /// Too few nodes took it, but none refused for good: try again.
    Short(String),
    /// A majority cannot take it: the servers refuse the commands.
    Refused(String),
}

/// Adds `record` to election `name`'s log on every node. This locker's own
/// observers are woken directly: with NOLOOP its connections get no
/// invalidation for their own writes.
pub(crate) async fn announce(shared: &Shared, name: &str, record: &Record) -> Announced {
    let reads = logs(shared, name, Some(record), record.term).await;
    shared.wake_watchers(&election::lock_name(name));
    let nodes = reads.len();
    let needed = nodes / 2 + 1;
    let took = reads
        .iter()
        .filter(|r| matches!(r, LogRead::Records(_)))
        .count();
    let refused = reads
        .iter()
        .filter(|r| matches!(r, LogRead::Failed { refused: true, .. }))
        .count();
    let why = || {
        reads
            .iter()
            .find_map(|r| match r {
                LogRead::Failed { reason, .. } => Some(reason.clone()),
                LogRead::Records(_) => None,
            })
            .unwrap_or_default()
    };
    if took >= needed {
        Announced::Majority
    } else if refused > nodes - needed {
        Announced::Refused(why())
    } else {
        Announced::Short(why())
    }
}

/// One look at election `name`: the lock's holder (token prefix), the
/// records above `after` merged over the nodes that answered, how many
/// answered, and whether the lock's state is unknown.
struct Look {
    holder: Option<String>,
    unknown: bool,
    records: Vec<Record>,
    read: usize,
    failure: Option<String>,
}

async fn look(shared: &Shared, name: &str, after: u64) -> Look {
    let lock = election::lock_name(name);
    let (info, reads) = futures_util::future::join(
        observer::inspect(shared, &lock, false),
        logs(shared, name, None, after),
    )
    .await;
    let (holder, unknown) = match info.state {
        LockState::Held { owner, .. } => (Some(owner), false),
        LockState::Unknown { .. } => (None, true),
        _ => (None, false),
    };
    let mut failure = None;
    let mut logs = Vec::with_capacity(reads.len());
    for r in reads {
        match r {
            LogRead::Records(records) => logs.push(records),
            LogRead::Failed { reason, .. } => failure = Some(reason),
        }
    }
    Look {
        holder,
        unknown,
        read: logs.len(),
        records: election::merge(logs),
        failure,
    }
}

/// Who leads election `name` now (see `election::current`).
pub(crate) async fn leader(shared: &Shared, name: &str) -> Result<Option<Leader>, Error> {
    let l = look(shared, name, 0).await;
    let nodes = shared.settings.nodes.len();
    if l.unknown || l.read < nodes / 2 + 1 {
        return Err(Error::Unavailable {
            name: name.to_owned(),
            reason: if l.unknown {
                "too many of the election's lock keys could not be read".to_owned()
            } else {
                format!(
                    "the election's log could be read on {} of {nodes} nodes: {}",
                    l.read,
                    l.failure.unwrap_or_default()
                )
            },
        });
    }
    Ok(election::current(l.holder.as_deref(), &l.records))
}

/// Follows the terms of an election: each new leader once, in term order,
/// with none skipped (see [`LeaderObserver::next`]). Made by
/// `Election::observe`; dropping it stops the following.
///
/// Driven by invalidations: a new term's record in any node's log, a change
/// of the election's lock, and a node reconnecting (invalidations sent
/// while it was away are lost) make it look again. Without tracking
/// (`disable_cache`) it polls every `try_next_after`.
#[derive(Debug)]
pub struct LeaderObserver {
    name: Arc<str>,
    rx: mpsc::UnboundedReceiver<Leader>,
}

impl LeaderObserver {
    /// The election's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The next leader: first the one leading when the observer started (if
    /// any), then every later term, in order, each once, including leaders
    /// that were already gone when this observer looked (a term that began
    /// and ended while a node was unreachable is reported when the observer
    /// reads it). Terms that were not yet announced on a majority of nodes
    /// are not reported until they are. The start is the observer's first
    /// look, a round trip after `observe()`: a term that began and ended
    /// before it is not reported. The log keeps the last 64 terms: an
    /// observer away for more than 64 changes reports the last 64.
    ///
    /// # Errors
    /// [`Error::Closed`] once the locker is closed.
    ///
    /// # Cancel safety
    /// This method is cancel safe: a leader not returned stays queued for
    /// the next call.
    pub async fn next(&mut self) -> Result<Leader, Error> {
        self.rx.recv().await.ok_or(Error::Closed)
    }
}

/// The same leaders as [`LeaderObserver::next`], as a `Stream` (for stream
/// combinators: `take`, `filter`, `select`); it ends when the locker
/// closes.
impl futures_util::Stream for LeaderObserver {
    type Item = Leader;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Leader>> {
        self.rx.poll_recv(cx)
    }
}

/// Starts following election `name` (already validated): registers a
/// watcher of its lock (the forwarder wakes it for the log too), and returns
/// the handle and the task that feeds it.
pub(crate) fn observe(
    shared: Arc<Shared>,
    name: &str,
) -> (
    LeaderObserver,
    impl std::future::Future<Output = ()> + Send + 'static,
) {
    let name: Arc<str> = Arc::from(name);
    let (tx, rx) = mpsc::unbounded_channel();
    let lock: Arc<str> = Arc::from(election::lock_name(&name));
    // Registered before the first look, so no term after it goes unseen.
    let (id, notify) = shared.add_watcher(lock.clone());
    let registration = observer::Registration::new(shared.clone(), lock, id);
    let task = follow(shared, name.clone(), notify, tx, registration);
    (LeaderObserver { name, rx }, task)
}

async fn follow(
    shared: Arc<Shared>,
    name: Arc<str>,
    notify: Arc<Notify>,
    tx: mpsc::UnboundedSender<Leader>,
    _registration: observer::Registration,
) {
    let s = &shared.settings;
    let mut last: Option<u64> = None;
    loop {
        let l = tokio::select! {
            l = look(&shared, &name, last.unwrap_or(0)) => l,
            _ = tx.closed() => return,
            _ = shared.closed.cancelled() => return,
        };
        let step = election::observe(last, l.read, s.nodes.len(), l.holder.as_deref(), &l.records);
        let pause = match step {
            Step::Unsure => UNSURE_RETRY,
            Step::Report { leaders, last: now } => {
                for leader in leaders {
                    tracing::debug!(election = %name, term = leader.term, "new leader observed");
                    if tx.send(leader).is_err() {
                        return;
                    }
                }
                last = Some(now);
                if s.tracking {
                    s.extend
                } else {
                    s.timeout.max(Duration::from_millis(50))
                }
            }
        };
        tokio::select! {
            _ = notify.notified() => {}
            _ = tokio::time::sleep(pause) => {}
            _ = tx.closed() => return,
            _ = shared.closed.cancelled() => return,
        }
    }
}
