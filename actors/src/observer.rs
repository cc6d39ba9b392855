//! Looking at a lock without taking it: `inspect` (one look, through the node
//! actors, which own the connections) and [`LockWatch`] (a look again each
//! time the lock's keys may have changed).
//!
//! Nothing here runs inside an actor: these are the handle's side, which may
//! wait for actors' answers. Each node actor reads its keys on a task of its
//! own and answers on a oneshot channel; this side bounds every wait.
//!
//! # How a watch learns of changes
//! Its reads go through the node's connection, where tracking is on, so they
//! arm an invalidation on every key of the name (absent keys included). The
//! node's invalidation forwarder wakes the name's watchers; so do a node
//! connecting or losing its connection (invalidations sent during the gap
//! are lost), a lagging invalidation channel, and this locker's own
//! acquisitions and releases (with NOLOOP, the default, a connection gets no
//! invalidation for its own writes). A woken watch reads the keys again and
//! reports only a change of state or owner. Backstops: without tracking, it
//! polls every `try_next_after`; with tracking, it reads again every
//! extension interval anyway (fred drops `FLUSHALL`'s invalidation), and
//! soon after a look that left keys unreadable.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use tokio::sync::{oneshot, watch, Notify};

use crate::context::Shared;
use crate::error::Error;
use crate::inspect::{assemble, KeyValue, Layout, LockInfo, LockState};
use crate::keys;
use crate::msg::{LockMsg, NodeMsg, Reading};
use crate::scripts::{Look, Seen};

/// How soon a watch looks again after keys could not be read (a node down
/// is also announced by its reconnection; a slow one is not).
const UNREADABLE_RETRY: Duration = Duration::from_millis(500);

/// How long one look may take: fred bounds each read by `try_next_after`;
/// this covers a node actor that is gone or stuck.
fn bound(shared: &Shared) -> Duration {
    shared.settings.timeout * 2 + Duration::from_millis(500)
}

/// Where lock `name`'s keys live, and the fencing counter's key.
fn layout(shared: &Shared, name: &str) -> (Layout, Vec<Arc<str>>, Arc<str>) {
    let s = &shared.settings;
    let names: Vec<String> = (0..s.total)
        .map(|i| keys::key_name(&s.prefix, i, name))
        .collect();
    let layout = Layout {
        name: name.to_owned(),
        needed: s.majority,
        keys: names
            .iter()
            .enumerate()
            .map(|(i, k)| (k.clone(), s.node_of_key(i)))
            .collect(),
        addresses: s.nodes.iter().map(|n| n.display()).collect(),
    };
    let keys = names.into_iter().map(Arc::from).collect();
    let fence = Arc::from(format!("{}:fence:{name}", s.prefix));
    (layout, keys, fence)
}

/// One look at lock `name` (already validated): every key read on its
/// node, the fencing counter on every node, and this locker's own token;
/// with `waiters`, who waits beside each key as well. Watches, elections
/// and semaphore slots look without (a watch reports state and owner only;
/// elections' and semaphores' locks never claim nor queue), and their ACL
/// users need not be allowed the reads.
pub(crate) async fn inspect(shared: &Shared, name: &str, waiters: bool) -> LockInfo {
    let (layout, keys, fence_key) = layout(shared, name);
    let bound = bound(shared);
    let nodes = shared.settings.nodes.len();
    let asks = (0..nodes).map(|node| {
        let mine: Vec<usize> = (0..keys.len())
            .filter(|&i| layout.keys[i].1 == node)
            .collect();
        let (tx, rx) = oneshot::channel::<Reading>();
        let sent = shared.node(node).is_some_and(|actor| {
            actor
                .cast(NodeMsg::Inspect {
                    keys: mine.iter().map(|&i| keys[i].clone()).collect(),
                    fence_key: fence_key.clone(),
                    waiters,
                    reply: tx,
                })
                .is_ok()
        });
        async move {
            let reading = if sent {
                match tokio::time::timeout(bound, rx).await {
                    Ok(Ok(r)) if r.keys.len() == mine.len() => Ok(r),
                    Ok(Ok(_)) => Err("unexpected reading".to_owned()),
                    Ok(Err(_)) => Err("the node's actor stopped".to_owned()),
                    Err(_) => Err(format!("no answer within {bound:?}")),
                }
            } else {
                Err("node not running".to_owned())
            };
            (mine, reading)
        }
    });
    let own = async {
        let actor = shared.lock(name)?;
        let (tx, rx) = oneshot::channel();
        actor.cast(LockMsg::OwnToken { reply: tx }).ok()?;
        tokio::time::timeout(bound, rx).await.ok()?.ok()?
    };
    let (readings, own) = futures_util::future::join(join_all(asks), own).await;
    let nothing = Look {
        seen: Seen::Absent,
        waiting: Ok(Vec::new()),
    };
    let mut looks: Vec<Look> = vec![nothing; keys.len()];
    let mut fences = Vec::with_capacity(nodes);
    for (mine, reading) in readings {
        match reading {
            Ok(r) => {
                for (i, look) in mine.into_iter().zip(r.keys) {
                    looks[i] = look;
                }
                fences.push(r.fence);
            }
            Err(why) => {
                for i in mine {
                    looks[i] = Look::unreadable(why.clone());
                }
                fences.push(None);
            }
        }
    }
    assemble(&layout, looks, fences, own.as_ref())
}

/// Follows one lock's state: held (by whom), free, or unknown. Made by
/// `Locker::watch`; dropping it stops the watching.
///
/// Like tokio's `watch::Receiver`: [`changed`](LockWatch::changed) waits for
/// a state not yet returned (the first call returns the first look), and
/// intermediate states may be skipped when changes come faster than they are
/// read. Only a change of [`LockState`] kind or owner counts; remaining TTLs
/// going down do not.
///
/// The locker's `close` ends every watch: `changed`
/// and `wait_for` then fail with [`Error::Closed`].
///
/// # Examples
/// ```no_run
/// # use valkeylock_actors as valkeylock;
/// use valkeylock::{Error, LockState, LockWatch};
///
/// // `watch` is `locker.watch("invoices")?`.
/// async fn wait_until_free(mut watch: LockWatch) -> Result<(), Error> {
///     let info = watch.wait_for(|state| *state == LockState::Free).await?;
///     println!("{} is free", info.name);
///     Ok(())
/// }
/// ```
#[derive(Debug)]
pub struct LockWatch {
    name: Arc<str>,
    rx: watch::Receiver<Option<LockInfo>>,
}

impl LockWatch {
    /// The lock name.
    ///
    /// # Examples
    /// ```no_run
    /// # use valkeylock_actors as valkeylock;
    /// # fn demo(watch: valkeylock::LockWatch) {
    /// println!("watching {}", watch.name());
    /// # }
    /// ```
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Waits for a state not returned yet and returns it: the first call
    /// returns the first look, later calls the next change of state or
    /// owner (intermediate states may be skipped).
    ///
    /// # Errors
    /// [`Error::Closed`] once the locker is closed.
    ///
    /// # Cancel safety
    /// This method is cancel safe. If `changed()` is used as the event in a
    /// `tokio::select!` statement and some other branch completes first, then
    /// no state is marked as seen: a change that arrived meanwhile is
    /// returned by the next call.
    ///
    /// # Examples
    /// ```no_run
    /// # use valkeylock_actors as valkeylock;
    /// use valkeylock::{Error, LockState, LockWatch};
    ///
    /// async fn follow(mut watch: LockWatch) -> Result<(), Error> {
    ///     loop {
    ///         let info = watch.changed().await?;
    ///         match &info.state {
    ///             LockState::Held { owner, .. } => println!("held by {owner}"),
    ///             LockState::Free => println!("free"),
    ///             LockState::Unknown { unreadable } => println!("unknown ({unreadable} keys unreadable)"),
    ///             _ => {}
    ///         }
    ///     }
    /// }
    /// ```
    pub async fn changed(&mut self) -> Result<LockInfo, Error> {
        loop {
            self.rx.changed().await.map_err(|_| Error::Closed)?;
            if let Some(info) = self.rx.borrow_and_update().clone() {
                return Ok(info);
            }
        }
    }

    /// Waits until the lock is in a state that `pred` accepts (checking the
    /// latest state first) and returns it.
    ///
    /// # Errors
    /// [`Error::Closed`] once the locker is closed.
    ///
    /// # Cancel safety
    /// This method is cancel safe. If `wait_for()` is used as the event in a
    /// `tokio::select!` statement and some other branch completes first, then
    /// the watch is left as it was: a later call checks the latest state
    /// first, so a state `pred` accepts is not missed.
    ///
    /// # Examples
    /// ```no_run
    /// # use valkeylock_actors as valkeylock;
    /// use valkeylock::{Error, LockState, LockWatch};
    ///
    /// async fn wait_until_held(watch: &mut LockWatch) -> Result<String, Error> {
    ///     let info = watch.wait_for(|s| matches!(s, LockState::Held { .. })).await?;
    ///     Ok(info.name)
    /// }
    /// ```
    pub async fn wait_for<F>(&mut self, mut pred: F) -> Result<LockInfo, Error>
    where
        F: FnMut(&LockState) -> bool,
    {
        if let Some(info) = self.rx.borrow_and_update().clone() {
            if pred(&info.state) {
                return Ok(info);
            }
        }
        loop {
            let info = self.changed().await?;
            if pred(&info.state) {
                return Ok(info);
            }
        }
    }

    /// The state last reported (or being reported), `None` before the first
    /// look has finished. Does not wait, and does not mark the state as seen
    /// by [`changed`](LockWatch::changed).
    ///
    /// # Examples
    /// ```no_run
    /// # use valkeylock_actors as valkeylock;
    /// # fn demo(watch: valkeylock::LockWatch) {
    /// match watch.latest() {
    ///     Some(info) => println!("held: {}", info.is_held()),
    ///     None => println!("no look yet"),
    /// }
    /// # }
    /// ```
    pub fn latest(&self) -> Option<LockInfo> {
        self.rx.borrow().clone()
    }
}

/// Starts watching `name` (already validated): registers the watcher, then
/// returns the handle and the task that feeds it (to run on the engine's
/// runtime).
pub(crate) fn watch(
    shared: Arc<Shared>,
    name: &str,
) -> (
    LockWatch,
    impl std::future::Future<Output = ()> + Send + 'static,
) {
    let name: Arc<str> = Arc::from(name);
    let (tx, rx) = watch::channel(None);
    // Registered before the first look, so no change after it goes unseen.
    let (id, notify) = shared.add_watcher(name.clone());
    let registration = Registration {
        shared: shared.clone(),
        name: name.clone(),
        id,
    };
    let task = follow(shared, name.clone(), notify, tx, registration);
    (LockWatch { name, rx }, task)
}

/// Unregisters a watcher when its task ends (or is dropped with the runtime).
pub(crate) struct Registration {
    shared: Arc<Shared>,
    name: Arc<str>,
    id: u64,
}

impl Registration {
    /// The registration of watcher `id` of `name`.
    pub(crate) fn new(shared: Arc<Shared>, name: Arc<str>, id: u64) -> Registration {
        Registration { shared, name, id }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.shared.remove_watcher(&self.name, self.id);
    }
}

/// The watch's task: look, report a change, wait for a reason to look again.
/// Ends when the `LockWatch` is dropped or the locker closes.
async fn follow(
    shared: Arc<Shared>,
    name: Arc<str>,
    notify: Arc<Notify>,
    tx: watch::Sender<Option<LockInfo>>,
    _registration: Registration,
) {
    let s = &shared.settings;
    let mut last: Option<LockInfo> = None;
    loop {
        let info = tokio::select! {
            // Without who waits: a watch reports changes of state and owner
            // only, and looks at every change of the keys.
            info = inspect(&shared, &name, false) => info,
            _ = tx.closed() => return,
            _ = shared.closed.cancelled() => return,
        };
        let unreadable = info
            .keys
            .iter()
            .any(|k| matches!(k.value, KeyValue::Unknown { .. }));
        if last.as_ref().is_none_or(|l| !l.same_state(&info)) {
            tracing::debug!(lock = %name, state = ?info.state, "watched lock changed");
            tx.send_replace(Some(info.clone()));
            last = Some(info);
        }
        let pause = if !s.tracking {
            s.timeout.max(Duration::from_millis(50))
        } else if unreadable {
            UNREADABLE_RETRY
        } else {
            s.extend
        };
        tokio::select! {
            _ = notify.notified() => {}
            _ = tokio::time::sleep(pause) => {}
            _ = tx.closed() => return,
            _ = shared.closed.cancelled() => return,
        }
    }
}
